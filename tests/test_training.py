"""Training loop, prediction and embedding on the tiny synthetic set, with the real encoder."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

from dssm_core.config import TrainConfig
from dssm_core.encoding import FeatureEncoder
from dssm_core.model import DSSM
from dssm_core.training import EPOCH_KEYS, embed, fit, predict, resolve_precision

torch.set_num_threads(1)

CFG = TrainConfig(epochs=4, batch_size=256, learning_rate=1e-2, embedding_dim=8,
                  user_hidden=(32, 16), item_hidden=(32, 16), history_len=10,
                  early_stopping_patience=0, seed=11)


@pytest.fixture(scope="module")
def encoded(tiny_synthetic) -> dict[str, Any]:
    """Time-ordered split of the tiny synthetic set: first 70% train, next 10% validation."""
    ds = tiny_synthetic
    n = len(ds.interactions)
    train_rows = np.arange(int(n * 0.7))
    val_rows = np.arange(int(n * 0.7), int(n * 0.8))
    enc = FeatureEncoder(history_len=CFG.history_len, embedding_dim=CFG.embedding_dim)
    enc.fit(ds, train_rows)
    return {
        "ds": ds,
        "enc": enc,
        "train": enc.transform_events(ds, train_rows),
        "val": enc.transform_events(ds, val_rows),
    }


def _model(encoded: dict[str, Any], cfg: TrainConfig = CFG) -> DSSM:
    return DSSM(encoded["enc"].user_specs_, encoded["enc"].item_specs_, cfg)


def _state(model: DSSM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pointwise_fit_lowers_the_loss_and_reports_every_epoch(encoded) -> None:
    model = _model(encoded)
    seen: list[dict[str, Any]] = []
    result = fit(model, encoded["train"], encoded["val"], CFG, on_epoch_end=seen.append)
    assert result.stopped == "completed"
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert seen == result.history
    assert all(tuple(r) == EPOCH_KEYS for r in result.history)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.05
    assert result.history[-1]["val_auc"] > 0.7
    assert result.monitor == "val_logloss"
    best = min(result.history, key=lambda r: r["val_logloss"])
    assert result.best_epoch == best["epoch"]
    # Pointwise trains on every labelled row; train logloss is the BCE of the collected
    # predictions (dropout off here), so it equals the mean training loss.
    assert result.train_rows == len(encoded["train"]["label"])
    for r in result.history:
        assert r["train_logloss"] == pytest.approx(r["train_loss"], rel=1e-4)
        # val_loss is the objective (BCE) on validation rows: the logloss without clipping.
        assert r["val_loss"] == pytest.approx(r["val_logloss"], rel=1e-4)
        assert r["seconds"] > 0
    assert result.samples_per_second > 0
    assert not model.training


def test_inbatch_fit_trains_on_positives_and_lowers_the_loss(encoded) -> None:
    cfg = CFG.with_(objective="inbatch", epochs=6)
    model = _model(encoded, cfg)
    result = fit(model, encoded["train"], encoded["val"], cfg)
    n_pos = int((encoded["train"]["label"] == 1).sum())
    assert 0 < n_pos < len(encoded["train"]["label"])
    assert result.train_rows == n_pos
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.1
    assert result.monitor == "val_auc"
    assert result.best_epoch == max(result.history, key=lambda r: r["val_auc"])["epoch"]
    # Validation uses every validation row (both classes), so its AUC exists.
    assert result.history[-1]["val_auc"] > 0.65
    assert result.history[-1]["train_auc"] is not None
    # val_loss: the in-batch softmax over validation positives; it falls, and ends below
    # the uniform ln(B)
    n_val_pos = int((encoded["val"]["label"] == 1).sum())
    assert all(r["val_loss"] > 0 for r in result.history)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.history[-1]["val_loss"] < np.log(min(cfg.batch_size, n_val_pos))


def test_inbatch_can_train_on_every_observed_row(encoded) -> None:
    cfg = CFG.with_(objective="inbatch", epochs=1)
    result = fit(_model(encoded, cfg), encoded["train"], None, cfg, positives_only=False)
    assert result.train_rows == len(encoded["train"]["label"])


def test_item_to_user_weight_changes_training(encoded) -> None:
    cfg = CFG.with_(objective="inbatch", epochs=1)
    a, b = _model(encoded, cfg), _model(encoded, cfg)
    ra = fit(a, encoded["train"], None, cfg)
    rb = fit(b, encoded["train"], None, cfg, item_to_user_weight=0.5)
    assert ra.history[0]["train_loss"] != rb.history[0]["train_loss"]
    assert not _same_state(_state(a), _state(b))


def test_same_seed_same_history_and_weights(encoded) -> None:
    cfg = CFG.with_(epochs=2, dropout=0.2)
    runs = []
    for seed in (5, 5, 6):
        c = cfg.with_(seed=seed)
        model = _model(encoded, c)
        result = fit(model, encoded["train"], encoded["val"], c)
        history = [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]
        runs.append((history, _state(model)))
    assert runs[0][0] == runs[1][0]
    assert _same_state(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_one_step_changes_only_the_rows_its_batch_looked_up(encoded) -> None:
    # one batch (200 rows, batch size 256) with weight decay on, under which dense Adam moved
    # every row of every table; the row-wise update moves the looked-up rows, never padding
    cfg = CFG.with_(epochs=1, batch_size=256, weight_decay=1e-5)
    rows = {k: v[:200] for k, v in encoded["train"].items()}
    model = _model(encoded, cfg)
    before = _state(model)
    fit(model, rows, None, cfg, sparse_min_rows=0)
    name_of = {id(m): name for name, m in model.named_modules()}
    looked_up: dict[int, set[int]] = {}
    for block in (model.user.embeddings, model.item.embeddings):
        for s in (*block.sparse, *block.sequences):
            looked_up.setdefault(id(block.table(s.name)), set()).update(
                np.unique(rows[s.name]).tolist())
    tables = model.embedding_tables()
    assert {id(t) for t in tables} == set(looked_up)
    for t in tables:
        old = before[name_of[id(t)] + ".weight"]
        changed = torch.nonzero((t.weight.detach() != old).any(dim=1)).squeeze(1).tolist()
        assert set(changed) == looked_up[id(t)] - {0}, name_of[id(t)]
        assert t.weight.grad.is_sparse
        assert torch.equal(t.weight[0].detach(), torch.zeros(t.embedding_dim))


@pytest.mark.parametrize("objective", ["pointwise", "inbatch"])
def test_bfloat16_steps_train_as_well_deterministically_and_keep_float32_weights(
        encoded, objective) -> None:
    """bfloat16 autocast (software-emulated where the CPU lacks it: slow, still correct)."""
    results = {}
    for precision in ("float32", "bfloat16", "bfloat16"):
        cfg = CFG.with_(objective=objective, epochs=3, precision=precision)
        model = _model(encoded, cfg)
        r = fit(model, encoded["train"], encoded["val"], cfg)
        assert r.precision == precision
        assert all(p.dtype == torch.float32 for p in model.parameters())
        history = [{k: v for k, v in h.items() if k != "seconds"} for h in r.history]
        if precision in results:                                   # same seed, same run
            assert history == results[precision][0]
            assert _same_state(_state(model), results[precision][1])
        results[precision] = (history, _state(model))
    f32, b16 = results["float32"][0], results["bfloat16"][0]
    assert b16[-1]["train_loss"] < b16[0]["train_loss"]
    # the same model quality within bfloat16's rounding (validation AUC)
    assert b16[-1]["val_auc"] == pytest.approx(f32[-1]["val_auc"], abs=0.03)
    assert b16 != f32                                   # the products did run in bfloat16


def test_precision_auto_resolves_to_what_the_cpu_multiplies_natively(monkeypatch) -> None:
    import dssm_core.training as tr

    monkeypatch.setattr(tr, "native_bfloat16", lambda: True)
    assert resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(tr, "native_bfloat16", lambda: False)
    assert resolve_precision("auto") == "float32"
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def test_should_stop_cancels_between_batches(encoded) -> None:
    model = _model(encoded)
    before = _state(model)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3           # two batches run, then the third check cancels

    result = fit(model, encoded["train"], encoded["val"], CFG, should_stop=stop)
    assert result.stopped == "cancelled"
    assert len(calls) == 3
    assert result.history == [] and result.best_epoch == 0
    assert not _same_state(before, _state(model))   # the two batches did train


def test_cancel_in_a_later_epoch_restores_the_best_finished_epoch(encoded) -> None:
    n_batches = -(-len(encoded["train"]["label"]) // CFG.batch_size)
    model = _model(encoded)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > n_batches + 2   # epoch 1 whole, then two batches of epoch 2

    result = fit(model, encoded["train"], encoded["val"], CFG, should_stop=stop,
                 on_epoch_end=lambda r: snapshots.__setitem__(r["epoch"], _state(model)))
    assert result.stopped == "cancelled"
    assert len(result.history) == 1 and result.best_epoch == 1
    assert _same_state(_state(model), snapshots[1])


def test_early_stopping_restores_the_best_weights(encoded) -> None:
    # Validation labels flipped: the better the model learns, the worse validation gets.
    val = dict(encoded["val"])
    val["label"] = 1.0 - val["label"]
    cfg = CFG.with_(epochs=8, early_stopping_patience=1)
    model = _model(encoded, cfg)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    result = fit(model, encoded["train"], val, cfg,
                 on_epoch_end=lambda r: snapshots.__setitem__(r["epoch"], _state(model)))
    assert result.stopped == "early"
    assert len(result.history) == result.best_epoch + 1       # patience 1
    assert _same_state(_state(model), snapshots[result.best_epoch])
    best = result.history[result.best_epoch - 1]
    p = predict(model, val)
    from dssm_core.metrics import logloss
    assert logloss(val["label"], p) == pytest.approx(best["val_logloss"], rel=1e-6)


def test_monitor_val_auc_val_loss_and_bad_monitor(encoded) -> None:
    cfg = CFG.with_(epochs=2)
    result = fit(_model(encoded, cfg), encoded["train"], encoded["val"], cfg, monitor="val_auc")
    assert result.monitor == "val_auc"
    assert result.best_epoch == max(result.history, key=lambda r: r["val_auc"])["epoch"]
    ib = cfg.with_(objective="inbatch", epochs=3)
    result = fit(_model(encoded, ib), encoded["train"], encoded["val"], ib, monitor="val_loss")
    assert result.monitor == "val_loss"
    assert result.best_epoch == min(result.history, key=lambda r: r["val_loss"])["epoch"]
    with pytest.raises(ValueError, match="monitor"):
        fit(_model(encoded, cfg), encoded["train"], encoded["val"], cfg, monitor="accuracy")


def test_without_validation_the_last_epoch_is_kept(encoded) -> None:
    cfg = CFG.with_(epochs=2, early_stopping_patience=1)
    model = _model(encoded, cfg)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    result = fit(model, encoded["train"], None, cfg,
                 on_epoch_end=lambda r: snapshots.__setitem__(r["epoch"], _state(model)))
    assert result.best_epoch == 2 and result.monitor is None and result.stopped == "completed"
    assert all(r["val_auc"] is None and r["val_logloss"] is None and r["val_loss"] is None
               for r in result.history)
    assert _same_state(_state(model), snapshots[2])


def test_fit_sets_and_restores_the_thread_count(encoded) -> None:
    torch.set_num_threads(1)
    seen = []
    cfg = CFG.with_(epochs=1, num_threads=2)
    fit(_model(encoded, cfg), encoded["train"], None, cfg,
        on_epoch_end=lambda r: seen.append(torch.get_num_threads()))
    assert seen == [2]
    assert torch.get_num_threads() == 1


def test_predict_gives_probabilities_of_the_model(encoded) -> None:
    model = _model(encoded, CFG.with_(dropout=0.3))
    model.train()
    val = encoded["val"]
    p = predict(model, val, batch_size=100)
    assert p.dtype == np.float32 and p.shape == (len(val["label"]),)
    assert bool(((p > 0) & (p < 1)).all())
    assert model.training                                   # mode restored
    model.eval()
    batch = {k: torch.as_tensor(v) for k, v in val.items() if k != "label"}
    with torch.no_grad():
        expected = torch.sigmoid(model(batch)).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)
    # No label needed.
    np.testing.assert_array_equal(predict(model, {k: v for k, v in val.items() if k != "label"}),
                                  predict(model, val))


def test_embed_returns_unit_vectors_of_each_tower(encoded) -> None:
    model = _model(encoded)
    ds, enc = encoded["ds"], encoded["enc"]
    user_ids, users = enc.user_table(ds)
    item_ids, items = enc.item_table(ds)
    u = embed(model, "user", users, batch_size=64)
    v = embed(model, "item", items)
    assert u.shape == (len(user_ids), CFG.output_dim) and u.dtype == np.float32
    assert v.shape == (len(item_ids), CFG.output_dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = model.eval().user_tower({k: torch.as_tensor(a) for k, a in users.items()})
    np.testing.assert_allclose(u, expected.numpy(), atol=1e-6)
    # Scores from embeddings match predict on the same (user, item) pairs.
    pairs = enc.transform_pairs(ds, user_ids[:5], item_ids[:5], np.full(5, 2**62))
    pu, pv = embed(model, "user", pairs), embed(model, "item", pairs)
    np.testing.assert_allclose(1 / (1 + np.exp(-CFG.gamma * (pu * pv).sum(1))),
                               predict(model, pairs), rtol=1e-5)
    with pytest.raises(ValueError, match="tower"):
        embed(model, "movie", items)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_saved_weights_reload_with_weights_only_and_score_identically(encoded,
                                                                      batch_norm: bool) -> None:
    cfg = CFG.with_(epochs=1, batch_norm=batch_norm)
    model = _model(encoded, cfg)
    fit(model, encoded["train"], None, cfg)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = DSSM(encoded["enc"].user_specs_, encoded["enc"].item_specs_, cfg.with_(seed=99))
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(predict(fresh, encoded["val"]), predict(model, encoded["val"]))


@pytest.mark.parametrize("objective", ["pointwise", "inbatch"])
def test_trained_item_vectors_recover_the_planted_groups(encoded, objective) -> None:
    cfg = CFG.with_(objective=objective, epochs=6)
    model = _model(encoded, cfg)
    fit(model, encoded["train"], None, cfg)
    ds, enc = encoded["ds"], encoded["enc"]
    item_ids, items = enc.item_table(ds)
    v = embed(model, "item", items)
    group = ds.truth["item_group"].loc[item_ids].to_numpy()
    cos = v @ v.T
    same = group[:, None] == group[None, :]
    off = ~np.eye(len(v), dtype=bool)
    within, across = cos[same & off].mean(), cos[~same].mean()
    assert within > across + 0.1
    # each item's 5 nearest items (by cosine) mostly come from its own planted group:
    # at least 3x the share a random neighbour would have (6 groups: ~1/6)
    np.fill_diagonal(cos, -np.inf)
    nearest = np.argsort(-cos, axis=1)[:, :5]
    purity = (group[nearest] == group[:, None]).mean()
    chance = same[off].mean()
    assert purity > 3 * chance


def test_bad_data_raises_value_errors(encoded) -> None:
    model = _model(encoded)
    train = dict(encoded["train"])
    del train["hist"]
    with pytest.raises(ValueError, match="hist"):
        fit(model, train, None, CFG)
    no_label = {k: v for k, v in encoded["train"].items() if k != "label"}
    with pytest.raises(ValueError, match="label"):
        fit(model, no_label, None, CFG)
    short = dict(encoded["train"])
    short["item_id"] = short["item_id"][:-1]
    with pytest.raises(ValueError, match="rows"):
        fit(model, short, None, CFG)
    floats = dict(encoded["train"])
    floats["user_id"] = floats["user_id"].astype(np.float32)
    with pytest.raises(ValueError, match="integer"):
        fit(model, floats, None, CFG)
    one_pos = dict(encoded["train"])
    one_pos["label"] = np.zeros_like(one_pos["label"])
    one_pos["label"][0] = 1
    with pytest.raises(ValueError, match="2 positive"):
        fit(model, one_pos, None, CFG.with_(objective="inbatch"))
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, encoded["val"], batch_size=0)
    # ids are range-checked once, up front (the training steps then skip the per-batch check)
    before = _state(model)
    for bad_value in (-1, model.feature_specs["item_id"].vocab_size):
        bad = dict(encoded["train"])
        bad["item_id"] = bad["item_id"].copy()
        bad["item_id"][7] = bad_value
        with pytest.raises(ValueError, match=r"'item_id' holds indices outside \[0, "):
            fit(model, bad, None, CFG)
    bad_val = dict(encoded["val"])
    bad_val["hist"] = bad_val["hist"].copy()
    bad_val["hist"][0, 0] = 10**6
    with pytest.raises(ValueError, match="val: 'hist'"):
        fit(model, encoded["train"], bad_val, CFG)
    assert _same_state(before, _state(model))                          # nothing trained


def test_fit_leaves_the_per_lookup_id_check_on(encoded) -> None:
    model = _model(encoded)
    fit(model, encoded["train"], None, CFG.with_(epochs=1))
    assert model.user.embeddings.check_ids and model.item.embeddings.check_ids
    batch = {k: torch.as_tensor(v[:4]) for k, v in encoded["val"].items() if k != "label"}
    batch["user_id"] = torch.tensor([0, 1, 2, 10**6])
    with pytest.raises(ValueError, match="out of range"):
        model(batch)

