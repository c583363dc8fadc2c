"""The simple peers every run is judged beside, fitted on the same split as the model.

- **Popularity**: item->user ranks users by how many past interactions they have (the most
  active first); user->item ranks items by how many past interactions they have.
- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the
  closed-form item-item model B = I - P / diag(P) with P = (X^T X + lambda I)^-1 over the
  binary past user x item matrix X; a user's scores over items are X_u B, an item's scores
  over users the column X B_:,i. lambda is chosen on the validation question (never on the
  test) from ``EASE_LAMBDAS``. Its item x item matrices need about ``3 * 4 * n_items^2`` bytes;
  above ``EASE_MAX_ITEMS`` items it is skipped and the summary says why.

A scorer answers ``scores(direction, query_codes) -> (q, N) float32``: direction "i2u"
(queries are item codes, candidates users) or "u2i" (queries users, candidates items).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
from scipy import sparse

#: lambda grid of EASE (the L2 weight of its closed form), searched on validation.
EASE_LAMBDAS = (25.0, 100.0, 400.0, 1600.0)
#: Above this many items EASE's dense item x item matrices (3 x 4 x n^2 bytes: 4.8 GB at
#: 20k) would not fit beside the rest on a 24 GB machine in reasonable time; it is skipped.
EASE_MAX_ITEMS = 20_000
#: Below this many items the inversion runs in float64 (exact; 0.5 GB at 8k), above in float32.
EASE_FLOAT64_MAX_ITEMS = 8_000


class Scorer(Protocol):
    def scores(self, direction: str, queries: np.ndarray) -> np.ndarray: ...


def interaction_matrix(user_codes: np.ndarray, item_codes: np.ndarray, n_users: int,
                       n_items: int) -> sparse.csr_matrix:
    """The binary (n_users, n_items) matrix of the given pairs (repeats count once)."""
    u = np.asarray(user_codes, dtype=np.int64)
    i = np.asarray(item_codes, dtype=np.int64)
    x = sparse.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)),
                          shape=(int(n_users), int(n_items)))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


class Popularity:
    """Rank by past activity: users by their number of past items, items by their number of
    past users."""

    name = "popularity"

    def __init__(self, x: sparse.csr_matrix) -> None:
        self.user_count = np.asarray(x.sum(axis=1), dtype=np.float32).ravel()   # (U,)
        self.item_count = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()   # (I,)

    def scores(self, direction: str, queries: np.ndarray) -> np.ndarray:
        row = self.user_count if direction == "i2u" else self.item_count
        return np.broadcast_to(row, (len(queries), len(row)))


def ease_skip_reason(n_items: int) -> str | None:
    """Why EASE cannot run on ``n_items`` items here (None when it can)."""
    if n_items > EASE_MAX_ITEMS:
        gb = 3 * 4 * n_items ** 2 / 1e9
        return (f"EASE skipped: {n_items:,} items need about {gb:.1f} GB of item x item "
                f"matrices (limit {EASE_MAX_ITEMS:,} items)")
    if n_items < 2:
        return "EASE skipped: fewer than 2 items"
    return None


class EASE:
    """EASE fitted on the binary matrix ``x`` with L2 weight ``lam``."""

    name = "ease"

    def __init__(self, x: sparse.csr_matrix, lam: float, *, gram: np.ndarray | None = None
                 ) -> None:
        n = x.shape[1]
        reason = ease_skip_reason(n)
        if reason is not None:
            raise ValueError(reason)
        if lam <= 0:
            raise ValueError(f"EASE lambda must be > 0, got {lam}")
        self.lam = float(lam)
        self.x = x.tocsr().astype(np.float32)
        g = gram_matrix(self.x) if gram is None else gram.copy()
        g[np.diag_indices(n)] += self.lam
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))[None, :]
        b[np.diag_indices(n)] = 0.0
        self.b = b.astype(np.float32)                                            # (I, I)
        self._xt: sparse.csc_matrix | None = None

    def scores(self, direction: str, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.int64)
        if direction == "u2i":
            return np.asarray(self.x[q] @ self.b, dtype=np.float32)             # (q, I)
        return np.asarray(self.x @ self.b[:, q], dtype=np.float32).T            # (q, U)


def gram_matrix(x: sparse.csr_matrix) -> np.ndarray:
    """X^T X as a dense array, float64 for small catalogues, float32 above."""
    dtype = np.float64 if x.shape[1] <= EASE_FLOAT64_MAX_ITEMS else np.float32
    return np.asarray((x.T @ x).toarray(), dtype=dtype)
