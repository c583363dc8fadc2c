"""Helpers for tests that start background jobs (imported as ``jobhelpers``)."""
from __future__ import annotations

import os
import signal
import time
from typing import Any


def wait_dead(pid: int, timeout: float = 20.0) -> None:
    """Wait (bounded) until process ``pid`` is gone."""
    from dssm_core import jobs

    end = time.monotonic() + timeout
    while jobs.is_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


def kill_jobs(store: Any) -> None:
    """Stop every still-running process of the store's runs (tests must not leak jobs)."""
    from dssm_core import jobs

    for run in store.list_runs():
        pid = run.get("pid")
        if pid and jobs.is_alive(pid):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            wait_dead(int(pid))
