"""Jobs that know their host: host + pid + heartbeat on a run, reaping by staleness, the
schema 1 -> 2 migration, logs keyed by store.

The "another host" test starts a real process that records a faked host name
(``$DSSM_HOST``) and beats through :class:`dssm_core.jobs.Heartbeat`; the staleness threshold
is a parameter, so the whole test takes a few seconds.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text, update

from dssm_core import jobs
from dssm_core import store as store_mod
from dssm_core.store import SCHEMA_VERSION, Store
from jobhelpers import wait_dead
from test_store import db_url, small_dataset, store  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store_v1.db"
HERE = "this-host"
THERE = "other-host"


def _set_heartbeat(store: Store, run_id: int, seconds_ago: float) -> None:
    beat = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    with store.engine.begin() as conn:
        conn.execute(update(store_mod.RunRow).where(store_mod.RunRow.id == run_id)
                     .values(heartbeat_at=beat))


# ----------------------------------------------------------------------------- the rule
def test_mark_running_records_host_and_a_first_heartbeat(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    before = datetime.now(timezone.utc)
    store.mark_running(rid, pid=77, host=THERE)
    run = store.get_run(rid)
    assert (run.pid, run.host) == (77, THERE)
    assert before <= run.heartbeat_at <= datetime.now(timezone.utc)
    _set_heartbeat(store, rid, 100.0)
    assert store.heartbeat(rid) is True
    assert (datetime.now(timezone.utc) - store.get_run(rid).heartbeat_at).total_seconds() < 5
    store.fail_run(rid, "x")
    assert store.heartbeat(rid) is False           # an ended run takes no heartbeat
    rid2 = store.create_run(did, {})
    store.mark_running(rid2, pid=78)               # default host: this machine
    assert store.get_run(rid2).host == __import__("socket").gethostname()


def test_reaped_only_when_stale_and_never_by_a_foreign_pid(store: Store) -> None:
    """Six runs, hand-worked: (host, heartbeat age, pid alive?) -> reaped?"""
    did = store.add_dataset(small_dataset())
    cases = {  # name: (host, seconds since heartbeat, pid, reaped)
        "there_fresh": (THERE, 1.0, 11, False),     # its pid is "dead" here: not judged
        "there_stale": (THERE, 60.0, 12, True),     # stale on another host: gone
        "here_fresh_dead_pid": (HERE, 1.0, 13, False),   # fresh heartbeat wins
        "here_stale_live_pid": (HERE, 60.0, 14, False),  # its pid still runs here
        "here_stale_dead_pid": (HERE, 60.0, 15, True),
    }
    ids = {}
    for name, (host, age, pid, _) in cases.items():
        ids[name] = store.create_run(did, {})
        store.mark_running(ids[name], pid=pid, host=host)
        _set_heartbeat(store, ids[name], age)
    legacy = store.create_run(did, {})              # a schema-1 run: no host, no heartbeat
    store.mark_running(legacy, pid=16, host=HERE)
    with store.engine.begin() as conn:
        conn.execute(update(store_mod.RunRow).where(store_mod.RunRow.id == legacy)
                     .values(host=None, heartbeat_at=None))
    asked: list[int] = []

    def alive(pid: int) -> bool:
        asked.append(pid)
        return pid == 14

    got = store.mark_orphans_failed(alive, stale_after_s=30.0, host=HERE)
    assert sorted(got) == sorted([ids["there_stale"], ids["here_stale_dead_pid"], legacy])
    assert sorted(asked) == [14, 15, 16]           # pids of other hosts never asked
    status = {r.id: str(r.status) for r in store.list_runs()}
    for name, (_, _, _, reaped) in cases.items():
        assert status[ids[name]] == ("failed" if reaped else "running"), name


def test_reap_orphans_uses_the_staleness_parameter(store: Store, monkeypatch) -> None:
    did = store.add_dataset(small_dataset())
    monkeypatch.setenv(jobs.HOST_ENV, HERE)
    rid = store.create_run(did, {})
    store.mark_running(rid, pid=999_999, host=HERE)  # a pid no process has
    _set_heartbeat(store, rid, 10.0)
    assert jobs.reap_orphans(store, stale_after_s=20.0) == []
    assert jobs.reap_orphans(store, stale_after_s=5.0) == [rid]
    assert "on this-host" in store.get_run(rid).error


# ----------------------------------------------------------------------------- another host
CHILD = r"""
import os, sys, time
from dssm_core import jobs
from dssm_core.store import Store
store = Store(sys.argv[1]); run_id = int(sys.argv[2])
store.mark_running(run_id, os.getpid(), host=jobs.host_name())
with jobs.Heartbeat(store, run_id):
    print("BEATING", flush=True)
    time.sleep(120)
"""


def test_a_training_on_another_host_lives_while_it_beats(tmp_path: Path, monkeypatch) -> None:
    """A process recording host 'other-host' (``$DSSM_HOST``) and beating every 0.2 s is
    not reaped while it beats, even though the reaper is told every pid is dead; once it
    stops beating (SIGSTOP: the process still exists) it is reaped within the threshold."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    env = {**os.environ, "PYTHONPATH": str(ROOT), jobs.HOST_ENV: THERE,
           "DSSM_HEARTBEAT_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, str(rid), "dssm_core"],
                            stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    monkeypatch.setattr(jobs, "is_alive", lambda pid: False)  # no pid may decide
    stale = 2.0
    try:
        assert proc.stdout.readline().strip() == "BEATING"
        run = store.get_run(rid)
        assert (run.host, run.pid) == (THERE, proc.pid)
        end = time.monotonic() + 3 * stale
        while time.monotonic() < end:              # fresh: never reaped
            assert jobs.reap_orphans(store, stale_after_s=stale) == []
            time.sleep(0.3)
        last = store.get_run(rid).heartbeat_at
        assert last > run.heartbeat_at                                # it did beat
        while store.get_run(rid).heartbeat_at == last:
            time.sleep(0.01)
        # stopped just after a beat's commit, not inside its next write: a process frozen
        # while holding SQLite's write lock would lock the reaper out (CI saw it once)
        os.kill(proc.pid, signal.SIGSTOP)          # alive, but silent
        stopped = time.monotonic()
        reaped: list[int] = []
        while not reaped and time.monotonic() - stopped < 10 * stale:
            reaped = jobs.reap_orphans(store, stale_after_s=stale)
            time.sleep(0.2)
        assert reaped == [rid]
        assert time.monotonic() - stopped >= stale - 0.5  # not before it went stale
        assert str(store.get_run(rid).status) == "failed"
    finally:
        proc.kill()
        proc.wait()
        store.dispose()


def test_heartbeat_stops_with_its_run(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    store.mark_running(rid, pid=5)
    beat = jobs.Heartbeat(store, rid, interval_s=0.05).start()
    store.fail_run(rid, "ended")
    beat._thread.join(timeout=5)                   # the thread ends by itself
    assert not beat._thread.is_alive()
    beat.stop()
    with pytest.raises(ValueError, match="interval_s"):
        jobs.Heartbeat(store, rid, interval_s=0)
    store.dispose()


# ----------------------------------------------------------------------------- migration
def test_a_schema_1_store_written_by_main_is_migrated(tmp_path: Path) -> None:
    """``tests/fixtures/store_v1.db`` was written by main at e325ff1 (schema 1)."""
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE_V1, path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("select version from schema_version").fetchone() == (1,)
        cols = [r[1] for r in conn.execute("pragma table_info(runs)")]
        assert "host" not in cols and "heartbeat_at" not in cols
    store = Store(f"sqlite:///{path}")
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("select version from schema_version").fetchone() \
                == (SCHEMA_VERSION,)
        old, running = store.get_run(1), store.get_run(2)
        assert (str(old.status), old.summary["test_auc"], old.host) == ("succeeded", 0.75, None)
        ids, vecs = store.load_embeddings(1, "user")
        assert list(ids) == ["u0", "u1", "u2", "u3", "u4"]
        np.testing.assert_allclose(vecs[0], [0.1257302, -0.1321049, 0.6404226, 0.1049001],
                                   atol=1e-6)
        assert (running.pid, running.host, running.heartbeat_at) == (4243, None, None)
        # an old run without a heartbeat is judged by its pid, as schema 1 did
        assert store.mark_orphans_failed(lambda pid: False, stale_after_s=30.0) == [2]
        rid = store.create_run(old.dataset_id, {})
        store.mark_running(rid, pid=1, host=THERE)
        assert store.get_run(rid).host == THERE
    finally:
        store.dispose()
    Store(f"sqlite:///{path}").dispose()            # a second open migrates nothing


def test_migration_on_each_backend(db_url: str) -> None:  # noqa: F811
    """Tables as schema 1 had them (the two columns dropped, version 1) on SQLite and on
    PostgreSQL: opening the store adds the columns, keeps the rows, bumps the version."""
    Store(db_url).dispose()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs DROP COLUMN host"))
        conn.execute(text("ALTER TABLE runs DROP COLUMN heartbeat_at"))
        conn.execute(text("UPDATE schema_version SET version = 1"))
    assert "host" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()
    store = Store(db_url)
    try:
        cols = {c["name"] for c in inspect(store.engine).get_columns("runs")}
        assert {"host", "heartbeat_at"} <= cols
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_version")).scalar() \
                == SCHEMA_VERSION == 5
        did = store.add_dataset(small_dataset())
        rid = store.create_run(did, {})
        store.mark_running(rid, pid=3, host=THERE)
        assert store.heartbeat(rid) and store.get_run(rid).host == THERE
    finally:
        store.dispose()


# ----------------------------------------------------------------------------- logs
def test_logs_are_keyed_by_store(tmp_path: Path, monkeypatch) -> None:
    a = f"sqlite:///{tmp_path / 'a.db'}"
    b = f"sqlite:///{tmp_path / 'b.db'}"
    assert jobs.log_path(a, 2) != jobs.log_path(b, 2)
    assert jobs.log_path(a, 2).parent.parent == tmp_path / "logs"
    assert jobs.log_path(a, 2).parent.name.startswith("a-")
    monkeypatch.setenv("DSSM_DATA_DIR", str(tmp_path))
    p1 = jobs.log_path("postgresql+psycopg://u:pw1@h/db1", 2)
    p2 = jobs.log_path("postgresql+psycopg://u:pw1@h/db2", 2)
    assert p1 != p2 and p1.parent.name.startswith("db1-")
    # the password is not part of the key: the app's URL and the job's (PGPASSWORD) agree
    assert jobs.log_path("postgresql+psycopg://u@h/db1", 2) == p1


def test_run_alive_judges_a_local_run_by_pid_and_another_hosts_by_heartbeat(monkeypatch) -> None:
    """What the pages ask before reaping or offering to compute maps."""
    import os
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from dssm_core import jobs

    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)
    here = jobs.host_name()
    dead_pid = 2 ** 22 + 12345                      # above any pid this machine hands out
    asked: list[int] = []
    monkeypatch.setattr(jobs, "is_alive", lambda pid: asked.append(pid) or pid == os.getpid())
    local_live = SimpleNamespace(host=here, pid=os.getpid(), heartbeat_at=None)
    local_dead = SimpleNamespace(host=None, pid=dead_pid, heartbeat_at=now)
    fresh = SimpleNamespace(host="other-host", pid=dead_pid,
                            heartbeat_at=now - timedelta(seconds=5))
    stale = SimpleNamespace(host="other-host", pid=os.getpid(),
                            heartbeat_at=(now - timedelta(seconds=31)).replace(tzinfo=None))
    never = SimpleNamespace(host="other-host", pid=os.getpid(), heartbeat_at=None)
    assert jobs.run_alive(local_live, now=now)
    assert not jobs.run_alive(local_dead, now=now)       # our pid is gone: beat or not
    assert jobs.run_alive(fresh, now=now)                # another host's pid is not judged
    assert not jobs.run_alive(stale, stale_after_s=30, now=now)   # naive datetimes are UTC
    assert not jobs.run_alive(never, now=now)
    assert asked == [os.getpid(), dead_pid]              # only this host's pids were asked
