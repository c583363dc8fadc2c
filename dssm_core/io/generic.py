"""Generic tables: any CSV, TSV or Parquet read through a ``ColumnMapping``."""
from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..dataset import DataValidationError, shorten
from ..jsonfields import checked_kwargs
from .diagnose import MAX_ABS_TIME
from .formats import _genre_list, _items_frame, _numeric_where_possible
from .sources import _DATA_SUFFIXES, _Entry, _Source
from .tables import (_Scale, _delimited, _entry_columns, _first_line, _prepare, _read_parquet,
                     _sniff_sep, _split_header)


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
        if not self.genre_sep:
            raise ValueError("column mapping key 'genre_sep': expected at least one character, "
                             "e.g. '|' (the default), found ''")
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
        if isinstance(d, dict):  # null means "the default", as the form sends it
            d = {k: v for k, v in d.items() if v is not None}
        d = checked_kwargs(cls, d, "column mapping")
        absent = [k for k in ("user", "item") if not d.get(k)]
        if absent:
            raise ValueError(f"a column mapping needs '{absent[0]}' (the {absent[0]} id column)")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``ColumnMapping.from_dict(m.to_dict()) == m``."""
        d = asdict(self)
        for k in ("user_attributes", "item_attributes", "rating_scale"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


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
                ) -> tuple[np.ndarray, bool]:
    """Unix time (int64) from numbers or date/time text, and whether it was text (then it is
    in seconds; for numbers ``assemble`` works out the unit).

    A bad value's line is its row number plus ``header_lines`` (blank lines above it are not
    counted here: only date/time text and Parquet take this path; numbers in a CSV were
    checked line by line as they were read).
    """
    def refuse(row: int, what: str) -> DataValidationError:
        return DataValidationError(
            f"{what}, found '{shorten(str(values.iloc[row]).strip(), 40)}'",
            file=display, line=row + 1 + header_lines, column=column)

    if pd.api.types.is_numeric_dtype(values):
        num = values.to_numpy(dtype=np.float64)
    else:
        text = values.astype(str).str.strip()
        as_num = pd.to_numeric(text, errors="coerce")
        num = as_num.to_numpy(dtype=np.float64, na_value=np.nan) if as_num.notna().all() else None
    if num is not None:
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(num) < MAX_ABS_TIME)  # NaN and inf too
        if bad.any():
            raise refuse(int(np.flatnonzero(bad)[0]), "time out of range: expected unix time "
                         "(seconds, or milli-, micro- or nanoseconds) below 9e18")
        return np.rint(num).astype(np.int64), False
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        raise refuse(int(np.flatnonzero(bad)[0]), "not a time: expected unix seconds or a "
                     "date/time (years 1-9999)")
    # whole seconds straight from the parsed resolution (a cast to nanoseconds would overflow
    # past the year 2262)
    naive = parsed.dt.tz_localize(None).to_numpy()
    return naive.astype("datetime64[s]").astype(np.int64), True


def _side_table(src: _Source, file: str, key: str, warnings: list[str],
                mapping: ColumnMapping, engine: str) -> pd.DataFrame:
    entry = src.named(file)
    cols = _entry_columns(entry, encoding=mapping.encoding, sep=mapping.sep)
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
            kinds[mapping.timestamp] = "seconds"  # unix time: the fast typed read
        df = _delimited(entry, warnings, sep=sep, header=True, names=None, kinds=kinds,
                        required=required, encoding=mapping.encoding, scale=scale,
                        engine=engine)
    n = len(df)
    inter = pd.DataFrame({"user_id": df[mapping.user], "item_id": df[mapping.item]})
    if mapping.rating:
        inter["rating"] = df[mapping.rating].to_numpy(dtype=np.float64)
    else:
        inter["rating"] = np.ones(n)
    seconds = True  # the unit is known: dates, or row numbers
    if mapping.timestamp:
        inter["timestamp"], seconds = _timestamps(df[mapping.timestamp], entry.display,
                                                  mapping.timestamp, 0 if is_parquet else 1)
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
            "implicit": mapping.rating is None, "file": entry.display,
            "seconds": seconds}
