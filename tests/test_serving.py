"""Serving from Redis (dssm_core.serving, ``publish`` and ``audience --redis``).

Needs a Redis server: ``DSSM_TEST_REDIS_URL`` (CI starts a private one with
``.ci/redis.sh``); without one these tests skip with a message. Each test writes under its
own key namespace and deletes it afterwards. The ranking checks use hand-worked cosines.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dssm_core import audience, serving
from dssm_core.cli import main
from dssm_core.store import Store
from dssm_core.urls import masked_url
from test_store import small_dataset

REDIS_ENV = "DSSM_TEST_REDIS_URL"
#: user -> vector; items i1 = x, i2 = y, i3 = x + y (hand-worked cosines in the tests)
USERS = {"u1": [1.0, 0.0], "u2": [0.0, 1.0], "u3": [0.6, 0.8]}
ITEMS = {"i1": [1.0, 0.0], "i2": [0.0, 1.0], "i3": [1.0, 1.0]}


def redis_url_or_skip() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set: no Redis server to test against "
                    "(.ci/redis.sh starts one)")
    try:
        serving.connect(url, timeout_s=2.0)
    except serving.ServingError as exc:
        pytest.skip(f"no Redis answers at {masked_url(url)}: {exc}")
    return url


@pytest.fixture()
def redis_url() -> str:
    return redis_url_or_skip()


@pytest.fixture()
def ns(redis_url: str):
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client = serving.connect(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture()
def served(tmp_path: Path):
    """A store with one succeeded run holding USERS and ITEMS."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    did = store.add_dataset(small_dataset())
    rid = store.create_run(did, {"epochs": 2, "seed": 7}, preset="default")
    store.mark_running(rid, pid=os.getpid())
    store.finish_run(rid, summary={"test_auc": 0.75}, weights=b"w", encoders={},
                     user_ids=list(USERS), user_vectors=np.array(list(USERS.values())),
                     item_ids=list(ITEMS), item_vectors=np.array(list(ITEMS.values())))
    yield store, url, rid
    store.dispose()


def test_password_comes_from_the_url_or_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("DSSM_REDIS_PASSWORD", raising=False)
    monkeypatch.delenv("REDISCLI_AUTH", raising=False)
    assert serving.redis_password("redis://localhost:6379/0") is None
    monkeypatch.setenv("REDISCLI_AUTH", "from-cli-env")
    assert serving.redis_password("redis://localhost:6379/0") == "from-cli-env"
    monkeypatch.setenv("DSSM_REDIS_PASSWORD", "from-dssm-env")
    assert serving.redis_password("redis://localhost:6379/0") == "from-dssm-env"
    assert serving.redis_password("redis://:in-url@localhost:6379/0") == "in-url"
    assert masked_url("redis://:in-url@localhost:6379/0") == "redis://:***@localhost:6379/0"
    assert masked_url("postgresql+psycopg://bob:pw@db/x") == "postgresql+psycopg://bob:***@db/x"


def test_an_unreachable_server_is_named_without_its_password(tmp_path, capsys) -> None:
    rc = main(["audience", "--redis", "redis://:s3cret-pw@127.0.0.1:1/0", "--item", "i1",
               "--top", "2", "--out", str(tmp_path / "a.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach Redis at redis://:***@127.0.0.1:1/0" in err
    assert "s3cret-pw" not in err


def test_publish_then_serve_equals_the_store(served, redis_url: str, ns: str) -> None:
    store, _, rid = served
    client = serving.connect(redis_url)
    report = serving.publish_run(store, client, namespace=ns, chunk_rows=2)
    assert (report.run_id, report.n_users, report.n_items, report.dim) == (rid, 3, 3, 2)
    manifest = serving.load_manifest(client, namespace=ns)
    assert manifest["user"]["n"] == 3 and len(manifest["user"]["vec"]) == 2  # 2 + 1 rows
    assert manifest["config"] == {"epochs": 2, "seed": 7}
    ids, vecs = serving.read_vectors(client, manifest, "user")
    assert ids.tolist() == ["u1", "u2", "u3"]
    assert vecs.dtype == np.float32 and vecs.tobytes() == np.array(
        list(USERS.values()), dtype=np.float32).tobytes()                  # bit-exact
    assert client.get(manifest["user"]["vec"][1]) == np.float32([0.6, 0.8]).tobytes()
    run = serving.load_run(client, rid, namespace=ns)
    # i1 = x: cosines u1 1.0, u3 0.6, u2 0.0
    top = serving.top_users(run, ["i1"], 3)
    assert top["user_id"].tolist() == ["u1", "u3", "u2"]
    np.testing.assert_allclose(top["score"], [1.0, 0.6, 0.0], atol=1e-6)
    # a campaign i1 + i2: mean direction (x + y)/2: u3 0.98995 first
    top = serving.top_users(run, ["i1", "i2"], 1)
    assert top["user_id"].tolist() == ["u3"]
    np.testing.assert_allclose(top["score"], [1.4 / np.sqrt(2)], atol=1e-6)
    # every option, same CSV as the store's
    for request in (audience.AudienceRequest(items=("i3",), top_n=3),
                    audience.AudienceRequest(items=("i1",), top_n=2, exclude_seen=True),
                    audience.AudienceRequest(items=("i2",), percent=100.0,
                                             where={"gender": ("F",)}),
                    audience.AudienceRequest(seed_users=("u1",), top_n=2)):
        mine = serving.audience_for(client, rid, request, namespace=ns)
        theirs = audience.audience_for(store, rid, request)
        assert mine.to_csv_bytes() == theirs.to_csv_bytes()
        assert mine.members["user_id"].tolist() == theirs.members["user_id"].tolist()


def test_republishing_replaces_the_old_keys(served, redis_url: str, ns: str) -> None:
    store, _, rid = served
    client = serving.connect(redis_url)
    serving.publish_run(store, client, rid, namespace=ns)
    first = set(client.scan_iter(match=f"{ns}:*"))
    serving.publish_run(store, client, rid, namespace=ns)
    second = set(client.scan_iter(match=f"{ns}:*"))
    assert len(first) == len(second)          # same layout, old generation deleted
    assert first & second == {f"{ns}:runs".encode(), f"{ns}:run:{rid}:manifest".encode()}
    assert serving.published_runs(client, ns) == [rid]
    with pytest.raises(serving.ServingError, match="run 99 is not published"):
        serving.load_manifest(client, 99, namespace=ns)


def test_a_run_with_its_tables_is_published_with_them(tmp_path: Path, redis_url: str,
                                                      ns: str) -> None:
    """A run stored with its audience tables publishes them (in parts) and the item table,
    not the dataset's users and interactions; served audiences equal the store's. The same
    run without them (stored before schema 5) publishes the dataset's tables, and gets the
    run tables once backfilled."""
    store = Store(f"sqlite:///{tmp_path / 'tables.db'}")
    did = store.add_dataset(small_dataset())
    ds = store.load_dataset(did)
    runs = []
    for with_tables in (True, False):
        rid = store.create_run(did, {"epochs": 1})
        store.finish_run(rid, summary={}, weights=b"w", encoders={}, user_ids=list(USERS),
                         user_vectors=np.array(list(USERS.values())), item_ids=list(ITEMS),
                         item_vectors=np.array(list(ITEMS.values())),
                         run_tables=audience.run_tables(ds, list(USERS), list(ITEMS))
                         if with_tables else None)
        runs.append(rid)
    client = serving.connect(redis_url)
    with_tables, without = runs
    serving.publish_run(store, client, with_tables, namespace=ns)
    manifest = serving.load_manifest(client, with_tables, namespace=ns)
    assert manifest["layout"] == serving.LAYOUT_VERSION == 2
    assert set(manifest["tables"]) == {"items"}
    assert set(manifest["run_tables"]) == set(audience.RUN_TABLES) - {"users"} | (
        {"users"} if store.load_run_table(with_tables, "users") is not None else set())
    run = serving.load_run(client, with_tables, namespace=ns)
    assert run.source.has_tables()
    requests = (audience.AudienceRequest(items=("i3",), top_n=3),
                audience.AudienceRequest(items=("i1",), top_n=2, exclude_seen=True),
                audience.AudienceRequest(items=("i2",), percent=100.0,
                                         where={"gender": ("F",)}),
                audience.AudienceRequest(seed_users=("u1",), top_n=2))
    for request in requests:
        assert serving.audience_for(client, with_tables, request, namespace=ns
                                    ).to_csv_bytes() == \
            audience.audience_for(store, with_tables, request).to_csv_bytes()
    serving.publish_run(store, client, without, namespace=ns)
    manifest = serving.load_manifest(client, without, namespace=ns)
    assert set(manifest["tables"]) == {"users", "items", "interactions"}
    assert manifest["run_tables"] == {}
    assert audience.backfill_run_tables(store, without)
    serving.publish_run(store, client, without, namespace=ns)
    manifest = serving.load_manifest(client, without, namespace=ns)
    assert set(manifest["tables"]) == {"items"} and "seen" in manifest["run_tables"]
    for request in requests:
        assert serving.audience_for(client, without, request, namespace=ns
                                    ).to_csv_bytes() == \
            audience.audience_for(store, without, request).to_csv_bytes()
    store.dispose()


def test_saved_audiences_are_published_as_sets(served, redis_url: str, ns: str) -> None:
    store, _, rid = served
    members = pd.DataFrame({"user_id": ["u3", "u1"], "score": [0.9, 0.7]})
    aid = store.save_audience(rid, "campaign", {"items": ["i3"]}, members)
    client = serving.connect(redis_url)
    report = serving.publish_run(store, client, rid, audiences=True, namespace=ns)
    assert report.audiences == (aid,)
    assert serving.audience_members(client, aid, rid, namespace=ns) == {"u1", "u3"}
    entry = serving.load_manifest(client, rid, namespace=ns)["audiences"][0]
    assert (entry["name"], entry["size"]) == ("campaign", 2)
    assert client.type(entry["key"]) == b"set"


def test_cli_publish_and_audience_from_redis(served, redis_url: str, ns: str, tmp_path,
                                             capsys) -> None:
    _, url, rid = served
    assert main(["publish", "--redis", redis_url, "--db", url, "--namespace", ns]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["run_id"], out["n_users"], out["dim"]) == (rid, 3, 2)
    a, b = tmp_path / "store.csv", tmp_path / "redis.csv"
    common = ["--item", "i3", "--top", "2", "--where", "gender=F"]
    assert main(["audience", "--db", url, *common, "--out", str(a)]) == 0
    assert main(["audience", "--redis", redis_url, "--namespace", ns, *common,
                 "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    # women u1 and u3; u3 already rated i3 (excluded by default): u1 alone
    assert pd.read_csv(b)["user_id"].tolist() == ["u1"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_a_password_protected_server(served, tmp_path, free_tcp_port, monkeypatch,
                                     capsys) -> None:
    """A private server with ``requirepass``: the password from the environment works, a
    wrong one is refused, and neither is printed."""
    store, url, rid = served
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(free_tcp_port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "right-pw-42"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = f"redis://127.0.0.1:{free_tcp_port}/0"
        monkeypatch.setenv("DSSM_REDIS_PASSWORD", "right-pw-42")
        end = time.monotonic() + 10
        while True:
            try:
                serving.connect(server)
                break
            except serving.ServingError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        assert main(["publish", "--redis", server, "--db", url]) == 0
        assert "right-pw-42" not in capsys.readouterr().out
        monkeypatch.setenv("DSSM_REDIS_PASSWORD", "wrong-pw-17")
        out = tmp_path / "a.csv"
        assert main(["audience", "--redis", server, "--item", "i1", "--top", "1",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "cannot reach Redis" in err and "wrong-pw-17" not in err
        assert main(["audience", "--redis", f"redis://:right-pw-42@127.0.0.1:{free_tcp_port}/0",
                     "--item", "i1", "--top", "1", "--out", str(out)]) == 0
        assert "right-pw-42" not in capsys.readouterr().out
        # u1 and u2 already rated i1 (excluded by default): u3 (cosine 0.6)
        assert pd.read_csv(out)["user_id"].tolist() == ["u3"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_projector_start_log_hides_the_password(monkeypatch, caplog) -> None:
    """``jobs.ensure_projector`` logged the store URL with its PostgreSQL password."""
    from dssm_core import jobs, projector

    monkeypatch.setenv(jobs.PROJECTOR_ENV, "on")
    monkeypatch.setattr(projector, "worker_running", lambda url: False)

    class _Proc:
        pid = 4321

    monkeypatch.setattr(jobs, "_spawn", lambda *a, **k: _Proc())
    with caplog.at_level("INFO", logger="dssm_core.jobs"):
        jobs.ensure_projector("postgresql+psycopg://bob:pg-secret-9@127.0.0.1:1/x")
    assert "projection worker 4321 started" in caplog.text
    assert "pg-secret-9" not in caplog.text and "bob:***@" in caplog.text
