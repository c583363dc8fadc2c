"""dssm_core.projector: the warm projection worker, its hand-over, and the fallbacks.

The maps a worker stores must be the very maps plain umap gives (same code, same seed), a
plain CLI training without a worker must still get its maps, and a worker that dies or never
answers must not leave a training waiting for ever.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dssm_core import jobs, projection, projector
from test_projection import _store_with_run

torch.set_num_threads(1)


def _tiny_run(url: str) -> tuple[object, int]:
    """A store with one finished run of 3 users and 3 items: PCA layouts, no umap compile."""
    from dssm_core import synthetic
    from dssm_core.store import Store

    store = Store(url)
    ds = synthetic.generate(n_users=3, n_items=3, n_interactions=9, seed=1)
    run_id = store.create_run(store.add_dataset(ds), {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    vec = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)      # (3, 3)
    store.finish_run(run_id, summary={"test_auc": 0.5}, weights=b"w", encoders={},
                     user_ids=ds.users["user_id"].to_numpy(), user_vectors=vec,
                     item_ids=ds.items["item_id"].to_numpy(), item_vectors=vec)
    return store, run_id


def _serve_in_thread(url: str, **kwargs) -> tuple[threading.Thread, list[dict], list[int]]:
    """``projector.serve`` in a thread of this process (umap compiled once for the suite)."""
    events: list[dict] = []
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(projector.serve(
        url, warm=False, poll_s=0.02, emit=events.append, **kwargs)), daemon=True)
    t.start()
    end = time.monotonic() + 30
    while not projector.worker_running(url) and time.monotonic() < end:
        time.sleep(0.01)
    assert projector.worker_running(url)
    return t, events, done


def test_worker_maps_are_the_maps_of_plain_umap(sqlite_url: str) -> None:
    store, run_id = _store_with_run(sqlite_url, n_users=120, n_items=30)
    t, events, done = _serve_in_thread(sqlite_url, max_requests=1)
    out = projector.project(store, run_id)
    t.join(timeout=60)
    assert done == [1]
    assert {k: p["by"] for k, p in out.items()} == {"user": "worker", "item": "worker"}
    assert [e["stage"] for e in events] == ["started", "stored"]
    assert events[1]["run_id"] == run_id
    for kind in ("user", "item"):
        ids, xy, params = store.load_projection(run_id, kind)
        all_ids, vectors = store.load_embeddings(run_id, kind)
        np.testing.assert_array_equal(ids, all_ids)            # under max_points: every row
        # bit-identical to umap run here, same defaults (cosine, seed 0, 15 neighbours)
        np.testing.assert_array_equal(xy, projection.project(vectors, seed=0))
        assert params["method"] == "umap" and params["n_projected"] == len(all_ids)
    # the hand-over files are gone
    assert sorted(p.name for p in projector.spool_dir(sqlite_url).iterdir()) == ["worker.lock"]
    store.dispose()


def test_without_a_worker_the_maps_are_made_here(sqlite_url: str) -> None:
    store, run_id = _tiny_run(sqlite_url)
    assert not projector.worker_running(sqlite_url)
    seen: list[str] = []
    out = projector.project(store, run_id, on_progress=lambda kind, p: seen.append(kind))
    assert seen == ["user", "item"]
    assert {k: p["by"] for k, p in out.items()} == {"user": "this process",
                                                    "item": "this process"}
    assert store.load_projection(run_id, "user")[2]["method"] == "pca"
    store.dispose()


def test_a_worker_error_reaches_the_client_and_the_worker_goes_on(sqlite_url: str) -> None:
    store, run_id = _tiny_run(sqlite_url)
    t, events, done = _serve_in_thread(sqlite_url, max_requests=2)
    with pytest.raises(RuntimeError, match="run 999"):
        projector.project(store, 999)
    out = projector.project(store, run_id)                # the same worker serves the next one
    t.join(timeout=60)
    assert done == [2] and out["user"]["by"] == "worker"
    assert [e["stage"] for e in events] == ["started", "failed", "stored"]
    assert "999" in events[1]["error"]
    store.dispose()


def _hold_lock(url: str, seconds: float) -> subprocess.Popen:
    """A process that only holds the worker lock (a worker that never answers), then dies."""
    lock = projector.spool_dir(url) / projector.LOCK_NAME
    lock.parent.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_dead_worker_does_not_leave_the_client_waiting(sqlite_url: str) -> None:
    store, run_id = _tiny_run(sqlite_url)
    holder = _hold_lock(sqlite_url, 1.0)
    assert projector.worker_running(sqlite_url)
    out = projector.project(store, run_id)        # waits until the holder dies, then here
    holder.wait(timeout=10)
    assert out["user"]["by"] == "this process"
    assert not list(projector.spool_dir(sqlite_url).glob("run-*"))   # request taken back
    store.dispose()


def test_a_silent_worker_times_out(sqlite_url: str) -> None:
    store, run_id = _tiny_run(sqlite_url)
    holder = _hold_lock(sqlite_url, 60.0)
    try:
        out = projector.project(store, run_id, timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert out["item"]["by"] == "this process"
    assert store.load_projection(run_id, "item") is not None
    store.dispose()


def test_ensure_projector_starts_one_worker_that_serves_and_exits_when_idle(
        sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setenv(jobs.PROJECTOR_ENV, "on")
    store, run_id = _tiny_run(sqlite_url)
    proc = jobs.ensure_projector(sqlite_url, idle_s=1.0, warm=False)
    assert proc is not None
    try:
        end = time.monotonic() + 60
        while not projector.worker_running(sqlite_url) and time.monotonic() < end:
            assert proc.poll() is None, projector.worker_log_path(sqlite_url).read_text()
            time.sleep(0.05)
        assert jobs.ensure_projector(sqlite_url, idle_s=1.0, warm=False) is None  # one is up
        assert projector.serve(sqlite_url, warm=False) == 0       # a second worker leaves
        out = projector.project(store, run_id)
        assert out["user"]["by"] == "worker"
        assert proc.wait(timeout=60) == 0       # no request, no training: it exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not projector.worker_running(sqlite_url)
    events = [json.loads(line) for line in
              projector.worker_log_path(sqlite_url).read_text().splitlines()
              if line.startswith("{")]
    assert [e["stage"] for e in events] == ["started", "stored", "exit"]
    assert events[-1]["reason"] == "idle for 1 s"
    store.dispose()


def test_switched_off_no_worker_is_started(sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setenv(jobs.PROJECTOR_ENV, "off")
    assert jobs.ensure_projector(sqlite_url) is None
    assert not projector.worker_running(sqlite_url)


def test_start_training_starts_the_worker_before_the_training(store_ds, monkeypatch) -> None:
    store, dataset_id = store_ds
    calls: list[str] = []
    monkeypatch.setattr(jobs, "ensure_projector", lambda url, **kw: calls.append(url))
    spawned: list[list[str]] = []

    class _Proc:
        pid = 4242

    def fake_spawn(cmd, logfile, **kw):
        spawned.append(cmd)
        return _Proc()

    monkeypatch.setattr(jobs, "_spawn", fake_spawn)
    from dssm_core.config import PRESETS

    jobs.start_training(jobs.store_url(store), dataset_id, PRESETS["default"].with_(epochs=1))
    assert calls == [jobs.absolute_db_url(jobs.store_url(store))]
    assert spawned and spawned[0][2:4] == ["dssm_core", "train"]


@pytest.fixture()
def store_ds(sqlite_url: str, tiny_synthetic):
    from dssm_core.store import Store

    store = Store(sqlite_url)
    yield store, store.add_dataset(tiny_synthetic)
    store.dispose()


def test_cli_projector_help_names_its_options(capsys) -> None:
    from dssm_core import cli

    with pytest.raises(SystemExit):
        cli.main(["projector", "--help"])
    text = capsys.readouterr().out
    assert "--idle-s" in text and "--no-warm-up" in text


def test_spool_dir_is_per_store(tmp_path: Path) -> None:
    a = projector.spool_dir(f"sqlite:///{tmp_path / 'a.db'}")
    b = projector.spool_dir(f"sqlite:///{tmp_path / 'b.db'}")
    assert a != b and a.parent == b.parent == tmp_path / "projector"


def test_the_worker_stays_while_a_training_is_active(sqlite_url: str) -> None:
    store, _ = _tiny_run(sqlite_url)
    dataset_id = store.list_datasets()[0]["id"]
    training = store.create_run(dataset_id, {"epochs": 1})            # queued: active
    t, events, done = _serve_in_thread(sqlite_url, idle_s=0.1)
    time.sleep(1.0)                                   # ten idle periods with a run queued
    assert t.is_alive()
    store.fail_run(training, "stopped by the test")
    t.join(timeout=30)
    assert not t.is_alive() and done == [0]
    assert events[-1] == {**events[-1], "stage": "exit", "reason": "idle for 0.1 s"}
    store.dispose()


def test_spool_dir_is_the_same_with_or_without_the_password(monkeypatch, tmp_path) -> None:
    # the app knows the PostgreSQL password; its jobs get it in PGPASSWORD, not in the URL
    monkeypatch.setenv("DSSM_DATA_DIR", str(tmp_path))
    with_pw = projector.spool_dir("postgresql+psycopg://ana:secret@db.example:5432/dssm")
    without = projector.spool_dir("postgresql+psycopg://ana@db.example:5432/dssm")
    other = projector.spool_dir("postgresql+psycopg://ana@db.example:5432/other")
    assert with_pw == without != other
    assert with_pw.parent == tmp_path / "projector"
