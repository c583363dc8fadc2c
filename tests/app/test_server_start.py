"""How ``streamlit run app.py`` starts with the repository's own ``.streamlit/config.toml``.

- Exposure: it listens on localhost only and shows users no tracebacks.
- The file watcher: Streamlit's default (inotify, via watchdog) watches the app's folder
  recursively, ``.venv/`` and ``data/`` included, and flooded the log with "Inotify queue
  overflowed" when a fresh clone compiled its bytecode or a training wrote the store. The server
  must hold no inotify watch at all, and its log must stay clean while files churn in ``data/``.
- First paint: the sidebar shows the app's own menu, never the raw file names of ``pages/``
  (``app, audience, …, widgets``) that Streamlit lists until the router declares the menu.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from apphelpers import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port

CONFIG = ROOT / ".streamlit" / "config.toml"


def _config() -> dict:
    with open(CONFIG, "rb") as fh:
        return tomllib.load(fh)


def test_config_listens_on_localhost_and_hides_error_details() -> None:
    from streamlit import config as st_config

    cfg = _config()
    assert cfg["server"]["address"] == "localhost"
    assert cfg["client"]["showErrorDetails"] == "none"
    # the names and values are ones this Streamlit knows (a typo would be silently ignored)
    options = st_config._config_options_template
    for section, values in cfg.items():
        for name in values:
            assert f"{section}.{name}" in options, f"unknown option {section}.{name}"
    assert "none" in {str(v) for v in st_config.ShowErrorDetailsConfigOptions}


def test_config_watches_no_folder_recursively() -> None:
    server = _config()["server"]
    # "auto"/"watchdog" watch the app's folder recursively (inotify); polling watches files
    assert server["fileWatcherType"] in ("poll", "none")
    blacklist = set(server["folderWatchBlacklist"])
    assert {".venv", "venv", "data"} <= blacklist


def test_config_hides_the_automatic_page_list() -> None:
    # pages.app_navigation switches it back on for the app's own menu
    assert _config()["client"]["showSidebarNavigation"] is False


def _start(tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    """``streamlit run app.py`` as the README says, only the port and the store are ours."""
    port = free_port()
    log = tmp_path / "server.log"
    env = dict(os.environ, DSSM_DB_URL=f"sqlite:///{tmp_path / 'store.db'}", DSSM_DEMO="off",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
        cwd=str(ROOT), env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://localhost:{port}"
    end = time.monotonic() + 90
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(base + "/_stcore/health", timeout=2):
                return proc, base, log
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError("streamlit did not answer within 90 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _inotify_watches(pid: int) -> int:
    n = 0
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            n += fdinfo.read_text().count("inotify wd:")
        except OSError:
            continue
    return n


#: Run in the page before any of its scripts: at every animation frame (what is painted next)
#: note the sidebar menu's link texts and the first heading, whenever they change.
_FRAMES_JS = """
window.__frames = [];
const tick = () => {
  const nav = document.querySelector('[data-testid="stSidebarNav"]');
  const links = nav ? Array.from(nav.querySelectorAll('a')).map(a => a.innerText.trim()) : [];
  const h1 = document.querySelector('h1');
  const state = JSON.stringify([links, h1 ? h1.innerText : ""]);
  const last = window.__frames[window.__frames.length - 1];
  if (last !== state) window.__frames.push(state);
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""


@pytest.mark.browser
@pytest.mark.slow
def test_server_first_paint_menu_and_a_quiet_watcher(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (see .ci/browser.sh)")
    if not Path("/proc/self/fdinfo").is_dir():
        pytest.skip("needs /proc to count the server's inotify watches")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import json

    proc, base, log = _start(tmp_path)
    churn = ROOT / "data" / f"_watch_probe_{os.getpid()}"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.add_init_script(_FRAMES_JS)
            page.goto(base + "/")  # the first request this server sees
            page.get_by_role("heading", name="Where to go next").wait_for()
            frames = [json.loads(f) for f in page.evaluate("window.__frames")]
            # a session is open, so the watcher has registered the app's files by now
            assert _inotify_watches(proc.pid) == 0
            # what a training or a fresh .venv does inside the app's folder
            for d in range(20):
                sub = churn / str(d)
                sub.mkdir(parents=True)
                for f in range(50):
                    (sub / f"{f}.tmp").write_bytes(b"x")
            time.sleep(1.0)
            page.reload()
            page.get_by_role("heading", name="Where to go next").wait_for()
            browser.close()
    finally:
        shutil.rmtree(churn, ignore_errors=True)
        _stop(proc)
    menus = [links for links, _ in frames if links]
    assert menus, frames
    titles = ["Home", "Data", "Train", "Runs", "Embedding maps", "Audience"]
    for links in menus:  # every painted menu is the app's own, from the first one on
        assert [text.splitlines()[-1] for text in links] == titles, frames
    text = log.read_text()
    assert "notify" not in text, text
    assert "URL: http://localhost:" in text and "Network URL" not in text, text
