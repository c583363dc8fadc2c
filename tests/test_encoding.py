"""encoding: leak-free features as of event time, hand-worked on a tiny dataset."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dssm_core.dataset import Dataset
from dssm_core.encoding import FeatureEncoder
from dssm_core.features import DenseFeature, SequenceFeature, SparseFeature


def _tiny() -> Dataset:
    """3 users, 4 items, 8 events; u3 only appears after training (cold start).

    row  user item rating  time
     0   u1   a    5       100
     1   u1   b    2       200
     2   u2   a    4       200
     3   u1   c    4       300
     4   u2   b    5       300
     5   u1   d    5       300   (same second as row 3)
     6   u3   a    4       400   (test)
     7   u2   c    1       500   (test)
    """
    inter = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u1", "u2", "u1", "u3", "u2"],
        "item_id": ["a", "b", "a", "c", "b", "d", "a", "c"],
        "rating": np.array([5, 2, 4, 4, 5, 5, 4, 1], dtype=np.float32),
        "timestamp": np.array([100, 200, 200, 300, 300, 300, 400, 500], dtype=np.int64),
    })
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", "F"],
                          "age": [25, 40, 30], "zip": ["12345", "98765", "1A2B3"]})
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"],
                          "genres": [["Action", "Drama"], ["Comedy"], ["Drama"], ["Horror"]],
                          "year": pd.array([1990, 2000, None, 1980], dtype="Int64")})
    return Dataset(inter, users, items, format="test", name="tiny")


TRAIN = np.arange(6)


def _unscale(enc: FeatureEncoder, name: str, x: np.ndarray) -> np.ndarray:
    return x * np.asarray(enc.dense_scale_[name]) + np.asarray(enc.dense_mean_[name])


def test_init_only_stores_arguments_and_fit_returns_self() -> None:
    enc = FeatureEncoder(history_len=3, label_threshold=3.0, embedding_dim=8)
    assert vars(enc) == {"history_len": 3, "label_threshold": 3.0, "embedding_dim": 8,
                         "zip_prefix_len": 1, "n_buckets": 8, "smoothing": 5.0,
                         "max_genres": 8}
    with pytest.raises(ValueError, match="not fitted"):
        enc.transform_events(_tiny(), [0])
    assert enc.fit(_tiny(), TRAIN) is enc
    with pytest.raises(ValueError):
        FeatureEncoder(history_len=0).fit(_tiny(), TRAIN)
    with pytest.raises(ValueError):
        FeatureEncoder().fit(_tiny(), [])
    with pytest.raises(ValueError):
        FeatureEncoder().fit(_tiny(), [99])


def test_vocabularies_and_specs_are_sized_from_training_rows() -> None:
    enc = FeatureEncoder(history_len=3, embedding_dim=8).fit(_tiny(), TRAIN)
    assert enc.user_vocab_ == ["u1", "u2"]               # u3 is not in the training rows
    assert enc.item_vocab_ == ["a", "b", "c", "d"]
    assert enc.genre_vocab_ == ["Action", "Comedy", "Drama", "Horror"]
    assert enc.genres_len_ == 2
    # +1 everywhere for index 0 (padding/unknown); age has 2 values in training -> categories
    assert enc.vocab_sizes_ == {"user_id": 3, "gender": 3, "age": 3, "zip": 3, "hist": 5,
                                "item_id": 5, "genres": 5}
    by_name = {s.name: s for s in enc.user_specs_ + enc.item_specs_}
    assert by_name["hist"] == SequenceFeature("hist", 5, 8, 3, "mean", shared_with="item_id")
    assert by_name["genres"] == SequenceFeature("genres", 5, 8, 2, "mean")
    assert by_name["user_id"] == SparseFeature("user_id", 3, 8)
    # user: mean, like-rate, log count, bias, recent mean; item: mean, like-rate, log count,
    # bias; one affinity per genre
    assert by_name["user_stats"] == DenseFeature("user_stats", 6)
    assert by_name["item_stats"] == DenseFeature("item_stats", 4)
    assert by_name["genre_affinity"] == DenseFeature("genre_affinity", 4)
    assert by_name["year"] == DenseFeature("year", 2)
    assert [s.name for s in enc.user_specs_] == ["user_id", "gender", "age", "zip", "hist",
                                                 "user_stats", "genre_affinity"]


def test_history_and_statistics_as_of_event_time() -> None:
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    x = enc.transform_events(ds, np.arange(8))
    a, b, c, d = 1, 2, 3, 4                                  # item vocabulary indices
    # row 0: nothing before t=100
    np.testing.assert_array_equal(x["hist"][0], [0, 0, 0])
    # rows 3 and 5 (u1 at t=300): positives strictly before 300 = [a]; c and d at 300 are
    # excluded (same second), b was rated 2 (not a positive)
    np.testing.assert_array_equal(x["hist"][3], [a, 0, 0])
    np.testing.assert_array_equal(x["hist"][5], [a, 0, 0])
    # row 7 (u2 at t=500): positives a@200, b@300, most recent first
    np.testing.assert_array_equal(x["hist"][7], [b, a, 0])
    # labels: rating > 3
    np.testing.assert_array_equal(x["label"], [1, 0, 1, 1, 1, 1, 1, 0])

    # user statistics of row 3 (u1 before 300: ratings 5 and 2), smoothed towards the
    # training means with 5 pseudo-counts: global mean rating = 25/6, like-rate = 5/6
    #   mean = (7 + 5 * 25/6) / (2 + 5) = 3.976190;  rate = (1 + 5 * 5/6) / 7 = 0.738095
    #   count = log1p(2) = 1.098612
    # bias: each earlier rating minus its item's smoothed mean as of that rating's own time:
    #   row 0 (a@100, nothing before): 5 - 25/6 = 5/6; row 1 (b@200, nothing): 2 - 25/6 = -13/6
    #   bias = (5/6 - 13/6) / (2 + 5) = -4/21 = -0.190476 (prior 0)
    # recent mean of the last 10 ratings with 2 pseudo-counts: (7 + 2 * 25/6) / 4 = 23/6
    # recency: u1's last event before 300 is at 200: log1p(100 s in days)
    raw = _unscale(enc, "user_stats", x["user_stats"][3])
    np.testing.assert_allclose(raw, [3.976190, 0.738095, math.log1p(2), -4 / 21, 23 / 6,
                                     math.log1p(100 / 86400)], atol=1e-5)
    # row 0 has no past: the priors themselves, log1p(0) = 0, and recency from the pool's
    # first event (t=100, the row's own time): 0
    np.testing.assert_allclose(_unscale(enc, "user_stats", x["user_stats"][0]),
                               [25 / 6, 5 / 6, 0.0, 0.0, 25 / 6, 0.0], atol=1e-5)
    # row 7 (u2 at 500): last event before it at 300
    assert _unscale(enc, "user_stats", x["user_stats"][7])[5] == pytest.approx(
        math.log1p(200 / 86400), abs=1e-6)
    # item statistics of row 6 (item a before 400: ratings 5 by u1@100, 4 by u2@200)
    #   mean = (9 + 5 * 25/6) / 7 = 4.261905; rate = (2 + 5 * 5/6) / 7 = 0.880952
    #   bias: rating minus the rater's mean before it (neither had rated): 5 - 25/6 = 5/6 and
    #   4 - 25/6 = -1/6 -> (5/6 - 1/6) / 7 = 2/21
    np.testing.assert_allclose(_unscale(enc, "item_stats", x["item_stats"][6]),
                               [4.261905, 0.880952, math.log1p(2), 2 / 21], atol=1e-5)
    # genre affinity (Action, Comedy, Drama, Horror) of row 3, u1 before 300: a (Action,
    # Drama) with residual 5/6 and b (Comedy) with -13/6, each over (1 + 5)
    np.testing.assert_allclose(_unscale(enc, "genre_affinity", x["genre_affinity"][3]),
                               [5 / 36, -13 / 36, 5 / 36, 0.0], atol=1e-5)
    # row 7, u2 before 500: a@200 (item a's mean before: (5 + 5 * 25/6) / 6 = 155/36, so
    # residual 4 - 155/36 = -11/36) and b@300 (b's mean before: (2 + 125/6) / 6 = 137/36,
    # residual 5 - 137/36 = 43/36)
    np.testing.assert_allclose(_unscale(enc, "genre_affinity", x["genre_affinity"][7]),
                               [-11 / 216, 43 / 216, -11 / 216, 0.0], atol=1e-5)
    # row 2 (item a at t=200): only row 0 is strictly earlier -> count 1, never itself
    assert _unscale(enc, "item_stats", x["item_stats"][2])[2] == pytest.approx(math.log1p(1))


def test_cold_start_user_and_unknown_values_map_to_zero() -> None:
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    x = enc.transform_events(ds, [6])                          # u3, first seen at t=400
    assert x["user_id"][0] == 0                                # unseen id -> unknown
    assert x["gender"][0] == 1                                 # "F" is known
    assert x["zip"][0] == 1                                    # prefix "1" is known
    assert x["age"][0] == 0                                    # age 30 never seen in training
    np.testing.assert_array_equal(x["hist"][0], [0, 0, 0])
    # genres of a = [Action, Drama] -> [1, 3]; year of c unknown -> [0, 0 known]
    np.testing.assert_array_equal(x["genres"][0], [1, 3])
    y = enc.transform_events(ds, [3])["year"][0]               # item c
    np.testing.assert_array_equal(y, [0.0, 0.0])
    # year of a: (1990 - mean 1990) / std -> 0, known flag 1
    np.testing.assert_allclose(enc.transform_events(ds, [0])["year"][0], [0.0, 1.0])


def test_user_and_item_tables_as_of_a_time() -> None:
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    ids, t = enc.user_table(ds, 300)
    assert ids.tolist() == ["u1", "u2", "u3"]
    np.testing.assert_array_equal(t["hist"], [[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    ids, t = enc.user_table(ds, None)                          # after every event
    np.testing.assert_array_equal(t["hist"], [[4, 3, 1], [2, 1, 0], [1, 0, 0]])
    # recency "as of the end of the data" is measured just after the pool's last event (500):
    # u1 last at 300, u2 at 500, u3 at 400
    np.testing.assert_allclose(_unscale(enc, "user_stats", t["user_stats"])[:, 5],
                               np.log1p(np.array([201, 1, 101]) / 86400), atol=1e-6)
    # ... and with the training rows as the pool, just after their last event (300); u3 has
    # no event there: since the pool's first (100)
    _, t = enc.user_table(ds, None, pool=TRAIN)
    np.testing.assert_allclose(_unscale(enc, "user_stats", t["user_stats"])[:, 5],
                               np.log1p(np.array([1, 1, 201]) / 86400), atol=1e-6)
    # one time per user
    _, t = enc.user_table(ds, np.array([150, 250, 0]))
    np.testing.assert_array_equal(t["hist"][:, 0], [1, 1, 0])
    # a pool restricts what the past holds: only the training rows
    _, t = enc.user_table(ds, None, pool=TRAIN)
    np.testing.assert_array_equal(t["hist"][2], [0, 0, 0])
    item_ids, it = enc.item_table(ds, 250)
    assert item_ids.tolist() == ["a", "b", "c", "d"]
    counts = _unscale(enc, "item_stats", it["item_stats"])[:, 2]
    np.testing.assert_allclose(counts, np.log1p([2, 1, 0, 0]), atol=1e-6)
    with pytest.raises(ValueError):
        enc.user_table(ds, np.array([1, 2]))


def test_json_round_trip_gives_identical_features() -> None:
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN)
    doc = json.loads(json.dumps(enc.to_json()))                # plain JSON, no pickle
    back = FeatureEncoder.from_json(doc)
    assert back.user_specs_ == enc.user_specs_ and back.item_specs_ == enc.item_specs_
    x1 = enc.transform_events(ds, np.arange(8))
    x2 = back.transform_events(ds, np.arange(8))
    assert x1.keys() == x2.keys()
    for k in x1:
        np.testing.assert_array_equal(x1[k], x2[k])
    with pytest.raises(ValueError):
        FeatureEncoder.from_json({"version": 999})


def test_numeric_attribute_is_bucketed_and_zip_cut(tiny_synthetic) -> None:
    ds = tiny_synthetic
    users = ds.users.copy()
    users["age"] = np.arange(len(users)) % 60 + 10             # raw ages: 60 values
    users["email"] = [f"user{i}@example.com" for i in range(len(users))]  # an identifier
    ds = Dataset(ds.interactions, users, ds.items, format="synthetic")
    enc = FeatureEncoder(n_buckets=4).fit(ds, np.arange(3000))
    assert [a["name"] for a in enc.user_attrs_] == ["gender", "age", "occupation", "zip"]
    age = next(a for a in enc.user_attrs_ if a["name"] == "age")
    assert age["kind"] == "bins" and len(age["edges"]) == 3    # quartiles
    zip_attr = next(a for a in enc.user_attrs_ if a["name"] == "zip")
    assert zip_attr["kind"] == "prefix" and all(len(v) == 1 for v in zip_attr["vocab"])
    _, t = enc.user_table(ds)
    assert t["age"].min() >= 1 and t["age"].max() == 4


def test_no_history_holds_its_own_item_or_a_later_one(tiny_synthetic) -> None:
    ds = tiny_synthetic
    inter = ds.interactions
    n = len(inter)
    enc = FeatureEncoder(history_len=20).fit(ds, np.arange(int(n * 0.7)))
    x = enc.transform_events(ds, np.arange(n))
    when = {(u, i): (t, r) for u, i, t, r in zip(inter["user_id"], inter["item_id"],
                                                 inter["timestamp"], inter["rating"])}
    vocab = np.array([""] + enc.item_vocab_, dtype=object)
    users = inter["user_id"].to_numpy()
    items = inter["item_id"].to_numpy()
    ts = inter["timestamp"].to_numpy()
    by_user: dict[str, list] = {}
    for (u, i), (t, r) in when.items():
        by_user.setdefault(u, []).append((t, i, r))
    known_items = set(enc.item_vocab_)
    checked = 0
    for row in range(0, n, 7):                                  # a spread of events
        hist = [vocab[h] for h in x["hist"][row] if h]
        assert items[row] not in hist
        for item in hist:
            t, r = when[(users[row], item)]
            assert t < ts[row] and r > 3
            checked += 1
        # and the history is complete: every earlier positive (up to 20) is there
        earlier = [i for t, i, r in by_user[users[row]]
                   if t < ts[row] and r > 3 and i in known_items]
        assert len(hist) == min(20, len(earlier))
    assert checked > 1000


def test_activity_count_excludes_the_event_itself(tiny_synthetic) -> None:
    ds = tiny_synthetic
    inter = ds.interactions
    enc = FeatureEncoder().fit(ds, np.arange(4000))
    rows = np.arange(0, len(inter), 13)
    x = enc.transform_events(ds, rows)
    n_before = np.expm1(_unscale(enc, "user_stats", x["user_stats"])[:, 2])
    ts = inter["timestamp"].to_numpy()
    users = inter["user_id"].to_numpy()
    expected = [int(((users == users[r]) & (ts < ts[r])).sum()) for r in rows]
    np.testing.assert_allclose(n_before, expected, atol=1e-3)


def test_no_feature_changes_when_the_event_or_anything_later_changes(tiny_synthetic) -> None:
    """The label leak check for every feature at once: rewrite the ratings of an event, of
    every event at its second and of everything after it; its features must not move."""
    ds = tiny_synthetic
    inter = ds.interactions
    enc = FeatureEncoder().fit(ds, np.arange(4000))
    ts = inter["timestamp"].to_numpy()
    rng = np.random.default_rng(3)
    for row in rng.choice(len(inter), 5, replace=False):
        before = enc.transform_events(ds, [row])
        changed = inter.copy()
        later = ts >= ts[row]
        changed.loc[later, "rating"] = (6 - changed.loc[later, "rating"]).astype(np.float32)
        after = enc.transform_events(Dataset(changed, ds.users, ds.items, format="synthetic"),
                                     [row])
        for name in before:
            if name != "label":
                np.testing.assert_array_equal(before[name], after[name], err_msg=name)
        assert before["label"][0] != after["label"][0] or inter["rating"].iloc[row] == 3


def test_genre_affinity_is_a_share_when_every_event_is_a_positive() -> None:
    """label_threshold 0 (the audience preset: "interacted at all"): the affinity is the
    user's share of earlier events in each genre, smoothed by 5 pseudo-events."""
    ds = _tiny()
    enc = FeatureEncoder(history_len=3, label_threshold=0.0).fit(ds, TRAIN)
    assert enc.affinity_ == "share"
    x = enc.transform_events(ds, [3, 7])
    # row 3, u1 before 300: a (Action, Drama) and b (Comedy) -> 1/(2 + 5) each
    np.testing.assert_allclose(_unscale(enc, "genre_affinity", x["genre_affinity"][0]),
                               [1 / 7, 1 / 7, 1 / 7, 0.0], atol=1e-6)
    # row 7, u2 before 500: a@200 and b@300, the same shares
    np.testing.assert_allclose(_unscale(enc, "genre_affinity", x["genre_affinity"][1]),
                               [1 / 7, 1 / 7, 1 / 7, 0.0], atol=1e-6)
    assert FeatureEncoder.from_json(enc.to_json()).affinity_ == "share"


def test_an_encoder_stored_before_the_bias_statistics_still_transforms() -> None:
    """A version-1 document (3 user/item statistics, no genre affinity) keeps the inputs its
    model was trained on."""
    ds = _tiny()
    d = FeatureEncoder(history_len=3, embedding_dim=4).fit(ds, TRAIN).to_json()
    assert d["version"] == 3
    d = json.loads(json.dumps(d))
    # a version-2 document (before recency): 5 user statistics, the same first five
    v2 = json.loads(json.dumps(d))
    v2["version"] = 2
    v2["dense_mean"]["user_stats"] = v2["dense_mean"]["user_stats"][:5]
    v2["dense_scale"]["user_stats"] = v2["dense_scale"]["user_stats"][:5]
    for s in v2["user_specs"]:
        if s["name"] == "user_stats":
            s["dim"] = 5
    new = FeatureEncoder.from_json(d).transform_events(ds, np.arange(8))["user_stats"]
    x2 = FeatureEncoder.from_json(v2).transform_events(ds, np.arange(8))["user_stats"]
    assert x2.shape == (8, 5)
    np.testing.assert_allclose(x2, new[:, :5], atol=1e-6)
    d["version"] = 1
    for name in ("user_stats", "item_stats"):
        d["dense_mean"][name] = d["dense_mean"][name][:3]
        d["dense_scale"][name] = d["dense_scale"][name][:3]
    del d["dense_mean"]["genre_affinity"], d["dense_scale"]["genre_affinity"]
    d["user_specs"] = [s for s in d["user_specs"] if s["name"] != "genre_affinity"]
    for s in d["user_specs"] + d["item_specs"]:
        if s["name"] in ("user_stats", "item_stats"):
            s["dim"] = 3
    old = FeatureEncoder.from_json(d)
    x = old.transform_events(ds, np.arange(8))
    assert "genre_affinity" not in x
    assert x["user_stats"].shape == (8, 3) and x["item_stats"].shape == (8, 3)
    np.testing.assert_allclose(_unscale(old, "user_stats", x["user_stats"][3]),
                               [3.976190, 0.738095, math.log1p(2)], atol=1e-5)
    assert old.to_json()["version"] == 1


def test_implicit_negatives_are_unseen_items_and_seeded(tiny_synthetic) -> None:
    ds = tiny_synthetic
    inter = ds.interactions.copy()
    inter["rating"] = np.float32(1.0)
    imp = Dataset(inter, ds.users, ds.items, format="synthetic", rating_scale=None)
    enc = FeatureEncoder().fit(imp, np.arange(4000))
    rows = np.arange(4000, 4100)
    x = enc.transform_events(imp, rows, negatives=3, seed=5)
    # 3 negatives per event, except for users who have seen every one of the 120 items
    n_seen = inter.groupby("user_id")["item_id"].nunique()
    full = int((n_seen.loc[inter["user_id"].to_numpy()[rows]] == len(ds.items)).sum())
    assert len(x["label"]) == 100 + 3 * (100 - full)
    assert x["label"][:100].tolist() == [1.0] * 100 and x["label"][100:].sum() == 0
    items, users, ts = enc.sample_negatives(imp, rows, 3, seed=5)
    seen = set(zip(inter["user_id"], inter["item_id"]))
    assert not any((u, i) in seen for u, i in zip(users, items))
    assert set(ts) <= set(inter["timestamp"].to_numpy()[rows]) and len(ts) == len(items)
    again = enc.sample_negatives(imp, rows, 3, seed=5)[0]
    np.testing.assert_array_equal(items, again)
    assert not np.array_equal(items, enc.sample_negatives(imp, rows, 3, seed=6)[0])
    # rated data: labels come from ratings; negatives avoid only what the known rows show
    enc2 = FeatureEncoder().fit(ds, np.arange(4000))
    assert len(enc2.transform_events(ds, rows)["label"]) == 100
    known = np.arange(4000)
    x2 = enc2.transform_events(ds, rows, negatives=2, seed=1, known=known)
    ratings = ds.interactions["rating"].to_numpy()[rows]
    np.testing.assert_array_equal(x2["label"][:100], (ratings > 3).astype(np.float32))
    assert x2["label"][100:].sum() == 0 and len(x2["label"]) > 100
    items2, users2, _ = enc2.sample_negatives(ds, rows, 2, seed=1, known=known)
    seen_known = set(zip(inter["user_id"][:4000], inter["item_id"][:4000]))
    assert not any((u, i) in seen_known for u, i in zip(users2, items2))


def test_sorted_search_matches_searchsorted_on_unsorted_queries() -> None:
    from dssm_core.encoding import sorted_search
    table = np.array([10, 20, 20, 30])
    queries = np.array([25, 5, 20, 31, 10, 20])
    # hand-worked: positions of the first element >= q ("left") and > q ("right")
    assert sorted_search(table, queries).tolist() == [3, 0, 1, 4, 0, 1]
    assert sorted_search(table, queries, side="right").tolist() == [3, 0, 3, 4, 1, 3]
    assert sorted_search(table, np.array([5, 30])).tolist() == [0, 3]


def test_features_do_not_depend_on_the_order_of_the_query_rows(tiny_synthetic) -> None:
    """Queries are searched in sorted order and put back: shuffling the rows asked for
    shuffles the features the same way, nothing else."""
    ds = tiny_synthetic
    enc = FeatureEncoder().fit(ds, np.arange(4000))
    rows = np.random.default_rng(5).choice(len(ds.interactions), 300, replace=False)
    perm = np.random.default_rng(3).permutation(len(rows))
    a = enc.transform_events(ds, rows)
    b = enc.transform_events(ds, rows[perm])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name])[perm], np.asarray(b[name]))


def test_tables_computed_in_chunks_equal_the_whole_table(tiny_synthetic, monkeypatch) -> None:
    """user_table / item_table build their features (and the context every user's genre
    start) a chunk of entities at a time (bounded temporaries at 1M users): every feature
    equals the one-pass table, as of the end and as of a time per entity."""
    from dssm_core import encoding

    ds = tiny_synthetic
    enc = FeatureEncoder().fit(ds, np.arange(len(ds.interactions) * 4 // 5))
    ctx = enc.context(ds)
    t = int(ds.interactions["timestamp"].median())
    whole = [getattr(enc, f"{kind}_table")(ds, as_of, context=ctx)
             for kind in ("user", "item") for as_of in (None, t)]
    monkeypatch.setattr(encoding, "TABLE_CHUNK", 7)
    ctx = enc.context(ds)                # every user's genre start, 7 users at a time too
    assert ctx.genre_prefix is not None
    chunked = [getattr(enc, f"{kind}_table")(ds, as_of, context=ctx)
               for kind in ("user", "item") for as_of in (None, t)]
    for (ids_a, feats_a), (ids_b, feats_b) in zip(whole, chunked):
        np.testing.assert_array_equal(ids_a, ids_b)
        assert feats_a.keys() == feats_b.keys()
        for name in feats_a:
            assert feats_a[name].dtype == feats_b[name].dtype, name
            np.testing.assert_array_equal(feats_a[name], feats_b[name], err_msg=name)
