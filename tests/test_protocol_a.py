"""Protocol A (the audience question), the peers (popularity, EASE) and the honest API.

Hand-worked on a 5-user, 6-item log of 16 interactions (timestamp = row number):

    row  1 u1 i1 | 2 u1 i2 | 3 u2 i1 | 4 u2 i3 | 5 u3 i2 | 6 u3 i4 | 7 u4 i5 | 8 u1 i3
    row  9 u2 i2 | 10 u3 i1                                              (train: rows 1-10)
    row 11 u4 i1 | 12 u1 i4                                   (validation: the past's last 2)
    row 13 u5 i1 | 14 u2 i4 | 15 u1 i6 | 16 u3 i2                          (future: 13-16)

floor(0.8 * 16) = 12 rows are the past, round(12 / 8) = 2 of them validation. Targetable
users: u1-u4 (u5 has no past row); known items: i1-i5 (i6 has none). Row 13 (u5) and row 15
(i6) drop out; row 16 repeats a past pair. The one relevant pair is (u2, i4): item->user for
i4, candidates = targetable users without a past i4 = {u2, u4} (u1 has it from validation,
u3 from training); user->item for u2, candidates = known items not in u2's past = {i4, i5}.
"""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from dssm_core import evaluation, peers, pipeline
from dssm_core.config import preset
from dssm_core.dataset import Dataset

torch.set_num_threads(1)

ROWS = [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i3"), ("u3", "i2"), ("u3", "i4"),
        ("u4", "i5"), ("u1", "i3"), ("u2", "i2"), ("u3", "i1"), ("u4", "i1"), ("u1", "i4"),
        ("u5", "i1"), ("u2", "i4"), ("u1", "i6"), ("u3", "i2")]


def _log() -> Dataset:
    inter = pd.DataFrame({"user_id": [u for u, _ in ROWS], "item_id": [i for _, i in ROWS],
                          "rating": np.float32(4.0),
                          "timestamp": np.arange(1, len(ROWS) + 1, dtype=np.int64)})
    users = pd.DataFrame({"user_id": [f"u{k}" for k in range(1, 6)]})
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(1, 7)],
                          "title": [f"T{k}" for k in range(1, 7)],
                          "genres": [["Drama"]] * 6})
    return Dataset(inter, users, items, format="generic", name="hand-worked")


class Fixed:
    """A scorer with given score rows per direction (all queries get the same row)."""

    def __init__(self, i2u, u2i) -> None:
        self.rows = {"i2u": np.asarray(i2u, np.float32), "u2i": np.asarray(u2i, np.float32)}

    def scores(self, direction, queries):
        return np.broadcast_to(self.rows[direction], (len(queries), len(self.rows[direction])))


def test_protocol_a_split_is_the_first_80_percent_by_time_then_row() -> None:
    sp = pipeline.split(_log(), preset("audience", protocol="A"))
    assert sp.protocol == "A"
    assert sp.train.tolist() == list(range(10))
    assert sp.val.tolist() == [10, 11]
    assert sp.test.tolist() == [12, 13, 14, 15]
    assert sp.pool.tolist() == list(range(12))          # features from the past only
    assert sp.split_time == 13


def test_protocol_a_ties_in_time_order_by_file_row() -> None:
    ds = _log()
    ds.interactions["timestamp"] = np.int64(5)           # every event in the same second
    sp = pipeline.split(ds, preset("audience", protocol="A"))
    assert sp.test.tolist() == [12, 13, 14, 15]


def test_protocol_a_question_hand_worked() -> None:
    ds = _log()
    sp = pipeline.split(ds, preset("audience", protocol="A"))
    q = pipeline.test_question(ds, sp, preset("audience", protocol="A"))
    assert q.user_ok.tolist() == [True, True, True, True, False]
    assert q.item_ok.tolist() == [True, True, True, True, True, False]
    assert q.n_relevant == 1 and q.relevant[1, 3] == 1           # (u2, i4) only
    # item->user for i4 over users u1..u5: u1 and u3 already have i4, u5 is not targetable,
    # so u4 (0.5) ranks above u2 (0.1). user->item for u2 over i1..i6: i1-i3 seen, i6
    # unknown, so i5 (0.3) ranks above i4 (0.2).
    s = Fixed(i2u=[0.9, 0.1, 0.8, 0.5, 1.0], u2i=[1, 1, 1, 0.2, 0.3, 0.9])
    fig = evaluation.ask(q, {"model": s}, ks=(1, 2))
    assert fig["i2u_queries"] == 1 and fig["u2i_queries"] == 1
    assert fig["i2u_recall@1"] == 0.0 and fig["i2u_recall@2"] == 1.0
    assert fig["u2i_recall@1"] == 0.0 and fig["u2i_recall@2"] == 1.0
    assert fig["i2u_macro_recall@1"] == 0.0
    assert fig["i2u_recall@1%"] == 0.0 and fig["i2u_recall@5%"] == 0.0   # ceil: top 1 of 4
    # ties rank to the lower index: u2 (index 1) before u4 (index 3)
    tie = Fixed(i2u=[0.9, 0.5, 0.8, 0.5, 1.0], u2i=[1, 1, 1, 0.3, 0.3, 0.9])
    fig = evaluation.ask(q, {"model": tie}, ks=(1,))
    assert fig["i2u_recall@1"] == 1.0 and fig["u2i_recall@1"] == 1.0


def test_micro_recall_pools_relevant_pairs_macro_averages_queries() -> None:
    # 2 users x 3 items, nothing in the past; user 0 wants items 0 and 1, user 1 item 2.
    past = peers.interaction_matrix([], [], 2, 3)
    rel = peers.interaction_matrix([0, 0, 1], [0, 1, 2], 2, 3)
    q = evaluation.Question(past, rel)
    s = Fixed(i2u=[1.0, 0.0], u2i=[3.0, 2.0, 1.0])          # items ranked 0, 1, 2
    fig = evaluation.ask(q, {"model": s}, ks=(1,), shares=())
    # user->item top 1: user 0 finds item 0 (1 of 2), user 1 misses item 2 (0 of 1)
    assert fig["u2i_recall@1"] == pytest.approx(1 / 3)       # micro: 1 hit / 3 pairs
    assert fig["u2i_macro_recall@1"] == pytest.approx(0.25)  # macro: (1/2 + 0) / 2


def test_validation_question_applies_the_rule_inside_the_past() -> None:
    ds = _log()
    sp = pipeline.split(ds, preset("audience", protocol="A"))
    q = pipeline.validation_question(ds, sp)
    # train rows 1-10 are its past; validation rows 11 (u4, i1) and 12 (u1, i4) are new pairs
    assert q.n_relevant == 2 and q.relevant[3, 0] == 1 and q.relevant[0, 3] == 1


def test_ease_hand_worked_on_a_tiny_matrix() -> None:
    # X = [[1,1,0],[0,1,1]], lambda 1: P = inv(X'X + I) = [[5,-2,1],[-2,4,-2],[1,-2,5]] / 8,
    # B_ij = -P_ij / P_jj off the diagonal, 0 on it.
    x = peers.interaction_matrix([0, 0, 1, 1], [0, 1, 1, 2], 2, 3)
    e = peers.EASE(x, 1.0)
    np.testing.assert_allclose(e.b, [[0, 0.5, -0.2], [0.4, 0, 0.4], [-0.2, 0.5, 0]],
                               atol=1e-6)
    np.testing.assert_allclose(e.scores("u2i", np.array([0, 1])),
                               [[0.4, 0.5, 0.2], [0.2, 0.5, 0.4]], atol=1e-6)
    np.testing.assert_allclose(e.scores("i2u", np.array([2])), [[0.2, 0.4]], atol=1e-6)


def test_ease_is_skipped_with_a_reason_above_its_memory_budget() -> None:
    # 20,000 items in float32: Gram and work matrix, 8 x 20,000^2 bytes = 2.98 GB > 2 GB
    assert peers.ease_skip_reason(10_000) is None
    reason = peers.ease_skip_reason(20_000)
    assert reason.startswith("EASE skipped: 20,000 items") and "3.0 GB" in reason


def test_popularity_ranks_by_past_activity() -> None:
    x = peers.interaction_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 0, 1, 2], 3, 3)
    p = peers.Popularity(x)
    assert p.scores("i2u", np.array([0]))[0].tolist() == [2, 1, 3]
    assert p.scores("u2i", np.array([0]))[0].tolist() == [2, 3, 1]


def test_peer_verdict_says_plainly_where_the_model_loses() -> None:
    s = {"i2u_recall@50": 0.30, "baseline_ease_i2u_recall@50": 0.41,
         "baseline_popularity_i2u_recall@50": 0.10,
         "u2i_recall@50": 0.20, "baseline_ease_u2i_recall@50": 0.20,
         "baseline_popularity_u2i_recall@50": 0.12}
    v = pipeline.peer_verdict(s)
    assert len(v) == 1 and "EASE beats this model" in v[0] and "0.410" in v[0]
    assert pipeline.peer_verdict({}) == []


@pytest.fixture(scope="module")
def trained_a(tiny_synthetic):
    cfg = preset("audience", epochs=2, batch_size=256, embedding_dim=8,
                 user_hidden=(32, 16), item_hidden=(32, 16))
    return pipeline.train(tiny_synthetic, cfg)


def test_the_cli_default_is_the_audience_preset_under_protocol_a(trained_a) -> None:
    s = trained_a.summary
    assert s["protocol"] == "A" and s["preset"] == "audience"
    assert s["monitor"] == "val_recall@50"                   # judged by what it is for
    for key in ("i2u_recall@50", "u2i_recall@50", "baseline_ease_i2u_recall@50",
                "baseline_ease_u2i_recall@50", "baseline_popularity_i2u_recall@50",
                "val_i2u_recall@50", "val_baseline_ease_u2i_recall@50", "i2u_recall@1%",
                "i2u_recall@5%", "i2u_macro_recall@50", "ease_lambda"):
        assert s[key] is not None, key
    assert s["ease_lambda"] in peers.EASE_LAMBDAS
    assert all(h.get("val_recall@50") is not None for h in trained_a.history)
    best = max(trained_a.history, key=lambda h: h["val_recall@50"])
    assert s["best_epoch"] == best["epoch"]
    rep = pipeline.report(s)
    assert set(rep["retrieval"]["item_to_user"]) == {"recall@10", "recall@50", "recall@100"}
    assert rep["baseline_ease"]["retrieval"]["user_to_item"]["recall@50"] == \
        s["baseline_ease_u2i_recall@50"]
    assert rep["verdict"] == pipeline.peer_verdict(s)


def test_no_evaluation_path_uses_end_of_data_vectors(trained_a, tiny_synthetic) -> None:
    r, ds = trained_a, tiny_synthetic
    sp = r.split
    # the evaluation vectors come from the past only: rewriting the future moves none
    inter = ds.interactions.copy()
    rng = np.random.default_rng(0)
    inter.loc[sp.test, "item_id"] = rng.choice(ds.items["item_id"].to_numpy(), len(sp.test))
    changed = Dataset(inter, ds.users, ds.items, format=ds.format)
    u, i = pipeline.eval_vectors(r.model, r.encoder, changed, sp)
    np.testing.assert_array_equal(u, r.eval_user_vectors)
    np.testing.assert_array_equal(i, r.eval_item_vectors)
    # the audience vectors did see the future: they differ for users active in it
    moved = np.abs(r.audience_user_vectors - r.eval_user_vectors).max(axis=1) > 1e-6
    assert moved.any()
    # and the summary's figures are the evaluation vectors' figures
    q = pipeline.test_question(ds, sp, r.cfg)
    fig = evaluation.ask(q, {"model": evaluation.VectorScorer(r.eval_user_vectors,
                                                              r.eval_item_vectors)})
    assert fig["i2u_recall@50"] == r.summary["i2u_recall@50"]
    assert fig["u2i_recall@50"] == r.summary["u2i_recall@50"]
    leaky = evaluation.ask(q, {"model": evaluation.VectorScorer(r.audience_user_vectors,
                                                                r.audience_item_vectors)})
    assert leaky["i2u_recall@50"] != r.summary["i2u_recall@50"]
    assert not hasattr(r, "user_vectors")          # no ambiguous name left to misuse


def test_item_mean_baseline_keeps_items_first_seen_in_validation() -> None:
    # items are keyed by dataset position + 1 (0 = unknown); an item only in validation rows
    # keeps its own rate rather than the global one
    p = pipeline.item_mean_baseline(np.array([1, 1, 2, 2]), np.array([1., 1., 0., 0.]),
                                    np.array([1, 2]), smoothing=0.0)
    assert p.tolist() == [1.0, 0.0]


def test_protocol_l_validates_on_each_users_last_remaining_interaction() -> None:
    # per user, rows in time order: u1 1,2,8,12,15 | u2 3,4,9,14 | u3 5,6,10,16 | u4 7,11 |
    # u5 13. Test = each last (u5 has one row: none); validation = each user's last remaining
    # row where two or more remain (u4 keeps only row 7: none).
    sp = pipeline.split(_log(), preset("audience", protocol="L"))
    assert sorted(sp.test.tolist()) == [10, 13, 14, 15]          # rows 11, 14, 15, 16
    assert sorted(sp.val.tolist()) == [8, 9, 11]                # rows 9, 10, 12
    assert sorted(np.concatenate([sp.train, sp.val, sp.test]).tolist()) == list(range(16))


def test_protocol_l_measures_each_user_from_their_own_last_event() -> None:
    # Under L there is no shared "now": a user's evaluation vector is as of just after their
    # own last row of the past (test: the pool; validation: the training rows). Timestamps
    # are row numbers. Test rows 11, 14, 15, 16, so the pool's last rows are u1 12, u2 9,
    # u3 10, u4 7, u5 13 (u5's only row: no test).
    ds = _log()
    sp = pipeline.split(ds, preset("audience", protocol="L"))
    assert pipeline._own_last_event(ds, sp.pool).tolist() == [13, 10, 11, 8, 14]
    # training rows (validation rows 9, 10, 12 removed as well): u1 8, u2 4, u3 6, u4 7
    assert pipeline._own_last_event(ds, sp.train).tolist() == [9, 5, 7, 8, 14]
    # a user with no row in the given rows is measured after every event
    from dssm_core.encoding import END_OF_TIME
    none = pipeline._own_last_event(ds, np.array([0, 1], dtype=np.int64))
    assert none.tolist() == [3] + [END_OF_TIME] * 4


def test_user_negatives_are_users_who_existed_and_never_had_the_item() -> None:
    from dssm_core.encoding import FeatureEncoder

    ds = _log()
    known = np.arange(5)          # rows 1-5: u1 {i1, i2}, u2 {i1, i3}, u3 {i2}
    enc = FeatureEncoder(history_len=2).fit(ds, known)
    # row 4 (u2, i3, t=4): before t=4 only u1 (t=1) and u2 (t=3) existed; u2 had i3
    items, users, ts = enc.sample_user_negatives(ds, np.array([3]), 6, seed=1, known=known)
    assert users.tolist() == ["u1"] * 6 and items.tolist() == ["i3"] * 6
    assert ts.tolist() == [4] * 6
    # row 3 (u2, i1, t=3): only u1 existed before, and u1 had i1: nothing to draw
    items, users, ts = enc.sample_user_negatives(ds, np.array([2]), 4, seed=1, known=known)
    assert len(users) == 0
    # random pairs: an existing user with a training item they never had
    items, users, ts = enc.sample_user_negatives(ds, np.array([4]), 50, seed=2, known=known,
                                                 random_items=True)
    had = {("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i3"), ("u3", "i2")}
    assert len(users) > 0 and set(users) <= {"u1", "u2"}      # u3 first appears at t=5
    assert set(items) <= {"i1", "i2", "i3"} and not (set(zip(users, items)) & had)


def test_refit_keeps_validation_figures_and_changes_the_tested_model(tiny_synthetic) -> None:
    base = preset("audience", epochs=2, batch_size=256, embedding_dim=8,
                  user_hidden=(32, 16), item_hidden=(32, 16), tune="none", refit=False)
    a = pipeline.train(tiny_synthetic, base)
    b = pipeline.train(tiny_synthetic, base.with_(refit=True))
    assert b.summary["refit"] and not a.summary["refit"]
    # validation figures are the first fit's, the same with or without the refit
    assert b.summary["val_i2u_recall@50"] == a.summary["val_i2u_recall@50"]
    assert b.summary["best_epoch"] == a.summary["best_epoch"]
    # the tested and stored model learned from the validation rows too
    assert not np.allclose(b.eval_user_vectors, a.eval_user_vectors)


def test_tune_tries_each_setting_on_validation_and_keeps_the_best(tiny_synthetic) -> None:
    cfg = preset("audience", epochs=2, batch_size=256, embedding_dim=8, user_hidden=(32, 16),
                 item_hidden=(32, 16), tune="negatives", refit=False)
    seen = []
    r = pipeline.train(tiny_synthetic, cfg, on_epoch_end=seen.append)
    trials = r.summary["tune_trials"]
    assert [t["overrides"] for t in trials] == [dict(o) for o in pipeline.TUNE_SPACES["negatives"]]
    best = max(trials, key=lambda t: t["val_recall@50"])
    assert r.summary["tune_choice"] == best["trial"]
    assert r.cfg.tune == "negatives"
    # every trial's epochs are reported once, numbered on, each naming its trial
    assert [h["epoch"] for h in seen] == list(range(1, len(seen) + 1))
    assert {h["trial"] for h in seen} == {1, 2}
    # the same trial trained alone gives the same validation figure (seeded)
    alone = pipeline.train(tiny_synthetic, cfg.with_(tune="none", **best["overrides"]))
    assert alone.summary["best_epoch"] == best["best_epoch"]
    kept = next(h for h in alone.history if h["epoch"] == best["best_epoch"])
    assert kept["val_recall@50"] == pytest.approx(best["val_recall@50"])


def test_peer_table_puts_the_model_beside_its_peers() -> None:
    s = {"test_auc": 0.70, "baseline_item_mean_test_auc": 0.65, "test_logloss": 0.50,
         "baseline_item_mean_test_logloss": 0.45, "i2u_recall@50": 0.30,
         "baseline_popularity_i2u_recall@50": 0.10, "baseline_ease_i2u_recall@50": 0.41}
    rows = {r["Metric"]: r for r in pipeline.peer_table(s)}
    assert set(rows) == {"Test AUC (higher is better)", "Test log loss (lower is better)",
                         "Item→user recall@50"}
    assert rows["Test AUC (higher is better)"]["Best"] == "Model"
    assert rows["Test log loss (lower is better)"]["Best"] == "Item mean"    # lower wins
    r = rows["Item→user recall@50"]
    assert (r["Model"], r["Popularity"], r["EASE"], r["Best"]) == (0.30, 0.10, 0.41, "EASE")


def _tuned(tiny_synthetic, monkeypatch, side_by_side: bool, **kw):
    cfg = preset("audience", epochs=3, batch_size=256, embedding_dim=8, user_hidden=(32, 16),
                 item_hidden=(32, 16), tune="negatives", refit=True)
    monkeypatch.setattr(pipeline, "PARALLEL_TRIAL_ROWS", 10**12 if side_by_side else 0)
    monkeypatch.setattr(pipeline, "_trial_cores", lambda space: 2)
    threads_seen: set[str] = set()
    seen: list[dict] = []

    def record(rec: dict) -> None:
        threads_seen.add(threading.current_thread().name)
        seen.append(rec)

    marks: list[tuple[str, float]] = []
    r = pipeline.train(tiny_synthetic, cfg, on_epoch_end=record,
                       progress=lambda stage, f, message=None: marks.append((stage, f)), **kw)
    return r, seen, threads_seen, marks


def test_tuning_trials_side_by_side_give_what_they_give_one_after_another(
        tiny_synthetic, monkeypatch) -> None:
    """Trials in threads: the same figures bit for bit (each fit draws dropout from its own
    generator), the same epoch records in the same order (a later trial's wait for the
    earlier ones), every record delivered in the calling thread, progress never going back."""
    seq, seq_seen, _, _ = _tuned(tiny_synthetic, monkeypatch, False)
    par, par_seen, threads, marks = _tuned(tiny_synthetic, monkeypatch, True)
    assert threads == {threading.current_thread().name}
    strip = lambda rows: [{k: v for k, v in h.items() if k != "seconds"} for h in rows]  # noqa: E731
    assert strip(par_seen) == strip(seq_seen)
    assert [h["epoch"] for h in par_seen] == list(range(1, len(par_seen) + 1))
    assert [h["trial"] for h in par_seen] == sorted(h["trial"] for h in par_seen)
    assert par.summary["tune_trials"] == seq.summary["tune_trials"]
    assert par.summary["tune_choice"] == seq.summary["tune_choice"]
    np.testing.assert_array_equal(par.eval_user_vectors, seq.eval_user_vectors)
    for key in ("i2u_recall@50", "u2i_recall@50", "test_auc", "val_recall@50"):
        assert par.summary.get(key) == seq.summary.get(key), key
    train = [f for stage, f in marks if stage == "train"]
    assert train == sorted(train) and train[-1] == 1.0


def test_a_cancel_stops_every_trial_running_side_by_side(tiny_synthetic, monkeypatch) -> None:
    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(pipeline.TrainingCancelled):
        _tuned(tiny_synthetic, monkeypatch, True, should_stop=stop)
    assert not [t for t in threading.enumerate() if t.name.startswith("dssm-trial")]
