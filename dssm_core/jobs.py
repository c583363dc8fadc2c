"""Background training jobs: each run trains in its own OS process, never in the UI thread.

The app (or anything else) calls :func:`start_training`; it creates the run in the store
(status ``queued``), launches ``python -m dssm_core train --db URL --dataset-id N --run-id R
--config-json ...`` in a new process session, and records the child's pid. The child reports
status, per-epoch metrics and the stage it is in with the share of it done
(``pipeline.run_training`` -> ``Store.set_progress``, read by the Train and Home pages) through
the store, so progress survives page reloads, several runs can train at once, and a server
restart does not lose them. :func:`cancel` sets the
run's cancel flag (the trainer checks it between batches); :func:`reap_orphans` marks runs
whose process died without finishing (kill -9, machine reboot) as failed.

Jobs know their host: a run records the host name and pid of its training process, and that
process stamps a heartbeat in the store every :data:`HEARTBEAT_S` seconds (:class:`Heartbeat`,
a daemon thread). A run is reaped only when its heartbeat is older than
:data:`HEARTBEAT_STALE_S` and, when it runs on this host, its pid is gone too; the pid of a run
on another host (another machine on a shared PostgreSQL store, a container) is never judged.

No module-level mutable state: everything lives in the store and in the OS.
"""
from __future__ import annotations

import json
import logging
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from .config import PRESETS, TrainConfig
from .records import ACTIVE_STATUSES  # run statuses: one definition, records.RunStatus
from .urls import masked_url

log = logging.getLogger(__name__)

#: Name given to the synthetic demo dataset created on first start.
DEMO_NAME = "Demo (synthetic)"
#: Lines of a dead job's log quoted in its error text.
LOG_TAIL_LINES = 15
#: A run still queued with no process after this many seconds is considered abandoned.
QUEUED_GRACE_S = 300.0
#: Seconds between two heartbeats of a training process (``$DSSM_HEARTBEAT_S`` overrides).
HEARTBEAT_S = 5.0
#: A run whose heartbeat is older than this is presumed dead (then, on its own host, its pid
#: is checked too). Several heartbeats long, so a loaded machine does not lose a live run.
HEARTBEAT_STALE_S = 30.0
#: Env: the host name a training process records (default ``socket.gethostname()``); set it
#: where several containers share one host name.
HOST_ENV = "DSSM_HOST"
#: The repository root (parent of the ``dssm_core`` package), put on the child's PYTHONPATH.
_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- paths
def absolute_db_url(db_url: str) -> str:
    """The URL with a relative SQLite file path made absolute (the child may not share our cwd).

    Other URLs (PostgreSQL, in-memory SQLite) are returned unchanged.
    """
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not url.database.startswith("file:"):
            url = url.set(database=str(Path(url.database).expanduser().resolve()))
    return url.render_as_string(hide_password=False)


def data_dir(db_url: str) -> Path:
    """Where job logs and locks go: the SQLite file's folder, else ``$DSSM_DATA_DIR`` (./data)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve().parent
    return Path(os.environ.get("DSSM_DATA_DIR", "data")).resolve()


def store_key(db_url: str) -> str:
    """A folder name unique to one store: a readable stem (the SQLite file's name or the
    database's) and 10 hex digits of the URL's SHA-256 (the password left out). Two stores
    that share a data folder (several SQLite files in one folder, several PostgreSQL
    databases under one ``$DSSM_DATA_DIR``) never share a log."""
    url = make_url(absolute_db_url(db_url))
    bare = url._replace(password=None).render_as_string(hide_password=False)
    digest = hashlib.sha256(bare.encode("utf-8")).hexdigest()[:10]
    name = Path(url.database or url.get_backend_name()).stem or url.get_backend_name()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40].strip("._") or "store"
    return f"{stem}-{digest}"


def log_path(db_url: str, run_id: int) -> Path:
    """The file the training process of ``run_id`` writes its stdout and stderr to:
    ``<data dir>/logs/<store key>/run-R.log`` (see :func:`store_key`)."""
    return data_dir(db_url) / "logs" / store_key(db_url) / f"run-{int(run_id)}.log"


def host_name() -> str:
    """The host name a training process records: ``$DSSM_HOST``, else the machine's name."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


def heartbeat_interval() -> float:
    """Seconds between heartbeats: ``$DSSM_HEARTBEAT_S`` if a positive number, else
    :data:`HEARTBEAT_S`."""
    try:
        value = float(os.environ.get("DSSM_HEARTBEAT_S", ""))
    except ValueError:
        return HEARTBEAT_S
    return value if value > 0 else HEARTBEAT_S


class Heartbeat:
    """A daemon thread that calls ``store.heartbeat(run_id)`` every ``interval_s`` seconds
    while the context is open (and stops by itself once the run has ended). A failed write
    is logged and retried at the next beat: the heartbeat never fails a training."""

    def __init__(self, store: Any, run_id: int, interval_s: float | None = None) -> None:
        self.store = store
        self.run_id = int(run_id)
        self.interval_s = float(interval_s if interval_s is not None else heartbeat_interval())
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.store.heartbeat(self.run_id):
                    return  # the run has ended
            except Exception as exc:  # noqa: BLE001 - a busy or lost database: try again
                log.warning("run %d: heartbeat not written: %s", self.run_id, exc)

    def start(self) -> "Heartbeat":
        """Start beating (idempotent); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"heartbeat-run-{self.run_id}")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def store_url(store: Any) -> str:
    """The database URL of a ``Store``, password included (it is handed to our own child)."""
    engine = getattr(store, "engine", None)
    if engine is not None:
        return engine.url.render_as_string(hide_password=False)
    url = getattr(store, "url", None)
    if isinstance(url, str) and url:
        return url
    raise ValueError("the store has neither an 'engine' nor a 'url' attribute")


def _open_store(db_url: str) -> Any:
    from .store import Store

    return Store(db_url)


# --------------------------------------------------------------------------- processes
def is_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live (not zombie) process that is one of our training jobs.

    A child of this process that has exited is reaped here (it would otherwise linger as a
    zombie, which ``kill(pid, 0)`` reports as alive). Where ``/proc`` exists, a pid that was
    reused by an unrelated program (its command line does not mention ``dssm_core``) counts
    as dead; an empty command line (a program in the middle of exec) counts as alive.
    """
    if pid is None or int(pid) <= 0:
        return False
    pid = int(pid)
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the OS below
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else; cannot tell more
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            state = stat[stat.rindex(")") + 2:].split()[0]
            if state in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            # Empty while the kernel is still setting up a just-exec'd program: alive.
            return not cmdline.strip() or b"dssm_core" in cmdline
        except (OSError, ValueError, IndexError):
            return False
    return True


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _spawn(cmd: list[str], logfile: Path, *, threads: int, append: bool = True,
           extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` (an argv list, no shell) detached in its own process session, stdout and
    stderr to ``logfile``, with the repository on its PYTHONPATH."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("MKL_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    with open(logfile, "ab" if append else "wb") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True,
        )


# --------------------------------------------------------------------------- public API
def projection_log_path(db_url: str, run_id: int) -> Path:
    """The log of the background ``project`` process of ``run_id`` (one JSON line a stage)."""
    return data_dir(db_url) / "logs" / f"project-{int(run_id)}.log"


def _secret_free(db_url: str) -> tuple[str, dict[str, str]]:
    """``(url for the child's argv, extra environment)``: a PostgreSQL password travels in
    ``PGPASSWORD`` (libpq reads it), never on a command line that ``ps`` shows to every user."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.password and url.get_backend_name() == "postgresql":
        # URL is a NamedTuple; ``set(password=None)`` would keep the password
        return (url._replace(password=None).render_as_string(hide_password=False),
                {"PGPASSWORD": str(url.password)})
    return db_url, {}


def start_projection(db_url: str, run_id: int) -> tuple[subprocess.Popen, Path]:
    """Compute and store the UMAP maps of ``run_id`` in a background process
    (``python -m dssm_core project --db URL --run R``); returns the process and its log."""
    db_url = absolute_db_url(db_url)
    logfile = projection_log_path(db_url, run_id)
    argv_url, secret_env = _secret_free(db_url)
    cmd = [sys.executable, "-m", "dssm_core", "project", "--db", argv_url,
           "--run", str(int(run_id))]
    return _spawn(cmd, logfile, threads=1, append=False, extra_env=secret_env), logfile


#: Env switch: ``DSSM_PROJECTOR=off`` keeps maps in each training process (no warm worker).
PROJECTOR_ENV = "DSSM_PROJECTOR"


def projector_enabled() -> bool:
    """False when ``$DSSM_PROJECTOR`` is off/0/false/no (the test suite sets it off)."""
    return os.environ.get(PROJECTOR_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def ensure_projector(db_url: str, *, idle_s: float | None = None,
                     warm: bool = True) -> subprocess.Popen | None:
    """Start the store's long-lived projection worker unless one is up (or it is switched
    off); returns the new process, or None. The worker compiles umap at once, so by the end
    of the training that called this, maps take only their own seconds (see ``projector``).
    ``idle_s``: it exits after that long with nothing to do (default ``IDLE_EXIT_S``)."""
    from . import projector

    if not projector_enabled():
        return None
    db_url = absolute_db_url(db_url)
    if projector.worker_running(db_url):
        return None
    argv_url, secret_env = _secret_free(db_url)
    cmd = [sys.executable, "-m", "dssm_core", "projector", "--db", argv_url]
    if idle_s is not None:
        cmd += ["--idle-s", str(float(idle_s))]
    if not warm:
        cmd.append("--no-warm-up")
    logfile = projector.worker_log_path(db_url)
    proc = _spawn(cmd, logfile, threads=1, extra_env=secret_env)
    log.info("projection worker %d started for %s (log %s)", proc.pid, masked_url(db_url),
             logfile)
    return proc


def build_command(db_url: str, dataset_id: int, run_id: int, cfg: TrainConfig,
                  workers: int = 1) -> list[str]:
    """The argv of the training process for one run (no shell is involved); ``workers`` > 1
    trains with that many local torch.distributed processes (the CLI starts torchrun)."""
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return [
        sys.executable, "-m", "dssm_core", "train",
        "--db", db_url,
        "--dataset-id", str(int(dataset_id)),
        "--run-id", str(int(run_id)),
        "--config-json", json.dumps(cfg.to_dict(), sort_keys=True),
    ] + (["--workers", str(int(workers))] if int(workers) > 1 else [])


def start_training(db_url: str, dataset_id: int, cfg: TrainConfig, workers: int = 1) -> int:
    """Create a queued run for ``dataset_id`` and train it in a new background process.

    The child runs in its own process session (closing the browser tab or stopping the
    Streamlit script does not stop it), writes stdout/stderr to :func:`log_path`, and reports
    progress through the store. Returns the new run id at once.
    Raises ``ValueError`` for an unknown dataset. ``workers``: see :func:`build_command`.
    """
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    db_url = absolute_db_url(db_url)
    store = _open_store(db_url)
    try:
        store.get_dataset(int(dataset_id))  # StoreError (a ValueError) when unknown
        run_id = int(store.create_run(
            int(dataset_id), cfg.to_dict(),
            preset=cfg.preset, objective=cfg.objective, protocol=cfg.protocol,
        ))
        logfile = log_path(db_url, run_id)
        argv_url, secret_env = _secret_free(db_url)
        cmd = build_command(argv_url, dataset_id, run_id, cfg, workers=int(workers))
        try:  # warms up while this run trains; maps come right after it
            ensure_projector(db_url)
        except OSError as exc:  # the run projects in its own process instead
            log.warning("could not start the projection worker: %s", exc)
        try:
            proc = _spawn(cmd, logfile, threads=int(cfg.num_threads), extra_env=secret_env)
        except OSError as exc:
            store.fail_run(run_id, f"could not start the training process: {exc}")
            raise
        # Record the pid at once so reap_orphans can tell a dead job from one still starting.
        # The child marks itself running with the same pid once its imports are done.
        try:
            store.mark_running(run_id, proc.pid, host=host_name())
        except ValueError:  # the child already ended the run (it failed fast, or finished)
            log.info("run %d ended before its pid was recorded", run_id)
        log.info("run %d: training process %d started (log %s)", run_id, proc.pid, logfile)
    finally:
        store.dispose()
    return run_id


def cancel(db_url: str, run_id: int) -> None:
    """Ask run ``run_id`` to stop: its trainer checks the flag between batches and marks the
    run cancelled. A queued/running run whose process is already gone is marked cancelled
    here. Raises ``ValueError`` when the run does not exist or has already ended.
    """
    db_url = absolute_db_url(db_url)
    store = _open_store(db_url)
    try:
        run = store.get_run(int(run_id))  # StoreError (a ValueError) when unknown
        if run.get("status") not in ACTIVE_STATUSES:
            raise ValueError(
                f"run {run_id} has already ended ({run.get('status')}); nothing to cancel")
        store.request_cancel(int(run_id))
        if run.get("host") in (None, host_name()) and not is_alive(run.get("pid")):
            store.fail_run(int(run_id), "cancelled before its process ran", status="cancelled")
    finally:
        store.dispose()


def run_alive(run: Any, *, stale_after_s: float = HEARTBEAT_STALE_S,
              now: datetime | None = None) -> bool:
    """Whether a run's training process looks alive to a page: a run of this host (or with
    no host recorded) by its pid, a run of another host by a heartbeat fresher than
    ``stale_after_s`` (its pid means nothing here)."""
    if getattr(run, "host", None) in (None, host_name()):
        return is_alive(getattr(run, "pid", None))
    beat = getattr(run, "heartbeat_at", None)
    if beat is None:
        return False
    beat = beat if beat.tzinfo is not None else beat.replace(tzinfo=timezone.utc)
    current = now if now is not None else datetime.now(timezone.utc)
    return (current - beat).total_seconds() <= float(stale_after_s)


def reap_orphans(store: Any, *, queued_grace_s: float = QUEUED_GRACE_S,
                 stale_after_s: float = HEARTBEAT_STALE_S) -> list[int]:
    """Mark queued/running runs whose process is gone as failed; returns their ids.

    Gone: the heartbeat is older than ``stale_after_s`` seconds and, for a run of this host
    (:func:`host_name`), its pid is dead as well (see ``Store.mark_orphans_failed``).

    Called when the app starts (and whenever the progress view sees a dead job): jobs killed
    with the server or by kill -9 would otherwise show "running" for ever. The store re-checks
    each run's status inside its write transaction, so a run that finishes meanwhile is left
    alone. The error text then quotes the last lines of the job's log. A run still queued
    without a pid ``queued_grace_s`` after it was created (its launcher died between creating
    it and starting the process) is failed too.
    """
    url = store_url(store)
    reaped = [int(r) for r in store.mark_orphans_failed(
        is_alive, stale_after_s=stale_after_s, host=host_name())]
    now = datetime.now(timezone.utc)
    for run in store.list_runs():
        created = run.get("created_at")
        if (run.get("status") == "queued" and run.get("pid") is None
                and isinstance(created, datetime)
                and (now - _aware(created)).total_seconds() > queued_grace_s):
            try:
                store.fail_run(int(run["id"]), "the training process never started")
            except ValueError:
                continue
            reaped.append(int(run["id"]))
    for run_id in reaped:
        tail = _log_tail(log_path(url, run_id))
        run = store.get_run(run_id)
        if run.get("status") == "failed" and (tail or run.get("pid") is not None):
            text = f"{run.get('error') or 'the training process stopped unexpectedly'}"
            if run.get("pid") is not None:
                text += (f" (pid {run.get('pid')} on {run.get('host') or 'this host'}: no "
                         "heartbeat; killed, crashed, or its machine or server stopped)")
            if tail:
                text += f".\nLast lines of its log:\n{tail}"
            try:
                store.fail_run(run_id, text)
            except ValueError:
                pass
        log.warning("run %d: its process is gone; marked failed", run_id)
    return reaped


def active_runs(store: Any) -> list[dict[str, Any]]:
    """The runs that are queued or training right now (newest first, as the store lists)."""
    return [r for r in store.list_runs() if r.get("status") in ACTIVE_STATUSES]


def ensure_demo(
    store: Any, cfg: TrainConfig | None = None, *, sizes: dict[str, int] | None = None
) -> tuple[int, int] | None:
    """On first start (no dataset in the store) add the synthetic demo and start training it.

    Returns ``(dataset_id, run_id)`` when it did so, ``None`` when the store already had a
    dataset. A file lock in :func:`data_dir` keeps two app sessions (or two servers on one
    store) from both creating the demo. ``sizes`` are ``synthetic.generate`` arguments
    (defaults: about 2,000 users, 1,000 items, 100,000 interactions).
    """
    import fcntl

    from . import synthetic

    url = store_url(store)
    lock = data_dir(url) / ".demo.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if store.list_datasets():
                return None
            ds = synthetic.generate(**(sizes or {}))
            dataset_id = int(store.add_dataset(ds, name=DEMO_NAME))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    run_id = start_training(url, dataset_id, cfg or PRESETS["audience"])
    log.info("first start: demo dataset %d added, training run %d", dataset_id, run_id)
    return dataset_id, run_id
