"""Words on the Train and Home pages (issue 14, item 6): the objective says what its labels
really are for the chosen preset, and the Home table shows a running job's elapsed time and
every column, Started included."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from apphelpers import new_app, sleeper
from dssm_core import synthetic


def _tiny(store) -> int:
    ds = synthetic.generate(n_users=60, n_items=30, n_interactions=600, seed=1)
    return store.add_dataset(ds, name="tiny demo")


def test_train_objective_words_follow_the_preset(app_store) -> None:
    _tiny(app_store)
    at = new_app("pages/train.py")
    assert not at.exception
    at.selectbox(key="train_preset").set_value("audience").run()
    (objective,) = [r for r in at.radio if r.label == "Objective"]
    assert objective.options == [
        "Interacted or not: every rating is a positive; 4 items the user never interacted "
        "with, sampled per rating, are the negatives",
        "In-batch softmax: every rating is a positive, scored against the other items of its "
        "batch (popularity-corrected)"]
    assert not any("Like / dislike" in o for o in objective.options)
    at.selectbox(key="train_preset").set_value("default").run()
    (objective,) = [r for r in at.radio if r.label == "Objective"]
    assert objective.options[0] == ("Like / dislike: a rating above 3 is a like, the others "
                                    "are dislikes")


def test_home_shows_a_running_jobs_elapsed_time_and_fits_its_columns(app_store) -> None:
    from dssm_core.store import RunRow

    ds_id = _tiny(app_store)
    proc = sleeper()
    try:
        run_id = app_store.create_run(ds_id, {"epochs": 3}, preset="audience")
        app_store.mark_running(run_id, proc.pid)
        started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=125)
        with app_store.engine.begin() as conn:   # it started 2 min 5 s ago
            conn.execute(update(RunRow).where(RunRow.id == run_id).values(started_at=started))
        at = new_app()
        assert not at.exception
        (table,) = [d for d in at.dataframe if "Duration" in d.value.columns]
        row = table.value.iloc[0]
        assert row["Run"] == run_id and row["Status"] == "▶ running"
        assert row["Duration"].startswith("2 min ")       # not "0.0 s"
        assert list(table.proto.column_order) == [
            "Run", "Status", "Dataset", "Preset", "Test AUC", "Item→user recall@50",
            "Duration", "Started (UTC)"]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.browser
@pytest.mark.slow
def test_home_follows_a_running_job_without_a_reload(app_store, tmp_path) -> None:
    from pathlib import Path

    from apphelpers import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (see .ci/browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    ds_id = _tiny(app_store)
    proc = sleeper()
    server, base = start_server(f"sqlite:///{app_store.engine.url.database}")
    try:
        run_id = app_store.create_run(ds_id, {"epochs": 3}, preset="audience")
        app_store.mark_running(run_id, proc.pid)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(base + "/")
            page.get_by_role("heading", name="Where to go next").wait_for()
            table = page.get_by_test_id("stDataFrame").last
            sync_api.expect(table).to_contain_text("running")
            app_store.fail_run(run_id, "stopped by the test", status="cancelled")
            # no reload: the runs table polls, and the page redraws when the job has ended
            now = page.get_by_test_id("stMetric").filter(has_text="Training now")
            sync_api.expect(now.get_by_test_id("stMetricValue")).to_have_text("0")
            sync_api.expect(page.get_by_test_id("stDataFrame").last).to_contain_text(
                "cancelled")
            browser.close()
    finally:
        stop_server(server)
        proc.kill()
        proc.wait()
