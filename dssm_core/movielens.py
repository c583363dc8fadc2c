"""Data in: every MovieLens-style input an analyst brings, sniffed, parsed and validated.

``load(source)`` takes a folder, a file, a ``.zip``, a ``(filename, bytes)`` pair or an
uploaded-file object (``.name`` plus ``.getvalue()`` or ``.read()``), works out the layout
(see ``FORMATS``) and returns the canonical ``Dataset``. Anything wrong with the input raises
``DataValidationError`` naming the file, the 1-based line and the column, with what was expected
and what was found. Problems that are safe to repair are repaired and reported in
``Dataset.warnings`` (exact duplicate interactions, trailing empty columns, a UTF-8 BOM, Windows
line endings).

Archives are read in memory, never extracted to disk; their entry names and declared sizes are
checked before a single member is decompressed. Interaction tables are read with explicit
column types (integer ids straight to categoricals) by pandas' C reader, or pyarrow's with
``engine="pyarrow"`` (bench/load_bench.py measures both); a second, streaming pass over the text
runs only when the fast pass rejects the file, to find the first bad line.
"""
from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from .dataset import DataValidationError, Dataset

__all__ = [
    "ColumnMapping",
    "DataValidationError",
    "Dataset",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_UNZIPPED_BYTES",
    "FORMATS",
    "FormatInfo",
    "load",
    "peek_columns",
    "sniff",
]

log = logging.getLogger(__name__)

#: Largest input file (or archive) accepted, in bytes.
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: ml-25m's ratings.csv is 678 MB
#: Largest total of the uncompressed sizes of an archive's members.
DEFAULT_MAX_UNZIPPED_BYTES = 2 << 30  # 2 GiB: all of ml-25m unpacks to about 1.2 GB
#: Largest compression ratio of an archive (and of any member over 1 MiB); text compresses ~5-10x.
MAX_COMPRESSION_RATIO = 100.0
#: CSV readers ``load(engine=...)`` accepts; "auto" means pandas' C reader (measured best).
ENGINES = ("auto", "pandas", "pyarrow")
#: At this many interactions or more, the id columns are returned as ``category`` dtype.
CATEGORY_MIN_ROWS = 1_000_000

_IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".dat", ".data")
_YEAR_RE = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
#: ML-1M README: age codes and occupation codes with their readable labels.
ML1M_AGE_LABELS = {
    1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+",
}
ML1M_OCCUPATION_LABELS = {
    0: "other or not specified", 1: "academic/educator", 2: "artist", 3: "clerical/admin",
    4: "college/grad student", 5: "customer service", 6: "doctor/health care",
    7: "executive/managerial", 8: "farmer", 9: "homemaker", 10: "K-12 student", 11: "lawyer",
    12: "programmer", 13: "retired", 14: "sales/marketing", 15: "scientist",
    16: "self-employed", 17: "technician/engineer", 18: "tradesman/craftsman",
    19: "unemployed", 20: "writer",
}
ARTICLE_COLUMNS = (
    "user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age",
    "occupation", "zip",
)


@dataclass(frozen=True)
class FormatInfo:
    """One input layout ``load`` understands (for the app's help text and format picker)."""

    name: str
    label: str
    files: str
    notes: str


FORMATS: tuple[FormatInfo, ...] = (
    FormatInfo("ml-100k", "MovieLens 100K", "u.data, u.user, u.item (u.genre)",
               "tab-separated ratings; pipe-separated users and items, latin-1; 19 genre flags"),
    FormatInfo("ml-1m", "MovieLens 1M", "ratings.dat, users.dat, movies.dat",
               "'::'-separated; age and occupation codes kept, readable labels added"),
    FormatInfo("ml-10m", "MovieLens 10M", "ratings.dat, movies.dat",
               "'::'-separated, half-star ratings, no user attributes"),
    FormatInfo("ml-latest", "MovieLens latest / latest-small / 20M / 25M",
               "ratings.csv, movies.csv",
               "CSV with header, half-star ratings, '|'-separated genres, no user attributes"),
    FormatInfo("article", "Merged CSV of the DSSM article",
               "one .csv/.txt: " + ",".join(ARTICLE_COLUMNS),
               "one row per rating with the movie's and the user's attributes"),
    FormatInfo("generic", "Any CSV, TSV or Parquet with a column mapping",
               "interactions file (+ optional user and item tables)",
               "name the user and item columns; no rating column = implicit feedback"),
)


@dataclass(frozen=True)
class ColumnMapping:
    """How to read a generic interactions table (CSV, TSV or Parquet).

    user, item: id columns of the interactions file (required).
    rating: rating column; ``None`` means implicit feedback (every row a positive, rating 1.0).
    timestamp: unix seconds, or date/time text; ``None`` means the row order is the time order.
    title, genres: item columns, looked up in the items table when there is one, else in the
        interactions file; genres are split on ``genre_sep``.
    user_attributes, item_attributes: further columns of the interactions file describing the
        user / the item (ignored when a separate users / items table is given).
    rating_scale: the declared (min, max); ratings outside it are an error. ``None``: the
        data's own range.
    interactions_file, users_file, items_file: file names inside a folder, zip or list of
        uploads; ``interactions_file`` may be omitted when there is a single data file.
    users_key, items_key: id column of the users / items table (default: ``user`` / ``item``).
    sep: field separator; ``None`` sniffs it from the header line (``,`` tab ``;`` ``|``).
    encoding: text encoding of the files (default UTF-8).
    """

    user: str
    item: str
    rating: str | None = None
    timestamp: str | None = None
    title: str | None = None
    genres: str | None = None
    genre_sep: str = "|"
    user_attributes: tuple[str, ...] = ()
    item_attributes: tuple[str, ...] = ()
    rating_scale: tuple[float, float] | None = None
    interactions_file: str | None = None
    users_file: str | None = None
    users_key: str | None = None
    items_file: str | None = None
    items_key: str | None = None
    sep: str | None = None
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if not self.user or not self.item:
            raise ValueError("a column mapping needs both a user and an item column")
        if self.user == self.item:
            raise ValueError(f"user and item must be different columns, both are {self.user!r}")
        if self.rating_scale is not None:
            lo, hi = self.rating_scale
            if not lo < hi:
                raise ValueError(f"rating_scale must be (min, max) with min < max, got {lo, hi}")
        if self.sep is not None and len(self.sep) != 1:
            raise ValueError(f"sep must be one character, got {self.sep!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {self.encoding!r}") from exc
        # lists from a form or JSON arrive as lists; keep the dataclass hashable
        object.__setattr__(self, "user_attributes", tuple(self.user_attributes))
        object.__setattr__(self, "item_attributes", tuple(self.item_attributes))
        roles = {c: role for c, role in ((self.timestamp, "timestamp"), (self.rating, "rating"),
                                         (self.item, "item id"), (self.user, "user id"))
                 if c}
        for col, what in ((self.title, "the item title"), (self.genres, "the genres"),
                          *((c, "a user attribute") for c in self.user_attributes),
                          *((c, "an item attribute") for c in self.item_attributes)):
            if col and col in roles:
                raise ValueError(f"column {col!r} is already the {roles[col]} column; it cannot "
                                 f"also be {what}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColumnMapping":
        """Build from a JSON-able dict (as the app's mapping form or a CLI option gives it)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown column mapping keys: {', '.join(unknown)}")
        d = {k: v for k, v in d.items() if v is not None}
        absent = [k for k in ("user", "item") if not d.get(k)]
        if absent:
            raise ValueError(f"a column mapping needs '{absent[0]}' (the {absent[0]} id column)")
        if "rating_scale" in d:
            d["rating_scale"] = tuple(float(x) for x in d["rating_scale"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``ColumnMapping.from_dict(m.to_dict()) == m``."""
        d = asdict(self)
        for k in ("user_attributes", "item_attributes", "rating_scale"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


# --------------------------------------------------------------------------------------------
# Sources: everything becomes a small virtual folder of named byte blobs, read lazily.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str  # path relative to the root (posix), after stripping a single top folder
    display: str  # how error messages name it, e.g. "ml-100k.zip:ml-100k/u.data"
    size: int
    read: Callable[[], bytes]

    @property
    def base(self) -> str:
        return PurePosixPath(self.name).name.lower()


_MEMO_MAX_BYTES = 64 << 20


def _memo(read: Callable[[], bytes]) -> Callable[[], bytes]:
    """Read once per ``load`` call (sniffing and parsing may look at the same file).

    Files over 64 MiB are not kept: reading them twice is cheaper than holding them while
    the parsed frames are built (peak memory).
    """
    box: list[bytes] = []

    def once() -> bytes:
        if box:
            return box[0]
        data = read()
        if len(data) <= _MEMO_MAX_BYTES:
            box.append(data)
        return data

    return once


@dataclass
class _Source:
    label: str  # a name for the dataset: folder name, archive or file stem
    entries: list[_Entry]
    where: str = ""  # how errors name the source as a whole (the archive, the folder)

    def __post_init__(self) -> None:
        self.where = self.where or self.label

    def find(self, basename: str) -> _Entry | None:
        basename = basename.lower()
        top = [e for e in self.entries if "/" not in e.name and e.base == basename]
        if top:
            return top[0]
        anywhere = [e for e in self.entries if e.base == basename]
        return anywhere[0] if len(anywhere) == 1 else None

    def named(self, name: str) -> _Entry:
        for e in self.entries:
            if e.name == name or e.name.lower() == name.lower():
                return e
        hit = self.find(PurePosixPath(name).name)
        if hit is None:
            found = ", ".join(e.name for e in self.entries) or "nothing"
            raise DataValidationError(f"file '{name}' not found; found: {found}", file=self.where)
        return hit


def _is_ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    base = parts[-1] if parts else ""
    return (
        not base
        or base.lower() in _IGNORED_NAMES
        or base.startswith("._")
        or any(p == "__MACOSX" for p in parts)
    )


def _strip_top_folder(names: list[str]) -> str:
    """The common single top folder of ``names`` ('' when files lie at the root)."""
    prefix = ""
    while True:
        rest = [n[len(prefix):] for n in names]
        if not rest or any("/" not in r for r in rest):
            return prefix
        tops = {r.split("/", 1)[0] for r in rest}
        if len(tops) != 1:
            return prefix
        prefix += tops.pop() + "/"


def _check_size(display: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise DataValidationError(
            f"file is {size:,} bytes; the limit is {max_bytes:,} bytes", file=display
        )


def _read_path(path: Path, display: str, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        _check_size(display, size, max_bytes)
        return path.read_bytes()
    except OSError as exc:
        raise DataValidationError(f"cannot read: {exc.strerror or exc}", file=display) from exc


def _zip_source(
    data: bytes | Path, label: str, display: str, max_unzipped_bytes: int
) -> _Source:
    """List a zip's members after checking names and declared sizes; nothing is extracted."""
    try:
        zf = zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataValidationError(f"not a readable zip archive ({exc})", file=display) from exc
    total = 0
    packed = 0
    members: list[zipfile.ZipInfo] = []
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if (
            name.startswith("/")
            or re.match(r"^[A-Za-z]:", name)
            or ".." in parts
        ):
            raise DataValidationError(
                f"archive entry '{info.filename}' leaves the archive's folder; expected paths "
                "inside it (no '../', no absolute paths)",
                file=display,
            )
        if info.is_dir():
            continue
        total += info.file_size
        packed += info.compress_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > (1 << 20) and ratio > MAX_COMPRESSION_RATIO:
            raise DataValidationError(
                f"archive entry '{info.filename}' would expand {ratio:,.0f}-fold "
                f"(limit {MAX_COMPRESSION_RATIO:.0f}); refusing a possible zip bomb",
                file=display,
            )
        if not _is_ignored(name):
            members.append(info)
    if total > max_unzipped_bytes:
        raise DataValidationError(
            f"archive would expand to {total:,} bytes; the limit is {max_unzipped_bytes:,} bytes",
            file=display,
        )
    if total > (1 << 20) and total / max(packed, 1) > MAX_COMPRESSION_RATIO:
        raise DataValidationError(
            f"archive would expand {total / max(packed, 1):,.0f}-fold "
            f"(limit {MAX_COMPRESSION_RATIO:.0f}); refusing a possible zip bomb",
            file=display,
        )
    names = [m.filename.replace("\\", "/") for m in members]
    prefix = _strip_top_folder(names)

    def reader(info: zipfile.ZipInfo, shown: str) -> Callable[[], bytes]:
        def read() -> bytes:
            if info.flag_bits & 0x1:
                raise DataValidationError("archive entry is encrypted", file=shown)
            buf = io.BytesIO()
            try:
                with zf.open(info) as fh:
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        buf.write(chunk)
                        if buf.tell() > info.file_size:
                            raise DataValidationError(
                                "archive entry is larger than its declared size", file=shown
                            )
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise DataValidationError(f"corrupt archive entry ({exc})", file=shown) from exc
            return buf.getvalue()

        return read

    entries = []
    for info, name in zip(members, names):
        shown = f"{display}:{name}"
        entries.append(_Entry(name[len(prefix):], shown, info.file_size,
                              _memo(reader(info, shown))))
    top = prefix.rstrip("/").split("/")[-1] if prefix else label
    return _Source(top or label, entries, display)


def _from_blob(
    filename: str, data: bytes, max_bytes: int, max_unzipped_bytes: int
) -> _Source:
    name = PurePosixPath(filename.replace("\\", "/")).name or "upload"
    _check_size(name, len(data), max_bytes)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    if data[:4] == b"PK\x03\x04" or name.lower().endswith(".zip"):
        return _zip_source(data, stem, name, max_unzipped_bytes)
    return _Source(stem, [_Entry(name, name, len(data), lambda: data)])


def _blob_of(obj: Any) -> tuple[str, bytes] | None:
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        data = obj[1]
        if isinstance(data, (bytes, bytearray, memoryview)):
            return obj[0], bytes(data)
    if hasattr(obj, "name") and (hasattr(obj, "getvalue") or hasattr(obj, "read")):
        if isinstance(obj, (str, Path)):
            return None
        data = obj.getvalue() if hasattr(obj, "getvalue") else obj.read()
        if isinstance(data, str):
            data = data.encode("utf-8")
        return str(obj.name), bytes(data)
    return None


def _resolve(source: Any, max_bytes: int, max_unzipped_bytes: int) -> _Source:
    """Turn any accepted ``source`` into a virtual folder of entries."""
    blob = _blob_of(source)
    if blob is not None:
        return _from_blob(blob[0], blob[1], max_bytes, max_unzipped_bytes)
    if isinstance(source, (list, tuple)) and not isinstance(source, (str, bytes)):
        entries: list[_Entry] = []
        for part in source:
            sub = _resolve(part, max_bytes, max_unzipped_bytes)
            entries.extend(sub.entries)
        if not entries:
            raise DataValidationError("no files given")
        names = [e.name.lower() for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataValidationError(f"the same file name given twice: {', '.join(dup)}")
        return _Source("upload", entries)
    if isinstance(source, (bytes, bytearray)):
        raise DataValidationError("bytes need a file name: pass (filename, bytes)")
    if not isinstance(source, (str, Path)):
        raise DataValidationError(
            f"cannot read a {type(source).__name__}: expected a path, a (filename, bytes) pair "
            "or an uploaded file"
        )
    path = Path(source)
    if not path.exists():
        raise DataValidationError("no such file or folder", file=str(path))
    if path.is_dir():
        root = path
        while True:
            files = [p for p in sorted(root.iterdir()) if p.is_file() and not _is_ignored(p.name)]
            dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name != "__MACOSX"]
            if files or len(dirs) != 1:
                break
            root = dirs[0]
        entries = []
        for p in files:
            entries.append(_Entry(
                p.name, str(p), p.stat().st_size,
                _memo(lambda p=p: _read_path(p, str(p), max_bytes)),
            ))
        return _Source(root.name, entries, str(root))
    display = str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise DataValidationError(f"cannot read: {exc.strerror or exc}", file=display) from exc
    _check_size(display, size, max_bytes)
    if magic == b"PK\x03\x04" or path.suffix.lower() == ".zip":
        return _zip_source(path, path.stem, display, max_unzipped_bytes)
    return _Source(path.stem, [_Entry(path.name, display, size,
                                      _memo(lambda: _read_path(path, display, max_bytes)))])


# --------------------------------------------------------------------------------------------
# Text checks shared by every reader
# --------------------------------------------------------------------------------------------


def _line_col(data: bytes, pos: int) -> tuple[int, int]:
    """1-based (line, column) of byte offset ``pos``."""
    line = data.count(b"\n", 0, pos) + 1
    col = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
    return line, col


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
    if b"\r\n" in data[: 1 << 16]:
        warnings.append(f"{display}: Windows line endings (CRLF) read as ordinary line ends")
    return data


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


# --------------------------------------------------------------------------------------------
# Tables: a fast typed read, and a streaming diagnosis that finds the first bad line
# --------------------------------------------------------------------------------------------


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


_REQUIRED_KINDS = {"id", "intid", "rating", "int", "float"}


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
    problem = False
    for col, kind in t.kinds.items():
        if kind in _REQUIRED_KINDS and df[col].isna().any():
            problem = True
    if t.scale is not None:
        for col, kind in t.kinds.items():
            if kind == "rating" and not t.scale.ok(df[col].to_numpy()).all():
                problem = True
    if problem:
        err = _diagnose(t)
        if err is None:  # pragma: no cover - the two readers disagree
            raise DataValidationError("missing or invalid values", file=t.display)
        raise err
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
              "float": "float64", "str": object, "optstr": object}
    # No ``usecols``: with it pandas silently accepts lines with too many or too few fields;
    # without it a wrong field count is a parser error (then diagnosed to its line).
    df = pd.read_csv(
        io.BytesIO(t.data), sep=t.sep, header=None, names=list(t.names), skiprows=t.skip,
        dtype={c: dtypes.get(t.kinds.get(c, ""), object) for c in t.names},
        quoting=csv.QUOTE_MINIMAL if t.quoting else csv.QUOTE_NONE, keep_default_na=False,
        na_values=[""], engine="c", skip_blank_lines=True, index_col=False,
    )
    return df[list(t.kinds)]


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
        for row in reader:
            yield reader.line_num, row
    else:
        for i, line in enumerate(stream, start=1):
            yield i, line.rstrip("\r\n").split(t.sep)


_WHAT = {"id": "an id", "intid": "an id", "rating": "a number", "int": "an integer",
         "float": "a number"}
# A line of a batch (values joined by "\n") that is blank / not an integer: found by one C-speed
# regex scan instead of a Python check per value.
_BLANK_LINE = re.compile(r"^[ \t\r\f\v]*$", re.MULTILINE)
_NOT_INT_LINE = re.compile(r"^(?![ \t\r\f\v]*[+-]?\d+[ \t\r\f\v]*$)", re.MULTILINE)
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
        if kind in ("rating", "float"):
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                return DataValidationError(f"not a number: expected {what}, found '{value[:40]}'",
                                           file=t.display, line=line, column=col)
            if kind == "rating" and t.scale and not t.scale.ok(np.array([x]))[0]:
                return DataValidationError(
                    f"rating outside the declared scale: expected {t.scale.describe()}, "
                    f"found {v}",
                    file=t.display, line=line, column=col,
                )
        elif kind == "int":
            try:
                int(v)
            except ValueError:
                return DataValidationError(
                    f"not an integer: expected {what} (unix seconds), found '{value[:40]}'",
                    file=t.display, line=line, column=col,
                )
    return None


def _suspects(t: _Table, rows: list[list[str]], index: dict[str, int]) -> np.ndarray:
    """Positions in ``rows`` that may be bad: a superset of the bad ones, found vectorised
    (``_row_error`` has the last word on each)."""
    bad = np.zeros(len(rows), dtype=bool)
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
            bad |= ~np.isfinite(x)
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
            flag = pc.invert(pc.match_substring_regex(col, r"^\s*[+-]?\d+\s*$"))
        else:
            ok = pc.match_substring_regex(col, _FLOAT_TEXT)
            flag = pc.invert(ok)
            if kind == "rating" and t.scale is not None:
                x = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, col, "0")), pa.float64())
                x = x.to_numpy(zero_copy_only=False)
                flag = pc.or_(flag, pa.array(~t.scale.ok(x) & ok.to_numpy(zero_copy_only=False)))
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


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def _year(title: str) -> int | None:
    m = _YEAR_RE.search(title)
    return int(m.group(1)) if m else None


def _genre_list(s: str, sep: str = "|") -> list[str]:
    if not s or s == "(no genres listed)":
        return []
    return [g.strip() for g in s.split(sep) if g.strip()]


def _items_frame(ids: Sequence[str], titles: Sequence[str], genres: Sequence[list[str]],
                 extra: dict[str, Any] | None = None) -> pd.DataFrame:
    titles = [str(t).strip() for t in titles]
    df = pd.DataFrame({
        "item_id": [str(i).strip() for i in ids],
        "title": titles,
        "genres": list(genres),
        "year": pd.array([_year(t) for t in titles], dtype="Int64"),
    })
    for k, v in (extra or {}).items():
        df[k] = v
    return df


def _split_rows(entry: _Entry, warnings: list[str], sep: str, n_fields: int | None,
                names: Sequence[str], encodings: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Split a small ``sep``-separated file (ML-100K u.user/u.item/u.genre with '|', ML-1M
    users.dat/movies.dat with '::') into ``(line number, fields)`` pairs, blank lines skipped.

    The text is decoded with the first of ``encodings`` that fits. Line numbers are 1-based
    lines of the file (not row counts), so callers' errors point at the right line.
    """
    data = _prepare(entry.read(), entry.display, warnings)
    text = None
    for enc in encodings:
        try:
            text = data.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        text = _decode(data, encodings[-1], entry.display)
    rows: list[tuple[int, list[str]]] = []
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split(sep)
        if n_fields is not None and len(parts) != n_fields:
            if len(parts) < 2:
                raise DataValidationError(
                    f"found one column with separator '{sep}': expected {n_fields} fields "
                    f"({sep.join(names[:6])}{'...' if len(names) > 6 else ''}), "
                    f"found '{line[:60]}'",
                    file=entry.display, line=i,
                )
            raise DataValidationError(
                f"expected {n_fields} fields separated by '{sep}' "
                f"({sep.join(names[:6])}{'...' if len(names) > 6 else ''}), found {len(parts)}",
                file=entry.display, line=i,
            )
        if not parts[0].strip():
            raise DataValidationError("missing value: expected an id, found an empty field",
                                      file=entry.display, line=i, column=names[0])
        rows.append((i, parts))
    return rows


_RATING_KINDS = {"user_id": "intid", "item_id": "intid", "rating": "rating", "timestamp": "int"}
_WHOLE_STARS = _Scale(1.0, 5.0, 1.0)
_HALF_STARS = _Scale(0.5, 5.0, 0.5)


def _load_ml100k(src: _Source, warnings: list[str], engine: str) -> dict[str, Any]:
    udata = src.find("u.data")
    assert udata is not None
    inter = _delimited(udata, warnings, sep="\t", header=False,
                       names=("user_id", "item_id", "rating", "timestamp"),
                       kinds=_RATING_KINDS, quoting=False, scale=_WHOLE_STARS, engine=engine)
    users = items = None
    uuser = src.find("u.user")
    if uuser is not None:
        names = ("user_id", "age", "gender", "occupation", "zip")
        numbered = _split_rows(uuser, warnings, "|", 5, names, ("latin-1",))
        rows = [r for _, r in numbered]
        ages = []
        for line, r in numbered:
            try:
                ages.append(int(r[1]))
            except ValueError:
                raise DataValidationError(
                    f"not an integer: expected an age in years, found '{r[1]}'",
                    file=uuser.display, line=line, column="age",
                ) from None
        users = pd.DataFrame({
            "user_id": [r[0].strip() for r in rows],
            "gender": [r[2] for r in rows],
            "age": np.array(ages, dtype=np.int64),
            "occupation": [r[3] for r in rows],
            "zip": [r[4] for r in rows],
        })
    else:
        warnings.append("File u.user not found: users have no attributes")
    genre_names: list[str] = list(ML100K_GENRES)
    ugenre = src.find("u.genre")
    if ugenre is not None:
        pairs = _split_rows(ugenre, warnings, "|", 2, ("genre", "index"), ("latin-1",))
        by_index: dict[int, str] = {}
        for line, (g, idx) in pairs:
            try:
                by_index[int(idx)] = g
            except ValueError:
                raise DataValidationError(
                    f"expected a genre index (integer), found '{idx}'",
                    file=ugenre.display, line=line, column="index",
                ) from None
        if sorted(by_index) != list(range(len(by_index))):
            raise DataValidationError(
                f"genre indexes must run 0..{len(by_index) - 1}, found {sorted(by_index)}",
                file=ugenre.display,
            )
        genre_names = [by_index[i] for i in range(len(by_index))]
    uitem = src.find("u.item")
    if uitem is not None:
        n = 5 + len(genre_names)
        names = ("item_id", "title", "release_date", "video_release_date", "imdb_url",
                 *genre_names)
        numbered = _split_rows(uitem, warnings, "|", n, names, ("latin-1",))
        rows = [r for _, r in numbered]
        genres = []
        for line, r in numbered:
            flags = r[5:]
            bad = [f for f in flags if f.strip() not in ("0", "1")]
            if bad:
                col = genre_names[flags.index(bad[0])]
                raise DataValidationError(f"expected a genre flag 0 or 1, found '{bad[0]}'",
                                          file=uitem.display, line=line, column=col)
            genres.append([g for g, f in zip(genre_names, flags) if f.strip() == "1"])
        items = _items_frame([r[0] for r in rows], [r[1] for r in rows], genres)
    else:
        warnings.append("File u.item not found: items have no titles or genres")
    return {"interactions": inter, "users": users, "items": items, "scale": (1.0, 5.0)}


def _ml1m_user_frame(numbered: list[tuple[int, list[str]]], display: str) -> pd.DataFrame:
    """users.dat rows (with their line numbers) as the canonical users table."""
    rows = [r for _, r in numbered]
    ages: list[int] = []
    occs: list[int] = []
    for line, r in numbered:
        for value, col, out in ((r[2], "age", ages), (r[3], "occupation", occs)):
            try:
                out.append(int(value))
            except ValueError:
                raise DataValidationError(
                    f"not an integer: expected an ML-1M {col} code, found '{value}'",
                    file=display, line=line, column=col,
                ) from None
    return pd.DataFrame({
        "user_id": [r[0].strip() for r in rows],
        "gender": [r[1] for r in rows],
        "age": np.array(ages, dtype=np.int64),
        "occupation": np.array(occs, dtype=np.int64),
        "zip": [r[4].strip() for r in rows],
        "age_label": [ML1M_AGE_LABELS.get(a, "unknown") for a in ages],
        "occupation_label": [ML1M_OCCUPATION_LABELS.get(o, "unknown") for o in occs],
    })


def _load_dat(src: _Source, warnings: list[str], engine: str) -> dict[str, Any]:
    ratings = src.find("ratings.dat")
    assert ratings is not None
    users_e = src.find("users.dat")
    is_1m = users_e is not None
    inter = _delimited(ratings, warnings, sep="::", header=False,
                       names=("user_id", "item_id", "rating", "timestamp"), kinds=_RATING_KINDS,
                       quoting=False, scale=_WHOLE_STARS if is_1m else _HALF_STARS,
                       engine=engine)
    users = items = None
    if users_e is not None:
        numbered = _split_rows(users_e, warnings, "::", 5,
                               ("UserID", "Gender", "Age", "Occupation", "Zip-code"),
                               ("utf-8", "latin-1"))
        users = _ml1m_user_frame(numbered, users_e.display)
    movies = src.find("movies.dat")
    if movies is not None:
        rows = [r for _, r in _split_rows(movies, warnings, "::", 3,
                                          ("MovieID", "Title", "Genres"), ("utf-8", "latin-1"))]
        items = _items_frame([r[0] for r in rows], [r[1] for r in rows],
                             [_genre_list(r[2]) for r in rows])
    else:
        warnings.append("File movies.dat not found: items have no titles or genres")
    return {"interactions": inter, "users": users, "items": items,
            "scale": (1.0, 5.0) if is_1m else (0.5, 5.0),
            "format": "ml-1m" if is_1m else "ml-10m"}


def _load_latest(src: _Source, warnings: list[str], engine: str) -> dict[str, Any]:
    ratings = src.find("ratings.csv")
    assert ratings is not None
    df = _delimited(ratings, warnings, sep=",", header=True, names=None,
                    kinds={"userId": "intid", "movieId": "intid", "rating": "rating",
                           "timestamp": "int"},
                    required=("userId", "movieId", "rating", "timestamp"),
                    scale=_HALF_STARS, engine=engine)
    inter = df  # renamed in place: no copy of a large frame
    inter.columns = ["user_id" if c == "userId" else "item_id" if c == "movieId" else c
                     for c in inter.columns]
    items = None
    movies = src.find("movies.csv")
    if movies is not None:
        m = _delimited(movies, warnings, sep=",", header=True, names=None,
                       kinds={"movieId": "id", "title": "str", "genres": "str"},
                       required=("movieId", "title", "genres"), engine="pandas")
        items = _items_frame(m["movieId"].astype(str).tolist(), m["title"].tolist(),
                             [_genre_list(g) for g in m["genres"]])
    else:
        warnings.append("File movies.csv not found: items have no titles or genres")
    return {"interactions": inter, "users": None, "items": items, "scale": (0.5, 5.0)}


def _load_article(entry: _Entry, warnings: list[str], engine: str) -> dict[str, Any]:
    data = _prepare(entry.read(), entry.display, [])
    header = [h.strip() for h in _split_header(_first_line(data, "utf-8", entry.display), ",")]
    present = [c for c in ARTICLE_COLUMNS if c in header]
    kinds = {c: "str" for c in present}
    kinds.update({"user_id": "intid", "movie_id": "intid", "rating": "rating",
                  "timestamp": "int"})
    ignored = [c for c in header if c and c not in ARTICLE_COLUMNS]
    if ignored:
        warnings.append(f"{entry.display}: columns not used: {', '.join(ignored)}")
    df = _delimited(entry, warnings, sep=",", header=True, names=None, kinds=kinds,
                    required=("user_id", "movie_id", "rating", "timestamp"),
                    scale=_WHOLE_STARS, engine=engine)
    df = df.rename(columns={"movie_id": "item_id"})
    inter = df[["user_id", "item_id", "rating", "timestamp"]]
    first_items = df.drop_duplicates("item_id")
    items = _items_frame(
        first_items["item_id"].astype(str).tolist(),
        first_items["title"].tolist() if "title" in df else [""] * len(first_items),
        [_genre_list(g) for g in first_items["genres"]] if "genres" in df
        else [[] for _ in range(len(first_items))],
    )
    user_cols = [c for c in ("gender", "age", "occupation", "zip") if c in df.columns]
    first_users = df.drop_duplicates("user_id")
    users = pd.DataFrame({"user_id": first_users["user_id"].astype(str).to_numpy()})
    for c in user_cols:
        users[c] = first_users[c].to_numpy()
    codes_ok = True
    for c, table in (("age", ML1M_AGE_LABELS), ("occupation", ML1M_OCCUPATION_LABELS)):
        if c in users:
            nums = pd.to_numeric(users[c], errors="coerce")
            if nums.isna().any() or not nums.isin(list(table)).all():
                codes_ok = False
    if codes_ok and "age" in users and "occupation" in users:
        users["age"] = pd.to_numeric(users["age"]).astype(np.int64)
        users["occupation"] = pd.to_numeric(users["occupation"]).astype(np.int64)
        users["age_label"] = users["age"].map(ML1M_AGE_LABELS)
        users["occupation_label"] = users["occupation"].map(ML1M_OCCUPATION_LABELS)
    else:
        users = _numeric_where_possible(users, [c for c in ("age", "occupation") if c in users])
    return {"interactions": inter, "users": users, "items": items, "scale": (1.0, 5.0)}


# ----- generic (column mapping) --------------------------------------------------------------


def _read_any(entry: _Entry, warnings: list[str], mapping: ColumnMapping,
              kinds: dict[str, str], required: Sequence[str], engine: str) -> pd.DataFrame:
    raw = entry.read()
    if raw[:4] == b"PAR1" or entry.base.endswith((".parquet", ".pq")):
        return _read_parquet(raw, entry.display, kinds, required, mapping)
    data = _prepare(raw, entry.display, [])
    first = _first_line(data, mapping.encoding, entry.display)
    sep = mapping.sep or _sniff_sep(first, entry.display)
    return _delimited(entry, warnings, sep=sep, header=True, names=None, kinds=kinds,
                      required=required, encoding=mapping.encoding, engine=engine)


def _read_parquet(raw: bytes, display: str, kinds: dict[str, str], required: Sequence[str],
                  mapping: ColumnMapping) -> pd.DataFrame:
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
        elif kind in ("rating", "float", "int"):
            num = pd.to_numeric(s, errors="coerce")
            bad = num.isna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                found = s.iloc[row]
                raise DataValidationError(
                    f"not a number: expected a number, found '{found}'",
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


def _looks_numeric(data: bytes, sep: str, column: str, encoding: str) -> bool:
    """Whether ``column`` holds a number in the first data line (decides how to read it)."""
    lines = data[: 1 << 16].split(b"\n", 2)
    if len(lines) < 2:
        return False
    try:
        header = _split_header(lines[0].decode(encoding).rstrip("\r"), sep)
        row = _split_header(lines[1].decode(encoding).rstrip("\r"), sep)
        float(row[[h.strip() for h in header].index(column)])
    except (ValueError, IndexError, UnicodeDecodeError):
        return False
    return True


def _timestamps(values: pd.Series, display: str, column: str, header_lines: int
                ) -> np.ndarray:
    """Unix seconds from numbers (seconds) or date/time text.

    A bad value's line is its row number plus ``header_lines`` (blank lines above it are not
    counted here: only date/time text takes this path).
    """
    if pd.api.types.is_numeric_dtype(values):
        return np.rint(values.to_numpy(dtype=np.float64)).astype(np.int64)
    text = values.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    if num.notna().all():
        return np.rint(num.to_numpy(dtype=np.float64)).astype(np.int64)
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"not a time: expected unix seconds or a date/time, found '{text.iloc[row][:40]}'",
            file=display, line=row + 1 + header_lines, column=column,
        )
    ns = parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    return (ns.to_numpy().astype("int64") // 1_000_000_000).astype(np.int64)


def _side_table(src: _Source, file: str, key: str, warnings: list[str],
                mapping: ColumnMapping, engine: str) -> pd.DataFrame:
    entry = src.named(file)
    cols = peek_columns((entry.name, entry.read()), encoding=mapping.encoding, sep=mapping.sep)
    if key not in cols:
        raise DataValidationError(
            f"missing required column '{key}'; found columns: {', '.join(cols)}",
            file=entry.display, line=1, column=key,
        )
    kinds = {c: "optstr" for c in cols if c}
    kinds[key] = "id"
    df = _read_any(entry, warnings, mapping, kinds, (key,), engine)
    df[key] = df[key].astype(str)
    return _numeric_where_possible(df, [c for c in df.columns if c != key])


def _numeric_where_possible(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Attribute columns whose every non-empty value is a number become numeric.

    Codes with leading zeros (zip "02134", "007") stay text.
    """
    for c in cols:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s):
            continue
        text = s.astype(str).str.strip()
        if text.str.match(r"[+-]?0\d").any():
            continue
        num = pd.to_numeric(text.where(text != "", None), errors="coerce")
        if num.notna().sum() == (text != "").sum() and num.notna().any():
            whole = num.dropna()
            df[c] = num.astype("Int64") if (whole == np.floor(whole)).all() else num
    return df


def _load_generic(src: _Source, mapping: ColumnMapping, warnings: list[str],
                  engine: str) -> dict[str, Any]:
    side = {n.lower() for n in (mapping.users_file, mapping.items_file) if n}
    if mapping.interactions_file:
        entry = src.named(mapping.interactions_file)
    else:
        cands = [e for e in src.entries
                 if e.base.endswith(_DATA_SUFFIXES) and e.name.lower() not in side
                 and e.base not in side]
        if len(cands) != 1:
            found = ", ".join(e.name for e in src.entries) or "nothing"
            raise DataValidationError(
                f"{len(cands)} candidate data files; set interactions_file in the column "
                f"mapping (found: {found})",
                file=src.where,
            )
        entry = cands[0]
    kinds: dict[str, str] = {mapping.user: "id", mapping.item: "id"}
    if mapping.rating:
        kinds[mapping.rating] = "rating"
    if mapping.timestamp:
        kinds[mapping.timestamp] = "optstr"
    user_attrs = () if mapping.users_file else mapping.user_attributes
    item_attrs = list(mapping.item_attributes) if not mapping.items_file else []
    if not mapping.items_file:
        item_attrs = [c for c in (mapping.title, mapping.genres) if c] + item_attrs
    for c in (*user_attrs, *item_attrs):
        kinds.setdefault(c, "str")
    required = list(kinds)
    scale = (_Scale(mapping.rating_scale[0], mapping.rating_scale[1], None)
             if mapping.rating_scale else None)
    raw_first = entry.read()
    is_parquet = raw_first[:4] == b"PAR1" or entry.base.endswith((".parquet", ".pq"))
    if is_parquet:
        df = _read_parquet(raw_first, entry.display, kinds, required, mapping)
    else:
        data = _prepare(raw_first, entry.display, [])
        first = _first_line(data, mapping.encoding, entry.display)
        sep = mapping.sep or _sniff_sep(first, entry.display)
        if mapping.timestamp and _looks_numeric(data, sep, mapping.timestamp, mapping.encoding):
            kinds[mapping.timestamp] = "float"  # unix seconds: the fast typed read
        df = _delimited(entry, warnings, sep=sep, header=True, names=None, kinds=kinds,
                        required=required, encoding=mapping.encoding, scale=scale,
                        engine=engine)
    n = len(df)
    inter = pd.DataFrame({"user_id": df[mapping.user], "item_id": df[mapping.item]})
    if mapping.rating:
        inter["rating"] = df[mapping.rating].to_numpy(dtype=np.float64)
    else:
        inter["rating"] = np.ones(n)
    if mapping.timestamp:
        inter["timestamp"] = _timestamps(df[mapping.timestamp], entry.display, mapping.timestamp,
                                         0 if is_parquet else 1)
    else:
        inter["timestamp"] = np.arange(n, dtype=np.int64)
        warnings.append("No timestamp column: the row order is used as the time order")
    users = items = None
    if mapping.users_file:
        key = mapping.users_key or mapping.user
        users = _side_table(src, mapping.users_file, key, warnings, mapping, engine)
        users = users.rename(columns={key: "user_id"})
    elif user_attrs:
        first_u = df.drop_duplicates(mapping.user)
        users = pd.DataFrame({"user_id": first_u[mapping.user].astype(str).to_numpy()})
        for c in user_attrs:
            users[c] = first_u[c].to_numpy()
        users = _numeric_where_possible(users, list(user_attrs))
    if mapping.items_file:
        key = mapping.items_key or mapping.item
        t = _side_table(src, mapping.items_file, key, warnings, mapping, engine)
        src_df, id_col = t, key
    elif item_attrs:
        src_df, id_col = df.drop_duplicates(mapping.item), mapping.item
    else:
        src_df, id_col = None, ""
    if src_df is not None:
        ids = src_df[id_col].astype(str).tolist()
        titles = (src_df[mapping.title].tolist() if mapping.title and mapping.title in src_df
                  else [""] * len(ids))
        genres = ([_genre_list(g, mapping.genre_sep) for g in src_df[mapping.genres]]
                  if mapping.genres and mapping.genres in src_df else [[] for _ in ids])
        skip = {id_col, mapping.title, mapping.genres, "item_id", "title", "genres"}
        extra_cols = ([c for c in src_df.columns if c not in skip] if mapping.items_file
                      else [c for c in mapping.item_attributes if c not in skip])
        items = _items_frame(ids, titles, genres,
                             {c: src_df[c].to_numpy() for c in extra_cols})
        items = _numeric_where_possible(items, extra_cols)
    if mapping.rating_scale is not None:
        scale_t: tuple[float, float] | None = (float(mapping.rating_scale[0]),
                                               float(mapping.rating_scale[1]))
    elif mapping.rating:
        r = inter["rating"]
        scale_t = (float(r.min()), float(r.max())) if n else None
    else:
        scale_t = None
    return {"interactions": inter, "users": users, "items": items, "scale": scale_t,
            "implicit": mapping.rating is None, "file": entry.display}


# --------------------------------------------------------------------------------------------
# Sniffing and the canonical result
# --------------------------------------------------------------------------------------------


def _data_entries(src: _Source) -> list[_Entry]:
    return [e for e in src.entries
            if "/" not in e.name and e.base.endswith(_DATA_SUFFIXES)
            and not e.base.startswith("readme")]


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


def _ids_as(values: pd.Series, categorical: bool) -> pd.Series:
    """Ids as strings: a categorical with string categories, or plain ``str``."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = values.cat.categories
        if not (pd.api.types.is_object_dtype(cats.dtype) or pd.api.types.is_string_dtype(cats)):
            values = values.cat.rename_categories(cats.astype(str))
        if categorical:
            return values
        return values.astype(str)
    s = values.astype(str)
    return s.astype("category") if categorical else s


def _codes(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy().astype(np.int64)
    return pd.factorize(s)[0].astype(np.int64)


def _exact_duplicates(inter: pd.DataFrame) -> np.ndarray:
    """Boolean mask of rows repeating an earlier row in all four columns.

    Looks for repeated (user, item) pairs first; only rows whose pair repeats are compared in
    full, which keeps this cheap on MovieLens files (where pairs are almost always unique).
    """
    pair = _codes(inter["user_id"])  # int64, then made the (user, item) key in place
    i = _codes(inter["item_id"])
    pair *= int(i.max()) + 1 if len(i) else 1
    pair += i
    del i
    mask = np.zeros(len(inter), dtype=bool)
    ordered = np.sort(pair)  # a sort is far cheaper than hashing 10M keys
    same = ordered[1:] == ordered[:-1]
    if same.any():
        rv = ordered[1:][same]  # sorted, so its distinct values are where it changes
        rv = rv[np.r_[True, rv[1:] != rv[:-1]]]
        pos = np.minimum(np.searchsorted(rv, pair), len(rv) - 1)
        idx = np.flatnonzero(rv[pos] == pair)
        sub = pd.DataFrame({
            "p": pair[idx],
            "r": inter["rating"].to_numpy()[idx],
            "t": inter["timestamp"].to_numpy()[idx],
        })
        mask[idx] = sub.duplicated().to_numpy()
    return mask


def _assemble(parts: dict[str, Any], fmt: str, name: str, warnings: list[str],
              file: str) -> Dataset:
    """The canonical ``Dataset``: typed columns, duplicates dropped, every id in its table."""
    raw: pd.DataFrame = parts["interactions"]
    big = len(raw) >= CATEGORY_MIN_ROWS
    inter = pd.DataFrame({
        "user_id": _ids_as(raw["user_id"], big).reset_index(drop=True),
        "item_id": _ids_as(raw["item_id"], big).reset_index(drop=True),
        "rating": raw["rating"].to_numpy(dtype=np.float32),
        "timestamp": raw["timestamp"].to_numpy(dtype=np.int64),
    })
    del raw, parts["interactions"]
    if len(inter) == 0:
        raise DataValidationError("no interactions: the file has a header but no data rows",
                                  file=file)
    dup = _exact_duplicates(inter)
    n_dup = int(dup.sum())
    if n_dup:
        inter = inter[~dup].reset_index(drop=True)
        warnings.append(f"{n_dup:,} exact duplicate interaction(s) dropped")
    n_users = int(inter["user_id"].nunique())
    n_items = int(inter["item_id"].nunique())
    if n_users < 2 or n_items < 2:
        raise DataValidationError(
            f"too little data: expected at least 2 users and 2 items, found {n_users} "
            f"user(s) and {n_items} item(s)",
            file=file,
        )
    user_ids = pd.Index(inter["user_id"].unique()).astype(str)
    item_ids = pd.Index(inter["item_id"].unique()).astype(str)
    users = _complete(parts.get("users"), "user_id", user_ids, "users", warnings)
    items = _complete(parts.get("items"), "item_id", item_ids, "items", warnings)
    if "title" not in items:
        items["title"] = ""
    if "genres" not in items:
        items["genres"] = [[] for _ in range(len(items))]
    if "year" not in items:
        items["year"] = pd.array([_year(t) for t in items["title"]], dtype="Int64")
    rest = [c for c in items.columns if c not in ("item_id", "title", "genres", "year")]
    items = items[["item_id", "title", "genres", "year", *rest]]
    scale = parts.get("scale")
    if parts.get("implicit"):
        scale = None
    for w in warnings:
        log.info("%s: %s", name, w)
    return Dataset(interactions=inter, users=users, items=items, format=fmt, name=name,
                   rating_scale=scale, warnings=list(warnings))


def _complete(table: pd.DataFrame | None, key: str, ids: pd.Index, what: str,
              warnings: list[str]) -> pd.DataFrame:
    """One row per id: keep the table's rows, add rows (attributes filled) for missing ids."""
    if table is None:
        return pd.DataFrame({key: np.asarray(ids, dtype=object)}).astype({key: str})
    table = table.copy()
    table[key] = table[key].astype(str).str.strip()
    dup = table[key].duplicated()
    if dup.any():
        warnings.append(f"{int(dup.sum())} repeated {what[:-1]} id(s) in the {what} table; "
                        "the first row of each kept")
        table = table[~dup.to_numpy()]
    missing = ids.difference(pd.Index(table[key]))
    if len(missing):
        warnings.append(f"{len(missing)} {what} in the interactions have no row in the {what} "
                        "table; their attributes are filled as unknown")
        fill: dict[str, Any] = {key: list(missing)}
        for c in table.columns:
            if c == key:
                continue
            s = table[c]
            if c == "genres":
                fill[c] = [[] for _ in missing]
            elif c == "title":
                fill[c] = [""] * len(missing)
            elif pd.api.types.is_numeric_dtype(s):
                fill[c] = [pd.NA if isinstance(s.dtype, pd.api.extensions.ExtensionDtype)
                           else np.nan] * len(missing)
            else:
                fill[c] = ["unknown"] * len(missing)
        extra = pd.DataFrame(fill)
        for c in table.columns:
            if c != key and isinstance(table[c].dtype, pd.api.extensions.ExtensionDtype):
                extra[c] = extra[c].astype(table[c].dtype)
        table = pd.concat([table, extra], ignore_index=True)
    return table.reset_index(drop=True)


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
            cols = peek_columns((e.name, e.read()))
            raise DataValidationError(
                "not a known MovieLens layout: give a column mapping (user, item, optional "
                f"rating and timestamp columns); found columns: {', '.join(cols)}",
                file=e.display, line=1,
            )
        parts = _load_generic(src, mapping, warnings, engine)
        file = parts["file"]
    return _assemble(parts, fmt, name or src.label, warnings, file)
