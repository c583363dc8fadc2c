"""The store: datasets, runs, weights, embeddings, projections and audiences.

Every test here runs on SQLite and, when ``DSSM_TEST_PG_URL`` names a PostgreSQL server that
answers (``.ci/postgres.sh`` starts one in CI), on PostgreSQL too (the ``db_url`` fixture).
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select, text

from dssm_core import store as store_mod
from dssm_core.dataset import Dataset
from dssm_core.records import AudienceInfo, DatasetInfo, RunInfo, RunStatus
from dssm_core.store import ORPHAN_ERROR, SCHEMA_VERSION, Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
PG_ENV = "DSSM_TEST_PG_URL"


def pg_url_or_skip() -> str:
    """The PostgreSQL test URL, with every table dropped; skips when no server answers."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server to test against "
                    "(.ci/postgres.sh starts one)")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any connection failure means "no server here"
        pytest.skip(f"no PostgreSQL server answers at {PG_ENV}: {str(exc).splitlines()[0]}")
    store_mod.Base.metadata.drop_all(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return pg_url_or_skip()


@pytest.fixture()
def store(db_url: str):
    s = Store(db_url)
    yield s
    s.dispose()


def small_dataset() -> Dataset:
    """Three users, three items (list-valued genres, one title that is a formula)."""
    return Dataset(
        interactions=pd.DataFrame({
            "user_id": ["u1", "u2", "u1", "u3"], "item_id": ["i1", "i1", "i2", "i3"],
            "rating": np.array([5, 3, 4, 1], dtype=np.float32),
            "timestamp": np.array([10, 20, 30, 40], dtype=np.int64)}),
        users=pd.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", "F"],
                            "age": [25, 40, 31]}),
        items=pd.DataFrame({"item_id": ["i1", "i2", "i3"],
                            "title": ["Alpha (1990)", "=Beta()", "Gamma"],
                            "genres": [["Drama", "Romance"], [], ["Comedy"]],
                            "year": np.array([1990, 1991, 1992], dtype=np.int64)}),
        format="ml-100k", name="tiny", rating_scale=(1.0, 5.0), warnings=["w1"],
        truth={"user_group": pd.Series([0, 1, 0], index=["u1", "u2", "u3"], name="group"),
               "group_names": ["a", "b"]},
    )


def finished_run(store: Store, dataset_id: int, *, n_users: int = 3, dim: int = 4,
                 seed: int = 0) -> tuple[int, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    uvec = rng.standard_normal((n_users, dim)).astype(np.float32)
    ivec = rng.standard_normal((3, dim)).astype(np.float32)
    rid = store.create_run(dataset_id, {"epochs": 2}, preset="default", objective="pointwise",
                           protocol="T")
    store.mark_running(rid, pid=os.getpid())
    store.finish_run(rid, summary={"test_auc": 0.75}, weights=b"\x00w\xff",
                     encoders={"history_len": 5},
                     user_ids=[f"u{k + 1}" for k in range(n_users)], user_vectors=uvec,
                     item_ids=["i1", "i2", "i3"], item_vectors=ivec)
    return rid, uvec, ivec


def count(store: Store, table, **where) -> int:
    with store.engine.connect() as conn:
        q = select(func.count()).select_from(table)
        for col, val in where.items():
            q = q.where(getattr(table.c, col) == val)
        return int(conn.execute(q).scalar_one())


# ----------------------------------------------------------------------------- datasets
def test_dataset_round_trip_is_exact(store: Store) -> None:
    ds = small_dataset()
    did = store.add_dataset(ds)
    back = store.load_dataset(did)
    for name in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(ds, name))
    assert back.items["genres"].tolist() == [["Drama", "Romance"], [], ["Comedy"]]
    assert isinstance(back.items["genres"].iloc[0], list)
    assert (back.format, back.name, back.rating_scale, back.warnings) == \
        ("ml-100k", "tiny", (1.0, 5.0), ["w1"])
    assert back.truth["group_names"] == ["a", "b"]
    assert back.truth["user_group"].to_dict() == {"u1": 0, "u2": 1, "u3": 0}
    meta = store.get_dataset(did)
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (3, 3, 4)
    assert [d["id"] for d in store.list_datasets()] == [did]
    # the same content hashes the same; a changed rating does not
    did2 = store.add_dataset(ds, name="again")
    assert store.get_dataset(did2)["content_hash"] == meta["content_hash"]
    assert store.find_dataset(meta["content_hash"]) == did2
    ds.interactions.loc[0, "rating"] = 4.0
    assert store.get_dataset(store.add_dataset(ds))["content_hash"] != meta["content_hash"]


def test_loading_a_dataset_gives_its_decoding_memory_back(store: Store, monkeypatch) -> None:
    """Once the tables are converted (their Parquet dropped), the heaps' free pages go back:
    Arrow's pool kept 0.61 GB of a 25M-interaction load resident for the whole run."""
    did = store.add_dataset(small_dataset())
    seen: list[bool] = []
    monkeypatch.setattr(store_mod, "return_freed_memory", lambda: seen.append(True))
    back = store.load_dataset(did)
    assert seen == [True] and len(back.interactions) == 4


def test_freed_memory_goes_back_from_arrows_pool_too(monkeypatch) -> None:
    """``heap.return_freed_memory`` asks Arrow's default pool (where pyarrow is loaded) to
    release what it keeps, and a pyarrow without the call is no error."""
    import types

    from dssm_core import heap

    released: list[bool] = []
    pool = types.SimpleNamespace(release_unused=lambda: released.append(True))
    monkeypatch.setitem(sys.modules, "pyarrow",
                        types.SimpleNamespace(default_memory_pool=lambda: pool))
    heap.return_freed_memory()
    assert released == [True]
    monkeypatch.setitem(sys.modules, "pyarrow", types.SimpleNamespace())
    heap.return_freed_memory()                           # no default_memory_pool: nothing


def test_implicit_dataset_and_synthetic_round_trip(store: Store, tiny_synthetic) -> None:
    ds = small_dataset()
    ds.rating_scale = None
    back = store.load_dataset(store.add_dataset(ds))
    assert back.rating_scale is None and back.implicit
    syn = store.load_dataset(store.add_dataset(tiny_synthetic))
    pd.testing.assert_frame_equal(syn.items, tiny_synthetic.items)
    pd.testing.assert_frame_equal(syn.interactions, tiny_synthetic.interactions)
    assert syn.truth["user_group"].astype(int).tolist() == \
        tiny_synthetic.truth["user_group"].astype(int).tolist()


def test_unknown_ids_raise_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="no dataset with id 42"):
        store.load_dataset(42)
    with pytest.raises(StoreError, match="no run with id 7"):
        store.get_run(7)
    with pytest.raises(StoreError, match="no dataset with id 5"):
        store.create_run(5, {})
    with pytest.raises(StoreError, match="no audience with id 3"):
        store.load_audience(3)
    assert store.newest_succeeded_run() is None


# ----------------------------------------------------------------------------- runs
def test_run_lifecycle_and_list(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {"epochs": 3, "embedding_dim": 8}, preset="default",
                           objective="inbatch", protocol="L")
    run = store.get_run(rid)
    assert (run["status"], run["epoch"], run["epochs_total"], run["duration_s"]) == \
        ("queued", 0, 3, None)
    store.mark_running(rid, pid=4321)
    store.add_epoch(rid, {"epoch": 1, "train_loss": 0.5, "val_auc": float("nan")})
    store.add_epoch(rid, {"epoch": 2, "train_loss": 0.25, "val_auc": 0.75})
    ep = store.epochs(rid)
    assert ep["epoch"].tolist() == [1, 2]
    assert ep["train_loss"].tolist() == [0.5, 0.25]
    assert np.isnan(ep["val_auc"].iloc[0]) and ep["val_auc"].iloc[1] == 0.75
    run = store.get_run(rid)
    assert (run["status"], run["pid"], run["epoch"]) == ("running", 4321, 2)
    assert run["duration_s"] >= 0
    store.finish_run(rid, summary={"test_auc": 0.8, "protocol": "L", "bad": float("inf")},
                     weights=b"abc", encoders={"a": [1, 2]}, user_ids=["u1"],
                     user_vectors=np.ones((1, 2)), item_ids=["i1"], item_vectors=np.ones((1, 2)))
    rows = store.list_runs()
    assert len(rows) == 1 and isinstance(rows[0], RunInfo) and rows[0].status is RunStatus.SUCCEEDED
    r = rows[0]
    assert (r["id"], r["status"], r["dataset_name"], r["objective"], r["protocol"]) == \
        (rid, "succeeded", "tiny", "inbatch", "L")
    assert r["summary"] == {"test_auc": 0.8, "protocol": "L", "bad": None}
    assert r["config"] == {"epochs": 3, "embedding_dim": 8}
    assert r["duration_s"] == pytest.approx(
        (r["finished_at"] - r["started_at"]).total_seconds())
    assert store.newest_succeeded_run() == rid
    assert store.list_runs(dataset_id=did + 1) == []
    with pytest.raises(StoreError, match="already succeeded"):
        store.fail_run(rid, "late")


def test_cancel_and_fail(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    assert store.cancel_requested(rid) is False
    store.request_cancel(rid)
    assert store.cancel_requested(rid) is True
    store.fail_run(rid, "stopped by the user", status="cancelled")
    run = store.get_run(rid)
    assert (run["status"], run["error"]) == ("cancelled", "stopped by the user")
    with pytest.raises(ValueError, match="'failed' or 'cancelled'"):
        store.fail_run(rid, "x", status="succeeded")
    with pytest.raises(StoreError, match="only a queued or running run"):
        store.finish_run(rid, summary={}, weights=b"", encoders={}, user_ids=["a"],
                         user_vectors=np.ones((1, 2)), item_ids=["b"],
                         item_vectors=np.ones((1, 2)))
    assert store.newest_succeeded_run() is None


def test_weights_and_embeddings_round_trip_bit_exact(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "CHUNK_ROWS", 7)  # 50 rows -> 8 chunks, a partial last one
    did = store.add_dataset(small_dataset())
    rng = np.random.default_rng(1)
    uvec = rng.standard_normal((50, 5)).astype(np.float32)
    uvec[0, :4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    ivec = rng.standard_normal((3, 5)).astype(np.float32)
    weights = bytes(rng.integers(0, 256, 10_000, dtype=np.uint8))
    uids = [f"user-{k}" for k in range(50)][::-1]            # stored order is kept, not sorted
    rid = store.create_run(did, {})
    store.finish_run(rid, summary={}, weights=weights, encoders={"vocab": {"x": 1}},
                     user_ids=uids, user_vectors=uvec, item_ids=["i1", "i2", "i3"],
                     item_vectors=ivec)
    assert store.load_weights(rid) == weights
    assert store.load_encoders(rid) == {"vocab": {"x": 1}}
    ids, vec = store.load_embeddings(rid, "user")
    assert ids.tolist() == uids
    assert vec.dtype == np.float32 and vec.shape == (50, 5) and vec.flags.c_contiguous
    assert vec.tobytes() == uvec.tobytes()
    iids, ivec2 = store.load_embeddings(rid, "item")
    assert iids.tolist() == ["i1", "i2", "i3"] and ivec2.tobytes() == ivec.tobytes()
    # single vectors by id, across chunks, in the asked order
    got = store.get_vectors(rid, "user", ["user-0", "user-49", "user-20"])
    assert got.tobytes() == uvec[[49, 0, 29]].tobytes()
    with pytest.raises(ValueError, match="unknown user ids in run .*'nobody'"):
        store.get_vectors(rid, "user", ["user-3", "nobody"])
    many = uids[5:30]                                  # more than 16 ids: the hashed lookup
    assert store.get_vectors(rid, "user", many).tobytes() == uvec[5:30].tobytes()
    with pytest.raises(ValueError, match="unknown user ids in run .*: 'x1', 'x2'"):
        store.get_vectors(rid, "user", many + ["x1", "x2"])
    with pytest.raises(ValueError, match="kind must be one of"):
        store.load_embeddings(rid, "movie")


def test_reloaded_model_scores_identically(store: Store) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    store.finish_run(rid, summary={}, weights=buf.getvalue(), encoders={}, user_ids=["u"],
                     user_vectors=np.ones((1, 2)), item_ids=["i"], item_vectors=np.ones((1, 2)))
    state = torch.load(io.BytesIO(store.load_weights(rid)), weights_only=True)
    clone = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    clone.load_state_dict(state)
    x = torch.randn(16, 6)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def test_finish_run_validates_its_inputs(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    ok = {"summary": {}, "weights": b"", "encoders": {}, "item_ids": ["i"],
          "item_vectors": np.ones((1, 2))}
    with pytest.raises(ValueError, match="user: 2 ids for 1 vectors"):
        store.finish_run(rid, user_ids=["a", "b"], user_vectors=np.ones((1, 2)), **ok)
    with pytest.raises(ValueError, match="user ids are not unique"):
        store.finish_run(rid, user_ids=["a", "a"], user_vectors=np.ones((2, 2)), **ok)
    with pytest.raises(ValueError, match="differ in size: 3 vs 2"):
        store.finish_run(rid, user_ids=["a"], user_vectors=np.ones((1, 3)), **ok)
    with pytest.raises(ValueError, match="must be 2-D"):
        store.finish_run(rid, user_ids=["a"], user_vectors=np.ones(2), **ok)
    assert store.get_run(rid)["status"] == "queued"


def test_error_inside_finish_transaction_leaves_nothing(store: Store, monkeypatch) -> None:
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {})
    store.mark_running(rid, pid=os.getpid())
    real = Store._write_chunk

    def failing(self, s, run_id, kind, chunk, block):
        if kind == "item":  # the user matrix and weights are already written by now
            raise OSError("disk full")
        return real(self, s, run_id, kind, chunk, block)

    monkeypatch.setattr(Store, "_write_chunk", failing)
    with pytest.raises(OSError, match="disk full"):
        store.finish_run(rid, summary={"test_auc": 0.9}, weights=b"w", encoders={"e": 1},
                         user_ids=["u1", "u2"], user_vectors=np.ones((2, 3)),
                         item_ids=["i1"], item_vectors=np.ones((1, 3)))
    run = store.get_run(rid)
    assert (run["status"], run["summary"], run["finished_at"]) == ("running", {}, None)
    assert store.newest_succeeded_run() is None
    t = store_mod.Base.metadata.tables
    for name in ("model_weights", "encoders", "embeddings", "embedding_chunks"):
        assert count(store, t[name], run_id=rid) == 0, name
    with pytest.raises(StoreError, match="did not succeed"):
        store.load_embeddings(rid, "user")
    with pytest.raises(StoreError, match="no stored weights"):
        store.load_weights(rid)


KILL_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from dssm_core.store import Store
    url, rid = sys.argv[1], int(sys.argv[2])
    real = Store._write_chunk
    def slow(self, s, run_id, kind, chunk, block):
        real(self, s, run_id, kind, chunk, block)
        if kind == "item":
            print("WROTE", flush=True)   # user matrix, weights, item chunk: inside the transaction
            time.sleep(120)
    Store._write_chunk = slow
    st = Store(url)
    st.finish_run(rid, summary={"test_auc": 1.0}, weights=b"w" * 1000, encoders={},
                  user_ids=[str(k) for k in range(1000)],
                  user_vectors=np.ones((1000, 8), np.float32),
                  item_ids=["i1", "i2"], item_vectors=np.ones((2, 8), np.float32))
""")


@pytest.mark.slow
def test_sigkill_during_finish_leaves_no_succeeded_run(store: Store, db_url: str) -> None:
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {"epochs": 1})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, db_url, str(rid)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        store.mark_running(rid, pid=proc.pid)
        line = proc.stdout.readline()
        assert line.strip() == "WROTE", proc.stderr.read()
        # mid-transaction, another connection sees nothing of it
        assert store.get_run(rid)["status"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    fresh = Store(db_url)
    try:
        assert fresh.get_run(rid)["status"] == "running"
        assert fresh.newest_succeeded_run() is None
        with pytest.raises(StoreError):
            fresh.load_embeddings(rid, "user")
        t = store_mod.Base.metadata.tables
        assert count(fresh, t["embedding_chunks"], run_id=rid) == 0
        assert fresh.mark_orphans_failed(lambda pid: pid != proc.pid) == [rid]
        run = fresh.get_run(rid)
        assert (run["status"], run["error"]) == ("failed", ORPHAN_ERROR)
        # the store is still writable after the killed writer
        rid2, _, _ = finished_run(fresh, did)
        assert fresh.newest_succeeded_run() == rid2
    finally:
        fresh.dispose()


def test_mark_orphans_failed_only_dead_active_runs(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    queued_no_pid = store.create_run(did, {})
    alive = store.create_run(did, {})
    store.mark_running(alive, pid=100)
    dead = store.create_run(did, {})
    store.mark_running(dead, pid=200)
    dead_queued = store.create_run(did, {})
    store.mark_running(dead_queued, pid=300)
    done, _, _ = finished_run(store, did)  # its pid (ours) is "dead" below but it succeeded
    assert sorted(store.mark_orphans_failed(lambda pid: pid == 100)) == [dead, dead_queued]
    status = {r["id"]: r["status"] for r in store.list_runs()}
    assert status == {queued_no_pid: "queued", alive: "running", dead: "failed",
                      dead_queued: "failed", done: "succeeded"}
    assert store.get_run(dead)["error"] == ORPHAN_ERROR
    assert store.mark_orphans_failed(lambda pid: False) == [alive]


# ----------------------------------------------------------------------------- deletes
def _fill_run(store: Store, did: int) -> int:
    rid, _, _ = finished_run(store, did)
    store.add_epoch(rid, {"epoch": 1, "train_loss": 0.1})
    store.save_projection(rid, "user", ["u1", "u2", "u3"], np.zeros((3, 2)), {"seed": 0})
    store.save_audience(rid, "a", {"items": ["i1"]},
                        pd.DataFrame({"user_id": ["u1", "u2"], "score": [0.9, 0.8]}))
    return rid


def test_delete_run_cascades(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid = _fill_run(store, did)
    keep = _fill_run(store, did)
    t = store_mod.Base.metadata.tables
    owned = ("epoch_metrics", "model_weights", "encoders", "embeddings", "embedding_chunks",
             "projections", "audiences")
    for name in owned:
        assert count(store, t[name], run_id=rid) >= 1, name
    store.delete_run(rid)
    for name in owned:
        assert count(store, t[name], run_id=rid) == 0, name
        assert count(store, t[name], run_id=keep) >= 1, name
    assert count(store, t["audience_members"]) == 2  # only the kept run's audience
    assert [r["id"] for r in store.list_runs()] == [keep]
    with pytest.raises(StoreError):
        store.delete_run(rid)


def test_ids_of_deleted_rows_are_never_reused(store: Store) -> None:
    # SQLite without AUTOINCREMENT reuses the largest deleted rowid; caches, job logs and
    # links keyed by a run id would then show a deleted run's data for a new run
    did = store.add_dataset(small_dataset())
    gone = store.add_dataset(small_dataset(), name="gone")
    store.delete_dataset(gone)
    assert store.add_dataset(small_dataset(), name="new") == gone + 1
    rid = store.create_run(did, {"epochs": 1})
    store.delete_run(rid)
    rid2 = store.create_run(did, {"epochs": 1})
    assert rid2 == rid + 1
    members = pd.DataFrame({"user_id": ["u1"], "score": [0.5]})
    aid = store.save_audience(rid2, "a", {}, members)
    store.delete_audience(aid)
    assert store.save_audience(rid2, "b", {}, members) == aid + 1


def test_delete_dataset_cascades(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    other = store.add_dataset(small_dataset(), name="other")
    _fill_run(store, did)
    keep = _fill_run(store, other)
    store.delete_dataset(did)
    t = store_mod.Base.metadata.tables
    assert [r["id"] for r in store.list_runs()] == [keep]
    assert count(store, t["dataset_tables"], dataset_id=did) == 0
    assert count(store, t["embedding_chunks"]) == count(store, t["embedding_chunks"], run_id=keep)
    assert count(store, t["audience_members"]) == 2
    assert [d["id"] for d in store.list_datasets()] == [other]


# ------------------------------------------------------------------------ projections, audiences
def test_projection_round_trip(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid, _, _ = finished_run(store, did)
    assert store.load_projection(rid, "user") is None
    xy = np.array([[0.5, -1.0], [2.0, 3.25]], dtype=np.float32)
    store.save_projection(rid, "user", ["u2", "u1"], xy, {"n_neighbors": 15, "seed": 0})
    ids, xy2, params = store.load_projection(rid, "user")
    assert ids.tolist() == ["u2", "u1"] and xy2.tobytes() == xy.tobytes()
    assert params == {"n_neighbors": 15, "seed": 0}
    store.save_projection(rid, "user", ["u3"], np.ones((1, 2)), {"seed": 1})  # replaces
    assert store.load_projection(rid, "user")[0].tolist() == ["u3"]
    with pytest.raises(ValueError, match="xy must be"):
        store.save_projection(rid, "item", ["i1"], np.ones((2, 2)), {})


def test_audience_save_list_load_delete(store: Store) -> None:
    did = store.add_dataset(small_dataset())
    rid, _, _ = finished_run(store, did)
    members = pd.DataFrame({"rank": [1, 2, 3], "user_id": ["u3", "u1", "u2"],
                            "score": [0.9, 0.5, -0.25], "percentile": [100.0, 66.7, 33.3]})
    aid = store.save_audience(rid, "  Campaign A ", {"items": ["i1"], "top_n": 3}, members)
    listed = store.list_audiences()
    assert [(a["id"], a["name"], a["size"], a["run_id"]) for a in listed] == \
        [(aid, "Campaign A", 3, rid)]
    assert store.list_audiences(run_id=rid + 99) == []
    got = store.load_audience(aid)
    assert got["definition"] == {"items": ["i1"], "top_n": 3}
    assert got["members"]["user_id"].tolist() == ["u3", "u1", "u2"]
    assert got["members"]["rank"].tolist() == [1, 2, 3]
    assert got["members"]["score"].tolist() == [0.9, 0.5, -0.25]
    with pytest.raises(ValueError, match="needs a name"):
        store.save_audience(rid, " ", {}, members)
    with pytest.raises(ValueError, match="lack columns: score"):
        store.save_audience(rid, "x", {}, members[["user_id"]])
    store.delete_audience(aid)
    assert store.list_audiences() == []
    assert count(store, store_mod.Base.metadata.tables["audience_members"]) == 0


# ----------------------------------------------------------------------------- schema, settings
def test_newer_schema_is_refused(db_url: str) -> None:
    s = Store(db_url)
    with s.engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    s.dispose()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than "
                                         f"this program supports \\({SCHEMA_VERSION}\\)"):
        Store(db_url)


def test_default_url_and_sqlite_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DSSM_DB_URL", raising=False)
    monkeypatch.setenv("DSSM_DATA_DIR", str(tmp_path / "deep" / "dir"))
    assert Store.default_url() == f"sqlite:///{tmp_path / 'deep' / 'dir' / 'dssm.db'}"
    s = Store()
    assert (tmp_path / "deep" / "dir" / "dssm.db").exists()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    s.dispose()
    monkeypatch.setenv("DSSM_DB_URL", "sqlite:///elsewhere.db")
    assert Store.default_url() == "sqlite:///elsewhere.db"


def test_sqlite_reader_not_blocked_by_open_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    writer, reader = Store(url), Store(url)
    did = writer.add_dataset(small_dataset())
    inside, release = threading.Event(), threading.Event()

    def hold_write() -> None:
        with writer._session(write=True) as s:
            s.add(store_mod.RunRow(dataset_id=did, config={}, preset="p", objective="pointwise",
                                   protocol="T", status="queued",
                                   created_at=store_mod._now()))
            s.flush()
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold_write)
    t.start()
    try:
        assert inside.wait(10)
        assert reader.list_runs() == []          # WAL: reads the last committed state at once
        assert reader.get_dataset(did)["name"] == "tiny"
    finally:
        release.set()
        t.join()
    assert len(reader.list_runs()) == 1
    writer.dispose()
    reader.dispose()


# ----------------------------------------------------------------- typed records, one dataset once
def test_records_are_typed_with_one_definition_of_statuses(tmp_path: Path) -> None:
    from dssm_core import jobs, records

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    did = store.add_dataset(small_dataset(), name="small")
    info = store.get_dataset(did)
    assert isinstance(info, DatasetInfo) and (info.id, info.name) == (did, "small")
    rid = store.create_run(did, {"epochs": 3}, preset="default")
    run = store.get_run(rid)
    assert isinstance(run, RunInfo) and run.status is RunStatus.QUEUED and run.active
    assert run.status == "queued" and str(run.status) == "queued"     # plain text too
    assert run.config == {"epochs": 3} and run.dataset_name == "small" and not run.succeeded
    # mapping-style reads give the same values; unknown keys are KeyError / the default
    assert run["status"] == "queued" and run.get("nothing", 7) == 7 and "config" in run
    with pytest.raises(KeyError):
        run["nothing"]
    assert run.to_dict()["status"] == "queued" and type(run.to_dict()["status"]) is str
    assert store_mod.ACTIVE_STATUSES is records.ACTIVE_STATUSES is jobs.ACTIVE_STATUSES
    assert [str(s) for s in records.STATUSES] == ["queued", "running", "succeeded", "failed",
                                                  "cancelled"]
    store.fail_run(rid, "boom")
    assert store.get_run(rid).status is RunStatus.FAILED and store.get_run(rid).status.ended
    rid2, _, _ = finished_run(store, did)
    aid = store.save_audience(rid2, "A", {"top_n": 1},
                              pd.DataFrame({"user_id": ["u1"], "score": [0.5]}))
    listed = store.list_audiences()
    assert isinstance(listed[0], AudienceInfo) and listed[0].members is None
    got = store.load_audience(aid)
    assert (got.name, got.size, got.members["user_id"].tolist()) == ("A", 1, ["u1"])
    store.dispose()


def test_the_same_dataset_is_recognised_and_reused(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    first = store.add_dataset(small_dataset(), name="first")
    assert store.find_same_dataset(small_dataset()).id == first       # a fresh load of it
    assert store.add_dataset(small_dataset(), name="again", reuse=True) == first
    assert [d.name for d in store.list_datasets()] == ["first"]        # nothing stored twice
    other = small_dataset()
    other.interactions.loc[0, "rating"] = 1.0
    assert store.find_same_dataset(other) is None
    assert store.add_dataset(other, name="other", reuse=True) != first
    copy = store.add_dataset(small_dataset(), name="copy")             # asked for: a copy
    assert copy not in (first,) and len(store.list_datasets()) == 3
    store.dispose()


# ----------------------------------------------------------------------------- chunked ids
def test_id_chunks_round_trip_unicode_empty_and_nul_free() -> None:
    ascii_ids = np.array(["u1", "", "user-000042", "a b"])
    blob = store_mod._ids_to_chunk(ascii_ids)
    # 4 ids: int64 count, 5 int64 offsets, then the UTF-8 bytes back to back
    assert np.frombuffer(blob[:48], "<i8").tolist() == [4, 0, 2, 2, 13, 16]
    assert blob[48:] == b"u1user-000042a b"
    assert store_mod._ids_from_chunk(blob).tolist() == ["u1", "", "user-000042", "a b"]
    uni = np.array(["Zoë", "用户7", "", "x"])       # non-ASCII: 3 + 7 + 0 + 1 UTF-8 bytes
    blob = store_mod._ids_to_chunk(uni)
    assert np.frombuffer(blob[8:48], "<i8").tolist() == [0, 4, 11, 11, 12]
    assert store_mod._ids_from_chunk(blob).tolist() == ["Zoë", "用户7", "", "x"]
    empty = store_mod._ids_to_chunk(np.array([], dtype=str))
    assert len(empty) == 16 and store_mod._ids_from_chunk(empty).tolist() == []
    blanks = store_mod._ids_to_chunk(np.array(["", ""]))
    assert store_mod._ids_from_chunk(blanks).tolist() == ["", ""]


def test_ids_spanning_many_chunks_round_trip(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "ID_CHUNK_ROWS", 3)   # 8 ids -> chunks of 3, 3, 2
    monkeypatch.setattr(store_mod, "CHUNK_ROWS", 5)
    did = store.add_dataset(small_dataset())
    uids = ["b", "Zoë", "a" * 40, "用户", "u5", "6", "é", "z"]   # widths differ per chunk
    uvec = np.arange(16, dtype=np.float32).reshape(8, 2) + 1
    rid = store.create_run(did, {})
    store.finish_run(rid, summary={}, weights=b"", encoders={}, user_ids=uids,
                     user_vectors=uvec, item_ids=["i"], item_vectors=np.ones((1, 2)))
    assert count(store, store_mod.EmbeddingIdChunkRow.__table__, run_id=rid, kind="user") == 3
    ids, vec = store.load_embeddings(rid, "user")
    assert ids.tolist() == uids and vec.tobytes() == uvec.tobytes()
    ids, cols = store.load_embedding_columns(rid, "user")
    assert ids.tolist() == uids and cols.shape == (2, 8) and cols.flags.c_contiguous
    assert cols[:, 3].tolist() == [7.0, 8.0]                               # row 3 = "用户"
    assert store.get_vectors(rid, "user", ["é", "b"]).tolist() == [[13.0, 14.0], [1.0, 2.0]]


def test_a_schema_2_store_with_one_id_blob_is_migrated(tmp_path: Path) -> None:
    """Schema 2 kept a matrix's ids as one .npy blob in ``embeddings.ids`` and each dataset
    table as one Parquet blob: opening the store moves them into chunks and parts, and both
    load as before."""
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    store = Store(url)
    rid, uvec, _ = finished_run(store, store.add_dataset(small_dataset()), n_users=4)
    store.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:                  # back to schema 2's layout
        conn.execute(text("DELETE FROM embedding_id_chunks"))
        for kind, ids in (("user", ["u1", "u2", "u3", "u4"]), ("item", ["i1", "i2", "i3"])):
            conn.execute(text("UPDATE embeddings SET ids = :b WHERE kind = :k"),
                         {"b": store_mod._ids_to_bytes(np.array(ids)), "k": kind})
        conn.execute(text("INSERT INTO dataset_tables (dataset_id, kind, data) "
                          "SELECT dataset_id, kind, data FROM dataset_table_parts"))
        conn.execute(text("DELETE FROM dataset_table_parts"))
        conn.execute(text("UPDATE schema_version SET version = 2"))
    engine.dispose()
    store = Store(url)
    try:
        got = store.load_dataset(1)
        pd.testing.assert_frame_equal(got.users, small_dataset().users)
        assert got.items["genres"].tolist() == [["Drama", "Romance"], [], ["Comedy"]]
        assert store.find_same_dataset(small_dataset()).id == 1      # the same hash as before
        ids, vec = store.load_embeddings(rid, "user")
        assert ids.tolist() == ["u1", "u2", "u3", "u4"] and vec.tobytes() == uvec.tobytes()
        assert store.load_embeddings(rid, "item")[0].tolist() == ["i1", "i2", "i3"]
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_version")).scalar() \
                == SCHEMA_VERSION
            assert set(conn.execute(text("SELECT ids FROM embeddings")).scalars()) == {b""}
    finally:
        store.dispose()


def test_a_long_dataset_table_is_stored_in_parts(store: Store, monkeypatch) -> None:
    ds = small_dataset()
    ds.interactions = ds.interactions.astype({"user_id": "category"})
    size = len(store_mod._frame_to_parquet(ds.interactions))
    monkeypatch.setattr(store_mod, "DATASET_PART_BYTES", size // 2 + 1)  # 4 rows -> 2 + 2
    did = store.add_dataset(ds)
    parts = store_mod.Base.metadata.tables["dataset_table_parts"]
    assert count(store, parts, dataset_id=did, kind="interactions") == 2
    got = store.load_dataset(did)
    pd.testing.assert_frame_equal(got.interactions, ds.interactions)
    pd.testing.assert_frame_equal(got.users, ds.users)
    assert got.items["genres"].tolist() == [["Drama", "Romance"], [], ["Comedy"]]
    pd.testing.assert_frame_equal(store.load_dataset_table(did, "interactions"),
                                  ds.interactions)
    assert store.add_dataset(small_dataset().__class__(**{**ds.__dict__}), reuse=True) == did
    with pytest.raises(ValueError, match="kind must be one of"):
        store.load_dataset_table(did, "ratings")


# ----------------------------------------------------------------------------- run tables
def test_run_tables_round_trip_in_parts_and_go_with_their_run(store: Store,
                                                             monkeypatch) -> None:
    did = store.add_dataset(small_dataset())
    rid, _, _ = finished_run(store, did)
    assert store.load_run_table(rid, "seen") is None                # stored without tables
    seen = pd.DataFrame({"item_row": np.array([0, 0, 2, 1], np.int32),
                         "user_row": np.array([1, 2, 0, 2], np.int32)})
    genre = pd.DataFrame({"favourite_genre": pd.Categorical(["Drama", "(no history)", "Drama"])})
    size = len(store_mod._frame_to_parquet(seen))
    monkeypatch.setattr(store_mod, "DATASET_PART_BYTES", size // 2 + 1)    # 4 rows -> 2 + 2
    store.save_run_tables(rid, {"seen": seen, "genre": genre})
    parts = store_mod.RunTablePartRow.__table__
    assert count(store, parts, run_id=rid, kind="seen") == 2
    pd.testing.assert_frame_equal(store.load_run_table(rid, "seen"), seen)
    pd.testing.assert_frame_equal(store.load_run_table(rid, "genre"), genre)
    assert store.load_run_table(rid, "seen", ["user_row"])["user_row"].tolist() == [1, 2, 0, 2]
    store.save_run_tables(rid, {"seen": seen.iloc[:1]})              # replaced, genre kept
    assert count(store, parts, run_id=rid, kind="seen") == 1
    assert store.load_run_table(rid, "seen")["item_row"].tolist() == [0]
    assert len(store.load_run_table(rid, "genre")) == 3
    # finish_run keeps them in its one transaction
    rid2 = store.create_run(did, {})
    store.finish_run(rid2, summary={}, weights=b"", encoders={}, user_ids=["a"],
                     user_vectors=np.ones((1, 2)), item_ids=["i"], item_vectors=np.ones((1, 2)),
                     run_tables={"items": pd.DataFrame({"users": np.array([7])})})
    assert store.load_run_table(rid2, "items")["users"].tolist() == [7]
    with pytest.raises(ValueError, match="1 to 16 characters"):
        store.save_run_tables(rid, {"x" * 17: seen})
    with pytest.raises(ValueError, match="must be a DataFrame"):
        store.save_run_tables(rid, {"seen": seen.to_numpy()})
    with pytest.raises(StoreError, match="no run"):
        store.load_run_table(999, "seen")
    store.delete_run(rid)
    assert count(store, parts, run_id=rid) == 0 and count(store, parts, run_id=rid2) == 1


def test_a_schema_4_store_gains_run_tables_and_keeps_its_runs(tmp_path: Path) -> None:
    """Schema 4 had no ``run_table_parts``: opening the store creates it, its runs stay (with
    no run tables: audiences read the dataset for them) and new tables can be kept."""
    url = f"sqlite:///{tmp_path / 'v4.db'}"
    store = Store(url)
    rid, uvec, _ = finished_run(store, store.add_dataset(small_dataset()))
    store.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:                  # back to schema 4's layout
        conn.execute(text("DROP TABLE run_table_parts"))
        conn.execute(text("UPDATE schema_version SET version = 4"))
    engine.dispose()
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_version")).scalar() == 5
        assert store.load_run_table(rid, "genre") is None
        assert store.load_embeddings(rid, "user")[1].tobytes() == uvec.tobytes()
        store.save_run_tables(rid, {"items": pd.DataFrame({"users": np.array([2, 1, 1])})})
        assert store.load_run_table(rid, "items")["users"].tolist() == [2, 1, 1]
    finally:
        store.dispose()
