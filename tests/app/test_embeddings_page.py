"""AppTest of the Embedding maps page (and its hand-offs to the Audience page).

Maps are stored with hand-made coordinates (the UMAP itself is tested in test_projection.py),
except in the slow test that starts the real background projection from the page.
"""
from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from apphelpers import new_app, sleeper
from dssm_core import synthetic
from pages import widgets

PAGE = "pages/embeddings.py"
DIM = 8


def _add_run(store: Any, n_users: int = 60, n_items: int = 30, pid: int | None = None
             ) -> dict[str, Any]:
    """The synthetic dataset and one succeeded run of seeded unit vectors (no maps yet)."""
    ds = synthetic.generate(n_users=n_users, n_items=n_items, n_interactions=10 * n_users,
                            seed=1)
    dataset_id = store.add_dataset(ds, name="tiny demo")
    run_id = store.create_run(dataset_id, {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    if pid is not None:
        store.mark_running(run_id, pid)
    rng = np.random.default_rng(5)
    u = rng.normal(size=(n_users, DIM)).astype(np.float32)
    i = rng.normal(size=(n_items, DIM)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    i /= np.linalg.norm(i, axis=1, keepdims=True)
    store.finish_run(run_id, summary={"test_auc": 0.7}, weights=b"w", encoders={},
                     user_ids=ds.users["user_id"].to_numpy(), user_vectors=u,
                     item_ids=ds.items["item_id"].to_numpy(), item_vectors=i)
    return {"store": store, "run_id": run_id, "ds": ds, "users": u}


def _save_map(store: Any, run_id: int, kind: str, ids: np.ndarray, n_total: int) -> np.ndarray:
    xy = np.random.default_rng(2).normal(size=(len(ids), 2)).astype(np.float32)   # (M, 2)
    store.save_projection(run_id, kind, ids, xy, {
        "method": "umap", "metric": "cosine", "n_neighbors": 15, "min_dist": 0.1, "seed": 0,
        "n_total": n_total, "n_projected": len(ids), "sampled": len(ids) < n_total,
        "max_points": 40 if len(ids) < n_total else 50_000})
    return xy


@pytest.fixture()
def mapped(app_store) -> dict[str, Any]:
    """A run with a user map of a 40-user sample (of 60) and a full item map."""
    r = _add_run(app_store)
    user_ids = r["ds"].users["user_id"].to_numpy()
    r["user_map_ids"] = user_ids[::3].tolist() + user_ids[1::3][:20].tolist()
    _save_map(app_store, r["run_id"], "user", np.array(r["user_map_ids"]), 60)
    _save_map(app_store, r["run_id"], "item", r["ds"].items["item_id"].to_numpy(), 30)
    return r


def _figure(at) -> dict[str, Any]:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("info", "caption", "markdown", "error",
                                               "success") for e in getattr(at, kind))


def test_empty_store_says_what_to_do(app_store):
    at = new_app(PAGE)
    assert not at.exception
    assert "No trained model yet" in at.info[0].value


def test_user_map_is_titled_coloured_and_says_it_is_a_sample(mapped):
    at = new_app(PAGE)
    assert not at.exception
    assert "random sample of **40** of 60 users" in _texts(at)
    fig = _figure(at)
    layout = fig["layout"]
    assert layout["xaxis"]["title"]["text"] == "UMAP 1"
    assert layout["yaxis"]["title"]["text"] == "UMAP 2"
    assert "40 users of run" in layout["title"]["text"]
    # Default colouring: each user's favourite genre, one legend entry (trace) per genre.
    assert at.selectbox(key="emb_colour_user").value == "favourite genre"
    assert layout["legend"]["title"]["text"] == "favourite genre"
    traces = fig["data"]
    assert {t["type"] for t in traces} == {"scatter"}          # few points: SVG
    assert sum(len(t["customdata"]) for t in traces) == 40
    # Hover names the user id and attributes (customdata holds the id of each point).
    assert traces[0]["hovertemplate"] == "%{text}<extra></extra>"
    uid = traces[0]["customdata"][0]
    user = mapped["ds"].users.set_index("user_id").loc[uid]
    assert traces[0]["text"][0].startswith(f"<b>user {uid}</b><br>gender: {user['gender']}"
                                           f"<br>age: {user['age']}")

    at.selectbox(key="emb_colour_user").set_value("gender").run()
    traces = _figure(at)["data"]
    users = mapped["ds"].users.set_index("user_id").loc[mapped["user_map_ids"]]
    counts = users["gender"].value_counts()
    expected = {f"{g} ({counts[g]})" for g in counts.index}
    assert {t["name"] for t in traces} == expected
    # Every point of the "F" trace is a woman.
    f_trace = [t for t in traces if t["name"].startswith("F ")][0]
    assert set(users.loc[f_trace["customdata"], "gender"]) == {"F"}


def test_item_map_hover_shows_titles_and_colours_by_genre(mapped):
    at = new_app(PAGE)
    at.radio(key="emb_kind").set_value("Items").run()
    assert not at.exception
    assert "random sample" not in _texts(at)
    fig = _figure(at)
    assert at.selectbox(key="emb_colour_item").value == "first genre"
    items = mapped["ds"].items.set_index("item_id")
    first = items["genres"].map(lambda g: g[0])
    # At most 12 colours: the 11 most common first genres, the rest pooled as "(other)" (grey).
    traces = fig["data"]
    assert first.nunique() > 12 and len(traces) == 12
    assert sum(len(t["customdata"]) for t in traces) == 30
    for t in traces:
        genre, n = t["name"].rsplit(" (", 1)
        got = first.loc[t["customdata"]]
        assert len(got) == int(n[:-1])
        if genre == "(other)":
            assert t["marker"]["color"] == "#c7cdd6"
            assert got.map(first.value_counts()).max() <= first.value_counts().iloc[10]
        else:
            assert set(got) == {genre}
    iid, text = fig["data"][0]["customdata"][0], fig["data"][0]["text"][0]
    assert text == (f"<b>{items.loc[iid, 'title']}</b><br>item {iid}<br>"
                    + ", ".join(items.loc[iid, "genres"]))

    at.selectbox(key="emb_colour_item").set_value("one genre vs the rest").run()
    at.selectbox(key="emb_genre").set_value("Drama").run()
    names = {t["name"] for t in _figure(at)["data"]}
    n_drama = int(items["genres"].map(lambda g: "Drama" in g).sum())
    assert names == {f"Drama ({n_drama})", f"other genres ({30 - n_drama})"}


def test_current_audience_is_highlighted_on_the_user_map(mapped):
    at = new_app("pages/audience.py")
    at.checkbox(key="aud_exclude_seen").set_value(False)
    at.number_input(key="aud_top_n").set_value(12)
    at.multiselect(key="aud_items").set_value(["4"]).run()
    members = at.session_state["current_audience"]["user_ids"]
    assert len(members) == 12
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.checkbox(key="emb_highlight").value is True
    traces = _figure(at)["data"]
    ring = [t for t in traces if t["name"].startswith("current audience")]
    shown = set(members) & set(mapped["user_map_ids"])
    assert len(ring) == 1 and ring[0]["name"] == f"current audience ({len(shown)} shown)"
    assert set(ring[0]["customdata"]) == shown
    at.checkbox(key="emb_highlight").set_value(False).run()
    assert not any(t["name"].startswith("current audience") for t in _figure(at)["data"])


def test_webgl_above_a_few_thousand_points(app_store):
    r = _add_run(app_store, n_users=3_100, n_items=20)
    _save_map(app_store, r["run_id"], "user", r["ds"].users["user_id"].to_numpy(), 3_100)
    at = new_app(PAGE)
    assert not at.exception
    assert {t["type"] for t in _figure(at)["data"]} == {"scattergl"}


def test_map_selection_handed_to_the_audience_page_as_lookalike_seeds(mapped):
    at = new_app(PAGE)
    at.session_state["audience_handoff"] = {"run_id": mapped["run_id"],
                                            "seed_users": ["1", "4", "7"]}
    at.switch_page("pages/audience.py").run()
    assert not at.exception
    assert at.radio(key="aud_mode").value == "Lookalike of a user list"
    assert at.text_area(key="aud_seeds_text").value == "1\n4\n7"
    assert "3 seed users selected on the embedding map" in at.info[0].value
    table = [d.value for d in at.dataframe if "user_id" in d.value.columns][0]
    assert not {"1", "4", "7"} & set(table["user_id"])


def test_selected_ids_maps_curve_and_point_back_to_ids():
    trace_ids = [np.array(["a", "b", "c"]), np.array(["d", "e"])]
    event = {"selection": {"points": [
        {"curve_number": 1, "point_index": 1}, {"curve_number": 0, "point_index": 2},
        {"curve_number": 1, "point_index": 1},              # duplicate (e.g. the ring trace)
        {"curve_number": 5, "point_index": 0},              # unknown curve: ignored
    ]}}
    assert widgets.selected_ids(event, trace_ids) == ["e", "c"]
    assert widgets.selected_ids({"selection": {"points": []}}, trace_ids) == []
    assert widgets.selected_ids(None, trace_ids) == []


def test_selection_audience_ranks_by_cosine_to_the_centroid():
    from dssm_core.audience import UserIndex, selection_audience

    # Three users: u1 = e0, u2 = e1, u3 = (e0 + e1)/sqrt2. Selection {u1, u3}: centroid
    # direction (1 + 1/sqrt2, 1/sqrt2) normalised; cos with u3 = 0.9239, with u1 = 0.9239 too
    # (the centroid bisects them) -> tie broken by index order: u1 first.
    s = 1 / np.sqrt(2)
    idx = UserIndex().index(np.array([[1, 0], [0, 1], [s, s]], np.float32), ["u1", "u2", "u3"])
    got = selection_audience(SimpleNamespace(index=idx), ["u3", "u1"])
    assert got["user_id"].tolist() == ["u1", "u3"]
    assert got["rank"].tolist() == [1, 2]
    np.testing.assert_allclose(got["score"], [np.cos(np.pi / 8)] * 2, atol=1e-6)
    # Selection {u2, u3}: centroid bisects them too; {u1, u2, u3}: centroid is e0+e1 direction,
    # so u3 (cos 1) comes first, then u1 and u2 (cos 1/sqrt2) in index order.
    got = selection_audience(SimpleNamespace(index=idx), ["u2", "u1", "u3"])
    assert got["user_id"].tolist() == ["u3", "u1", "u2"]
    np.testing.assert_allclose(got["score"], [1.0, s, s], atol=1e-6)
    with pytest.raises(ValueError, match="nobody"):
        selection_audience(SimpleNamespace(index=idx), ["nobody"])


def test_parse_id_list():
    assert widgets.parse_id_list("1, 2\n3;4\t5 6\n2") == ["1", "2", "3", "4", "5", "6"]
    assert widgets.parse_id_list(b"user_id,score\n7,0.5\n8,0.4\n") == ["7", "8"]
    assert widgets.parse_id_list(b"\xef\xbb\xbfuser_id\r\n9\r\n10\r\n") == ["9", "10"]
    assert widgets.parse_id_list("") == [] and widgets.parse_id_list(None) == []


def test_map_being_computed_by_the_training_job_shows_progress_not_a_button(app_store):
    job = sleeper()                     # stands in for the training process, still projecting
    try:
        _add_run(app_store, n_users=20, n_items=10, pid=job.pid)
        at = new_app(PAGE)
        assert not at.exception
        assert "The training job is computing the maps" in at.get("progress")[0].proto.text
        assert not [b for b in at.button if b.key == "emb_compute"]
    finally:
        job.kill()
        job.wait()


@pytest.mark.slow
def test_missing_map_is_computed_in_the_background_with_progress(app_store):
    r = _add_run(app_store, n_users=40, n_items=15)
    at = new_app(PAGE)
    assert not at.exception
    assert "no stored map yet" in at.info[0].value
    at.button(key="emb_compute").click().run()
    assert not at.exception
    assert not at.get("plotly_chart")
    assert "Computing the UMAP maps in the background" in at.get("progress")[0].proto.text
    deadline = time.monotonic() + 240
    while app_store.load_projection(r["run_id"], "item") is None:
        assert time.monotonic() < deadline, "the background projection did not finish"
        time.sleep(1.0)
    at.run()
    assert not at.exception
    assert sum(len(t["customdata"]) for t in _figure(at)["data"]) == 40
    ids, xy, params = app_store.load_projection(r["run_id"], "user")
    assert xy.shape == (40, 2) and params["sampled"] is False
    assert sorted(ids.tolist()) == sorted(r["ds"].users["user_id"].tolist())
    log_text = (app_store.url.split("///", 1)[1].rsplit("/", 1)[0] + "/logs/project-"
                f"{r['run_id']}.log")
    lines = [json.loads(x) for x in open(log_text) if x.startswith("{")]
    assert [x["stage"] for x in lines] == ["started", "stored", "stored", "done"]


def test_maps_and_audience_pages_never_import_torch_or_umap(tmp_path) -> None:
    """Opening a stored map and building an audience load neither torch nor umap/numba."""
    import subprocess
    import sys

    from apphelpers import ROOT

    script = f"""
import os, sys
os.environ.update(DSSM_DB_URL="sqlite:///{tmp_path}/s.db", DSSM_DEMO="off")
sys.path[:0] = ["{ROOT}", "{ROOT}/tests/app"]
import numpy as np
from apphelpers import new_app
from dssm_core import synthetic
from dssm_core.store import Store
store = Store(os.environ["DSSM_DB_URL"])
ds = synthetic.generate(n_users=50, n_items=20, n_interactions=400)
d = store.add_dataset(ds)
r = store.create_run(d, {{}}, preset="default", objective="pointwise", protocol="T")
v = np.eye(50, 4, dtype=np.float32) + 0.1
store.finish_run(r, summary={{}}, weights=b"w", encoders={{}},
                 user_ids=ds.users["user_id"].to_numpy(), user_vectors=v,
                 item_ids=ds.items["item_id"].to_numpy(), item_vectors=v[:20])
store.save_projection(r, "user", ds.users["user_id"].to_numpy(), v[:, :2], {{"seed": 0}})
at = new_app("pages/embeddings.py")
assert not at.exception and at.get("plotly_chart"), at.exception
at.switch_page("pages/audience.py").run()
at.multiselect(key="aud_items").set_value(["1"]).run()
assert not at.exception and at.dataframe, at.exception
print(sorted(m for m in ("torch", "umap", "numba", "sklearn") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
