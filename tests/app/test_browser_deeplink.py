"""A deep link as a fresh server's first request still runs under the router.

Streamlit treats a top-level ``pages/`` folder as its old automatic multipage mode until
``app.py`` first calls ``st.navigation``; without ``widgets._route_through_app`` a first request
for ``/audience`` ran the page alone and listed every file of ``pages/`` (``widgets`` too) in
the sidebar.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from apphelpers import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_deep_link_first_request_uses_the_app_navigation(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (see .ci/browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    proc, base = start_server(f"sqlite:///{tmp_path / 'store.db'}",
                              log_file=tmp_path / "server.log")
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base + "/audience")  # the very first request this server sees
            # 30 s: expect's 5 s default timed out at load average 10 (on main as well)
            sync_api.expect(page.get_by_role("heading", name="Audience")).to_be_visible(
                timeout=30_000)
            nav = page.get_by_test_id("stSidebarNav")
            sync_api.expect(nav.get_by_text("Embedding maps")).to_be_visible()
            sync_api.expect(nav.get_by_text("Home", exact=True).first).to_be_visible()
            assert nav.get_by_text("widgets", exact=True).count() == 0
            assert nav.get_by_text("app", exact=True).count() == 0
            browser.close()
    finally:
        stop_server(proc)
