"""pipeline: honest splits, end-to-end training on the tiny synthetic set, the stored run."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dssm_core import pipeline, training
from dssm_core.config import preset
from dssm_core.dataset import Dataset

torch.set_num_threads(1)

#: Keys of a summary that measure time and so differ between two identical runs.
TIMING = {"seconds_per_epoch", "train_samples_per_second", "feature_seconds", "eval_seconds"}


def _cfg(**kw):
    base = dict(epochs=2, batch_size=256, embedding_dim=8, user_hidden=(32, 16),
                item_hidden=(32, 16), history_len=20)
    base.update(kw)
    return preset("default", **base)


def _with_cold_users(ds: Dataset, n_cold: int = 12) -> Dataset:
    """``ds`` with every pre-test interaction of ``n_cold`` test-period users removed, so
    they first appear after the split (cold start)."""
    inter = ds.interactions
    split_time = pipeline.split(ds, _cfg()).split_time
    late = inter[inter["timestamp"] >= split_time + 86_400 * 7]
    active = late["user_id"].value_counts()
    cold = active.index[active >= 3][:n_cold]
    drop = inter["user_id"].isin(cold) & (inter["timestamp"] < split_time + 86_400 * 7)
    return Dataset(inter[~drop].reset_index(drop=True), ds.users, ds.items,
                   format=ds.format, name="tiny with cold users")


#: Rated pairs plus 4 sampled unseen items per row: learns who interacts at all.
AUDIENCE = dict(explicit_negatives=4, batch_size=64, learning_rate=0.01, dropout=0.0)


@pytest.fixture(scope="module")
def cold_ds(tiny_synthetic) -> Dataset:
    return _with_cold_users(tiny_synthetic)


@pytest.fixture(scope="module")
def trained_t(cold_ds):
    return pipeline.train(cold_ds, _cfg(**AUDIENCE))


def test_split_t_is_time_ordered_80_20_with_an_eighth_for_validation(tiny_synthetic) -> None:
    ds = tiny_synthetic
    sp = pipeline.split(ds, _cfg())
    n = len(ds.interactions)                                   # 6000
    # test = 20% = 1200; known = 4800, of which an eighth (600) validation, 4200 train
    assert (len(sp.train), len(sp.val), len(sp.test)) == (4200, 600, 1200)
    assert len(np.unique(np.concatenate([sp.train, sp.val, sp.test]))) == n
    ts = ds.interactions["timestamp"].to_numpy()
    assert ts[sp.train].max() <= ts[sp.val].min()
    assert ts[sp.val].max() <= ts[sp.test].min() == sp.split_time
    assert sp.protocol == "T" and "time split" in sp.description and sp.pool is None


def test_split_l_holds_out_each_users_last_interaction(tiny_synthetic) -> None:
    ds = tiny_synthetic
    sp = pipeline.split(ds, _cfg(protocol="L"))
    inter = ds.interactions
    test = inter.iloc[sp.test]
    counts = inter["user_id"].value_counts()
    assert set(test["user_id"]) == set(counts.index[counts >= 2])
    assert test["user_id"].is_unique
    last = inter.groupby("user_id")["timestamp"].max()
    np.testing.assert_array_equal(test["timestamp"].to_numpy(),
                                  last.loc[test["user_id"]].to_numpy())
    known = np.sort(np.concatenate([sp.train, sp.val]))
    np.testing.assert_array_equal(known, sp.pool)
    assert len(np.intersect1d(known, sp.test)) == 0


def test_split_rejects_tiny_data(tiny_synthetic) -> None:
    ds = tiny_synthetic
    small = Dataset(ds.interactions.head(5), ds.users, ds.items, format="synthetic")
    with pytest.raises(ValueError, match="too few"):
        pipeline.split(small, _cfg())
    with pytest.raises(ValueError):
        pipeline.describe_protocol("X")


def test_summary_has_protocol_metrics_and_baselines(trained_t, cold_ds) -> None:
    s = trained_t.summary
    assert s["protocol"] == "T" and s["protocol_description"].startswith("time split")
    for key in ("test_auc", "test_logloss", "baseline_item_mean_test_auc",
                "baseline_item_mean_test_logloss", "i2u_recall@10", "i2u_recall@50",
                "i2u_recall@100", "u2i_recall@50", "baseline_popularity_i2u_recall@50",
                "baseline_popularity_u2i_recall@50", "seconds_per_epoch",
                "train_samples_per_second"):
        assert s[key] is not None, key
    assert 0.5 < s["test_auc"] <= 1.0
    assert s["n_train"] + s["n_val"] + s["n_test"] == len(cold_ds.interactions) < 6000
    assert s["epochs_run"] == 2
    json.dumps(s)                                              # JSON-able as stored
    rep = pipeline.report(s, run_id=7)
    assert rep["run_id"] == 7 and rep["test"]["auc"] == s["test_auc"]
    assert set(rep["retrieval"]["item_to_user"]) == {"recall@10", "recall@50", "recall@100"}
    assert rep["baseline_popularity"]["retrieval"]["user_to_item"]["recall@50"] == \
        s["baseline_popularity_u2i_recall@50"]


def test_two_epochs_beat_the_popularity_baseline_on_audiences(trained_t) -> None:
    s = trained_t.summary
    # the planted taste groups make "who will like this item" learnable; popularity ranks
    # every item's audience the same way
    assert s["i2u_recall@50"] > s["baseline_popularity_i2u_recall@50"] + 0.05
    assert s["i2u_recall@10"] > s["baseline_popularity_i2u_recall@10"]


def test_embeddings_cover_every_user_and_item(trained_t, tiny_synthetic) -> None:
    r = trained_t
    assert r.user_ids.tolist() == tiny_synthetic.users["user_id"].tolist()
    assert r.item_ids.tolist() == tiny_synthetic.items["item_id"].tolist()
    assert r.audience_user_vectors.shape == (300, 16) and r.audience_item_vectors.shape == (120, 16)
    assert r.audience_user_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(r.audience_user_vectors, axis=1), 1.0, atol=1e-5)


def test_cold_start_users_get_finite_distinct_embeddings(trained_t, cold_ds) -> None:
    r = trained_t
    inter = cold_ds.interactions
    first = inter.groupby("user_id")["timestamp"].min()
    cold = first.index[first >= r.split.split_time]             # first seen in the test period
    assert len(cold) >= 5
    known = set(r.encoder.user_vocab_)
    assert not (set(cold) & known)                             # really unseen in training
    pos = pd.Index(r.user_ids).get_indexer(cold)
    vec = r.audience_user_vectors[pos]
    assert np.isfinite(vec).all()
    assert len(np.unique(vec.round(5), axis=0)) == len(cold)    # no two cold users collapse
    # as of the split time they have only attributes; those with different attributes differ
    ids, table = r.encoder.user_table(cold_ds, r.split.split_time)
    v0 = training.embed(r.model, "user", table)[pos]
    # (the encoded attributes: a zip counts by its first character)
    names = [a["name"] for a in r.encoder.user_attrs_]
    profiles = np.stack([table[n][pos] for n in names], axis=1)
    n_profiles = len(np.unique(profiles, axis=0))
    assert n_profiles >= 5
    assert np.isfinite(v0).all()
    assert len(np.unique(v0.round(5), axis=0)) == n_profiles


def test_same_seed_same_metrics(tiny_synthetic) -> None:
    cfg = _cfg(epochs=1, protocol="L")
    a = pipeline.train(tiny_synthetic, cfg).summary
    b = pipeline.train(tiny_synthetic, cfg).summary
    strip = lambda s: {k: v for k, v in s.items() if k not in TIMING}  # noqa: E731
    assert strip(a) == strip(b)
    c = pipeline.train(tiny_synthetic, cfg.with_(seed=cfg.seed + 1)).summary
    assert c["test_auc"] != a["test_auc"]


def test_protocol_l_end_to_end_pointwise(tiny_synthetic) -> None:
    r = pipeline.train(tiny_synthetic, _cfg(protocol="L"))
    s = r.summary
    # one held-out interaction per tested user: each is one relevant pair, one u2i query
    assert s["protocol"] == "L" and s["i2u_relevant"] == s["n_test"] == s["u2i_queries"]
    assert s["i2u_recall@100"] >= s["i2u_recall@50"] >= s["i2u_recall@10"]
    assert s["test_auc"] > s["baseline_item_mean_test_auc"]


def test_item_mean_baseline_hand_worked() -> None:
    # item 1: labels 1, 1, 0 -> (2 + 5 * 0.6) / (3 + 5) = 0.625; item 2: labels 1, 0 ->
    # (1 + 3) / 7 = 0.571429; unknown item 0 and never-seen item 3 get the global 3/5 = 0.6
    p = pipeline.item_mean_baseline(np.array([1, 1, 1, 2, 2]), np.array([1, 1, 0, 1, 0.]),
                                    np.array([1, 2, 0, 3]))
    np.testing.assert_allclose(p, [0.625, 4 / 7, 0.6, 0.6])


def test_cancel_raises(tiny_synthetic) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(pipeline.TrainingCancelled):
        pipeline.train(tiny_synthetic, _cfg(), should_stop=stop)


def test_implicit_data_trains_with_sampled_negatives(tiny_synthetic) -> None:
    inter = tiny_synthetic.interactions.copy()
    inter["rating"] = np.float32(1.0)
    ds = Dataset(inter, tiny_synthetic.users, tiny_synthetic.items, format="synthetic",
                 rating_scale=None)
    r = pipeline.train(ds, _cfg(epochs=1, negatives=2))
    s = r.summary
    assert 0.0 <= s["test_positive_rate"] < 0.5               # 1 positive : ~2 negatives
    assert s["test_auc"] is not None and s["i2u_queries"] > 0


# --------------------------------------------------------------------------- with the store
@pytest.fixture()
def store(sqlite_url):
    from dssm_core.store import Store

    return Store(sqlite_url)


def test_run_training_stores_a_rebuildable_model(store, tiny_synthetic) -> None:
    ds_id = store.add_dataset(tiny_synthetic)
    epochs = []
    run_id = pipeline.run_training(store, ds_id, _cfg(), on_epoch_end=epochs.append,
                                   project=False)
    run = store.get_run(run_id)
    assert run["status"] == "succeeded" and run["summary"]["protocol"] == "T"
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert len(store.epochs(run_id)) == 2
    model, enc, cfg = pipeline.load_model(store, run_id)
    assert cfg == _cfg()
    ids, vectors = store.load_embeddings(run_id, "user")
    _, table = enc.user_table(store.load_dataset(ds_id))
    np.testing.assert_allclose(training.embed(model, "user", table), vectors, atol=1e-5)


def test_run_training_marks_failures_and_cancels(store, tiny_synthetic) -> None:
    ds_id = store.add_dataset(tiny_synthetic)
    bad = _cfg(label_threshold=10.0)                           # no positive labels at all
    with pytest.raises(ValueError, match="single class"):
        pipeline.run_training(store, ds_id, bad, project=False)
    failed = store.list_runs()[0]
    assert failed["status"] == "failed" and "single class" in failed["error"]
    with pytest.raises(Exception):
        store.load_weights(failed["id"])                       # nothing half-written

    run_id = store.create_run(ds_id, _cfg().to_dict(), preset="default")
    store.request_cancel(run_id)
    with pytest.raises(pipeline.TrainingCancelled):
        pipeline.run_training(store, ds_id, _cfg(), run_id=run_id, project=False)
    assert store.get_run(run_id)["status"] == "cancelled"


def test_run_that_cannot_start_is_left_alone_and_interrupt_is_a_cancel(store, tiny_synthetic
                                                                       ) -> None:
    ds_id = store.add_dataset(tiny_synthetic)
    run_id = store.create_run(ds_id, _cfg().to_dict(), preset="default")
    store.fail_run(run_id, "cancelled before it started", status="cancelled")
    with pytest.raises(ValueError):                            # StoreError: it cannot start
        pipeline.run_training(store, ds_id, _cfg(), run_id=run_id, project=False)
    assert store.get_run(run_id)["status"] == "cancelled"

    def interrupt(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run_training(store, ds_id, _cfg(), on_epoch_end=interrupt, project=False)
    assert store.list_runs()[0]["status"] == "cancelled"


def test_audience_preset_learns_who_interacts(tiny_synthetic) -> None:
    cfg = preset("audience", epochs=1, batch_size=256, embedding_dim=8,
                 user_hidden=(32, 16), item_hidden=(32, 16), history_len=10,
                 tune="none")                    # item negatives only (no random pairs)
    assert cfg.label_threshold == 0.0 and cfg.explicit_negatives == 4
    s = pipeline.train(tiny_synthetic, cfg).summary
    # every rated test row is a positive; each gets up to 4 sampled unseen items (fewer only
    # for the users who have seen all 120 items) -> a positive rate a little above 1/5
    assert s["test_rows"] > 4 * s["n_test"]
    assert 0.2 <= s["test_positive_rate"] < 0.25
    # retrieval queries are all test interactions, whatever their rating
    assert s["i2u_queries"] > 0 and s["test_auc"] is not None
