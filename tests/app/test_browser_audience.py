"""Real browser, real server: pick an item on the Audience page, download the CSV, check it.

Same set-up as test_browser_e2e.py (Debian's /usr/bin/chromium driven by Playwright, skipped
with a message when absent). The store holds one succeeded run of seeded unit vectors over a
small synthetic dataset, so no training is needed. ``DSSM_E2E_SCREENSHOTS=/some/dir`` keeps
a screenshot of each step.
"""
from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from apphelpers import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_USERS, N_ITEMS = 200, 40
#: expect()'s wait (its default, 5 s, is short for a page rerun on a busy two-core machine).
TIMEOUT = 30_000


@pytest.fixture()
def server(tmp_path: Path):
    from dssm_core import synthetic
    from dssm_core.store import Store

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (see .ci/browser.sh)")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    ds = synthetic.generate(n_users=N_USERS, n_items=N_ITEMS, n_interactions=2_000, seed=2)
    dataset_id = store.add_dataset(ds, name="Browser demo")
    run_id = store.create_run(dataset_id, {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    rng = np.random.default_rng(0)
    u = rng.normal(size=(N_USERS, 8)).astype(np.float32)
    i = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    store.finish_run(run_id, summary={"test_auc": 0.7}, weights=b"w", encoders={},
                     user_ids=ds.users["user_id"].to_numpy(),
                     user_vectors=u / np.linalg.norm(u, axis=1, keepdims=True),
                     item_ids=ds.items["item_id"].to_numpy(),
                     item_vectors=i / np.linalg.norm(i, axis=1, keepdims=True))
    # A hand-made user map: the users on a 20 x 10 grid.
    grid = np.stack(np.divmod(np.arange(N_USERS), 10), axis=1).astype(np.float32)   # (N, 2)
    store.save_projection(run_id, "user", ds.users["user_id"].to_numpy(), grid,
                          {"seed": 0, "n_total": N_USERS, "n_projected": N_USERS,
                           "sampled": False, "n_neighbors": 15, "min_dist": 0.1})
    proc, base = start_server(url, log_file=tmp_path / "server.log")
    try:
        yield base, ds, store
    finally:
        stop_server(proc)
        store.dispose()


def _shot(page, name: str) -> None:
    folder = os.environ.get("DSSM_E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("entry", ["menu", "deep link"])
def test_pick_an_item_and_download_its_audience(server, tmp_path: Path, entry: str) -> None:
    """Via the app's menu, and via ``/audience`` as the fresh server's very first request (that
    first run is routerless, see ``widgets.route_through_app``: the picked item used to be lost).
    """
    from playwright.sync_api import expect, sync_playwright

    base, ds, _ = server
    title = str(ds.items.set_index("item_id").loc["5", "title"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(60_000)
        if entry == "menu":
            page.goto(base + "/")
            # Until app.py's first run declares the menu, Streamlit shows its automatic one
            # (one link per file of pages/): wait for the app's own menu before clicking.
            nav = page.get_by_test_id("stSidebarNav")
            expect(nav.get_by_text("Embedding maps")).to_be_visible(timeout=TIMEOUT)
            nav.get_by_role("link", name="Audience").first.click()
        else:
            page.goto(base + "/audience")
        expect(page.get_by_text("Pick one or more items to see their audience.")
               ).to_be_visible(timeout=TIMEOUT)

        # Pick item 5 by typing its title, then ask for 25 users. Each step waits for the
        # widget to show the change before the next.
        page.get_by_role("combobox", name="Items (one, or several for a campaign)").click()
        page.keyboard.type(title)
        page.get_by_role("option", name=f"{title} · id 5").click()
        # The server took the pick once it draws the audience (default size, 20 users).
        expect(page.get_by_text(f"20 users for {title}")).to_be_visible(timeout=TIMEOUT)
        page.keyboard.press("Escape")
        expect(page.get_by_role("option", name=f"{title} · id 5")).to_have_count(0)
        users = page.get_by_role("spinbutton", name="Users")
        users.fill("25")
        users.press("Enter")
        expect(page.get_by_text(f"25 users for {title}")).to_be_visible(timeout=TIMEOUT)
        _shot(page, "audience-1-members")

        with page.expect_download() as info:
            page.get_by_test_id("stDownloadButton").click()
        download = info.value
        assert download.suggested_filename.endswith(".csv")
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        browser.close()

    text = path.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    header = text.splitlines()[0].split(",")
    assert header[:4] == ["rank", "user_id", "score", "percentile"]
    assert header[-3:] == ["run_id", "item_ids", "item_titles"]
    assert len(rows) == 25
    assert [int(r["rank"]) for r in rows] == list(range(1, 26))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["item_ids"] for r in rows} == {"5"} and {r["item_titles"] for r in rows} == {title}
    # "exclude users who already interacted" is on by default: no viewer of item 5 is listed.
    inter = ds.interactions
    seen = set(inter.loc[inter["item_id"] == "5", "user_id"])
    assert not seen & {r["user_id"] for r in rows}


def test_lasso_users_on_the_map_and_find_their_lookalikes(server) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, _, store = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(60_000)
        page.goto(base + "/")
        page.get_by_role("link", name="Embedding maps").first.click()
        expect(page.get_by_text(f"{N_USERS} users of run 1")).to_be_visible(timeout=TIMEOUT)
        # Lasso (the map's default drag mode) a square in the middle of the plot area. On a
        # busy machine plotly may not take the first drag while it still draws: try again.
        picked = page.get_by_text(re.compile(r"^\d+ users selected on the map\.$"))
        for attempt in range(3):
            page.locator(".js-plotly-plot .nsewdrag").first.wait_for()
            time.sleep(1.0 + attempt)
            area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
            x0, y0 = area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.3
            page.mouse.move(x0, y0)
            page.mouse.down()
            for dx, dy in [(0.3, 0), (0.3, 0.3), (0, 0.3), (0, 0)]:
                page.mouse.move(x0 + dx * area["width"], y0 + dy * area["height"], steps=6)
            page.mouse.up()
            try:
                picked.wait_for(timeout=15_000)
                break
            except Exception:  # playwright's TimeoutError: drag again
                continue
        expect(picked).to_be_visible()
        n = int(picked.inner_text().split()[0])
        assert 1 <= n < N_USERS
        _shot(page, "maps-1-selection")
        page.get_by_role("button", name="Save as audience").click()
        expect(page.get_by_text(re.compile(r"Saved as audience 1: .Map selection"))).to_be_visible()
        (saved,) = store.list_audiences()
        assert saved["size"] == n and saved["definition"]["kind"] == "map selection"
        page.get_by_role("button", name="Find lookalikes of them").click()
        expect(page.get_by_text(f"lookalikes of {n} seed users")).to_be_visible()
        expect(page.get_by_text(f"left out: seed users {n}")).to_be_visible()     # excluded
        _shot(page, "maps-2-lookalikes")
        browser.close()
