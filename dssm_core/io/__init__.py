"""Data in: every MovieLens-style input an analyst brings, sniffed, parsed and validated.

``load(source)`` takes a folder, a file, a ``.zip``, a ``(filename, bytes)`` pair or an
uploaded-file object (``.name`` plus ``.getvalue()`` or ``.read()``), works out the layout
(see ``FORMATS``) and returns the canonical ``Dataset``. Anything wrong with the input raises
``DataValidationError`` naming the file, the 1-based line and the column, with what was expected
and what was found. Problems that are safe to repair are repaired and reported in
``Dataset.warnings``.

One home per concern:

- ``sources``: paths, uploads and zips resolved once into a ``Source``; the safety limits.
- ``tables``: typed reading (pandas' C reader or pyarrow's, Parquet) and the text checks.
- ``diagnose``: the first bad line of a refused table, with its file, line and column.
- ``formats``: the MovieLens layouts and the article's merged CSV.
- ``generic``: any table read through a ``ColumnMapping``.
- ``assemble``: the canonical ``Dataset`` and the checks on its values.
- ``load``: ``load``, ``sniff``, ``peek_columns`` (imports the rest; nothing imports it back).
"""
from __future__ import annotations

from ..dataset import DataValidationError, Dataset
from .assemble import CATEGORY_MIN_ROWS
from .formats import FORMATS, FormatInfo
from .generic import ColumnMapping
from .load import load, peek_columns, sniff
from .sources import (DEFAULT_MAX_BYTES, DEFAULT_MAX_UNZIPPED_BYTES, MAX_COMPRESSION_RATIO,
                      Source, open_source, read_regular_file)
from .tables import ENGINES

__all__ = [
    "CATEGORY_MIN_ROWS",
    "ColumnMapping",
    "DataValidationError",
    "Dataset",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_UNZIPPED_BYTES",
    "ENGINES",
    "FORMATS",
    "FormatInfo",
    "MAX_COMPRESSION_RATIO",
    "Source",
    "load",
    "open_source",
    "peek_columns",
    "read_regular_file",
    "sniff",
]
