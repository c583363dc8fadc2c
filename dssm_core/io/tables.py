"""Tables: typed reading of delimited text (pandas' C reader or pyarrow's) and Parquet.

Owns the text checks every reader shares (empty, binary, UTF-16, BOM, line endings, the
separator), the header checks, and the fast typed read; a table the fast read refuses goes to
``diagnose`` to find its first bad line.
"""
from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..dataset import DataValidationError, shorten
from .diagnose import _LIMIT, _decode, _diagnose, _line_col
from .sources import _Entry


#: CSV readers ``load(engine=...)`` accepts; "auto" means pandas' C reader (measured best).
ENGINES = ("auto", "pandas", "pyarrow")


def _prepare(data: bytes, display: str, warnings: list[str]) -> bytes:
    """Reject empty/binary input, strip a UTF-8 BOM; returns the bytes to parse."""
    if not data[: 1 << 16].strip() and not data.strip():
        raise DataValidationError(
            f"empty file: expected a table of interactions, found {len(data)} bytes", file=display
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataValidationError(
            "cannot decode: the file is UTF-16 text; expected UTF-8 (save as 'CSV UTF-8')",
            file=display, line=1,
        )
    if data[:2] == b"\x1f\x8b":
        raise DataValidationError(
            "binary file (gzip-compressed); expected plain text or a .zip archive",
            file=display, line=1,
        )
    nul = data.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        line, col = _line_col(data, nul)
        raise DataValidationError(
            f"binary file: found byte 0x00 at character {col}; expected text",
            file=display, line=line,
        )
    if data.startswith(codecs.BOM_UTF8):
        warnings.append(f"{display}: UTF-8 byte order mark (BOM) ignored")
        data = data[len(codecs.BOM_UTF8):]
    head = data[: 1 << 16]
    if b"\r" in head and b"\n" not in head:  # classic Mac OS / some exports: CR only
        warnings.append(f"{display}: line endings are CR only (old Mac style); read as "
                        "ordinary line ends")
        data = data.replace(b"\r", b"\n")
    elif b"\r\n" in head:
        warnings.append(f"{display}: Windows line endings (CRLF) read as ordinary line ends")
    return data


def _first_line(data: bytes, encoding: str, display: str) -> str:
    end = data.find(b"\n")
    head = data if end < 0 else data[:end]
    return _decode(head, encoding, display).rstrip("\r")


def _split_header(line: str, sep: str) -> list[str]:
    if len(sep) == 1:
        return next(csv.reader([line], delimiter=sep), [])
    return line.split(sep)


def _sniff_sep(header: str, display: str) -> str:
    counts = {s: len(_split_header(header, s)) for s in (",", "\t", ";", "|")}
    best = max(counts, key=lambda s: counts[s])
    if counts[best] < 2:
        raise DataValidationError(
            "found one column: none of the separators ',' tab ';' '|' splits the header "
            f"'{header[:80]}'; expected at least two columns",
            file=display, line=1,
        )
    return best


def _trailing_empty(names: list[str]) -> int:
    n = 0
    for name in reversed(names):
        if name.strip():
            break
        n += 1
    return n


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    step: float | None  # 1.0 whole stars, 0.5 half stars, None any value

    def ok(self, r: np.ndarray) -> np.ndarray:
        good = (r >= self.lo) & (r <= self.hi)
        if self.step:
            q = r / self.step
            good &= q == np.floor(q)
        return good

    def describe(self) -> str:
        lo, hi = _fmt_num(self.lo), _fmt_num(self.hi)
        step = f" in steps of {_fmt_num(self.step)}" if self.step else ""
        return f"a rating from {lo} to {hi}{step}"


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class _Table:
    """Where and how to read one delimited table."""

    data: bytes  # UTF-8 (or ``encoding``) text, BOM stripped
    display: str
    sep: str  # one character, or "::"
    names: tuple[str, ...]  # every field of a line (placeholders for unnamed trailing ones)
    skip: int  # header lines
    # column -> "id" | "intid" | "rating" | "int" | "float" | "str" | "optstr"
    kinds: dict[str, str]
    encoding: str = "utf-8"
    quoting: bool = True
    scale: _Scale | None = None


_REQUIRED_KINDS = {"id", "intid", "rating", "int", "float", "seconds"}


def _read_table(t: _Table, engine: str = "auto") -> pd.DataFrame:
    """Read the columns in ``t.kinds``; ids become categoricals, str columns plain strings.

    Raises ``DataValidationError`` (with line and column) on anything a user can get wrong.
    """
    data = t.data
    if t.sep == "::":
        data = data.replace(b"::", b"\x1f")
        t = _Table(data, t.display, "\x1f", t.names, t.skip, t.kinds, t.encoding, False, t.scale)
    if t.encoding.replace("-", "").lower() not in ("utf8", "ascii"):
        t = _Table(_decode(t.data, t.encoding, t.display).encode("utf-8"), t.display, t.sep,
                   t.names, t.skip, t.kinds, "utf-8", t.quoting, t.scale)
    try:
        df = _read_engine(t, engine)
    except Exception as exc:  # parser errors of either engine: find the line ourselves
        err = _diagnose(t)
        if err is not None:
            raise err from exc
        if "intid" in t.kinds.values():  # ids that are not all integers: read them as text
            kinds = {c: "id" if k == "intid" else k for c, k in t.kinds.items()}
            return _read_table(_Table(t.data, t.display, t.sep, t.names, t.skip, kinds,
                                      t.encoding, t.quoting, t.scale), engine)
        raise DataValidationError(f"cannot parse: {exc}".splitlines()[0], file=t.display) from exc
    # A short row's missing fields read as NaN, which in a text column looks like an empty
    # field: a NaN in the last field (``short_rows``) sends the table to the diagnosis, which
    # counts the fields of every line.
    short = bool(df.attrs.pop("short_rows", False))
    invalid = False
    for col, kind in t.kinds.items():
        x = df[col]
        if kind in _REQUIRED_KINDS and x.isna().any():
            invalid = True
        elif kind in _LIMIT and not _finite_below(x.to_numpy(), _LIMIT[kind]):
            invalid = True  # inf, or a time or rating beyond what int64 / float32 hold
        elif kind == "rating" and t.scale is not None and not t.scale.ok(x.to_numpy()).all():
            invalid = True
    if short or invalid:
        err = _diagnose(t)
        if err is not None:
            raise err
        if invalid:  # pragma: no cover - the two readers disagree
            raise DataValidationError("missing or invalid values", file=t.display)
    for col, kind in t.kinds.items():
        if kind == "intid" and not isinstance(df[col].dtype, pd.CategoricalDtype):
            # integer ids (pandas engine) -> categorical of their decimal strings
            codes, uniques = pd.factorize(df[col].to_numpy(dtype=np.int64))
            df[col] = pd.Categorical.from_codes(
                codes, categories=pd.Index(uniques.astype(str), dtype=object), validate=False)
        elif kind in ("str", "optstr"):
            s = df[col]
            if isinstance(s.dtype, pd.CategoricalDtype):
                s = s.astype(object)
            df[col] = s.fillna("").astype(str)
    return df


def _read_engine(t: _Table, engine: str) -> pd.DataFrame:
    # "auto" is pandas' C reader: in bench/load_bench.py it matched pyarrow's reader on time
    # and peaked ~300 MB lower on 10M rows (see BENCHMARKS.md, "Data loading").
    if engine == "pyarrow":
        try:
            import pyarrow  # noqa: F401
        except ImportError:  # pragma: no cover - pyarrow is a requirement
            return _read_pandas(t)
        return _read_arrow(t)
    return _read_pandas(t)


def _read_arrow(t: _Table) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    types = {
        "id": pa.dictionary(pa.int32(), pa.string()),
        "intid": pa.int64(),
        "rating": pa.float64(),
        "int": pa.int64(),
        "float": pa.float64(),
        "seconds": pa.float64(),
        "str": pa.string(),
        "optstr": pa.string(),
    }
    table = pacsv.read_csv(
        pa.BufferReader(t.data),  # zero-copy over the bytes
        read_options=pacsv.ReadOptions(column_names=list(t.names), skip_rows=t.skip,
                                       block_size=1 << 22),
        parse_options=pacsv.ParseOptions(
            delimiter=t.sep, quote_char='"' if t.quoting else False,
            newlines_in_values=False, ignore_empty_lines=True,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: types[k] for c, k in t.kinds.items()},
            include_columns=list(t.kinds),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    if any(table.column(c).null_count for c, k in t.kinds.items() if k in _REQUIRED_KINDS):
        raise ValueError("missing values")  # -> the streaming diagnosis names the line
    # Convert column by column, letting each Arrow column go as soon as it is converted,
    # so peak memory stays near one copy of the data.
    columns = {c: table.column(c) for c in t.kinds}
    del table
    pool = pa.default_memory_pool()
    out: dict[str, Any] = {}
    for c, kind in t.kinds.items():
        col = columns.pop(c)
        if kind in ("id", "intid"):
            enc = (col.unify_dictionaries() if kind == "id" else pc.dictionary_encode(col))
            arr = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
            if len(arr) == 0:
                out[c] = pd.Categorical([])
                continue
            cats = arr.dictionary.cast(pa.string()).to_pylist()
            out[c] = pd.Categorical.from_codes(
                arr.indices.to_numpy(zero_copy_only=False),
                categories=pd.Index(cats, dtype=object), validate=False)
        elif kind in ("str", "optstr"):
            out[c] = col.to_pandas()
        else:
            out[c] = col.to_numpy()
        del col
        pool.release_unused()  # hand freed Arrow blocks back before numpy allocates more
    return pd.DataFrame(out)


def _read_pandas(t: _Table) -> pd.DataFrame:
    # plain int64 (not the masked Int64): an empty field is then a parser error -> diagnosis
    dtypes = {"id": "category", "intid": "int64", "rating": "float64", "int": "int64",
              "float": "float64", "seconds": "float64", "str": object, "optstr": object}
    # No ``usecols``: with it pandas silently accepts lines with too many or too few fields;
    # without it a wrong field count is a parser error (then diagnosed to its line).
    df = pd.read_csv(
        io.BytesIO(t.data), sep=t.sep, header=None, names=list(t.names), skiprows=t.skip,
        dtype={c: dtypes.get(t.kinds.get(c, ""), object) for c in t.names},
        quoting=csv.QUOTE_MINIMAL if t.quoting else csv.QUOTE_NONE, keep_default_na=False,
        na_values=[""], engine="c", skip_blank_lines=True, index_col=False,
    )
    # the last named field (trailing empty spreadsheet columns are allowed to be missing)
    last = next((n for n in reversed(t.names) if not n.startswith("_empty")), t.names[-1])
    short = t.kinds.get(last) not in _REQUIRED_KINDS and bool(df[last].isna().any())
    df = df[list(t.kinds)]
    df.attrs["short_rows"] = short  # maybe: a row with fewer fields (or an empty last one)
    return df


def _finite_below(x: np.ndarray, limit: float) -> bool:
    """Whether every value of ``x`` is finite and below ``limit`` in absolute value.

    Two reductions and no temporary array (a NaN makes both comparisons false).
    """
    if not len(x):
        return True
    return bool(-limit < x.min() and x.max() < limit)


def _delimited(
    entry: _Entry,
    warnings: list[str],
    *,
    sep: str,
    header: bool,
    names: Sequence[str] | None,
    kinds: dict[str, str],
    required: Sequence[str] = (),
    encoding: str = "utf-8",
    quoting: bool = True,
    scale: _Scale | None = None,
    engine: str = "auto",
) -> pd.DataFrame:
    """Read one delimited file: header handling, trailing empty columns, then ``_read_table``.

    With ``header`` the file's first line names the columns and ``required`` must be among
    them; without it ``names`` gives the expected fields in order.
    """
    data = _prepare(entry.read(), entry.display, warnings)
    first = _first_line(data, encoding, entry.display)
    found = [h.strip() for h in _split_header(first, sep)]
    if len(found) < 2:
        shown = "tab" if sep == "\t" else repr(sep)
        raise DataValidationError(
            f"found one column with separator {shown}: expected "
            f"{len(names) if names and not header else 'at least 2'} columns, found the line "
            f"'{first[:60]}'",
            file=entry.display, line=1,
        )
    extra = _trailing_empty(found)
    if header:
        cols = found[: len(found) - extra]
        missing = [c for c in required if c not in cols]
        if missing:
            raise DataValidationError(
                f"missing required column '{missing[0]}'; found columns: {', '.join(cols)}",
                file=entry.display, line=1, column=missing[0],
            )
        dup = sorted({c for c in cols if cols.count(c) > 1 and c})
        if dup:
            raise DataValidationError(
                f"column name '{dup[0]}' appears twice in the header",
                file=entry.display, line=1, column=dup[0],
            )
        cols = [c or f"_unnamed{i}" for i, c in enumerate(cols)]
    else:
        assert names is not None  # internal: every headerless format passes its names
        cols = list(names)
        surplus = len(found) - len(cols)  # fields past the expected ones, if all empty
        extra = surplus if 0 < surplus <= _trailing_empty(found) else 0
    if extra:
        warnings.append(
            f"{entry.display}: {extra} trailing empty column(s) (a spreadsheet export?) ignored"
        )
    all_names = tuple(cols) + tuple(f"_empty{i}" for i in range(extra))
    t = _Table(data, entry.display, sep, all_names, 1 if header else 0, kinds, encoding,
               quoting, scale)
    return _read_table(t, engine)


def _read_parquet(raw: bytes, display: str, kinds: dict[str, str], required: Sequence[str],
                  mapping: Any) -> pd.DataFrame:  # mapping: generic.ColumnMapping
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(io.BytesIO(raw))
        cols = list(pf.schema_arrow.names)
    except Exception as exc:
        raise DataValidationError(f"not a readable Parquet file ({exc})".splitlines()[0],
                                  file=display) from exc
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataValidationError(
            f"missing required column '{missing[0]}'; found columns: {', '.join(cols)}",
            file=display, column=missing[0],
        )
    df = pf.read(columns=list(kinds)).to_pandas()
    for col, kind in kinds.items():
        s = df[col]
        if kind == "id":
            bad = s.isna() | (s.astype(str).str.strip() == "")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
                raise DataValidationError("missing value: expected an id, found an empty field",
                                          file=display, line=row, column=col)
            df[col] = s.astype(str).astype("category")
        elif kind in ("rating", "float", "int", "seconds"):
            num = pd.to_numeric(s, errors="coerce")
            x = num.to_numpy(dtype=np.float64, na_value=np.nan)
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(x) < _LIMIT.get(kind, np.inf))  # NaN, inf and beyond the limit
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                found = shorten(s.iloc[row], 40)
                what = ("not a number" if not np.isfinite(x[row])
                        else f"{kind} out of range (at most {_LIMIT[kind]:.3g})")
                raise DataValidationError(
                    f"{what}: expected a number, found '{found}'",
                    file=display, line=row + 1, column=col,
                )
            df[col] = num.astype("float64")
        else:
            df[col] = s.astype(object).where(s.notna(), "").astype(str)
    if mapping.rating and mapping.rating_scale is not None:
        sc = _Scale(mapping.rating_scale[0], mapping.rating_scale[1], None)
        ok = sc.ok(df[mapping.rating].to_numpy())
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataValidationError(
                f"rating outside the declared scale: expected {sc.describe()}, found "
                f"{_fmt_num(float(df[mapping.rating].iloc[row]))}",
                file=display, line=row + 1, column=mapping.rating,
            )
    return df


def _entry_columns(entry: _Entry, *, encoding: str = "utf-8", sep: str | None = None
                   ) -> list[str]:
    """The header columns of one CSV/TSV/Parquet entry; trailing empty header fields left out."""
    raw = entry.read()
    if raw[:4] == b"PAR1":
        try:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(io.BytesIO(raw)).schema_arrow.names)
        except Exception as exc:
            raise DataValidationError(f"not a readable Parquet file ({exc})".splitlines()[0],
                                      file=entry.display) from exc
    data = _prepare(raw, entry.display, [])
    first = _first_line(data, encoding, entry.display)
    s = sep or _sniff_sep(first, entry.display)
    cols = [c.strip() for c in _split_header(first, s)]
    return cols[: len(cols) - _trailing_empty(cols)]
