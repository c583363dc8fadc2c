"""Audiences: exact search, item and lookalike audiences, exclusions, insights, reach, export.

Most expected values are worked by hand on six users in 2-D:

    u1 ( 1,  0)   u2 (.8, .6)   u3 (.6, .8)   u4 (0, 1)   u5 (-1, 0)   u6 (.8, -.6)
    items: A (1, 0)  B (0, 1)  C (-3, 0) (stored unnormalised)

so item A scores users 1, .8, .6, 0, -1, .8 (u2 and u6 tie: the earlier user ranks first), and
the campaign A+B queries with (1, 1)/sqrt(2): u2 and u3 score 1.4/sqrt(2) = 0.98995.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dssm_core import audience as aud
from dssm_core.audience import AudienceRequest, UserIndex
from dssm_core.dataset import Dataset
from dssm_core.store import Store

USER_VECS = np.array([[1, 0], [.8, .6], [.6, .8], [0, 1], [-1, 0], [.8, -.6]], np.float32)
USER_IDS = ["u1", "u2", "u3", "u4", "u5", "u6"]
ITEM_VECS = np.array([[1, 0], [0, 1], [-3, 0]], np.float32)
HYPERLINK = '=HYPERLINK("http://evil.example","click")'


def tiny_dataset() -> Dataset:
    return Dataset(
        interactions=pd.DataFrame({
            "user_id": ["u1", "u1", "u2", "u4", "u4", "u5", "u6"],
            "item_id": ["A", "C", "B", "B", "A", "C", "A"],
            "rating": np.full(7, 4.0, np.float32),
            "timestamp": np.arange(7, dtype=np.int64)}),
        users=pd.DataFrame({"user_id": USER_IDS, "gender": ["F", "M", "F", "F", "M", "M"],
                            "age": ["25-34", "25-34", "=cmd", "35-44", "35-44", "25-34"]}),
        items=pd.DataFrame({"item_id": ["A", "B", "C"], "title": [HYPERLINK, "Normal", "+Plus"],
                            "genres": [["Drama", "Romance"], ["Comedy"], ["Drama"]]}),
        format="ml-100k", name="tiny")


def make_tiny_store(url: str) -> tuple[Store, int]:
    """A store holding the six-user dataset and one succeeded run over it."""
    store = Store(url)
    did = store.add_dataset(tiny_dataset())
    rid = store.create_run(did, {"epochs": 1}, preset="default", objective="pointwise",
                           protocol="T")
    store.finish_run(rid, summary={"test_auc": 0.5}, weights=b"w", encoders={},
                     user_ids=USER_IDS, user_vectors=USER_VECS, item_ids=["A", "B", "C"],
                     item_vectors=ITEM_VECS)
    return store, rid


@pytest.fixture()
def run(tmp_path: Path) -> aud.LoadedRun:
    store, rid = make_tiny_store(f"sqlite:///{tmp_path / 'a.db'}")
    loaded = aud.load_run(store, rid)
    store.dispose()
    return loaded


def build(run: aud.LoadedRun, **kw) -> aud.AudienceResult:
    return aud.build_audience(run, AudienceRequest(**kw))


# ----------------------------------------------------------------------------- the index
def test_index_top_k_equals_brute_force_argsort() -> None:
    rng = np.random.default_rng(0)
    n, d, k = 3_000, 16, 50
    m = rng.standard_normal((n, d)).astype(np.float32)
    ids = np.array([f"id{i}" for i in range(n)])
    q = rng.standard_normal((3, d)).astype(np.float32)
    index = UserIndex(block_rows=256).index(m, ids)           # 12 blocks, thresholds kick in
    scores, got = index.query(q, k)
    mn = m / np.linalg.norm(m, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    brute = mn @ qn.T                                          # (N, Q)
    for j in range(3):
        order = np.argsort(-brute[:, j], kind="stable")[:k]
        assert got[j].tolist() == ids[order].tolist()
        np.testing.assert_allclose(scores[j], brute[order, j], rtol=1e-5, atol=1e-6)
    # with a mask of allowed rows
    allowed = rng.random(n) < 0.3
    s1, r1 = index.query_rows(q[0], k, allowed=allowed)
    order = np.flatnonzero(allowed)[np.argsort(-brute[allowed, 0], kind="stable")[:k]]
    assert r1[0].tolist() == order.tolist()
    # one big block: the first cut-off comes from the k-th best of the first 16 * k rows
    whole = UserIndex().index(m, ids)
    assert whole.query_rows(q[1], k)[1][0].tolist() == \
        np.argsort(-brute[:, 1], kind="stable")[:k].tolist()
    _, r2 = whole.query_rows(q[2], k, allowed=allowed)
    assert r2[0].tolist() == \
        np.flatnonzero(allowed)[np.argsort(-brute[allowed, 2], kind="stable")[:k]].tolist()


def test_index_hand_worked_scores_ties_and_clamp() -> None:
    index = UserIndex(block_rows=2).index(USER_VECS * 3, USER_IDS)   # rows are renormalised
    np.testing.assert_allclose(index.scores([2, 0]), [1, .8, .6, 0, -1, .8], atol=1e-6)
    scores, ids = index.query(np.array([1, 0]), k=3)
    assert ids.tolist() == [["u1", "u2", "u6"]]                       # tie: earlier user first
    np.testing.assert_allclose(scores, [[1, .8, .8]], atol=1e-6)
    scores, ids = index.query([[0, 1]], k=100)                        # k > N: clamped to N
    assert ids.shape == (1, 6) and ids[0].tolist() == ["u4", "u3", "u2", "u1", "u5", "u6"]
    assert index.positions(["u4", "u1"]).tolist() == [3, 0]
    assert index.positions(["u4", "zz"], missing="ignore").tolist() == [3]


def test_index_loud_errors() -> None:
    with pytest.raises(ValueError, match="call index"):
        UserIndex().query([1, 0], 1)
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        UserIndex(block_rows=0)
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        UserIndex().index(np.ones((3, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="not unique: \\['a'\\]"):
        UserIndex().index(np.ones((2, 2)), ["a", "a"])
    with pytest.raises(ValueError, match="length zero.*\\['b'\\]"):
        UserIndex().index(np.array([[1, 0], [0, 0]]), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        UserIndex().index(np.array([[1, np.nan]]), ["a"])
    index = UserIndex().index(USER_VECS, USER_IDS)
    with pytest.raises(ValueError, match="must be \\(Q, 2\\)"):
        index.query([1, 0, 0], 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.query([1, 0], 0)
    with pytest.raises(ValueError, match="query vector has length zero"):
        index.query([0, 0], 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.query([np.nan, 1], 1)
    with pytest.raises(ValueError, match="unknown user ids: 'nobody'"):
        index.positions(["u1", "nobody"])


# ----------------------------------------------------------------------------- item audiences
def test_top_n_for_one_item_hand_worked(run: aud.LoadedRun) -> None:
    r = build(run, items=["A"], top_n=3)
    m = r.members
    assert m["rank"].tolist() == [1, 2, 3]
    assert m["user_id"].tolist() == ["u1", "u2", "u6"]
    np.testing.assert_allclose(m["score"], [1.0, .8, .8], atol=1e-6)
    # percentile = share of all 6 users scoring at most the member's score
    np.testing.assert_allclose(m["percentile"], [100.0, 500 / 6, 500 / 6])
    assert m["gender"].tolist() == ["F", "M", "M"]
    assert m["favourite genre"].tolist() == ["Drama", "Comedy", "Drama"]
    assert (r.population, r.eligible, r.requested, r.size) == (6, 6, 3, 3)
    assert r.threshold == pytest.approx(0.8)
    assert r.item_ids == ("A",) and r.item_titles == (HYPERLINK,)
    assert r.warnings == []


def test_campaign_of_items_uses_renormalised_mean(run: aud.LoadedRun) -> None:
    r = build(run, items=["A", "B"], top_n=2)
    assert r.members["user_id"].tolist() == ["u2", "u3"]
    np.testing.assert_allclose(r.members["score"], [1.4 / np.sqrt(2)] * 2, atol=1e-6)
    # C is stored as (-3, 0): normalised it is (-1, 0), so A + C cancel out
    with pytest.raises(ValueError, match="cancel out"):
        build(run, items=["A", "C"], top_n=2)


def test_exclusions_and_filters(run: aud.LoadedRun) -> None:
    r = build(run, items=["A"], top_n=3, exclude_seen=True)          # u1, u4, u6 saw A
    assert r.members["user_id"].tolist() == ["u2", "u3", "u5"]
    assert r.excluded == {"already interacted": 3} and r.eligible == 3
    r = build(run, items=["A"], top_n=3, exclude_users=["u2", "ghost"])
    assert r.members["user_id"].tolist() == ["u1", "u6", "u3"]
    assert r.excluded == {"exclusion list": 1}
    assert r.warnings == ["1 ids of the exclusion list are not users of this run"]
    r = build(run, items=["A"], top_n=3, exclude_users=["u2", "u2", "ghost"])   # repeated id
    assert r.warnings == ["1 ids of the exclusion list are not users of this run"]
    r = build(run, items=["A"], top_n=3, where={"gender": ["F"]})
    assert r.members["user_id"].tolist() == ["u1", "u3", "u4"]
    r = build(run, items=["A"], top_n=5, where={"gender": "M", "age": ["25-34"]})
    assert r.members["user_id"].tolist() == ["u2", "u6"]               # clamped, warned
    assert r.excluded == {"attribute filters": 4}
    assert r.warnings == ["Asked for 5 users but only 2 are eligible (of 6); the audience has 2"]
    r = build(run, items=["B"], top_n=6, where={"favourite genre": ["Drama"]})
    assert r.members["user_id"].tolist() == ["u1", "u5", "u6"]          # B: 0, 0, -.6
    with pytest.raises(ValueError, match="unknown user attribute 'income'; known: gender, age"):
        build(run, items=["A"], top_n=3, where={"income": ["high"]})
    with pytest.raises(ValueError, match="No user is left"):
        build(run, items=["A"], top_n=3, exclude_seen=True, where={"gender": ["none"]})


def test_sizes_by_n_or_percent_and_clamping(run: aud.LoadedRun) -> None:
    assert build(run, items=["A"], percent=50).size == 3
    assert build(run, items=["A"], percent=1).size == 1                 # at least one user
    r = build(run, items=["A"], top_n=10)                               # more than everyone
    assert r.size == 6 and r.requested == 10
    assert r.members["user_id"].tolist() == ["u1", "u2", "u6", "u3", "u4", "u5"]
    assert r.warnings[0] == "Asked for 10 users but only 6 are eligible (of 6); the audience has 6"
    assert r.n_below_zero == 1 and r.warnings[1].startswith("The last 1 of the 6 members score "
                                                             "below 0")
    assert aud.audience_size(AudienceRequest(items=["A"], percent=12.5), 1000) == 125


def test_unknown_ids_and_bad_requests_are_named(run: aud.LoadedRun) -> None:
    with pytest.raises(ValueError, match="unknown item ids in run 1: 'zzz', 'yyy'"):
        build(run, items=["A", "zzz", "yyy"], top_n=3)
    with pytest.raises(ValueError, match="unknown user ids: 'nobody'"):
        build(run, seed_users=["u1", "nobody"], top_n=3)
    with pytest.raises(ValueError, match="non-empty list of seed users"):
        AudienceRequest(seed_users=[], top_n=3)
    with pytest.raises(ValueError, match="non-empty list of seed users"):
        AudienceRequest(seed_users=["", "  "], top_n=3)
    with pytest.raises(ValueError, match="not both"):
        AudienceRequest(items=["A"], seed_users=["u1"], top_n=3)
    with pytest.raises(ValueError, match="exactly one"):
        AudienceRequest(items=["A"], top_n=3, percent=5)
    with pytest.raises(ValueError, match="top_n must be a whole number >= 1"):
        AudienceRequest(items=["A"], top_n=0)
    with pytest.raises(ValueError, match="percent must be in \\(0, 100\\]"):
        AudienceRequest(items=["A"], percent=150)


# ----------------------------------------------------------------------------- lookalikes
def test_lookalike_excludes_seeds_hand_worked(run: aud.LoadedRun) -> None:
    r = build(run, seed_users=["u1", "u4", "u1"], top_n=3)             # centroid (1, 1)/sqrt 2
    assert r.members["user_id"].tolist() == ["u2", "u3", "u6"]
    np.testing.assert_allclose(r.members["score"],
                               [1.4 / np.sqrt(2), 1.4 / np.sqrt(2), 0.2 / np.sqrt(2)],
                               atol=1e-6)
    assert r.excluded == {"seed users": 2}
    r = build(run, seed_users=["u1", "u4"], top_n=50)
    assert r.size == 4 and "only 4 are eligible" in r.warnings[0]
    with pytest.raises(ValueError, match="cancel out"):
        build(run, seed_users=["u1", "u5"], top_n=2)


# ----------------------------------------------------------------------- insights, reach, overlap
def test_insights_share_and_index(run: aud.LoadedRun) -> None:
    ins = build(run, items=["A"], top_n=3).insights
    sums = ins.groupby("attribute")["audience_share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 100.0)
    np.testing.assert_allclose(ins.groupby("attribute")["population_share"].sum(), 100.0)
    g = ins[ins["attribute"] == "gender"].set_index("value")
    assert g.loc["M", "audience_count"] == 2 and g.loc["F", "audience_count"] == 1
    np.testing.assert_allclose(g.loc["M", ["audience_share", "population_share", "index"]]
                               .astype(float), [200 / 3, 50.0, 400 / 3])
    np.testing.assert_allclose(g.loc["F", "index"], 200 / 3)
    fav = ins[ins["attribute"] == "favourite genre"].set_index("value")
    np.testing.assert_allclose(fav.loc["Drama", ["audience_share", "index"]].astype(float),
                               [200 / 3, 400 / 3])                     # pop: u1 u5 u6 = 50%
    assert fav.loc["(no history)", "population_count"] == 1 and \
        fav.loc["(no history)", "audience_count"] == 0
    assert set(ins["attribute"]) == {"gender", "age", "favourite genre"}


def test_insights_bands_numeric_and_pools_rare_values() -> None:
    n = 100
    attrs = pd.DataFrame({"age": np.arange(n), "city": [f"c{i % 30}" for i in range(n)]})
    ins = aud.insights(np.arange(10), attrs)
    age = ins[ins["attribute"] == "age"]
    assert len(age) == 5 and age["population_count"].sum() == n
    assert age.iloc[0]["value"] == "0-19.8" and age.iloc[0]["audience_share"] == 100.0
    city = ins[ins["attribute"] == "city"]
    # 30 cities > MAX_CATEGORIES: the audience's 10 cities are kept, the other 20 pooled
    assert sorted(city["value"]) == sorted([f"c{i}" for i in range(10)] + ["(other)"])
    other = city.set_index("value").loc["(other)"]
    assert (other["audience_share"], other["population_share"]) == (0.0, 60.0)
    np.testing.assert_allclose(city["audience_share"].sum(), 100.0)
    np.testing.assert_allclose(city["population_share"].sum(), 100.0)


def test_reach_curve_hand_worked(run: aud.LoadedRun) -> None:
    reach = build(run, items=["A"], top_n=1).reach
    np.testing.assert_allclose(reach["threshold"], [1.0, .8, .6, -1.0], atol=1e-6)
    assert reach["size"].tolist() == [1, 3, 4, 6]
    np.testing.assert_allclose(reach["percent_of_population"], [100 / 6, 50, 400 / 6, 100])
    reach = build(run, items=["A"], top_n=1, exclude_seen=True).reach   # eligible: u2 u3 u5
    assert reach["size"].tolist() == [1, 2, 3]


def test_overlap_counts_and_jaccard() -> None:
    assert aud.overlap(["1", "2", "3"], [2, 3, 4]) == {
        "size_a": 3, "size_b": 3, "common": 2, "only_a": 1, "only_b": 1, "jaccard": 0.5}
    assert aud.overlap([], [])["jaccard"] == 0.0


def test_saved_audience_round_trip_and_overlap(tmp_path: Path) -> None:
    store, rid = make_tiny_store(f"sqlite:///{tmp_path / 's.db'}")
    loaded = aud.load_run(store)                                        # newest succeeded
    r1 = build(loaded, items=["A"], top_n=3)
    r2 = build(loaded, items=["B"], top_n=3)                            # u4 u3 u2
    a = store.save_audience(rid, "A fans", r1.definition(), r1.members)
    b = store.save_audience(rid, "B fans", r2.definition(), r2.members)
    assert store.load_audience(a)["definition"]["items"] == ["A"]
    req = AudienceRequest.from_dict(store.load_audience(a)["definition"])
    assert req == AudienceRequest(items=["A"], top_n=3)
    assert aud.overlap_saved(store, a, b) == {"size_a": 3, "size_b": 3, "common": 1,
                                              "only_a": 2, "only_b": 2, "jaccard": 0.2}
    store.dispose()


def test_load_run_needs_a_succeeded_run(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'e.db'}")
    with pytest.raises(ValueError, match="no succeeded run"):
        aud.load_run(store)
    did = store.add_dataset(tiny_dataset())
    rid = store.create_run(did, {})
    with pytest.raises(ValueError, match=f"run {rid} is queued"):
        aud.load_run(store, rid)
    store.dispose()


# ----------------------------------------------------------------------------- export
def test_csv_columns_and_formula_escaping(run: aud.LoadedRun) -> None:
    r = build(run, items=["A", "B"], top_n=2)                            # u2, u3 (age "=cmd")
    rows = list(csv.reader(io.StringIO(r.to_csv_bytes().decode("utf-8"), newline="")))
    assert rows[0] == ["rank", "user_id", "score", "percentile", "gender", "age",
                       "favourite genre", "run_id", "item_ids", "item_titles"]
    assert rows[1][:2] == ["1", "u2"] and rows[2][:2] == ["2", "u3"]
    assert float(rows[1][2]) == pytest.approx(1.4 / np.sqrt(2), abs=1e-6)
    assert rows[1][3] == "100.000"
    assert rows[2][5] == "'=cmd"                                         # attribute escaped
    assert rows[1][7:] == ["1", "A; B", "'" + HYPERLINK + "; Normal"]    # title escaped
    assert len(rows) == 3


def test_to_csv_escapes_every_formula_start() -> None:
    members = pd.DataFrame({
        "rank": [1, 2, 3], "user_id": ["-5", "@me", "ok"], "score": [-0.5, 0.25, 0.0],
        "percentile": [100.0, 50.0, 0.0], "note": ["+1", "\tTAB", "\rCR"],
        "delta": [-3, 4, None], "tags": [["=a", "b"], [], ["c"]]})
    out = aud.to_csv_bytes(members, run_id=7, item_ids=["-x"], item_titles=["@t"])
    assert out.startswith(b"rank,user_id,score,percentile,") and b"\r\n1," in out
    rows = list(csv.reader(io.StringIO(out.decode("utf-8"), newline="")))
    assert rows[0] == ["rank", "user_id", "score", "percentile", "note", "delta", "tags",
                       "run_id", "item_ids", "item_titles"]
    assert rows[1] == ["1", "'-5", "-0.500000", "100.000", "'+1", "-3.0", "'=a|b", "7",
                       "'-x", "'@t"]
    assert rows[2][1] == "'@me" and rows[2][4] == "'\tTAB" and rows[2][6] == ""
    assert rows[3][4] == "'\rCR" and rows[3][5] == ""
    with pytest.raises(ValueError, match="lack columns: percentile"):
        aud.to_csv_bytes(members.drop(columns="percentile"), run_id=1)


def test_read_user_ids_from_lists_and_exports() -> None:
    assert aud.read_user_ids(b"# seeds\nu1\n\n u2 \nu1\n") == ["u1", "u2"]
    exported = b"rank,user_id,score\n1,'-5,0.9\n2,u7,0.8\n"
    assert aud.read_user_ids(exported) == ["-5", "u7"]
    assert aud.read_user_ids("\ufeffuser_id\n'=x\n") == ["=x"]
    assert aud.read_user_ids(b"") == []


# ----------------------------------------------------------------------------- on a trained run
@pytest.mark.slow
def test_audience_on_a_really_trained_run(tmp_path: Path, tiny_synthetic) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from dssm_core import pipeline
    from dssm_core.config import preset

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    did = store.add_dataset(tiny_synthetic)
    cfg = preset("default", epochs=1, batch_size=256, embedding_dim=8, user_hidden=(16,),
                 item_hidden=(16,), history_len=10)
    rid = pipeline.run_training(store, did, cfg, project=False)
    genre = store.load_run_table(rid, "genre")               # audiences read codes, not ids
    assert genre is not None and len(genre) == len(store.load_embeddings(rid, "user")[0])
    item = "1"
    r = aud.audience_for(store, None, AudienceRequest(items=[item], top_n=20, exclude_seen=True))
    assert r.run_id == rid and r.size == 20
    seen = set(tiny_synthetic.interactions.loc[
        tiny_synthetic.interactions["item_id"] == item, "user_id"])
    assert seen and not (set(r.members["user_id"]) & seen)
    # the same members as a brute-force search over the stored vectors
    uids, uvec = store.load_embeddings(rid, "user")
    iids, ivec = store.load_embeddings(rid, "item")
    q = ivec[list(iids).index(item)]
    scores = (uvec / np.linalg.norm(uvec, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    ok = ~np.isin(uids, list(seen))
    order = np.flatnonzero(ok)[np.argsort(-scores[ok], kind="stable")[:20]]
    assert r.members["user_id"].tolist() == uids[order].tolist()
    np.testing.assert_allclose(r.members["score"], scores[order], atol=1e-5)
    store.dispose()


def test_postal_codes_get_an_area_that_insights_can_show() -> None:
    from dssm_core.audience import insights, with_postal_areas

    rng = np.random.default_rng(0)
    zips = np.array([f"{rng.integers(0, 10)}{rng.integers(0, 10_000):04d}" for _ in range(300)],
                    dtype=object)
    zips[:3] = ["t2n 1a4", None, ""]               # a Canadian code, missing, empty
    users = pd.DataFrame({"zip": zips, "gender": rng.choice(["F", "M"], 300)},
                         index=pd.Index([f"u{i}" for i in range(300)]))
    out = with_postal_areas(users)
    assert list(out.columns) == ["zip", "gender", "zip area"]
    assert "zip area" not in users.columns                        # the input is not changed
    assert out["zip area"].iloc[0] == "T"
    assert pd.isna(out["zip area"].iloc[1]) and pd.isna(out["zip area"].iloc[2])
    assert out["zip area"].iloc[3] == str(zips[3])[0]
    ins = insights(np.arange(50), out)
    # the raw zips are id-like and left out; their areas are shown, shares summing to 100 %
    assert set(ins["attribute"]) == {"gender", "zip area"}
    area = ins[ins["attribute"] == "zip area"]
    assert area["audience_share"].sum() == pytest.approx(100.0)
    # few distinct codes (or a column not named like a postal code): nothing added
    few = pd.DataFrame({"zip": ["1", "2"] * 10, "code": [f"{i:05d}" for i in range(20)]})
    assert list(with_postal_areas(few).columns) == ["zip", "code"]


# ----------------------------------------------------------------- honest sizes (issue 14 item 1)
def test_percentile_is_within_the_eligible_pool_and_negatives_are_said(
        run: aud.LoadedRun) -> None:
    # A scores u1 1, u2 .8, u3 .6, u4 0, u5 -1, u6 .8; u1, u4, u6 saw A: the pool is u2 u3 u5
    r = build(run, items=["A"], top_n=3, exclude_seen=True)
    assert r.members["user_id"].tolist() == ["u2", "u3", "u5"] and r.eligible == 3
    np.testing.assert_allclose(r.members["percentile"], [100.0, 200 / 3, 100 / 3])
    assert r.n_below_zero == 1
    assert r.warnings == ["The last 1 of the 3 members score below 0: their taste leans away "
                          "from the query, they only fill the list. Set a similarity floor of 0 "
                          "to leave them out"]
    # a floor of 0 leaves u5 out, says why, and the audience is clamped to the 2 left
    r = build(run, items=["A"], top_n=3, exclude_seen=True, min_score=0.0)
    assert r.members["user_id"].tolist() == ["u2", "u3"] and r.n_below_zero == 0
    assert r.excluded == {"already interacted": 3, "similarity below 0": 1}
    np.testing.assert_allclose(r.members["percentile"], [100.0, 50.0])
    assert r.warnings == ["Asked for 3 users but only 2 are eligible (of 6); the audience has 2"]
    with pytest.raises(ValueError, match="min_score is a cosine"):
        AudienceRequest(items=["A"], top_n=3, min_score=2)


def test_seen_counts_and_range_filters(run: aud.LoadedRun) -> None:
    assert aud.seen_count(run, ["A"]) == 3                    # u1 u4 u6
    assert aud.seen_count(run, ["A", "B"]) == 4               # + u2 (u4 saw both)
    assert aud.seen_count(run, []) == 0
    import dataclasses
    rich = dataclasses.replace(run, users=run.users.assign(
        income=[10.0, 20.0, 30.0, 40.0, 50.0, np.nan]))
    r = aud.build_audience(rich, AudienceRequest(items=["A"], top_n=6,
                                                 ranges={"income": (20, 40)}))
    assert r.members["user_id"].tolist() == ["u2", "u3", "u4"]          # .8, .6, 0
    assert r.excluded == {"attribute filters": 3}                       # u6: no income
    with pytest.raises(ValueError, match="'gender' is not numeric"):
        aud.build_audience(rich, AudienceRequest(items=["A"], top_n=2, ranges={"gender": (0, 1)}))
    with pytest.raises(ValueError, match="low <= high"):
        AudienceRequest(items=["A"], top_n=2, ranges={"income": (5, 1)})
    req = AudienceRequest(items=["A"], top_n=2, ranges={"income": (20, 40)}, min_score=0.1)
    assert AudienceRequest.from_dict(req.to_dict()) == req
    opts = aud.filter_options(rich, max_values=3)
    assert opts.values == {"gender": ["F", "M"], "age": ["25-34", "35-44", "=cmd"],
                           "favourite genre": ["(no history)", "Comedy", "Drama"]}
    assert opts.ranges == {"income": (10, 50)}


def test_saved_name_follows_the_actual_size(run: aud.LoadedRun) -> None:
    r = build(run, items=["A"], top_n=50, exclude_seen=True)            # 3 eligible
    assert r.default_name() == f"{HYPERLINK} – top 3"
    assert build(run, items=["B", "A"], top_n=2).default_name() == "Normal + 1 more – top 2"
    assert build(run, seed_users=["u1", "u4"], top_n=9).default_name() == \
        "Lookalike of 2 users – top 4"


def test_item_catalogue_and_search(run: aud.LoadedRun) -> None:
    cat = aud.item_catalogue(run)
    assert cat["item_id"].tolist() == ["A", "B", "C"]                   # 3, 2, 2 users
    assert cat["users"].tolist() == [3, 2, 2]
    assert cat["genres"].tolist() == [["Drama", "Romance"], ["Comedy"], ["Drama"]]
    assert cat["year"].isna().all() and aud.catalogue_years(cat) is None
    assert aud.catalogue_genres(cat) == ["Comedy", "Drama", "Romance"]
    assert aud.search_items(cat, "norm")["item_id"].tolist() == ["B"]
    assert aud.search_items(cat, "B")["item_id"].tolist() == ["B"]     # an id
    assert aud.search_items(cat, "plus")["item_id"].tolist() == ["C"]
    assert aud.search_items(cat, genres=["Drama"])["item_id"].tolist() == ["A", "C"]
    cat["year"] = pd.array([1977, 1995, pd.NA], dtype="Int64")
    assert aud.catalogue_years(cat) == (1977, 1995)
    assert aud.search_items(cat, years=(1990, 2000))["item_id"].tolist() == ["B"]


def test_selection_audience_ranks_by_the_centroid(run: aud.LoadedRun) -> None:
    # u2 (.8, .6), u4 (0, 1), u5 (-1, 0): centroid direction (-.2, 1.6) / sqrt(2.6)
    m = aud.selection_audience(run, ["u2", "u5", "u4", "u2"])
    assert m["user_id"].tolist() == ["u4", "u2", "u5"] and m["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(m["score"], np.array([1.6, .8, .2]) / np.sqrt(2.6), atol=1e-6)
    with pytest.raises(ValueError, match="unknown user ids: 'zz'"):
        aud.selection_audience(run, ["u1", "zz"])
    with pytest.raises(ValueError, match="no users"):
        aud.selection_audience(run, [])


def test_insights_mark_small_groups_with_an_interval() -> None:
    attrs = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5})
    ins = aud.insights(np.arange(4), attrs, min_group=3).set_index("value")   # 4 members, all "a"
    z2 = 1.959964 ** 2
    assert ins.loc["a", "index"] == pytest.approx(200.0) and not ins.loc["a", "small"]
    # Wilson at p = 1, n = 4: [1 / (1 + z²/4), 1]; at p = 0: [0, (z²/4) / (1 + z²/4)]
    assert ins.loc["a", "index_low"] == pytest.approx(200.0 / (1 + z2 / 4))
    assert ins.loc["a", "index_high"] == pytest.approx(200.0)
    assert ins.loc["b", "index"] == 0.0 and bool(ins.loc["b", "small"])
    assert ins.loc["b", "index_high"] == pytest.approx(200.0 * (z2 / 4) / (1 + z2 / 4))


def test_map_frame_of_users_and_items(run: aud.LoadedRun) -> None:
    users = aud.map_frame(run, ["u3", "u1"], "user")
    assert users.index.tolist() == ["u3", "u1"]
    assert users["gender"].tolist() == ["F", "F"]
    assert users["favourite genre"].tolist() == ["(no history)", "Drama"]
    items = aud.map_frame(run, ["C", "B"], "item")
    assert items["title"].tolist() == ["+Plus", "Normal"]
    assert items["first genre"].tolist() == ["Drama", "Comedy"]
    with pytest.raises(ValueError, match="kind must be"):
        aud.map_frame(run, ["u1"], "group")


# ----------------------------------------------------------------------------- lazy columns
FAVOURITES = ["Drama", "Comedy", "(no history)", "Comedy", "Drama", "Drama"]
# u1: A, C -> Drama 2, Romance 1; u4: B, A -> Comedy, Drama, Romance once each: alphabetical
# first; u6: A -> Drama and Romance tie: Drama


def test_opening_a_run_reads_vectors_only_and_columns_on_first_need(tmp_path: Path) -> None:
    store, rid = make_tiny_store(f"sqlite:///{tmp_path / 'a.db'}")
    run = aud.load_run(store, rid)
    assert run.source._frames == {}                        # no user table, no interactions
    assert run.index.ids_.tolist() == USER_IDS and run.index._lookup is None
    np.testing.assert_allclose(run.index.columns_, USER_VECS.T, atol=1e-7)
    r = build(run, items=["A"], top_n=2)
    assert r.members["user_id"].tolist() == ["u1", "u2"]
    assert sorted(run.source._frames) == ["pairs"]       # the user table is not kept
    assert run.favourite_genre.tolist() == FAVOURITES
    store.dispose()


def shuffled_categorical_dataset() -> Dataset:
    """The six users' dataset with its user table shuffled, u4 missing from it, u9 (not in
    the run) added, and every text column categorical."""
    ds = tiny_dataset()
    users = ds.users.iloc[[4, 0, 2, 1, 5]].reset_index(drop=True)      # u4 missing
    users.loc[len(users)] = ["u9", "F", "25-34"]                          # not in the run
    return Dataset(
        interactions=ds.interactions.astype({"user_id": "category", "item_id": "category"}),
        users=users.astype("category"), items=ds.items, format="ml-100k", name="cat")


def test_lazily_loaded_columns_give_the_audience_and_insights_of_eager_ones(
        tmp_path: Path) -> None:
    """The stored run read lazily (user table shuffled, one user missing from it, one
    extra, every text column categorical) equals the run built from the whole dataset."""
    ds = tiny_dataset()
    cat = shuffled_categorical_dataset()
    users = cat.users.astype(object)
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    did = store.add_dataset(cat)
    rid = store.create_run(did, {})
    store.finish_run(rid, summary={}, weights=b"w", encoders={}, user_ids=USER_IDS,
                     user_vectors=USER_VECS, item_ids=["A", "B", "C"], item_vectors=ITEM_VECS)
    lazy = aud.load_run(store, rid)
    plain = Dataset(interactions=ds.interactions, users=users.astype(str), items=ds.items,
                    format="ml-100k", name="plain")
    eager = aud.run_from_parts(rid, did, USER_IDS, USER_VECS, ["A", "B", "C"], ITEM_VECS,
                               plain)
    assert lazy.favourite_genre.tolist() == eager.favourite_genre.tolist() == FAVOURITES
    assert lazy.users["gender"].astype(object).tolist() == ["F", "M", "F", np.nan, "M", "M"]
    for req in (dict(items=["A"], top_n=6), dict(items=["B"], percent=50, exclude_seen=True),
                dict(seed_users=["u2"], top_n=3, where={"gender": ["M", "F"]})):
        a, b = build(lazy, **req), build(eager, **req)
        assert a.members["user_id"].tolist() == b.members["user_id"].tolist()
        assert a.members["gender"].astype(object).fillna("-").tolist() \
            == b.members["gender"].astype(object).fillna("-").tolist()
        pd.testing.assert_frame_equal(a.insights, b.insights)
    ins = build(lazy, items=["A"], top_n=6).insights.set_index(["attribute", "value"])
    assert ins.loc[("gender", "(missing)"), "audience_count"] == 1            # u4
    assert ins.loc[("favourite genre", "Drama"), "population_count"] == 3
    store.dispose()


def test_favourite_genres_hand_worked_with_codes() -> None:
    ds = tiny_dataset()
    items = pd.concat([ds.items, pd.DataFrame({"item_id": ["A"], "title": ["dup"],
                                               "genres": [["Western"]]})])  # first A wins
    got = aud.favourite_genres(ds.interactions, items, np.array(USER_IDS))
    assert got.tolist() == FAVOURITES
    inter = ds.interactions.astype({"user_id": "category", "item_id": "category"})
    assert aud.favourite_genres(inter, items, np.array(USER_IDS)).tolist() == FAVOURITES
    assert aud.favourite_genres(inter.iloc[:0], items, np.array(USER_IDS)).tolist() \
        == ["(no history)"] * 6


# ----------------------------------------------------------------------------- run tables
def test_run_tables_hand_worked() -> None:
    """Codes in the run's row order: users u1..u6 = rows 0..5, items A, B, C = rows 0, 1, 2.
    u9 (no vector) saw A, u1 saw A twice: A's catalogue count is 4 users (u1, u4, u6, u9),
    its seen pairs only the run's users."""
    ds = tiny_dataset()
    extra = pd.DataFrame({"user_id": ["u9", "u1"], "item_id": ["A", "A"],
                          "rating": np.full(2, 4.0, np.float32),
                          "timestamp": np.array([7, 8], dtype=np.int64)})
    ds.interactions = pd.concat([ds.interactions, extra], ignore_index=True)
    for inter in (ds.interactions, ds.interactions.astype({"user_id": "category",
                                                           "item_id": "category"})):
        t = aud.run_tables(Dataset(interactions=inter, users=ds.users, items=ds.items,
                                   format="ml-100k", name="t"), USER_IDS, ["A", "B", "C"])
        assert sorted(t) == sorted(aud.RUN_TABLES)
        assert t["users"].columns.tolist() == ["gender", "age"]
        assert t["users"]["age"].tolist() == ["25-34", "25-34", "=cmd", "35-44", "35-44",
                                              "25-34"]
        assert t["genre"]["favourite_genre"].astype(object).tolist() == FAVOURITES
        assert list(zip(t["seen"]["item_row"], t["seen"]["user_row"])) == [
            (0, 0), (0, 3), (0, 5), (1, 1), (1, 3), (2, 0), (2, 4)]
        assert t["seen"].dtypes.tolist() == [np.int32, np.int32]
        assert t["items"]["users"].tolist() == [4, 2, 2]
    # run items in another order, one item the dataset never saw: rows follow the run
    t = aud.run_tables(tiny_dataset(), USER_IDS[::-1], ["C", "Z", "A"])
    assert list(zip(t["seen"]["item_row"], t["seen"]["user_row"])) == [
        (0, 1), (0, 5), (2, 0), (2, 2), (2, 5)]
    assert t["items"]["users"].tolist() == [2, 0, 3]
    assert t["genre"]["favourite_genre"].astype(object).tolist() == FAVOURITES[::-1]


def test_factorize_of_categoricals_renumbers_codes_as_pandas_does() -> None:
    col = pd.Series(pd.Categorical(["b", "a", None, "b", "c"], categories=["z", "a", "b", "c"]))
    codes, uniques = aud._factorize(col)
    assert codes.tolist() == [0, 1, -1, 0, 2] and uniques == ["b", "a", "c"]   # "z" unused
    want_codes, want_uniques = pd.factorize(col)
    assert codes.tolist() == want_codes.tolist() and uniques == list(want_uniques)
    codes, uniques = aud._factorize(pd.Series(["x", None, "y", "x"], dtype=object))
    assert codes.tolist() == [0, -1, 1, 0] and uniques == ["x", "y"]


def _same_audiences(a_run: aud.LoadedRun, b_run: aud.LoadedRun, requests: list[dict]) -> None:
    """Every request gives the same members (ids, scores, attributes), insights, reach and
    CSV on both runs."""
    for req in requests:
        a, b = build(a_run, **req), build(b_run, **req)
        pd.testing.assert_frame_equal(a.members, b.members)
        pd.testing.assert_frame_equal(a.insights, b.insights)
        pd.testing.assert_frame_equal(a.reach, b.reach)
        assert (a.excluded, a.warnings) == (b.excluded, b.warnings)
        assert a.to_csv_bytes() == b.to_csv_bytes()


def test_stored_run_tables_give_the_audiences_of_the_dataset_tables(
        tmp_path: Path, monkeypatch) -> None:
    """A run stored with its tables (user table shuffled, u4 missing from it, u9 extra, text
    as categoricals) gives, without reading the dataset's users or interactions, what the
    same run gives from them (``use_run_tables=False``, as runs before schema 5)."""
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    did = store.add_dataset(shuffled_categorical_dataset())
    rid = store.create_run(did, {})
    stored = store.load_dataset(did)
    store.finish_run(rid, summary={}, weights=b"w", encoders={}, user_ids=USER_IDS,
                     user_vectors=USER_VECS, item_ids=["A", "B", "C"], item_vectors=ITEM_VECS,
                     run_tables=aud.run_tables(stored, USER_IDS, ["A", "B", "C"]))
    old = aud.load_run(store, rid, use_run_tables=False)
    assert (len(old.users), len(old.seen), len(old.favourite_genre)) == (6, 7, 6)  # read now
    new = aud.load_run(store, rid)

    def no_dataset_table(*args, **kwargs):
        raise AssertionError("the dataset's users or interactions were read")

    monkeypatch.setattr(store, "load_dataset_table", no_dataset_table)
    _same_audiences(new, old, [
        dict(items=["A"], top_n=6), dict(items=["B"], percent=50, exclude_seen=True),
        dict(items=["A", "B"], top_n=4, exclude_seen=True, where={"favourite genre": ["Drama"]}),
        dict(seed_users=["u2"], top_n=3, where={"gender": ["M", "F"]})])
    assert new.favourite_genre.tolist() == FAVOURITES
    assert new.users["gender"].astype(object).tolist() == ["F", "M", "F", np.nan, "M", "M"]
    assert aud.seen_mask(new, ["A", "B"]).tolist() == [True, True, False, True, False, True]
    assert aud.seen_count(new, ["C", "nope"]) == 2                               # u1, u5
    pd.testing.assert_frame_equal(aud.item_catalogue(new), aud.item_catalogue(old))
    assert aud.item_catalogue(new)["users"].tolist() == [3, 2, 2]                 # A, B, C
    assert aud.filter_options(new) == aud.filter_options(old)
    pd.testing.assert_frame_equal(aud.map_frame(new, ["u4", "u1"], "user"),
                                  aud.map_frame(old, ["u4", "u1"], "user"))
    assert sorted(new.seen.itertuples(index=False)) == sorted(
        old.seen.astype(str).drop_duplicates().itertuples(index=False))
    store.dispose()


def test_run_tables_on_ml100k_give_the_same_audiences(tmp_path: Path, ml100k_dir: Path) -> None:
    """ML-100K (943 users with zip codes, 19 genres) with random unit vectors: the run read
    through its tables gives the same ids, scores, insights and CSV as through the dataset."""
    from dssm_core import movielens

    ds = movielens.load(ml100k_dir)
    rng = np.random.default_rng(7)
    uids = np.array(sorted(ds.users["user_id"].astype(str)))[::-1]         # not the table's
    iids = np.array(ds.items["item_id"].astype(str))
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    did = store.add_dataset(ds)
    rid = store.create_run(did, {})
    store.finish_run(rid, summary={}, weights=b"", encoders={}, user_ids=uids,
                     user_vectors=rng.standard_normal((len(uids), 8)), item_ids=iids,
                     item_vectors=rng.standard_normal((len(iids), 8)),
                     run_tables=aud.run_tables(store.load_dataset(did), uids, iids))
    new, old = aud.load_run(store, rid), aud.load_run(store, rid, use_run_tables=False)
    assert "zip area" in new.users.columns
    _same_audiences(new, old, [
        dict(items=["50"], percent=10, exclude_seen=True),
        dict(items=["1", "181"], top_n=200, exclude_seen=True, where={"gender": ["F"]}),
        dict(items=["100"], top_n=943, ranges={"age": (25, 40)}),
        dict(seed_users=["1", "2", "3"], percent=5)])
    pd.testing.assert_frame_equal(aud.item_catalogue(new), aud.item_catalogue(old))
    assert aud.filter_options(new) == aud.filter_options(old)
    store.dispose()


# ----------------------------------------------------------------------------- fast layout
def test_id_lookup_finds_ids_even_when_every_hash_collides(monkeypatch) -> None:
    from dssm_core import retrieval

    ids = np.array(["b", "a", "ccc", "用户", ""])
    real = retrieval.IdLookup(ids)
    assert real.find(np.array(["ccc", "a", "zz", "cccc", "用户", ""])).tolist() \
        == [2, 1, -1, -1, 3, 4]                          # "cccc" is longer than any id
    assert real.duplicates() == []
    monkeypatch.setattr(retrieval, "hash_ids", lambda a: np.zeros(len(a), np.uint64))
    same = retrieval.IdLookup(ids)
    assert same.find(np.array(["ccc", "a", "zz", "b"])).tolist() == [2, 1, -1, 0]
    assert retrieval.IdLookup(np.array(["x", "y", "x"])).duplicates() == ["x"]
    with pytest.raises(ValueError, match=r"ids are not unique: \['x'\]"):
        UserIndex().index(np.eye(3, dtype=np.float32), ["x", "y", "x"])


def test_index_and_from_columns_lay_out_unit_columns(monkeypatch) -> None:
    from dssm_core import retrieval

    monkeypatch.setattr(retrieval, "LAYOUT_ROWS", 2)      # 6 rows: tiles of 2, blocks of 32
    m = USER_VECS * np.array([[2], [1], [1], [3], [1], [5]], np.float32)   # not unit
    idx = UserIndex().index(m, USER_IDS)
    np.testing.assert_allclose(idx.columns_, USER_VECS.T, atol=1e-7)
    assert idx.columns_.flags.c_contiguous and idx.positions(["u6", "u1"]).tolist() == [5, 0]
    cols = np.ascontiguousarray(m.T)
    fast = UserIndex.from_columns(cols, np.array(USER_IDS), block_rows=4)
    assert fast.columns_ is cols                          # taken over, scaled in place
    np.testing.assert_allclose(cols, USER_VECS.T, atol=1e-7)
    assert fast.query(np.array([1, 0], np.float32), 2)[1].tolist() == [["u1", "u2"]]
    with pytest.raises(ValueError, match="length zero.*'u2'"):
        UserIndex.from_columns(np.array([[1, 0], [0, 0]], np.float32), np.array(["u1", "u2"]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        UserIndex.from_columns(np.array([[np.nan], [1]], np.float32), np.array(["u1"]))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        UserIndex.from_columns(np.ones((2, 3)), np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        UserIndex().index(np.array([[np.inf, 0]], np.float32), ["u"])


def test_unicode_ids_from_arrow_text_numpy_and_numbers() -> None:
    from dssm_core.retrieval import unicode_ids

    assert unicode_ids(pd.Series(["a", "Zoë", "", "用户7"])).tolist() == ["a", "Zoë", "", "用户7"]
    sliced = pd.Series(["a", "bcd", "ef", "g"], dtype="str").iloc[1:3]     # offsets from 1
    assert unicode_ids(sliced).tolist() == ["bcd", "ef"]
    assert unicode_ids(pd.Index([10, 2])).tolist() == ["10", "2"]
    assert unicode_ids(pd.Series(["x", "yy"], dtype=object)).dtype == np.dtype("<U2")
    ids = np.array(["u1", "u22"])
    assert unicode_ids(ids) is ids


def test_backfill_gives_a_run_stored_without_tables_the_same_audiences(
        tmp_path: Path, monkeypatch) -> None:
    """A run stored without its tables (as before schema 5) gets them from
    ``backfill_run_tables`` (and from the CLI's ``backfill-tables``): they equal what
    training would have stored, the audiences stay the same, they no longer read the
    dataset's tables, and a second backfill writes nothing."""
    from dssm_core.cli import main

    db = tmp_path / "old.db"
    store = Store(f"sqlite:///{db}")
    did = store.add_dataset(shuffled_categorical_dataset())
    rid = store.create_run(did, {})
    store.finish_run(rid, summary={}, weights=b"w", encoders={}, user_ids=USER_IDS,
                     user_vectors=USER_VECS, item_ids=["A", "B", "C"], item_vectors=ITEM_VECS)
    failed = store.create_run(did, {})
    store.fail_run(failed, "boom")
    assert store.load_run_table(rid, "genre") is None
    old = aud.load_run(store, rid)
    assert not old.source.has_tables()
    with pytest.raises(ValueError, match="failed"):
        aud.backfill_run_tables(store, failed)
    assert store.load_run_table(failed, "genre") is None

    said: list[tuple[str, float]] = []
    assert aud.backfill_run_tables(store, rid, progress=lambda s, f, m=None: said.append((s, f)))
    assert said == [("backfill", 0.0), ("backfill", 0.5), ("backfill", 1.0)]
    want = aud.run_tables(store.load_dataset(did), USER_IDS, ["A", "B", "C"])
    for kind, table in want.items():
        pd.testing.assert_frame_equal(store.load_run_table(rid, kind), table)
    assert not aud.backfill_run_tables(store, rid)                    # has them: no write
    new = aud.load_run(store, rid)
    assert (len(old.users), len(old.seen), len(old.favourite_genre)) == (6, 7, 6)  # read now

    def no_dataset_table(*args, **kwargs):
        raise AssertionError("the dataset's users or interactions were read")

    monkeypatch.setattr(store, "load_dataset_table", no_dataset_table)
    assert new.source.has_tables()
    _same_audiences(new, old, [
        dict(items=["A"], top_n=6), dict(items=["B"], percent=50, exclude_seen=True),
        dict(items=["A", "B"], top_n=4, exclude_seen=True, where={"favourite genre": ["Drama"]})])
    store.dispose()

    # the CLI: every succeeded run lacking tables (here none left), one JSON line
    other = Store(f"sqlite:///{db}")
    rid2 = other.create_run(did, {})
    other.finish_run(rid2, summary={}, weights=b"w", encoders={}, user_ids=USER_IDS,
                     user_vectors=USER_VECS, item_ids=["A", "B", "C"], item_vectors=ITEM_VECS)
    other.dispose()
    assert main(["backfill-tables", "--db", f"sqlite:///{db}"]) == 0
    check = Store(f"sqlite:///{db}")
    assert check.load_run_table(rid2, "genre") is not None
    assert check.load_run_table(failed, "genre") is None
    check.dispose()
