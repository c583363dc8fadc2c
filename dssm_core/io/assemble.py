"""Assembly: the canonical ``Dataset`` from a loader's parts.

Typed columns, exact duplicates dropped (with a warning), every id given a row in its table,
and the checks on the canonical values (enough users and items, plausible timestamps).
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
import pandas as pd

from ..dataset import DataValidationError, Dataset

log = logging.getLogger(__name__)


#: At this many interactions or more, the id columns are returned as ``category`` dtype.
CATEGORY_MIN_ROWS = 1_000_000


_YEAR_RE = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")


def _year(title: str) -> int | None:
    m = _YEAR_RE.search(title)
    return int(m.group(1)) if m else None


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


#: Unix time in seconds stays below 1e11 until the year 5138: numbers from this size up are
#: in a finer unit, (lower bound, divisor, unit).
_TIME_UNITS = ((1e17, 1_000_000_000, "nanoseconds"), (1e14, 1_000_000, "microseconds"),
               (1e11, 1_000, "milliseconds"))
#: Times later than this after loading are "in the future" (a warning, not an error).
FUTURE_MARGIN_S = 366 * 86_400


def _date(seconds: int) -> str:
    return str(np.datetime64(int(seconds), "s"))[:10]


def _in_seconds(times: np.ndarray, file: str, warnings: list[str]) -> np.ndarray:
    """Numeric times in milli-, micro- or nanoseconds (as many exports write them) divided
    down to seconds, with a warning; seconds as they are."""
    if not len(times):
        return times
    top = max(int(times.max()), -int(times.min()))  # Python ints: no copy, no overflow
    for bound, divisor, unit in _TIME_UNITS:
        if top >= bound:
            warnings.append(f"{file}: the times look like {unit} since 1970 (up to {top:.4g}); "
                            f"divided by {divisor:,} to unix seconds")
            return times // divisor
    return times


def _check_times(times: np.ndarray, file: str, warnings: list[str],
                 now: float | None = None) -> None:
    """Warnings for times before 1970 and for times more than a year after ``now``."""
    if not len(times):
        return
    lo, hi = int(times.min()), int(times.max())
    if lo < 0:
        n = int((times < 0).sum())
        warnings.append(f"{file}: {n:,} time(s) before 1970 (negative unix time, the earliest "
                        f"{_date(lo)}); kept as they are")
    limit = (time.time() if now is None else now) + FUTURE_MARGIN_S
    if hi > limit:
        n = int((times > limit).sum())
        warnings.append(f"{file}: {n:,} time(s) more than a year in the future (the latest "
                        f"{_date(hi)}); kept as they are: is the time column right?")


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
    times = inter["timestamp"].to_numpy()
    if not parts.get("seconds"):
        scaled = _in_seconds(times, file, warnings)
        if scaled is not times:  # only then: replacing a column copies and consolidates
            inter["timestamp"] = times = scaled
    _check_times(times, file, warnings)
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
