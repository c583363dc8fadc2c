"""App latency: ``streamlit run app.py`` to a rendered home page, and page clicks.

Measured on ML-100K-sized data (synthetic: 943 users, 1,682 items, 100,000 interactions)
with one stored run of 10 epochs (its metrics and tiny fake artefacts: page latency does not
depend on the model), in one run, threads pinned:

0. first start: empty store, demo on: launch to heading, to the demo's live progress, and to
   "finished" (the demo trained in the background: 2,000 users, 100,000 interactions).
A. start to first paint: launch ``streamlit run app.py`` (fresh server each time) and time
   until headless Chromium shows the app's menu, then the home page's heading and its "Where
   to go next" section; also the time until the server answers its health check. Beside it,
   alternating in the same run, a one-line Streamlit app (``st.title("Hello")``): the floor
   that Streamlit itself sets. Then both once more with no compiled bytecode
   (``PYTHONPYCACHEPREFIX`` pointing at an empty folder), as on a fresh clone.
B. clicks in the browser: from a rendered page, click a sidebar link and time until the new
   page's heading is visible and Streamlit reports the script finished.
C. server-side script time per page (AppTest, no browser): the Python part of B.

Usage: OMP_NUM_THREADS=1 python bench/app_bench.py [--repeat 3] [--clicks 5] [--json FILE]
Needs /usr/bin/chromium (see .ci/browser.sh) and Playwright for Python.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from apphelpers import (  # noqa: E402
    APP, CHROMIUM, CHROMIUM_ARGS, add_finished_run, new_app, start_server, stop_server)

PAGES = [("Data", "pages/data.py", "Data"), ("Train", "pages/train.py", "Train a model"),
         ("Runs", "pages/runs.py", "Runs"), ("Home", "pages/home.py", "Audience explorer")]


def prepare_store(url: str) -> None:
    from dssm_core import synthetic
    from dssm_core.store import Store

    store = Store(url)
    ds = synthetic.generate(n_users=943, n_items=1682, n_interactions=100_000, seed=1)
    ds_id = store.add_dataset(ds, name="ML-100K-sized synthetic")
    history = [{"epoch": e, "train_loss": 0.7 - 0.02 * e, "train_auc": 0.6 + 0.02 * e,
                "train_logloss": 0.7 - 0.02 * e, "val_auc": 0.6 + 0.015 * e,
                "val_logloss": 0.7 - 0.01 * e, "seconds": 1.0} for e in range(1, 11)]
    add_finished_run(store, ds_id, history,
                     {"test_auc": 0.77, "test_logloss": 0.59, "i2u_recall@50": 0.4})
    store.dispose()


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    """Until Streamlit's "running" indicator is gone (the script run finished)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


ONE_LINER = 'import streamlit as st\nst.title("Hello")\n'


def _launch(script: Path, db_url: str, *, pycache: str | None = None):
    """``streamlit run script`` from its own folder (so with that folder's config), as the
    README says; ``pycache``: a fresh PYTHONPYCACHEPREFIX, i.e. no compiled bytecode yet (a
    fresh clone and venv). Returns (process, base url) once the health check answers."""
    import subprocess
    import urllib.request

    from apphelpers import free_port

    port = free_port()
    env = dict(os.environ, DSSM_DB_URL=db_url, DSSM_DEMO="off", PYTHONPATH=str(ROOT))
    if pycache:
        env["PYTHONPYCACHEPREFIX"] = pycache
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", script.name, "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=str(script.parent), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://localhost:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/_stcore/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.05)


def bench_first_paint(url: str, repeat: int, tmp: str) -> dict[str, list[float]]:
    """Launch to rendered page, fresh server each time: the app (menu visible; home heading and
    "Where to go next") beside a one-line Streamlit app (its heading), alternating, in the same
    run; then once each with no compiled bytecode (fresh-clone start)."""
    from playwright.sync_api import sync_playwright

    hello = Path(tmp) / "oneliner" / "hello.py"
    hello.parent.mkdir(parents=True, exist_ok=True)
    hello.write_text(ONE_LINER)
    out: dict[str, list[float]] = {k: [] for k in (
        "server_ready_s", "menu_s", "first_paint_s", "oneliner_ready_s", "oneliner_paint_s",
        "cold_menu_s", "cold_first_paint_s", "cold_oneliner_paint_s")}

    def one(page, script: Path, cold: bool, app: bool) -> tuple[float, float | None, float]:
        pycache = tempfile.mkdtemp(prefix="pyc-", dir=tmp) if cold else None
        t0 = time.perf_counter()
        proc, base = _launch(script, url, pycache=pycache)
        ready = time.perf_counter() - t0
        try:
            page.goto(base + "/")
            menu = None
            if app:
                page.get_by_test_id("stSidebarNav").get_by_text("Embedding maps").wait_for(
                    timeout=120_000)
                menu = time.perf_counter() - t0
                page.get_by_role("heading", name="Audience explorer").wait_for(timeout=120_000)
                page.get_by_role("heading", name="Where to go next").wait_for(timeout=120_000)
            else:
                page.get_by_role("heading", name="Hello").wait_for(timeout=120_000)
            return ready, menu, time.perf_counter() - t0
        finally:
            stop_server(proc)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for _ in range(repeat):
            ready, menu, paint = one(page, Path(APP), False, True)
            out["server_ready_s"].append(ready)
            out["menu_s"].append(menu)
            out["first_paint_s"].append(paint)
            ready, _, paint = one(page, hello, False, False)
            out["oneliner_ready_s"].append(ready)
            out["oneliner_paint_s"].append(paint)
        _, menu, paint = one(page, Path(APP), True, True)
        out["cold_menu_s"].append(menu)
        out["cold_first_paint_s"].append(paint)
        out["cold_oneliner_paint_s"].append(one(page, hello, True, False)[2])
        browser.close()
    return out


def bench_first_start(tmp: str) -> dict[str, float]:
    """Empty store, demo on: launch to heading, to the demo's progress, to its trained run."""
    from playwright.sync_api import sync_playwright

    from apphelpers import kill_jobs
    from dssm_core.store import Store

    url = f"sqlite:///{tmp}/first.db"
    t0 = time.perf_counter()
    proc, base = start_server(url, demo=True)
    store = Store(url)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")
            page.get_by_role("heading", name="Audience explorer").wait_for()
            t_heading = time.perf_counter() - t0
            page.get_by_text("Training in progress").wait_for(timeout=60_000)
            t_progress = time.perf_counter() - t0
            page.get_by_text("finished: test AUC").first.wait_for(timeout=600_000)
            t_trained = time.perf_counter() - t0
            browser.close()
        (run,) = store.list_runs()
    finally:
        stop_server(proc)
        kill_jobs(store)
        store.dispose()
    return {"heading_s": t_heading, "demo_progress_s": t_progress, "demo_trained_s": t_trained,
            "demo_epochs": run["epoch"], "demo_test_auc": run["summary"].get("test_auc")}


def bench_clicks(url: str, clicks: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {label: [] for label, _, _ in PAGES}
    proc, base = start_server(url)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")
            page.get_by_role("heading", name="Audience explorer").wait_for()
            wait_idle(page)
            nav = page.get_by_test_id("stSidebarNav")
            for _ in range(clicks):
                for label, _, heading in PAGES:
                    t0 = time.perf_counter()
                    nav.get_by_role("link", name=label, exact=True).click()
                    page.get_by_role("heading", name=heading, exact=True).wait_for()
                    wait_idle(page)
                    out[label].append(time.perf_counter() - t0)
            browser.close()
    finally:
        stop_server(proc)
    return out


def bench_script(url: str, clicks: int) -> dict[str, list[float]]:
    os.environ.update(DSSM_DB_URL=url, DSSM_DEMO="off")
    out: dict[str, list[float]] = {label: [] for label, _, _ in PAGES}
    at = new_app()
    for _ in range(clicks):
        for label, path, _ in PAGES:
            t0 = time.perf_counter()
            at.switch_page(path).run()
            out[label].append(time.perf_counter() - t0)
            if at.exception:
                raise RuntimeError(f"{path}: {at.exception}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="server starts to time")
    ap.add_argument("--clicks", type=int, default=5, help="rounds of page clicks")
    ap.add_argument("--only-start", action="store_true",
                    help="only A (start to first paint), not the demo, clicks or script runs")
    ap.add_argument("--json", type=Path, help="write the raw timings here")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: source .ci/browser.sh first", file=sys.stderr)
        return 2
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.db"
        prepare_store(url)
        results: dict = {"first_paint": bench_first_paint(url, args.repeat, tmp)}
        if not args.only_start:
            results.update(first_start=bench_first_start(tmp),
                           browser_click_s=bench_clicks(url, args.clicks),
                           script_run_s=bench_script(url, args.clicks))
    med = statistics.median
    if not args.only_start:
        fs = results["first_start"]
        print(f"first start (empty store, demo on): heading {fs['heading_s']:.2f} s, demo "
              f"progress shown {fs['demo_progress_s']:.2f} s, demo trained "
              f"{fs['demo_trained_s']:.1f} s ({fs['demo_epochs']} epochs, test AUC "
              f"{fs['demo_test_auc']:.3f})")
    fp = results["first_paint"]

    def line(what: str, key: str, goal: str = "") -> None:
        xs = fp[key]
        print(f"{what}: median {med(xs):.2f} s ({', '.join(f'{x:.2f}' for x in xs)}) {goal}")

    line("streamlit run app.py -> server ready", "server_ready_s")
    line("streamlit run app.py -> the app's menu visible", "menu_s")
    line("streamlit run app.py -> home page rendered", "first_paint_s", "goal <= 3 s")
    line("streamlit run hello.py (one line) -> server ready", "oneliner_ready_s")
    line("streamlit run hello.py (one line) -> heading rendered", "oneliner_paint_s")
    line("no bytecode yet: app.py -> menu visible", "cold_menu_s")
    line("no bytecode yet: app.py -> home page rendered", "cold_first_paint_s")
    line("no bytecode yet: hello.py -> heading rendered", "cold_oneliner_paint_s")
    print(f"CPU: {cpu_model()}; 1-min load average at start {load0:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}")
    if args.only_start:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return 0
    print(f"{'page':<6} {'browser click median (max)':>28} {'script run median (max)':>26}")
    for label, _, _ in PAGES:
        b, s = results["browser_click_s"][label], results["script_run_s"][label]
        print(f"{label:<6} {med(b):>20.3f} s ({max(b):.3f}) {med(s):>18.3f} s ({max(s):.3f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
