"""Leak-free model inputs: vocabularies, bucketing, history and statistics *as of event time*.

``FeatureEncoder`` follows scikit-learn's written contract: ``__init__`` only stores its
arguments, ``fit`` returns ``self``, fitted attributes end in ``_``, and index 0 of every
vocabulary means padding/unknown (ids unseen in training map there, so a user who first appears
after training still gets a vector from attributes and history). It is saved as JSON
(``to_json``/``from_json``), never pickled.

As of event time: the history (``hist``: the last ``history_len`` positively rated items) and
the statistics attached to an event at time ``t`` come only from pool interactions with
timestamp strictly below ``t``; another event at the same second, and the event itself, never
count. The statistics (rated data; implicit data has the counts only):

- ``user_stats``: smoothed mean rating, like-rate, log activity count, **bias** (the smoothed
  mean of ``rating - the item's mean rating as of that rating``: does this user rate above what
  others gave the same movies?) and the mean of the **last RECENT_WINDOW ratings** (mood drifts
  within a session) and **recency**, log(1 + days since the user's previous event; for a user
  with none, since the pool's first event). "As of the end of the data" means just after the
  pool's last event, so audience vectors measure recency from the data's last day and
  evaluation vectors from the split. Who is still around is most of who will act next when
  users come and go over years (BENCHMARKS.md, "many-short");
- ``item_stats``: smoothed mean rating, like-rate, log popularity and **bias** (the smoothed
  mean of ``rating - the rater's mean as of that rating``: is it liked by people who are hard
  to please?);
- ``genre_affinity`` (user tower, when items have genres), matched against the item tower's
  ``genres``. It measures what the label measures: when the label is "liked" (some training
  ratings are negatives), per genre the smoothed mean of the user's residuals (as for
  ``bias``) on items of that genre; when every event is a positive (implicit data, or the
  ``audience`` preset's "interacted at all"), the user's share of events in that genre. On
  ML-100K the residual kind lifts protocol-T AUC and the share kind lifts audience recall,
  while each hurts the other task (BENCHMARKS.md).

Each residual uses only what was known at its own rating's time, and is summed only over
ratings strictly before the event, so no statistic contains its event's label. On ML-100K
(protocol T) these took a logistic regression on the statistics from AUC 0.738 to 0.761 and
the two towers (``default`` preset) from 0.739 to 0.754 (BENCHMARKS.md). The pool is
the whole dataset by default (a live system knows the past, test period included) or the rows
passed as ``pool``. Vocabularies, buckets, smoothing priors and scalers are fitted on the
training rows only. Everything is vectorised: prefix sums over events sorted by (entity, time)
and binary search, no Python loop per event.

Features (names are unique across both towers):
- user tower: ``user_id``; one sparse feature per user attribute (``zip``-like columns cut to a
  prefix, numeric columns with many values bucketed by training quantiles, others as
  categories); ``hist`` (sequence sharing the ``item_id`` table); ``user_stats`` (dense).
- item tower: ``item_id``; ``genres`` (sequence, mean pooled); low-cardinality categorical
  extras; ``item_stats`` (dense); ``year`` (dense: scaled year, known flag) where known.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .dataset import Dataset
from .events import EventLog, NegativeSampler, as_str_array, distinct, sorted_search
from .features import (
    ITEM_ROW,
    USER_ROW,
    DenseFeature,
    Feature,
    SequenceFeature,
    SparseFeature,
    feature_from_dict,
    feature_to_dict,
)

log = logging.getLogger(__name__)

#: Every timestamp is below this: "as of" it means "after every event".
END_OF_TIME = np.iinfo(np.int64).max
#: Names the encoder itself uses; a user/item column with one of them gets a prefix.
_RESERVED = frozenset({"user_id", "item_id", "hist", "genres", "user_stats", "item_stats",
                       "genre_affinity", "year", "label"})
#: A numeric user attribute with more distinct values than this is bucketed by quantiles.
_MAX_NUMERIC_CATEGORIES = 16
#: Item columns never used as categorical features.
_ITEM_SKIP = frozenset({"item_id", "title", "genres"})
_YEAR_COLUMNS = ("year", "release_year")
#: Version 2 added user/item bias, the recent mean and ``genre_affinity``; version 3 the user's
#: recency. An older document (a run stored before) still transforms with the statistics it was
#: trained on.
_JSON_VERSION = 3
_SECONDS_PER_DAY = 86400.0
#: The user's mean of this many most recent ratings is one of ``user_stats``.
RECENT_WINDOW = 10
#: ``user_table`` / ``item_table`` compute features this many entities at a time into the
#: whole table (1M users at once held about 0.8 GB of temporaries on top of the context).
TABLE_CHUNK = 131_072
#: ``encode_rows(groups=True)``'s key: per row, the position of the event it belongs to.
EVENT_OF = "__event_of__"

#: Seed offsets of the item, user and pair negatives' generators (``transform_events``).
_NEGATIVE_SEED_OFFSETS = (0, 7919, 104729)
#: Training rows whose statistics the scalers read at once (``FeatureEncoder.fit``).
_FIT_CHUNK = 262_144
#: Events between two checkpoints of the per-genre running sums (see ``_GenrePrefix``).
_GENRE_BLOCK = 16


def _lookup(vocab: Sequence[str], values: np.ndarray) -> np.ndarray:
    """Index of each value in ``vocab`` plus one; 0 for unknown. -> (N,) int64."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    idx = pd.Index(list(vocab), dtype=object).get_indexer(values)
    return (idx + 1).astype(np.int64)


class _EventIndex:
    """Events of one entity kind (users or items) sorted by (entity code, time rank).

    Answers "which events of entity e strictly before time t" as a range ``[start, end)`` of
    the sorted events: ``start`` is the entity's segment start (no search), ``end`` a binary
    search over ``key = code * stride + time_rank`` for queries at other times, and for the
    index's own events at their own time precomputed in the one sorted pass
    (``own_end``: the first position of the event's (entity, second) group).

    ``prefix`` holds the running sums of per-event values in that order: float64, or int32
    for a count (an integer value, e.g. "like"), exact either way and half the size.
    ``order`` (the sort) is kept only until ``finish``: values are added while it exists.
    """

    def __init__(self, codes: np.ndarray, ranks: np.ndarray, stride: int,
                 values: dict[str, np.ndarray], n_codes: int) -> None:
        # (temporaries are dropped as soon as they are used and worked on in place: at 20M
        # events each 8-byte array is 160 MB on top of the peak of building the context)
        key = codes.astype(np.int64) * stride + ranks
        order = np.argsort(key, kind="stable")
        self.stride = stride
        self.key = key[order]                                               # (E,) int64
        del key
        self.order: np.ndarray | None = order.astype(np.int32 if len(order) < 2**31
                                                     else np.int64)
        del order
        # segment start of every code (and the end of the last): events with a smaller code
        self.seg = np.zeros(n_codes + 1, dtype=np.int64)                    # (C + 1,)
        np.cumsum(np.bincount(codes, minlength=n_codes)[:n_codes], out=self.seg[1:])
        n = len(self.key)
        group_first = np.arange(n, dtype=self.order.dtype)
        if n:
            same = np.empty(n, dtype=bool)
            same[0] = False
            np.equal(self.key[1:], self.key[:-1], out=same[1:])
            group_first[same] = 0
            del same
            np.maximum.accumulate(group_first, out=group_first)
        self.own_end = np.empty(n, dtype=self.order.dtype)                  # (E,)
        self.own_end[self.order] = group_first
        del group_first
        self.prefix = {}
        for name, v in values.items():
            self.add(name, v)

    def ends(self, codes: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """End of each query's events strictly before its time rank (``codes`` >= 0).

        The queries are searched in sorted order (then put back): numpy narrows each search
        from the previous answer and the table is walked front to back, instead of one cache
        miss per probe (at 20M events the unsorted search took 98.7 % of the encoding)."""
        return sorted_search(self.key, codes.astype(np.int64) * self.stride + ranks)

    def bounds(self, codes: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) positions of each query's events strictly before its time rank."""
        return self.seg[codes], self.ends(codes, ranks)

    def sums(self, name: str, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        cs = self.prefix[name]
        return cs[end] - cs[start]

    def add(self, name: str, v: np.ndarray) -> None:
        """Another per-event value (aligned with the constructor's events) to sum: a bool
        or integer one is counted in int32 (int64 past 2**31 events), any other in float64."""
        if self.order is None:
            raise RuntimeError("values are added before finish()")
        count = v.dtype.kind in "biu"
        dtype = np.float64 if not count else np.int32 if len(v) < 2**31 else np.int64
        cs = np.zeros(len(self.order) + 1, dtype=dtype)
        np.cumsum(v[self.order], out=cs[1:], dtype=dtype)
        self.prefix[name] = cs

    def finish(self) -> None:
        """Drop the sort (4 bytes an event): no value is added after this."""
        self.order = None


class FeatureEncoder:
    """Turns a ``Dataset`` into the two towers' inputs, leak-free as of each event's time.

    history_len: L, the number of most recent positively rated items in ``hist``.
    label_threshold: a rating strictly above it is a positive (implicit data: every event).
    embedding_dim: the embedding size given to every sparse and sequence feature spec.
    zip_prefix_len: characters of a zip/postal code kept as its category.
    n_buckets: quantile buckets for numeric user attributes with many values (e.g. raw age).
    smoothing: pseudo-count pulling a mean rating / like-rate towards the training mean.
    max_genres: cap on the genre sequence length (the fitted length is the longest list seen
        in training, at most this).
    """

    def __init__(
        self,
        history_len: int = 50,
        label_threshold: float = 3.0,
        embedding_dim: int = 16,
        *,
        zip_prefix_len: int = 1,
        n_buckets: int = 8,
        smoothing: float = 5.0,
        max_genres: int = 8,
    ) -> None:
        self.history_len = history_len
        self.label_threshold = label_threshold
        self.embedding_dim = embedding_dim
        self.zip_prefix_len = zip_prefix_len
        self.n_buckets = n_buckets
        self.smoothing = smoothing
        self.max_genres = max_genres

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        for name in ("history_len", "embedding_dim", "zip_prefix_len", "n_buckets", "max_genres"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")

    def fit(self, dataset: Dataset, train_rows: np.ndarray | Sequence[int], *,
            pool: np.ndarray | Sequence[int] | None = None,
            event_log: EventLog | None = None) -> "FeatureEncoder":
        """Fit vocabularies, buckets, priors and scalers on ``train_rows`` (positions into
        ``dataset.interactions``) only; ``pool`` as in ``transform_events`` (the scalers see
        the same statistics training will); ``event_log``: the dataset's ``EventLog`` when
        the caller has it. Returns ``self``."""
        self._check_params()
        rows = _check_rows(dataset, train_rows)
        if len(rows) == 0:
            raise ValueError("cannot fit the encoder on zero training rows")
        elog = EventLog.of(dataset) if event_log is None else event_log
        ucodes, icodes = elog.user[rows], elog.item[rows]
        ratings = elog.rating[rows].astype(np.float64)
        self.implicit_ = bool(dataset.implicit)
        if (ucodes < 0).any() or (icodes < 0).any():   # ids missing from the tables
            inter = dataset.interactions
            tr_items = as_str_array(inter["item_id"].iloc[rows])
            self.user_vocab_ = sorted(set(as_str_array(inter["user_id"].iloc[rows]).tolist()))
            self.item_vocab_ = sorted(set(tr_items.tolist()))
            item_index = _lookup(self.item_vocab_, tr_items)
        else:                      # each distinct code once, not one string per row
            seen_u, seen_i = np.flatnonzero(np.bincount(ucodes)), np.flatnonzero(np.bincount(icodes))
            self.user_vocab_ = sorted(elog.user_ids[seen_u].tolist())
            self.item_vocab_ = sorted(elog.item_ids[seen_i].tolist())
            item_index = _lookup(self.item_vocab_, elog.item_ids)[icodes]
        likes = self._likes(ratings)
        self.global_mean_rating_ = float(ratings.mean())
        self.global_like_rate_ = float(likes.mean())
        # every training event a positive: the label is "interacted", not "liked"
        self.affinity_ = "share" if self.global_like_rate_ >= 1.0 else "residual"
        # Training popularity per item vocabulary index (index 0 = unknown: 0 events).
        counts = np.bincount(item_index, minlength=len(self.item_vocab_) + 1)
        self.item_counts_ = counts.astype(np.int64).tolist()

        # User attributes, fitted on users seen in training.
        users = dataset.users
        seen_users = users[users["user_id"].astype(str).isin(set(self.user_vocab_))]
        self.user_attrs_ = []
        used = set(_RESERVED)
        for col in dataset.user_columns:
            attr = self._fit_column(seen_users[col], col, prefix="user_", used=used, zip_ok=True)
            if attr is not None:
                self.user_attrs_.append(attr)

        # Item genres and categorical extras, fitted on items seen in training.
        items = dataset.items
        seen_items = items[items["item_id"].astype(str).isin(set(self.item_vocab_))]
        if "genres" in items.columns:
            g = seen_items["genres"].explode().dropna().astype(str)
            self.genre_vocab_ = sorted(set(g.tolist()))
            lens = seen_items["genres"].map(lambda x: len(x) if isinstance(x, (list, tuple,
                                                                          np.ndarray)) else 0)
            self.genres_len_ = int(max(1, min(int(self.max_genres), int(lens.max() or 1))))
        else:
            self.genre_vocab_ = []
            self.genres_len_ = 1
        self.item_attrs_ = []
        year_col = next((c for c in items.columns if c.lower() in _YEAR_COLUMNS), None)
        for col in dataset.item_columns:
            if col in _ITEM_SKIP or col == year_col:
                continue
            s = seen_items[col]
            if not (isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object
                    or pd.api.types.is_bool_dtype(s) or pd.api.types.is_string_dtype(s)):
                continue
            try:
                n_unique = s.nunique(dropna=True)
            except TypeError:  # unhashable cells (lists): not a categorical column
                continue
            if 1 < n_unique <= min(100, max(2, len(seen_items) // 4)):
                attr = self._fit_column(s, col, prefix="item_", used=used, zip_ok=False,
                                        force_prefix=True)
                if attr is not None:
                    self.item_attrs_.append(attr)
        years = _item_years(items, year_col)
        seen_years = years[items["item_id"].astype(str).isin(set(self.item_vocab_)).to_numpy()]
        seen_years = seen_years[np.isfinite(seen_years)]
        if len(seen_years):
            self.year_ = {"column": year_col, "mean": float(seen_years.mean()),
                          "scale": float(seen_years.std() or 1.0)}
        else:
            self.year_ = None

        # Dense scalers from the training rows' as-of-event statistics.
        self.dense_mean_, self.dense_scale_ = {}, {}
        self.stats_version_ = _JSON_VERSION
        ctx = self.context(dataset, pool, event_log=elog)
        moments: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        for lo in range(0, len(rows), _FIT_CHUNK):       # bounded memory at any size
            for name, x in self._raw_events(ctx, rows[lo:lo + _FIT_CHUNK]).items():
                moments[name] = _merge_moments(moments.get(name), x)
        for name, (_, mean, m2) in moments.items():
            sd = np.sqrt(m2 / len(rows))
            self.dense_mean_[name] = mean.tolist()
            self.dense_scale_[name] = np.where(sd > 1e-12, sd, 1.0).tolist()
        self._build_specs()
        log.info("encoder fitted on %d rows: %d users, %d items, %d user attributes",
                 len(rows), len(self.user_vocab_), len(self.item_vocab_), len(self.user_attrs_))
        return self

    def _likes(self, ratings: np.ndarray) -> np.ndarray:
        if self.implicit_:
            return np.ones_like(ratings, dtype=np.float64)
        return (ratings > self.label_threshold).astype(np.float64)

    def _fit_column(self, s: pd.Series, col: str, *, prefix: str, used: set[str],
                    zip_ok: bool, force_prefix: bool = False) -> dict[str, Any] | None:
        name = f"{prefix}{col}" if (force_prefix or col in used) else col
        while name in used:
            name = prefix + name
        lower = col.lower()
        if zip_ok and ("zip" in lower or "postal" in lower):
            kind = "prefix"
            vals = _column_values(s, "prefix", self.zip_prefix_len)
            vocab = sorted(set(v for v in vals.tolist() if v))
            edges: list[float] = []
        elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) \
                and s.nunique(dropna=True) > _MAX_NUMERIC_CATEGORIES:
            kind = "bins"
            x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            x = x[np.isfinite(x)]
            if len(x) == 0:
                return None
            qs = np.linspace(0, 1, int(self.n_buckets) + 1)[1:-1]
            edges = sorted(set(np.quantile(x, qs).tolist()))
            vocab = []
        else:
            kind = "category"
            vals = _column_values(s, "category", 0)
            vocab = sorted(set(v for v in vals.tolist() if v))
            edges = []
            if len(vocab) > 50 and len(vocab) > 0.5 * len(s):
                log.info("column %r skipped: nearly one value per row (an identifier?)", col)
                return None
        if kind != "bins" and not vocab:
            return None
        used.add(name)
        return {"name": name, "column": col, "kind": kind, "vocab": vocab, "edges": edges}

    def _build_specs(self) -> None:
        d = int(self.embedding_dim)
        n_items = len(self.item_vocab_) + 1
        user: list[Feature] = [SparseFeature("user_id", len(self.user_vocab_) + 1, d)]
        for a in self.user_attrs_:
            user.append(SparseFeature(a["name"], _attr_vocab_size(a), d))
        user.append(SequenceFeature("hist", n_items, d, int(self.history_len), "mean",
                                    shared_with="item_id"))
        user.append(DenseFeature("user_stats", len(self.dense_mean_["user_stats"])))
        if "genre_affinity" in self.dense_mean_:
            user.append(DenseFeature("genre_affinity", len(self.dense_mean_["genre_affinity"])))
        item: list[Feature] = [SparseFeature("item_id", n_items, d)]
        if self.genre_vocab_:
            item.append(SequenceFeature("genres", len(self.genre_vocab_) + 1, d,
                                        self.genres_len_, "mean"))
        for a in self.item_attrs_:
            item.append(SparseFeature(a["name"], _attr_vocab_size(a), d))
        item.append(DenseFeature("item_stats", len(self.dense_mean_["item_stats"])))
        if self.year_ is not None:
            item.append(DenseFeature("year", 2))
        self.user_specs_: tuple[Feature, ...] = tuple(user)
        self.item_specs_: tuple[Feature, ...] = tuple(item)

    # ------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "user_specs_"):
            raise ValueError("this FeatureEncoder is not fitted yet: call fit() first")

    @property
    def vocab_sizes_(self) -> dict[str, int]:
        """Vocabulary size (index 0 included) of every sparse and sequence feature."""
        self._check_fitted()
        return {s.name: s.vocab_size for s in self.user_specs_ + self.item_specs_
                if not isinstance(s, DenseFeature)}

    def context(self, dataset: Dataset, pool: np.ndarray | Sequence[int] | None = None, *,
                event_log: EventLog | None = None) -> "_Context":
        """The as-of lookup tables of ``dataset`` with history and statistics from ``pool``
        (default: every interaction), built in one sorted pass. Pass it as ``context=`` to
        every transform of the same dataset and pool: a run builds one per pool, not one
        per call. ``event_log``: the dataset's ``EventLog`` when the caller has it."""
        return _Context(self, dataset, pool, event_log)

    def negative_sampler(self, elog: EventLog, known: np.ndarray | None = None,
                         by: str = "popularity") -> NegativeSampler:
        """What negatives are drawn with for events of ``elog``: items by training
        popularity (``count ** 0.75 + 1``) or uniformly, users among the training users,
        never a pair of the ``known`` rows (positions; default: all)."""
        self._check_fitted()
        if by not in ("popularity", "uniform"):
            raise ValueError(f"by must be 'popularity' or 'uniform', got {by!r}")
        if by == "popularity":
            counts = np.asarray(self.item_counts_, dtype=np.float64)
            weights = counts[_lookup(self.item_vocab_, elog.item_ids)] ** 0.75 + 1.0
        else:
            weights = np.ones(elog.n_items)
        pool_users = elog.user_index.get_indexer(np.asarray(self.user_vocab_, dtype=object))
        vocab_items = elog.item_index.get_indexer(np.asarray(self.item_vocab_, dtype=object))
        known = np.arange(len(elog)) if known is None else np.asarray(known, dtype=np.int64)
        return NegativeSampler(elog, known, weights,
                               pool_users[pool_users >= 0].astype(np.int64),
                               vocab_items[vocab_items >= 0].astype(np.int64))

    def transform_events(
        self,
        dataset: Dataset,
        rows: np.ndarray | Sequence[int],
        *,
        pool: np.ndarray | Sequence[int] | None = None,
        negatives: int = 0,
        seed: int = 0,
        known: np.ndarray | Sequence[int] | None = None,
        negatives_by: str = "popularity",
        user_negatives: int = 0,
        pair_negatives: int = 0,
        context: "_Context | None" = None,
    ) -> dict[str, np.ndarray]:
        """Both towers' features for the events at ``rows`` (positions into
        ``dataset.interactions``), each as of its own time, plus ``"label"`` (float32 0/1:
        rating > label_threshold; 1 for implicit data) and ``"item_ref"`` (int64: the row's
        item as a position in ``dataset.items``; not a model input).

        pool: the interactions history and statistics may come from (default: all).
        negatives: per event, this many sampled items the user never interacted with (by
            training popularity, seeded; see ``sample_negatives``) are appended with label 0
            at the event's time.
        known: the rows that define "interacted with" for the negatives (default: all; pass
            the training rows when sampling training negatives, so that no held-out item is
            kept out of them).
        negatives_by: how negative items are drawn: "popularity" or "uniform".
        user_negatives: per event, this many users drawn uniformly from the training users
            who never interacted with the event's item (in ``known``), appended with label 0
            at the event's time: the item->user side of the question (which users, for this
            item), which item negatives alone never ask.
        pair_negatives: per event, this many random (existing user, training item) pairs
            never interacted with, label 0, at the event's time.
        context: ``self.context(dataset, pool)`` when the caller has it (``pool`` is then
            the context's).

        Everything here is ``encode_rows`` over all the rows at once (one batch).
        """
        self._check_fitted()
        rows = _check_rows(dataset, rows)
        ctx = context if context is not None else _Context(self, dataset, pool)
        sampler = None
        if max(negatives, user_negatives, pair_negatives) > 0 and len(rows):
            sampler = self.negative_sampler(
                ctx.log, None if known is None else _check_rows(dataset, known), negatives_by)
        rngs = negative_generators(seed)
        return self.encode_rows(ctx, rows, sampler, negatives=negatives,
                                user_negatives=user_negatives, pair_negatives=pair_negatives,
                                rngs=rngs)

    def encode_rows(
        self,
        ctx: "_Context",
        rows: np.ndarray,
        sampler: NegativeSampler | None = None,
        *,
        negatives: int = 0,
        user_negatives: int = 0,
        pair_negatives: int = 0,
        rngs: tuple[np.random.Generator, ...] = (),
        features: bool = True,
        groups: bool = False,
    ) -> dict[str, np.ndarray]:
        """``transform_events`` for one batch of checked ``rows``, its negatives drawn with
        ``sampler`` and the three generators ``rngs`` (item, user, pair negatives). Rows
        that are events of the context's pool take their as-of bounds from its sorted pass;
        an item negative shares its row's user features (same user, same time) and a user
        negative its row's item features. ``features=False``: ``label`` and ``item_ref``
        only (the same draws). ``groups``: also, per output row, ``EVENT_OF`` (the position
        in ``rows`` of the event it belongs to) and ``features.USER_ROW`` / ``features.ITEM_ROW``
        (the output row whose user / item features it repeats; its own row if none)."""
        ucode, icode, ts, ranks, events = self._query(ctx, rows)
        if self.implicit_:
            label = np.ones(len(rows), dtype=np.float32)
        else:
            label = (ctx.log.rating[rows] > self.label_threshold).astype(np.float32)
        def users(u: np.ndarray, src: np.ndarray, ev: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
            return self._user_features(ctx, u, ts[src], ranks[src], ev) if features else {}

        def items(i: np.ndarray, src: np.ndarray, ev: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
            return self._item_features(ctx, i, ts[src], ranks[src], ev) if features else {}

        every = np.arange(len(rows))
        user, item = users(ucode, every, events), items(icode, every, events)
        parts = [(user, item, icode)]
        # per part: (event of each row, shares the event's user features, its item features)
        origin: list[tuple[np.ndarray, bool, bool]] = [(every, False, False)]
        if negatives > 0 and len(rows):
            assert sampler is not None
            keep, draw = sampler.items(ucode, negatives, rngs[0])
            src = keep // negatives
            parts.append((_take(user, src), items(draw, src), draw))
            origin.append((src, True, False))
        for n, rng, random_items in ((user_negatives, 1, False), (pair_negatives, 2, True)):
            if n > 0 and len(rows):
                assert sampler is not None
                keep, ic, uc = sampler.users(icode, ts, n, rngs[rng], random_items)
                src = keep // n
                parts.append((users(uc, src), items(ic, src) if random_items
                              else _take(item, src), ic))
                origin.append((src, False, not random_items))
        if len(parts) == 1:
            out = {**user, **item}
        else:
            out = {k: np.concatenate([p[0][k] for p in parts]) for k in user}
            out.update({k: np.concatenate([p[1][k] for p in parts]) for k in item})
        n_neg = sum(len(p[2]) for p in parts[1:])
        out["label"] = np.concatenate([label, np.zeros(n_neg, dtype=np.float32)])
        # each row's item as a position in dataset.items (-1: not listed): lets baselines key
        # items the vocabulary maps to "unknown" (first seen after the training rows)
        out["item_ref"] = np.concatenate([p[2] for p in parts]).astype(np.int64)
        if groups:
            out.update(_row_groups(origin))
        return out

    def transform_pairs(
        self,
        dataset: Dataset,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        times: np.ndarray,
        *,
        pool: np.ndarray | Sequence[int] | None = None,
        context: "_Context | None" = None,
    ) -> dict[str, np.ndarray]:
        """Both towers' features for arbitrary (user, item, time) triples (no label)."""
        self._check_fitted()
        times = np.asarray(times, dtype=np.int64)
        if not (len(user_ids) == len(item_ids) == len(times)):
            raise ValueError("user_ids, item_ids and times must have the same length")
        ctx = context if context is not None else _Context(self, dataset, pool)
        ucode = ctx.user_codes(np.asarray(user_ids, dtype=object))
        icode = ctx.item_codes(np.asarray(item_ids, dtype=object))
        ranks = ctx.ranks(times)
        out = self._user_features(ctx, ucode, times, ranks)
        out.update(self._item_features(ctx, icode, times, ranks))
        return out

    def user_table(
        self,
        dataset: Dataset,
        as_of: int | np.ndarray | None = None,
        *,
        pool: np.ndarray | Sequence[int] | None = None,
        context: "_Context | None" = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every user of ``dataset.users`` with the user tower's features as of ``as_of``
        (a timestamp, one per user aligned with ``dataset.users``, or None = after every
        event). Returns ``(user_ids, features)``."""
        self._check_fitted()
        ctx = context if context is not None else _Context(self, dataset, pool)
        n = len(dataset.users)
        times = _as_of_times(as_of, n)
        return ctx.user_ids.copy(), _in_chunks(self._user_features, ctx, n, times)

    def item_table(
        self,
        dataset: Dataset,
        as_of: int | np.ndarray | None = None,
        *,
        pool: np.ndarray | Sequence[int] | None = None,
        context: "_Context | None" = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every item of ``dataset.items`` with the item tower's features as of ``as_of``
        (see ``user_table``). Returns ``(item_ids, features)``."""
        self._check_fitted()
        ctx = context if context is not None else _Context(self, dataset, pool)
        n = len(dataset.items)
        times = _as_of_times(as_of, n)
        return ctx.item_ids.copy(), _in_chunks(self._item_features, ctx, n, times)

    def _query(self, ctx: "_Context", rows: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user code, item code, time, time rank, own pool event or -1) of ``rows``."""
        elog = ctx.log
        ucode = elog.user[rows].astype(np.int64)
        icode = elog.item[rows].astype(np.int64)
        ts = elog.time[rows]
        events = ctx.row_event[rows].astype(np.int64)
        own = events >= 0
        ranks = np.empty(len(rows), dtype=np.int64)
        ranks[own] = ctx.rank[events[own]]
        if not own.all():
            ranks[~own] = ctx.ranks(ts[~own])
        return ucode, icode, ts, ranks, events

    def _raw_events(self, ctx: "_Context", rows: np.ndarray) -> dict[str, np.ndarray]:
        ucode, icode, ts, ranks, events = self._query(ctx, rows)
        u_start, u_end = ctx.bounds(ctx.by_user, ucode, ranks, events)
        i_start, i_end = ctx.bounds(ctx.by_item, icode, ranks, events)
        out = {"user_stats": self._stats(ctx, "user", u_start, u_end, ts),
               "item_stats": self._stats(ctx, "item", i_start, i_end, ts)}
        if self._has_affinity():
            out["genre_affinity"] = ctx.genre_affinity(ucode, u_start, u_end)
        return out

    def _has_affinity(self) -> bool:
        return bool(self.genre_vocab_) and self.stats_version_ >= 2

    def _stats(self, ctx: "_Context", kind: str, start: np.ndarray, end: np.ndarray,
               times: np.ndarray) -> np.ndarray:
        """Raw (unscaled) statistics of users or items over their events ``[start, end)``
        (``ctx.bounds``) before each query's time -> (N, n_stats) float64 (see the module
        docstring for the columns)."""
        index = ctx.by_user if kind == "user" else ctx.by_item
        n = (end - start).astype(np.float64)
        recency = (ctx.recency(index, start, end, times)[:, None]
                   if kind == "user" and self.stats_version_ >= 3 else np.empty((len(n), 0)))
        if self.implicit_:
            return np.concatenate([np.log1p(n)[:, None], recency], axis=1)
        k = float(self.smoothing)
        denom = np.maximum(n + k, 1e-12)
        mean = np.where(n + k > 0, (index.sums("rating", start, end)
                                    + k * self.global_mean_rating_) / denom,
                        self.global_mean_rating_)
        rate = np.where(n + k > 0, (index.sums("like", start, end)
                                    + k * self.global_like_rate_) / denom,
                        self.global_like_rate_)
        cols = [mean, rate, np.log1p(n)]
        if self.stats_version_ >= 2:
            cols.append(index.sums("residual", start, end) / denom)       # bias, prior 0
            if kind == "user":
                first = np.maximum(start, end - RECENT_WINDOW)
                n_recent = (end - first).astype(np.float64)
                cols.append((index.sums("rating", first, end) + 2.0 * self.global_mean_rating_)
                            / (n_recent + 2.0))
        return np.concatenate([np.stack(cols, axis=1), recency], axis=1)

    def _scaled(self, name: str, x: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.dense_mean_[name], dtype=np.float64)
        scale = np.asarray(self.dense_scale_[name], dtype=np.float64)
        return ((x - mean) / scale).astype(np.float32)

    def _user_features(self, ctx: "_Context", ucode: np.ndarray, times: np.ndarray,
                       ranks: np.ndarray | None = None, events: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
        ranks = ctx.ranks(times) if ranks is None else ranks
        valid = ucode >= 0
        safe = np.maximum(ucode, 0)
        start, end = ctx.bounds(ctx.by_user, ucode, ranks, events)
        out: dict[str, np.ndarray] = {
            "user_id": np.where(valid, ctx.user_vocab_idx[safe] if len(ctx.user_vocab_idx)
                                else 0, 0).astype(np.int64)}
        for a in self.user_attrs_:
            codes = ctx.user_attr_codes[a["name"]]
            out[a["name"]] = np.where(valid, codes[safe] if len(codes) else 0, 0).astype(np.int64)
        out["hist"] = ctx.history(start, end, valid, int(self.history_len))
        out["user_stats"] = self._scaled("user_stats",
                                         self._stats(ctx, "user", start, end, times))
        if self._has_affinity():
            out["genre_affinity"] = self._scaled("genre_affinity",
                                                 ctx.genre_affinity(ucode, start, end))
        return out

    def _item_features(self, ctx: "_Context", icode: np.ndarray, times: np.ndarray,
                       ranks: np.ndarray | None = None, events: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
        ranks = ctx.ranks(times) if ranks is None else ranks
        valid = icode >= 0
        safe = np.maximum(icode, 0)
        out: dict[str, np.ndarray] = {
            "item_id": np.where(valid, ctx.item_vocab_idx[safe] if len(ctx.item_vocab_idx)
                                else 0, 0).astype(np.int64)}
        if self.genre_vocab_:
            g = ctx.item_genres[safe] if len(ctx.item_genres) else np.zeros(
                (len(icode), self.genres_len_), dtype=np.int64)
            out["genres"] = np.where(valid[:, None], g, 0).astype(np.int64)
        for a in self.item_attrs_:
            codes = ctx.item_attr_codes[a["name"]]
            out[a["name"]] = np.where(valid, codes[safe] if len(codes) else 0, 0).astype(np.int64)
        start, end = ctx.bounds(ctx.by_item, icode, ranks, events)
        out["item_stats"] = self._scaled("item_stats",
                                         self._stats(ctx, "item", start, end, times))
        if self.year_ is not None:
            y = ctx.item_years[safe] if len(ctx.item_years) else np.full(len(icode), np.nan)
            y = np.where(valid, y, np.nan)
            known = np.isfinite(y)
            z = np.where(known, (y - self.year_["mean"]) / self.year_["scale"], 0.0)
            out["year"] = np.stack([z, known.astype(np.float64)], axis=1).astype(np.float32)
        return out

    # ----------------------------------------------------------- negatives
    def sample_negatives(
        self,
        dataset: Dataset,
        rows: np.ndarray,
        n: int,
        *,
        seed: int = 0,
        by: str = "popularity",
        known: np.ndarray | Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` negatives per event at ``rows``: items the user never interacted with in
        the ``known`` rows (default: all), drawn by training popularity
        (``count ** 0.75 + 1``) or uniformly, seeded. A user who has seen every item gets
        none. Returns ``(item_ids, user_ids, timestamps)`` (object, object, int64)."""
        self._check_fitted()
        if by not in ("popularity", "uniform"):
            raise ValueError(f"by must be 'popularity' or 'uniform', got {by!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rows = _check_rows(dataset, rows)
        elog = EventLog.of(dataset)
        sampler = self.negative_sampler(
            elog, None if known is None else _check_rows(dataset, known), by)
        keep, draw = sampler.items(elog.user[rows], n, np.random.default_rng(seed))
        src = rows[keep // n]
        return elog.item_ids[draw], elog.user_ids[elog.user[src]], elog.time[src]

    def sample_user_negatives(
        self,
        dataset: Dataset,
        rows: np.ndarray,
        n: int,
        *,
        seed: int = 0,
        known: np.ndarray | Sequence[int] | None = None,
        random_items: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` negative users per event at ``rows``: drawn uniformly among the training
        users who already existed at the event's time (their first ``known`` event is
        earlier) and never interacted with the event's item in the ``known`` rows (default:
        all), seeded; a draw that still hits one after 10 redraws is dropped, as is an event
        before which no other user existed. Users who did not exist yet would be negatives
        the model tells apart by time alone. ``random_items``: pair each drawn user with a
        training item drawn uniformly instead of the event's item (random pairs: both sides'
        priors stay in the model, since neither side of the negatives follows popularity).
        Returns ``(item_ids, user_ids, timestamps)`` (object, object, int64)."""
        self._check_fitted()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rows = _check_rows(dataset, rows)
        elog = EventLog.of(dataset)
        sampler = self.negative_sampler(elog, None if known is None else _check_rows(dataset,
                                                                                     known))
        keep, ic, uc = sampler.users(elog.item[rows], elog.time[rows], n,
                                     np.random.default_rng(seed), random_items)
        return elog.item_ids[ic], elog.user_ids[uc], elog.time[rows[keep // n]]

    # ---------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """Everything needed to transform data and rebuild the model's specs (JSON-able)."""
        self._check_fitted()
        return {
            "version": int(self.stats_version_),
            "params": {"history_len": int(self.history_len),
                       "label_threshold": float(self.label_threshold),
                       "embedding_dim": int(self.embedding_dim),
                       "zip_prefix_len": int(self.zip_prefix_len),
                       "n_buckets": int(self.n_buckets), "smoothing": float(self.smoothing),
                       "max_genres": int(self.max_genres)},
            "implicit": self.implicit_,
            "user_vocab": list(self.user_vocab_),
            "item_vocab": list(self.item_vocab_),
            "item_counts": list(self.item_counts_),
            "global_mean_rating": self.global_mean_rating_,
            "global_like_rate": self.global_like_rate_,
            "affinity": self.affinity_,
            "user_attrs": self.user_attrs_,
            "item_attrs": self.item_attrs_,
            "genre_vocab": list(self.genre_vocab_),
            "genres_len": self.genres_len_,
            "year": self.year_,
            "dense_mean": self.dense_mean_,
            "dense_scale": self.dense_scale_,
            "user_specs": [feature_to_dict(s) for s in self.user_specs_],
            "item_specs": [feature_to_dict(s) for s in self.item_specs_],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureEncoder":
        """Rebuild a fitted encoder from ``to_json()`` output."""
        if not isinstance(d, dict) or d.get("version") not in (1, 2, _JSON_VERSION):
            raise ValueError("not a FeatureEncoder JSON document (or an unknown version)")
        enc = cls(**d["params"])
        enc.stats_version_ = int(d["version"])
        enc.implicit_ = bool(d["implicit"])
        enc.user_vocab_ = [str(x) for x in d["user_vocab"]]
        enc.item_vocab_ = [str(x) for x in d["item_vocab"]]
        enc.item_counts_ = [int(x) for x in d["item_counts"]]
        enc.global_mean_rating_ = float(d["global_mean_rating"])
        enc.global_like_rate_ = float(d["global_like_rate"])
        enc.affinity_ = str(d.get("affinity", "residual"))
        enc.user_attrs_ = [dict(a) for a in d["user_attrs"]]
        enc.item_attrs_ = [dict(a) for a in d["item_attrs"]]
        enc.genre_vocab_ = [str(x) for x in d["genre_vocab"]]
        enc.genres_len_ = int(d["genres_len"])
        enc.year_ = dict(d["year"]) if d["year"] else None
        enc.dense_mean_ = {k: list(v) for k, v in d["dense_mean"].items()}
        enc.dense_scale_ = {k: list(v) for k, v in d["dense_scale"].items()}
        enc.user_specs_ = tuple(feature_from_dict(s) for s in d["user_specs"])
        enc.item_specs_ = tuple(feature_from_dict(s) for s in d["item_specs"])
        return enc


class _GenrePrefix:
    """Per genre, the sum of a per-event value (and the count of events) over the first
    ``p`` events of the by-user order, for any ``p`` without a search per genre.

    Checkpoints every ``_GENRE_BLOCK`` events hold the running (count, sum) per genre; a
    query adds the at most ``_GENRE_BLOCK - 1`` events since its checkpoint. Memory:
    (E / 16 + 1) x G int32 counts and float64 sums (25M events, 19 genres: 119 + 237 MB).
    Counts come out as int32 (int64 past 2**31 events), exact.
    """

    def __init__(self, item_of: np.ndarray, value: np.ndarray | None,
                 item_genres: np.ndarray, n_genres: int) -> None:
        self.item_of = item_of                    # (E,) item code of each by-user position
        self.value = value                        # (E,) float64, None: counts only
        self.genres = item_genres                 # (I, Lg) genre index + 1, 0 = padding
        self.n_genres = n_genres
        # the same genres without padding, as CSR per item: a query expands only real ones
        real = item_genres > 0
        self._glen = real.sum(axis=1).astype(np.int64)                     # (I,)
        self._gstart = np.cumsum(self._glen) - self._glen                  # (I,)
        self._gflat = (item_genres[real] - 1).astype(np.int64)             # (sum len,)
        b, g = _GENRE_BLOCK, n_genres
        n_blocks = len(item_of) // b + 1
        self.counts = np.zeros((n_blocks, g), np.int32 if len(item_of) < 2**31
                               else np.int64)                              # (nb, G)
        self.sums = None if value is None else np.zeros((n_blocks, g))     # (nb, G)
        chunk = b * 65536
        for lo in range(0, len(item_of), chunk):
            hi = min(len(item_of), lo + chunk)
            gm = item_genres[item_of[lo:hi]]                                # (n, Lg)
            ev, slot = np.nonzero(gm)
            # an event at position q counts in every checkpoint after its block
            first = lo // b + 1
            local = (lo + ev) // b + 1 - first
            flat = local * g + gm[ev, slot] - 1
            size = ((hi - 1) // b + 2 - first) * g
            top = min(n_blocks, first + size // g)
            width = (top - first) * g
            self.counts[first:top] += np.bincount(flat, minlength=size)[:width].reshape(-1, g)
            if self.sums is not None:
                w = value[lo + ev]
                self.sums[first:top] += np.bincount(flat, weights=w,
                                                    minlength=size)[:width].reshape(-1, g)
        np.cumsum(self.counts, axis=0, out=self.counts)
        if self.sums is not None:
            np.cumsum(self.sums, axis=0, out=self.sums)

    def at(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(counts, sums) per genre over the by-user positions ``[0, p)`` -> (N, G) each;
        ``TABLE_CHUNK`` queries at a time (every user's start at 1M users held about 0.7 GB
        of per-event temporaries in one pass)."""
        p = np.asarray(p, dtype=np.int64)
        if len(p) <= TABLE_CHUNK:
            return self._at(p)
        counts = np.empty((len(p), self.n_genres), self.counts.dtype)       # (N, G)
        sums = None if self.sums is None else np.empty((len(p), self.n_genres))
        for lo in range(0, len(p), TABLE_CHUNK):
            c, sm = self._at(p[lo:lo + TABLE_CHUNK])
            counts[lo:lo + len(c)] = c
            if sums is not None:
                sums[lo:lo + len(c)] = sm
        return counts, sums

    def _at(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        b, g = _GENRE_BLOCK, self.n_genres
        blk = p // b
        counts = self.counts[blk]                                           # (N, G)
        sums = None if self.sums is None else self.sums[blk]                # (N, G)
        rest = p - blk * b                                                  # (N,) < b
        total = int(rest.sum())
        if total:
            query = np.repeat(np.arange(len(p)), rest)                      # (R,)
            pos = np.repeat(blk * b - np.cumsum(rest) + rest, rest) + np.arange(total)
            item = self.item_of[pos]                                        # (R,)
            n = self._glen[item]                                            # (R,)
            ev = np.repeat(np.arange(total), n)                             # (M,)
            entry = np.repeat(self._gstart[item] - np.cumsum(n) + n, n) + np.arange(len(ev))
            flat = query[ev] * g + self._gflat[entry]                       # (M,)
            counts += np.bincount(flat, minlength=len(p) * g).reshape(-1, g)
            if sums is not None:
                sums += np.bincount(flat, weights=self.value[pos[ev]],
                                    minlength=len(p) * g).reshape(-1, g)
        return counts, sums


class _Context:
    """Lookup tables for one dataset and pool: built once, then asked for any rows.

    Built from an ``events.EventLog`` (codes, no strings). Every pool event's own as-of
    bounds come from the one sorted pass (``_EventIndex.own_end``), so a training row's
    features take no search; other queries (negatives, tables as of a time) search with
    their keys sorted first.
    """

    def __init__(self, enc: FeatureEncoder, dataset: Dataset,
                 pool: np.ndarray | Sequence[int] | None,
                 event_log: EventLog | None = None) -> None:
        self.log = elog = EventLog.of(dataset) if event_log is None else event_log
        if len(elog) != len(dataset.interactions):
            raise ValueError("the event log is not this dataset's")
        self.user_ids, self.item_ids = elog.user_ids, elog.item_ids
        self.user_vocab_idx = _lookup(enc.user_vocab_, self.user_ids)
        self.item_vocab_idx = _lookup(enc.item_vocab_, self.item_ids)
        self.user_attr_codes = {
            a["name"]: _encode_attr(a, dataset.users[a["column"]], enc.zip_prefix_len)
            if a["column"] in dataset.users.columns else np.zeros(len(self.user_ids), np.int64)
            for a in enc.user_attrs_}
        self.item_attr_codes = {
            a["name"]: _encode_attr(a, dataset.items[a["column"]], enc.zip_prefix_len)
            if a["column"] in dataset.items.columns else np.zeros(len(self.item_ids), np.int64)
            for a in enc.item_attrs_}
        self.item_genres = _genre_matrix(dataset.items, enc.genre_vocab_, enc.genres_len_) \
            if enc.genre_vocab_ else np.zeros((len(self.item_ids), 1), np.int64)
        if enc.year_ is not None:
            self.item_years = _item_years(dataset.items, enc.year_.get("column"))
        else:
            self.item_years = np.full(len(self.item_ids), np.nan)

        rows = np.arange(len(elog)) if pool is None else _check_rows(dataset, pool)
        ucode, icode = elog.user[rows], elog.item[rows]
        keep = (ucode >= 0) & (icode >= 0)
        rows, ucode, icode = rows[keep], ucode[keep], icode[keep]
        # dataset row -> this pool's event (or -1): a row asked about at its own time
        narrow = np.int32 if len(rows) < 2**31 else np.int64    # (25M rows: 100 MB saved)
        self.row_event = np.full(len(elog), -1, dtype=narrow)
        self.row_event[rows] = np.arange(len(rows), dtype=narrow)
        ts = elog.time[rows]
        self.times = distinct(ts)                                  # sorted distinct seconds
        self.rank = sorted_search(self.times, ts).astype(narrow)  # own events' ranks (kept)
        del ts
        rating = elog.rating[rows].astype(np.float64)
        del rows
        like = enc._likes(rating) > 0                   # bool: its prefix counts in int32
        stride = len(self.times) + 1
        values = {"rating": rating, "like": like}
        self.by_user = _EventIndex(ucode, self.rank, stride, values, len(self.user_ids))
        self.by_item = _EventIndex(icode, self.rank, stride, values, len(self.item_ids))
        del values
        self._enc = enc
        self._n_genres = len(enc.genre_vocab_)
        self._affinity = enc.affinity_
        if not enc.implicit_ and enc.stats_version_ >= 2:
            # Residuals of each pool rating against what was known just before it: the item's
            # and the user's smoothed mean rating as of that rating's own time.
            k, g = float(enc.smoothing), enc.global_mean_rating_

            def mean_before(index: _EventIndex, codes: np.ndarray) -> np.ndarray:
                st, en = index.seg[codes], index.own_end.astype(np.int64)
                return (index.sums("rating", st, en) + k * g) / np.maximum(en - st + k, 1e-12)

            res_vs_item = rating - mean_before(self.by_item, icode)
            self.by_user.add("residual", res_vs_item)
            self.by_item.add("residual", rating - mean_before(self.by_user, ucode))
        del rating
        self.by_item.finish()
        order = self.by_user.order
        self.genre_prefix: _GenrePrefix | None = None
        if self._n_genres and enc.stats_version_ >= 2:
            # per event, what its genres' affinity sums: 1 (shares: counts) or its residual
            share = enc.implicit_ or self._affinity == "share"
            self.genre_prefix = _GenrePrefix(
                icode[order], None if share else res_vs_item[order], self.item_genres,
                self._n_genres)
            self._genre_start = self.genre_prefix.at(self.by_user.seg[:-1])  # (U, G) each
        # Positives, in by-user order, for the history: item vocabulary index. The positives
        # of any by-user range [start, end) are [likes before start, likes before end).
        # (int32 at rest: item vocabulary indices; ``history`` hands out int64)
        self.pos_items = np.concatenate(
            [[0], self.item_vocab_idx[icode[order][like[order]]]]).astype(np.int32)
        self.by_user.finish()

    def bounds(self, index: _EventIndex, codes: np.ndarray, ranks: np.ndarray,
               events: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) in ``index`` of each query's events strictly before its rank; (0, 0)
        for an unknown code (< 0). ``events``: the query's own pool event (-1: none), whose
        end was found in the sorted pass."""
        valid = codes >= 0
        safe = np.maximum(codes, 0)
        start = index.seg[safe]
        if events is None:
            end = index.ends(safe, ranks)
        else:
            own = events >= 0
            end = np.empty(len(codes), dtype=np.int64)
            end[own] = index.own_end[events[own]]
            if not own.all():
                end[~own] = index.ends(safe[~own], ranks[~own])
        return np.where(valid, start, 0), np.where(valid, end, 0)

    def genre_affinity(self, ucode: np.ndarray, start: np.ndarray, end: np.ndarray
                       ) -> np.ndarray:
        """Per genre, the user's smoothed mean residual or share of events (see the module
        docstring) over the by-user range ``[start, end)`` -> (N, n_genres) float64."""
        assert self.genre_prefix is not None
        k = float(self._enc.smoothing)
        valid = ucode >= 0
        safe = np.maximum(ucode, 0)
        counts, sums = self.genre_prefix.at(end)
        start_counts, start_sums = self._genre_start
        counts -= start_counts[safe]
        if sums is None:                            # shares: every event's value is 1
            out = counts / (end - start + k)[:, None]
        else:
            out = (sums - start_sums[safe]) / (counts + k)
        return np.where(valid[:, None], out, 0.0)

    def recency(self, index: _EventIndex, start: np.ndarray, end: np.ndarray,
                times: np.ndarray) -> np.ndarray:
        """log(1 + days) from each query's entity's last event in ``[start, end)`` of ``index``
        (or, with none, from the pool's first event) to the query's time; a query "as of the
        end of the data" (END_OF_TIME) is measured just after the pool's last event."""
        t = np.asarray(times, dtype=np.int64)
        if len(self.times) == 0:
            return np.zeros(len(t))
        t = np.where(t == END_OF_TIME, self.times[-1] + 1, t)
        last_rank = np.where(end > start, index.key[np.maximum(end - 1, 0)] % index.stride, 0)
        last = np.where(end > start, self.times[np.minimum(last_rank, len(self.times) - 1)],
                        self.times[0])
        days = np.maximum(t - last, 0).astype(np.float64) / _SECONDS_PER_DAY
        return np.log1p(days)

    def ranks(self, times: np.ndarray) -> np.ndarray:
        """Number of distinct pool seconds strictly before each time."""
        return sorted_search(self.times, np.asarray(times, dtype=np.int64), side="left")

    def user_codes(self, ids: np.ndarray) -> np.ndarray:
        return self.log.user_index.get_indexer(ids)

    def item_codes(self, ids: np.ndarray) -> np.ndarray:
        return self.log.item_index.get_indexer(ids)

    def history(self, start: np.ndarray, end: np.ndarray, valid: np.ndarray,
                length: int) -> np.ndarray:
        """The last ``length`` positive items in the by-user range ``[start, end)``, most
        recent first, right-padded with 0 -> (N, length) int64."""
        likes = self.by_user.prefix["like"]
        first = likes[start].astype(np.int64)               # positives before the range
        last = likes[end].astype(np.int64)
        # 1-based positions into pos_items (whose 0 is the padding)
        idx = last[:, None] - np.arange(length)[None, :]                    # (N, L)
        idx[(idx <= first[:, None]) | ~valid[:, None]] = 0
        return self.pos_items[idx].astype(np.int64)


def negative_generators(seed: int) -> tuple[np.random.Generator, ...]:
    """The item, user and pair negatives' generators ``transform_events(seed=seed)`` draws
    with (for ``encode_rows``, to draw the same negatives)."""
    return tuple(np.random.default_rng(seed + k) for k in _NEGATIVE_SEED_OFFSETS)


def _merge_moments(acc: tuple[int, np.ndarray, np.ndarray] | None, x: np.ndarray
                   ) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) per column of the rows seen so far and
    ``x`` (N, D): Chan et al.'s pairwise update, as exact as one pass over all rows."""
    n_b, mean_b = len(x), x.mean(axis=0)
    m2_b = ((x - mean_b) ** 2).sum(axis=0)
    if acc is None:
        return n_b, mean_b, m2_b
    n_a, mean_a, m2_a = acc
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta ** 2 * (n_a * n_b / n)


def _row_groups(origin: Sequence[tuple[np.ndarray, bool, bool]]) -> dict[str, np.ndarray]:
    """``EVENT_OF``, ``USER_ROW`` and ``ITEM_ROW`` of ``encode_rows``' output, from each
    part's source events (the events are the first part, at rows 0..n-1) and whether its
    rows repeat their event's user / item features."""
    event_of, user_row, item_row = [], [], []
    start = 0
    for src, same_user, same_item in origin:
        own = np.arange(start, start + len(src), dtype=np.int64)
        src = src.astype(np.int64, copy=False)
        event_of.append(src)
        user_row.append(src if same_user else own)
        item_row.append(src if same_item else own)
        start += len(src)
    return {EVENT_OF: np.concatenate(event_of), USER_ROW: np.concatenate(user_row),
            ITEM_ROW: np.concatenate(item_row)}


def _take(features: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``idx`` of every feature."""
    return {k: v[idx] for k, v in features.items()}


def _check_rows(dataset: Dataset, rows: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.dtype == bool:
        if len(arr) != len(dataset.interactions):
            raise ValueError("a boolean row mask must have one entry per interaction")
        return np.flatnonzero(arr)
    arr = arr.astype(np.int64, copy=False).ravel()
    if len(arr) and (arr.min() < 0 or arr.max() >= len(dataset.interactions)):
        raise ValueError("row positions out of range of dataset.interactions")
    return arr


def _in_chunks(features: Callable[["_Context", np.ndarray, np.ndarray], dict[str, np.ndarray]],
               ctx: "_Context", n: int, times: np.ndarray) -> dict[str, np.ndarray]:
    """``features(ctx, rows, times)`` of rows 0..n-1, ``TABLE_CHUNK`` rows at a time, written
    into whole-table arrays (each row's features depend on that row alone)."""
    if n <= TABLE_CHUNK:
        return features(ctx, np.arange(n), times)
    out: dict[str, np.ndarray] = {}
    for lo in range(0, n, TABLE_CHUNK):
        hi = min(n, lo + TABLE_CHUNK)
        part = features(ctx, np.arange(lo, hi), times[lo:hi])
        for name, v in part.items():
            if name not in out:
                out[name] = np.empty((n,) + v.shape[1:], dtype=v.dtype)
            out[name][lo:hi] = v
    return out


def _as_of_times(as_of: int | np.ndarray | None, n: int) -> np.ndarray:
    if as_of is None:
        return np.full(n, END_OF_TIME, dtype=np.int64)
    arr = np.asarray(as_of, dtype=np.int64)
    if arr.ndim == 0:
        return np.full(n, int(arr), dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"as_of must be a timestamp or one per row ({n}), got {arr.shape}")
    return arr


def _column_values(s: pd.Series, kind: str, prefix_len: int) -> np.ndarray:
    """A column as category strings; missing values become ''."""
    missing = s.isna().to_numpy()
    vals = s.astype(str).str.strip()
    if kind == "prefix":
        vals = vals.str.upper().str[:prefix_len]
    out = vals.to_numpy(dtype=object)
    out[missing] = ""
    return out


def _attr_vocab_size(a: dict[str, Any]) -> int:
    if a["kind"] == "bins":
        return len(a["edges"]) + 2
    return len(a["vocab"]) + 1


def _encode_attr(a: dict[str, Any], s: pd.Series, prefix_len: int) -> np.ndarray:
    """Codes of one attribute column (0 = missing/unknown) -> (N,) int64."""
    if a["kind"] == "bins":
        x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        codes = np.searchsorted(np.asarray(a["edges"], dtype=np.float64), x, side="right") + 1
        return np.where(np.isfinite(x), codes, 0).astype(np.int64)
    vals = _column_values(s, a["kind"], prefix_len)
    return _lookup(a["vocab"], vals)


def _genre_matrix(items: pd.DataFrame, vocab: list[str], length: int) -> np.ndarray:
    """(n_items, length) genre indices, right-padded with 0."""
    n = len(items)
    out = np.zeros((n, length), dtype=np.int64)
    if "genres" not in items.columns or n == 0:
        return out
    g = items["genres"].reset_index(drop=True)
    g = g.map(lambda x: list(x) if isinstance(x, (list, tuple, np.ndarray)) else [])
    ex = g.explode().dropna()
    if len(ex) == 0:
        return out
    row = ex.index.to_numpy(dtype=np.int64)
    pos = ex.groupby(level=0).cumcount().to_numpy()
    code = _lookup(vocab, ex.astype(str).to_numpy(dtype=object))
    keep = pos < length
    out[row[keep], pos[keep]] = code[keep]
    return out


def _item_years(items: pd.DataFrame, year_col: str | None) -> np.ndarray:
    """Release year per item (float, NaN when unknown): a year column, else "(1995)" in
    the title."""
    # na_value: pandas 2.2.0 may hand back a nullable (masked) column here, which refuses a
    # plain float conversion while it holds missing values.
    if year_col and year_col in items.columns:
        y = pd.to_numeric(items[year_col], errors="coerce").to_numpy(dtype=np.float64,
                                                                     na_value=np.nan)
    elif "title" in items.columns:
        y = pd.to_numeric(items["title"].astype(str).str.extract(r"\((\d{4})\)\s*$")[0],
                          errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        y = np.full(len(items), np.nan)
    return np.where((y > 1800) & (y < 2200), y, np.nan)
