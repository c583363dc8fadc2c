"""The entry points: ``load``, ``sniff`` and ``peek_columns`` (re-exported by ``dssm_core.io``).

Each takes any accepted source, or a ``Source`` already resolved by ``open_source``, so an
upload that is sniffed, peeked at and loaded is resolved (and its archive listed and checked)
once.
"""
from __future__ import annotations

from typing import Any

from ..dataset import DataValidationError, Dataset
from .assemble import _assemble
from .formats import _load_article, _load_dat, _load_latest, _load_ml100k
from .generic import ColumnMapping, _load_generic
from .sources import (DEFAULT_MAX_BYTES, DEFAULT_MAX_UNZIPPED_BYTES, _Entry, _Source,
                      _data_entries, _resolve)
from .tables import ENGINES, _entry_columns, _first_line, _prepare, _split_header


def _sniff(src: _Source, mapping: ColumnMapping | None) -> tuple[str, _Entry | None]:
    if mapping is not None:
        return "generic", None
    if src.find("u.data"):
        return "ml-100k", None
    if src.find("ratings.dat"):
        return ("ml-1m" if src.find("users.dat") else "ml-10m"), None
    if src.find("ratings.csv"):
        return "ml-latest", None
    cands = _data_entries(src)
    if len(src.entries) > 1 and not cands:
        found = ", ".join(e.name for e in src.entries[:12])
        raise DataValidationError(
            "no known MovieLens files (u.data, ratings.dat, ratings.csv) or data files "
            f"(.csv .tsv .txt .parquet); found: {found}",
            file=src.where,
        )
    if not src.entries:
        raise DataValidationError(
            "no files found; expected u.data, ratings.dat, ratings.csv or a data file",
            file=src.where,
        )
    for e in cands or src.entries[:1]:
        raw = e.read()
        if raw[:4] == b"PAR1":
            continue
        data = _prepare(raw, e.display, [])
        head = [h.strip().lower() for h in _split_header(_first_line(data, "utf-8", e.display),
                                                          ",")]
        if {"user_id", "movie_id", "rating", "timestamp"} <= set(head):
            return "article", e
    return "generic", None


def sniff(source: Any, *, max_bytes: int = DEFAULT_MAX_BYTES,
          max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES) -> str:
    """The format name of ``source`` (one of ``FORMATS``' names) without parsing it all.

    "generic" means: a table ``load`` can read given a ``ColumnMapping``. Raises
    ``DataValidationError`` for sources that cannot be any format (empty folder, bad zip...).
    """
    src = _resolve(source, max_bytes, max_unzipped_bytes)
    return _sniff(src, None)[0]


def peek_columns(source: Any, *, file: str | None = None, encoding: str = "utf-8",
                 sep: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES) -> list[str]:
    """The header columns of a generic CSV/TSV/Parquet file (for a column-mapping form).

    ``file`` picks the file inside a folder, zip or list of uploads (needed when there are
    several data files). Trailing empty header fields are left out.
    """
    src = _resolve(source, max_bytes, max_unzipped_bytes)
    if file is not None:
        entry = src.named(file)
    else:
        cands = _data_entries(src) or src.entries
        if len(cands) != 1:
            found = ", ".join(e.name for e in src.entries) or "nothing"
            raise DataValidationError(f"several files; say which one (found: {found})",
                                      file=src.where)
        entry = cands[0]
    return _entry_columns(entry, encoding=encoding, sep=sep)


def load(
    source: Any,
    *,
    mapping: ColumnMapping | None = None,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
    engine: str = "auto",
) -> Dataset:
    """Read any supported MovieLens-style input into the canonical ``Dataset``.

    source: a folder, a file path (CSV/TSV/TXT/DAT/Parquet or .zip), a ``(filename, bytes)``
        pair, an object with ``.name`` and ``.getvalue()``/``.read()`` (Streamlit
        ``UploadedFile``), or a list of those (read as one folder).
    mapping: needed for a generic table (``sniff`` says "generic"); forces that reading.
    name: display name of the dataset (default: the folder, archive or file name).
    max_bytes: the largest file or archive accepted; max_unzipped_bytes: the largest total
        an archive may expand to (checked before anything is decompressed).
    engine: the CSV reader for large tables: "auto" (= "pandas", its C reader; the faster
        and leaner one in bench/load_bench.py) or "pyarrow".

    Raises ``DataValidationError`` (a ``ValueError``) naming file, line and column.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    src = _resolve(source, max_bytes, max_unzipped_bytes)
    fmt, entry = _sniff(src, mapping)
    warnings: list[str] = []
    file = src.label
    if fmt == "ml-100k":
        parts = _load_ml100k(src, warnings, engine)
        file = src.find("u.data").display  # type: ignore[union-attr]
    elif fmt in ("ml-1m", "ml-10m"):
        parts = _load_dat(src, warnings, engine)
        file = src.find("ratings.dat").display  # type: ignore[union-attr]
    elif fmt == "ml-latest":
        parts = _load_latest(src, warnings, engine)
        file = src.find("ratings.csv").display  # type: ignore[union-attr]
    elif fmt == "article":
        assert entry is not None
        parts = _load_article(entry, warnings, engine)
        file = entry.display
    else:
        if mapping is None:
            e = (_data_entries(src) or src.entries)[0]
            cols = _entry_columns(e)
            raise DataValidationError(
                "not a known MovieLens layout: give a column mapping (user, item, optional "
                f"rating and timestamp columns); found columns: {', '.join(cols)}",
                file=e.display, line=1,
            )
        parts = _load_generic(src, mapping, warnings, engine)
        file = parts["file"]
    return _assemble(parts, fmt, name or src.label, warnings, file)
