"""Hostile names in a real browser (issue 13 item 6): every user-controlled string is text.

The store holds a dataset, an item title, a user attribute value and a saved audience whose
names carry HTML (an image, a script), Markdown (a link, an image, bold, a colour directive)
and a bare URL, all pointing at ``evil.invalid``. Every page is opened in Chromium; on each, the
strings must be readable as typed, no element may point at that host, and the browser must
request nothing outside the app's own server. Same set-up as test_browser_audience.py.
``DSSM_E2E_SCREENSHOTS=/some/dir`` keeps a screenshot of each page.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from apphelpers import (CHROMIUM, CHROMIUM_ARGS, add_random_run, browser_store, screenshot,
                        start_server, stop_server)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT = 30_000
EVIL = "evil.invalid"
#: One string with every way a name could turn live.
HOSTILE = (f'<img src="http://{EVIL}/tag.png"> ![t](http://{EVIL}/md.png) '
           f"[click](http://{EVIL}/link) <script>alert(1)</script> **bold** :red[red] "
           f"www.{EVIL}")
#: Parts of it that must read literally on the page.
LITERAL = (f"![t](http://{EVIL}/md.png)", "**bold**", ":red[red]", "<script>alert(1)</script>")
N_USERS, N_ITEMS = 60, 12


@pytest.fixture()
def server(tmp_path: Path):
    from dssm_core import synthetic

    url, store = browser_store(tmp_path)
    ds = synthetic.generate(n_users=N_USERS, n_items=N_ITEMS, n_interactions=600, seed=3)
    ds.items.loc[ds.items["item_id"] == "1", "title"] = "T " + HOSTILE
    occ = ds.users["occupation"].astype(object)
    occ.iloc[:30] = HOSTILE                                   # a filter value and a map label
    ds.users["occupation"] = occ
    dataset_id = store.add_dataset(ds, name="D " + HOSTILE)
    run_id = add_random_run(store, dataset_id, ds)
    rng = np.random.default_rng(1)
    store.save_projection(run_id, "user", ds.users["user_id"].to_numpy(),
                          rng.normal(size=(N_USERS, 2)).astype(np.float32),
                          {"seed": 0, "n_total": N_USERS, "n_projected": N_USERS,
                           "sampled": False, "n_neighbors": 15, "min_dist": 0.1})
    store.save_projection(run_id, "item", ds.items["item_id"].to_numpy(),
                          rng.normal(size=(N_ITEMS, 2)).astype(np.float32),
                          {"seed": 0, "n_total": N_ITEMS, "n_projected": N_ITEMS,
                           "sampled": False, "n_neighbors": 15, "min_dist": 0.1})
    for name in ("A " + HOSTILE, "B " + HOSTILE):
        store.save_audience(run_id, name, {"items": ["1"], "top_n": 3},
                            ds.users[["user_id"]].head(3).assign(score=[0.9, 0.8, 0.7]))
    failed = store.create_run(dataset_id, {"epochs": 1})
    store.fail_run(failed, "F " + HOSTILE)
    proc, base = start_server(url, log_file=tmp_path / "server.log")
    try:
        yield base
    finally:
        stop_server(proc)
        store.dispose()


def _nothing_live(page) -> None:
    # (*|href: plotly's SVG links are xlink:href)
    for selector in (f'img[src*="{EVIL}"]', f'a[href*="{EVIL}"]', f'[src*="{EVIL}"]',
                     f'a[*|href*="{EVIL}"]'):
        found = page.locator(selector)
        assert found.count() == 0, (selector, [found.nth(k).evaluate("e => e.closest(\"[data-testid]\").getAttribute(\"data-testid\") + \" \" + e.parentElement.parentElement.outerHTML")[:1500]
                                               for k in range(min(found.count(), 3))])


def _reads(page, text: str) -> None:
    """The page's visible text holds ``text`` as typed (the invisible word joiners that keep
    bare URLs from being linked aside)."""
    page.wait_for_function(
        "t => document.body.innerText.replaceAll('\\u2060', '').includes(t)", arg=text,
        timeout=TIMEOUT)


def test_every_page_shows_hostile_names_as_text(server) -> None:
    from playwright.sync_api import expect, sync_playwright

    base = server
    own = urlparse(base).netloc
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(60_000)

        def watch(request) -> None:
            u = urlparse(request.url)
            if u.scheme in ("http", "https", "ws", "wss") and u.netloc != own:
                outside.append(request.url)

        page.on("request", watch)
        page.on("dialog", lambda d: outside.append(f"dialog: {d.message}"))

        def visit(path: str, shot: str, wait_for: str) -> None:
            page.goto(base + path)
            expect(page.get_by_text(wait_for).first).to_be_visible(timeout=TIMEOUT)
            page.wait_for_timeout(1_500)          # let the page's last rerun settle
            screenshot(page, shot)
            _nothing_live(page)

        visit("/", "hostile-1-home", "Newest runs")
        # the dataset's name is listed in a table (canvas): the run's error is text on Train
        visit("/data", "hostile-2-data", "Saved datasets")
        page.get_by_text("Delete a dataset").click()
        for text in LITERAL:                       # the confirmation names the dataset
            _reads(page, "delete “D " + HOSTILE.split(" ![")[0][:20])
            _reads(page, text)
        _nothing_live(page)
        visit("/train", "hostile-3-train", "Recently finished")
        for text in LITERAL:                       # "✗ failed · Run 2 on D <hostile>"
            _reads(page, text)
        visit("/runs", "hostile-4-runs", "Run details")
        page.get_by_role("combobox", name="Run", exact=True).click()
        page.get_by_role("option").filter(has_text="Run 2").click()
        _reads(page, "Run 2 failed: F " + HOSTILE)
        _nothing_live(page)
        visit("/embeddings", "hostile-5-maps", "Colour by")
        page.get_by_role("combobox", name="Colour by").click()
        page.get_by_role("option", name="occupation", exact=True).click()
        legend = page.locator(".js-plotly-plot .legend")
        expect(legend.get_by_text("<img src=", exact=False).first).to_be_attached(
            timeout=TIMEOUT)
        screenshot(page, "hostile-5b-maps-coloured")
        _nothing_live(page)
        visit("/audience", "hostile-6-audience", "Pick one or more items")
        page.get_by_role("combobox", name="Items (one, or several for a campaign)").click()
        page.keyboard.type("T <img")
        page.get_by_role("option").filter(has_text="id 1 ·").first.click()
        page.keyboard.press("Escape")
        expect(page.get_by_role("heading").filter(has_text="users for T").first
               ).to_be_visible(timeout=TIMEOUT)
        heading = page.get_by_role("heading").filter(has_text="users for T").first
        assert "users for T " + HOSTILE in heading.inner_text().replace("\u2060", "")
        page.get_by_text("Save this audience as").scroll_into_view_if_needed()
        page.wait_for_timeout(1_000)
        screenshot(page, "hostile-7-audience-result")
        _nothing_live(page)
        browser.close()
    assert outside == [], outside
