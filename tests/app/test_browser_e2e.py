"""Real browser, real server: upload a tiny ML-100K zip, train one epoch, see it succeed.

Starts ``streamlit run app.py`` on a free loopback port with a temporary store and drives
Debian's /usr/bin/chromium with Playwright for Python (no browser download; skipped with a
message when Chromium is absent). Set ``DSSM_E2E_SCREENSHOTS=/some/dir`` to keep a
full-page screenshot of every step.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from apphelpers import CHROMIUM, CHROMIUM_ARGS, kill_jobs, ml100k_zip, start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TRAIN_TIMEOUT_MS = 240_000


@pytest.fixture()
def server(tmp_path: Path):
    from dssm_core.store import Store

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (see .ci/browser.sh)")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    proc, base = start_server(url, log_file=tmp_path / "server.log")
    store = Store(url)
    try:
        yield base, store
    finally:
        stop_server(proc)
        kill_jobs(store)
        store.dispose()


def _shot(page, name: str) -> None:
    folder = os.environ.get("DSSM_E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_upload_train_one_epoch_and_see_it_succeed(server) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, store = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)

        # Home on an empty store: says what to do next.
        page.goto(base + "/")
        expect(page.get_by_role("heading", name="Audience explorer")).to_be_visible()
        expect(page.get_by_text("No data yet. Upload a MovieLens-style file or zip")
               ).to_be_visible()
        expect(page.get_by_text("No training running")).to_be_visible()      # the sidebar
        _shot(page, "1-home-empty")

        # Data: upload the zip, preview, save under a name.
        page.goto(base + "/data")
        expect(page.get_by_text("Upload limit: 300 MB per file")).to_be_visible()
        page.locator("input[type=file]").set_input_files(files=[{
            "name": "ml-100k.zip", "mimeType": "application/zip", "buffer": ml100k_zip()}])
        expect(page.get_by_test_id("stMetricValue").filter(has_text="ml-100k")).to_be_visible()
        expect(page.get_by_test_id("stMetricValue").filter(has_text=re.compile(r"^240$"))
               ).to_be_visible()
        name = page.get_by_label("Dataset name")
        name.fill("Browser club")
        _shot(page, "2-data-preview")
        page.get_by_role("button", name="Save dataset").click()
        expect(page.get_by_text("Saved dataset “Browser club”")).to_be_visible()
        (ds,) = store.list_datasets()
        assert (ds["name"], ds["n_interactions"]) == ("Browser club", 240)

        # Train: one epoch, launched in the background, followed live.
        page.goto(base + "/train")
        epochs = page.get_by_role("spinbutton", name="Epochs (max)")
        epochs.fill("1")
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_text("Run 1 started in the background")).to_be_visible()
        _shot(page, "3-train-started")
        expect(page.get_by_text("Run 1 finished: test AUC")).to_be_visible(
            timeout=TRAIN_TIMEOUT_MS)
        _shot(page, "4-train-finished")
        run = store.get_run(1)
        # the audience preset tunes: two trials of one epoch each, numbered on
        assert run["status"] == "succeeded" and run["epoch"] == 2

        # Runs: the run is listed as succeeded with its curves.
        page.goto(base + "/runs")
        # (30 s, not expect's 5 s: the run's maps are being computed meanwhile, and on a busy
        # two-core machine the page's first run took longer than 5 s, on main too)
        expect(page.get_by_test_id("stMetricValue").filter(has_text="succeeded")).to_be_visible(
            timeout=30_000)
        expect(page.get_by_text("AUC per epoch").first).to_be_visible(timeout=30_000)
        time.sleep(1.0)  # let plotly finish drawing before the picture
        _shot(page, "5-runs")
        browser.close()
