"""stream / events: features encoded per batch equal the materialised ones, hand-worked."""
from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from dssm_core.config import TrainConfig
from dssm_core.encoding import FeatureEncoder, _EventIndex, _GenrePrefix
from dssm_core.events import EventLog, NegativeSampler, codes_in, is_in_sorted
from dssm_core.features import ITEM_ROW, USER_ROW
from dssm_core.model import DSSM
from dssm_core.stream import EventBatches
from dssm_core import training
from test_encoding import TRAIN, _tiny, _unscale


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_event_log_maps_ids_to_table_positions_once() -> None:
    ds = _tiny()
    log = EventLog.of(ds)
    # users u1, u2, u3 and items a, b, c, d are rows 0.. of their tables
    assert log.user.tolist() == [0, 0, 1, 0, 1, 0, 2, 1]
    assert log.item.tolist() == [0, 1, 0, 2, 1, 3, 0, 2]
    assert log.user.dtype == np.int32 and log.time.dtype == np.int64
    # a categorical column is mapped through its categories; an id absent from the table
    # is -1
    index = pd.Index(["x", "y", "z"])
    col = pd.Series(["z", "x", "w", "z"], dtype="category")
    assert codes_in(index, col).tolist() == [2, 0, -1, 2]
    assert codes_in(index, pd.Series(["y", "q"])).tolist() == [1, -1]
    assert is_in_sorted(np.array([2, 5, 9]), np.array([5, 1, 9, 10])).tolist() == \
        [True, False, True, False]


def test_streamed_rows_equal_the_materialised_rows_hand_worked() -> None:
    """The 8-event dataset of test_encoding, encoded 3 events per batch in row order: every
    batch holds exactly the rows transform_events gives, whose values are hand-worked."""
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    rows = np.arange(8)
    source = EventBatches(enc, enc.context(ds), rows)
    batches = list(source.batches(0, 3, shuffle=False))
    assert [len(b["label"]) for b in batches] == [3, 3, 2]
    x = _concat(batches)
    _assert_same(x, enc.transform_events(ds, rows))
    a, b = 1, 2
    np.testing.assert_array_equal(x["hist"][3], [a, 0, 0])     # u1 before 300: a only
    np.testing.assert_array_equal(x["hist"][7], [b, a, 0])     # u2 before 500
    np.testing.assert_array_equal(x["label"], [1, 0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(_unscale(enc, "user_stats", x["user_stats"][3]),
                               [3.976190, 0.738095, math.log1p(2), -4 / 21, 23 / 6,
                                math.log1p(100 / 86400)], atol=1e-5)
    np.testing.assert_allclose(_unscale(enc, "genre_affinity", x["genre_affinity"][7]),
                               [-11 / 216, 43 / 216, -11 / 216, 0.0], atol=1e-5)
    assert x["item_ref"].tolist() == [0, 1, 0, 2, 1, 3, 0, 2]
    # a shuffled epoch holds the same rows in another order (seeded)
    shuffled = _concat(list(source.batches(1, 3)))
    assert sorted(shuffled["item_ref"].tolist()) == sorted(x["item_ref"].tolist())
    assert shuffled["item_ref"].tolist() != x["item_ref"].tolist()
    _assert_same(shuffled, _concat(list(source.batches(1, 3))))


def test_streamed_features_equal_materialised_on_synthetic_data(tiny_synthetic) -> None:
    """A pool that is not every row (protocol A's past): rows inside the pool take their
    bounds from the sorted pass, rows after it (the test) are searched; both equal what
    transform_events computes for the whole table at once."""
    ds = tiny_synthetic
    n = len(ds.interactions)
    past = np.arange(int(n * 0.8))
    enc = FeatureEncoder(history_len=5).fit(ds, past[:4000], pool=past)
    ctx = enc.context(ds, past)
    for rows in (past[:4000], np.arange(int(n * 0.8), n)):
        want = enc.transform_events(ds, rows, pool=past)
        got = _concat(list(EventBatches(enc, ctx, rows).batches(0, 997, shuffle=False)))
        _assert_same(got, want)


def test_item_negatives_share_their_row_and_avoid_known_pairs(tiny_synthetic) -> None:
    ds = tiny_synthetic
    enc = FeatureEncoder(history_len=5, label_threshold=0.0).fit(ds, np.arange(4000))
    elog = EventLog.of(ds)
    known = np.arange(4000)
    sampler = enc.negative_sampler(elog, known, "uniform")
    rows = np.arange(100, 150)
    source = EventBatches(enc, enc.context(ds), rows, sampler, negatives=3, seed=4)
    assert source.per_event == 4
    batch = source.encode(rows[:10], (0, 0))                   # 10 events + 30 negatives
    assert len(batch["label"]) == 40 and batch["label"].tolist() == [1] * 10 + [0] * 30
    # each negative repeats its event's user features; its item is one the user never had
    users = batch["user_id"]
    np.testing.assert_array_equal(users[10:], np.repeat(users[:10], 3))
    np.testing.assert_array_equal(batch["hist"][10:], np.repeat(batch["hist"][:10], 3, axis=0))
    pairs = set(zip(elog.user[known].tolist(), elog.item[known].tolist()))
    neg_users = np.repeat(elog.user[rows[:10]], 3)
    assert not any((int(u), int(i)) in pairs for u, i in zip(neg_users, batch["item_ref"][10:]))
    # the same (seed, epoch, chunk) draws the same negatives; another epoch others
    np.testing.assert_array_equal(source.encode(rows[:10], (0, 0))["item_ref"],
                                  batch["item_ref"])
    other = source.encode(rows[:10], (1, 0))
    assert not np.array_equal(other["item_ref"][10:], batch["item_ref"][10:])
    # an epoch: 50 events and their 150 negatives in batches of 40 rows: 10 whole events a
    # batch, each event followed by its 3 negatives, which point at it for their user input
    epoch = list(source.batches(0, 40))
    assert [len(b["label"]) for b in epoch] == [40] * 5
    assert sum(float(b["label"].sum()) for b in epoch) == 50
    for b in epoch:
        assert b["label"].tolist() == [1, 0, 0, 0] * 10
        np.testing.assert_array_equal(b[USER_ROW], np.repeat(np.arange(0, 40, 4), 4))
        np.testing.assert_array_equal(b[ITEM_ROW], np.arange(40))
        for k in ("user_id", "hist", "user_stats"):
            np.testing.assert_array_equal(b[k], b[k][b[USER_ROW]], err_msg=k)
    _assert_same(_concat(epoch), _concat(list(source.batches(0, 40))))
    # every event once
    once = _concat(epoch)
    assert sorted(once["item_ref"][once["label"] == 1].tolist()) == \
        sorted(elog.item[rows].tolist())
    # labels only: the same counts without features
    lab = _concat(list(source.label_batches()))
    assert set(lab) == {"label", "item_ref"} and len(lab["label"]) == 50 * 4


def test_negative_sampler_drops_users_who_have_seen_every_item() -> None:
    """u1 rated a, b, c, d (every item): no negative exists for it; u2 had a, b, c."""
    ds = _tiny()
    elog = EventLog.of(ds)
    sampler = NegativeSampler(elog, np.arange(8), np.ones(4), np.array([0, 1]),
                              np.array([0, 1, 2, 3]))
    keep, items = sampler.items(np.array([0, 1]), 2, np.random.default_rng(0))
    assert keep.tolist() == [2, 3] and items.tolist() == [3, 3]       # only d is new to u2


def test_genre_prefix_checkpoints_match_a_direct_count() -> None:
    """Counts and sums per genre over the first p positions, for every p, across several
    checkpoint blocks (40 events, blocks of 16)."""
    rng = np.random.default_rng(0)
    genres = np.array([[1, 2], [3, 0], [2, 0], [0, 0]])             # 4 items, 3 genres
    item_of = rng.integers(0, 4, 40)
    value = rng.normal(size=40)
    gp = _GenrePrefix(item_of, value, genres, 3)
    counts, sums = gp.at(np.arange(41))
    assert counts.dtype == np.int32 and sums.dtype == np.float64     # counts exact, half size
    for p in range(41):
        onehot = np.zeros((p, 3))
        for q in range(p):
            for g in genres[item_of[q]]:
                if g:
                    onehot[q, g - 1] += 1
        np.testing.assert_array_equal(counts[p], onehot.sum(axis=0))
        np.testing.assert_allclose(sums[p], (onehot * value[:p, None]).sum(axis=0), atol=1e-12)


def test_event_index_counts_in_int32_and_drops_its_sort_when_finished() -> None:
    """A bool value's running sum is an int32 count, a float one float64, both equal to a
    direct sum over each entity's events before a time; after ``finish`` the sort is gone
    and adding another value is refused."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 5, 60)
    ranks = rng.integers(0, 9, 60)
    like = rng.random(60) < 0.4
    rating = rng.integers(1, 11, 60) / 2.0
    index = _EventIndex(codes, ranks, 10, {"like": like, "rating": rating}, 5)
    assert index.prefix["like"].dtype == np.int32
    assert index.prefix["rating"].dtype == np.float64
    index.finish()
    assert index.order is None
    with pytest.raises(RuntimeError, match="finish"):
        index.add("other", rating)
    qc, qr = np.repeat(np.arange(5), 10), np.tile(np.arange(10), 5)
    start, end = index.bounds(qc, qr)
    for c, r, a, b in zip(qc, qr, start, end):
        before = (codes == c) & (ranks < r)
        assert index.sums("like", a[None], b[None])[0] == like[before].sum()
        assert index.sums("rating", a[None], b[None])[0] == rating[before].sum()


def test_fit_reads_a_stream_like_the_materialised_rows(tiny_synthetic) -> None:
    """Training from EventBatches runs the same loop: epochs recorded, validation measured
    in chunks (AUC, logloss, loss), the rows per epoch counted with their negatives."""
    ds = tiny_synthetic
    enc = FeatureEncoder(history_len=5, embedding_dim=8).fit(ds, np.arange(4000))
    ctx = enc.context(ds)
    sampler = enc.negative_sampler(ctx.log, np.arange(5000), "popularity")
    train = EventBatches(enc, ctx, np.arange(4000), sampler, negatives=1, seed=1)
    val = EventBatches(enc, ctx, np.arange(4000, 5000), sampler, negatives=1, seed=2)
    cfg = TrainConfig(epochs=2, batch_size=512, embedding_dim=8, seed=3,
                      early_stopping_patience=0)
    for objective in ("pointwise", "inbatch"):
        c = cfg.with_(objective=objective)
        model = DSSM(enc.user_specs_, enc.item_specs_, c)
        fr = training.fit(model, train, val, c)
        assert len(fr.history) == 2
        rec = fr.history[-1]
        assert 0.5 < rec["val_auc"] <= 1.0 and rec["val_loss"] is not None
        if objective == "pointwise":
            assert fr.train_rows == 8000                    # 4000 events + 1 negative each
        else:                                               # positives only, no negatives
            like = (ds.interactions["rating"].to_numpy()[:4000] > 3.0).sum()
            assert fr.train_rows == like
    with pytest.raises(ValueError, match="sampler"):
        EventBatches(enc, ctx, np.arange(4), negatives=1)


def _streams(ds) -> tuple[FeatureEncoder, EventBatches, EventBatches]:
    enc = FeatureEncoder(history_len=5, embedding_dim=8).fit(ds, np.arange(4000))
    ctx = enc.context(ds)
    sampler = enc.negative_sampler(ctx.log, np.arange(5000), "popularity")
    train = EventBatches(enc, ctx, np.arange(4000), sampler, negatives=1, seed=1)
    val = EventBatches(enc, ctx, np.arange(4000, 5000), sampler, negatives=2, seed=2)
    return enc, train, val


def _same_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) and a
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and sorted(xa) == sorted(xb)
        for k in xa:
            assert torch.equal(xa[k], xb[k]), k


def test_kept_validation_batches_equal_the_rows_encoded_again(tiny_synthetic) -> None:
    """The validation rows ``fit`` keeps are the tensors a fresh encoding gives (same draws,
    same order, the same mask), and the second pass hands back the kept ones; above the
    row limit nothing is kept and every pass encodes again, with the same result."""
    enc, _, val = _streams(tiny_synthetic)
    model = DSSM(enc.user_specs_, enc.item_specs_, TrainConfig(embedding_dim=8))
    specs = model.feature_specs
    positives = lambda y: y > 0.5                                 # noqa: E731
    kept = training._ValidationRows(val, specs)
    assert kept.keep                                              # 1,000 events x 3 rows
    first = kept.batches(700, True, False)
    _same_batches(first, training._stream_batches(val, 0, 700, specs, True, lambda y: None,
                                                  shuffle=False))
    assert kept.batches(700, True, False) is first                # kept, not encoded again
    _same_batches(kept.batches(256, False, True, positives),
                  training._stream_batches(val, 0, 256, specs, False, positives))
    rows = sum(len(y) for _, y in first)
    assert rows == 3000                                           # 1,000 events, 2 negatives
    again = training._ValidationRows(val, specs, max_rows=2999)
    assert not again.keep
    _same_batches(again.batches(700, True, False), first)


def test_streamed_fit_is_the_same_with_kept_validation_and_prefetching(tiny_synthetic,
                                                                       monkeypatch) -> None:
    """Keeping the validation rows and encoding the training batches in a background
    thread change no figure and no weight: the same history (every loss and metric) and
    the same parameters as encoding everything in line, for both objectives."""
    enc, train, val = _streams(tiny_synthetic)
    cfg = TrainConfig(epochs=2, batch_size=512, embedding_dim=8, seed=3,
                      early_stopping_patience=0, precision="float32")

    def run(objective: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
        c = cfg.with_(objective=objective)
        model = DSSM(enc.user_specs_, enc.item_specs_, c)
        fr = training.fit(model, train, val, c)
        return ([{k: v for k, v in h.items() if k != "seconds"} for h in fr.history],
                {k: v.clone() for k, v in model.state_dict().items()})

    for objective in ("pointwise", "inbatch"):
        fast = run(objective)
        with monkeypatch.context() as m:
            m.setattr(training, "VAL_CACHE_ROWS", 0)
            m.setattr(training, "PREFETCH_BATCHES", 0)
            slow = run(objective)
        assert fast[0] == slow[0] and fast[0][-1]["val_loss"] is not None
        assert all(torch.equal(fast[1][k], slow[1][k]) for k in slow[1])


def test_prefetched_keeps_order_raises_in_place_and_stops_when_left() -> None:
    assert list(training._prefetched(iter(range(10)), depth=3)) == list(range(10))
    assert list(training._prefetched(iter(range(4)), depth=0)) == [0, 1, 2, 3]

    def failing():
        yield 1
        yield 2
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in training._prefetched(failing(), depth=1):
            got.append(item)
    assert got == [1, 2]                                          # raised after the good ones

    produced, closed = [], []

    def endless():
        try:
            k = 0
            while True:
                produced.append(k)
                yield k
                k += 1
        finally:
            closed.append(True)

    before = threading.active_count()
    it = training._prefetched(endless(), depth=2)
    assert [next(it), next(it)] == [0, 1]
    it.close()                                                    # as a cancelled epoch does
    assert closed == [True] and threading.active_count() == before
    assert len(produced) <= 2 + 2 + 1               # read, queued (depth) and one in hand


def test_batches_group_each_event_with_all_its_negatives(tiny_synthetic) -> None:
    """Item, user and pair negatives together, a batch size that is not a multiple of the
    rows per event: every batch holds whole events; an item negative repeats its event's
    user input, a user negative its item input, a random pair neither; the model gives the
    same logits with or without the shared rows (eval mode)."""
    ds = tiny_synthetic
    enc = FeatureEncoder(history_len=5, embedding_dim=8, label_threshold=0.0).fit(
        ds, np.arange(4000))
    ctx = enc.context(ds)
    sampler = enc.negative_sampler(ctx.log, np.arange(4000), "popularity")
    source = EventBatches(enc, ctx, np.arange(3000, 3500), sampler, negatives=2,
                          user_negatives=1, pair_negatives=1, seed=7)
    model = DSSM(enc.user_specs_, enc.item_specs_, TrainConfig(embedding_dim=8, seed=0)).eval()
    user_keys = [s.name for s in enc.user_specs_]
    item_keys = [s.name for s in enc.item_specs_]
    events = 0
    for b in source.batches(3, 23):                  # 23 // 5 = 4 events a batch
        n = len(b["label"])
        assert n <= 23
        first = np.flatnonzero(b["label"] == 1)
        assert b["label"].sum() <= 4 and first[0] == 0
        events += len(first)
        group = np.cumsum(b["label"]).astype(int) - 1    # each row's event in the batch
        for key, names in ((USER_ROW, user_keys), (ITEM_ROW, item_keys)):
            src = b[key]
            assert ((src == np.arange(n)) | (src == first[group])).all()
            for k in names:
                np.testing.assert_array_equal(b[k], b[k][src], err_msg=k)
        kinds = np.stack([b[USER_ROW] != np.arange(n), b[ITEM_ROW] != np.arange(n)], 1)
        # per event: 2 item negatives (user shared), 1 user negative (item shared), 1 pair
        assert kinds[:, 0].sum() == 2 * len(first) and kinds[:, 1].sum() == len(first)
        assert not (kinds[:, 0] & kinds[:, 1]).any()
        x, _ = training._as_tensors(b, model.feature_specs, "t", need_label=True)
        with torch.no_grad():
            shared = model(x)
            every_row = model({k: v for k, v in x.items() if k not in (USER_ROW, ITEM_ROW)})
        torch.testing.assert_close(shared, every_row, rtol=0, atol=1e-6)
    assert events == 500


def test_fit_on_grouped_batches_learns_what_every_row_would(tiny_synthetic) -> None:
    """Without dropout a training step on shared rows is the step on every row: the same
    loss and the same gradients (each tower's input counted once per row it serves)."""
    ds = tiny_synthetic
    enc = FeatureEncoder(history_len=5, embedding_dim=8, label_threshold=0.0).fit(
        ds, np.arange(4000))
    ctx = enc.context(ds)
    sampler = enc.negative_sampler(ctx.log, np.arange(4000), "uniform")
    source = EventBatches(enc, ctx, np.arange(4000), sampler, negatives=3, pair_negatives=2,
                          seed=1)
    cfg = TrainConfig(embedding_dim=8, seed=0, dropout=0.0)
    batch = next(iter(source.batches(0, 256)))
    grads = []
    for keep_rows in (True, False):
        model = DSSM(enc.user_specs_, enc.item_specs_, cfg).train()
        x, y = training._as_tensors(batch, model.feature_specs, "t", need_label=True)
        if not keep_rows:
            x = {k: v for k, v in x.items() if k not in (USER_ROW, ITEM_ROW)}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                                    if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_slice_keeps_shared_rows_only_where_their_sources_are_inside() -> None:
    x = {"f": torch.arange(6), USER_ROW: torch.tensor([0, 0, 0, 3, 3, 5]),
         ITEM_ROW: torch.arange(6)}
    whole = training._slice_rows(x, 0, 6)
    assert whole.keys() == x.keys()
    tail = training._slice_rows(x, 3, 6)              # events 3 and 5 with their rows
    assert tail[USER_ROW].tolist() == [0, 0, 2] and tail[ITEM_ROW].tolist() == [0, 1, 2]
    cut = training._slice_rows(x, 1, 4)               # rows 1-2 point at row 0, outside:
    assert cut["f"].tolist() == [1, 2, 3]             # they become their own sources
    assert cut[USER_ROW].tolist() == [0, 1, 2] and cut[ITEM_ROW].tolist() == [0, 1, 2]
    assert training._slice_rows(x, 2, 6)[USER_ROW].tolist() == [0, 1, 1, 3]
    with pytest.raises(ValueError, match="does not index"):
        training._as_tensors({"label": np.ones(3), USER_ROW: np.array([0, 3, 1])},
                             {}, "train", need_label=True)
    with pytest.raises(ValueError, match="not its own source"):
        training._as_tensors({"label": np.ones(3), USER_ROW: np.array([0, 0, 1])},
                             {}, "train", need_label=True)


def test_train_metrics_read_a_bounded_share_of_the_epoch(tiny_synthetic, monkeypatch) -> None:
    """Train AUC/logloss come from the epoch's first TRAIN_LOGIT_ROWS rows (its batches are
    in a seeded random order): the training itself and the validation are unchanged."""
    enc, train, val = _streams(tiny_synthetic)
    cfg = TrainConfig(epochs=2, batch_size=256, embedding_dim=8, seed=3,
                      early_stopping_patience=0)
    runs = {}
    for cap in (10**9, 600):
        monkeypatch.setattr(training, "TRAIN_LOGIT_ROWS", cap)
        model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
        runs[cap] = training.fit(model, train, val, cfg).history
    for whole, share in zip(runs[10**9], runs[600]):
        for key in ("train_loss", "val_auc", "val_logloss", "val_loss"):
            assert whole[key] == share[key], key
        assert share["train_auc"] is not None and share["train_auc"] != whole["train_auc"]
