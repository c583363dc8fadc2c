"""Background training jobs (dssm_core.jobs): separate processes, status through the store.

The fast tests use stand-in processes (a Python one-liner whose command line names
``dssm_core``, as a real job's does). The ``slow`` ones start real ``python -m dssm_core
train`` jobs on a tiny synthetic set: two at once, kill -9, cancel, first-start demo.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from dssm_core import jobs, synthetic
from dssm_core.config import PRESETS, TrainConfig
from dssm_core.store import Store
from jobhelpers import kill_jobs, wait_dead

#: A small, quick configuration for real jobs on the tiny synthetic set.
SMALL = PRESETS["default"].with_(
    epochs=1, batch_size=256, embedding_dim=8, user_hidden=(32, 16), item_hidden=(32, 16),
    history_len=10, early_stopping_patience=50,
)
#: Upper bound for a tiny 1-epoch job on a busy 2-core machine (torch import included).
JOB_TIMEOUT_S = 240.0


def _sleeper(*, tag: str = "dssm_core-test", seconds: float = 120.0) -> subprocess.Popen:
    """A live process whose command line names dssm_core (like a real job's)."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds})", tag],
        start_new_session=True,
    )


def _wait_status(store: Store, run_id: int, statuses: tuple[str, ...], *,
                 timeout: float = JOB_TIMEOUT_S, min_epoch: int = 0) -> dict[str, Any]:
    """Poll the store until the run reaches one of ``statuses`` (and ``min_epoch``)."""
    end = time.monotonic() + timeout
    while True:
        run = store.get_run(run_id)
        if run["status"] in statuses and int(run.get("epoch") or 0) >= min_epoch:
            return run
        if run["status"] in ("succeeded", "failed", "cancelled") and run["status"] not in statuses:
            log = jobs.log_path(jobs.store_url(store), run_id)
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            pytest.fail(f"run {run_id} ended {run['status']}: {run.get('error')}\n{tail}")
        if time.monotonic() > end:
            pytest.fail(f"run {run_id} still {run['status']} (epoch {run.get('epoch')}) after "
                        f"{timeout:.0f} s")
        time.sleep(0.25)


@pytest.fixture()
def store_ds(sqlite_url: str, tiny_synthetic) -> Iterator[tuple[Store, int]]:
    store = Store(sqlite_url)
    ds_id = store.add_dataset(tiny_synthetic, name="tiny")
    yield store, ds_id
    kill_jobs(store)
    store.dispose()


# --------------------------------------------------------------------------- paths, argv
def test_absolute_db_url_resolves_relative_sqlite_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert jobs.absolute_db_url("sqlite:///data/x.db") == f"sqlite:///{tmp_path}/data/x.db"
    assert jobs.absolute_db_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert jobs.absolute_db_url("sqlite://") == "sqlite://"
    pg = "postgresql+psycopg://ana:s3cret@127.0.0.1:5432/dssm"
    assert jobs.absolute_db_url(pg) == pg  # password kept: it is handed to our own child


def test_data_dir_and_log_path(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/sub/store.db"
    assert jobs.data_dir(url) == tmp_path / "sub"
    assert jobs.log_path(url, 7) == (tmp_path / "sub" / "logs" / jobs.store_key(url)
                                    / "run-7.log")
    monkeypatch.setenv("DSSM_DATA_DIR", str(tmp_path / "pgdata"))
    assert jobs.data_dir("postgresql+psycopg://u@h/db") == tmp_path / "pgdata"


def test_build_command_round_trips_the_config() -> None:
    cfg = PRESETS["article"].with_(epochs=3, objective="inbatch")
    argv = jobs.build_command("sqlite:////tmp/s.db", 4, 9, cfg)
    assert argv[:4] == [sys.executable, "-m", "dssm_core", "train"]
    assert argv[4:10] == ["--db", "sqlite:////tmp/s.db", "--dataset-id", "4", "--run-id", "9"]
    assert argv[10] == "--config-json"
    assert TrainConfig.from_dict(json.loads(argv[11])) == cfg


def test_store_url_keeps_the_password() -> None:
    class FakeEngineStore:
        class engine:  # noqa: N801 - mimics Store.engine
            from sqlalchemy.engine import make_url
            url = make_url("postgresql+psycopg://ana:s3cret@db:5432/x")

    assert jobs.store_url(FakeEngineStore()) == "postgresql+psycopg://ana:s3cret@db:5432/x"


# --------------------------------------------------------------------------- is_alive
def test_is_alive_tells_live_dead_zombie_and_foreign() -> None:
    assert jobs.is_alive(None) is False
    assert jobs.is_alive(0) is False
    proc = _sleeper()
    try:
        assert jobs.is_alive(proc.pid) is True
        proc.kill()
        time.sleep(0.2)  # now a zombie of this process until reaped: must read as dead
        assert jobs.is_alive(proc.pid) is False
    finally:
        proc.kill()
        proc.wait()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process that is not one of ours (pid reuse) counts as dead
        cmdline = Path(f"/proc/{other.pid}/cmdline")
        end = time.monotonic() + 5
        while not cmdline.read_bytes() and time.monotonic() < end:
            time.sleep(0.01)  # empty while the kernel is still exec'ing: read as alive
        assert jobs.is_alive(other.pid) is False
    finally:
        other.kill()
        other.wait()


# --------------------------------------------------------------------------- reap, cancel
def test_reap_orphans_fails_only_dead_jobs(store_ds) -> None:
    store, ds_id = store_ds
    cfg = SMALL.to_dict()
    dead = _sleeper()
    dead.kill()
    dead.wait()
    live = _sleeper()
    try:
        r_dead = store.create_run(ds_id, cfg)
        store.mark_running(r_dead, dead.pid)
        r_live = store.create_run(ds_id, cfg)
        store.mark_running(r_live, live.pid)
        r_new = store.create_run(ds_id, cfg)              # queued, no pid, just created
        log = jobs.log_path(jobs.store_url(store), r_dead)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("loading data\nepoch 1 loss 0.69\nKilled\n")

        assert jobs.reap_orphans(store, stale_after_s=0) == [r_dead]
        failed = store.get_run(r_dead)
        assert failed["status"] == "failed"
        assert "stopped unexpectedly" in failed["error"]
        assert failed["error"].endswith("loading data\nepoch 1 loss 0.69\nKilled")
        assert store.get_run(r_live)["status"] == "running"
        assert store.get_run(r_new)["status"] == "queued"
        # A queued run never picked up is abandoned once past the grace period.
        assert jobs.reap_orphans(store, queued_grace_s=0.0, stale_after_s=0) == [r_new]
        assert store.get_run(r_new)["error"] == "the training process never started"
        assert store.get_run(r_live)["status"] == "running"
    finally:
        live.kill()
        live.wait()


def test_cancel_flags_live_runs_and_closes_dead_ones(store_ds) -> None:
    store, ds_id = store_ds
    url = jobs.store_url(store)
    live = _sleeper()
    try:
        r_live = store.create_run(ds_id, SMALL.to_dict())
        store.mark_running(r_live, live.pid)
        jobs.cancel(url, r_live)
        assert store.cancel_requested(r_live) is True
        assert store.get_run(r_live)["status"] == "running"  # the trainer ends it, not us
    finally:
        live.kill()
        live.wait()
    r_queued = store.create_run(ds_id, SMALL.to_dict())   # no process at all
    jobs.cancel(url, r_queued)
    assert store.get_run(r_queued)["status"] == "cancelled"
    with pytest.raises(ValueError, match="already ended"):
        jobs.cancel(url, r_queued)
    with pytest.raises(ValueError, match="no run with id 999"):
        jobs.cancel(url, 999)


def test_start_training_records_pid_and_a_crash_shows_its_log(store_ds, monkeypatch) -> None:
    """A job whose process dies is failed by reap_orphans with the end of its log."""
    store, ds_id = store_ds
    url = jobs.store_url(store)

    def crashing(db_url: str, dataset_id: int, run_id: int, cfg: TrainConfig,
                 workers: int = 1) -> list[str]:
        code = "import sys; print('loading'); sys.exit('boom: bad things')"
        return [sys.executable, "-c", code, "dssm_core", str(run_id)]

    monkeypatch.setattr(jobs, "build_command", crashing)
    run_id = jobs.start_training(url, ds_id, SMALL)
    run = store.get_run(run_id)
    assert run["status"] == "running" and run["pid"] > 0
    assert run["config"] == SMALL.to_dict()
    assert (run["preset"], run["objective"], run["protocol"]) == ("default", "pointwise", "T")
    wait_dead(run["pid"])
    assert jobs.reap_orphans(store, stale_after_s=0) == [run_id]
    error = store.get_run(run_id)["error"]
    assert error.endswith("loading\nboom: bad things")
    with pytest.raises(ValueError, match="no dataset with id 12345"):
        jobs.start_training(url, 12345, SMALL)


# --------------------------------------------------------------------------- real jobs
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Iterator[tuple[Store, int, list[int]]]:
    """Two real 1-epoch jobs started at once on the tiny synthetic set, both awaited."""
    url = f"sqlite:///{tmp_path_factory.mktemp('jobs') / 'store.db'}"
    store = Store(url)
    ds = synthetic.generate(n_users=300, n_items=120, n_interactions=6_000, seed=3)
    ds_id = store.add_dataset(ds, name="tiny")
    ids = [jobs.start_training(url, ds_id, SMALL),
           jobs.start_training(url, ds_id, SMALL.with_(objective="inbatch"))]
    try:
        for run_id in ids:
            _wait_status(store, run_id, ("succeeded",))
        yield store, ds_id, ids
    finally:
        kill_jobs(store)
        store.dispose()


@pytest.mark.slow
def test_two_jobs_train_at_once_and_succeed(two_runs) -> None:
    store, _, ids = two_runs
    for run_id, objective in zip(ids, ("pointwise", "inbatch")):
        run = store.get_run(run_id)
        assert run["status"] == "succeeded" and run["objective"] == objective
        assert list(store.epochs(run_id)["epoch"]) == [1]
        assert 0.0 < run["summary"]["test_auc"] < 1.0
        user_ids, vectors = store.load_embeddings(run_id, "user")
        assert vectors.shape == (len(user_ids), 16)
        assert jobs.log_path(jobs.store_url(store), run_id).exists()
    s0, s1 = (store.get_run(i) for i in ids)
    # They overlapped in time: the second started before the first finished.
    assert s1["started_at"] < s0["finished_at"]


@pytest.mark.slow
def test_kill_9_marks_the_job_failed_and_keeps_earlier_runs(two_runs) -> None:
    store, ds_id, ids = two_runs
    url = jobs.store_url(store)
    before = {i: (store.get_run(i)["summary"], store.load_embeddings(i, "item")[1]) for i in ids}
    run_id = jobs.start_training(url, ds_id, SMALL.with_(epochs=200))
    run = _wait_status(store, run_id, ("running",), min_epoch=1)
    os.killpg(int(run["pid"]), signal.SIGKILL)
    wait_dead(int(run["pid"]))
    assert jobs.reap_orphans(store, stale_after_s=0) == [run_id]
    dead = store.get_run(run_id)
    assert dead["status"] == "failed"
    assert "stopped unexpectedly" in dead["error"]
    assert dead["finished_at"] is not None
    for i in ids:  # earlier runs intact, artefacts bit-exact
        after = store.get_run(i)
        assert after["status"] == "succeeded"
        assert after["summary"] == before[i][0]
        np.testing.assert_array_equal(store.load_embeddings(i, "item")[1], before[i][1])


@pytest.mark.slow
def test_cancel_stops_a_running_job_at_the_next_batch(two_runs) -> None:
    store, ds_id, _ = two_runs
    url = jobs.store_url(store)
    run_id = jobs.start_training(url, ds_id, SMALL.with_(epochs=200))
    _wait_status(store, run_id, ("running",), min_epoch=1)
    jobs.cancel(url, run_id)
    run = _wait_status(store, run_id, ("cancelled",), timeout=120.0)
    assert run["epoch"] < 200
    with pytest.raises(ValueError, match="already ended"):
        jobs.cancel(url, run_id)


@pytest.mark.slow
def test_ensure_demo_adds_the_demo_once_and_starts_training(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        sizes = {"n_users": 200, "n_items": 80, "n_interactions": 3_000}
        first = jobs.ensure_demo(store, SMALL, sizes=sizes)
        assert first is not None
        ds_id, run_id = first
        (only,) = store.list_datasets()
        assert (only["id"], only["name"], only["format"]) == (ds_id, jobs.DEMO_NAME, "synthetic")
        assert (only["n_users"], only["n_interactions"]) == (200, 3_000)
        run = store.get_run(run_id)
        assert run["dataset_id"] == ds_id and run["status"] in ("queued", "running")
        assert run["config"] == SMALL.to_dict()
        assert jobs.ensure_demo(store, SMALL, sizes=sizes) is None   # not twice
        assert len(store.list_datasets()) == 1 and len(store.list_runs()) == 1
    finally:
        kill_jobs(store)
        store.dispose()


# --------------------------------------------------------------------------- secrets
def test_a_postgres_password_travels_in_the_environment_not_the_argv() -> None:
    argv_url, env = jobs._secret_free("postgresql+psycopg://ana:s3cret@db:5432/x")
    assert argv_url == "postgresql+psycopg://ana@db:5432/x"
    assert env == {"PGPASSWORD": "s3cret"}
    # nothing to hide: the URL is used as it is
    assert jobs._secret_free("sqlite:////tmp/a.db") == ("sqlite:////tmp/a.db", {})
    plain = "postgresql+psycopg://ana@db/x"
    assert jobs._secret_free(plain) == (plain, {})


@pytest.mark.slow
@pytest.mark.postgres
def test_a_job_on_postgres_trains_without_its_password_on_the_command_line(tiny_synthetic) -> None:
    from sqlalchemy.engine import make_url

    from test_store import pg_url_or_skip

    url = pg_url_or_skip()
    password = make_url(url).password
    store = Store(url)
    try:
        ds_id = store.add_dataset(tiny_synthetic, name="tiny on postgres")
        run_id = jobs.start_training(url, ds_id, SMALL)
        pid = int(store.get_run(run_id)["pid"])
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # the job already ended; its status below still has to be right
            argv = []
        # (the CI password equals the user name, so look for it in its URL position)
        assert password and not any(f":{password}@".encode() in a for a in argv)
        assert any(b"postgresql+psycopg://" in a for a in argv) or not argv
        assert _wait_status(store, run_id, ("succeeded",))["status"] == "succeeded"
    finally:
        kill_jobs(store)
        store.dispose()
