"""Diagnosis: which file, line and column of a table is wrong, and how.

Runs only after a fast typed read (``tables``) refused a table: a vectorised pass over the
columns as text (files without quoting), or a streaming pass row by row (exact with quoting),
finds the first bad line and describes it as a ``DataValidationError``.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd

from ..dataset import DataValidationError, shorten

if TYPE_CHECKING:  # pragma: no cover
    from .tables import _Table

log = logging.getLogger(__name__)


def _line_col(data: bytes, pos: int) -> tuple[int, int]:
    """1-based (line, column) of byte offset ``pos``."""
    line = data.count(b"\n", 0, pos) + 1
    col = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
    return line, col


def _decode(data: bytes, encoding: str, display: str) -> str:
    """Decode, or say where (line and character) the bytes stop being ``encoding``."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise DataValidationError(
            f"cannot decode byte 0x{data[exc.start]:02x} at character {col}: expected "
            f"{encoding} text (re-save the file as UTF-8, or set the encoding in the mapping)",
            file=display, line=line,
        ) from exc


def _check_decodable(data: bytes, encoding: str, display: str) -> None:
    """``_decode`` in 16 MiB pieces cut at line ends, so a huge file never sits in memory twice.

    (A line end byte never occurs inside a UTF-8 or single-byte character.)
    """
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + (1 << 24))
        end = len(data) if end < 0 else end + 1
        try:
            data[start:end].decode(encoding)
        except UnicodeDecodeError as exc:
            _decode(data[: start + exc.end], encoding, display)  # raises, naming line/column
        start = end


def _iter_rows(t: _Table) -> Iterator[tuple[int, list[str]]]:
    """(1-based physical line, fields) of every row, streamed from the bytes."""
    stream = io.TextIOWrapper(io.BytesIO(t.data), encoding=t.encoding, newline="")
    if len(t.sep) == 1:
        reader = csv.reader(stream, delimiter=t.sep,
                            quoting=csv.QUOTE_MINIMAL if t.quoting else csv.QUOTE_NONE)
        start = 1  # the line the next row starts on
        try:
            for row in reader:
                yield reader.line_num, row
                start = reader.line_num + 1
        except csv.Error as exc:  # a field over csv's limit (an unclosed quote), a lone CR
            hint = ("; a quote (\") opened and never closed?" if "field limit" in str(exc)
                    else "")
            raise DataValidationError(f"cannot split the line into fields ({exc}){hint}",
                                      file=t.display, line=start) from None
    else:
        for i, line in enumerate(stream, start=1):
            yield i, line.rstrip("\r\n").split(t.sep)


_WHAT = {"id": "an id", "intid": "an id", "rating": "a number", "int": "an integer",
         "float": "a number", "seconds": "a number"}
#: Timestamps are int64 seconds (after a unit is recognised, see ``assemble``): a number read
#: as text must be below this in absolute value (2^63 is the int64 limit; a float64 that close
#: to it rounds past it).
MAX_ABS_TIME = 9e18
#: A rating is stored as float32: beyond this it would become infinite.
MAX_ABS_RATING = float(np.finfo(np.float32).max)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_LIMIT = {"seconds": MAX_ABS_TIME, "rating": MAX_ABS_RATING}  # suspects at or above


# A line of a batch (values joined by "\n") that is blank / not an integer: found by one C-speed
# regex scan instead of a Python check per value.
_BLANK_LINE = re.compile(r"^[ \t\r\f\v]*$", re.MULTILINE)


# (19 digits or more may not fit int64: suspects too, ``_row_error`` decides)
_NOT_INT_LINE = re.compile(r"^(?![ \t\r\f\v]*[+-]?\d{1,18}[ \t\r\f\v]*$)", re.MULTILINE)


_DIAGNOSE_BATCH = 1 << 16


def _row_error(t: _Table, line: int, row: list[str], index: dict[str, int]
               ) -> DataValidationError | None:
    """What is wrong with one data row (or ``None``)."""
    for col, kind in t.kinds.items():
        what = _WHAT.get(kind)
        if what is None:
            continue
        value = row[index[col]]
        v = value.strip()
        if not v:
            return DataValidationError(f"missing value: expected {what}, found an empty field",
                                       file=t.display, line=line, column=col)
        if kind in ("rating", "float", "seconds"):
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                return DataValidationError(f"not a number: expected {what}, found "
                                           f"'{shorten(value, 40)}'",
                                           file=t.display, line=line, column=col)
            if kind == "seconds" and abs(x) >= MAX_ABS_TIME:
                return DataValidationError(
                    f"time out of range: expected unix time (seconds, or milli-, micro- or "
                    f"nanoseconds) below 9e18, found {v}", file=t.display, line=line, column=col)
            if kind == "rating" and abs(x) > MAX_ABS_RATING:
                return DataValidationError(
                    f"rating out of range: expected a rating that fits 32 bits (below 3.4e38), "
                    f"found {v}", file=t.display, line=line, column=col)
            if kind == "rating" and t.scale and not t.scale.ok(np.array([x]))[0]:
                return DataValidationError(
                    f"rating outside the declared scale: expected {t.scale.describe()}, "
                    f"found {v}",
                    file=t.display, line=line, column=col,
                )
        elif kind == "int":
            try:
                n = int(v)
            except ValueError:
                return DataValidationError(
                    f"not an integer: expected {what} (unix seconds), found '{shorten(value, 40)}'",
                    file=t.display, line=line, column=col,
                )
            if not _INT64[0] <= n <= _INT64[1]:
                return DataValidationError(
                    f"integer out of range: expected {what} that fits 64 bits (unix time), "
                    f"found {shorten(v, 40)}", file=t.display, line=line, column=col)
    return None


def _suspects(t: _Table, rows: list[list[str]], index: dict[str, int]) -> np.ndarray:
    """Positions in ``rows`` that may be bad: a superset of the bad ones, found vectorised
    (``_row_error`` has the last word on each)."""
    bad = np.zeros(len(rows), dtype=bool)
    if not rows:
        return np.flatnonzero(bad)
    columns = list(zip(*rows))
    for col, kind in t.kinds.items():
        if kind not in _WHAT:
            continue
        values = columns[index[col]]
        if kind in ("id", "intid", "int"):
            joined = "\n".join(values)
            starts = [m.start() for m in (_BLANK_LINE if kind != "int" else _NOT_INT_LINE)
                      .finditer(joined)]
            if starts:
                # the line index of each hit = line ends before it
                ends = np.flatnonzero(np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
                                      == 10)
                bad[np.searchsorted(ends, starts)] = True
        else:
            x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
            x = x.to_numpy(dtype=np.float64, na_value=np.nan)
            bad |= ~np.isfinite(x) | (np.abs(np.nan_to_num(x)) >= _LIMIT.get(kind, np.inf))
            if kind == "rating" and t.scale is not None:
                bad |= ~t.scale.ok(np.nan_to_num(x, nan=t.scale.lo))
    return np.flatnonzero(bad)


_FLOAT_TEXT = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def _diagnose(t: _Table) -> DataValidationError | None:
    """Describe the table's first bad line (only after the fast read failed), or ``None``.

    Files without quote characters (every ratings file) take a vectorised path over pyarrow
    string columns; anything else is streamed row by row.
    """
    _check_decodable(t.data, t.encoding, t.display)
    if ((not t.quoting or b'"' not in t.data)
            and t.data.count(b"\r") == t.data.count(b"\r\n")):  # no lone CR line ends
        try:  # most bad files go wrong early: look at the first rows before reading them all
            return _diagnose_stream(t, max_rows=_DIAGNOSE_BATCH)
        except _Unfinished:
            pass
        try:
            return _diagnose_unquoted(t)
        except Exception as exc:  # no pyarrow, or a file it cannot take: stream it instead
            log.debug("vectorised diagnosis unavailable (%s); streaming", exc)
    return _diagnose_stream(t)


def _diagnose_unquoted(t: _Table) -> DataValidationError | None:
    """``_diagnose`` for files where one physical line is one row (no quoting).

    Reads the checked columns as text with pyarrow, flags suspect values with regexes over
    whole columns, maps row numbers back to physical lines through the line-end positions.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    invalid: list[tuple[int, int]] = []  # (row number among non-empty lines, fields found)

    def on_invalid(row: Any) -> str:
        if row.number is None:  # pragma: no cover - only with threaded parsing
            raise ValueError("row number unknown")
        invalid.append((int(row.number), int(row.actual_columns)))
        return "skip"

    checked = [c for c, k in t.kinds.items() if k in _WHAT]
    table = pacsv.read_csv(
        pa.BufferReader(t.data),
        read_options=pacsv.ReadOptions(column_names=list(t.names), skip_rows=t.skip,
                                       use_threads=False, block_size=1 << 22),
        parse_options=pacsv.ParseOptions(delimiter=t.sep, quote_char=False,
                                         ignore_empty_lines=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in checked}, include_columns=checked,
            strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    # physical line (0-based) of each non-empty line: pyarrow numbers rows over those
    raw = np.frombuffer(t.data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    starts = np.r_[0, ends + 1]
    ends = np.r_[ends, len(raw)]
    length = ends - starts
    cr = (length > 0) & (raw[np.maximum(ends - 1, 0)] == 13)  # a line's own CR of CRLF
    nonempty = np.flatnonzero(length - cr > 0)
    del raw, ends, starts, length, cr
    limit = invalid[0][0] - 1 - t.skip if invalid else table.num_rows  # rows before it
    bad = np.zeros(max(0, min(limit, table.num_rows)), dtype=bool)
    for c in checked:
        col = table.column(c).slice(0, len(bad))
        kind = t.kinds[c]
        if kind in ("id", "intid"):
            flag = pc.match_substring_regex(col, r"^\s*$")
        elif kind == "int":
            flag = pc.invert(pc.match_substring_regex(col, r"^\s*[+-]?\d{1,18}\s*$"))
        else:
            ok = pc.match_substring_regex(col, _FLOAT_TEXT)
            flag = pc.invert(ok)
            if kind in _LIMIT or (kind == "rating" and t.scale is not None):
                x = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, col, "0")), pa.float64())
                x = x.to_numpy(zero_copy_only=False)
                out = np.abs(x) >= _LIMIT.get(kind, np.inf)
                if kind == "rating" and t.scale is not None:
                    out |= ~t.scale.ok(x)
                flag = pc.or_(flag, pa.array(out & ok.to_numpy(zero_copy_only=False)))
        bad |= flag.to_numpy(zero_copy_only=False)
    index = {c: t.names.index(c) for c in t.kinds}
    for k in np.flatnonzero(bad):
        row = [""] * len(t.names)
        for c in checked:
            row[index[c]] = table.column(c)[int(k)].as_py()
        err = _row_error(t, int(nonempty[t.skip + k]) + 1, row, index)
        if err is not None:
            return err
    if invalid:
        number, found = invalid[0]
        sep_shown = "tab" if t.sep == "\t" else repr("::" if t.sep == "\x1f" else t.sep)
        return DataValidationError(
            f"expected {len(t.names)} fields separated by {sep_shown}, found {found}",
            file=t.display, line=int(nonempty[number - 1]) + 1,
        )
    return None


class _Unfinished(Exception):
    """``_diagnose_stream`` reached its row budget without finding a problem."""


def _diagnose_stream(t: _Table, max_rows: int | None = None) -> DataValidationError | None:
    """``_diagnose`` by streaming rows (exact with quoting; checks batches vectorised).

    With ``max_rows``, raises ``_Unfinished`` after that many clean rows.
    """
    sep_shown = "tab" if t.sep == "\t" else repr("::" if t.sep == "\x1f" else t.sep)
    index = {c: t.names.index(c) for c in t.kinds}
    lines: list[int] = []
    rows: list[list[str]] = []

    def check() -> DataValidationError | None:
        for i in _suspects(t, rows, index):
            err = _row_error(t, lines[i], rows[i], index)
            if err is not None:
                return err
        lines.clear()
        rows.clear()
        return None

    n_fields = len(t.names)
    it = _iter_rows(t)
    for _ in range(t.skip):
        next(it, None)
    for line, row in it:
        if len(row) != n_fields:
            if len(row) <= 1 and not "".join(row).strip():
                continue  # a blank line (the fast readers skip them too)
            return check() or DataValidationError(
                f"expected {len(t.names)} fields separated by {sep_shown}, found {len(row)}",
                file=t.display, line=line,
            )
        lines.append(line)
        rows.append(row)
        if max_rows is not None and len(rows) >= max_rows:
            err = check()
            if err is not None:
                return err
            raise _Unfinished
        if len(rows) >= _DIAGNOSE_BATCH:
            err = check()
            if err is not None:
                return err
    return check()
