"""Stored datasets, training runs, embeddings, projections and audiences (SQLAlchemy 2.x).

One repository class, :class:`Store`, given an engine or a URL. SQLite is the default (a file in
``$DSSM_DATA_DIR``, WAL mode, foreign keys on, a busy timeout, writes under ``BEGIN IMMEDIATE``
so several processes - training jobs and the app - can share it); PostgreSQL works by URL
(``postgresql+psycopg://...``) with the same code.

Storage choices:

* Canonical dataset tables are Parquet bytes (never pickle), so ``load_dataset`` round-trips
  dtypes and list-valued genres exactly; a table whose Parquet is over ``DATASET_PART_BYTES``
  is stored in parts of about that size (no value near SQLite's 1e9-byte limit), read back in
  one query and converted to pandas once. ``add_dataset(reuse=True)`` (the CLI's ``train DATA
  --db``) stores nothing when a dataset of the same content hash is already there.
* Embeddings: per (run, kind) one header row, the ids in chunks of ``ID_CHUNK_ROWS`` (each
  an int64 count, int64 offsets and the UTF-8 bytes of the ids: :func:`_ids_to_chunk`) and the
  float32 matrix in chunks of ``CHUNK_ROWS`` rows, so a run's million vectors load in one
  ``SELECT`` of a few dozen rows, streamed (not a million fetches), no single value grows with
  the number of users (SQLite refuses a value over 1e9 bytes, PostgreSQL's ``bytea`` 1 GiB:
  100M ids of 36 characters are 3.6 GB), and ``get_vectors`` reads only the bytes (a few ids)
  or the chunks (many ids) that hold the requested vectors. ``load_embedding_columns`` reads
  the matrix straight into the dimension-major layout the search index keeps.
* ``finish_run`` writes weights, encoders, embeddings, summary and ``status='succeeded'`` in one
  transaction: a process killed before the commit leaves a run that is still queued/running
  (later marked failed by ``mark_orphans_failed``) and none of its artefacts.
* Run tables (schema 5): what audiences read about a run's users besides their vectors
  (attributes, favourite genres, who saw which item: ``audience.run_tables``), as named
  Parquet tables in parts like a dataset's, rows in the run's own user (or item) order, so
  that opening a run never joins millions of text ids again. Runs stored before have none.

The store knows nothing of torch: weights are opaque bytes (the pipeline saves them with
``torch.save`` and reads them with ``torch.load(..., weights_only=True)``).
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, declared_attr, mapped_column

from .dataset import Dataset
from .heap import return_freed_memory
from .records import ACTIVE_STATUSES, STATUSES, AudienceInfo, DatasetInfo, RunInfo, RunStatus
from .retrieval import hash_ids, ids_from_utf8, put_columns

log = logging.getLogger(__name__)

#: Version of the schema this code writes. A database with a newer version is refused.
SCHEMA_VERSION = 5
#: Schema history: 1 = the first store; 2 = ``runs.host`` and ``runs.heartbeat_at`` (jobs that
#: know their host; :func:`_migrate_v1_to_v2`); 3 = embedding ids in chunks
#: (``embedding_id_chunks``; ``embeddings.ids`` left empty) and dataset tables in parts
#: (``dataset_table_parts``; ``dataset_tables`` left empty): :func:`_migrate_v2_to_v3`;
#: 4 = ``runs.progress`` (the stage a training is in, for the pages;
#: :func:`_migrate_v3_to_v4`); 5 = ``run_table_parts`` (per-run tables for audiences;
#: :func:`_migrate_v4_to_v5`).
#: Rows of an embedding matrix per stored chunk (d=64: 4 MiB a chunk; 1M rows: 62 chunks).
CHUNK_ROWS = 16_384
#: A dataset table whose Parquet is larger is stored in row parts of about this size (ML-25M's
#: 25M interactions: ~200 MB, one part; several parts cost a dictionary union when read).
DATASET_PART_BYTES = 256 * 2**20
#: Longest name of a run table (``Store.save_run_tables``).
RUN_TABLE_NAME_CHARS = 16
#: Ids per stored id chunk (36-character ids: 4.7 MiB a chunk; 10M ids: 77 chunks).
ID_CHUNK_ROWS = 131_072
#: Run states (``records.RunStatus``; re-exported here). A run is "active" while queued or
#: running.
__all__ = ["STATUSES", "ACTIVE_STATUSES", "RunStatus", "Store", "StoreError", "content_hash"]
ORPHAN_ERROR = "the training process stopped unexpectedly"
EMBEDDING_KINDS = ("user", "item")
#: ``get_vectors`` reads up to this many vectors byte-exactly; more read whole chunks.
FEW_VECTORS = 16


class StoreError(ValueError):
    """A problem with the database the person can act on (unknown id, newer schema...)."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    """Declarative base of every table of the store."""


class SchemaVersion(Base):
    """One row: the schema version that wrote this database."""

    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class DatasetRow(Base):
    """A stored dataset's metadata (its tables live in ``dataset_tables``)."""

    __tablename__ = "datasets"
    __table_args__ = {"sqlite_autoincrement": True}  # see RunRow
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(400))
    format: Mapped[str] = mapped_column(String(64))
    n_users: Mapped[int] = mapped_column(Integer)
    n_items: Mapped[int] = mapped_column(Integer)
    n_interactions: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    rating_scale: Mapped[Any] = mapped_column(JSON, nullable=True)
    warnings: Mapped[Any] = mapped_column(JSON)
    truth: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetTableRow(Base):
    """Schema 1-2: one canonical table of a dataset as one Parquet blob (moved into
    ``dataset_table_parts`` by :func:`_migrate_v2_to_v3`; nothing writes here since)."""

    __tablename__ = "dataset_tables"
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DatasetPartRow(Base):
    """Part ``part`` (consecutive rows, see ``DATASET_PART_BYTES``) of one canonical table of
    a dataset (interactions, users, items) as Parquet bytes: a table of any length, no value
    past SQLite's 1e9 bytes."""

    __tablename__ = "dataset_table_parts"
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RunRow(Base):
    """A training run: config, status, process, timing, error, summary and progress."""

    __tablename__ = "runs"
    # AUTOINCREMENT: SQLite would otherwise hand a deleted newest run's id to the next run,
    # and caches, job logs (run-R.log), links and saved selections keyed by id would then
    # show the deleted run's data for the new one. PostgreSQL sequences never reuse ids.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    config: Mapped[Any] = mapped_column(JSON)
    preset: Mapped[str] = mapped_column(String(64))
    objective: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Host name of the training process (its pid means something only there); schema 2.
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Last time the training process said it is alive (``Store.heartbeat``); schema 2.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[Any] = mapped_column(JSON, nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs_total: Mapped[int] = mapped_column(Integer, default=0)
    #: Where the training process is: {"stage", "fraction", "message"} (``set_progress``);
    #: schema 3.
    progress: Mapped[Any] = mapped_column(JSON, nullable=True)


class EpochRow(Base):
    """One epoch's metrics of a run (JSON, NaN stored as null)."""

    __tablename__ = "epoch_metrics"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    metrics: Mapped[Any] = mapped_column(JSON)


class WeightsRow(Base):
    """A succeeded run's model weights (``torch.save`` bytes; opaque to the store)."""

    __tablename__ = "model_weights"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class EncodersRow(Base):
    """A succeeded run's fitted encoders (``FeatureEncoder.to_json()``)."""

    __tablename__ = "encoders"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[Any] = mapped_column(JSON)


class EmbeddingRow(Base):
    """Header of one embedding matrix: its shape (ids in ``embedding_id_chunks``; ``ids``
    held them as one .npy blob up to schema 2 and is empty since)."""

    __tablename__ = "embeddings"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    chunk_rows: Mapped[int] = mapped_column(Integer)
    ids: Mapped[bytes] = mapped_column(LargeBinary)


class _MatrixChunk:
    """The columns of one chunk of an embedding matrix (its vectors, or its ids)."""

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        # composite FK to the header: deleting the header (or its run) deletes the chunks
        return (ForeignKeyConstraint(["run_id", "kind"], ["embeddings.run_id", "embeddings.kind"],
                                     ondelete="CASCADE"),)


class EmbeddingChunkRow(_MatrixChunk, Base):
    """Rows ``[chunk * chunk_rows, (chunk + 1) * chunk_rows)`` of a matrix, float32 C order."""

    __tablename__ = "embedding_chunks"


class EmbeddingIdChunkRow(_MatrixChunk, Base):
    """Ids ``[chunk * ID_CHUNK_ROWS, ...)`` of a matrix (:func:`_ids_to_chunk` bytes)."""

    __tablename__ = "embedding_id_chunks"


class RunTablePartRow(Base):
    """Part ``part`` of the run table ``kind`` (consecutive rows as Parquet bytes, split like a
    dataset table's past ``DATASET_PART_BYTES``): columns keyed by the run's row order that
    audiences read instead of the dataset's text ids (schema 5)."""

    __tablename__ = "run_table_parts"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(RUN_TABLE_NAME_CHARS), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ProjectionRow(Base):
    """A 2-D map of a run's user or item vectors (ids and xy as .npy blobs)."""

    __tablename__ = "projections"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    ids: Mapped[bytes] = mapped_column(LargeBinary)
    xy: Mapped[bytes] = mapped_column(LargeBinary)
    params: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AudienceRow(Base):
    """A saved audience: its run, name and definition (the request that built it)."""

    __tablename__ = "audiences"
    __table_args__ = {"sqlite_autoincrement": True}  # see RunRow
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(400))
    definition: Mapped[Any] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AudienceMemberRow(Base):
    """One member of a saved audience, by rank."""

    __tablename__ = "audience_members"
    audience_id: Mapped[int] = mapped_column(
        ForeignKey("audiences.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)


# --------------------------------------------------------------------------------------------
# Helpers (pure functions)
# --------------------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def _jsonable(obj: Any) -> Any:
    """Plain JSON values; non-finite floats become None (PostgreSQL's JSON rejects NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, (int, str)):
        return obj
    raise TypeError(f"cannot store a value of type {type(obj).__name__} as JSON")


def _truth_to_json(truth: dict[str, Any]) -> dict[str, Any]:
    """``Dataset.truth`` as JSON: Series are tagged so they come back as Series."""
    out: dict[str, Any] = {}
    for key, val in truth.items():
        if isinstance(val, pd.Series):
            out[key] = {"__series__": True, "name": val.name,
                        "index": [str(i) for i in val.index], "values": _jsonable(val.to_numpy())}
        else:
            out[key] = _jsonable(val)
    return out


def _truth_from_json(data: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in (data or {}).items():
        if isinstance(val, dict) and val.get("__series__"):
            out[key] = pd.Series(val["values"], index=pd.Index(val["index"], dtype=object),
                                 name=val["name"])
        else:
            out[key] = val
    return out


def _list_columns(df: pd.DataFrame) -> list[str]:
    """Object columns whose values are lists (e.g. ``genres``)."""
    cols = []
    for c in df.columns:
        if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], (list, tuple)):
            cols.append(c)
    return cols


def _frame_to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


def _frame_from_parquet(data: bytes, columns: Sequence[str] | None = None
                        ) -> pd.DataFrame:
    return _lists_from_arrays(pd.read_parquet(io.BytesIO(data), engine="pyarrow",
                                              columns=None if columns is None
                                              else list(columns)))


def _lists_from_arrays(df: pd.DataFrame) -> pd.DataFrame:
    # Arrow list columns come back as numpy arrays per cell; the canonical form is list[str].
    for c in df.columns:
        if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], np.ndarray):
            df[c] = [list(v) if v is not None else [] for v in df[c]]
    return df


def _ids_to_bytes(ids: np.ndarray) -> bytes:
    arr = np.asarray(ids)
    buf = io.BytesIO()
    np.save(buf, arr if arr.dtype.kind == "U" else arr.astype(str), allow_pickle=False)
    return buf.getvalue()


def _ids_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _ids_to_chunk(ids: np.ndarray) -> bytes:
    """Ids (n,) as ``int64 n | int64 offsets (n + 1) | UTF-8 bytes`` (no width limit, no
    per-row Python when every id is ASCII: code points are copied as bytes)."""
    arr = np.asarray(ids)
    if arr.dtype.kind != "U":
        arr = arr.astype(str)
    n, width = len(arr), arr.dtype.itemsize // 4
    lengths = np.zeros(n, dtype=np.int64)                                    # (n,)
    payload = b""
    if n and width:
        cols = np.ascontiguousarray(arr).view(np.uint32).reshape(n, width)  # (n, W)
        if int(cols.max()) < 128:
            nonzero = cols != 0              # numpy strips trailing NULs: length = last char
            lengths = np.where(nonzero.any(axis=1),
                               width - np.argmax(nonzero[:, ::-1], axis=1), 0).astype(np.int64)
            payload = cols[np.arange(width) < lengths[:, None]].astype(np.uint8).tobytes()
        else:
            encoded = [t.encode("utf-8") for t in arr.tolist()]
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
            payload = b"".join(encoded)
    offsets = np.zeros(n + 1, dtype=np.int64)                                # (n + 1,)
    np.cumsum(lengths, out=offsets[1:])
    return np.array([n], dtype="<i8").tobytes() + offsets.astype("<i8").tobytes() + payload


def _ids_from_chunk(data: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`_ids_to_chunk`: a fixed-width unicode array (n,)."""
    n = int(np.frombuffer(data, dtype="<i8", count=1)[0])
    offsets = np.frombuffer(data, dtype="<i8", count=n + 1, offset=8)       # (n + 1,)
    return ids_from_utf8(offsets, np.frombuffer(data, dtype=np.uint8, offset=8 * (n + 2)))


def _find_rows(all_ids: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Row of each wanted id in ``all_ids`` (-1 when absent): a vectorised scan for a few
    ids, a hash lookup for many."""
    if len(want) <= 16:
        rows = np.full(len(want), -1, dtype=np.int64)
        for j, w in enumerate(want):
            hit = np.flatnonzero(all_ids == w)
            if len(hit):
                rows[j] = hit[0]
        return rows
    return pd.Index(all_ids).get_indexer(want).astype(np.int64)


def _array_to_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _all_unique(ids: np.ndarray) -> bool:
    """True when no id repeats. Fixed-width unicode ids are hashed as integers
    (:func:`~.retrieval.hash_ids`), then one integer sort; only ids whose hashes collide are
    compared exactly. About 10x faster than a pandas index at a million ids."""
    n = len(ids)
    if n < 2:
        return True
    if ids.dtype.kind != "U":
        return bool(pd.Index(ids, dtype=object).is_unique)
    h = hash_ids(ids)                                                        # (N,)
    s = np.sort(h)
    same = s[1:] == s[:-1]
    if not same.any():
        return True
    suspects = np.flatnonzero(np.isin(h, s[1:][same]))
    return len(set(ids[suspects].tolist())) == len(suspects)


def _check_matrix(ids: Any, vectors: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    ids_arr = np.asarray(ids)
    if ids_arr.dtype.kind != "U":
        ids_arr = ids_arr.astype(str)
    vec = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vec.ndim != 2:
        raise ValueError(f"{what} vectors must be 2-D (N, D), got shape {vec.shape}")
    if ids_arr.ndim != 1 or len(ids_arr) != vec.shape[0]:
        raise ValueError(f"{what}: {len(ids_arr)} ids for {vec.shape[0]} vectors")
    if not _all_unique(ids_arr):
        raise ValueError(f"{what} ids are not unique")
    return ids_arr, vec


DATASET_KINDS = ("interactions", "users", "items")


def _dataset_tables(ds: Dataset) -> tuple[dict[str, list[bytes]], str]:
    """The dataset's three tables as Parquet parts (one, unless its Parquet is over
    ``DATASET_PART_BYTES``) and the SHA-256 of them (its identity; a table of one part hashes
    as schema 2 hashed it)."""
    tables: dict[str, list[bytes]] = {}
    h = hashlib.sha256()
    for kind in DATASET_KINDS:
        tables[kind] = _parquet_parts(getattr(ds, kind))
        h.update(kind.encode())
        for part in tables[kind]:
            h.update(part)
    return tables, h.hexdigest()


def _parquet_parts(frame: pd.DataFrame) -> list[bytes]:
    """``frame`` as Parquet: one part, or row parts of about ``DATASET_PART_BYTES`` each when
    its Parquet is larger."""
    whole = _frame_to_parquet(frame)
    n_parts = min(len(frame), -(-len(whole) // DATASET_PART_BYTES))
    if n_parts <= 1:
        return [whole]
    step = -(-len(frame) // n_parts)
    del whole
    return [_frame_to_parquet(_part_of(frame, a, a + step)) for a in range(0, len(frame), step)]


def _part_of(frame: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    """Rows ``[start, stop)`` of ``frame``; categoricals keep only the categories used there
    (Parquet would otherwise store every category of the whole table in every part)."""
    part = frame.iloc[start:stop]
    cats = [c for c in part.columns if isinstance(part[c].dtype, pd.CategoricalDtype)]
    if cats:
        part = part.assign(**{c: part[c].cat.remove_unused_categories() for c in cats})
    return part


def _frame_from_parts(parts: Sequence[bytes], columns: Sequence[str] | None = None
                      ) -> pd.DataFrame:
    """A table (only ``columns`` of it if given) from its Parquet parts (in order),
    converted to pandas once."""
    if len(parts) == 1:
        return _frame_from_parquet(parts[0], columns)
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = None if columns is None else list(columns)
    table = pa.concat_tables([pq.read_table(io.BytesIO(p), columns=cols) for p in parts])
    return _lists_from_arrays(table.to_pandas())


def _run_table_parts(tables: Mapping[str, pd.DataFrame]) -> dict[str, list[bytes]]:
    """Run tables as Parquet parts by name; ValueError for a name that is no short text or
    a table that is no DataFrame."""
    out: dict[str, list[bytes]] = {}
    for kind, frame in tables.items():
        if not isinstance(kind, str) or not 0 < len(kind) <= RUN_TABLE_NAME_CHARS:
            raise ValueError(f"a run table's name must be text of 1 to {RUN_TABLE_NAME_CHARS} "
                             f"characters, got {kind!r}")
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"run table {kind!r} must be a DataFrame, got "
                             f"{type(frame).__name__}")
        out[kind] = _parquet_parts(frame)
    return out


def content_hash(ds: Dataset) -> str:
    """The dataset's identity in the store: equal for two loads of the same data."""
    return _dataset_tables(ds)[1]


def default_url() -> str:
    """``$DSSM_DB_URL``, else ``sqlite:///$DSSM_DATA_DIR/dssm.db`` (``DSSM_DATA_DIR``: ./data)."""
    url = os.environ.get("DSSM_DB_URL")
    if url:
        return url
    data_dir = Path(os.environ.get("DSSM_DATA_DIR", "data"))
    return f"sqlite:///{data_dir / 'dssm.db'}"


def _prepare_sqlite_file(url: str) -> None:
    """Create the folder of a SQLite file URL (not for ``:memory:``)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine with this project's SQLite settings (WAL, foreign keys, busy timeout).

    SQLite transactions that write start with ``BEGIN IMMEDIATE`` (so two writers queue on the
    busy timeout instead of failing on a lock upgrade); reads start with a plain ``BEGIN``.
    """
    _prepare_sqlite_file(url)
    is_sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {}
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000.0, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine, busy_timeout_ms)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver leaves BEGIN to us (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA page_size = 16384")  # only takes effect on a new file
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("dssm_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# --------------------------------------------------------------------------------------------
# Schema migrations (one function a step; each is idempotent and runs inside the transaction
# that bumps ``schema_version``, so a store is never left half-migrated)
# --------------------------------------------------------------------------------------------
def _add_missing_columns(s: Session, table: Any, names: Sequence[str]) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each of ``names`` (columns of the declarative
    ``table``) that the database's table lacks; returns those added. Names and types come
    from the schema above, never from input, so the DDL text holds no user value."""
    from sqlalchemy import inspect, text

    conn = s.connection()
    have = {c["name"] for c in inspect(conn).get_columns(table.name)}
    added = []
    for name in names:
        if name in have:
            continue
        col = table.c[name]
        ddl = col.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}"))
        added.append(name)
    return added


def _migrate_v1_to_v2(s: Session) -> None:
    """Schema 1 -> 2: ``runs.host`` and ``runs.heartbeat_at`` (both NULL on existing runs:
    a run without a heartbeat is judged by its pid on this host, as schema 1 did)."""
    _add_missing_columns(s, RunRow.__table__, ("host", "heartbeat_at"))


def _write_id_chunks(s: Session, run_id: int, kind: str, ids: np.ndarray) -> None:
    """A matrix's ids as ``embedding_id_chunks`` rows of ``ID_CHUNK_ROWS`` ids each."""
    for c, start in enumerate(range(0, len(ids), ID_CHUNK_ROWS)):
        s.execute(insert(EmbeddingIdChunkRow), [{
            "run_id": run_id, "kind": kind, "chunk": c,
            "data": _ids_to_chunk(ids[start:start + ID_CHUNK_ROWS])}])


def _migrate_v2_to_v3(s: Session) -> None:
    """Schema 2 -> 3: each matrix's ids move from the one ``embeddings.ids`` blob (which
    SQLite refuses past 1e9 bytes) into ``embedding_id_chunks`` (created by ``create_all``
    before this step; the blob is emptied; one matrix in memory at a time), and each dataset
    table's one Parquet blob becomes part 0 of it in ``dataset_table_parts``."""
    keys = s.execute(select(EmbeddingRow.run_id, EmbeddingRow.kind)).all()
    for run_id, kind in keys:
        have = s.scalar(select(func.count()).select_from(EmbeddingIdChunkRow)
                        .where(EmbeddingIdChunkRow.run_id == run_id,
                               EmbeddingIdChunkRow.kind == kind))
        blob = s.scalar(select(EmbeddingRow.ids).where(EmbeddingRow.run_id == run_id,
                                                       EmbeddingRow.kind == kind))
        if have or not blob:
            continue
        _write_id_chunks(s, run_id, kind, _ids_from_bytes(bytes(blob)))
        s.execute(update(EmbeddingRow).where(EmbeddingRow.run_id == run_id,
                                             EmbeddingRow.kind == kind).values(ids=b""))
    old = DatasetTableRow.__table__
    s.execute(insert(DatasetPartRow).from_select(
        ["dataset_id", "kind", "part", "data"],
        select(old.c.dataset_id, old.c.kind, literal(0), old.c.data)))
    s.execute(delete(DatasetTableRow))


def _migrate_v3_to_v4(s: Session) -> None:
    """Schema 3 -> 4: ``runs.progress`` (NULL on existing runs: no stage recorded)."""
    _add_missing_columns(s, RunRow.__table__, ("progress",))


def _migrate_v4_to_v5(s: Session) -> None:
    """Schema 4 -> 5: ``run_table_parts`` (created by ``create_all`` before this step). Runs
    stored before hold no run tables: audiences read the dataset's tables for them, as
    before, until ``python -m dssm_core backfill-tables`` (``audience.backfill_run_tables``)
    computes and keeps them (a migration does not: it would read every dataset)."""


#: ``from_version -> step`` of each migration, applied in order up to ``SCHEMA_VERSION``.
_MIGRATIONS: dict[int, Callable[[Session], None]] = {1: _migrate_v1_to_v2,
                                                     2: _migrate_v2_to_v3,
                                                     3: _migrate_v3_to_v4,
                                                     4: _migrate_v4_to_v5}


def _migrate(s: Session, from_version: int) -> None:
    """Apply every migration step from ``from_version`` up to :data:`SCHEMA_VERSION`."""
    for version in range(int(from_version), SCHEMA_VERSION):
        _MIGRATIONS[version](s)


# --------------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------------
class Store:
    """Repository over the database: datasets, runs, embeddings, projections, audiences.

    ``url_or_engine``: a SQLAlchemy URL string, an :class:`~sqlalchemy.engine.Engine` (use
    :func:`make_engine` for the SQLite settings), or ``None`` for :func:`default_url`.
    Tables are created on first use; a database written by a newer schema is refused.
    Public methods return plain Python/pandas/numpy values, never ORM objects.
    """

    def __init__(self, url_or_engine: str | Engine | None = None) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
        else:
            self.engine = make_engine(url_or_engine or default_url())
        self._init_schema()

    @staticmethod
    def default_url() -> str:
        """See :func:`default_url`."""
        return default_url()

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Close pooled connections (call before deleting a SQLite file)."""
        self.engine.dispose()

    # -- sessions ------------------------------------------------------------------------------
    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(dssm_write=True)
            with Session(bind=conn, expire_on_commit=False) as session:
                with session.begin():
                    yield session

    def _init_schema(self) -> None:
        Base.metadata.create_all(self.engine, checkfirst=True)
        with self._session(write=True) as s:
            row = s.get(SchemaVersion, 1, with_for_update=True)
            if row is None:
                _migrate(s, 1)  # tables that predate the version row: bring them up too
                s.add(SchemaVersion(id=1, version=SCHEMA_VERSION))
            elif row.version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database at {self.url} uses schema version {row.version}, newer than "
                    f"this program supports ({SCHEMA_VERSION}); upgrade dssm_core or use "
                    "another database"
                )
            elif row.version < SCHEMA_VERSION:
                old = int(row.version)
                _migrate(s, old)
                row.version = SCHEMA_VERSION
                log.info("store at %s migrated from schema %d to %d", self.url, old,
                         SCHEMA_VERSION)

    # -- datasets ------------------------------------------------------------------------------
    def add_dataset(self, ds: Dataset, name: str | None = None, *, reuse: bool = False) -> int:
        """Store a dataset (its three canonical tables as Parquet) and return its id.

        ``reuse``: when the store already holds a dataset with the same content (same
        :func:`content_hash`), return that one's id and store nothing (its name is kept).
        """
        tables, digest = _dataset_tables(ds)
        if reuse:
            found = self.find_dataset(digest)
            if found is not None:
                log.info("dataset already stored as %s; reused", found)
                return int(found)
        inter = ds.interactions
        row = DatasetRow(
            name=(name or ds.name or ds.format or "dataset")[:400],
            format=ds.format,
            n_users=int(inter["user_id"].nunique()) if len(inter) else int(len(ds.users)),
            n_items=int(inter["item_id"].nunique()) if len(inter) else int(len(ds.items)),
            n_interactions=int(len(inter)),
            content_hash=digest,
            rating_scale=list(ds.rating_scale) if ds.rating_scale is not None else None,
            warnings=list(ds.warnings),
            truth=_truth_to_json(ds.truth),
            created_at=_now(),
        )
        with self._session(write=True) as s:
            s.add(row)
            s.flush()
            for kind, parts in tables.items():
                for part, data in enumerate(parts):
                    s.execute(insert(DatasetPartRow), [{"dataset_id": row.id, "kind": kind,
                                                        "part": part, "data": data}])
            dataset_id = int(row.id)
        log.info("stored dataset %s (%s)", dataset_id, row.name)
        return dataset_id

    @staticmethod
    def _dataset_dict(r: DatasetRow) -> DatasetInfo:
        return DatasetInfo(
            id=int(r.id), name=r.name, format=r.format, n_users=int(r.n_users),
            n_items=int(r.n_items), n_interactions=int(r.n_interactions),
            content_hash=r.content_hash,
            rating_scale=tuple(r.rating_scale) if r.rating_scale is not None else None,
            warnings=list(r.warnings or []), created_at=_utc(r.created_at),
        )

    def find_same_dataset(self, ds: Dataset) -> DatasetInfo | None:
        """The newest stored dataset whose content equals ``ds``'s (see :func:`content_hash`),
        or None: what a second save of the same upload would duplicate."""
        found = self.find_dataset(content_hash(ds))
        return None if found is None else self.get_dataset(found)

    def list_datasets(self) -> list[DatasetInfo]:
        """Every dataset, newest first (no table data)."""
        with self._session() as s:
            rows = s.scalars(select(DatasetRow).order_by(DatasetRow.id.desc())).all()
            return [self._dataset_dict(r) for r in rows]

    def get_dataset(self, dataset_id: int) -> DatasetInfo:
        """One dataset's metadata; ``StoreError`` if unknown."""
        with self._session() as s:
            r = s.get(DatasetRow, int(dataset_id))
            if r is None:
                raise StoreError(f"no dataset with id {dataset_id}")
            return self._dataset_dict(r)

    def find_dataset(self, content_hash: str) -> int | None:
        """The newest dataset with this content hash, or None."""
        with self._session() as s:
            return s.scalar(select(DatasetRow.id).where(DatasetRow.content_hash == content_hash)
                            .order_by(DatasetRow.id.desc()).limit(1))

    def load_dataset(self, dataset_id: int) -> Dataset:
        """The stored dataset, exactly as it was added (dtypes, list-valued genres, truth)."""
        with self._session() as s:
            r = s.get(DatasetRow, int(dataset_id))
            if r is None:
                raise StoreError(f"no dataset with id {dataset_id}")
            parts: dict[str, list[bytes]] = {k: [] for k in DATASET_KINDS}
            for kind, data in s.execute(select(DatasetPartRow.kind, DatasetPartRow.data)
                                        .where(DatasetPartRow.dataset_id == r.id)
                                        .order_by(DatasetPartRow.kind, DatasetPartRow.part)):
                parts[kind].append(data)
            meta = self._dataset_dict(r)
            truth = _truth_from_json(r.truth)
        # each table's Parquet is dropped once converted; Arrow's pool keeps the pages its
        # decoding freed (0.61 GB at 25M interactions) until they are given back
        frames = {kind: _frame_from_parts(parts.pop(kind))
                  for kind in DATASET_KINDS}
        return_freed_memory()
        return Dataset(**frames, format=meta.format, name=meta.name,
                       rating_scale=meta.rating_scale, warnings=meta.warnings, truth=truth)

    def load_dataset_table(self, dataset_id: int, kind: str,
                           columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One canonical table of a stored dataset ("interactions", "users" or "items"),
        read in one query and converted once (a loaded run reads each when it needs it);
        ``columns``: only these columns (e.g. the interactions' ids, not their times)."""
        if kind not in DATASET_KINDS:
            raise ValueError(f"kind must be one of {DATASET_KINDS}, got {kind!r}")
        with self._session() as s:
            if s.get(DatasetRow, int(dataset_id)) is None:
                raise StoreError(f"no dataset with id {dataset_id}")
            parts = list(s.scalars(select(DatasetPartRow.data)
                                   .where(DatasetPartRow.dataset_id == int(dataset_id),
                                          DatasetPartRow.kind == kind)
                                   .order_by(DatasetPartRow.part)))
        return _frame_from_parts(parts, columns)

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete a dataset with its runs and everything they own."""
        with self._session(write=True) as s:
            if s.get(DatasetRow, int(dataset_id)) is None:
                raise StoreError(f"no dataset with id {dataset_id}")
            s.execute(delete(DatasetRow).where(DatasetRow.id == int(dataset_id)))

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, dataset_id: int, config: dict[str, Any], *, preset: str = "custom",
                   objective: str = "pointwise", protocol: str = "T") -> int:
        """A new queued run of ``dataset_id`` with ``config`` (``TrainConfig.to_dict()``)."""
        with self._session(write=True) as s:
            if s.get(DatasetRow, int(dataset_id)) is None:
                raise StoreError(f"no dataset with id {dataset_id}")
            row = RunRow(
                dataset_id=int(dataset_id), config=_jsonable(config), preset=preset,
                objective=objective, protocol=protocol, status="queued", pid=None,
                cancel_requested=False, created_at=_now(), epoch=0,
                epochs_total=int(config.get("epochs", 0) or 0),
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def _run(self, s: Session, run_id: int, *, lock: bool = False) -> RunRow:
        """The run's row; ``lock``: SELECT ... FOR UPDATE, so a status check and the write
        that follows it are atomic on PostgreSQL too (SQLite writers already hold the
        database lock from BEGIN IMMEDIATE; FOR UPDATE is not rendered there)."""
        r = s.get(RunRow, int(run_id), with_for_update=lock)
        if r is None:
            raise StoreError(f"no run with id {run_id}")
        return r

    def mark_running(self, run_id: int, pid: int | None = None, *,
                     host: str | None = None) -> None:
        """Queued -> running, recording the training process id, its host (default: this
        machine's name), the start time and a first heartbeat."""
        with self._session(write=True) as s:
            r = self._run(s, run_id, lock=True)
            if r.status not in ACTIVE_STATUSES:
                raise StoreError(f"run {run_id} is {r.status}; it cannot start")
            r.status = "running"
            r.pid = int(pid) if pid is not None else os.getpid()
            r.host = str(host if host is not None else socket.gethostname())[:255]
            r.started_at = r.heartbeat_at = _now()

    def heartbeat(self, run_id: int) -> bool:
        """The training process of ``run_id`` is alive: stamp ``heartbeat_at`` with now.
        Returns False (and writes nothing) once the run has ended."""
        with self._session(write=True) as s:
            res = s.execute(update(RunRow).where(RunRow.id == int(run_id),
                                                 RunRow.status.in_(ACTIVE_STATUSES))
                            .values(heartbeat_at=_now()))
            return bool(res.rowcount)

    def set_progress(self, run_id: int, stage: str, fraction: float,
                     message: str | None = None) -> None:
        """Record where the run's training process is (``dssm_core.progress``: a stage and
        the share of it done, 0..1) for the pages; ``StoreError`` if the run is unknown."""
        value = {"stage": str(stage), "fraction": min(1.0, max(0.0, float(fraction))),
                 "message": None if message is None else str(message)[:500]}
        with self._session(write=True) as s:
            res = s.execute(update(RunRow).where(RunRow.id == int(run_id))
                            .values(progress=value))
            if not res.rowcount:
                raise StoreError(f"no run with id {run_id}")

    def add_epoch(self, run_id: int, metrics: dict[str, Any]) -> None:
        """Record one epoch's metrics (``metrics["epoch"]``, else the next number)."""
        with self._session(write=True) as s:
            r = self._run(s, run_id)
            epoch = metrics.get("epoch")
            if epoch is None:
                last = s.scalar(select(func.max(EpochRow.epoch)).where(EpochRow.run_id == r.id))
                epoch = (last or 0) + 1
            epoch = int(epoch)
            existing = s.get(EpochRow, (r.id, epoch))
            if existing is not None:
                existing.metrics = _jsonable(metrics)
            else:
                s.add(EpochRow(run_id=r.id, epoch=epoch, metrics=_jsonable(metrics)))
            r.epoch = max(r.epoch or 0, epoch)

    def request_cancel(self, run_id: int) -> None:
        """Ask the training process to stop (it checks ``cancel_requested`` between batches)."""
        with self._session(write=True) as s:
            self._run(s, run_id).cancel_requested = True

    def cancel_requested(self, run_id: int) -> bool:
        """True once ``request_cancel`` was called for this run."""
        with self._session() as s:
            return bool(self._run(s, run_id).cancel_requested)

    def fail_run(self, run_id: int, error: str, *, status: str = "failed") -> None:
        """End a run as ``failed`` (with the error text) or ``cancelled``."""
        if status not in ("failed", "cancelled"):
            raise ValueError(f"status must be 'failed' or 'cancelled', got {status!r}")
        with self._session(write=True) as s:
            r = self._run(s, run_id, lock=True)
            if r.status == "succeeded":
                raise StoreError(f"run {run_id} already succeeded")
            r.status = status
            r.error = str(error)
            r.finished_at = _now()

    def finish_run(self, run_id: int, *, summary: dict[str, Any], weights: bytes,
                   encoders: dict[str, Any], user_ids: Any, user_vectors: Any,
                   item_ids: Any, item_vectors: Any,
                   run_tables: Mapping[str, pd.DataFrame] | None = None) -> None:
        """Write weights, encoders, both embedding matrices, the summary and ``succeeded``
        in ONE transaction: either all of it is visible afterwards or none of it.
        ``run_tables``: named tables to keep with the run (see :meth:`save_run_tables`)."""
        tables = _run_table_parts(run_tables or {})
        uids, uvec = _check_matrix(user_ids, user_vectors, "user")
        iids, ivec = _check_matrix(item_ids, item_vectors, "item")
        if uvec.shape[1] != ivec.shape[1]:
            raise ValueError(f"user and item vectors differ in size: {uvec.shape[1]} vs "
                             f"{ivec.shape[1]}")
        if not isinstance(weights, (bytes, bytearray, memoryview)):
            raise ValueError("weights must be bytes (torch.save output)")
        enc = _jsonable(encoders)
        summ = _jsonable(summary)
        with self._session(write=True) as s:
            r = self._run(s, run_id, lock=True)
            if r.status not in ACTIVE_STATUSES:
                raise StoreError(f"run {run_id} is {r.status}; only a queued or running run "
                                 "can finish")
            rid = r.id
            for table in (WeightsRow, EncodersRow, EmbeddingRow):
                s.execute(delete(table).where(table.run_id == rid))
            s.execute(insert(WeightsRow), [{"run_id": rid, "data": bytes(weights)}])
            s.execute(insert(EncodersRow), [{"run_id": rid, "data": enc}])
            self._write_embeddings(s, rid, "user", uids, uvec)
            self._write_embeddings(s, rid, "item", iids, ivec)
            self._write_run_tables(s, rid, tables)
            now = _now()
            s.execute(update(RunRow).where(RunRow.id == rid).values(
                status="succeeded", summary=summ, finished_at=now, error=None,
                started_at=func.coalesce(RunRow.started_at, now)))
        log.info("run %s succeeded (%d users, %d items)", rid, len(uids), len(iids))

    def _write_embeddings(self, s: Session, run_id: int, kind: str, ids: np.ndarray,
                          vectors: np.ndarray) -> None:
        n, dim = vectors.shape
        s.execute(insert(EmbeddingRow), [{
            "run_id": run_id, "kind": kind, "n": n, "dim": dim, "chunk_rows": CHUNK_ROWS,
            "ids": b""}])
        _write_id_chunks(s, run_id, kind, ids)
        for c, start in enumerate(range(0, n, CHUNK_ROWS)):
            self._write_chunk(s, run_id, kind, c, vectors[start:start + CHUNK_ROWS])

    @staticmethod
    def _write_run_tables(s: Session, run_id: int, tables: Mapping[str, list[bytes]]) -> None:
        for kind, parts in tables.items():
            s.execute(delete(RunTablePartRow).where(RunTablePartRow.run_id == run_id,
                                                    RunTablePartRow.kind == kind))
            for part, data in enumerate(parts):
                s.execute(insert(RunTablePartRow), [{"run_id": run_id, "kind": kind,
                                                     "part": part, "data": data}])

    def save_run_tables(self, run_id: int, tables: Mapping[str, pd.DataFrame]) -> None:
        """Keep named tables with a run (Parquet parts, ``DATASET_PART_BYTES`` each at most),
        replacing tables of the same names, in one transaction. Names are text of at most
        ``RUN_TABLE_NAME_CHARS`` characters; what the tables mean is the caller's (audiences:
        ``audience.run_tables``)."""
        parts = _run_table_parts(tables)
        with self._session(write=True) as s:
            self._write_run_tables(s, self._run(s, run_id).id, parts)

    def load_run_table(self, run_id: int, kind: str, columns: Sequence[str] | None = None
                       ) -> pd.DataFrame | None:
        """The run table ``kind`` (only ``columns`` of it if given), read in one query and
        converted once; None when the run has no such table (e.g. stored before schema 5)."""
        with self._session() as s:
            rid = self._run(s, run_id).id
            parts = list(s.scalars(select(RunTablePartRow.data)
                                   .where(RunTablePartRow.run_id == rid,
                                          RunTablePartRow.kind == str(kind))
                                   .order_by(RunTablePartRow.part)))
        return _frame_from_parts(parts, columns) if parts else None

    def _write_chunk(self, s: Session, run_id: int, kind: str, chunk: int,
                     block: np.ndarray) -> None:
        s.execute(insert(EmbeddingChunkRow), [{
            "run_id": run_id, "kind": kind, "chunk": chunk,
            "data": memoryview(np.ascontiguousarray(block)).cast("B")}])

    @staticmethod
    def _run_dict(r: RunRow, dataset_name: str | None) -> RunInfo:
        started, finished = _utc(r.started_at), _utc(r.finished_at)
        if started is not None:
            end = finished or (_now() if r.status in ACTIVE_STATUSES else started)
            duration: float | None = max(0.0, (end - started).total_seconds())
        else:
            duration = None
        return RunInfo(
            id=int(r.id), dataset_id=int(r.dataset_id), dataset_name=dataset_name,
            status=RunStatus(r.status), preset=r.preset, objective=r.objective,
            protocol=r.protocol, config=dict(r.config or {}), pid=r.pid, host=r.host,
            heartbeat_at=_utc(r.heartbeat_at),
            cancel_requested=bool(r.cancel_requested), created_at=_utc(r.created_at),
            started_at=started, finished_at=finished, duration_s=duration,
            error=r.error, summary=dict(r.summary) if r.summary else {},
            epoch=r.epoch or 0, epochs_total=r.epochs_total or 0,
            progress=dict(r.progress) if r.progress else None,
        )

    def list_runs(self, dataset_id: int | None = None) -> list[RunInfo]:
        """Runs (newest first), with ``dataset_name`` and ``duration_s``."""
        with self._session() as s:
            q = (select(RunRow, DatasetRow.name)
                 .join(DatasetRow, RunRow.dataset_id == DatasetRow.id)
                 .order_by(RunRow.id.desc()))
            if dataset_id is not None:
                q = q.where(RunRow.dataset_id == int(dataset_id))
            return [self._run_dict(r, name) for r, name in s.execute(q).all()]

    def get_run(self, run_id: int) -> RunInfo:
        """One run (see ``list_runs``); ``StoreError`` if unknown."""
        with self._session() as s:
            r = self._run(s, run_id)
            name = s.scalar(select(DatasetRow.name).where(DatasetRow.id == r.dataset_id))
            return self._run_dict(r, name)

    def newest_succeeded_run(self, dataset_id: int | None = None) -> int | None:
        """Id of the most recent succeeded run (of one dataset if given), or None."""
        with self._session() as s:
            q = select(RunRow.id).where(RunRow.status == "succeeded")
            if dataset_id is not None:
                q = q.where(RunRow.dataset_id == int(dataset_id))
            return s.scalar(q.order_by(RunRow.id.desc()).limit(1))

    def epochs(self, run_id: int) -> pd.DataFrame:
        """Per-epoch metrics, one row per epoch in order (missing values as NaN)."""
        with self._session() as s:
            self._run(s, run_id)
            rows = s.execute(select(EpochRow.epoch, EpochRow.metrics)
                             .where(EpochRow.run_id == int(run_id))
                             .order_by(EpochRow.epoch)).all()
        records = [{**(m or {}), "epoch": e} for e, m in rows]
        df = pd.DataFrame.from_records(records) if records else pd.DataFrame({"epoch": []})
        cols = ["epoch"] + [c for c in df.columns if c != "epoch"]
        df = df[cols]
        for c in df.columns:
            if df[c].dtype == object:
                conv = pd.to_numeric(df[c], errors="coerce")
                if conv.notna().sum() == df[c].notna().sum():
                    df[c] = conv.astype(float)
        return df.reset_index(drop=True)

    def load_weights(self, run_id: int) -> bytes:
        """A succeeded run's model weights (read them with ``torch.load(weights_only=True)``)."""
        with self._session() as s:
            self._run(s, run_id)
            data = s.scalar(select(WeightsRow.data).where(WeightsRow.run_id == int(run_id)))
        if data is None:
            raise StoreError(f"run {run_id} has no stored weights (it did not succeed)")
        return bytes(data)

    def load_encoders(self, run_id: int) -> dict[str, Any]:
        """The fitted encoders' JSON of a succeeded run."""
        with self._session() as s:
            self._run(s, run_id)
            data = s.scalar(select(EncodersRow.data).where(EncodersRow.run_id == int(run_id)))
        if data is None:
            raise StoreError(f"run {run_id} has no stored encoders (it did not succeed)")
        return dict(data)

    def _embedding_header(self, s: Session, run_id: int, kind: str) -> EmbeddingRow:
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
        self._run(s, run_id)
        head = s.get(EmbeddingRow, (int(run_id), kind))
        if head is None:
            raise StoreError(f"run {run_id} has no stored {kind} embeddings (it did not succeed)")
        return head

    @staticmethod
    def _load_ids(s: Session, head: EmbeddingRow) -> np.ndarray:
        """All ids of a matrix (N,), in row order, from its id chunks."""
        parts = [_ids_from_chunk(data) for (data,) in s.execute(
            select(EmbeddingIdChunkRow.data)
            .where(EmbeddingIdChunkRow.run_id == head.run_id,
                   EmbeddingIdChunkRow.kind == head.kind)
            .order_by(EmbeddingIdChunkRow.chunk).execution_options(yield_per=1))]
        ids = (np.concatenate(parts) if len(parts) > 1 else parts[0] if parts
               else np.empty(0, dtype="<U1"))
        if len(ids) != head.n:
            raise StoreError(f"run {head.run_id}: stored {head.kind} ids are incomplete")
        return ids

    def load_embedding_ids(self, run_id: int, kind: str) -> np.ndarray:
        """The ids of a run's ``kind`` vectors (N,), in row order, without the vectors."""
        with self._session() as s:
            return self._load_ids(s, self._embedding_header(s, run_id, kind))

    def _read_matrix(self, run_id: int, kind: str, columns: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Ids (N,) and the matrix, (N, D) or, with ``columns``, dimension-major (D, N).

        One query; rows streamed one chunk at a time, so the peak memory is the matrix plus
        one chunk (not the matrix twice).
        """
        with self._session() as s:
            head = self._embedding_header(s, run_id, kind)
            n, dim, rows_per = head.n, head.dim, head.chunk_rows
            ids = self._load_ids(s, head)
            out = np.empty((dim, n) if columns else (n, dim), dtype=np.float32)
            result = s.execute(select(EmbeddingChunkRow.chunk, EmbeddingChunkRow.data)
                               .where(EmbeddingChunkRow.run_id == int(run_id),
                                      EmbeddingChunkRow.kind == kind)
                               .execution_options(yield_per=1))
            seen = 0
            for chunk, data in result:
                block = np.frombuffer(data, dtype=np.float32).reshape(-1, dim)   # (r, D)
                start = chunk * rows_per
                if columns:
                    put_columns(out, start, block)
                else:
                    out[start:start + len(block)] = block
                seen += block.size
        if seen != n * dim:
            raise StoreError(f"run {run_id}: stored {kind} embeddings are incomplete")
        return ids, out

    def load_embeddings(self, run_id: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """All ids and vectors of one kind ("user"/"item"): ``(ids (N,), vectors (N, D))``.

        One query returns the id chunks, one the matrix's chunks; the float32 matrix is
        assembled into one writable C-contiguous array.
        """
        return self._read_matrix(run_id, kind, columns=False)

    def load_embedding_columns(self, run_id: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`load_embeddings` but the matrix dimension-major: ``(ids (N,),
        columns (D, N))`` C-contiguous, the layout :class:`~.retrieval.UserIndex` searches
        (each chunk is transposed as it arrives: no second full copy)."""
        return self._read_matrix(run_id, kind, columns=True)

    def get_vectors(self, run_id: int, kind: str, ids: Sequence[str]) -> np.ndarray:
        """Vectors of some ids (in the given order), reading only the chunks that hold them.

        Unknown ids raise ``ValueError`` naming them.
        """
        want = np.asarray([str(i) for i in ids])
        with self._session() as s:
            head = self._embedding_header(s, run_id, kind)
            all_ids = self._load_ids(s, head)
            rows = _find_rows(all_ids, want)
            if (rows < 0).any():
                missing = [str(x) for x in want[rows < 0]]
                raise ValueError(f"unknown {kind} ids in run {run_id}: "
                                 f"{', '.join(repr(m) for m in missing[:10])}"
                                 + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
            out = np.empty((len(want), head.dim), dtype=np.float32)        # (K, D)
            nbytes = head.dim * 4
            if len(want) <= FEW_VECTORS:
                # a few vectors: read only their bytes (substr on the chunk, 1-based offsets)
                for j, row in enumerate(rows.tolist()):
                    c, off = divmod(row, head.chunk_rows)
                    part = s.scalar(select(func.substr(EmbeddingChunkRow.data,
                                                       off * nbytes + 1, nbytes))
                                    .where(EmbeddingChunkRow.run_id == int(run_id),
                                           EmbeddingChunkRow.kind == kind,
                                           EmbeddingChunkRow.chunk == c))
                    out[j] = np.frombuffer(bytes(part), dtype=np.float32)
                return out
            chunks = sorted(set((rows // head.chunk_rows).tolist()))
            data = dict(s.execute(select(EmbeddingChunkRow.chunk, EmbeddingChunkRow.data)
                                  .where(EmbeddingChunkRow.run_id == int(run_id),
                                         EmbeddingChunkRow.kind == kind,
                                         EmbeddingChunkRow.chunk.in_(chunks))).all())
            for j, row in enumerate(rows.tolist()):
                c, off = divmod(row, head.chunk_rows)
                block = np.frombuffer(data[c], dtype=np.float32).reshape(-1, head.dim)
                out[j] = block[off]
        return out

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics, weights, encoders, embeddings, run tables, maps and
        audiences."""
        with self._session(write=True) as s:
            self._run(s, run_id)
            s.execute(delete(RunRow).where(RunRow.id == int(run_id)))

    def mark_orphans_failed(self, is_alive: Callable[[int], bool], *,
                            stale_after_s: float | None = None,
                            host: str | None = None) -> list[int]:
        """Queued/running runs whose training process is gone become ``failed``.

        A run is gone when its heartbeat is older than ``stale_after_s`` seconds (``None``:
        heartbeats are not looked at) and, when it runs on this host (``host``, default this
        machine's name; a run without a host counts as local), ``is_alive(pid)`` is False as
        well. A pid of another host is never judged: there only the heartbeat counts. A run
        with no heartbeat (written by schema 1) is judged by its pid alone. Runs without a
        pid (queued, not yet picked up) are left alone. Returns the ids marked failed.
        """
        here = host if host is not None else socket.gethostname()
        now = _now()
        with self._session() as s:
            cands = s.execute(select(RunRow.id, RunRow.pid, RunRow.host, RunRow.heartbeat_at)
                              .where(RunRow.status.in_(ACTIVE_STATUSES),
                                     RunRow.pid.is_not(None))).all()

        def gone(pid: int, run_host: str | None, beat: datetime | None) -> bool:
            if beat is not None and stale_after_s is not None:
                if (now - _utc(beat)).total_seconds() <= float(stale_after_s):
                    return False  # fresh heartbeat: alive wherever it runs
                if run_host is not None and run_host != here:
                    return True   # stale, on another host: its pid means nothing here
            elif run_host is not None and run_host != here:
                return False      # no heartbeat to judge by, and not our pid to check
            return not is_alive(int(pid))

        dead = [rid for rid, pid, h, beat in cands if gone(pid, h, beat)]
        marked: list[int] = []
        for rid in dead:
            with self._session(write=True) as s:
                # re-check inside the write transaction: it may have finished meanwhile
                res = s.execute(update(RunRow).where(RunRow.id == rid,
                                                     RunRow.status.in_(ACTIVE_STATUSES))
                                .values(status="failed", error=ORPHAN_ERROR, finished_at=_now()))
                if res.rowcount:
                    marked.append(rid)
        if marked:
            log.warning("runs %s: %s", marked, ORPHAN_ERROR)
        return marked

    # -- projections ---------------------------------------------------------------------------
    def save_projection(self, run_id: int, kind: str, ids: Any, xy: Any,
                        params: dict[str, Any]) -> None:
        """Store (replace) the 2-D map of a run's ``kind`` vectors: ids (M,), xy (M, 2)."""
        ids_arr = np.asarray(ids).astype(str)
        xy_arr = np.ascontiguousarray(np.asarray(xy, dtype=np.float32))
        if xy_arr.ndim != 2 or xy_arr.shape[0] != len(ids_arr):
            raise ValueError(f"xy must be (M, k) for {len(ids_arr)} ids, got {xy_arr.shape}")
        with self._session(write=True) as s:
            self._run(s, run_id)
            s.execute(delete(ProjectionRow).where(ProjectionRow.run_id == int(run_id),
                                                  ProjectionRow.kind == kind))
            s.add(ProjectionRow(run_id=int(run_id), kind=kind, ids=_ids_to_bytes(ids_arr),
                                xy=_array_to_bytes(xy_arr), params=_jsonable(params),
                                created_at=_now()))

    def load_projection(self, run_id: int, kind: str
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        """``(ids (M,), xy (M, 2) float32, params)`` or None when not computed yet."""
        with self._session() as s:
            self._run(s, run_id)
            r = s.get(ProjectionRow, (int(run_id), kind))
            if r is None:
                return None
            return (_ids_from_bytes(r.ids), np.load(io.BytesIO(r.xy), allow_pickle=False),
                    dict(r.params or {}))

    # -- audiences -----------------------------------------------------------------------------
    def save_audience(self, run_id: int, name: str, definition: dict[str, Any],
                      members: pd.DataFrame) -> int:
        """Save an audience: ``members`` has ``user_id`` and ``score`` (and ``rank``, else the
        row order is the rank). Returns the audience id."""
        if not name or not str(name).strip():
            raise ValueError("an audience needs a name")
        missing = {"user_id", "score"} - set(members.columns)
        if missing:
            raise ValueError(f"members lack columns: {', '.join(sorted(missing))}")
        ranks = (members["rank"].to_numpy(np.int64) if "rank" in members.columns
                 else np.arange(1, len(members) + 1))
        rows = [{"rank": int(r), "user_id": str(u), "score": float(sc)}
                for r, u, sc in zip(ranks, members["user_id"].astype(str), members["score"])]
        with self._session(write=True) as s:
            self._run(s, run_id)
            a = AudienceRow(run_id=int(run_id), name=str(name).strip()[:400],
                            definition=_jsonable(definition), size=len(rows),
                            created_at=_now())
            s.add(a)
            s.flush()
            if rows:
                for r in rows:
                    r["audience_id"] = a.id
                s.execute(insert(AudienceMemberRow), rows)
            return int(a.id)

    def list_audiences(self, run_id: int | None = None) -> list[AudienceInfo]:
        """Saved audiences (newest first): id, run_id, name, size, definition, created_at."""
        with self._session() as s:
            q = select(AudienceRow).order_by(AudienceRow.id.desc())
            if run_id is not None:
                q = q.where(AudienceRow.run_id == int(run_id))
            return [AudienceInfo(id=int(a.id), run_id=int(a.run_id), name=a.name,
                                 size=int(a.size), definition=dict(a.definition or {}),
                                 created_at=_utc(a.created_at))
                    for a in s.scalars(q).all()]

    def load_audience(self, audience_id: int) -> AudienceInfo:
        """A saved audience as in ``list_audiences`` plus ``members``: DataFrame
        (rank, user_id, score) ordered by rank."""
        with self._session() as s:
            a = s.get(AudienceRow, int(audience_id))
            if a is None:
                raise StoreError(f"no audience with id {audience_id}")
            rows = s.execute(select(AudienceMemberRow.rank, AudienceMemberRow.user_id,
                                    AudienceMemberRow.score)
                             .where(AudienceMemberRow.audience_id == a.id)
                             .order_by(AudienceMemberRow.rank)).all()
            head = dict(id=int(a.id), run_id=int(a.run_id), name=a.name, size=int(a.size),
                        definition=dict(a.definition or {}), created_at=_utc(a.created_at))
        members = pd.DataFrame({
            "rank": np.array([r[0] for r in rows], dtype=np.int64),
            "user_id": pd.Series([r[1] for r in rows], dtype=object),
            "score": np.array([r[2] for r in rows], dtype=np.float64),
        })
        return AudienceInfo(**head, members=members)

    def delete_audience(self, audience_id: int) -> None:
        """Delete a saved audience and its members."""
        with self._session(write=True) as s:
            if s.get(AudienceRow, int(audience_id)) is None:
                raise StoreError(f"no audience with id {audience_id}")
            s.execute(delete(AudienceRow).where(AudienceRow.id == int(audience_id)))
