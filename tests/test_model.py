"""The two towers: shapes, unit norms, masked pooling, shared tables, every constructor argument."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dssm_core.config import TrainConfig
from dssm_core.features import DenseFeature, SequenceFeature, SparseFeature
from dssm_core.model import (DSSM, EmbeddingBlock, FastDropout, Tower, flops_per_sample, lookup,
                              parameter_count, pool)

torch.set_num_threads(1)

USER_SPECS = (
    SparseFeature("user_id", 6, 4),
    SparseFeature("gender", 3, 2),
    SequenceFeature("hist", 9, 4, max_len=3, pooling="mean", shared_with="item_id"),
    DenseFeature("user_mean_rating", 1),
)
ITEM_SPECS = (
    SparseFeature("item_id", 9, 4),
    SequenceFeature("genres", 5, 3, max_len=2, pooling="mean"),
    DenseFeature("item_stats", 2),
)
CFG = TrainConfig(user_hidden=(8, 5), item_hidden=(7, 5), gamma=10.0, seed=0)


def _batch() -> dict[str, torch.Tensor]:
    return {
        "user_id": torch.tensor([1, 2, 5, 0]),
        "gender": torch.tensor([1, 2, 1, 0]),
        "hist": torch.tensor([[3, 0, 0], [1, 2, 8], [0, 0, 0], [4, 4, 0]]),
        "user_mean_rating": torch.tensor([0.5, -1.0, 0.0, 2.0]),
        "item_id": torch.tensor([3, 8, 1, 0]),
        "genres": torch.tensor([[1, 2], [4, 0], [0, 0], [3, 3]]),
        "item_stats": torch.tensor([[0.1, 0.2], [0.3, -0.4], [0.0, 0.0], [1.0, 1.0]]),
    }


def _model(**changes: object) -> DSSM:
    return DSSM(USER_SPECS, ITEM_SPECS, CFG.with_(**changes))


def test_towers_return_unit_vectors_of_the_shared_size() -> None:
    model = _model()
    b = _batch()
    u, v = model.user_tower(b), model.item_tower(b)
    assert u.shape == (4, 5) and v.shape == (4, 5)
    assert model.output_dim == 5
    assert torch.allclose(u.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(v.norm(dim=1), torch.ones(4), atol=1e-6)
    logits = model(b)
    assert logits.shape == (4,)
    assert torch.allclose(logits, 10.0 * (u * v).sum(dim=1), atol=1e-6)
    assert bool((logits.abs() <= 10.0 + 1e-5).all())


def test_padding_is_masked_out_of_every_pooling() -> None:
    emb = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]],
                        [[1.0, -4.0], [3.0, 2.0], [9.0, 9.0]],
                        [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]])              # (3, 3, 2)
    ids = torch.tensor([[7, 0, 0], [1, 2, 0], [0, 0, 0]])
    mask = ids != 0
    # Row 0: only position 0 is real -> emb itself. Row 1: positions 0 and 1 (the 9s are padding).
    # Row 2: nothing real -> zeros, whatever the (padding) vectors hold.
    assert torch.equal(pool(emb, mask, "mean"),
                       torch.tensor([[1.0, 2.0], [2.0, -1.0], [0.0, 0.0]]))
    assert torch.equal(pool(emb, mask, "sum"),
                       torch.tensor([[1.0, 2.0], [4.0, -2.0], [0.0, 0.0]]))
    assert torch.equal(pool(emb, mask, "max"),
                       torch.tensor([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="pooling"):
        pool(emb, mask, "median")


def test_a_sequence_a_0_0_pools_to_the_embedding_of_a() -> None:
    for how in ("mean", "sum", "max"):
        spec = SequenceFeature("genres", 5, 3, max_len=3, pooling=how)
        block = EmbeddingBlock((spec,), generator=torch.Generator().manual_seed(1))
        out = block({"genres": torch.tensor([[2, 0, 0], [2, 2, 0]])})        # (2, 3)
        a = block.table("genres").weight[2]
        assert torch.allclose(out[0], a), how
        assert torch.allclose(out[1], 2 * a if how == "sum" else a), how


def test_padding_row_is_zero_and_never_trained() -> None:
    model = _model()
    table = model.item.embeddings.table("genres")
    assert torch.equal(table.weight[0], torch.zeros(3))
    loss = model(_batch()).sum()
    loss.backward()
    assert torch.equal(table.weight.grad[0], torch.zeros(3))
    assert torch.equal(model.shared["item_id"].weight.grad[0], torch.zeros(4))


def test_history_shares_the_item_id_table_owned_once_by_the_model() -> None:
    model = _model()
    hist_table = model.user.embeddings.table("hist")
    item_table = model.item.embeddings.table("item_id")
    assert hist_table is item_table is model.shared["item_id"]
    assert hist_table.weight is item_table.weight
    keys = [k for k in model.state_dict() if k.endswith(".weight") and "item_id" in k]
    assert keys == ["shared.item_id.weight"]
    params = list(model.parameters())
    assert sum(p is item_table.weight for p in params) == 1
    # A history [3, 0, 0] pools to item 3's own embedding.
    b = {"hist": torch.tensor([[3, 0, 0]])}
    start = sum(s.embedding_dim for s in USER_SPECS[:2])
    pooled = model.user.embeddings({**_batch(), **b,
                                    "user_id": torch.tensor([1]), "gender": torch.tensor([1]),
                                    "user_mean_rating": torch.tensor([0.0])})[0, start:start + 4]
    assert torch.equal(pooled, item_table.weight[3])


def test_embedding_block_output_concatenates_in_spec_order() -> None:
    model = _model()
    b = _batch()
    x = model.user.embeddings(b)                                              # (4, 4+2+4+1)
    assert x.shape == (4, 11) and model.user.embeddings.output_dim == 11
    assert torch.equal(x[:, :4], model.user.embeddings.table("user_id")(b["user_id"]))
    assert torch.equal(x[:, 10], b["user_mean_rating"])
    assert model.user_feature_names == ("user_id", "gender", "hist", "user_mean_rating")
    assert model.item_feature_names == ("item_id", "genres", "item_stats")


def test_no_activation_after_the_last_layer() -> None:
    model = _model(activation="relu")
    assert isinstance(model.user.mlp[-1], nn.Linear)
    assert isinstance(model.item.mlp[-1], nn.Linear)
    raw = model.user.mlp(model.user.embeddings(_batch()))                     # (4, 5) pre-norm
    assert bool((raw < 0).any()), "a ReLU at the end would make every output >= 0"
    assert bool((model.user_tower(_batch()) < 0).any())


def test_gamma_scales_logits_exactly() -> None:
    b = _batch()
    one, ten = _model(gamma=1.0), _model(gamma=10.0)
    assert torch.allclose(ten(b), 10.0 * one(b), rtol=1e-6, atol=1e-7)
    assert one.temperature == 1.0 and ten.temperature == pytest.approx(0.1)


def test_hidden_sizes_shape_the_mlps() -> None:
    model = _model(user_hidden=(16, 12, 6), item_hidden=(6,))
    user_linears = [m for m in model.user.mlp if isinstance(m, nn.Linear)]
    item_linears = [m for m in model.item.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in user_linears] == [(11, 16), (16, 12), (12, 6)]
    # item input: item_id 4 + genres 3 + item_stats 2 = 9
    assert [(m.in_features, m.out_features) for m in item_linears] == [(9, 6)]
    assert model.user_tower(_batch()).shape == (4, 6)


def test_batch_norm_dropout_and_activation_are_used() -> None:
    plain = _model()
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in plain.modules())
    bn = _model(batch_norm=True)
    norms = [m for m in bn.user.mlp if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [8]                  # between layers only
    drop = _model(dropout=0.3)
    assert [m.p for m in drop.item.mlp if isinstance(m, nn.Dropout)] == [0.3]
    for name, cls in (("relu", nn.ReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh), ("silu", nn.SiLU)):
        acts = [type(m) for m in _model(activation=name).user.mlp
                if not isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.Dropout))]
        assert acts == [cls], name
    b = _batch()
    assert not torch.allclose(_model(activation="tanh")(b), _model(activation="relu")(b))


def test_dropout_acts_in_training_mode_only() -> None:
    model = _model(dropout=0.5)
    b = _batch()
    model.eval()
    assert torch.equal(model(b), model(b))
    model.train()
    torch.manual_seed(0)
    first = model(b)
    assert not torch.equal(first, model(b))


def test_batch_norm_changes_outputs_and_tracks_statistics() -> None:
    bn = _model(batch_norm=True)
    b = _batch()
    bn.train()
    bn(b)
    norm = next(m for m in bn.user.mlp if isinstance(m, nn.BatchNorm1d))
    assert int(norm.num_batches_tracked) == 1
    assert not torch.allclose(bn.eval()(b), _model().eval()(b))


def test_embedding_dim_comes_from_the_specs() -> None:
    big = (SparseFeature("user_id", 6, 32),)
    model = DSSM(big, (SparseFeature("item_id", 9, 7),), CFG)
    assert model.user.embeddings.table("user_id").weight.shape == (6, 32)
    assert model.item.embeddings.table("item_id").weight.shape == (9, 7)
    assert model.user.mlp[0].in_features == 32


def test_seed_fixes_initialisation_whatever_the_global_rng() -> None:
    torch.manual_seed(1)
    a = _model(seed=5)
    torch.manual_seed(2)
    b = _model(seed=5)
    c = _model(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_initialisation_is_not_the_articles_near_zero() -> None:
    model = _model()
    w = model.shared["item_id"].weight.detach()[1:]
    assert 0.05 < float(w.std()) < 0.2
    # Cosines of random pairs spread out, so gamma * cos gives the loss something to move.
    assert float(model(_batch()).detach().std()) > 0.5


def test_parameter_count_counts_shared_tables_once() -> None:
    model = DSSM((SequenceFeature("hist", 9, 4, 3, shared_with="item_id"),),
                 (SparseFeature("item_id", 9, 4),), CFG.with_(user_hidden=(5,), item_hidden=(5,)))
    # shared 9*4 + user Linear(4,5) 25 + item Linear(4,5) 25
    assert parameter_count(model) == 36 + 25 + 25
    # Two Linear(4, 5): forward 2 * (2*4*5) = 80 FLOPs per pair; training 3x = 240.
    assert flops_per_sample(model, training=False) == 80
    assert flops_per_sample(model) == 240


def test_bad_specs_and_batches_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="activation"):
        Tower(USER_SPECS[:1], (4,), activation="swishy")
    with pytest.raises(ValueError, match="at least one feature"):
        Tower((), (4,))
    with pytest.raises(ValueError, match="hidden"):
        Tower(USER_SPECS[:1], ())
    with pytest.raises(ValueError, match="does not name a sparse feature"):
        DSSM((SequenceFeature("hist", 9, 4, 3, shared_with="nope"),), ITEM_SPECS, CFG)
    with pytest.raises(ValueError, match="shares a table"):
        DSSM((SequenceFeature("hist", 9, 8, 3, shared_with="item_id"),), ITEM_SPECS, CFG)
    with pytest.raises(ValueError, match="duplicate"):
        DSSM((SparseFeature("item_id", 9, 4),), ITEM_SPECS, CFG)
    model = _model()
    b = _batch()
    del b["gender"]
    with pytest.raises(ValueError, match="gender"):
        model.user_tower(b)
    b = _batch()
    b["item_stats"] = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="columns"):
        model.item_tower(b)


def test_probability_is_sigmoid_of_logits() -> None:
    model = _model(gamma=2.0)
    b = _batch()
    p = torch.sigmoid(model(b))
    u, v = model.user_tower(b), model.item_tower(b)
    cos = (u * v).sum(dim=1).detach()
    expected = torch.tensor([1.0 / (1.0 + math.exp(-2.0 * float(c))) for c in cos])
    assert torch.allclose(p, expected, atol=1e-6)


def test_lookup_matches_nn_embedding_values_and_dense_or_sparse_gradients() -> None:
    table = nn.Embedding(7, 3, padding_idx=0)
    ids = torch.tensor([[1, 6, 0], [6, 6, 2]])
    weights = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0))
    (table(ids) * weights).sum().backward()
    expected = table.weight.grad.clone()
    table.weight.grad = None
    out = lookup(table, ids)                                                  # (2, 3, 3)
    assert torch.equal(out, table(ids))
    (out * weights).sum().backward()
    assert torch.allclose(table.weight.grad, expected, atol=1e-6)
    assert torch.equal(table.weight.grad[0], torch.zeros(3))                  # padding row
    # sparse: one gradient row per id, the padding id left out, the same gradient once summed
    table.weight.grad = None
    (lookup(table, ids, sparse=True) * weights).sum().backward()
    grad = table.weight.grad
    assert grad.is_sparse and grad.shape == (7, 3) and grad._nnz() == 5
    assert grad.coalesce().indices()[0].tolist() == [1, 2, 6]
    assert torch.allclose(grad.to_dense(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        lookup(table, torch.tensor([7]))
    with pytest.raises(ValueError, match="integers"):
        lookup(table, torch.tensor([1.0]))


def test_sparse_gradients_cover_every_table_shared_ones_included_then_turn_off() -> None:
    model = _model()
    with model.sparse_gradients():
        model(_batch()).sum().backward()
    tables = model.embedding_tables()
    # user_id, gender, genres and item_id (which hist shares), each once
    assert len(tables) == len({id(t) for t in tables}) == 4
    assert all(t.weight.grad.is_sparse for t in tables)
    assert all(not t.weight.grad.to_dense()[0].any() for t in tables)      # padding row
    for t in tables:
        t.weight.grad = None
    model(_batch()).sum().backward()                                      # outside: dense again
    assert not any(t.weight.grad.is_sparse for t in tables)


def test_only_tables_of_at_least_min_rows_get_sparse_gradients() -> None:
    """Tables: user_id 6 rows, gender 3, item_id 9 (shared by hist), genres 5. With
    min_rows 6, user_id and item_id are sparse; gender and genres stay dense, and
    ``training.make_optimizer`` gives them to fused (dense) Adam, the others to RowWiseAdam."""
    from dssm_core import optim
    from dssm_core.training import make_optimizer

    model = _model()
    with model.sparse_gradients(6):
        model(_batch()).sum().backward()
    sizes = {t.num_embeddings: t for t in model.embedding_tables()}
    assert sorted(sizes) == [3, 5, 6, 9]
    assert {n for n, t in sizes.items() if t.weight.grad.is_sparse} == {6, 9}
    assert sorted(t.num_embeddings for t in model.sparse_tables(6)) == [6, 9]
    chain = make_optimizer(model, CFG, sparse_min_rows=6)
    dense_opt, rowwise = chain.optimizers
    assert isinstance(rowwise, optim.RowWiseAdam)
    assert {id(p) for g in rowwise.param_groups for p in g["params"]} == \
        {id(sizes[6].weight), id(sizes[9].weight)}
    dense_ids = {id(p) for g in dense_opt.param_groups for p in g["params"]}
    assert id(sizes[3].weight) in dense_ids and id(sizes[5].weight) in dense_ids
    chain.step()                                  # dense and sparse gradients, one step
    assert not sizes[3].weight.grad.is_sparse


def test_id_dropout_hides_ids_in_training_only() -> None:
    # With id_dropout close to 1 nearly every user_id/item_id is replaced by the unknown
    # index 0 in training mode, so the output no longer depends on the ids; eval mode keeps them.
    model = DSSM(USER_SPECS, ITEM_SPECS, CFG, id_dropout=0.999)
    assert model.id_dropout == 0.999
    assert model.user.embeddings.id_features == {"user_id"}
    assert model.item.embeddings.id_features == {"item_id"}
    b = _batch()
    other = dict(b, user_id=torch.tensor([2, 3, 4, 1]), item_id=torch.tensor([5, 6, 7, 2]))
    model.train()
    torch.manual_seed(0)
    hidden = model.user.embeddings(b)
    torch.manual_seed(0)
    assert torch.equal(hidden, model.user.embeddings(other))
    assert torch.equal(hidden[:, :4], torch.zeros(4, 4))                      # user_id part
    model.eval()
    assert not torch.equal(model.user.embeddings(b), model.user.embeddings(other))
    assert DSSM(USER_SPECS, ITEM_SPECS, CFG).id_dropout == 0.0                 # the default
    with pytest.raises(ValueError, match="id_dropout"):
        DSSM(USER_SPECS, ITEM_SPECS, CFG, id_dropout=1.0)


def test_a_block_alone_can_share_a_table_between_its_own_features() -> None:
    block = EmbeddingBlock((SparseFeature("item_id", 9, 4),
                            SequenceFeature("similar", 9, 4, 2, pooling="sum",
                                            shared_with="item_id")))
    assert block.table("similar") is block.table("item_id")
    assert list(block.tables) == ["item_id"]
    out = block({"item_id": torch.tensor([2]), "similar": torch.tensor([[2, 3]])})   # (1, 8)
    w = block.table("item_id").weight
    assert torch.allclose(out[0, :4], w[2]) and torch.allclose(out[0, 4:], w[2] + w[3])
    with pytest.raises(ValueError, match="not a sparse feature"):
        EmbeddingBlock((SequenceFeature("similar", 9, 4, 2, shared_with="item_id"),))
    with pytest.raises(KeyError):
        block.table("nope")


def test_fast_dropout_keeps_the_expected_fraction_and_scale() -> None:
    drop = FastDropout(0.25)
    x = torch.ones(400, 100)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    # Kept entries are scaled by 1 / (1 - 0.25) = 4/3; about 75% of 40,000 are kept.
    assert torch.allclose(y[kept], torch.full_like(y[kept], 4.0 / 3.0))
    assert abs(float(kept.float().mean()) - 0.75) < 0.01
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_fast_dropout_is_bit_for_bit_the_two_product_form_in_values_and_gradients() -> None:
    """One product with a scaled float mask equals ``x * keep * (1 / (1 - p))`` exactly
    (kept values rounded once either way), forward and backward; bfloat16 inputs keep the
    float32 scalar (a bfloat16 scale 1.109375 would be off by 0.16 %)."""
    p = 0.1
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(64, 33, generator=torch.Generator().manual_seed(1)).to(dtype)
        x, ref_x = x0.clone().requires_grad_(), x0.clone().requires_grad_()
        torch.manual_seed(5)
        got = FastDropout(p).train()(x)
        torch.manual_seed(5)
        ref = ref_x * (torch.rand_like(ref_x) >= p) * (1.0 / (1.0 - p))
        assert got.dtype == dtype and torch.equal(got, ref)
        w = torch.randn(64, 33, generator=torch.Generator().manual_seed(2)).to(dtype)
        (got * w).sum().backward()
        (ref * w).sum().backward()
        assert torch.equal(x.grad, ref_x.grad)
    kept = FastDropout(0.5).train()(torch.ones(1000))
    assert set(kept.unique().tolist()) <= {0.0, 2.0}                      # 1 / (1 - 0.5)


def test_lookup_gradient_of_a_strided_slice_is_the_stock_one_exactly() -> None:
    """A feature's gradient arrives as columns of the concat's gradient (strided); the
    backward copies it contiguous first, with the same sums as nn.Embedding's."""
    table = nn.Embedding(5, 4, padding_idx=0)
    ids = torch.tensor([3, 1, 3, 0, 4, 3])
    other = torch.randn(6, 2, requires_grad=True)
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))
    (torch.cat([other, lookup(table, ids)], dim=1) * w).sum().backward()
    got = table.weight.grad.clone()
    table.weight.grad = None
    (torch.cat([other, table(ids)], dim=1) * w).sum().backward()
    assert torch.equal(got, table.weight.grad)
    # row 3 sums three rows' gradients in order: w[0] + w[2] + w[5] (columns 2..5)
    assert torch.equal(got[3], (w[0, 2:] + w[2, 2:]) + w[5, 2:])
    assert torch.equal(got[0], torch.zeros(4))                            # padding row


def test_dense_lookups_of_a_shared_table_sum_as_before_with_the_padding_row_zeroed() -> None:
    """Two lookups of one table (item_id and the history sharing it): torch's index_select
    plus the table's padding hook give the bits of one ``zeros().index_add_`` per part with
    its padding row zeroed, then summed, and the hook is registered once per table."""
    table = nn.Embedding(6, 3, padding_idx=0)
    a, b = torch.tensor([0, 2, 2, 5]), torch.tensor([[1, 0], [2, 2], [0, 0]])
    wa = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    wb = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(5))
    ((lookup(table, a) * wa).sum() + (lookup(table, b) * wb).sum()).backward()
    got = table.weight.grad.clone()
    parts = []
    for ids, grad in ((a, wa), (b.reshape(-1), wb.reshape(-1, 3))):
        part = torch.zeros(6, 3).index_add_(0, ids, grad)
        part[0] = 0
        parts.append(part)
    assert torch.equal(got, parts[0] + parts[1])
    assert torch.equal(got[0], torch.zeros(3))
    assert torch.equal(got[2], (wa[1] + wa[2]) + (wb[1, 0] + wb[1, 1]))
    assert len(table.weight._backward_hooks) == 1                       # not once per call


def test_no_bias_before_batch_norm_and_old_biases_fold_into_the_running_mean() -> None:
    model = _model(batch_norm=True, user_hidden=(8, 6, 5), item_hidden=(7, 5))
    linears = [m for m in model.user.mlp if isinstance(m, nn.Linear)]
    assert [lin.bias is None for lin in linears] == [True, True, False]   # last keeps its bias
    assert _model(batch_norm=False).user.mlp[0].bias is not None
    # train a little so the running statistics are not the initial ones
    model.train()
    for _ in range(3):
        model(_batch())
    model.eval()
    expected = model(_batch()).detach()
    # weights saved by a version whose linear layers before batch norm had a bias b: BN's
    # running mean then held b as well (rm + b); loading must give the same function
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    for tower in ("user", "item"):
        layers = list(getattr(model, tower).mlp)
        for i, layer in enumerate(layers[:-1]):
            if isinstance(layer, nn.Linear) and isinstance(layers[i + 1], nn.BatchNorm1d):
                b = torch.randn(layer.out_features, generator=gen)
                state[f"{tower}.mlp.{i}.bias"] = b
                state[f"{tower}.mlp.{i + 1}.running_mean"] += b
    fresh = _model(batch_norm=True, user_hidden=(8, 6, 5), item_hidden=(7, 5), seed=3)
    fresh.load_state_dict(state)                                 # strict: no key left over
    fresh.eval()
    assert torch.allclose(fresh(_batch()), expected, atol=1e-5)
