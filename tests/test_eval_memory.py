"""Evaluation in bounded memory: the test rows scored a chunk at a time equal the
materialised ones, the item-mean baseline counted per batch, EASE's memory guard and its
in-place inverse (issue 11)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dssm_core import evaluation, peers, pipeline, training
from dssm_core.config import TrainConfig
from dssm_core.encoding import FeatureEncoder
from dssm_core.model import DSSM
from dssm_core.stream import EventBatches
from test_encoding import TRAIN, _tiny
from test_protocol_a import _log

torch.set_num_threads(1)


def _model(enc: FeatureEncoder, cfg: TrainConfig) -> DSSM:
    torch.manual_seed(0)
    model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
    model.eval()
    return model


def _materialised(enc, ctx, ds, rows, cfg, seed):
    """Today's test rows: every row x negatives with all features, in one table."""
    return enc.transform_events(ds, rows, seed=seed, negatives=cfg.explicit_negatives,
                                negatives_by=cfg.negatives_by,
                                user_negatives=cfg.user_negatives,
                                pair_negatives=cfg.pair_negatives, context=ctx)


def test_streamed_test_scores_equal_the_materialised_rows_hand_worked() -> None:
    """The tiny log of test_encoding, test rows 6 (u3 a, rating 4) and 7 (u2 c, rating 1),
    one sampled unseen item each, one event per chunk. u2 has seen a, b and c: its
    negative can only be d (item 3); u3 has seen only a. Labels: rating > 3, then 0."""
    ds = _tiny()
    cfg = TrainConfig(embedding_dim=4, user_hidden=(8,), item_hidden=(8,), history_len=3,
                      explicit_negatives=1, negatives_by="uniform", user_negatives=1,
                      pair_negatives=1)
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    ctx = enc.context(ds)
    model = _model(enc, cfg)
    rows = np.array([6, 7])
    got = pipeline.test_scores(model, enc, ctx, ds, rows, cfg, seed=44, chunk_events=1)
    want = _materialised(enc, ctx, ds, rows, cfg, 44)
    assert got.label[:3].tolist() == [1.0, 0.0, 0.0]          # events 6, 7; 6's negative
    assert got.item_ref[:2].tolist() == [0, 2] and got.item_ref[3] == 3   # 7's: only d
    assert got.item_ref[2] in (1, 2, 3)                        # u3: any item but a
    np.testing.assert_array_equal(got.label, want["label"])
    np.testing.assert_array_equal(got.item_ref, want["item_ref"])
    np.testing.assert_allclose(got.score, training.predict(model, want), atol=1e-6)
    assert got.score.dtype == np.float32 and got.score.shape == got.label.shape


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_streamed_test_scores_equal_the_materialised_rows_in_any_chunks(tiny_synthetic,
                                                                         chunk) -> None:
    """Every kind of negative (items, users, random pairs), uneven chunks: the same rows
    in the same order as one transform_events call, and the same scores."""
    ds = tiny_synthetic
    cfg = TrainConfig(embedding_dim=8, user_hidden=(16,), item_hidden=(16,),
                      explicit_negatives=3, user_negatives=2, pair_negatives=2)
    enc = FeatureEncoder(history_len=cfg.history_len, embedding_dim=8).fit(ds,
                                                                           np.arange(4000))
    ctx = enc.context(ds)
    model = _model(enc, cfg)
    rows = np.arange(4000, 4100)
    got = pipeline.test_scores(model, enc, ctx, ds, rows, cfg, seed=7, chunk_events=chunk)
    want = _materialised(enc, ctx, ds, rows, cfg, 7)
    assert len(got.label) > 100 * 5                     # events and negatives of 3 kinds
    np.testing.assert_array_equal(got.label, want["label"])
    np.testing.assert_array_equal(got.item_ref, want["item_ref"])
    np.testing.assert_allclose(got.score, training.predict(model, want), atol=1e-6)
    empty = pipeline.test_scores(model, enc, ctx, ds, rows[:0], cfg, seed=7)
    assert len(empty.label) == len(empty.score) == 0
    with pytest.raises(ValueError):
        pipeline.test_scores(model, enc, ctx, ds, rows, cfg, seed=7, chunk_events=0)


def test_item_label_counts_are_the_labels_counted_per_item() -> None:
    """Training rows 0-5 of the tiny log, no negatives, label = rating > 3: a (index 1)
    rows 0, 2 both liked; b (2) rows 1 (2) and 4 (5); c (3) row 3; d (4) row 5."""
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    n, pos = pipeline.item_label_counts(EventBatches(enc, enc.context(ds), TRAIN), 5)
    assert n.tolist() == [0, 2, 2, 1, 1] and pos.tolist() == [0, 2, 1, 1, 1]
    # item-mean rates, no smoothing: the global rate 5/6 for index 0, then per item
    rate = pipeline.item_mean_rates(n, pos, smoothing=0.0)
    np.testing.assert_allclose(rate, [5 / 6, 1.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(
        rate[[1, 2, 0]], pipeline.item_mean_baseline(np.array([1, 2, 1, 3, 2, 4]),
                                                     np.array([1., 0, 1, 1, 1, 1]),
                                                     np.array([1, 2, 0]), smoothing=0.0))


def test_item_label_counts_count_the_negatives_labels_draws(tiny_synthetic) -> None:
    ds = tiny_synthetic
    enc = FeatureEncoder().fit(ds, np.arange(4000))
    ctx = enc.context(ds)
    sampler = enc.negative_sampler(ctx.log, np.arange(4000))
    rows = EventBatches(enc, ctx, np.arange(4000), sampler, negatives=3, seed=1)
    size = len(ds.items) + 1
    n, pos = pipeline.item_label_counts(rows, size)
    parts = list(rows.label_batches())
    lab = {k: np.concatenate([b[k] for b in parts]) for k in ("label", "item_ref")}
    np.testing.assert_array_equal(n, np.bincount(lab["item_ref"] + 1, minlength=size))
    np.testing.assert_array_equal(pos, np.bincount(lab["item_ref"] + 1, weights=lab["label"],
                                                   minlength=size))
    assert n.sum() > 4000 * 3                                  # negatives are counted


# ------------------------------------------------------------------------------------ EASE
def test_ease_memory_is_counted_and_bounded_by_an_explicit_budget() -> None:
    # float64 up to EASE_FLOAT64_MAX_ITEMS: Gram + work matrix (8 bytes) + B in float32
    assert peers.ease_bytes(100) == (8 + 8 + 4) * 100 ** 2 == 200_000
    n = peers.EASE_FLOAT64_MAX_ITEMS + 1                      # float32: Gram + work matrix
    assert peers.ease_dtype(n) is np.float32 and peers.ease_bytes(n) == 8 * n * n
    assert peers.ease_skip_reason(100, memory_bytes=200_000) is None
    reason = peers.ease_skip_reason(100, memory_bytes=199_999)
    assert reason.startswith("EASE skipped: 100 items") and "float64" in reason
    assert peers.ease_skip_reason(1) == "EASE skipped: fewer than 2 items"
    # the default budget, 2 GiB: 16,384 items in float32 exactly fill it
    assert peers.EASE_MEMORY_BYTES == 2 * 2**30
    assert peers.ease_skip_reason(16_384) is None
    assert "16,385 items" in peers.ease_skip_reason(16_385)
    x = peers.interaction_matrix([0, 0, 1, 1], [0, 1, 1, 2], 2, 3)
    with pytest.raises(ValueError, match="EASE skipped"):
        peers.EASE(x, 1.0, memory_bytes=peers.ease_bytes(3) - 1)


def test_fit_peers_skips_ease_over_its_budget_and_says_why() -> None:
    ds = _log()
    sp = pipeline.split(ds, TrainConfig(protocol="A"))
    val_q, test_q = pipeline.validation_question(ds, sp), pipeline.test_question(
        ds, sp, TrainConfig(protocol="A"))
    small = peers.ease_bytes(test_q.n_items) - 1
    pe = pipeline.fit_peers(val_q, test_q, memory_bytes=small)
    assert set(pe.scorers) == {"popularity"} and pe.ease_lambda is None
    assert pe.ease_note.startswith("EASE skipped: 6 items")
    assert not any("ease" in k for k in pe.validation)
    # within the budget: the kept lambda's validation figures are that fit's own
    pe = pipeline.fit_peers(val_q, test_q, lambdas=(1.0, 10.0))
    assert pe.ease_note is None and pe.ease_lambda in (1.0, 10.0)
    again = evaluation.ask(val_q, {"ease": peers.EASE(val_q.past, pe.ease_lambda)},
                           prefix="val_")
    assert {k: v for k, v in pe.validation.items() if "ease_" in k and "lambda" not in k} \
        == {k: v for k, v in again.items() if "ease_" in k}
    assert set(pe.validation) >= {"ease_lambda_1", "ease_lambda_10"}


def test_ease_inverts_in_place() -> None:
    a = np.array([[2.0, 1.0], [1.0, 2.0]])
    buf = a
    peers._inverse_in_place(a)
    assert a is buf
    np.testing.assert_allclose(a, np.array([[2.0, -1.0], [-1.0, 2.0]]) / 3)
    # across several mirrored blocks (> 1,024 rows), float64 and float32
    rng = np.random.default_rng(0)
    m = rng.normal(size=(1300, 1300))
    spd = m @ m.T + 1300 * np.eye(1300)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        w = spd.astype(dtype)
        peers._inverse_in_place(w)
        np.testing.assert_allclose(w, np.linalg.inv(spd), atol=tol)
        assert np.array_equal(w, w.T)
    with pytest.raises(ValueError, match="positive definite"):
        peers._inverse_in_place(np.array([[1.0, 2.0], [2.0, 1.0]]))


def test_ease_in_float32_reuses_its_buffer_and_matches_the_hand_worked_b(monkeypatch) -> None:
    # test_protocol_a's tiny EASE (X = [[1,1,0],[0,1,1]], lambda 1), here in float32
    monkeypatch.setattr(peers, "EASE_FLOAT64_MAX_ITEMS", 2)
    x = peers.interaction_matrix([0, 0, 1, 1], [0, 1, 1, 2], 2, 3)
    want = [[0, 0.5, -0.2], [0.4, 0, 0.4], [-0.2, 0.5, 0]]
    gram = peers.gram_matrix(x)
    assert gram.dtype == np.float32 and gram.tolist() == [[1, 1, 0], [1, 2, 1], [0, 1, 1]]
    first = peers.EASE(x, 1.0, gram=gram)
    np.testing.assert_allclose(first.b, want, atol=1e-6)
    buf = first.b
    second = peers.EASE(x, 1.0, gram=gram, out=buf)            # the first's B is its work
    assert second.b is buf and gram.tolist() == [[1, 1, 0], [1, 2, 1], [0, 1, 1]]
    np.testing.assert_allclose(second.b, want, atol=1e-6)
    with pytest.raises(ValueError, match="separate buffer"):
        peers.EASE(x, 1.0, gram=gram, out=gram)


def test_gram_matrix_in_blocks_equals_x_t_x() -> None:
    rng = np.random.default_rng(1)
    n_items = 2100                                            # three blocks of item rows
    x = peers.interaction_matrix(rng.integers(0, 400, 6000), rng.integers(0, n_items, 6000),
                                 400, n_items)
    g = peers.gram_matrix(x)
    assert g.dtype == np.float64
    np.testing.assert_array_equal(g, (x.T @ x).toarray())


def test_pipeline_evaluates_with_streamed_test_rows(tiny_synthetic) -> None:
    """End to end: the summary's test AUC/logloss and item-mean baseline are the figures of
    the materialised test rows, scored by the run's model."""
    from dssm_core import metrics

    ds = tiny_synthetic
    cfg = TrainConfig(preset="audience", protocol="A", epochs=1, batch_size=256,
                      embedding_dim=8, user_hidden=(16,), item_hidden=(16,),
                      label_threshold=0.0, explicit_negatives=2, negatives_by="uniform")
    r = pipeline.train(ds, cfg)
    enc, sp = r.encoder, r.split
    x = _materialised(enc, enc.context(ds, sp.pool), ds, sp.test, cfg, cfg.seed + 2)
    y, p = x["label"], training.predict(r.model, x)
    assert r.summary["test_rows"] == len(y)
    assert r.summary["test_auc"] == pytest.approx(metrics.auc(y, p), abs=1e-9)
    assert r.summary["test_logloss"] == pytest.approx(metrics.logloss(y, p), rel=1e-6)
    assert r.summary["baseline_item_mean_test_auc"] is not None
