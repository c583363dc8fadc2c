"""Row-wise (lazy) Adam for embedding tables: hand-worked first and second steps."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dssm_core.model import lookup
from dssm_core.optim import Chain, RowWiseAdam

torch.set_num_threads(1)


def _table(rows: int = 4, dim: int = 2) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=0)
    with torch.no_grad():
        table.weight.copy_(torch.arange(rows * dim, dtype=torch.float32).view(rows, dim) / 10)
        table.weight[0].zero_()
    return table


def _backward(table: nn.Embedding, ids: list[int], sparse: bool) -> None:
    # loss = sum_k <emb(ids[k]), c_k> with c_k = (1, -2): row r's gradient is
    # (count of r in ids) * (1, -2), the padding row's is zero
    out = lookup(table, torch.tensor(ids), sparse=sparse)                      # (N, 2)
    (out * torch.tensor([1.0, -2.0])).sum().backward()


def test_first_step_moves_only_touched_rows_by_lr_against_the_gradient_sign() -> None:
    table = _table()
    before = table.weight.detach().clone()
    opt = RowWiseAdam([table.weight], lr=0.01)
    _backward(table, [1, 3, 3, 0], sparse=True)
    g = table.weight.grad
    assert g.is_sparse
    # padding ids are not in the gradient at all; rows 1 and 3 are (3 twice)
    assert sorted(g.coalesce().indices()[0].tolist()) == [1, 3]
    assert torch.equal(g.to_dense()[3], torch.tensor([2.0, -4.0]))
    opt.step()
    # Adam's first step: m_hat = g, v_hat = g^2, update = -lr * g / (|g| + eps) = -lr * sign(g)
    # (to 1e-8 relative); rows 0 (padding) and 2 (not in the batch) are untouched
    delta = table.weight.detach() - before
    step = torch.tensor([-0.01, 0.01])
    assert torch.allclose(delta[1], step, atol=1e-8)
    assert torch.allclose(delta[3], step, atol=1e-8)
    assert torch.equal(delta[0], torch.zeros(2)) and torch.equal(delta[2], torch.zeros(2))
    assert torch.equal(table.weight[0].detach(), torch.zeros(2))


def test_touched_rows_equal_dense_adam_untouched_rows_skip_its_weight_decay() -> None:
    ours, theirs = _table(), _table()
    opt = RowWiseAdam([ours.weight], lr=0.01, weight_decay=0.1)
    ref = torch.optim.Adam([theirs.weight], lr=0.01, weight_decay=0.1, foreach=False)
    before = ours.weight.detach().clone()
    _backward(ours, [1, 3, 3, 0], sparse=True)
    _backward(theirs, [1, 3, 3, 0], sparse=False)
    opt.step()
    ref.step()
    for r in (1, 3):                 # the rows in the batch: dense Adam's update exactly
        assert torch.allclose(ours.weight[r], theirs.weight[r], rtol=0, atol=1e-7)
    # row 2 (weights 0.4, 0.5) is not in the batch: dense Adam's L2 gradient 0.1 * w alone,
    # normalised by its own square root, moves it by lr towards zero; the lazy update leaves it
    assert torch.allclose(theirs.weight[2] - before[2], torch.tensor([-0.01, -0.01]), atol=1e-6)
    assert torch.equal(ours.weight[2], before[2])
    assert torch.equal(ours.weight[0], torch.zeros(2)) and torch.equal(theirs.weight[0],
                                                                       torch.zeros(2))


def test_later_steps_keep_absent_rows_and_correct_bias_by_the_global_step() -> None:
    table = _table()
    opt = RowWiseAdam([table.weight], lr=0.01)
    _backward(table, [1], sparse=True)
    opt.step()
    after_first = table.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    _backward(table, [2], sparse=True)
    opt.step()
    # row 1 is absent from step 2: weights and moments stay as step 1 left them
    assert torch.equal(table.weight[1].detach(), after_first[1])
    assert torch.equal(opt.state[table.weight]["exp_avg"][1], torch.tensor([0.1, -0.2]))
    # row 2's first gradient arrives at step 2: m = 0.1 g, v = 0.001 g^2, bias-corrected by
    # 1 - 0.9^2 = 0.19 and 1 - 0.999^2 = 0.001999, so it moves by
    # lr * (0.1 / 0.19) / sqrt(0.001 / 0.001999) = 0.744137 lr against the gradient's sign
    k = (0.1 / 0.19) / math.sqrt(0.001 / 0.001999)
    assert k == pytest.approx(0.744137, abs=1e-6)
    assert torch.allclose(table.weight[2].detach() - after_first[2],
                          torch.tensor([-0.01 * k, 0.01 * k]), atol=1e-7)
    assert float(opt.state[table.weight]["step"]) == 2.0


def test_a_dense_gradient_is_plain_adam_on_every_row() -> None:
    ours, theirs = _table(), _table()
    opt = RowWiseAdam([ours.weight], lr=0.01, weight_decay=0.1)
    ref = torch.optim.Adam([theirs.weight], lr=0.01, weight_decay=0.1, foreach=False)
    _backward(ours, [1, 3], sparse=False)
    _backward(theirs, [1, 3], sparse=False)
    opt.step()
    ref.step()
    assert torch.allclose(ours.weight, theirs.weight, rtol=0, atol=1e-7)


def test_chain_steps_and_zeroes_every_optimiser_and_rejects_bad_settings() -> None:
    table, head = _table(), nn.Linear(2, 1)
    chain = Chain(torch.optim.SGD(head.parameters(), lr=0.5), RowWiseAdam([table.weight]))
    head(lookup(table, torch.tensor([1]), sparse=True)).sum().backward()
    w = head.weight.detach().clone()
    chain.step()
    # SGD: w -= 0.5 * dL/dw = 0.5 * emb(1) = 0.5 * (0.2, 0.3)
    assert torch.allclose(head.weight.detach(), w - torch.tensor([[0.1, 0.15]]))
    chain.zero_grad(set_to_none=True)
    assert head.weight.grad is None and table.weight.grad is None
    assert len(chain.state_dict()["optimizers"]) == 2
    with pytest.raises(ValueError, match="tables"):
        RowWiseAdam([head.bias])
    with pytest.raises(ValueError, match="lr"):
        RowWiseAdam([table.weight], lr=-1.0)
