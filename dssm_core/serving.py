"""Serving from Redis: a run's vectors and saved audiences, published where an ad server reads.

The article's own design (its section 1): both towers' embeddings sit in an in-memory
database and online scoring is only a similarity computation. :func:`publish_run` writes a
succeeded run from the store to Redis; :func:`load_run` reads it back as the same
:class:`~dssm_core.audience.LoadedRun` the store gives, so every audience (top N users for an
item or a campaign, filters, exclusions, the CSV) is ranked by the same exact top-K index
(``audience.UserIndex``) and equals the store's.

Keys (``ns`` is the namespace, default ``dssm``; ``R`` the run; ``G`` a generation token):

* ``ns:run:R:manifest``: JSON; dims, counts, the keys of every chunk, the run's config and
  summary, the saved audiences. Written last, in one MULTI with the ``ns:runs`` index, so a
  reader sees the old publication or the new one, never half of one; the previous
  generation's keys are deleted after the switch.
* ``ns:run:R:G:user:vec:C`` / ``:item:vec:C``: rows ``[C * chunk_rows, ...)`` of the raw
  stored vectors, float32 C-order bytes (little-endian, as numpy writes them here);
  ``...:ids:C``: the ids of those rows (a JSON list).
* ``ns:run:R:G:runtable:K:P``: part ``P`` (Parquet) of the run's table ``K`` of
  ``audience.RUN_TABLES`` (users' attributes, favourite genres, who saw which item, users per
  item: integer codes in the run's row order), with ``ns:run:R:G:table:items`` (the item
  table): what filters, insights and "exclude seen" read, with no text id joined when the
  run is opened (layout 2). A run stored without run tables (before schema 5; see
  ``python -m dssm_core backfill-tables``) publishes the dataset's tables instead,
  ``...:table:users|items|interactions`` (interactions only ``user_id``/``item_id``).
* ``ns:run:R:G:audience:A``: a saved audience as a SET of user ids.
* ``ns:runs``: sorted set, published run ids scored by publication time.

Passwords come from the URL or ``$DSSM_REDIS_PASSWORD`` / ``$REDISCLI_AUTH`` and are never
part of a message (:func:`masked_url`).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from . import audience
from .dataset import Dataset
from .urls import masked_url, scrubbed, url_password

if TYPE_CHECKING:
    import redis

    from .store import Store

log = logging.getLogger(__name__)

#: Default key namespace.
NAMESPACE = "dssm"
#: Vectors per Redis value (32 dims: 8 MiB; a million users in 16 values).
CHUNK_ROWS = 65_536
#: Environment variables read for the password when the URL carries none (first set wins).
PASSWORD_ENVS = ("DSSM_REDIS_PASSWORD", "REDISCLI_AUTH")
#: Version of the key layout this module writes and reads.
LAYOUT_VERSION = 2
#: Layouts this version reads: 1 had no run tables (the dataset's tables always).
READABLE_LAYOUTS = (1, 2)


class ServingError(ValueError):
    """Redis holds no (readable) publication of the asked run, or is unreachable."""


# --------------------------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------------------------
def redis_password(url: str) -> str | None:
    """The password to use: the URL's, else the first of :data:`PASSWORD_ENVS` that is set."""
    return url_password(url) or next(
        (os.environ[k] for k in PASSWORD_ENVS if os.environ.get(k)), None)


def connect(url: str, *, timeout_s: float = 5.0) -> "redis.Redis":
    """A client for ``url`` (``redis://[[user]:password@]host:port/db``, ``rediss://``,
    ``unix://``), checked with a PING. Raises :class:`ServingError` naming the server with
    its password hidden."""
    import redis

    password = redis_password(url)
    kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if password and not url_password(url):
        kwargs["password"] = password
    try:
        client = redis.Redis.from_url(url, **kwargs)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise ServingError(f"cannot reach Redis at {masked_url(url)}: "
                           f"{scrubbed(str(exc), password)}") from None
    return client


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------
def run_prefix(run_id: int, namespace: str = NAMESPACE) -> str:
    """``ns:run:R``: every key of run ``run_id`` starts with it."""
    return f"{namespace}:run:{int(run_id)}"


def manifest_key(run_id: int, namespace: str = NAMESPACE) -> str:
    """The key of run ``run_id``'s manifest."""
    return f"{run_prefix(run_id, namespace)}:manifest"


def runs_key(namespace: str = NAMESPACE) -> str:
    """The sorted set of published run ids."""
    return f"{namespace}:runs"


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishReport:
    """What :func:`publish_run` wrote: counts, dims, audiences, bytes and seconds."""

    run_id: int
    prefix: str
    n_users: int
    n_items: int
    dim: int
    audiences: tuple[int, ...]
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (the CLI prints it)."""
        return {"run_id": self.run_id, "prefix": self.prefix, "n_users": self.n_users,
                "n_items": self.n_items, "dim": self.dim, "audiences": list(self.audiences),
                "bytes": self.bytes, "seconds": round(self.seconds, 3)}


def write_vectors(pipe: Any, base: str, kind: str, ids: Any, vectors: Any, *,
                  chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """Queue SETs of ``vectors`` (N, D) and ``ids`` (N,) in chunks of ``chunk_rows`` on the
    pipeline ``pipe``; returns the manifest entry ``{n, dim, chunk_rows, vec, ids, bytes}``."""
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    vec = np.ascontiguousarray(np.asarray(vectors, dtype="<f4"))           # (N, D)
    ids_arr = np.asarray(ids).astype(str)
    if vec.ndim != 2 or len(ids_arr) != vec.shape[0]:
        raise ValueError(f"{kind}: {len(ids_arr)} ids for vectors of shape {vec.shape}")
    vec_keys, id_keys, size = [], [], 0
    for c, start in enumerate(range(0, vec.shape[0], int(chunk_rows))):
        block = vec[start:start + int(chunk_rows)]
        vk, ik = f"{base}:{kind}:vec:{c}", f"{base}:{kind}:ids:{c}"
        data = block.tobytes()
        text = json.dumps(ids_arr[start:start + int(chunk_rows)].tolist(), ensure_ascii=False)
        pipe.set(vk, data)
        pipe.set(ik, text)
        vec_keys.append(vk)
        id_keys.append(ik)
        size += len(data) + len(text)
    return {"n": int(vec.shape[0]), "dim": int(vec.shape[1]), "chunk_rows": int(chunk_rows),
            "vec": vec_keys, "ids": id_keys, "bytes": size}


def _delete_generation(client: Any, prefix: str, generation: str | None) -> None:
    if not generation:
        return
    keys = list(client.scan_iter(match=f"{prefix}:{generation}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])


def publish_run(store: "Store", client: Any, run_id: int | None = None, *,
                audiences: bool = False, namespace: str = NAMESPACE,
                chunk_rows: int = CHUNK_ROWS) -> PublishReport:
    """Write a succeeded run (newest if ``run_id`` is None) to Redis: user and item vectors,
    its audience tables and the item table (or, for a run without them, the dataset's users,
    items and interactions), with ``audiences`` its saved audiences as sets, then the
    manifest.
    A publication of the same run is replaced whole. ``ValueError`` for a run that is not
    there or has not succeeded."""
    from .store import _frame_to_parquet, _parquet_parts

    t0 = time.perf_counter()
    if run_id is None:
        run_id = store.newest_succeeded_run()
        if run_id is None:
            raise ValueError("there is no succeeded run in this database; train one first")
    run = store.get_run(int(run_id))
    if not run.succeeded:
        raise ValueError(f"run {run_id} is {run.status}; only a succeeded run can be published")
    rid = int(run.id)
    prefix = run_prefix(rid, namespace)
    generation = secrets.token_hex(4)
    base = f"{prefix}:{generation}"
    stored = {kind: store.load_run_table(rid, kind) for kind in audience.RUN_TABLES}
    run_tables = {kind: t for kind, t in stored.items() if t is not None}
    about = store.get_dataset(int(run.dataset_id))
    if "genre" in run_tables:       # the run's own tables: the dataset's items only
        tables = {"items": store.load_dataset_table(int(run.dataset_id), "items")}
    else:
        ds = store.load_dataset(run.dataset_id)
        tables = {"users": ds.users, "items": ds.items,
                  "interactions": ds.interactions[["user_id", "item_id"]]}
        run_tables = {}
        del ds
    user_ids, user_vecs = store.load_embeddings(rid, "user")
    item_ids, item_vecs = store.load_embeddings(rid, "item")
    pipe = client.pipeline(transaction=False)
    users = write_vectors(pipe, base, "user", user_ids, user_vecs, chunk_rows=chunk_rows)
    items = write_vectors(pipe, base, "item", item_ids, item_vecs, chunk_rows=chunk_rows)
    size = users.pop("bytes") + items.pop("bytes")
    table_keys = {}
    for name, frame in tables.items():
        data = _frame_to_parquet(frame)
        table_keys[name] = f"{base}:table:{name}"
        pipe.set(table_keys[name], data)
        size += len(data)
    run_table_keys: dict[str, list[str]] = {}
    for kind, frame in run_tables.items():
        keys = run_table_keys[kind] = []
        for part, data in enumerate(_parquet_parts(frame)):
            keys.append(f"{base}:runtable:{kind}:{part}")
            pipe.set(keys[-1], data)
            size += len(data)
    saved = []
    if audiences:
        for info in store.list_audiences(rid):
            members = store.load_audience(info.id).members["user_id"].astype(str).tolist()
            key = f"{base}:audience:{info.id}"
            for start in range(0, len(members), 10_000):
                pipe.sadd(key, *members[start:start + 10_000])
            saved.append({"id": int(info.id), "name": info.name, "size": len(members),
                          "key": key, "definition": info.definition})
            size += sum(len(m) for m in members)
    pipe.execute()
    old = client.get(manifest_key(rid, namespace))
    manifest = {
        "layout": LAYOUT_VERSION, "run_id": rid, "dataset_id": int(run.dataset_id),
        "generation": generation, "dtype": "float32", "byteorder": "little",
        "dim": users["dim"], "user": users, "item": items, "tables": table_keys,
        "run_tables": run_table_keys,
        "format": about.format, "dataset_name": about.name, "rating_scale": about.rating_scale,
        "config": run.config, "summary": run.summary, "audiences": saved,
        "published_at": time.time(),
    }
    switch = client.pipeline(transaction=True)
    switch.set(manifest_key(rid, namespace), json.dumps(manifest, default=str))
    switch.zadd(runs_key(namespace), {str(rid): manifest["published_at"]})
    switch.execute()
    if old:
        _delete_generation(client, prefix, json.loads(old).get("generation"))
    report = PublishReport(run_id=rid, prefix=prefix, n_users=users["n"], n_items=items["n"],
                           dim=users["dim"], audiences=tuple(a["id"] for a in saved),
                           bytes=size, seconds=time.perf_counter() - t0)
    log.info("published run %d to Redis under %s (%d bytes)", rid, base, size)
    return report


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def published_runs(client: Any, namespace: str = NAMESPACE) -> list[int]:
    """Published run ids, newest publication first."""
    return [int(r) for r in client.zrevrange(runs_key(namespace), 0, -1)]


def load_manifest(client: Any, run_id: int | None = None, *,
                  namespace: str = NAMESPACE) -> dict[str, Any]:
    """The manifest of ``run_id`` (default: the newest published run); ServingError if none."""
    if run_id is None:
        runs = published_runs(client, namespace)
        if not runs:
            raise ServingError(f"Redis holds no published run (namespace {namespace!r}); "
                               "run `python -m dssm_core publish --redis URL` first")
        run_id = runs[0]
    raw = client.get(manifest_key(int(run_id), namespace))
    if raw is None:
        raise ServingError(f"run {run_id} is not published in Redis (namespace {namespace!r})")
    manifest = json.loads(raw)
    if manifest.get("layout") not in READABLE_LAYOUTS:
        raise ServingError(f"run {run_id} was published with key layout "
                           f"{manifest.get('layout')}; this program reads {LAYOUT_VERSION}")
    return manifest


def read_vectors(client: Any, manifest: dict[str, Any], kind: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (N,), vectors (N, D) float32)`` of ``kind`` ("user"/"item") as published."""
    entry = manifest[kind]
    n, dim = int(entry["n"]), int(entry["dim"])
    blobs = client.mget(entry["vec"])
    texts = client.mget(entry["ids"])
    if any(b is None for b in blobs) or any(t is None for t in texts):
        raise ServingError(f"run {manifest['run_id']}: some {kind} vectors are missing from "
                           "Redis (evicted or deleted); publish the run again")
    vectors = np.empty((n, dim), dtype=np.float32)                        # (N, D)
    ids: list[str] = []
    row = 0
    for blob, text in zip(blobs, texts):
        block = np.frombuffer(blob, dtype="<f4").reshape(-1, dim)
        vectors[row:row + len(block)] = block
        row += len(block)
        ids.extend(json.loads(text))
    if row != n or len(ids) != n:
        raise ServingError(f"run {manifest['run_id']}: {kind} vectors in Redis hold {row} rows "
                           f"and {len(ids)} ids, the manifest says {n}")
    return np.asarray(ids, dtype=str), vectors


def load_run(client: Any, run_id: int | None = None, *,
             namespace: str = NAMESPACE) -> audience.LoadedRun:
    """A published run as a :class:`~dssm_core.audience.LoadedRun` (vectors, tables), built
    by the same code as the store's (``audience.run_from_parts``)."""
    from .store import _frame_from_parquet, _frame_from_parts

    manifest = load_manifest(client, run_id, namespace=namespace)
    user_ids, user_vecs = read_vectors(client, manifest, "user")
    item_ids, item_vecs = read_vectors(client, manifest, "item")
    frames = {}
    for name, key in manifest["tables"].items():
        data = client.get(key)
        if data is None:
            raise ServingError(f"run {manifest['run_id']}: the {name} table is missing from "
                               "Redis; publish the run again")
        frames[name] = _frame_from_parquet(data)
    run_tables = manifest.get("run_tables") or {}
    if run_tables:
        def run_table(kind: str) -> pd.DataFrame | None:
            keys = run_tables.get(kind)
            if not keys:
                return None
            parts = client.mget(keys)
            if any(p is None for p in parts):
                raise ServingError(f"run {manifest['run_id']}: the run table {kind!r} is "
                                   "missing from Redis; publish the run again")
            return _frame_from_parts(parts)

        def no_dataset_table(kind: str, columns: Any) -> pd.DataFrame:
            raise ServingError(f"run {manifest['run_id']} was published with its run tables: "
                               f"the dataset's {kind} table is not in Redis")

        index = audience.UserIndex().index(user_vecs, user_ids)
        return audience.run_from_tables(
            int(manifest["run_id"]), int(manifest["dataset_id"]), index, item_ids, item_vecs,
            frames["items"], audience.RunSource(no_dataset_table, run_table))
    scale = manifest.get("rating_scale")
    ds = Dataset(interactions=frames["interactions"], users=frames["users"],
                 items=frames["items"], format=manifest.get("format") or "",
                 name=manifest.get("dataset_name") or "",
                 rating_scale=tuple(scale) if scale else None)
    return audience.run_from_parts(int(manifest["run_id"]), int(manifest["dataset_id"]),
                                   user_ids, user_vecs, item_ids, item_vecs, ds)


def top_users(run: audience.LoadedRun, items: Sequence[str], n: int) -> pd.DataFrame:
    """The ``n`` users most similar to ``items`` (their mean direction), best first:
    ``rank, user_id, score`` (no exclusions; see :func:`audience_for` for the full request)."""
    result = audience.build_audience(
        run, audience.AudienceRequest(items=tuple(str(i) for i in items), top_n=int(n)))
    return result.members[["rank", "user_id", "score"]].reset_index(drop=True)


def audience_for(client: Any, run_id: int | None, request: audience.AudienceRequest, *,
                 namespace: str = NAMESPACE) -> audience.AudienceResult:
    """``audience.audience_for`` answered from Redis-held vectors instead of the store."""
    return audience.build_audience(load_run(client, run_id, namespace=namespace), request)


def audience_members(client: Any, audience_id: int, run_id: int | None = None, *,
                     namespace: str = NAMESPACE) -> set[str]:
    """The user ids of a saved audience published with ``--audiences``."""
    manifest = load_manifest(client, run_id, namespace=namespace)
    for entry in manifest.get("audiences", []):
        if int(entry["id"]) == int(audience_id):
            return {m.decode("utf-8") if isinstance(m, bytes) else str(m)
                    for m in client.smembers(entry["key"])}
    raise ServingError(f"audience {audience_id} is not published with run "
                       f"{manifest['run_id']} (publish with --audiences)")
