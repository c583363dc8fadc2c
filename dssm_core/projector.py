"""One long-lived projection worker per store, so that maps come right after training.

umap-learn compiles its numba code in every fresh process (30-45 s of CPU on our machines,
and numba's on-disk cache only takes off about a quarter of it: umap's kernels are not marked
``cache=True``). A run's training process used to pay that after training, so the first map of
a 50k-user run came 45-80 s after its last epoch. Now:

- :func:`dssm_core.jobs.start_training` also starts (:func:`dssm_core.jobs.ensure_projector`)
  ``python -m dssm_core projector --db URL``, which runs :func:`serve`: it compiles umap once
  (:func:`dssm_core.projection.warm_up`) while the model trains, then waits for requests and
  projects each requested run with :func:`dssm_core.projection.project_run`, the same code and
  the same defaults as before, so the maps are identical. It stays warm for the next runs and
  exits after ``idle_s`` seconds with no request and no training queued or running.
- The training process (``pipeline.run_training``) and ``python -m dssm_core project`` call
  :func:`project`: when a worker is up they hand the run to it and wait for its answer,
  otherwise (no worker: a plain CLI training) they project in their own process as before.

The hand-over goes through files in one folder per store (:func:`spool_dir`, under the job
logs' data folder): ``run-R.request`` (written atomically), then the worker's
``run-R.result`` (JSON: ``ok``, ``params`` per kind, or ``error``). A worker holds an exclusive
``flock`` on ``worker.lock`` for its whole life, so "is a worker up" is one non-blocking lock
attempt, a second worker exits at once, and a killed worker frees the lock with its process.
No module-level mutable state.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

#: A worker with no request and no active training for this long exits (seconds).
IDLE_EXIT_S = 1800.0
#: How often the worker looks for requests, and a waiting client for the answer (seconds).
POLL_S = 0.2
LOCK_NAME = "worker.lock"


# --------------------------------------------------------------------------- where
def spool_dir(db_url: str) -> Path:
    """The hand-over folder of the store at ``db_url``: ``<data dir>/projector/<url hash>``."""
    from sqlalchemy.engine import make_url

    from .jobs import absolute_db_url, data_dir

    url = absolute_db_url(db_url)
    # without the password: a job's URL carries none (it travels in PGPASSWORD), the app's does
    bare = make_url(url)._replace(password=None).render_as_string(hide_password=False)
    digest = hashlib.sha256(bare.encode("utf-8")).hexdigest()[:12]
    return data_dir(url) / "projector" / digest


def worker_log_path(db_url: str) -> Path:
    """The worker's log (one JSON line per event: started, warm, stored, idle-exit)."""
    return spool_dir(db_url) / "worker.log"


def _request_path(spool: Path, run_id: int) -> Path:
    return spool / f"run-{int(run_id)}.request"


def _result_path(spool: Path, run_id: int) -> Path:
    return spool / f"run-{int(run_id)}.result"


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


def worker_running(db_url: str) -> bool:
    """True when a worker holds this store's lock (it is alive: a dead process frees it)."""
    lock = spool_dir(db_url) / LOCK_NAME
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


# --------------------------------------------------------------------------- client
def project(
    store: Any,
    run_id: int,
    *,
    kinds: Sequence[str] = ("user", "item"),
    max_points: int | None = None,
    seed: int = 0,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Store the maps of ``run_id``: by the store's warm worker when one is up, else here.

    Same arguments and return value as :func:`dssm_core.projection.project_run` (``kinds``,
    ``max_points``, ``seed``; ``{kind: params}``). ``params["by"]`` says who computed them
    ("worker" or "this process"). A worker that dies, or does not answer within
    ``timeout_s`` (None: wait as long as it lives), is replaced by projecting here. A worker's
    error is re-raised here as ``RuntimeError``.
    """
    from . import projection
    from .jobs import store_url

    max_points = projection.DEFAULT_MAX_POINTS if max_points is None else int(max_points)
    url = store_url(store)
    if worker_running(url):
        answer = _ask_worker(url, int(run_id), kinds=tuple(kinds), max_points=max_points,
                             seed=int(seed), timeout_s=timeout_s)
        if answer is not None:
            if not answer.get("ok"):
                raise RuntimeError(f"the projection worker failed on run {run_id}: "
                                   f"{answer.get('error')}")
            out = {k: {**p, "by": "worker"} for k, p in answer["params"].items()}
            if on_progress is not None:
                for kind, params in out.items():
                    on_progress(kind, params)
            return out
        log.warning("run %s: the projection worker did not answer; projecting here", run_id)
    out = projection.project_run(store, int(run_id), kinds=tuple(kinds), max_points=max_points,
                                 seed=int(seed), on_progress=on_progress)
    return {k: {**p, "by": "this process"} for k, p in out.items()}


def _ask_worker(url: str, run_id: int, *, kinds: tuple[str, ...], max_points: int, seed: int,
                timeout_s: float | None) -> dict[str, Any] | None:
    """Put a request in the spool and wait for the worker's result; None when the worker dies
    (or times out) first, with the request taken back."""
    spool = spool_dir(url)
    request, result = _request_path(spool, run_id), _result_path(spool, run_id)
    result.unlink(missing_ok=True)
    _write_atomic(request, {"run_id": run_id, "kinds": list(kinds), "max_points": max_points,
                            "seed": seed, "requested_at": time.time()})
    end = None if timeout_s is None else time.monotonic() + float(timeout_s)
    while True:
        if result.exists():
            try:
                answer = json.loads(result.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                answer = None  # being written: os.replace makes that a very short window
            if answer is not None:
                result.unlink(missing_ok=True)
                return answer
        if not worker_running(url) or (end is not None and time.monotonic() > end):
            if not result.exists():
                request.unlink(missing_ok=True)
                return None
        time.sleep(POLL_S)


# --------------------------------------------------------------------------- worker
def serve(
    db_url: str,
    *,
    warm: bool = True,
    idle_s: float = IDLE_EXIT_S,
    poll_s: float = POLL_S,
    max_requests: int | None = None,
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run the store's projection worker until idle; returns the number of runs projected.

    Returns 0 at once when another worker holds the store's lock. Otherwise: compile umap
    (``warm``), then project each request of the spool, oldest first, and write its result.
    Exits when ``max_requests`` are done, or after ``idle_s`` seconds without a request while
    no training is queued or running in the store. ``emit(event)`` gets one dict per event
    (``stage``: started, warm, stored, failed, exit); the CLI prints them as JSON lines.
    """
    from . import projection
    from .jobs import ACTIVE_STATUSES, absolute_db_url
    from .store import Store

    def say(event: dict[str, Any]) -> None:
        if emit is not None:
            emit({"time": round(time.time(), 3), "pid": os.getpid(), **event})

    url = absolute_db_url(db_url)
    spool = spool_dir(url)
    spool.mkdir(parents=True, exist_ok=True)
    with open(spool / LOCK_NAME, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say({"stage": "exit", "reason": "another worker serves this store"})
            return 0
        say({"stage": "started"})
        if warm:
            say({"stage": "warm", "seconds": round(projection.warm_up(), 2)})
        store = Store(url)
        done = 0
        idle_since = time.monotonic()
        try:
            while max_requests is None or done < max_requests:
                requests = sorted(spool.glob("run-*.request"), key=_mtime)
                if not requests:
                    if time.monotonic() - idle_since > idle_s:
                        if not any(r.get("status") in ACTIVE_STATUSES
                                   for r in store.list_runs()):
                            say({"stage": "exit", "reason": f"idle for {idle_s:g} s"})
                            break
                        idle_since = time.monotonic()  # a run trains: ask again in idle_s
                    time.sleep(poll_s)
                    continue
                _serve_one(store, spool, requests[0], say)
                done += 1
                idle_since = time.monotonic()
        finally:
            store.dispose()
    return done


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _serve_one(store: Any, spool: Path, request: Path, say: Callable[[dict], None]) -> None:
    from . import projection

    try:
        spec = json.loads(request.read_text(encoding="utf-8"))
        run_id = int(spec["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        say({"stage": "failed", "request": request.name, "error": f"unreadable request: {exc}"})
        request.unlink(missing_ok=True)
        return
    waited = round(time.time() - float(spec.get("requested_at", time.time())), 2)
    cpu0 = time.process_time()
    try:
        params = projection.project_run(
            store, run_id, kinds=tuple(spec.get("kinds") or projection.KINDS),
            max_points=int(spec.get("max_points") or projection.DEFAULT_MAX_POINTS),
            seed=int(spec.get("seed") or 0))
    except Exception as exc:  # noqa: BLE001 - reported to the waiting client, worker goes on
        log.exception("run %d: projection failed", run_id)
        answer: dict[str, Any] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        say({"stage": "failed", "run_id": run_id, "error": answer["error"]})
    else:
        answer = {"ok": True, "params": params}
        say({"stage": "stored", "run_id": run_id, "waited_s": waited,
             "seconds": {k: p["seconds"] for k, p in params.items()},
             "cpu_s": round(time.process_time() - cpu0, 2)})
    _write_atomic(_result_path(spool, run_id), answer)
    request.unlink(missing_ok=True)
