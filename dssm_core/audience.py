"""Audiences: which users for an item (or a campaign of items), lookalikes, insights, export.

The two towers were run once at training time and their L2-normalised outputs stored, so an
audience is a similarity search: the cosine of every user vector with a query vector, read in
blocks (memory bounded at any N), keeping the best k.

* :class:`UserIndex` (lives in :mod:`.retrieval`, re-exported here) - exact top-k by matrix
  product over L2-normalised float32
  (``index(matrix, ids)`` then ``query(vectors, k) -> (scores, ids)``, TFRS ``BruteForce`` style).
* :func:`load_run` - everything a page needs about one stored run (cache it in the caller).
* :func:`build_audience` - ONE call per page action: members with rank, score and percentile,
  exclusions, filters, insights (share and index vs all users) and the similarity-reach curve.
* :func:`overlap`, :func:`to_csv_bytes` - comparing two audiences, the spreadsheet-safe export.

Conventions documented for analysts:

* **score** is the cosine similarity in [-1, 1]; **percentile** is the share of the *eligible*
  users (those left after exclusions and filters) whose score is at most the member's (100 =
  the best eligible match), so an exclusion never makes the first member look worse than it is.
* **Size**: ``top_n`` users, or ``percent`` of all users of the run (rounded, at least 1). When
  more users are asked for than are eligible (after exclusions and filters), the audience is
  clamped to the eligible users and a warning says so; it is never an error.
* **Negative similarity**: members scoring below 0 lean *away* from the query. They are counted
  (``AudienceResult.n_below_zero``) and a warning says so; ``min_score`` leaves them out.
* A campaign of several items queries with the mean of their normalised vectors, renormalised;
  a lookalike queries with the renormalised centroid of its seed users, who are then excluded.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .dataset import Dataset, DataValidationError, shorten
from .retrieval import (  # noqa: F401  (UserIndex re-exported)
    DEFAULT_BLOCK_ROWS, UserIndex, _l2_normalise, _name_unknown, _top_k_desc, unicode_ids)

if TYPE_CHECKING:  # the store is only needed by the functions that read from it
    from .store import Store

log = logging.getLogger(__name__)

#: Cells starting with these are formulas to a spreadsheet; they are prefixed with "'".
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
#: An attribute with more distinct values than this shows its top values and "(other)".
MAX_CATEGORIES = 12
#: A numeric attribute with more distinct values than this is shown in quantile bands.
MAX_NUMERIC_VALUES = 10
#: A text attribute with more distinct values than this and than a fifth of the users is
#: id-like (e.g. zip codes) and left out of insights.
ID_LIKE_VALUES = 50
#: A user column whose name holds one of these is a postal code: too many values to show, so
#: it gets a companion column "<name> area", its first character (US zip: one of 10 areas).
POSTAL_HINTS = ("zip", "postal", "postcode")
#: Insights mark a value held by fewer audience members than this as a small group: its index
#: is shown with its 95 % interval, and hatched in charts.
MIN_GROUP_SIZE = 30
#: The percentile column's meaning, for table headers and CSV readers.
PERCENTILE_HELP = ("Share of the eligible users (after exclusions and filters) scoring at most "
                   "this (100 = the best eligible match)")
FAVOURITE_GENRE = "favourite genre"
#: An item's first genre (a map colour); "(no genre)" when it has none.
FIRST_GENRE = "first genre"
NO_HISTORY = "(no history)"
MISSING = "(missing)"
OTHER = "(other)"


# --------------------------------------------------------------------------------------------
# A loaded run (what a page caches)
# --------------------------------------------------------------------------------------------
class _Lazy:
    """A :class:`LoadedRun` field that, when not given, is computed on first read by the
    run's :class:`RunSource` (then kept on the instance). ``None`` is its dataclass default."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}_value"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None
        value = obj.__dict__.get(self.slot)
        if value is None:
            if obj.source is None:
                raise ValueError(f"run {obj.run_id} was loaded without its {self.name}")
            value = obj.source.compute(self.name, obj)
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


#: The tables :func:`run_tables` computes and a run keeps (``Store.finish_run(run_tables=)``),
#: rows in the run's user order unless said: ``"users"`` the attributes as
#: :func:`aligned_users` has them before postal areas (absent when the user table has none);
#: ``"genre"`` ``favourite_genre`` (categorical; a run holding it holds them all);
#: ``"seen"`` the distinct (``item_row``, ``user_row``) pairs of the interactions (int32 rows
#: of the run's items and users), sorted by item then user; ``"items"`` per run item (item
#: order) ``users``, how many distinct users interacted with it.
RUN_TABLES = ("users", "genre", "seen", "items")


class RunSource:
    """Where a loaded run's user columns come from, read when an audience, a filter or
    insights first need them.

    ``run_table(kind)``: the run's stored table ``kind`` of :data:`RUN_TABLES` or None
    (``Store.load_run_table``): integer codes in the run's row order, no text id joined.
    Runs without them (stored before schema 5, or from Redis) read the dataset:
    ``table(kind, columns)`` returns those columns of its ``"users"`` (all: ``None``) or
    ``"interactions"`` table (``Store.load_dataset_table`` or a Dataset's attribute); only
    the interactions' two id columns are kept (they serve both "exclude seen" and the
    favourite genres)."""

    def __init__(self, table: Callable[[str, Sequence[str] | None], pd.DataFrame],
                 run_table: Callable[[str], pd.DataFrame | None] | None = None) -> None:
        self._table = table
        self._run_table = run_table
        self._lock = threading.Lock()
        self._frames: dict[str, pd.DataFrame] = {}
        self._stored: dict[str, Any] = {}
        self._has_tables: bool | None = None

    def has_tables(self) -> bool:
        """Whether the run keeps its :data:`RUN_TABLES` (read its favourite genres to know)."""
        with self._lock:
            if self._has_tables is None:
                genre = None if self._run_table is None else self._run_table("genre")
                self._has_tables = genre is not None
                if genre is not None:
                    self._stored["genre"] = genre           # taken by the favourite genres
            return self._has_tables

    def _take(self, kind: str) -> pd.DataFrame | None:
        """A stored run table, read (or taken from the cache) and not kept."""
        with self._lock:
            got = self._stored.pop(kind, None)
        if got is None and self._run_table is not None:
            got = self._run_table(kind)
        return got

    def seen_users(self, item_rows: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
        """Rows of the users who interacted with any of the run's items ``item_rows``, from
        the stored ``"seen"`` pairs (indexed by item once, then kept); needs
        :meth:`has_tables`."""
        with self._lock:
            csr = self._stored.get("seen_csr")
        if csr is None:
            pairs = self._take("seen")
            items = pairs["item_row"].to_numpy()                         # (P,) int32 stored
            users = pairs["user_row"].to_numpy()                                # (P,)
            if ((items < 0) | (items >= n_items) | (users < 0) | (users >= n_users)).any():
                raise ValueError("the run's stored seen pairs point past its users or items")
            if len(items) > 1 and bool((np.diff(items) < 0).any()):
                order = np.argsort(items, kind="stable")
                items, users = items[order], users[order]
            offsets = np.searchsorted(items, np.arange(n_items + 1))            # (M + 1,)
            csr = (offsets, users)
            with self._lock:
                self._stored["seen_csr"] = csr
        offsets, users = csr
        rows = np.asarray(item_rows, dtype=np.int64)
        if not len(rows):
            return np.empty(0, dtype=np.int64)
        return np.concatenate([users[offsets[r]:offsets[r + 1]] for r in rows.tolist()])

    def genre_column(self) -> pd.Series | None:
        """The favourite genres as a categorical Series (index order) once read from the
        run's tables (None before, or without them): codes for insights and filters."""
        with self._lock:
            return self._stored.get("genre_column")

    def item_users(self, n_items: int) -> np.ndarray:
        """(M,) distinct users per run item (item order), from the stored ``"items"``."""
        got = self._take("items")
        if got is None or len(got) != n_items:
            raise ValueError(f"the run's stored item table does not match its {n_items} items")
        return got["users"].to_numpy().astype(np.int64)

    def pairs(self) -> pd.DataFrame:
        """The interactions' ``user_id`` and ``item_id`` (as text or text categories)."""
        with self._lock:
            if "pairs" not in self._frames:
                inter = self._table("interactions", ("user_id", "item_id"))
                self._frames["pairs"] = pd.DataFrame(
                    {c: _as_text_column(inter[c]) for c in ("user_id", "item_id")})
            return self._frames["pairs"]

    def compute(self, name: str, run: "LoadedRun") -> Any:
        """The value of the lazy field ``name`` of ``run``."""
        if name in ("users", "favourite_genre", "seen") and self.has_tables():
            return self._stored_field(name, run)
        if name == "users":
            return aligned_users(self._table("users", None), run.index)
        if name == "seen":
            return self.pairs()
        if name == "favourite_genre":
            return favourite_genres(self.pairs(), run.items.reset_index(), run.index.ids_,
                                    index=run.index)
        raise ValueError(f"unknown lazy field {name!r}")

    def _stored_field(self, name: str, run: "LoadedRun") -> Any:
        """A lazy field from the run's stored tables (codes in the run's row order)."""
        n = run.index.size
        if name == "users":
            attrs = self._take("users")
            if attrs is None:                                   # the user table had no columns
                attrs = pd.DataFrame(index=pd.RangeIndex(n))
            if len(attrs) != n:
                raise ValueError(f"run {run.run_id}: its stored user table has {len(attrs)} "
                                 f"rows for {n} users")
            return with_postal_areas(attrs)
        if name == "favourite_genre":
            genre = self._take("genre")
            if genre is None or len(genre) != n:
                raise ValueError(f"run {run.run_id}: its stored favourite genres do not match "
                                 f"its {n} users")
            col = genre["favourite_genre"]
            with self._lock:
                self._stored["genre_column"] = col
            # each category's object taken by code: 10x faster than pandas' to_numpy here
            cats = np.append(np.asarray(col.cat.categories.astype(object)), np.nan)  # [-1]: NaN
            return cats.astype(object)[col.cat.codes.to_numpy()]                # (N,)
        pairs = self._take("seen")                                 # "seen": as text, rarely
        return pd.DataFrame({"user_id": run.index.ids_[pairs["user_row"].to_numpy()],
                             "item_id": run.item_ids[pairs["item_row"].to_numpy()]})


@dataclass(frozen=True, eq=False)
class LoadedRun:
    """One stored run, ready for audiences. Read-only; cache it (``st.cache_resource``).

    index: the users' unit vectors in search layout. items: ``title``/``genres`` by item_id.
    users: attributes, row i for ``index.ids_[i]`` (users absent from the dataset's user
    table have missing attributes; text columns of a stored dataset come as categoricals).
    seen: (user_id, item_id) pairs of the dataset's interactions (for "exclude seen").
    favourite_genre: (N,) each user's most frequent genre in their history (ties:
    alphabetical), ``"(no history)"`` when none.
    ``users``, ``seen`` and ``favourite_genre`` are read from ``source`` the first time they
    are used (opening a 10M-user run reads its vectors only), unless given: from the run's
    tables (:func:`run_tables`, integer codes) when it keeps them, else from the dataset.
    """

    run_id: int
    dataset_id: int
    index: UserIndex
    item_ids: np.ndarray
    item_vectors: np.ndarray
    items: pd.DataFrame
    users: pd.DataFrame = _Lazy()  # type: ignore[assignment]
    seen: pd.DataFrame = _Lazy()  # type: ignore[assignment]
    favourite_genre: np.ndarray = _Lazy()  # type: ignore[assignment]
    source: RunSource | None = None

    def item_positions(self, item_ids: Sequence[Any]) -> np.ndarray:
        """Rows of ``item_ids`` in ``item_vectors``; ValueError naming unknown ones."""
        lookup = pd.Index(self.item_ids)
        want = np.asarray([str(i) for i in item_ids], dtype=object)
        pos = lookup.get_indexer(want)
        if (pos < 0).any():
            raise ValueError(_name_unknown("item", want[pos < 0].tolist(),
                                           f" in run {self.run_id}"))
        return pos.astype(np.int64)

    def population_codes(self, attr: str) -> "_Coded":
        """The attribute's codes over all users (see :func:`_attribute_codes`), computed once
        per loaded run: an audience's insights then only count its members."""
        cache = self.__dict__.setdefault("_codes", {})
        if attr not in cache:
            cache[attr] = _Coded.of(_user_column(self, attr))
        return cache[attr]


def _as_text_column(col: pd.Series) -> pd.Series:
    """An id column as text: categoricals keep their codes (categories as text), others
    become str."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories
        if pd.api.types.is_string_dtype(cats) or cats.inferred_type == "string":
            return col                  # text already (object or str dtype): no 10M rebuild
        return col.cat.rename_categories(cats.astype(str))
    return col.astype(str)


def _rows_of(col: pd.Series, index: UserIndex) -> np.ndarray:
    """Row in ``index`` of each value of an id column (-1 where unknown): categorical columns
    look up each category once."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = unicode_ids(col.cat.categories)
        codes = col.cat.codes.to_numpy().astype(np.int64)
        if len(cats) == index.size and np.array_equal(cats, index.ids_):
            return codes                                  # categories in index order
        rows = np.append(index.find(cats), -1)            # code -1 (missing) -> -1
        return rows[codes]
    return index.find(unicode_ids(col))


def aligned_users(users: pd.DataFrame, index: UserIndex) -> pd.DataFrame:
    """The user table's attributes, row i for ``index.ids_[i]`` (RangeIndex; missing
    attributes for users without a row), with postal areas (:func:`with_postal_areas`).
    A table already in the index's order (what training stores) is taken as it is."""
    return with_postal_areas(_aligned_attributes(users, index))


def _aligned_attributes(users: pd.DataFrame, index: UserIndex) -> pd.DataFrame:
    """:func:`aligned_users` before the postal areas."""
    attrs = users.drop(columns=["user_id"])
    ids = users["user_id"]
    same = len(users) == index.size and bool(
        np.array_equal(unicode_ids(_as_text_column(ids)), index.ids_))
    if same:
        out = attrs.reset_index(drop=True)
    else:
        rows = _rows_of(ids, index)                                          # (U,)
        first = np.full(index.size, -1, dtype=np.int64)                      # (N,)
        keep = rows >= 0
        # the first row of a duplicated user wins, as drop_duplicates did
        first[rows[keep][::-1]] = np.flatnonzero(keep)[::-1]
        out = attrs.reset_index(drop=True).reindex(first)
        out.index = pd.RangeIndex(index.size)
    return out


def run_tables(dataset: Dataset, user_ids: Any, item_ids: Any) -> dict[str, pd.DataFrame]:
    """What audiences read about a run's users besides their vectors, as integer-coded
    columns in the run's row order (``user_ids`` (N,), ``item_ids`` (M,), as stored with the
    run): the :data:`RUN_TABLES`. Training computes them once from the dataset in memory and
    stores them with the run, so that the first audience after opening a run reads codes
    instead of joining millions of text ids. A loaded run gives the same users, favourite
    genres, "already seen" users and item catalogue either way."""
    ids = np.asarray(user_ids)
    if ids.dtype.kind != "U":
        ids = ids.astype(str)
    n = len(ids)
    if n == 0:
        raise ValueError("a run without users has no audience tables")
    index = UserIndex.from_columns(np.ones((1, n), np.float32), ids)        # ids only
    items = _items_by_id(dataset.items)
    run_items = pd.Index(np.asarray(item_ids).astype(str))
    inter = dataset.interactions
    pairs = pd.DataFrame({c: _as_text_column(inter[c]) for c in ("user_id", "item_id")})
    tables: dict[str, pd.DataFrame] = {}
    attrs = _aligned_attributes(dataset.users, index)
    if len(attrs.columns):
        tables["users"] = attrs
    genre = favourite_genres(pairs, items.reset_index(), ids, index=index)     # (N,)
    tables["genre"] = pd.DataFrame({"favourite_genre": pd.Categorical(genre)})
    user_rows = _rows_of(pairs["user_id"], index)                               # (E,)
    col = pairs["item_id"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        found = np.append(run_items.get_indexer(col.cat.categories.astype(str)), -1)
        item_rows = found[col.cat.codes.to_numpy()]                              # (E,)
    else:
        item_rows = run_items.get_indexer(col.astype(str))
    ok = item_rows >= 0
    users = user_rows[ok].astype(np.int64)
    outside = users < 0              # users of the dataset the run has no vector for
    if outside.any():                # still counted in the catalogue, by their ids
        codes, _ = pd.factorize(pairs["user_id"][ok][outside], use_na_sentinel=False)
        users[outside] = n + codes
    base = n + int(outside.sum())
    keys = np.sort(item_rows[ok].astype(np.int64) * base + users)                # (E',)
    # distinct (sorted, then unequal neighbours: np.unique's hash ran 10x slower here)
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]                 # (P,)
    key_items, key_users = keys // base, keys % base
    inside = key_users < n
    tables["seen"] = pd.DataFrame({"item_row": key_items[inside].astype(np.int32),
                                   "user_row": key_users[inside].astype(np.int32)})
    tables["items"] = pd.DataFrame(
        {"users": np.bincount(key_items, minlength=len(run_items)).astype(np.int64)})
    return tables


def favourite_genres(interactions: pd.DataFrame, items: pd.DataFrame,
                     user_ids: np.ndarray, *, index: UserIndex | None = None) -> np.ndarray:
    """Each user's most frequent genre over their interactions (ties: alphabetical first).

    Integer codes throughout (no per-interaction Python, no string merge): each interaction
    adds one to (its user, each genre of its item), counted genre by genre with
    ``np.bincount``. ``index``: an index over ``user_ids`` to look users up with (else one
    is built).
    """
    out = np.full(len(user_ids), NO_HISTORY, dtype=object)
    if "genres" not in items.columns or not len(interactions) or not len(user_ids):
        return out
    if index is None:
        index = UserIndex().index(np.ones((len(user_ids), 1), np.float32), user_ids)
    item_ids = pd.Index(items["item_id"].astype(str))
    lists = [list(g) if isinstance(g, (list, tuple, np.ndarray)) else [] for g in items["genres"]]
    names = sorted({str(x) for g in lists for x in g if x is not None and not pd.isna(x)})
    if not names:
        return out
    gcode = {n: j for j, n in enumerate(names)}            # alphabetical: ties go to the first
    per_item = [[gcode[str(x)] for x in g if x is not None and not pd.isna(x)] for g in lists]
    n_g = np.array([len(g) for g in per_item], dtype=np.int64)                # (I,)
    ptr = np.concatenate([[0], np.cumsum(n_g)])                              # (I + 1,)
    flat = np.array([j for g in per_item for j in g], dtype=np.int64)        # (sum n_g,)
    # the item table's first row of a repeated item id wins, as a merge on unique ids did
    first_item = ~item_ids.duplicated()
    unique_items, back = pd.Index(item_ids[first_item]), np.flatnonzero(first_item)
    col = interactions["item_id"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        found = unique_items.get_indexer(col.cat.categories.astype(str))
        cat_rows = np.append(np.where(found >= 0, back[found], -1), -1)   # code -1 -> -1
        item_rows = cat_rows[col.cat.codes.to_numpy()]
    else:
        found = unique_items.get_indexer(col.astype(str))
        item_rows = np.where(found >= 0, back[found], -1)
    user_rows = _rows_of(interactions["user_id"], index)                     # (E,)
    ok = (item_rows >= 0) & (user_rows >= 0)
    item_rows, user_rows = item_rows[ok], user_rows[ok]
    reps = n_g[item_rows]                                                    # (E,)
    users = np.repeat(user_rows, reps)                                       # (P,)
    starts = np.repeat(ptr[item_rows], reps)
    within = np.arange(len(users)) - np.repeat(np.cumsum(reps) - reps, reps)
    genres = flat[starts + within]                                           # (P,)
    if len(names) < 2 ** 15:   # a stable sort of 16-bit integers is a radix sort: O(P)
        genres = genres.astype(np.int16)
    order = np.argsort(genres, kind="stable")
    bounds = np.searchsorted(genres[order], np.arange(len(names) + 1))
    n = len(user_ids)
    best_n = np.zeros(n, dtype=np.int64)
    best_g = np.full(n, -1, dtype=np.int64)
    for j in range(len(names)):
        counts = np.bincount(users[order[bounds[j]:bounds[j + 1]]], minlength=n)   # (N,)
        better = counts > best_n                           # strictly: an earlier genre keeps a tie
        best_n[better], best_g[better] = counts[better], j
    have = best_g >= 0
    out[have] = np.asarray(names, dtype=object)[best_g[have]]
    return out


def with_postal_areas(users: pd.DataFrame) -> pd.DataFrame:
    """``users`` plus "<col> area" (the code's first character, upper case) for each
    postal-code-like text column with more than ``ID_LIKE_VALUES`` distinct values: codes that
    insights, filters and map colours can show (they leave id-like columns out)."""
    out = users
    for col in list(users.columns):
        s = users[col]
        if (not any(h in str(col).lower() for h in POSTAL_HINTS)
                or pd.api.types.is_numeric_dtype(s)
                or s.nunique(dropna=True) <= ID_LIKE_VALUES):
            continue
        name = f"{col} area"
        if name in users.columns:
            continue
        if isinstance(s.dtype, pd.CategoricalDtype):   # one area per category, then codes
            cats = pd.Series(s.cat.categories.astype(str)).str.strip().str.upper().str[:1]
            acodes, auniq = pd.factorize(cats.where(cats.str.len() > 0, None))
            codes = np.append(acodes, -1)[s.cat.codes.to_numpy()]
            area = pd.Series(pd.Categorical.from_codes(codes, categories=auniq),
                             index=s.index)
        else:
            text = s.astype(object)
            area = text.where(text.isna(), text.astype(str).str.strip().str.upper().str[:1])
            area = area.where(area.astype(str).str.len() > 0, None)
        if out is users:
            out = users.copy()
        out[name] = area
    return out


def load_run(store: "Store", run_id: int | None = None, *,
             block_rows: int = DEFAULT_BLOCK_ROWS, use_run_tables: bool = True) -> LoadedRun:
    """Load a succeeded run (newest succeeded if None): its user vectors straight into the
    search layout (``Store.load_embedding_columns``, no second copy), its item vectors and
    item table. The users' attributes, favourite genres and seen items are read when first
    needed: from the run's tables (:func:`run_tables`), else (a run stored before schema 5,
    or ``use_run_tables=False``, for comparisons) from the dataset's user table and
    interactions."""
    if run_id is None:
        run_id = store.newest_succeeded_run()
        if run_id is None:
            raise ValueError("there is no succeeded run in this database; train one first")
    run = store.get_run(run_id)
    if not run.succeeded:
        raise ValueError(f"run {run_id} is {run.status}; audiences need a succeeded run")
    dataset_id = int(run.dataset_id)
    user_ids, columns = store.load_embedding_columns(run_id, "user")          # (N,), (D, N)
    index = UserIndex.from_columns(columns, user_ids, block_rows=block_rows)
    item_ids, item_vecs = store.load_embeddings(run_id, "item")
    stored = (lambda kind: store.load_run_table(run_id, kind)) if use_run_tables else None
    source = RunSource(lambda kind, cols: store.load_dataset_table(dataset_id, kind, cols),
                       stored)
    return _assemble(int(run_id), dataset_id, index, item_ids, item_vecs,
                     store.load_dataset_table(dataset_id, "items"), source)


def backfill_run_tables(store: "Store", run_id: int, *,
                        progress: Callable[[str, float, str | None], None] | None = None
                        ) -> bool:
    """Compute and keep the :data:`RUN_TABLES` of a succeeded run stored without them
    (before schema 5, or when training could not compute them), from its dataset and its
    stored user and item ids, so that opening it for audiences reads codes instead of the
    dataset's text ids. False (nothing written) when the run has them already.
    ``progress(stage, fraction, message)``: "backfill" at 0 (reading), 0.5 (computing), 1.
    Raises ValueError for a run that did not succeed, or whose dataset or ids cannot give
    the tables (the run is left as it was)."""
    run = store.get_run(run_id)
    if not run.succeeded:
        raise ValueError(f"run {run_id} is {run.status}; only a succeeded run has audiences")
    if store.load_run_table(run_id, "genre") is not None:
        return False
    tell = progress or (lambda stage, fraction, message=None: None)
    tell("backfill", 0.0, f"run {run_id}: reading its dataset and ids")
    dataset = store.load_dataset(int(run.dataset_id))
    user_ids = store.load_embedding_ids(run_id, "user")
    item_ids = store.load_embedding_ids(run_id, "item")
    tell("backfill", 0.5, f"run {run_id}: computing the tables of {len(user_ids):,} users")
    tables = run_tables(dataset, user_ids, item_ids)
    del dataset
    store.save_run_tables(run_id, tables)
    tell("backfill", 1.0, f"run {run_id}: tables stored")
    return True


def run_from_parts(run_id: int, dataset_id: int, user_ids: Any, user_vecs: Any, item_ids: Any,
                   item_vecs: Any, ds: Dataset, *,
                   block_rows: int = DEFAULT_BLOCK_ROWS) -> LoadedRun:
    """A :class:`LoadedRun` from a run's raw vectors (user (N, D), item (M, D)) and its
    dataset (``interactions`` needs only ``user_id`` and ``item_id``): what
    ``serving.load_run`` builds from Redis."""
    index = UserIndex(block_rows).index(user_vecs, user_ids)
    source = RunSource(lambda kind, cols: getattr(ds, kind) if cols is None
                       else getattr(ds, kind)[list(cols)])
    return _assemble(run_id, dataset_id, index, item_ids, item_vecs, ds.items, source)


def run_from_tables(run_id: int, dataset_id: int, index: UserIndex, item_ids: Any,
                    item_vecs: Any, items_table: pd.DataFrame, source: RunSource) -> LoadedRun:
    """A :class:`LoadedRun` from an index of its user vectors, its item vectors, the item
    table and a :class:`RunSource` that holds the run's tables (``serving.load_run`` of a
    publication that carries them)."""
    return _assemble(run_id, dataset_id, index, item_ids, item_vecs, items_table, source)


def _items_by_id(items_table: pd.DataFrame) -> pd.DataFrame:
    """The item table indexed by text ``item_id`` (the first row of a repeated id wins)."""
    items = items_table.copy()
    items["item_id"] = items["item_id"].astype(str)
    return items.drop_duplicates("item_id").set_index("item_id")


def _assemble(run_id: int, dataset_id: int, index: UserIndex, item_ids: Any, item_vecs: Any,
              items_table: pd.DataFrame, source: RunSource) -> LoadedRun:
    items = _items_by_id(items_table)
    return LoadedRun(run_id=int(run_id), dataset_id=int(dataset_id), index=index,
                     item_ids=np.asarray(item_ids).astype(str),
                     item_vectors=_l2_normalise(item_vecs, "item", np.asarray(item_ids)),
                     items=items, source=source)


# --------------------------------------------------------------------------------------------
# Requests and results
# --------------------------------------------------------------------------------------------
def _as_str_tuple(values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, (str, bytes)):
        values = [values]
    return tuple(str(v).strip() for v in values if str(v).strip() != "")


def _as_range(attr: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"range filter on {attr!r} must be two numbers (low, high), "
                         f"got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"range filter on {attr!r} must have low <= high, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class AudienceRequest:
    """What audience to build. Exactly one of ``items`` / ``seed_users``; exactly one of
    ``top_n`` / ``percent``.

    items: item ids (one, or several for a campaign). seed_users: user ids for a lookalike.
    top_n: audience size; percent: size as % of all users of the run (0 < percent <= 100).
    exclude_seen: drop users who already interacted with any of the items (the app's and the
        CLI's default for item audiences: :data:`DEFAULT_EXCLUDE_SEEN`).
    exclude_users: drop these user ids (an uploaded list; ids unknown to the run are ignored).
    where: attribute filters, attribute -> allowed values (compared as text), e.g.
        ``{"gender": ["F"], "age": ["25-34", "35-44"]}``.
    ranges: numeric attribute filters, attribute -> (low, high), both ends included; users
        whose value is missing are left out, e.g. ``{"age": (25, 34)}``.
    min_score: a similarity floor: users scoring below it are not eligible (e.g. 0.0 keeps
        only users whose taste leans towards the query).
    """

    items: tuple[str, ...] = ()
    seed_users: tuple[str, ...] = ()
    top_n: int | None = None
    percent: float | None = None
    exclude_seen: bool = False
    exclude_users: tuple[str, ...] = ()
    where: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    min_score: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(dict.fromkeys(_as_str_tuple(self.items))))
        object.__setattr__(self, "seed_users",
                           tuple(dict.fromkeys(_as_str_tuple(self.seed_users))))
        object.__setattr__(self, "exclude_users",
                           tuple(dict.fromkeys(_as_str_tuple(self.exclude_users))))
        object.__setattr__(self, "where", {str(k): _as_str_tuple(v)
                                           for k, v in dict(self.where or {}).items()})
        object.__setattr__(self, "ranges", {str(k): _as_range(str(k), v)
                                            for k, v in dict(self.ranges or {}).items()})
        object.__setattr__(self, "exclude_seen", bool(self.exclude_seen))
        if bool(self.items) == bool(self.seed_users):
            if not self.items:
                raise ValueError("give one or more item ids, or a non-empty list of seed users")
            raise ValueError("give item ids or seed users, not both")
        if (self.top_n is None) == (self.percent is None):
            raise ValueError("give the audience size as top_n or as percent (exactly one)")
        if self.top_n is not None:
            if isinstance(self.top_n, bool) or int(self.top_n) != self.top_n or self.top_n < 1:
                raise ValueError(f"top_n must be a whole number >= 1, got {self.top_n!r}")
            object.__setattr__(self, "top_n", int(self.top_n))
        if self.percent is not None:
            p = float(self.percent)
            if not (0.0 < p <= 100.0) or not math.isfinite(p):
                raise ValueError(f"percent must be in (0, 100], got {self.percent!r}")
            object.__setattr__(self, "percent", p)
        if self.min_score is not None:
            f = float(self.min_score)
            if not -1.0 <= f <= 1.0:
                raise ValueError(f"min_score is a cosine: it must be in [-1, 1], got "
                                 f"{self.min_score!r}")
            object.__setattr__(self, "min_score", f)
        for attr, allowed in self.where.items():
            if not allowed:
                raise ValueError(f"filter on {shorten(attr)!r} has no allowed values")

    @property
    def kind(self) -> str:
        """"item" (users for items) or "lookalike"."""
        return "item" if self.items else "lookalike"

    def key(self) -> str:
        """A stable text key of the request (for caches)."""
        return repr(sorted(self.to_dict().items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able definition (saved with an audience)."""
        return {"kind": self.kind, "items": list(self.items), "seed_users": list(self.seed_users),
                "top_n": self.top_n, "percent": self.percent, "exclude_seen": self.exclude_seen,
                "exclude_users": list(self.exclude_users),
                "where": {k: list(v) for k, v in self.where.items()},
                "ranges": {k: list(v) for k, v in self.ranges.items()},
                "min_score": self.min_score}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AudienceRequest":
        """Inverse of :meth:`to_dict` (the ``kind`` key is ignored)."""
        keys = {"items", "seed_users", "top_n", "percent", "exclude_seen", "exclude_users",
                "where", "ranges", "min_score"}
        return cls(**{k: v for k, v in d.items() if k in keys})


#: Item audiences leave out users who already interacted with the item(s) unless asked not to
#: (the app's checkbox and the CLI's ``--include-seen``): they need no ad to find it.
DEFAULT_EXCLUDE_SEEN = True


@dataclass
class AudienceResult:
    """Everything a page draws for one audience.

    members: rank, user_id, score, percentile, then the user attributes and
        ``favourite genre``. insights: see :func:`insights`. reach: see :func:`reach_curve`.
    threshold: the lowest member score (the similarity cut-off this audience implies).
    population: users in the run; eligible: users left after exclusions and filters (the pool
        the members and their percentiles come from).
    excluded: users removed per reason (each counted once, in the order applied).
    requested: the size asked for (before clamping).
    n_below_zero: members whose score is below 0 (they lean away from the query).
    """

    run_id: int
    request: AudienceRequest
    members: pd.DataFrame
    insights: pd.DataFrame
    reach: pd.DataFrame
    threshold: float
    population: int
    eligible: int
    requested: int
    excluded: dict[str, int]
    item_ids: tuple[str, ...]
    item_titles: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    n_below_zero: int = 0

    @property
    def size(self) -> int:
        return int(len(self.members))

    def default_name(self) -> str:
        """A name to save it under, from what it is and its actual size (after clamping):
        ``"Star Wars (1977) – top 330"``, ``"Star Wars (1977) + 2 more – top 500"``,
        ``"Lookalike of 12 users – top 100"``."""
        if self.item_ids:
            first = self.item_titles[0] if self.item_titles and self.item_titles[0] else \
                self.item_ids[0]
            more = f" + {len(self.item_ids) - 1} more" if len(self.item_ids) > 1 else ""
            what = f"{first}{more}"
        elif self.request.seed_users:
            what = f"Lookalike of {len(self.request.seed_users)} users"
        else:
            what = "Audience"
        return f"{what} – top {self.size}"

    def definition(self) -> dict[str, Any]:
        """What to save with the audience (``Store.save_audience``)."""
        return {**self.request.to_dict(), "run_id": self.run_id, "size": self.size,
                "threshold": self.threshold}

    def to_csv_bytes(self) -> bytes:
        """The export file (see :func:`to_csv_bytes`)."""
        return to_csv_bytes(self.members, run_id=self.run_id, item_ids=self.item_ids,
                            item_titles=self.item_titles)


# --------------------------------------------------------------------------------------------
# Insights, reach, overlap
# --------------------------------------------------------------------------------------------
def _attribute_codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes (N,) and display labels of one attribute over the population; rich
    numerics become quantile bands, missing values the label "(missing)"."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) \
            and col.nunique(dropna=True) > MAX_NUMERIC_VALUES:
        vals = col.astype(float)
        edges = np.unique(np.nanquantile(vals.to_numpy(), np.linspace(0, 1, 6)))
        if len(edges) >= 2:
            names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
            codes = pd.cut(vals, bins=edges, labels=False, include_lowest=True).to_numpy()
            codes = np.where(np.isnan(codes), len(names), codes).astype(np.int64)
            return codes, names + [MISSING]
    codes, uniques = _factorize(col)                        # (N,) NaN -> -1, ours to change
    labels = [str(u) for u in uniques] + [MISSING]
    codes[codes < 0] = len(uniques)
    return codes, labels


def _factorize(col: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """``pd.factorize(col)``: codes (N,) (a new signed integer array, -1 where missing) and
    the distinct values in the order they first appear. A categorical's integer codes are
    renumbered, as int16 when they fit (pandas would first build its N values as objects,
    and int64 codes of 10M users are 80 MB an attribute)."""
    if not isinstance(col.dtype, pd.CategoricalDtype):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        return np.array(codes, dtype=np.int64), list(uniques)
    cats = col.cat.categories
    codes = col.cat.codes.to_numpy()                                         # (N,) -1: NaN
    first = pd.unique(codes)                                  # in order of first appearance
    first = first[first >= 0].astype(np.int64)
    small = np.int16 if len(cats) < 2**15 else np.int32
    renumber = np.full(len(cats) + 1, -1, dtype=small)                      # [-1] -> -1
    renumber[first] = np.arange(len(first))
    return renumber[codes], [cats[j] for j in first.tolist()]


def _wilson(k: np.ndarray, n: int, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval of the proportions ``k / n`` (arrays of bounds in [0, 1])."""
    k = np.asarray(k, dtype=np.float64)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


@dataclass(frozen=True)
class _Coded:
    """One attribute over the population: codes (N,), labels (V,), counts per label (V,),
    and whether insights leave it out (id-like text)."""

    codes: np.ndarray
    labels: list[str]
    pop: np.ndarray
    id_like: bool

    @classmethod
    def of(cls, col: pd.Series) -> "_Coded":
        codes, labels = _attribute_codes(col.reset_index(drop=True))
        n_distinct = len(labels) - 1
        id_like = (n_distinct > ID_LIKE_VALUES and n_distinct > 0.2 * len(col)
                   and not pd.api.types.is_numeric_dtype(col))
        return cls(codes, labels, np.bincount(codes, minlength=len(labels)), id_like)


INSIGHT_COLUMNS = ["attribute", "value", "audience_count", "audience_share", "population_count",
                   "population_share", "index", "index_low", "index_high", "small"]


def insights(members_rows: np.ndarray, attributes: pd.DataFrame, *,
             min_group: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """Composition of an audience against all users, per attribute.

    ``attributes``: one row per user of the population (same order as the index), one
    column per attribute (categorical). ``members_rows``: the audience's rows in it.
    Returns columns ``attribute, value, audience_count, audience_share, population_count,
    population_share, index, index_low, index_high, small``; shares are % (summing to 100 per
    attribute), index = audience_share / population_share * 100 (100 = as common as among all
    users); ``index_low``/``index_high`` its 95 % interval (Wilson interval of the audience
    share); ``small``: fewer than ``min_group`` members hold the value, so its index rests on
    too few people to act on (a genre held by one member can read 200).
    Attributes with more than ``MAX_CATEGORIES`` values keep their most common values in the
    audience and pool the rest as "(other)"; id-like attributes (more than ``ID_LIKE_VALUES``
    distinct values and more than a fifth of the population, e.g. zip codes) are left out.
    """
    if len(attributes) == 0 or len(members_rows) == 0:
        return pd.DataFrame(columns=INSIGHT_COLUMNS)
    return _insights_of(members_rows, {attr: _Coded.of(attributes[attr])
                                       for attr in attributes.columns},
                        len(attributes), min_group=min_group)


def _insights_of(members_rows: np.ndarray, coded: Mapping[Any, _Coded], n_pop: int, *,
                 min_group: int) -> pd.DataFrame:
    """:func:`insights` over attributes already coded (a loaded run keeps them)."""
    cols = INSIGHT_COLUMNS
    members_rows = np.asarray(members_rows, dtype=np.int64)
    n_aud = len(members_rows)
    if n_pop == 0 or n_aud == 0:
        return pd.DataFrame(columns=cols)
    # per attribute: its rows' labels and counts, in display order; one frame at the end
    attr_names: list[np.ndarray] = []
    values: list[np.ndarray] = []
    pops: list[np.ndarray] = []
    auds: list[np.ndarray] = []
    for attr, c in coded.items():
        if c.id_like:
            continue
        labels = np.asarray(c.labels, dtype=object)                         # (V,)
        pop = c.pop                                                          # (V,)
        aud = np.bincount(c.codes[members_rows], minlength=len(labels))     # (V,)
        if int((pop > 0).sum()) > MAX_CATEGORIES:
            # keep the audience's most common values, pool the rest as "(other)"
            # (ties: the more common value among all users first)
            order = np.lexsort((-pop, -aud))
            keep = np.zeros(len(labels), bool)
            keep[[i for i in order if aud[i] > 0][:MAX_CATEGORIES - 1]] = True
            labels = np.append(labels[keep], OTHER)
            pop = np.append(pop[keep], int(pop[~keep].sum()))
            aud = np.append(aud[keep], int(aud[~keep].sum()))
        present = pop > 0
        labels, pop, aud = labels[present], pop[present], aud[present]
        # most members first, then most users, then the value's text
        order = sorted(range(len(labels)), key=lambda i: (-aud[i], -pop[i], str(labels[i])))
        attr_names.append(np.full(len(order), str(attr), dtype=object))
        values.append(labels[order])
        pops.append(pop[order].astype(np.int64))
        auds.append(aud[order].astype(np.int64))
    if not values:
        return pd.DataFrame(columns=cols)
    aud_n, pop_n = np.concatenate(auds), np.concatenate(pops)
    aud_share = aud_n / n_aud * 100.0
    pop_share = pop_n / n_pop * 100.0
    lo, hi = _wilson(aud_n, n_aud)
    return pd.DataFrame({
        "attribute": np.concatenate(attr_names), "value": np.concatenate(values),
        "audience_count": aud_n, "audience_share": aud_share, "population_count": pop_n,
        "population_share": pop_share, "index": aud_share / pop_share * 100.0,
        "index_low": lo * 100.0 / pop_share * 100.0, "index_high": hi * 100.0 / pop_share * 100.0,
        "small": aud_n < int(min_group)}, columns=cols)


def reach_curve(scores: np.ndarray, population: int, points: int = 60) -> pd.DataFrame:
    """Similarity threshold vs audience size over the eligible users' ``scores``.

    Returns columns ``threshold, size, percent_of_population``: ``size`` users score at least
    ``threshold`` (sizes spaced geometrically from 1 to all eligible users).
    """
    return _reach_of_sorted(np.sort(np.asarray(scores, dtype=np.float32))[::-1], population,
                            points)


def _reach_of_sorted(s: np.ndarray, population: int, points: int = 60) -> pd.DataFrame:
    """:func:`reach_curve` of scores already sorted best first, ``s`` (M,)."""
    if len(s) == 0:
        return pd.DataFrame({"threshold": [], "size": [], "percent_of_population": []})
    sizes = np.unique(np.round(np.geomspace(1, len(s), num=min(points, len(s)))).astype(np.int64))
    thr = s[sizes - 1]
    # everyone tied with the threshold is inside: size = count of scores >= threshold
    sizes = np.searchsorted(-s, -thr, side="right")
    df = pd.DataFrame({"threshold": thr.astype(np.float64), "size": sizes.astype(np.int64)})
    df = df.drop_duplicates("size").reset_index(drop=True)
    df["percent_of_population"] = df["size"] / max(population, 1) * 100.0
    return df


def overlap(a: Iterable[Any], b: Iterable[Any]) -> dict[str, Any]:
    """Overlap of two audiences given as user ids: sizes, common count, Jaccard, each only."""
    sa, sb = {str(x) for x in a}, {str(x) for x in b}
    common = len(sa & sb)
    union = len(sa | sb)
    return {"size_a": len(sa), "size_b": len(sb), "common": common,
            "only_a": len(sa) - common, "only_b": len(sb) - common,
            "jaccard": common / union if union else 0.0}


def overlap_saved(store: "Store", audience_a: int, audience_b: int) -> dict[str, Any]:
    """:func:`overlap` of two saved audiences (by id)."""
    a = store.load_audience(audience_a)["members"]["user_id"]
    b = store.load_audience(audience_b)["members"]["user_id"]
    return overlap(a, b)


# --------------------------------------------------------------------------------------------
# What the pickers offer (computed here so that pages only draw)
# --------------------------------------------------------------------------------------------
def seen_mask(run: LoadedRun, item_ids: Sequence[str]) -> np.ndarray:
    """(N,) bool: the users (index order) who interacted with any of ``item_ids``."""
    m = np.zeros(run.index.size, bool)
    want = {str(i) for i in item_ids}
    if want and run.source is not None and run.source.has_tables():
        rows = pd.Index(run.item_ids).get_indexer(sorted(want))
        m[run.source.seen_users(rows[rows >= 0], run.index.size, len(run.item_ids))] = True
    elif want:
        users = run.seen.loc[run.seen["item_id"].isin(want), "user_id"].unique()
        m[run.index.positions(users, missing="ignore")] = True
    return m


def seen_count(run: LoadedRun, item_ids: Sequence[str]) -> int:
    """How many users of the run already interacted with any of ``item_ids``."""
    return int(seen_mask(run, item_ids).sum())


def item_catalogue(run: LoadedRun) -> pd.DataFrame:
    """The run's items for a picker: ``item_id, title, genres`` (list), ``year`` (nullable
    Int64) and ``users`` (distinct users who already interacted with it); most users first
    (ties: item id)."""
    ids = pd.Index(run.item_ids.astype(str))
    if run.source is not None and run.source.has_tables():
        users = pd.Series(run.source.item_users(len(ids)), index=ids)
    else:
        pairs = run.seen.drop_duplicates()
        users = pairs["item_id"].value_counts().reindex(ids).fillna(0).astype(np.int64)
    items = run.items.reindex(ids)
    titles = (items["title"].fillna("").astype(str) if "title" in items.columns
              else pd.Series("", index=ids))
    genres = ([list(g) if isinstance(g, (list, tuple, np.ndarray)) else []
               for g in items["genres"]] if "genres" in items.columns else [[]] * len(ids))
    year = (pd.to_numeric(items["year"], errors="coerce").astype("Int64")
            if "year" in items.columns else pd.Series(pd.NA, index=ids, dtype="Int64"))
    cat = pd.DataFrame({"item_id": ids.to_numpy(dtype=object), "title": titles.to_numpy(),
                        "genres": genres, "year": year.to_numpy(),
                        "users": users.to_numpy()})
    cat["year"] = cat["year"].astype("Int64")
    return cat.sort_values(["users", "item_id"], ascending=[False, True],
                           kind="stable").reset_index(drop=True)


def search_items(catalogue: pd.DataFrame, text: str = "", *, genres: Sequence[str] = (),
                 years: tuple[int, int] | None = None) -> pd.DataFrame:
    """Rows of :func:`item_catalogue` whose title contains ``text`` (case-insensitive) or whose
    id equals it, holding every genre of ``genres``, and dated within ``years`` (inclusive;
    items without a year are dropped when a range is given). Order kept."""
    keep = np.ones(len(catalogue), bool)
    q = (text or "").strip()
    if q:
        keep &= (catalogue["title"].str.contains(q, case=False, regex=False).to_numpy()
                 | (catalogue["item_id"] == q).to_numpy())
    for g in genres:
        keep &= np.array([g in gs for gs in catalogue["genres"]], dtype=bool)
    if years is not None:
        y = catalogue["year"].astype("float64").to_numpy()
        with np.errstate(invalid="ignore"):
            keep &= (y >= years[0]) & (y <= years[1])
    return catalogue[keep]


def catalogue_genres(catalogue: pd.DataFrame) -> list[str]:
    """Every genre of the catalogue, alphabetical."""
    return sorted({g for gs in catalogue["genres"] for g in gs})


def catalogue_years(catalogue: pd.DataFrame) -> tuple[int, int] | None:
    """(first, last) year of the catalogue's items, None when no item has one."""
    y = catalogue["year"].dropna()
    return (int(y.min()), int(y.max())) if len(y) else None


@dataclass(frozen=True)
class FilterOptions:
    """What the attribute filters offer for a run.

    values: attribute -> its values as text (sorted), for attributes with at most
        ``max_values`` of them, plus the favourite genre.
    ranges: numeric attribute with more values -> (low, high) (ints when all values are).
    """

    values: dict[str, list[str]]
    ranges: dict[str, tuple[float, float]]


def filter_options(run: LoadedRun, max_values: int = 30) -> FilterOptions:
    """The filters a page offers for ``run`` (see :class:`FilterOptions`)."""
    values: dict[str, list[str]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    for attr in run.users.columns:
        col = run.users[attr]
        n = col.astype(object).nunique(dropna=True)
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if n <= max_values:
            values[str(attr)] = sorted({str(v) for v in col.dropna().tolist()})
        elif numeric:
            lo, hi = float(col.min()), float(col.max())
            if bool(np.all(np.mod(col.dropna(), 1) == 0)):
                lo, hi = int(lo), int(hi)
            ranges[str(attr)] = (lo, hi)
    values[FAVOURITE_GENRE] = sorted({str(v) for v in
                                      _factorize(_user_column(run, FAVOURITE_GENRE))[1]})
    return FilterOptions(values=values, ranges=ranges)


def map_frame(run: LoadedRun, ids: Any, kind: str) -> pd.DataFrame:
    """What a map shows of its points (rows in ``ids`` order): for users their attributes and
    favourite genre; for items ``title`` (text), ``genres`` (lists) and the first genre, plus
    their other columns."""
    want = pd.Index(np.asarray(ids).astype(str))
    if kind == "user":
        rows = run.index.find(want.to_numpy(dtype=str))                     # -1: unknown
        attrs = run.users.reindex(rows)
        attrs.index = want
        attrs[FAVOURITE_GENRE] = np.where(rows >= 0, run.favourite_genre[rows], np.nan)
        return attrs
    if kind != "item":
        raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
    items = run.items.reindex(want).copy()
    if "genres" in items.columns:
        items["genres"] = [list(x) if isinstance(x, (list, tuple, np.ndarray)) else []
                           for x in items["genres"]]
        items[FIRST_GENRE] = [x[0] if x else "(no genre)" for x in items["genres"]]
    if "title" not in items.columns:
        items["title"] = ""
    items["title"] = items["title"].fillna("").astype(str)
    return items


def selection_audience(run: LoadedRun, user_ids: Sequence[str]) -> pd.DataFrame:
    """Users picked on a map as an audience: ``rank, user_id, score``, ranked by the cosine of
    each one's vector to the selection's normalised centroid (ties: index order). Unknown ids
    raise ValueError naming them; an empty selection raises ValueError."""
    rows = run.index.positions(user_ids)
    if len(rows) == 0:
        raise ValueError("the selection holds no users")
    rows = np.unique(rows)                                               # ascending, no repeats
    vecs = run.index.matrix_[rows]                                       # (K, D)
    centre = vecs.mean(axis=0)                                           # (D,)
    norm = float(np.linalg.norm(centre))
    scores = (vecs @ (centre / norm) if norm > 1e-9
              else np.zeros(len(rows), np.float32))                      # (K,)
    order = np.lexsort((rows, -scores))
    return pd.DataFrame({"rank": np.arange(1, len(rows) + 1, dtype=np.int64),
                         "user_id": run.index.ids_[rows[order]].astype(str),
                         "score": scores[order].astype(np.float64)})


# --------------------------------------------------------------------------------------------
# Building an audience
# --------------------------------------------------------------------------------------------
def _user_column(run: LoadedRun, attr: str) -> pd.Series:
    """The attribute's values over the population (index order); ValueError if unknown."""
    if attr == FAVOURITE_GENRE:
        fav = run.favourite_genre          # from run tables, kept as categories too
        col = None if run.source is None else run.source.genre_column()
        return pd.Series(fav) if col is None else col
    if attr in run.users.columns:
        return run.users[attr]
    known = [str(c) for c in run.users.columns]
    raise ValueError(f"unknown user attribute {shorten(attr)!r}; known: "
                     f"{', '.join(known + [FAVOURITE_GENRE])}")


def _filter_mask(run: LoadedRun, where: Mapping[str, tuple[str, ...]],
                 ranges: Mapping[str, tuple[float, float]] | None = None) -> np.ndarray:
    mask = np.ones(run.index.size, dtype=bool)
    for attr, allowed in where.items():
        col = _user_column(run, attr)
        # compare as text, converting each distinct value once (fast at a million users)
        codes, uniques = _factorize(col)
        ok = np.array([str(u) in set(allowed) for u in uniques] + [False], dtype=bool)
        mask &= ok[codes]                                       # code -1 (missing) -> False
    for attr, (lo, hi) in (ranges or {}).items():
        col = _user_column(run, attr)
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise ValueError(f"attribute {attr!r} is not numeric: filter it by its values")
        vals = col.astype("float64").to_numpy()                              # NaN: missing
        with np.errstate(invalid="ignore"):
            mask &= (vals >= lo) & (vals <= hi)
    return mask


def audience_size(request: AudienceRequest, population: int) -> int:
    """The size asked for: ``top_n``, or ``percent`` of the population (rounded, >= 1)."""
    if request.top_n is not None:
        return int(request.top_n)
    return max(1, int(round(float(request.percent) / 100.0 * population)))


def build_audience(run: LoadedRun, request: AudienceRequest, *,
                   min_group: int = MIN_GROUP_SIZE) -> AudienceResult:
    """Build one audience on a loaded run: members, insights and reach in one call.

    ``min_group``: insights mark values held by fewer members as small (see :func:`insights`).

    Raises ValueError naming unknown item or seed ids, for an empty seed list, unknown filter
    attributes, or when exclusions and filters leave nobody.
    """
    idx = run.index
    n_pop = idx.size
    warnings: list[str] = []
    item_ids: tuple[str, ...] = ()
    titles: tuple[str, ...] = ()
    seed_rows = np.empty(0, dtype=np.int64)
    if request.items:
        rows = run.item_positions(request.items)
        item_ids = tuple(request.items)
        if "title" in run.items.columns:
            t = run.items["title"].reindex(list(item_ids))
            titles = tuple("" if pd.isna(x) else str(x) for x in t)
        q = run.item_vectors[rows].mean(axis=0)                              # (D,)
    else:
        seed_rows = idx.positions(request.seed_users)
        q = idx.matrix_[seed_rows].mean(axis=0)                              # (D,)
    norm = float(np.linalg.norm(q))
    if norm < 1e-6:
        raise ValueError("the query vectors cancel out (their mean is zero); "
                         "choose other items or seeds")
    q = (q / norm).astype(np.float32)
    scores = idx.scores(q)                                                   # (N,)

    eligible = np.ones(n_pop, dtype=bool)
    excluded: dict[str, int] = {}

    def drop(reason: str, mask_out: np.ndarray) -> None:
        newly = int((eligible & mask_out).sum())
        excluded[reason] = newly
        eligible[mask_out] = False

    if len(seed_rows):
        m = np.zeros(n_pop, bool)
        m[seed_rows] = True
        drop("seed users", m)
    if request.exclude_seen and request.items:
        drop("already interacted", seen_mask(run, item_ids))
    elif request.exclude_seen:
        warnings.append("Excluding users who already interacted applies to item audiences only; "
                        "ignored for a lookalike")
    if request.exclude_users:
        rows = idx.positions(request.exclude_users, missing="ignore")
        unknown = len(request.exclude_users) - len(rows)     # ids are deduplicated above
        if unknown:
            warnings.append(f"{unknown} ids of the exclusion list are not users of this run")
        m = np.zeros(n_pop, bool)
        m[rows] = True
        drop("exclusion list", m)
    if request.where or request.ranges:
        drop("attribute filters", ~_filter_mask(run, request.where, request.ranges))
    if request.min_score is not None:
        drop(f"similarity below {request.min_score:g}", scores < request.min_score)

    n_elig = int(eligible.sum())
    if n_elig == 0:
        raise ValueError("No user is left after the exclusions and filters: "
                         + "; ".join(f"{k}: {v}" for k, v in excluded.items() if v))
    requested = audience_size(request, n_pop)
    n = min(requested, n_elig)
    if requested > n:
        warnings.append(f"Asked for {requested} users but only {n_elig} are eligible "
                        f"(of {n_pop}); the audience has {n}")
    if n_elig == n_pop:                      # nobody excluded: no gather of N scores
        elig_rows, elig_scores = np.arange(n_pop), scores
    else:
        elig_rows = np.flatnonzero(eligible)
        elig_scores = scores[elig_rows]
    top_s, top_r = _top_k_desc(elig_scores, elig_rows, n)
    ranked = np.sort(elig_scores)          # one sort: the percentiles and the reach curve
    # percentile within the eligible pool: rank 1 is 100 whatever was excluded
    pct = np.searchsorted(ranked, top_s, side="right") / n_elig * 100.0
    n_below_zero = int((top_s < 0).sum())
    if n_below_zero:
        warnings.append(f"The last {n_below_zero} of the {n} members score below 0: their "
                        "taste leans away from the query, they only fill the list. Set a "
                        "similarity floor of 0 to leave them out")

    members = pd.DataFrame({
        "rank": np.arange(1, n + 1, dtype=np.int64),
        "user_id": idx.ids_[top_r].astype(object),
        "score": top_s.astype(np.float64),
        "percentile": pct.astype(np.float64),
    })
    attrs = run.users.iloc[top_r].reset_index(drop=True)
    for c in attrs.columns:
        if c not in members.columns:
            members[c] = attrs[c].to_numpy()
    members[FAVOURITE_GENRE] = run.favourite_genre[top_r]

    coded = {attr: run.population_codes(attr)
             for attr in [*run.users.columns, FAVOURITE_GENRE]}
    result = AudienceResult(
        run_id=run.run_id, request=request, members=members,
        insights=_insights_of(top_r, coded, n_pop, min_group=min_group),
        reach=_reach_of_sorted(ranked[::-1], n_pop), threshold=float(top_s[-1]),
        population=n_pop, eligible=n_elig, requested=requested, excluded=excluded,
        item_ids=item_ids, item_titles=titles, warnings=warnings, n_below_zero=n_below_zero,
    )
    log.info("audience of %d users for run %s (%s)", n, run.run_id, request.kind)
    return result


def audience_for(store: "Store", run_id: int | None, request: AudienceRequest
                 ) -> AudienceResult:
    """:func:`build_audience` on :func:`load_run` (no caching; the CLI's path)."""
    return build_audience(load_run(store, run_id), request)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def escape_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading "'"; others unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def to_csv_bytes(members: pd.DataFrame, *, run_id: int, item_ids: Sequence[str] = (),
                 item_titles: Sequence[str] = ()) -> bytes:
    """The audience as UTF-8 CSV: ``rank,user_id,score,percentile``, the user attributes,
    then ``run_id``, ``item_ids`` and ``item_titles`` (several items joined by "; ").

    Every text cell (and header) starting with ``= + - @``, tab or CR is prefixed with "'".
    """
    missing = {"rank", "user_id", "score", "percentile"} - set(members.columns)
    if missing:
        raise ValueError(f"members lack columns: {', '.join(sorted(missing))}")
    first = ["rank", "user_id", "score", "percentile"]
    rest = [c for c in members.columns if c not in first
            and c not in ("run_id", "item_ids", "item_titles")]
    buf = io.StringIO()
    # CRLF (RFC 4180): a field holding CR or LF is then quoted, never split across lines
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([escape_cell(str(c)) for c in first + rest + ["run_id", "item_ids", "item_titles"]])
    items_cell = escape_cell("; ".join(str(i) for i in item_ids))
    titles_cell = escape_cell("; ".join(str(t) for t in item_titles))
    cols = [members[c].to_numpy(dtype=object) for c in rest]
    ranks = members["rank"].to_numpy()
    uids = members["user_id"].to_numpy(dtype=object)
    scores = members["score"].to_numpy(dtype=np.float64)
    pcts = members["percentile"].to_numpy(dtype=np.float64)
    for i in range(len(members)):
        row: list[Any] = [int(ranks[i]), escape_cell(str(uids[i])), f"{scores[i]:.6f}",
                          f"{pcts[i]:.3f}"]
        for col in cols:
            v = col[i]
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                row.append("")
            elif isinstance(v, (list, tuple, np.ndarray)):
                row.append(escape_cell("|".join(str(x) for x in v)))
            elif isinstance(v, str):
                row.append(escape_cell(v))
            else:  # numbers and the like are written as they are (a number is no formula)
                row.append(str(v))
        row += [int(run_id), items_cell, titles_cell]
        w.writerow(row)
    return buf.getvalue().encode("utf-8")


def unescape_cell(value: str) -> str:
    """Undo :func:`escape_cell` (a "'" before a formula character is dropped)."""
    if len(value) >= 2 and value[0] == "'" and value[1:].startswith(FORMULA_PREFIXES):
        return value[1:]
    return value


def parse_id_text(data: str | bytes | None) -> list[str]:
    """User ids from pasted text or an uploaded file, in order, without duplicates.

    A file with a ``user_id`` header column (e.g. this app's CSV export) or one id per line
    is read by :func:`read_user_ids`; pasted text may also separate ids by commas,
    semicolons, tabs or spaces (a leading ``user_id``/``id`` word is dropped).
    """
    if data is None:
        return []
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
    text = text.removeprefix("\ufeff")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if "," in first and "user_id" in [c.strip().strip('"') for c in first.split(",")]:
        return read_user_ids(text)
    for sep in (",", ";", "\t", " "):
        text = text.replace(sep, "\n")
    ids = [i.strip("'\"") for i in read_user_ids(text)]
    ids = [i for i in ids if i]
    if ids and ids[0].lower() in ("user_id", "userid", "id", "user"):
        ids = ids[1:]
    return list(dict.fromkeys(ids))


def read_user_ids(data: bytes | str, *, file: str | None = None) -> list[str]:
    """User ids from an uploaded file: a CSV with a ``user_id`` column (e.g. an export of
    this app, escaping undone), else one id per line (blank lines and ``#`` comments skipped).
    Duplicates are dropped, order kept. ``file`` names the file in errors
    (``DataValidationError`` with the line, e.g. for a quote that is never closed)."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = text.removeprefix("\ufeff")
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    ids: list[str] = []
    if "user_id" in [c.strip().strip('"') for c in first.split(",")]:
        reader = csv.DictReader(io.StringIO(text))
        start = 2  # the line the next row starts on (after the header)
        try:
            for row in reader:
                v = (row.get("user_id") or "").strip()
                if v:
                    ids.append(unescape_cell(v))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataValidationError(f"cannot split the line into fields ({exc}); a quote "
                                      "(\") opened and never closed?",
                                      file=file, line=start) from None
    else:
        for ln in lines:
            v = ln.strip()
            if v and not v.startswith("#"):
                ids.append(unescape_cell(v))
    return list(dict.fromkeys(ids))
