"""AppTest of the Audience page against a temporary store holding one run of known vectors.

The expected audiences are worked out here independently with numpy (cosine = dot product of
unit vectors, best first), not by calling dssm_core.audience.
"""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pandas as pd
import pytest

from apphelpers import new_app
from dssm_core import synthetic
from pages.widgets import md

PAGE = "pages/audience.py"
N_USERS, N_ITEMS, DIM = 60, 30, 8


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)                     # (N, D)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def run_store(app_store) -> dict[str, Any]:
    """The app's store with the tiny synthetic dataset and one succeeded run of seeded vectors."""
    ds = synthetic.generate(n_users=N_USERS, n_items=N_ITEMS, n_interactions=600, seed=1)
    dataset_id = app_store.add_dataset(ds, name="tiny demo")
    run_id = app_store.create_run(dataset_id, {"epochs": 1}, preset="default",
                                  objective="pointwise", protocol="T")
    rng = np.random.default_rng(11)
    users, items = _unit(rng, N_USERS), _unit(rng, N_ITEMS)
    user_ids = ds.users["user_id"].to_numpy()
    item_ids = ds.items["item_id"].to_numpy()
    app_store.finish_run(run_id, summary={"test_auc": 0.7}, weights=b"w", encoders={},
                         user_ids=user_ids, user_vectors=users,
                         item_ids=item_ids, item_vectors=items)
    return {"store": app_store, "run_id": run_id, "ds": ds, "users": users, "items": items,
            "user_ids": user_ids, "item_ids": item_ids}


@pytest.fixture()
def downloads(monkeypatch) -> dict[str, bytes]:
    """Captures the bytes behind every download button (file name -> bytes)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    got: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def capture(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes) and filename:
            got[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", capture)
    return got


def _expected_top(rs: dict[str, Any], query: np.ndarray, n: int,
                  exclude: set[str] = frozenset()) -> list[str]:
    """Top n user ids by cosine to ``query`` (ties: earlier user), skipping ``exclude``."""
    q = query / np.linalg.norm(query)
    scores = rs["users"] @ q                                             # (N,)
    order = np.lexsort((np.arange(N_USERS), -scores))
    return [str(rs["user_ids"][i]) for i in order if str(rs["user_ids"][i]) not in exclude][:n]


def _table(at) -> pd.DataFrame:
    """The members table (AppTest does not expose a dataframe's key: find it by its columns)."""
    tables = [d.value for d in at.dataframe if list(d.value.columns[:2]) == ["rank", "user_id"]]
    assert len(tables) == 1
    return tables[0]


def _open(at_items: list[str], top_n: int, exclude_seen: bool = False):
    at = new_app(PAGE)
    at.checkbox(key="aud_exclude_seen").set_value(exclude_seen)
    at.number_input(key="aud_top_n").set_value(top_n)
    at.multiselect(key="aud_items").set_value(at_items).run()
    return at


def test_empty_store_says_what_to_do(app_store):
    at = new_app(PAGE)
    assert not at.exception
    assert "No trained model yet" in at.info[0].value


def test_pick_an_item_gives_n_rows_sorted_by_score_and_matching_csv(run_store, downloads):
    at = new_app(PAGE)
    assert not at.exception
    assert "Pick one or more items" in at.info[0].value
    # The picker shows titles and how many users each item has; most users first.
    labels = at.multiselect(key="aud_items").options
    title_3 = run_store["ds"].items.set_index("item_id").loc["3", "title"]
    inter = run_store["ds"].interactions
    users_3 = inter.loc[inter["item_id"] == "3", "user_id"].nunique()
    assert f"{title_3} · id 3 · {users_3} users" in labels
    counts = [int(lab.rsplit(" · ", 1)[1].split()[0]) for lab in labels]
    assert counts == sorted(counts, reverse=True)

    at.checkbox(key="aud_exclude_seen").set_value(False)
    at.number_input(key="aud_top_n").set_value(10)
    at.multiselect(key="aud_items").set_value(["3"]).run()
    assert not at.exception
    table = _table(at)
    assert len(table) == 10
    assert table["rank"].tolist() == list(range(1, 11))
    assert table["score"].is_monotonic_decreasing
    expected = _expected_top(run_store, run_store["items"][2], 10)
    assert table["user_id"].tolist() == expected
    # Scores are the cosines rounded to 3 decimals; percentile is within the eligible pool (all
    # 60 users here): the best scores at least as well as all 60 -> 100.0, the 10th ->
    # (60 - 9) / 60 = 85.0.
    best = float(run_store["users"][int(expected[0]) - 1] @ run_store["items"][2])
    assert table["score"].iloc[0] == pytest.approx(round(best, 3), abs=1e-9)
    assert table["percentile"].iloc[0] == 100.0 and table["percentile"].iloc[9] == 85.0
    # The item's title heads the result.
    assert md(title_3) in at.subheader[0].value

    # The download button carries the CSV of exactly these rows.
    assert at.download_button(key="aud_download").label == "⬇️ Download CSV"
    (name, data), = downloads.items()
    assert name.endswith(".csv") and "run" in name
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    header = data.decode("utf-8").splitlines()[0].split(",")
    assert header[:4] == ["rank", "user_id", "score", "percentile"]
    assert {"gender", "age", "occupation", "run_id", "item_ids", "item_titles"} <= set(header)
    assert [r["user_id"] for r in rows] == expected
    assert [int(r["rank"]) for r in rows] == list(range(1, 11))
    np.testing.assert_allclose([float(r["score"]) for r in rows], table["score"], atol=5e-4)
    assert {r["item_ids"] for r in rows} == {"3"}
    assert {r["run_id"] for r in rows} == {str(run_store["run_id"])}


def test_campaign_of_two_items_and_exclude_seen(run_store):
    at = _open(["3", "7"], top_n=5, exclude_seen=True)
    assert not at.exception
    inter = run_store["ds"].interactions
    seen = set(inter.loc[inter["item_id"].isin(["3", "7"]), "user_id"])
    assert seen, "the fixture should have viewers of items 3 and 7"
    query = run_store["items"][2] + run_store["items"][6]    # mean of unit vectors, same direction
    expected = _expected_top(run_store, query, 5, exclude=seen)
    assert _table(at)["user_id"].tolist() == expected
    assert not seen & set(_table(at)["user_id"])
    assert "already interacted" in "\n".join(c.value for c in at.caption)


def test_size_by_percent(run_store):
    at = new_app(PAGE)
    at.checkbox(key="aud_exclude_seen").set_value(False)
    at.radio(key="aud_size_by").set_value("% of all users").run()
    at.slider(key="aud_percent").set_value(25.0)
    at.multiselect(key="aud_items").set_value(["1"]).run()
    assert not at.exception
    assert len(_table(at)) == 15                       # 25% of 60 users


def test_lookalike_excludes_its_seeds(run_store):
    at = new_app(PAGE)
    at.radio(key="aud_mode").set_value("Lookalike of a user list").run()
    assert "Give the ids of users" in at.info[0].value
    seeds = ["1", "2", "5"]
    at.number_input(key="aud_top_n").set_value(8)
    at.text_area(key="aud_seeds_text").set_value("1, 2\n5").run()
    assert not at.exception
    table = _table(at)
    assert not set(seeds) & set(table["user_id"])
    centroid = run_store["users"][[0, 1, 4]].mean(axis=0)
    assert table["user_id"].tolist() == _expected_top(run_store, centroid, 8, exclude=set(seeds))
    assert "lookalikes of 3 seed users" in at.subheader[0].value


def test_unknown_seed_ids_are_named(run_store):
    at = new_app(PAGE)
    at.radio(key="aud_mode").set_value("Lookalike of a user list").run()
    at.text_area(key="aud_seeds_text").set_value("1\nnobody-42").run()
    assert not at.exception
    assert md("'nobody-42'") in at.error[0].value


def test_attribute_filter_and_insights(run_store):
    at = new_app(PAGE)
    at.checkbox(key="aud_exclude_seen").set_value(False)
    at.number_input(key="aud_top_n").set_value(6)
    at.multiselect(key="aud_where_gender").set_value(["F"])
    at.multiselect(key="aud_items").set_value(["2"]).run()
    assert not at.exception
    users = run_store["ds"].users.set_index("user_id")
    table = _table(at)
    assert set(users.loc[table["user_id"], "gender"]) == {"F"}
    not_f = set(users.index[users["gender"] != "F"])
    assert table["user_id"].tolist() == _expected_top(run_store, run_store["items"][1], 6,
                                                      exclude=not_f)
    # Insights: the attribute picker lists the user attributes and the favourite genre.
    attrs = at.selectbox(key="aud_insight_attr").options
    assert "gender" in attrs and "favourite genre" in attrs
    assert "zip" not in attrs                     # id-like: left out


def test_save_and_compare_two_audiences(run_store):
    store = run_store["store"]
    at = _open(["3"], top_n=10)
    at.text_input(key="aud_save_name").set_value("Item 3 fans")
    submit = [b for b in at.button if b.label == "Save audience"][0]
    submit.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.success, [e.value for e in at.error] + [w.value for w in at.warning]
    assert "Saved as audience" in at.success[0].value
    at.multiselect(key="aud_items").set_value(["3", "7"])
    at.number_input(key="aud_top_n").set_value(10).run()
    at.text_input(key="aud_save_name").set_value("Campaign 3+7")
    [b for b in at.button if b.label == "Save audience"][0].click().run()
    saved = store.list_audiences()
    assert [a["name"] for a in saved] == ["Campaign 3+7", "Item 3 fans"]
    a = set(store.load_audience(saved[0]["id"])["members"]["user_id"])
    b = set(store.load_audience(saved[1]["id"])["members"]["user_id"])
    common = len(a & b)
    assert at.selectbox(key="aud_cmp_a").value == saved[0]["id"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["In both"] == str(common)
    assert metrics["Jaccard overlap"] == f"{common / len(a | b) * 100:.1f}%"


def test_numeric_attribute_range_filter(app_store):
    """ML-100K-style numeric ages get a range slider; members all fall inside the range."""
    from apphelpers import ml100k_zip
    from dssm_core import movielens

    ds = movielens.load(("ml-100k.zip", ml100k_zip(n_users=60)))   # 40 distinct ages
    dataset_id = app_store.add_dataset(ds, name="tiny 100k")
    run_id = app_store.create_run(dataset_id, {"epochs": 1}, preset="default",
                                  objective="pointwise", protocol="T")
    rng = np.random.default_rng(3)
    n_users, n_items = len(ds.users), len(ds.items)
    app_store.finish_run(run_id, summary={"test_auc": 0.6}, weights=b"w", encoders={},
                         user_ids=ds.users["user_id"].to_numpy(),
                         user_vectors=_unit(rng, n_users),
                         item_ids=ds.items["item_id"].to_numpy(),
                         item_vectors=_unit(rng, n_items))
    at = new_app(PAGE)
    at.checkbox(key="aud_exclude_seen").set_value(False)
    ages = ds.users["age"]
    assert at.slider(key="aud_range_age").value == (int(ages.min()), int(ages.max()))
    at.slider(key="aud_range_age").set_value((20, 30))
    at.number_input(key="aud_top_n").set_value(50)
    at.multiselect(key="aud_items").set_value(["1"]).run()
    assert not at.exception
    table = _table(at)
    n_in_range = int(((ages >= 20) & (ages <= 30)).sum())
    assert len(table) == n_in_range                     # clamped to the eligible users
    assert table["age"].between(20, 30).all()
    assert "only" in at.warning[0].value and str(n_in_range) in at.warning[0].value


def test_switching_to_a_smaller_run_keeps_the_page_working(run_store):
    """Choices made on one run that the other run cannot take (an item it lacks, a size above
    its population) are dropped or reset to that run's default, not an error."""
    store = run_store["store"]
    small = synthetic.generate(n_users=20, n_items=10, n_interactions=100, seed=4)
    dataset_id = store.add_dataset(small, name="smaller")
    run_id = store.create_run(dataset_id, {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    rng = np.random.default_rng(1)
    store.finish_run(run_id, summary={"test_auc": 0.6}, weights=b"w", encoders={},
                     user_ids=small.users["user_id"].to_numpy(), user_vectors=_unit(rng, 20),
                     item_ids=small.items["item_id"].to_numpy(), item_vectors=_unit(rng, 10))
    at = new_app(PAGE)
    at.selectbox(key="aud_run").set_value(run_store["run_id"]).run()
    at.checkbox(key="aud_exclude_seen").set_value(False)
    at.number_input(key="aud_top_n").set_value(40)
    at.multiselect(key="aud_items").set_value(["2", "25"]).run()
    assert len(_table(at)) == 40
    at.selectbox(key="aud_run").set_value(run_id).run()
    assert not at.exception
    assert at.multiselect(key="aud_items").value == ["2"]          # item 25 is not in this run
    # The size widget is bounded by the population, so it starts over at the run's default:
    # 10% of 20 users, at least 10 -> 10.
    assert at.number_input(key="aud_top_n").value == 10
    assert len(_table(at)) == 10


def test_a_large_campaign_heading_names_two_items_and_counts_the_rest(run_store):
    at = _open(["3", "7", "11", "12", "15"], top_n=10)
    assert not at.exception
    titles = run_store["ds"].items.set_index("item_id")["title"]
    heading = at.subheader[0].value
    assert heading.startswith("10 users for ")
    assert md(titles.loc["3"]) in heading and md(titles.loc["7"]) in heading
    assert heading.endswith("and 3 more items") and md(titles.loc["15"]) not in heading


# ------------------------------------------------------------------ issue 14: honest audiences
def _seen_by(rs: dict[str, Any], items: list[str]) -> set[str]:
    inter = rs["ds"].interactions
    return set(inter.loc[inter["item_id"].isin(items), "user_id"].astype(str))


def test_exclusion_is_in_view_with_its_count_and_percentiles_are_within_the_pool(run_store):
    at = _open(["3"], top_n=10, exclude_seen=True)                     # the default
    assert not at.exception
    seen = _seen_by(run_store, ["3"])
    pool = N_USERS - len(seen)
    captions = "\n".join(c.value for c in at.caption)
    assert f"{len(seen)} of {N_USERS} users already interacted: left out." in captions
    assert f"Eligible pool: {pool} of {N_USERS} users; left out: already interacted " \
           f"{len(seen)}." in captions
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Eligible pool"] == str(pool)
    table = _table(at)
    assert table["user_id"].tolist() == _expected_top(run_store, run_store["items"][2], 10,
                                                      exclude=seen)
    # rank 1 is the best of the pool: 100; rank 10 beats or ties pool - 9 of the pool
    assert table["percentile"].iloc[0] == 100.0
    assert table["percentile"].iloc[9] == round((pool - 9) / pool * 100, 1)


def test_a_pool_smaller_than_asked_says_so_and_the_floor_cuts_negatives(run_store):
    at = _open(["3"], top_n=N_USERS, exclude_seen=True)
    seen = _seen_by(run_store, ["3"])
    pool = N_USERS - len(seen)
    q = run_store["items"][2]
    scores = {str(u): float(v @ q) for u, v in zip(run_store["user_ids"], run_store["users"])}
    negative = [u for u, v in scores.items() if v < 0 and u not in seen]
    assert negative, "the fixture should have users leaning away from item 3"
    warnings = [w.value for w in at.warning]
    assert any(f"only {pool} are eligible" in w for w in warnings)
    assert any(md(f"The last {len(negative)} of the {pool} members score below 0") in w
               for w in warnings)
    assert len(_table(at)) == pool
    at.checkbox(key="aud_floor").check().run()
    assert not at.exception
    table = _table(at)
    assert len(table) == pool - len(negative) and (table["score"] >= 0).all()
    assert "similarity below 0" in "\n".join(c.value for c in at.caption)


def test_saved_name_follows_a_resize(run_store):
    store = run_store["store"]
    seen = _seen_by(run_store, ["3"])
    pool = N_USERS - len(seen)
    title_3 = run_store["ds"].items.set_index("item_id").loc["3", "title"]
    at = _open(["3"], top_n=7, exclude_seen=True)
    assert at.text_input(key="aud_save_name").value == f"{title_3} – top 7"
    at.number_input(key="aud_top_n").set_value(N_USERS).run()           # more than the pool
    assert at.text_input(key="aud_save_name").value == f"{title_3} – top {pool}"
    [b for b in at.button if b.label == "Save audience"][0].click().run()
    saved = store.list_audiences()
    assert [(a.name, a.size) for a in saved] == [(f"{title_3} – top {pool}", pool)]
    # a name the user typed is kept through a resize
    at.text_input(key="aud_save_name").set_value("My fans").run()
    at.number_input(key="aud_top_n").set_value(5).run()
    assert at.text_input(key="aud_save_name").value == "My fans"


def test_item_picker_has_no_select_all_and_searches_by_genre_and_year(run_store):
    at = new_app(PAGE)
    picker = at.multiselect(key="aud_items")
    assert not picker.proto.select_all                                  # 30 items: it would
    items = run_store["ds"].items
    genre = items["genres"].explode().value_counts().index[0]
    at.multiselect(key="aud_item_genres").set_value([genre]).run()
    with_genre = set(items.loc[items["genres"].map(lambda g: genre in g), "item_id"])
    got = {o.split(" · id ")[1].split(" · ")[0] for o in at.multiselect(key="aud_items").options}
    assert got == with_genre
    years = items["year"].dropna().astype(int)
    lo, hi = int(years.min()), int(years.max())
    assert at.slider(key="aud_item_years").value == (lo, hi)
    mid = (lo + hi) // 2
    at.slider(key="aud_item_years").set_value((lo, mid)).run()
    keep = items[items["genres"].map(lambda g: genre in g) & items["year"].between(lo, mid)]
    got = {o.split(" · id ")[1].split(" · ")[0] for o in at.multiselect(key="aud_items").options}
    assert got == set(keep["item_id"])
    assert f"{len(keep)} of {N_ITEMS} items match" in "\n".join(c.value for c in at.caption)


def test_insights_show_the_minimum_group_size_and_mark_small_groups(run_store):
    at = _open(["3"], top_n=20)
    assert at.number_input(key="aud_min_group").value == 30
    captions = "\n".join(c.value for c in at.caption)
    assert "Minimum group size: 30 members." in captions
    table = [d.value for d in at.dataframe if "small" in d.value.columns][0]
    # 20 members: every value has fewer than 30, so every row is marked
    assert table["small"].all()
    at.number_input(key="aud_min_group").set_value(5).run()
    table = [d.value for d in at.dataframe if "small" in d.value.columns][0]
    assert (table["small"] == (table["audience_count"] < 5)).all()
    assert "Minimum group size: 5 members." in "\n".join(c.value for c in at.caption)


def test_the_cli_and_the_app_give_the_same_audience(run_store, downloads, tmp_path):
    """One request, two front ends: the CSV the app offers equals the one the CLI writes."""
    from dssm_core.cli import main

    at = _open(["3", "7"], top_n=12, exclude_seen=True)
    at.multiselect(key="aud_where_gender").set_value(["M"]).run()
    assert not at.exception
    app_csv = list(downloads.values())[-1]
    out = tmp_path / "cli.csv"
    assert main(["audience", "--db", run_store["store"].url, "--run",
                 str(run_store["run_id"]), "--item", "3", "--item", "7", "--top", "12",
                 "--where", "gender=M", "--out", str(out)]) == 0
    assert out.read_bytes() == app_csv
