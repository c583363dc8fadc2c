"""The interaction log as compact columns, and the negatives drawn from it.

``EventLog.of(dataset)`` maps the id strings to codes once per run: every interaction's
user and item as an int32 position in ``dataset.users`` / ``dataset.items`` (-1: not listed),
its int64 time and its rating, in the file's row order (so that a split's row positions
index it directly). Nothing after it touches a string: the encoder's as-of indexes
(``encoding._Context``), the negatives below and the training batches read these columns.
At 25M interactions the log is 25M x (4 + 4 + 8 + 4) bytes = 500 MB.

``NegativeSampler`` holds what negative sampling needs for one set of ``known`` rows (the
sorted (user, item) pairs interacted with, the item weights, the users in order of their
first event), so that each batch draws its negatives without recomputing them. Its draws
are the ones ``FeatureEncoder.sample_negatives`` / ``sample_user_negatives`` have always
made (same generator calls in the same order), only keyed by codes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .dataset import Dataset

log = logging.getLogger(__name__)

#: Redraws of a negative that hit a pair the user interacted with before giving up.
_REDRAWS = 10


def as_str_array(values: pd.Series | np.ndarray) -> np.ndarray:
    """Ids as an object array of ``str`` (the ``category`` dtype too) -> (N,)."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = np.asarray(s.cat.categories.astype(str), dtype=object)
        codes = s.cat.codes.to_numpy()
        out = np.where(codes >= 0, cats[np.maximum(codes, 0)], "")
        return out.astype(object)
    return s.astype(str).to_numpy(dtype=object)


def codes_in(index: pd.Index, values: pd.Series) -> np.ndarray:
    """Position of each value of ``values`` in ``index`` (-1: absent) -> (N,) int32.

    Each distinct value is looked up once (categorical codes where the column has them,
    else ``pd.factorize``): 25M rows of 162k users cost one factorisation, not 25M lookups.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        uniques = np.asarray(s.cat.categories.astype(str), dtype=object)
    else:
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        uniques = np.asarray(pd.Index(uniques).astype(str), dtype=object)
    where = index.get_indexer(uniques).astype(np.int32)                    # (K,)
    if len(where) == 0:
        return np.full(len(s), -1, dtype=np.int32)
    return np.where(codes >= 0, where[np.maximum(codes, 0)], -1).astype(np.int32)


@dataclass(frozen=True)
class EventLog:
    """Every interaction of a dataset as columns, in its row order.

    user / item: (E,) int32 positions in ``user_ids`` / ``item_ids`` (-1: not listed).
    time: (E,) int64 unix seconds. rating: (E,) float32 (as the dataset holds it).
    user_ids / item_ids: (U,) / (I,) object str, the rows of ``dataset.users`` / ``.items``.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    rating: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_index: pd.Index
    item_index: pd.Index

    @classmethod
    def of(cls, dataset: Dataset) -> "EventLog":
        """The log of ``dataset`` (the id strings are mapped here, once)."""
        inter = dataset.interactions
        user_ids = as_str_array(dataset.users["user_id"])
        item_ids = as_str_array(dataset.items["item_id"])
        user_index, item_index = pd.Index(user_ids), pd.Index(item_ids)
        return cls(user=codes_in(user_index, inter["user_id"]),
                   item=codes_in(item_index, inter["item_id"]),
                   time=inter["timestamp"].to_numpy(dtype=np.int64),
                   rating=inter["rating"].to_numpy(dtype=np.float32),
                   user_ids=user_ids, item_ids=item_ids,
                   user_index=user_index, item_index=item_index)

    def __len__(self) -> int:
        return len(self.time)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _query_order(keys: np.ndarray) -> np.ndarray | None:
    """The order that sorts ``keys`` (stable), or None when they are already sorted."""
    if len(keys) < 2 or bool(np.all(keys[1:] >= keys[:-1])):
        return None
    return np.argsort(keys, kind="stable")


def sorted_search(table: np.ndarray, queries: np.ndarray, side: str = "left") -> np.ndarray:
    """``np.searchsorted(table, queries, side)`` with the queries searched in sorted order
    (same answers; cache-friendly for large unsorted queries) -> (N,) int64."""
    queries = np.asarray(queries)
    order = _query_order(queries)
    if order is None:
        return np.searchsorted(table, queries, side=side).astype(np.int64, copy=False)
    out = np.empty(len(queries), np.int64)
    out[order] = np.searchsorted(table, queries[order], side=side)
    return out


def distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting (numpy 2.4's hash-based unique took 6.4 s for 1M
    int64 keys here, this 1.8 s, same load) -> sorted distinct values."""
    s = np.sort(values)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def is_in_sorted(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.isin(values, table)`` for a sorted ``table`` (one binary search per value, the
    values searched in sorted order; no sort of the table) -> (N,) bool."""
    if len(table) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = sorted_search(table, values)
    return table[np.minimum(pos, len(table) - 1)] == values


class NegativeSampler:
    """Negatives for events of ``log``, avoiding the pairs of the ``known`` rows.

    item_weights: (I,) unnormalised draw weight of every item (popularity or uniform).
    pool_users: codes of the users negatives may be drawn among (training users).
    vocab_items: codes of the items random pairs may use (training items).
    """

    def __init__(self, event_log: EventLog, known: np.ndarray, item_weights: np.ndarray,
                 pool_users: np.ndarray, vocab_items: np.ndarray) -> None:
        self.log = event_log
        n_items, n_users = event_log.n_items, event_log.n_users
        u = event_log.user[known].astype(np.int64)
        i = event_log.item[known].astype(np.int64)
        self._seen_ui = distinct(u * n_items + i)               # (user, item) pairs, sorted
        self._seen_iu = distinct(i * n_users + u)               # (item, user) pairs, sorted
        self.p = item_weights / item_weights.sum()
        first = np.full(n_users, np.iinfo(np.int64).max)
        np.minimum.at(first, u, event_log.time[known])
        self._by_first = pool_users[np.argsort(first[pool_users], kind="stable")]
        self._first_sorted = first[self._by_first]
        self.vocab_items = vocab_items

    def _choice(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``rng.choice(n_items, size, p=self.p)`` (the same draws: one uniform each, the
        same cumulative table) -> (size,) int64."""
        return rng.choice(len(self.p), size=size, p=self.p)

    def items(self, ucode: np.ndarray, n: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` unseen items per user code (repeated ``n`` times each): returns (the
        position of each kept draw in ``np.repeat(ucode, n)``, its item code)."""
        n_items = self.log.n_items
        uc = np.repeat(np.asarray(ucode, dtype=np.int64), n)
        draw = self._choice(rng, len(uc))
        hit = is_in_sorted(self._seen_ui, uc * n_items + draw)
        for r in range(_REDRAWS):   # redraw the few that hit an item the user has seen
            if not hit.any():
                break
            again = np.flatnonzero(hit)
            draw[again] = self._choice(rng, len(again))
            if r + 1 < _REDRAWS:    # the last redraw is not checked: those go below
                hit[again] = is_in_sorted(self._seen_ui, uc[again] * n_items + draw[again])
        keep = np.ones(len(draw), dtype=bool)
        if hit.any():
            # heavy users: draw directly from the items they have not seen (few rows)
            for pos in np.flatnonzero(hit):
                u = int(uc[pos])
                lo, hi = np.searchsorted(self._seen_ui, [u * n_items, (u + 1) * n_items])
                free = np.setdiff1d(np.arange(n_items), self._seen_ui[lo:hi] - u * n_items)
                if len(free) == 0:       # the user has seen every item: no negative exists
                    keep[pos] = False
                    continue
                pf = self.p[free] / self.p[free].sum()
                draw[pos] = free[rng.choice(len(free), p=pf)]
            if not keep.all():
                log.info("%d negatives dropped: their users have seen every item",
                         int((~keep).sum()))
        return np.flatnonzero(keep), draw[keep]

    def users(self, icode: np.ndarray, times: np.ndarray, n: int, rng: np.random.Generator,
              random_items: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` users per (item, time) who existed before the time and never interacted
        with the item (``random_items``: with a training item drawn uniformly instead):
        returns (position of each kept draw in ``np.repeat(icode, n)``, item code, user
        code)."""
        n_users = self.log.n_users
        if len(self._by_first) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        ic = np.repeat(np.asarray(icode, dtype=np.int64), n)
        if random_items:
            ic = self.vocab_items[rng.integers(0, len(self.vocab_items), size=len(ic))]
        ts = np.repeat(np.asarray(times, dtype=np.int64), n)
        existing = np.searchsorted(self._first_sorted, ts, side="left")   # users before ts
        hit = existing == 0

        def draw_for(mask: np.ndarray) -> np.ndarray:
            return self._by_first[(rng.random(int(mask.sum())) * existing[mask]
                                   ).astype(np.int64)]

        draw = np.zeros(len(ic), dtype=np.int64)
        live = ~hit
        draw[live] = draw_for(live)
        hit = live & is_in_sorted(self._seen_iu, ic * n_users + draw)
        for r in range(_REDRAWS):
            if not hit.any():
                break
            again = np.flatnonzero(hit)
            draw[again] = draw_for(hit)
            if r + 1 < _REDRAWS:    # the last redraw is not checked: those are dropped
                hit[again] = is_in_sorted(self._seen_iu, ic[again] * n_users + draw[again])
        keep = np.flatnonzero(live & ~hit)
        return keep, ic[keep], draw[keep]
