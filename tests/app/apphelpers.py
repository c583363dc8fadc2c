"""Helpers shared by the app tests (imported as ``apphelpers``)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# tests/ holds the job helpers shared with tests/test_jobs.py; subprocesses that import this
# module have only tests/app on their path.
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
from jobhelpers import kill_jobs  # noqa: E402,F401  (re-exported for the app tests)
APP = str(ROOT / "app.py")


def new_app(page: str | None = None, timeout: float = 60.0):
    """AppTest of the real router, run once, then switched to ``page`` and run again."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout).run()
    if page:
        at.switch_page(page).run()
    return at


def sleeper() -> subprocess.Popen:
    """A live process whose command line names dssm_core, standing in for a training job."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "dssm_core"],
                            start_new_session=True)


def add_finished_run(store: Any, dataset_id: int, history: list[dict[str, float]],
                     summary: dict[str, Any], *, objective: str = "pointwise") -> int:
    """A succeeded run with the given per-epoch metrics and summary (tiny fake artefacts)."""
    from dssm_core.config import PRESETS

    cfg = PRESETS["default"].with_(epochs=len(history), objective=objective)
    run_id = store.create_run(dataset_id, cfg.to_dict(), preset="default", objective=objective,
                              protocol="T")
    store.mark_running(run_id, os.getpid())
    for h in history:
        store.add_epoch(run_id, h)
    vec = np.eye(2, 4, dtype=np.float32)  # (2, 4)
    store.finish_run(run_id, summary=summary, weights=b"not-a-model", encoders={},
                     user_ids=np.array(["1", "2"]), user_vectors=vec,
                     item_ids=np.array(["10", "20"]), item_vectors=vec)
    return run_id


def ml100k_zip(n_users: int = 24, n_items: int = 16, per_user: int = 10) -> bytes:
    """A tiny zip in the ML-100K layout (top folder ml-100k/), hand-made, deterministic.

    u.data: tab separated user, item, rating, unix time; u.user and u.item pipe separated
    (u.item: id|title|release|video release|url|19 genre flags), u.genre names the flags.
    """
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
              "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
              "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    rows = []
    for u in range(1, n_users + 1):
        for k in range(per_user):
            i = (u * 3 + k * 5) % n_items + 1
            rating = 1 + (u + 2 * i) % 5
            ts = 880_000_000 + (k * n_users + u) * 3_600
            rows.append(f"{u}\t{i}\t{rating}\t{ts}")
    data = "\n".join(dict.fromkeys(rows)) + "\n"
    occupations = ["writer", "engineer", "student", "artist"]
    user = "".join(f"{u}|{18 + u % 40}|{'MF'[u % 2]}|{occupations[u % 4]}|{10000 + u}\n"
                   for u in range(1, n_users + 1))
    item_lines = []
    for i in range(1, n_items + 1):
        flags = ["0"] * 19
        flags[1 + i % 18] = "1"
        item_lines.append(f"{i}|Film {i} (199{i % 10})|01-Jan-199{i % 10}||"
                          f"http://example.invalid/{i}|" + "|".join(flags))
    item = "\n".join(item_lines) + "\n"
    genre = "".join(f"{g}|{n}\n" for n, g in enumerate(genres)) + "\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml-100k/u.data", data)
        z.writestr("ml-100k/u.user", user)
        z.writestr("ml-100k/u.item", item.encode("latin-1"))
        z.writestr("ml-100k/u.genre", genre)
    return buf.getvalue()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--mute-audio"]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db_url: str, *, demo: bool = False, timeout: float = 90.0,
                 log_file: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free loopback port against ``db_url``; waits for health.

    Returns the process (its own session: stop it with :func:`stop_server`) and the base URL.
    """
    import urllib.request

    port = free_port()
    env = dict(os.environ, DSSM_DB_URL=db_url, DSSM_DEMO="on" if demo else "off",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, base
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"streamlit did not answer on {base} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start_server` (its whole process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def plain(markdown: str) -> str:
    """Markdown source as its text reads once rendered, for the backslash escapes the pages put
    before user text (``pages.widgets.md``): ``u\\.data`` -> ``u.data``."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def screenshot(page: Any, name: str) -> None:
    """Save ``name``.png of the whole page into ``$DSSM_E2E_SCREENSHOTS`` when it is set."""
    folder = os.environ.get("DSSM_E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def add_random_run(store: Any, dataset_id: int, ds: Any, *, dim: int = 8, seed: int = 0) -> int:
    """A succeeded run of ``ds`` whose user and item vectors are seeded random unit vectors."""
    rng = np.random.default_rng(seed)
    run_id = store.create_run(dataset_id, {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    u = rng.normal(size=(len(ds.users), dim)).astype(np.float32)        # (N, D)
    i = rng.normal(size=(len(ds.items), dim)).astype(np.float32)        # (M, D)
    store.finish_run(run_id, summary={"test_auc": 0.7}, weights=b"w", encoders={},
                     user_ids=ds.users["user_id"].to_numpy(),
                     user_vectors=u / np.linalg.norm(u, axis=1, keepdims=True),
                     item_ids=ds.items["item_id"].to_numpy(),
                     item_vectors=i / np.linalg.norm(i, axis=1, keepdims=True))
    return run_id


def browser_store(tmp_path: Path) -> tuple[str, Any]:
    """Skip unless Chromium and Playwright are here; else a fresh store in ``tmp_path``."""
    import pytest

    from dssm_core.store import Store

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (see .ci/browser.sh)")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    return url, Store(url)
