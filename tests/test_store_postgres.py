"""PostgreSQL-only checks of the store (``DSSM_TEST_PG_URL``; CI starts a server with
``.ci/postgres.sh``). The whole store suite in ``test_store.py`` also runs on PostgreSQL through
its ``db_url`` fixture; these tests add what only a client/server database shows.
Without a server they skip with a message.
"""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from dssm_core import audience
from dssm_core.store import CHUNK_ROWS, Store
from test_store import pg_url_or_skip, small_dataset

pytestmark = pytest.mark.postgres


@pytest.fixture()
def pg_store():
    s = Store(pg_url_or_skip())
    yield s
    s.dispose()


def test_url_hides_the_password(pg_store: Store) -> None:
    assert pg_store.url.startswith("postgresql+psycopg://")
    assert ":***@" in pg_store.url and ":dssm@" not in pg_store.url


def test_multi_chunk_matrix_round_trips_and_searches(pg_store: Store) -> None:
    n, d = CHUNK_ROWS + 1_000, 8                      # two chunks, the second partial
    rng = np.random.default_rng(5)
    uvec = rng.standard_normal((n, d)).astype(np.float32)
    uids = np.array([f"u{k}" for k in range(n)])
    did = pg_store.add_dataset(small_dataset())
    rid = pg_store.create_run(did, {})
    pg_store.finish_run(rid, summary={}, weights=b"", encoders={}, user_ids=uids,
                        user_vectors=uvec, item_ids=["i1", "i2", "i3"],
                        item_vectors=uvec[:3])
    ids, vec = pg_store.load_embeddings(rid, "user")
    assert ids.tolist() == uids.tolist() and vec.tobytes() == uvec.tobytes()
    got = pg_store.get_vectors(rid, "user", [f"u{n - 1}", "u0"])
    assert got.tobytes() == uvec[[n - 1, 0]].tobytes()
    # the index over what came back finds each vector as its own best match
    index = audience.UserIndex().index(vec, ids)
    scores, top = index.query(uvec[[10, n - 2]], k=1)
    assert top[:, 0].tolist() == ["u10", f"u{n - 2}"]
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)


def test_two_clients_write_at_once(pg_store: Store) -> None:
    url = pg_store.engine.url.render_as_string(hide_password=False)
    did = pg_store.add_dataset(small_dataset())
    runs = [pg_store.create_run(did, {"epochs": 20}) for _ in range(2)]
    errors: list[BaseException] = []

    def train(run_id: int) -> None:
        s = Store(url)  # its own engine, as a training process has
        try:
            s.mark_running(run_id, pid=1)
            for e in range(1, 21):
                s.add_epoch(run_id, {"epoch": e, "train_loss": 1.0 / e})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            s.dispose()

    threads = [threading.Thread(target=train, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for r in runs:
        ep = pg_store.epochs(r)
        assert ep["epoch"].tolist() == list(range(1, 21))
        assert ep["train_loss"].iloc[3] == 0.25
        assert pg_store.get_run(r)["epoch"] == 20


def test_saved_audiences_overlap(pg_store: Store) -> None:
    did = pg_store.add_dataset(small_dataset())
    rid = pg_store.create_run(did, {})
    pg_store.finish_run(rid, summary={}, weights=b"", encoders={}, user_ids=["u1"],
                        user_vectors=np.ones((1, 2)), item_ids=["i1"],
                        item_vectors=np.ones((1, 2)))
    a = pg_store.save_audience(rid, "a", {}, pd.DataFrame({"user_id": ["1", "2", "3"],
                                                           "score": [0.3, 0.2, 0.1]}))
    b = pg_store.save_audience(rid, "b", {}, pd.DataFrame({"user_id": ["2", "3", "4", "5"],
                                                           "score": [0.3, 0.2, 0.1, 0.0]}))
    got = audience.overlap_saved(pg_store, a, b)
    assert got == {"size_a": 3, "size_b": 4, "common": 2, "only_a": 1, "only_b": 2,
                   "jaccard": 2 / 5}
