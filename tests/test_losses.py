"""Objectives against hand-worked values."""
from __future__ import annotations

import math

import pytest
import torch

from dssm_core.losses import InBatchSoftmax, StreamingFrequencyEstimator, pointwise_loss

torch.set_num_threads(1)

# A 2x2 batch: users (1,0), (0,1); items (1,0), (0.6,0.8); with temperature 1 the logits are
# sim = U V^T = [[1.0, 0.6],
#                [0.0, 0.8]]   (rows: users, columns: items; pair i is (user i, item i)).
U = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
V = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pointwise_loss_on_two_examples() -> None:
    # logits 0 and ln 3, labels 1 and 0:
    #   -ln sigmoid(0) = ln 2;  -ln(1 - sigmoid(ln 3)) = -ln(1 - 3/4) = ln 4 = 2 ln 2
    #   mean = 1.5 ln 2
    loss = pointwise_loss(torch.tensor([0.0, math.log(3.0)]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        pointwise_loss(torch.zeros(2), torch.zeros(3))


def test_in_batch_softmax_without_logq() -> None:
    # Row 1: -ln(e^1 / (e^1 + e^0.6)) = ln(1 + e^-0.4); row 2: -ln(e^0.8 / (e^0 + e^0.8))
    # = ln(1 + e^-0.8). Mean of the two.
    crit = InBatchSoftmax(10, temperature=1.0, logq=False)
    loss = crit(U, V, torch.tensor([1, 2]))
    expected = (_softplus(-0.4) + _softplus(-0.8)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_temperature_divides_the_logits() -> None:
    # temperature 0.5 doubles every logit: ln(1 + e^-0.8) and ln(1 + e^-1.6).
    crit = InBatchSoftmax(10, temperature=0.5, logq=False)
    expected = (_softplus(-0.8) + _softplus(-1.6)) / 2
    assert float(crit(U, V, torch.tensor([1, 2]))) == pytest.approx(expected, rel=1e-6)


def _worked_estimator() -> StreamingFrequencyEstimator:
    """alpha = 0.5, ids seen per step: 1:{1,2}  2:{1}  3:{1,3,3}  4:{2}.

    step 1: B1 = 1, B2 = 1 (first sightings: once in 1 step); A1 = A2 = 1
    step 2: B1 = 0.5*1 + 0.5*(2-1) = 1;                     A1 = 2
    step 3: B1 = 0.5*1 + 0.5*(3-2) = 1; B3 = 3 (first, twice in the batch counts once); A1 = A3 = 3
    step 4: B2 = 0.5*1 + 0.5*(4-1) = 2;                     A2 = 4
    -> p1 = 1, p2 = 1/2, p3 = 1/3; an id never seen gets p = 1.
    """
    est = StreamingFrequencyEstimator(10, alpha=0.5)
    for ids in ([1, 2], [1], [1, 3, 3], [2]):
        est.update(torch.tensor(ids))
    return est


def test_streaming_frequency_estimator_on_a_hand_worked_sequence() -> None:
    est = _worked_estimator()
    assert est.step == 4
    assert est.interval[[1, 2, 3]].tolist() == [1.0, 2.0, 3.0]
    assert est.last_step[[1, 2, 3]].tolist() == [3.0, 4.0, 3.0]
    p = est.probability(torch.tensor([1, 2, 3, 7]))
    assert p.tolist() == pytest.approx([1.0, 0.5, 1.0 / 3.0, 1.0])


def test_estimator_hashes_ids_into_buckets() -> None:
    est = StreamingFrequencyEstimator(4, alpha=0.5)
    est.update(torch.tensor([1]))
    est.update(torch.tensor([5]))        # 5 mod 4 = 1: the same bucket, seen again at step 2
    # B = 0.5*1 + 0.5*(2-1) = 1
    assert est.probability(torch.tensor([1, 5, 2])).tolist() == [1.0, 1.0, 1.0]
    assert bool(est.seen[1]) and not bool(est.seen[2])
    with pytest.raises(ValueError):
        StreamingFrequencyEstimator(0)
    with pytest.raises(ValueError):
        StreamingFrequencyEstimator(4, alpha=0.0)


def test_in_batch_softmax_with_logq() -> None:
    # Items 1 and 2 with p1 = 1, p2 = 1/2: column 2 gets -ln(1/2) = +ln 2.
    # Row 1: logits [1, 0.6 + ln 2]   -> ln(1 + 2 e^-0.4)
    # Row 2: logits [0, 0.8 + ln 2]   -> ln(1 + e^-0.8 / 2)
    crit = InBatchSoftmax(10, temperature=1.0, logq=True, alpha=0.5)
    for ids in ([1, 2], [1], [1, 3, 3], [2]):
        crit.item_freq.update(torch.tensor(ids))
    loss = crit(U, V, torch.tensor([1, 2]), update=False)
    expected = (math.log(1 + 2 * math.exp(-0.4)) + math.log(1 + math.exp(-0.8) / 2)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert crit.item_freq.step == 4       # update=False left the estimate alone


def test_training_call_updates_the_estimate_before_scoring() -> None:
    # A fresh estimator sees [1, 2] at step 1: p = 1 for both, so log p = 0 and the loss is
    # the uncorrected one.
    crit = InBatchSoftmax(10, temperature=1.0, logq=True)
    loss = crit(U, V, torch.tensor([1, 2]))
    assert crit.item_freq.step == 1
    assert float(loss) == pytest.approx((_softplus(-0.4) + _softplus(-0.8)) / 2, rel=1e-6)


def test_accidental_hits_are_masked() -> None:
    # Both rows hold item 4: each row's other column is the same item, masked, leaving the
    # target alone in its softmax -> loss exactly 0.
    crit = InBatchSoftmax(10, temperature=1.0, logq=False)
    assert float(crit(U, V, torch.tensor([4, 4]))) == 0.0
    # Three rows, items [4, 4, 6], U = V = I3, so sim = I.
    u3 = torch.eye(3)
    v3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # sim = I. Row 1 (item 4): column 2 masked -> logits [1, -inf, 0] -> ln(1 + e^-1).
    # Row 2 (item 4): column 1 masked -> [ -inf, 1, 0 ] -> ln(1 + e^-1).
    # Row 3 (item 6): nothing masked -> [0, 0, 1] -> ln(1 + 2 e^-1).
    loss = crit(u3, v3, torch.tensor([4, 4, 6]))
    expected = (2 * _softplus(-1.0) + math.log(1 + 2 * math.exp(-1.0))) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_other_items_of_the_same_user_are_masked_too() -> None:
    # The same user twice (different items): each pair's other item is a known positive.
    crit = InBatchSoftmax(10, temperature=1.0, logq=False)
    assert float(crit(U, V, torch.tensor([1, 2]), torch.tensor([7, 7]))) == 0.0
    assert float(crit(U, V, torch.tensor([1, 2]), torch.tensor([7, 8]))) > 0.0


def test_item_to_user_direction_and_its_weight() -> None:
    # Item->user: columns of sim are the softmax rows. Item 1: users [1, 0] target user 1
    # -> ln(1 + e^-1); item 2: users [0.6, 0.8] target user 2 -> ln(1 + e^-0.2).
    i2u = (_softplus(-1.0) + _softplus(-0.2)) / 2
    u2i = (_softplus(-0.4) + _softplus(-0.8)) / 2
    ids, users = torch.tensor([1, 2]), torch.tensor([10, 11])
    only = InBatchSoftmax(10, temperature=1.0, logq=False, item_to_user_weight=1.0)
    assert float(only(U, V, ids, users)) == pytest.approx(i2u, rel=1e-6)
    half = InBatchSoftmax(10, temperature=1.0, logq=False, item_to_user_weight=0.5)
    assert float(half(U, V, ids, users)) == pytest.approx(0.5 * u2i + 0.5 * i2u, rel=1e-6)
    with pytest.raises(ValueError, match="item_to_user_weight"):
        InBatchSoftmax(10, item_to_user_weight=1.5)


def test_item_to_user_logq_uses_the_user_frequency() -> None:
    # Users 10 (p = 1) and 11 (p = 1/2, after steps {10, 11}, {10}, {10}, {11} with alpha 0.5:
    # B11 = 0.5*1 + 0.5*(4-1) = 2). Item 1: users [1, 0 + ln 2] -> ln(1 + 2 e^-1);
    # item 2: users [0.6, 0.8 + ln 2] -> ln(1 + e^-0.2 / 2).
    crit = InBatchSoftmax(10, temperature=1.0, logq=True, item_to_user_weight=1.0,
                          num_users=20, alpha=0.5)
    for ids in ([10, 11], [10], [10], [11]):
        crit.user_freq.update(torch.tensor(ids))
    loss = crit(U, V, torch.tensor([1, 2]), torch.tensor([10, 11]), update=False)
    expected = (math.log(1 + 2 * math.exp(-1.0)) + math.log(1 + math.exp(-0.2) / 2)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_gradients_flow_to_both_towers() -> None:
    u = U.clone().requires_grad_(True)
    v = V.clone().requires_grad_(True)
    InBatchSoftmax(10, temperature=0.5)(u, v, torch.tensor([1, 2])).backward()
    assert float(u.grad.abs().sum()) > 0 and float(v.grad.abs().sum()) > 0


def test_bad_inputs_raise_value_errors() -> None:
    crit = InBatchSoftmax(10)
    with pytest.raises(ValueError, match="temperature"):
        InBatchSoftmax(10, temperature=0.0)
    with pytest.raises(ValueError, match="matrices"):
        crit(U, V[:1], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="ids"):
        crit(U, V, torch.tensor([1, 2, 3]))
