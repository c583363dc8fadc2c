"""The simple peers every run is judged beside, fitted on the same split as the model.

- **Popularity**: item->user ranks users by how many past interactions they have (the most
  active first); user->item ranks items by how many past interactions they have.
- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the
  closed-form item-item model B = I - P / diag(P) with P = (X^T X + lambda I)^-1 over the
  binary past user x item matrix X; a user's scores over items are X_u B, an item's scores
  over users the column X B_:,i. lambda is chosen on the validation question (never on the
  test) from ``EASE_LAMBDAS``. Memory is bounded (``ease_bytes``): the Gram matrix (kept for
  the grid) and one work matrix, inverted in place (Cholesky) and turned into B in place, in
  float64 up to ``EASE_FLOAT64_MAX_ITEMS`` items (B then rounded to float32 for scoring) and
  float32 above. Where that exceeds ``EASE_MEMORY_BYTES`` EASE is skipped and the summary
  says why (``ease_skip_reason``).

A scorer answers ``scores(direction, query_codes) -> (q, N) float32``: direction "i2u"
(queries are item codes, candidates users) or "u2i" (queries users, candidates items).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
from scipy import sparse

#: lambda grid of EASE (the L2 weight of its closed form), searched on validation.
EASE_LAMBDAS = (25.0, 100.0, 400.0, 1600.0)
#: Most bytes EASE's item x item matrices may take at once (``ease_bytes``); above, EASE is
#: skipped with a reason. 2 GiB: up to 16,384 items in float32 (ML-25M's shape at 5M
#: interactions, 11,800 items: 1.04 GiB), leaving the rest of a 6 GB run to everything else.
EASE_MEMORY_BYTES = 2 * 2**30
#: Up to this many items the inversion runs in float64 (exact; 1.2 GiB at 8k), above float32.
EASE_FLOAT64_MAX_ITEMS = 8_000
#: Item rows per block where an item x item matrix is worked on in parts (the Gram product,
#: mirroring the inverse's triangle): bounded temporaries.
_BLOCK_ROWS = 1024


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

    def shared_scores(self, direction: str) -> np.ndarray:
        """The one score row every query of ``direction`` gets (evaluation ranks it once)."""
        return self.user_count if direction == "i2u" else self.item_count

    def scores(self, direction: str, queries: np.ndarray) -> np.ndarray:
        row = self.shared_scores(direction)
        return np.broadcast_to(row, (len(queries), len(row)))


def ease_dtype(n_items: int) -> type:
    """The float type EASE's matrices take for ``n_items`` items: float64 up to
    ``EASE_FLOAT64_MAX_ITEMS`` (exact), float32 above (half the memory)."""
    return np.float64 if n_items <= EASE_FLOAT64_MAX_ITEMS else np.float32


def ease_bytes(n_items: int) -> int:
    """Peak bytes of EASE's item x item matrices on ``n_items`` items while a grid of lambdas
    is searched: the Gram matrix and one work matrix of ``ease_dtype`` (the work matrix
    becomes B), plus B rounded to float32 where that dtype is float64. 8 n^2 in float32,
    20 n^2 in float64."""
    itemsize = np.dtype(ease_dtype(n_items)).itemsize
    return (2 * itemsize + (4 if itemsize == 8 else 0)) * int(n_items) ** 2


def ease_skip_reason(n_items: int, memory_bytes: int = EASE_MEMORY_BYTES) -> str | None:
    """Why EASE cannot run on ``n_items`` items within ``memory_bytes`` (None when it can)."""
    if n_items < 2:
        return "EASE skipped: fewer than 2 items"
    need = ease_bytes(n_items)
    if need > memory_bytes:
        return (f"EASE skipped: {n_items:,} items need about {need / 2**30:.1f} GB of item x "
                f"item matrices ({np.dtype(ease_dtype(n_items)).name}), over the "
                f"{memory_bytes / 2**30:.1f} GB allowed")
    return None


class EASE:
    """EASE fitted on the binary matrix ``x`` with L2 weight ``lam``; ``b`` (I, I) float32.

    gram: ``gram_matrix(x)`` when the caller has it (left unchanged: a grid of lambdas
    shares it); out: a buffer of the gram's shape and dtype to work in (a previous fit's
    ``b`` that is no longer needed, where ``b`` has that dtype). Without ``gram`` the Gram
    matrix is computed into the work matrix itself: one item x item matrix (plus B in
    float32 where the work is float64)."""

    name = "ease"

    def __init__(self, x: sparse.csr_matrix, lam: float, *, gram: np.ndarray | None = None,
                 out: np.ndarray | None = None, memory_bytes: int = EASE_MEMORY_BYTES
                 ) -> None:
        n = x.shape[1]
        reason = ease_skip_reason(n, memory_bytes)
        if reason is not None:
            raise ValueError(reason)
        if lam <= 0:
            raise ValueError(f"EASE lambda must be > 0, got {lam}")
        self.lam = float(lam)
        self.x = x.tocsr().astype(np.float32)
        if gram is None:
            w = gram_matrix(self.x)                                              # (I, I)
        else:
            w = np.empty_like(gram) if out is None else out
            if w.shape != gram.shape or w.dtype != gram.dtype or w is gram:
                raise ValueError("out must be a separate buffer of the gram's shape and dtype")
            np.copyto(w, gram)
        w[np.diag_indices(n)] += self.lam
        _inverse_in_place(w)                                                     # P
        d = -np.diag(w).copy()                                                   # (I,)
        w /= d[None, :]                                       # B_ij = -P_ij / P_jj
        w[np.diag_indices(n)] = 0.0
        self.b = w.astype(np.float32, copy=False)                                # (I, I)
        self._xt: sparse.csc_matrix | None = None

    def scores(self, direction: str, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.int64)
        if direction == "u2i":
            return np.asarray(self.x[q] @ self.b, dtype=np.float32)             # (q, I)
        return np.asarray(self.x @ self.b[:, q], dtype=np.float32).T            # (q, U)


def gram_matrix(x: sparse.csr_matrix) -> np.ndarray:
    """X^T X as a dense (I, I) array of ``ease_dtype``, built without a second dense copy."""
    xt = x.T.tocsr()
    out = np.zeros((x.shape[1], x.shape[1]), dtype=ease_dtype(x.shape[1]))
    step = _BLOCK_ROWS
    for lo in range(0, x.shape[1], step):                   # item rows of X^T X, in blocks
        out[lo:lo + step] = (xt[lo:lo + step] @ x).toarray()
    return out


def _inverse_in_place(a: np.ndarray) -> None:
    """Overwrite the symmetric positive definite C-ordered square ``a`` with its inverse
    (LAPACK potrf + potri on the same memory, then the triangle mirrored): no second
    matrix. Raises ``ValueError`` when ``a`` is not positive definite."""
    from scipy.linalg import lapack

    f = a.T                       # the same memory, Fortran-ordered (a is symmetric)
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (f,))
    c, info = potrf(f, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        c, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: X^T X + lambda I is not positive definite (LAPACK {info})")
    if not np.shares_memory(c, a):        # LAPACK worked on a copy: take its answer back
        np.copyto(f, c)
    # the inverse is in f's upper triangle = a's lower one; mirror it, a block of rows at a time
    n = a.shape[0]
    for lo in range(0, n, _BLOCK_ROWS):
        hi = min(n, lo + _BLOCK_ROWS)
        blk = a[lo:hi, lo:hi]
        iu = np.triu_indices(hi - lo, 1)
        blk[iu] = blk.T[iu]
        a[lo:hi, hi:] = a[hi:, lo:hi].T
