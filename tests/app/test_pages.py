"""AppTest of the router and the Home, Data, Train and Runs pages against a temporary store."""
from __future__ import annotations

import json

import pytest

from apphelpers import add_finished_run, ml100k_zip, new_app, plain, sleeper
from dssm_core import synthetic
from dssm_core.dataset import DataValidationError

HISTORY = [
    {"epoch": 1, "train_loss": 0.69, "train_auc": 0.61, "train_logloss": 0.69,
     "val_auc": 0.60, "val_logloss": 0.68, "seconds": 1.5},
    {"epoch": 2, "train_loss": 0.62, "train_auc": 0.72, "train_logloss": 0.62,
     "val_auc": 0.70, "val_logloss": 0.63, "seconds": 1.4},
    {"epoch": 3, "train_loss": 0.58, "train_auc": 0.78, "train_logloss": 0.58,
     "val_auc": 0.73, "val_logloss": 0.61, "seconds": 1.4},
]
SUMMARY = {"test_auc": 0.75314, "test_logloss": 0.60049, "i2u_recall@50": 0.41275,
           "protocol": "T"}


def _tiny(store) -> int:
    ds = synthetic.generate(n_users=60, n_items=30, n_interactions=600, seed=1)
    return store.add_dataset(ds, name="tiny demo")


def _texts(at) -> str:
    """Every markdown, caption, info, error and success text of the page, joined."""
    parts = []
    for kind in ("markdown", "caption", "info", "error", "success", "warning", "title",
                 "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


# --------------------------------------------------------------------------- empty store
@pytest.mark.parametrize("page,expected", [
    (None, "No data yet. Upload a MovieLens-style file or zip"),
    ("pages/data.py", "Upload limit: **300 MB** per file"),
    ("pages/train.py", "There is no dataset to train on yet. Upload one first."),
    ("pages/runs.py", "No training run yet. Train a model and it will appear here."),
])
def test_every_page_renders_on_an_empty_store(app_store, page, expected) -> None:
    at = new_app(page)
    assert not at.exception
    assert expected in _texts(at)

def test_the_sidebar_names_the_store_and_counts_running_jobs(app_store) -> None:
    # (AppTest keeps the router's own elements on the first run only: check them there.)
    ds_id = _tiny(app_store)
    proc = sleeper()
    try:
        app_store.mark_running(app_store.create_run(ds_id, {"epochs": 3}), proc.pid)
        at = new_app()
        side = [str(c.value) for c in at.sidebar.caption]
        assert side[0] == f"Store: `sqlite:///{app_store.engine.url.database}`"
        assert side[1] == "▶ 1 training job(s) running — see the Train page"
    finally:
        proc.kill()
        proc.wait()


def test_the_router_lists_all_six_pages(app_store) -> None:
    at = new_app()
    assert not at.exception
    for page in ("data", "train", "runs", "embeddings", "audience"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page


# --------------------------------------------------------------------------- home
def test_home_shows_datasets_newest_runs_and_metrics(app_store) -> None:
    ds_id = _tiny(app_store)
    run_id = add_finished_run(app_store, ds_id, HISTORY, SUMMARY)
    at = new_app()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Datasets"] == "1"
    assert metrics["Trained models"] == "1"
    assert metrics["Training now"] == "0"
    assert metrics["Best test AUC"] == "0.753"
    datasets, runs = at.dataframe[0].value, at.dataframe[1].value
    assert list(datasets["Name"]) == ["tiny demo"]
    assert list(datasets["Interactions"]) == [600]
    assert list(runs["Run"]) == [run_id]
    assert runs["Test AUC"].iloc[0] == pytest.approx(0.7531)
    assert runs["Item→user recall@50"].iloc[0] == pytest.approx(0.4128)
    assert runs["Status"].iloc[0] == "✓ succeeded"


@pytest.mark.slow
def test_home_on_first_start_creates_the_demo_and_trains_it(app_store, monkeypatch) -> None:
    monkeypatch.setenv("DSSM_DEMO", "on")
    at = new_app()
    assert not at.exception
    (ds,) = app_store.list_datasets()
    assert ds["name"] == "Demo (synthetic)" and ds["n_interactions"] == 100_000
    (run,) = app_store.list_runs()
    assert run["status"] in ("queued", "running") and run["preset"] == "audience"
    text = _texts(at)
    assert "This is the first start" in text
    assert "Training in progress" in text and f"**Run {run['id']}**" in text
    # Reloading the page does not create a second demo or a second run.
    new_app()
    assert len(app_store.list_datasets()) == 1 and len(app_store.list_runs()) == 1


# --------------------------------------------------------------------------- runs
def test_runs_page_table_and_learning_curves(app_store) -> None:
    ds_id = _tiny(app_store)
    r1 = add_finished_run(app_store, ds_id, HISTORY, SUMMARY)
    r2 = add_finished_run(app_store, ds_id, HISTORY[:2], {"test_auc": 0.7, "test_logloss": 0.65},
                          objective="inbatch")
    at = new_app("pages/runs.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["Run"]) == [r2, r1]
    assert list(table["Objective"]) == ["inbatch", "pointwise"]
    assert table["Test log loss"].iloc[1] == pytest.approx(0.6005)
    assert list(table["Dataset"]) == ["tiny demo", "tiny demo"]
    # Newest succeeded run preselected; overlay the other one too.
    overlay = at.multiselect(key="runs_overlay")
    assert overlay.value == [r2]
    overlay.set_value([r2, r1]).run()
    assert not at.exception
    auc = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in auc["data"]]
    assert names == [f"Run {r2} · validation", f"Run {r2} · training",
                     f"Run {r1} · validation", f"Run {r1} · training"]
    assert auc["data"][2]["y"] == [0.60, 0.70, 0.73]          # r1 validation AUC per epoch
    assert auc["data"][3]["y"] == [0.61, 0.72, 0.78]          # r1 training AUC per epoch
    assert auc["layout"]["xaxis"]["title"]["text"].startswith("Epoch")
    assert auc["layout"]["yaxis"]["title"]["text"].startswith("AUC")
    loss = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert loss["data"][2]["y"] == [0.68, 0.63, 0.61]
    assert "Log loss" in loss["layout"]["yaxis"]["title"]["text"]
    # Details of the older run: headline numbers next to their baselines.
    at.selectbox(key="runs_detail").set_value(r1).run()
    details = at.dataframe[1].value
    assert list(details["Metric"]) == ["Test AUC (higher is better)",
                                       "Test log loss (lower is better)", "Item→user recall@50"]
    assert list(details["Model"]) == [0.75314, 0.60049, 0.41275]
    for peer in ("Popularity", "EASE", "Item mean"):   # this summary has no baselines
        assert details[peer].isna().all()
    assert list(details["Best"]) == ["Model"] * 3
    assert not at.warning or all("beats this model" not in w.value for w in at.warning)
    assert {m.label: m.value for m in at.metric}["Epochs trained"] == "3"


def test_runs_page_deletes_a_run_after_confirmation(app_store) -> None:
    ds_id = _tiny(app_store)
    r1 = add_finished_run(app_store, ds_id, HISTORY, SUMMARY)
    r2 = add_finished_run(app_store, ds_id, HISTORY, SUMMARY)
    at = new_app("pages/runs.py")
    at.selectbox(key="runs_detail").set_value(r1).run()
    assert at.button(key="del_run_go").disabled
    at.checkbox(key=f"del_run_sure_{r1}").check().run()
    at.button(key="del_run_go").click().run()
    assert not at.exception
    assert [r["id"] for r in app_store.list_runs()] == [r2]
    assert f"Deleted run {r1}." in _texts(at)


def test_a_failed_run_shows_its_error(app_store) -> None:
    ds_id = _tiny(app_store)
    run_id = app_store.create_run(ds_id, {"epochs": 2})
    app_store.fail_run(run_id, "could not fit: only one class in the training labels")
    at = new_app("pages/runs.py")
    assert "could not fit: only one class in the training labels" in plain(_texts(at))
    at = new_app("pages/train.py")
    assert not at.exception
    assert any("could not fit" in str(c.value) for c in at.code)


# --------------------------------------------------------------------------- train
def test_train_page_cancel_button_flags_the_running_job(app_store) -> None:
    ds_id = _tiny(app_store)
    proc = sleeper()
    try:
        run_id = app_store.create_run(ds_id, {"epochs": 5})
        app_store.mark_running(run_id, proc.pid)
        app_store.add_epoch(run_id, HISTORY[0])
        at = new_app("pages/train.py")
        assert not at.exception
        metrics = {m.label: m.value for m in at.metric}
        # the watched figure at the kept (best so far) epoch: AUC for this run's records
        assert metrics["Train loss"] == "0.690"
        assert metrics["Validation AUC (kept epoch)"] == "0.600"
        assert "epoch 1 of 5 done" in [p.proto.text for p in at.get("progress")]
        at.button(key=f"cancel_{run_id}").click().run()
        assert not at.exception
        assert app_store.cancel_requested(run_id) is True
    finally:
        proc.kill()
        proc.wait()


def test_train_page_rejects_bad_layer_sizes_without_starting(app_store) -> None:
    _tiny(app_store)
    at = new_app("pages/train.py")
    at.text_input[0].set_value("128, sixty-four")
    at.button[0].click().run()  # the form's "Start training"
    assert not at.exception
    errors = [plain(str(e.value)) for e in at.error]
    assert any("User tower layers: write layer sizes as whole numbers" in e for e in errors)
    assert app_store.list_runs() == []


def test_train_page_rejects_towers_of_different_output_size(app_store) -> None:
    _tiny(app_store)
    at = new_app("pages/train.py")
    at.text_input[1].set_value("128, 32")
    at.button[0].click().run()
    errors = [str(e.value) for e in at.error]
    assert any("the two towers must end in the same size" in e for e in errors)
    assert app_store.list_runs() == []


# --------------------------------------------------------------------------- data
def test_data_page_lists_and_deletes_a_dataset_after_confirmation(app_store) -> None:
    ds_id = _tiny(app_store)
    add_finished_run(app_store, ds_id, HISTORY, SUMMARY)
    at = new_app("pages/data.py")
    assert not at.exception
    assert list(at.dataframe[0].value["Name"]) == ["tiny demo"]
    assert at.button(key="del_ds_go").disabled
    sure = at.checkbox(key=f"del_ds_sure_{ds_id}")
    assert "its 1 run(s)" in sure.label
    sure.check().run()
    at.button(key="del_ds_go").click().run()
    assert not at.exception
    assert app_store.list_datasets() == [] and app_store.list_runs() == []
    assert "Deleted dataset “tiny demo”." in _texts(at)


# --------------------------------------------------------------------------- widgets
def test_show_error_names_file_line_and_column_without_traceback() -> None:
    from streamlit.testing.v1 import AppTest

    def page() -> None:
        from dssm_core.dataset import DataValidationError
        from pages import widgets

        widgets.show_error(DataValidationError("expected a number, found 'x'", file="u.data",
                                               line=3, column="rating"), what="Could not read")

    at = AppTest.from_function(page).run()
    assert not at.exception
    (err,) = at.error
    assert err.value.startswith("Could not read: the data has a problem in file **u\\.data**, "
                                "line **3**, column **rating**.")
    assert "u.data, line 3, column 'rating': expected a number, found 'x'" in plain(err.value)
    assert "Nothing was saved" in err.value
    assert "Traceback" not in err.value
    assert isinstance(DataValidationError("x"), ValueError)


def test_formatting_helpers() -> None:
    from pages import widgets

    assert widgets.fmt_metric(0.75314) == "0.753"
    assert widgets.fmt_metric(0.75314, 4) == "0.7531"
    assert widgets.fmt_metric(None) == "—" and widgets.fmt_metric(float("nan")) == "—"
    assert widgets.fmt_count(100000) == "100,000"
    assert widgets.fmt_duration(4.25) == "4.2 s"   # round-half-even at one decimal
    assert widgets.fmt_duration(42.4) == "42 s"
    assert widgets.fmt_duration(125) == "2 min 5 s"   # 125 = 2*60 + 5
    assert widgets.fmt_duration(3 * 3600 + 7 * 60) == "3 h 7 min"
    assert widgets.fmt_duration(None) == "—"
    assert widgets.fmt_time(0) == "1970-01-01 00:00"
    assert widgets.status_label("failed") == "✗ failed"


def test_upload_an_ml100k_zip_previews_and_saves_a_dataset(app_store) -> None:
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("ml-100k.zip", ml100k_zip(), "application/zip").run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    # 24 users x 10 ratings each over 16 items (see apphelpers.ml100k_zip)
    assert metrics == {"Detected format": "ml-100k", "Users": "24", "Items": "16",
                       "Interactions": "240"}
    first = at.dataframe[0].value                       # interactions, first 10 rows
    assert list(first.columns[:5]) == ["user_id", "item_id", "rating", "time (UTC)", "timestamp"]
    assert len(first) == 10
    # first row: user 1's first rating at 880,000,000 + 1 * 3,600 s = 1997-11-20 05:26:40 UTC
    assert (first["user_id"].iloc[0], first["timestamp"].iloc[0]) == ("1", 880_003_600)
    assert first["time (UTC)"].iloc[0] == "1997-11-20 05:26"
    assert app_store.list_datasets() == []              # nothing saved before "Save"
    name = next(t for t in at.text_input if t.label == "Dataset name")
    assert name.value == "ml-100k"                      # the file name, without .zip
    name.set_value("Cinema club")
    next(b for b in at.button if b.label == "Save dataset").click().run()
    assert not at.exception
    (ds,) = app_store.list_datasets()
    assert (ds["name"], ds["format"], ds["n_users"], ds["n_items"], ds["n_interactions"]) == (
        "Cinema club", "ml-100k", 24, 16, 240)
    assert f"Saved dataset “Cinema club” (id {ds['id']})" in _texts(at)


def test_generic_csv_needs_a_mapping_and_bad_rows_save_nothing(app_store) -> None:
    csv = b"customer,product,stars,when\n1,10,4,100\n2,11,x,200\n"
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("sales.csv", csv, "text/csv").run()
    assert not at.exception
    picks = {s.label: s.value for s in at.selectbox}
    # guessed from the header: customer -> user, product -> item, stars, when
    assert picks["User id column"] == "customer" and picks["Item id column"] == "product"
    assert picks["Rating column"] == "stars" and picks["Timestamp column"] == "when"
    next(b for b in at.button if b.label == "Preview with this mapping").click().run()
    assert not at.exception
    (err,) = at.error
    assert "file **sales.csv**, line **3**, column **stars**" in plain(err.value)
    assert "found 'x'" in err.value and "Nothing was saved" in err.value
    assert not [b for b in at.button if b.label == "Save dataset"]
    assert app_store.list_datasets() == []


def test_generic_csv_with_a_mapping_saves_implicit_data(app_store) -> None:
    rows = "".join(f"u{u},p{(u * 7 + k) % 9},{1_600_000_000 + 60 * (u * 5 + k)}\n"
                   for u in range(6) for k in range(4))
    csv = ("visitor,sku,time\n" + rows).encode()
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("clicks.csv", csv, "text/csv").run()
    picks = {s.label: s.value for s in at.selectbox}
    assert picks["Rating column"] == "— none —"           # no rating column: implicit
    next(b for b in at.button if b.label == "Preview with this mapping").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    # 6 visitors x 4 clicks; skus (7u + k) mod 9 over u < 6, k < 4 cover all 9 values
    assert metrics == {"Detected format": "generic", "Users": "6", "Items": "9",
                       "Interactions": "24"}
    assert "implicit feedback" in _texts(at)
    next(b for b in at.button if b.label == "Save dataset").click().run()
    (ds,) = app_store.list_datasets()
    assert (ds["name"], ds["n_interactions"], ds["rating_scale"]) == ("clicks", 24, None)


def test_mapping_form_reads_titles_genres_and_attributes(app_store) -> None:
    rows = "".join(f"c{u},p{(u * 3 + k) % 5},{1 + (u + k) % 5},{1_000 + 10 * u + k},"
                   f"Film {(u * 3 + k) % 5},Drama|Comedy,{20 + u},B{(u * 3 + k) % 5}\n"
                   for u in range(6) for k in range(3))
    csv = ("customer,product,stars,when,title,genres,age,brand\n" + rows).encode()
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("shop.csv", csv, "text/csv").run()
    assert not at.exception
    picks = {s.label: s.value for s in at.selectbox}
    # guessed from the header
    assert picks["Item title column"] == "title" and picks["Genres column"] == "genres"
    users_ms = next(m for m in at.multiselect if m.label.startswith("User attribute"))
    items_ms = next(m for m in at.multiselect if m.label.startswith("Item attribute"))
    users_ms.set_value(["age"])
    items_ms.set_value(["brand"])
    next(b for b in at.button if b.label == "Preview with this mapping").click().run()
    assert not at.exception and not at.error
    next(b for b in at.button if b.label == "Save dataset").click().run()
    (meta,) = app_store.list_datasets()
    ds = app_store.load_dataset(meta["id"])
    assert list(ds.user_columns) == ["age"] and "brand" in ds.item_columns
    items = ds.items.set_index(ds.items["item_id"].astype(str))
    assert items.loc["p1", "title"] == "Film 1"
    assert list(items.loc["p1", "genres"]) == ["Drama", "Comedy"]
    # an id column offered as an attribute too: a clear message, nothing saved
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("shop.csv", csv, "text/csv").run()
    next(m for m in at.multiselect if m.label.startswith("User attribute")).set_value(
        ["customer"])
    next(b for b in at.button if b.label == "Preview with this mapping").click().run()
    assert not at.exception
    assert any("already the user id column" in e.value for e in at.error)
    assert len(app_store.list_datasets()) == 1


def test_pages_never_import_torch_or_umap(tmp_path) -> None:
    """Home, Data, Train and Runs render without loading torch or umap (fast first paint)."""
    import subprocess
    import sys

    from apphelpers import ROOT

    script = f"""
import os, sys
os.environ.update(DSSM_DB_URL="sqlite:///{tmp_path}/s.db", DSSM_DEMO="off")
sys.path[:0] = ["{ROOT}", "{ROOT}/tests/app"]
from apphelpers import add_finished_run, new_app
from dssm_core import synthetic
from dssm_core.store import Store
store = Store(os.environ["DSSM_DB_URL"])
ds = store.add_dataset(synthetic.generate(n_users=50, n_items=20, n_interactions=400))
add_finished_run(store, ds, [{{"epoch": 1, "val_auc": 0.6}}], {{"test_auc": 0.6}})
at = new_app()
for page in ("pages/data.py", "pages/train.py", "pages/runs.py"):
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
print(sorted(m for m in ("torch", "umap", "numba", "sklearn") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_launching_a_one_epoch_training_ends_in_a_succeeded_run(app_store) -> None:
    import time

    ds = synthetic.generate(n_users=200, n_items=80, n_interactions=3_000, seed=5)
    ds_id = app_store.add_dataset(ds, name="small synthetic")
    at = new_app("pages/train.py")
    assert at.selectbox(key="train_dataset").value == ds_id
    next(n for n in at.number_input if n.label == "Epochs (max)").set_value(1)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    (run,) = app_store.list_runs()
    assert f"Run {run['id']} started in the background" in _texts(at)
    assert run["config"]["epochs"] == 1 and run["status"] in ("queued", "running")
    end = time.monotonic() + 240           # bounded wait: a tiny job on a busy 2-core machine
    while app_store.get_run(run["id"])["status"] in ("queued", "running"):
        assert time.monotonic() < end, "training did not finish within 240 s"
        time.sleep(0.5)
    done = app_store.get_run(run["id"])
    assert done["status"] == "succeeded", done.get("error")
    # the audience preset tries two settings on validation: one epoch each, numbered on
    epochs = app_store.epochs(run["id"])
    assert list(epochs["epoch"]) == [1, 2] and list(epochs["trial"]) == [1, 2]
    at.run()                               # the page, rerun, reports the finished run
    assert not at.exception
    auc = widgets_fmt(done["summary"]["test_auc"])
    assert f"Run {run['id']} finished: test AUC {auc}" in _texts(at)


def widgets_fmt(value: float) -> str:
    from pages import widgets

    return widgets.fmt_metric(value)


def test_upload_two_files_of_one_dataset(app_store) -> None:
    """ratings.csv and movies.csv uploaded side by side read as MovieLens latest."""
    ratings = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},{(u + m) % 10 / 2 + 0.5},{1_500_000_000 + 100 * (4 * u + m)}\n"
        for u in range(1, 6) for m in range(1, 5))
    movies = "movieId,title,genres\n" + "".join(
        f"{m},Film {m} (200{m}),Drama|Comedy\n" for m in range(1, 5))
    at = new_app("pages/data.py")
    up = at.file_uploader(key="upload")
    up.upload("ratings.csv", ratings.encode(), "text/csv")
    up.upload("movies.csv", movies.encode(), "text/csv")
    up.run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    # 5 users x 4 movies, every pair rated once
    assert metrics == {"Detected format": "ml-latest", "Users": "5", "Items": "4",
                       "Interactions": "20"}
    next(b for b in at.button if b.label == "Save dataset").click().run()
    (ds,) = app_store.list_datasets()
    assert (ds["name"], ds["format"], ds["n_interactions"]) == ("ratings", "ml-latest", 20)


def test_an_unreachable_store_is_a_message_not_a_traceback(tmp_path, monkeypatch) -> None:
    # A folder where the SQLite file should be: SQLite cannot open it.
    (tmp_path / "store.db").mkdir()
    monkeypatch.setenv("DSSM_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("DSSM_DEMO", "off")
    at = new_app()
    assert not at.exception
    (err,) = at.error
    assert err.value.startswith(f"Cannot open the store at `sqlite:///{tmp_path}/store.db`")
    assert "Traceback" not in err.value
    assert not at.title                                 # no page ran


# --------------------------------------------------------------- issue 14: one dataset, one copy
def _zip_with_an_unrated_item() -> bytes:
    """The tiny ML-100K zip plus item 99 in u.item that nobody rated."""
    import io
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(ml100k_zip()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("u.item"):
                data += ("99|Nobody Saw It (1990)|01-Jan-1990||http://x|" + "|".join("0" * 19)
                         + "\n").encode("latin-1")
            z.writestr(info.filename, data)
    return out.getvalue()


def test_saving_the_same_data_twice_asks_first(app_store) -> None:
    data = _zip_with_an_unrated_item()
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("ml-100k.zip", data, "application/zip").run()
    assert not at.exception
    # 16 items rated, 1 more listed: the preview says why runs will count 17
    assert {m.label: m.value for m in at.metric}["Items"] == "16"
    assert ("Items counts the 16 items with at least one interaction. The items table lists 1 "
            "more with none: a run gives them vectors too (from their attributes), so its item "
            "count is 17.") in _texts(at)
    next(b for b in at.button if b.label == "Save dataset").click().run()
    (first,) = app_store.list_datasets()
    # the same file again: nothing is stored until the user says what they want
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("ml-100k.zip", data, "application/zip").run()
    next(t for t in at.text_input if t.label == "Dataset name").set_value("Again")
    next(b for b in at.button if b.label == "Save dataset").click().run()
    assert not at.exception
    assert [d.id for d in app_store.list_datasets()] == [first.id]
    warning = plain(" ".join(w.value for w in at.warning))
    assert f"This data is already stored as “ml-100k” (id {first.id}" in warning
    at.button(key="data_dup_use").click().run()
    assert [d.id for d in app_store.list_datasets()] == [first.id]
    assert f"Nothing new stored: “ml-100k” (id {first.id}) already holds this data" in \
        plain(_texts(at))
    # ... or a second copy, on purpose
    at = new_app("pages/data.py")
    at.file_uploader(key="upload").upload("ml-100k.zip", data, "application/zip").run()
    next(t for t in at.text_input if t.label == "Dataset name").set_value("Copy")
    next(b for b in at.button if b.label == "Save dataset").click().run()
    at.button(key="data_dup_copy").click().run()
    assert not at.exception
    assert [d.name for d in app_store.list_datasets()] == ["Copy", "ml-100k"]
    assert "as another copy" in plain(_texts(at))


def test_user_text_is_made_literal_for_markdown_and_plotly() -> None:
    from pages import widgets

    wj = "\u2060"                                    # breaks remark-gfm's bare-URL autolinks
    assert widgets.md("![t](http://x.y/i.png)") == f"\\!\\[t\\]\\(http\\:{wj}//x\\.y/i\\.png\\)"
    assert widgets.md("<img src=x> **b** :red[c] $x$") == \
        "\\<img src=x\\> \\*\\*b\\*\\* \\:red\\[c\\] \\$x\\$"
    assert widgets.md("# head") == "\\# head" and widgets.md("- item") == "\\- item"
    assert widgets.md("1. one") == "1\\. one"
    assert widgets.md("www.a.b and c@d.e") == f"www{wj}\\.a\\.b and c@{wj}d\\.e"
    assert widgets.md("two\nlines") == "two lines" and widgets.md(None) == ""
    assert widgets.plot_text('<a href="x">y</a> & b') == '&lt;a href="x"&gt;y&lt;/a&gt; &amp; b'


def test_runs_and_audience_pages_say_plainly_when_a_peer_wins(app_store) -> None:
    ds_id = _tiny(app_store)
    losing = dict(SUMMARY, **{"baseline_ease_i2u_recall@50": 0.52,
                              "baseline_popularity_i2u_recall@50": 0.10, "ease_lambda": 400.0})
    add_finished_run(app_store, ds_id, HISTORY, losing)
    at = new_app("pages/runs.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert table["Against peers"].iloc[0] == "⚠ loses to EASE"
    said = [w.value for w in at.warning]
    assert any("EASE beats this model item→user" in w and "0.520" in w for w in said)
    details = at.dataframe[1].value
    row = details[details["Metric"] == "Item→user recall@50"].iloc[0]
    assert (row["EASE"], row["Popularity"], row["Best"]) == (0.52, 0.10, "EASE")
    aud = new_app("pages/audience.py")
    assert not aud.exception
    assert any("EASE beats this model item→user" in w.value for w in aud.warning)
