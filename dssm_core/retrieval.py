"""The one exact top-K index: cosine search over L2-normalised float32 vectors.

:class:`UserIndex` keeps the vectors dimension-major (D, N) and scores them in blocks of
``block_rows`` (memory bounded at any N), keeping each query's best k by partial selection;
ties go to the lower row. ``index(matrix, ids)`` then ``query(vectors, k) -> (scores, ids)``
(TFRS ``BruteForce`` style). Audiences use it (``audience`` re-exports ``UserIndex``).

:func:`top_k_rows` is the same exact top-K for a block of many queries' score rows at once,
with per-query exclusions (a sparse matrix) and a candidate mask: partial selection in
float32 (an O(N) ``partition`` per query finds its k-th best score, only the candidates at or
above it are sorted), ties to the lower row (``metrics.top_k`` ranks through it).

:func:`rank_cutoffs` asks the same ranking the evaluation's question: where do given
candidates (the relevant ones) rank, and are they within each cut-off? One partial selection
per query gives every cut-off's score; no ranked list of k candidates is built (at 1M users
the 5 % cut-off is a list of 50,000). :class:`SharedRanking` answers it for a scorer whose
scores are the same for every query (popularity) with one sort for all queries.
``evaluation.ask`` uses both, in query chunks of :func:`chunk_rows` so a chunk's score block
stays within :data:`BLOCK_BYTES` at any N. (``UserIndex.query_rows`` could keep its per-block
cut-off pass by calling ``top_k_rows`` on each (Q, block) of scores and merging; it is left as
it is while its build/storage layout changes.)
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import sparse

from .dataset import shorten

#: Users scored per step (d=64: 32 MiB read, 512 KiB of scores per query: they stay in L2
#: cache for the cut-off pass that follows).
DEFAULT_BLOCK_ROWS = 131_072
#: The first cut-off of a query is the k-th best score of its first SAMPLE_FACTOR * k rows.
SAMPLE_FACTOR = 64
#: Rows transposed per step into the (D, N) layout (d=32: 512 KiB, an L2-sized tile; at
#: 10M x 32 whole-matrix or 64k-row steps ran 2-10x slower on the benchmark machine).
LAYOUT_ROWS = 4_096
#: ``positions`` of up to this many ids scans the ids (no hash table is built for them).
FEW_IDS = 16
#: Multiplier of the polynomial hash of ids' code points (FNV-1a 64-bit prime; wraps mod 2**64).
_HASH_PRIME = np.uint64(1_099_511_628_211)


#: Bytes of one chunk's float32 score block (queries x candidates) ranked at once. (256 MiB:
#: at 1M users a chunk is 67 queries. Each chunk also pays for its queries' sparse rows and
#: a thread pool: 64 MiB chunks made the 1M-user evaluation 1.5x slower, 9.4 against 5.9 ms
#: an item query, and 512 MiB saves only 5 % more, ``bench/eval_block_bench.py``.)
BLOCK_BYTES = 256 * 2**20
#: ``top_k_rows`` with at most this many candidates sorts whole blocks of queries at once
#: (vectorised; per-query partial selection pays off above it) ...
SORT_ALL_MAX = 8_192
#: ... ``SORT_ALL_CELLS`` scores a block (12 bytes each while sorting: 24 MiB).
SORT_ALL_CELLS = 2_000_000

def _name_unknown(kind: str, missing: Sequence[str], where: str = "") -> str:
    shown = ", ".join(repr(shorten(m)) for m in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return f"unknown {kind} ids{where}: {shown}{more}"


def _l2_normalise(matrix: np.ndarray, what: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit length (float32); a copy only when some row is not unit already."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)                       # (N, D)
    norms = np.sqrt(np.einsum("ij,ij->i", m, m, dtype=np.float32))          # (N,)
    zero = norms <= 1e-12
    if zero.any():
        bad = ids[zero][:10].tolist() if ids is not None else np.flatnonzero(zero)[:10].tolist()
        raise ValueError(f"{what} vectors of length zero (cannot be normalised): {bad}")
    if np.all(np.abs(norms - 1.0) < 1e-5):
        return m
    return m / norms[:, None]


def _code_points(ids: np.ndarray) -> np.ndarray:
    """Fixed-width unicode ids (N,) as their code points (N, W) uint32 (a view, no copy)."""
    arr = np.ascontiguousarray(ids)
    return arr.view(np.uint32).reshape(len(arr), arr.dtype.itemsize // 4)


def ids_from_utf8(offsets: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """Ids given as UTF-8 bytes back to back, ``payload`` (B,) uint8, id i being
    ``payload[offsets[i]:offsets[i + 1]]`` (``offsets`` (n + 1,) from 0), as a fixed-width
    unicode array (n,). ASCII ids (the usual case) are widened byte by byte, without a
    Python string per id."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)                                               # (n,)
    width = int(lengths.max()) if n > 0 else 0
    if width == 0:
        return np.full(max(n, 0), "", dtype="<U1")
    if int(payload[:int(offsets[-1])].max()) < 128:
        cols = np.zeros((n, width), dtype=np.uint32)                         # (n, W)
        cols[np.arange(width) < lengths[:, None]] = payload[:int(offsets[-1])]  # row-major
        return cols.view(f"<U{width}").reshape(n)
    text = payload.tobytes()
    bounds = offsets.tolist()
    return np.array([text[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])],
                    dtype=str)


def unicode_ids(values: Any) -> np.ndarray:
    """Text ids (a numpy array, a pandas Series or Index of text) as a fixed-width unicode
    array. Arrow-backed text (pandas' ``str`` columns, Parquet reads) is decoded from its
    offsets and bytes (:func:`ids_from_utf8`), not through a Python string per id."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return values
    try:
        import pyarrow as pa

        arr = pa.array(values, from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            if arr.null_count == 0:
                width = 8 if pa.types.is_large_string(arr.type) else 4
                off_buf, data_buf = arr.buffers()[1], arr.buffers()[2]
                offsets = np.frombuffer(off_buf, dtype=f"<i{width}")[
                    arr.offset:arr.offset + len(arr) + 1].astype(np.int64)
                payload = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
                           else np.zeros(0, np.uint8))
                return ids_from_utf8(offsets - offsets[0], payload[offsets[0]:])
    except (ImportError, TypeError, ValueError, ArithmeticError):
        pass   # not text pyarrow reads directly: numpy's conversion below
    return np.asarray(values).astype(str)


def hash_ids(ids: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash (N,) of fixed-width unicode ids, one vectorised pass per
    character position (no per-id Python). Equal ids of the same width hash equal."""
    cols = _code_points(ids)                                                 # (N, W)
    h = np.zeros(len(ids), dtype=np.uint64)                                  # (N,)
    for j in range(cols.shape[1]):
        h *= _HASH_PRIME
        h += cols[:, j]
    return h


class IdLookup:
    """Row of each id among fixed-width unicode ``ids`` (N,) by sorted hashes: built with
    one vectorised hash and one integer argsort (about 16 bytes an id), where a pandas index
    would first make N Python strings. Hash collisions are resolved by comparing the ids."""

    def __init__(self, ids: np.ndarray) -> None:
        if ids.dtype.kind != "U":
            raise ValueError(f"ids must be a unicode array, got dtype {ids.dtype}")
        self.ids = ids
        h = hash_ids(ids)                                                    # (N,)
        self.order = np.argsort(h, kind="stable")                            # (N,)
        self.sorted = h[self.order]                                          # (N,)

    def duplicates(self) -> list[str]:
        """Ids that occur more than once (at most 10), in no particular order."""
        same = np.flatnonzero(self.sorted[1:] == self.sorted[:-1])
        if not len(same):
            return []
        out: dict[str, None] = {}
        for j in same.tolist():   # equal hashes: equal ids, or (rarely) a collision
            for a in range(j, -1, -1):
                if self.sorted[a] != self.sorted[j]:
                    break
                if self.ids[self.order[a]] == self.ids[self.order[j + 1]]:
                    out[str(self.ids[self.order[j + 1]])] = None
                    break
            if len(out) >= 10:
                break
        return list(out)

    def find(self, want: np.ndarray) -> np.ndarray:
        """Rows (K,) int64 of ``want`` (unicode array), -1 where absent."""
        width = self.ids.dtype.itemsize // 4
        want = np.asarray(want)
        if want.dtype.kind != "U":
            want = want.astype(str)
        rows = np.full(len(want), -1, dtype=np.int64)
        if not len(want):
            return rows
        fits = np.char.str_len(want) <= width        # a longer id cannot be among ours
        w = want.astype(f"<U{width}")                # same width: same hash for equal ids
        hw = hash_ids(w)                                                     # (K,)
        # queries searched in sorted order (each search starts near the last: cache-friendly;
        # 10M unsorted searches into 10M hashes ran ~10x slower), then put back in order
        qo = np.argsort(hw, kind="stable")
        pos = np.empty(len(hw), dtype=np.int64)
        pos[qo] = np.searchsorted(self.sorted, hw[qo])
        pos = np.minimum(pos, len(self.sorted) - 1)
        cand = self.order[pos]
        hit = fits & (self.sorted[pos] == hw) & (self.ids[cand] == w)
        rows[hit] = cand[hit]
        # equal hash, other id: a collision; look through the run of equal hashes
        for j in np.flatnonzero(fits & ~hit & (self.sorted[pos] == hw)).tolist():
            p = int(pos[j])
            while p < len(self.sorted) and self.sorted[p] == hw[j]:
                if self.ids[self.order[p]] == w[j]:
                    rows[j] = self.order[p]
                    break
                p += 1
        return rows


def put_columns(columns: np.ndarray, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` (b, D) into ``columns[:, start:start + b]`` of a (D, N) array, one
    cache-sized tile of ``LAYOUT_ROWS`` rows at a time."""
    for s in range(0, len(rows), LAYOUT_ROWS):
        tile = rows[s:s + LAYOUT_ROWS]                                       # (t, D)
        columns[:, start + s:start + s + len(tile)] = tile.T


def _unit_columns(matrix: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The rows of ``matrix`` (N, D) scaled to unit length, as a dimension-major (D, N)
    float32 array, built block by block (cache-sized transposes; no full-size temporary).
    Rows already of unit length (all within 1e-5) are copied as they are."""
    n, d = matrix.shape
    norms = np.empty(n, dtype=np.float32)                                    # (N,)
    step = 16 * LAYOUT_ROWS
    for start in range(0, n, step):
        blk = np.asarray(matrix[start:start + step], dtype=np.float32)       # (b, D)
        nb = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float32))
        if not np.all(np.isfinite(nb)):
            if not np.all(np.isfinite(blk)):
                raise ValueError("the matrix holds NaN or infinite values")
            nb = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float64)).astype(np.float32)
        norms[start:start + len(blk)] = nb
    zero = norms <= 1e-12
    if zero.any():
        raise ValueError(f"user vectors of length zero (cannot be normalised): "
                         f"{ids[zero][:10].tolist()}")
    scale = not np.all(np.abs(norms - 1.0) < 1e-5)
    cols = np.empty((d, n), dtype=np.float32)                                # (D, N)
    for start in range(0, n, step):
        blk = np.asarray(matrix[start:start + step], dtype=np.float32)       # (b, D)
        if scale:
            blk = blk / norms[start:start + len(blk), None]
        put_columns(cols, start, blk)
    return cols


def _best_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest ``scores``, in ascending position order.

    Ties at the cut go to the lower positions, so when positions follow row order the result
    is deterministic (the earlier indexed user wins a tie).
    """
    if len(scores) <= k:
        return np.arange(len(scores))
    kth = scores[np.argpartition(scores, len(scores) - k)[len(scores) - k]]
    keep = scores > kth
    n_missing = k - int(keep.sum())
    if n_missing:
        keep[np.flatnonzero(scores == kth)[:n_missing]] = True
    return np.flatnonzero(keep)


def _top_k_desc(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, row) pairs, best first; ties by lower row (deterministic).

    ``rows`` must be ascending (candidates are gathered block by block in row order).
    """
    keep = _best_k(scores, k)
    scores, rows = scores[keep], rows[keep]
    order = np.argsort(-scores, kind="stable")
    return scores[order], rows[order]


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------
class UserIndex:
    """Exact maximum-inner-product search over L2-normalised user vectors (cosine).

    ``block_rows``: rows scored per step; memory beyond the matrix is
    ``block_rows * Q`` scores plus a few ``k`` candidates per query, at any N.
    """

    def __init__(self, block_rows: int = DEFAULT_BLOCK_ROWS) -> None:
        if int(block_rows) < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.block_rows = int(block_rows)

    # fitted attributes end in "_"
    def index(self, matrix: Any, ids: Any) -> "UserIndex":
        """Index ``matrix`` (N, D) whose rows belong to ``ids`` (N,); returns self.

        The vectors are kept dimension-major, ``columns_`` (D, N): a query is then a
        matrix-vector product that streams D long contiguous rows (BLAS ``gemv`` "N"), which
        runs at memory bandwidth, where the (N, D) layout's N short dot products of D floats
        ran ~20 % slower at D = 32-64 (BENCHMARKS.md). ``matrix_`` is the (N, D) view of it.
        Normalising and transposing go block by block, and the ids are checked unique by
        their hashes: no per-row Python, no full-size temporary beside ``columns_``.
        """
        ids_arr = np.asarray(ids)
        if ids_arr.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids_arr.shape}")
        if ids_arr.dtype.kind != "U":
            ids_arr = ids_arr.astype(str)
        m = np.asarray(matrix)
        if m.ndim != 2:
            raise ValueError(f"matrix must be 2-D (N, D), got shape {m.shape}")
        if m.shape[0] != len(ids_arr):
            raise ValueError(f"{len(ids_arr)} ids for {m.shape[0]} vectors")
        if m.shape[0] == 0 or m.shape[1] == 0:
            raise ValueError(f"cannot index an empty matrix of shape {m.shape}")
        lookup = IdLookup(ids_arr)
        dup = lookup.duplicates()
        if dup:
            raise ValueError(f"ids are not unique: {dup}")
        self.columns_ = _unit_columns(m, ids_arr)                            # (D, N)
        self.ids_ = ids_arr                                                  # (N,)
        self._lookup: IdLookup | None = lookup
        return self

    @classmethod
    def from_columns(cls, columns: np.ndarray, ids: np.ndarray, *,
                     block_rows: int = DEFAULT_BLOCK_ROWS) -> "UserIndex":
        """An index over vectors already laid out dimension-major, ``columns`` (D, N) float32
        C-contiguous (``Store.load_embedding_columns``), whose unique ``ids`` (N,) the store
        checked when it wrote them. The array is taken over, not copied: rows not of unit
        length are scaled in place. The id lookup is built on the first ``positions`` call
        that needs it."""
        cols = columns
        if not (isinstance(cols, np.ndarray) and cols.dtype == np.float32 and cols.ndim == 2
                and cols.flags.c_contiguous and cols.flags.writeable):
            raise ValueError("columns must be a writable C-contiguous float32 (D, N) array")
        ids_arr = np.asarray(ids)
        if ids_arr.dtype.kind != "U":
            ids_arr = ids_arr.astype(str)
        d, n = cols.shape
        if ids_arr.shape != (n,):
            raise ValueError(f"{len(ids_arr)} ids for {n} vectors")
        if n == 0 or d == 0:
            raise ValueError(f"cannot index an empty matrix of shape {(n, d)}")
        out = cls(block_rows)
        step = out.block_rows
        for start in range(0, n, step):
            blk = cols[:, start:start + step]                                # (D, b)
            nb = np.sqrt(np.einsum("ij,ij->j", blk, blk, dtype=np.float32))  # (b,)
            if not np.all(np.isfinite(nb)) and not np.all(np.isfinite(blk)):
                raise ValueError("the matrix holds NaN or infinite values")
            if np.any(nb <= 1e-12):
                bad = ids_arr[start:start + step][nb <= 1e-12][:10].tolist()
                raise ValueError(f"user vectors of length zero (cannot be normalised): {bad}")
            if not np.all(np.abs(nb - 1.0) < 1e-5):
                blk /= nb[None, :]
        out.columns_ = cols
        out.ids_ = ids_arr
        out._lookup = None
        return out

    @property
    def matrix_(self) -> np.ndarray:
        """The indexed unit vectors as an (N, D) view (row i belongs to ``ids_[i]``)."""
        self._check_fitted()
        return self.columns_.T

    def _check_fitted(self) -> None:
        if not hasattr(self, "columns_"):
            raise ValueError("the index is empty: call index(matrix, ids) first")

    @property
    def size(self) -> int:
        """Number of indexed users."""
        self._check_fitted()
        return int(self.columns_.shape[1])

    @property
    def dim(self) -> int:
        """Vector length D."""
        self._check_fitted()
        return int(self.columns_.shape[0])

    def positions(self, ids: Iterable[Any], *, missing: str = "raise") -> np.ndarray:
        """Row numbers of ``ids``. ``missing="raise"``: ValueError naming unknown ids;
        ``"ignore"``: unknown ids are dropped."""
        self._check_fitted()
        want = np.asarray([str(i) for i in ids], dtype=str)
        if len(want) == 0:
            return np.empty(0, dtype=np.int64)
        pos = self.find(want)
        if (pos < 0).any():
            if missing == "raise":
                raise ValueError(_name_unknown("user", want[pos < 0].tolist()))
            pos = pos[pos >= 0]
        return pos.astype(np.int64)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers (K,) int64 of ``ids`` (a unicode array), -1 for unknown ids. Up to
        ``FEW_IDS`` ids are found by scanning; more build the hash lookup once."""
        self._check_fitted()
        want = np.asarray(ids)
        if want.dtype.kind != "U":
            want = want.astype(str)
        if self._lookup is None and len(want) <= FEW_IDS:
            pos = np.full(len(want), -1, dtype=np.int64)   # a few ids: scan, build nothing
            for j, w in enumerate(want.tolist()):
                hit = np.flatnonzero(self.ids_ == w)
                if len(hit):
                    pos[j] = hit[0]
            return pos
        if self._lookup is None:
            self._lookup = IdLookup(self.ids_)
        return self._lookup.find(want)

    def _queries(self, vectors: Any) -> np.ndarray:
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be (Q, {self.dim}) or ({self.dim},), "
                             f"got shape {np.shape(vectors)}")
        norms = np.sqrt(np.einsum("ij,ij->i", q, q))                         # (Q,)
        if not np.all(np.isfinite(norms)):
            raise ValueError("query vectors hold NaN or infinite values")
        if np.any(norms <= 1e-12):
            raise ValueError("a query vector has length zero (cannot be normalised)")
        return np.ascontiguousarray(q / norms[:, None])                      # (Q, D)

    def _score_blocks(self, q: np.ndarray):
        """Yield ``(start, scores (Q, w))`` for consecutive blocks of ``block_rows`` users.

        The yielded array is a reused buffer: consume it before asking for the next block.
        """
        cols, n, b = self.columns_, self.size, min(self.block_rows, self.size)
        nq = q.shape[0]
        buf = np.empty((nq, b), dtype=np.float32)                            # (Q, b)
        for start in range(0, n, b):
            w = min(b, n - start)
            if nq == 1:   # 1-D operands: numpy calls gemv, not a one-row gemm
                np.matmul(q[0], cols[:, start:start + w], out=buf[0, :w])
            else:
                np.matmul(q, cols[:, start:start + w], out=buf[:, :w])
            yield start, buf[:, :w]

    def scores(self, vector: Any) -> np.ndarray:
        """Cosine of one query vector (D,) with every user: (N,) float32, in index order."""
        self._check_fitted()
        q = self._queries(vector)[:1]                                        # (1, D)
        out = np.empty(self.size, dtype=np.float32)                          # (N,)
        for start, s in self._score_blocks(q):
            out[start:start + s.shape[1]] = s[0]
        return out

    def query_rows(self, vectors: Any, k: int, *, allowed: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`query` but returns row numbers: ``(scores (Q, k'), rows (Q, k'))``
        with ``k' = min(k, number of allowed rows)``.

        ``allowed``: optional boolean mask (N,); rows where it is False are never returned.
        """
        self._check_fitted()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = self._queries(vectors)                                           # (Q, D)
        n = self.size
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (n,):
                raise ValueError(f"allowed must be a boolean mask of shape ({n},)")
            k = min(int(k), int(allowed.sum()))
        else:
            k = min(int(k), n)
        nq = q.shape[0]
        if k == 0:
            return np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        # per query: candidate buffers and the score a new row must beat (the k-th best so far)
        cand_s: list[list[np.ndarray]] = [[] for _ in range(nq)]
        cand_r: list[list[np.ndarray]] = [[] for _ in range(nq)]
        n_cand = [0] * nq
        thresh = [-np.inf] * nq
        for start, s_blk in self._score_blocks(q):
            w = s_blk.shape[1]
            last = start + w >= n
            for j in range(nq):
                s = s_blk[j]                                                 # (w,)
                if thresh[j] == -np.inf and w >= SAMPLE_FACTOR * k:
                    # A first cut-off from a prefix: the k-th best of any k+ eligible scores is
                    # at most the overall k-th best, so nothing of the true top k is dropped.
                    head = s[:SAMPLE_FACTOR * k]
                    if allowed is not None:
                        head = head[allowed[start:start + len(head)]]
                    if len(head) >= k:
                        thresh[j] = float(np.partition(head, len(head) - k)[len(head) - k])
                if thresh[j] > -np.inf:
                    idx = np.flatnonzero(s >= thresh[j])
                else:
                    idx = np.arange(w)
                if allowed is not None and len(idx):
                    idx = idx[allowed[start + idx]]
                if not len(idx):
                    continue
                cand_s[j].append(s[idx])                 # fancy indexing copies: buffer reuse ok
                cand_r[j].append(idx + start)
                n_cand[j] += len(idx)
                if not last and (n_cand[j] >= 4 * k or (thresh[j] == -np.inf and
                                                        n_cand[j] >= k)):
                    cs, cr = np.concatenate(cand_s[j]), np.concatenate(cand_r[j])
                    keep = _best_k(cs, k)                    # stays in ascending row order
                    cand_s[j], cand_r[j], n_cand[j] = [cs[keep]], [cr[keep]], len(keep)
                    if len(keep) == k:
                        thresh[j] = float(cs[keep].min())
        out_s = np.empty((nq, k), np.float32)
        out_r = np.empty((nq, k), np.int64)
        for j in range(nq):
            ts, tr = _top_k_desc(np.concatenate(cand_s[j]), np.concatenate(cand_r[j]), k)
            out_s[j], out_r[j] = ts, tr
        return out_s, out_r

    def query(self, vectors: Any, k: int, *, allowed: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` users per query vector: ``(scores (Q, k), ids (Q, k))``, best first.

        ``vectors``: (Q, D) or (D,) (normalised here). ``k`` larger than the population (or the
        allowed rows) is clamped to it. Ties go to the earlier indexed user.
        """
        s, r = self.query_rows(vectors, k, allowed=allowed)
        return s, self.ids_[r]


# --------------------------------------------------------------------------------------------
# Many queries at once: exact top-K of a score block
# --------------------------------------------------------------------------------------------
def chunk_rows(n_candidates: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per chunk so that one chunk's float32 scores (Q, ``n_candidates``) take at
    most ``block_bytes`` (at least 1 query)."""
    if int(block_bytes) < 1:
        raise ValueError(f"block_bytes must be >= 1, got {block_bytes}")
    return max(1, int(block_bytes) // (4 * max(1, int(n_candidates))))


def _desc_keys(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is ``values`` (float32) descending, then ``rows``
    ascending (rows below 2**32): the score's bits mapped to an order-keeping integer,
    negated, above the row."""
    bits = (values + np.float32(0.0)).view(np.int32).astype(np.int64)     # -0.0 -> +0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF          # negative floats: integer order = float order
    return (-bits << 32) | rows.astype(np.int64)


def _top_k_sorted(s: np.ndarray, k: int, ex: sparse.csr_matrix | None, bad: np.ndarray | None,
                  out_s: np.ndarray, out_r: np.ndarray) -> None:
    """``top_k_rows`` for few candidates (N <= ``SORT_ALL_MAX``): whole blocks of queries
    masked and sorted at once (one int64 key sort per block), into ``out_s`` / ``out_r``."""
    nq, n = s.shape
    step = max(1, SORT_ALL_CELLS // n)
    cols = np.arange(n, dtype=np.int64)
    for start in range(0, nq, step):
        blk = np.array(s[start:start + step], dtype=np.float32)              # (b, N) copy
        if bad is not None:
            blk[:, bad] = -np.inf
        if ex is not None:
            part = ex[start:start + len(blk)]
            blk[np.repeat(np.arange(len(blk)), np.diff(part.indptr)), part.indices] = -np.inf
        if np.isnan(blk).any():
            raise ValueError(f"scores of query {start + int(np.isnan(blk).any(axis=1).argmax())}"
                             " hold NaN")
        keys = _desc_keys(blk, cols[None, :])                                # (b, N)
        keys.sort(axis=1)
        rows = keys[:, :k] & 0xFFFFFFFF                                      # (b, k)
        vals = np.take_along_axis(blk, rows, axis=1)
        rows[vals == -np.inf] = -1
        out_r[start:start + len(blk)] = rows
        out_s[start:start + len(blk)] = vals


def _desc_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` (ascending, below 2**32) ordered by ``values`` descending, equal values by
    lower row. float32: one sort of int64 keys (the score's bits mapped to an order-keeping
    integer, negated, then the row) - several times faster than a stable float sort;
    anything else: a stable sort."""
    if values.dtype != np.float32:
        return rows[np.argsort(-values, kind="stable")]
    return np.sort(_desc_keys(values, rows)) & 0xFFFFFFFF


def top_k_rows(scores: Any, k: int, *, exclude: Any = None, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` best candidates of a score block, best first:
    ``(scores (Q, k'), rows (Q, k'))`` with ``k' = min(k, N)``; a query with fewer than k'
    candidates left is padded with row -1 and score -inf. Exact: every candidate is ranked;
    equal scores go to the lower row.

    ``scores``: (Q, N), higher is better, finite (float64 stays float64, anything else is
    ranked in float32; the block is never modified). ``exclude``: a (Q, N) sparse matrix (or
    anything ``scipy.sparse.csr_matrix`` takes) whose stored entries are candidates removed
    from that query's ranking (already seen). ``allowed``: a boolean mask (N,); False
    candidates are never returned. Memory beyond the block: two rows of N scores and the
    candidates at or above each query's k-th best.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (queries, candidates), got shape {s.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    dtype = np.float64 if s.dtype == np.float64 else np.float32
    nq, n = s.shape
    k = min(int(k), n)
    out_s = np.full((nq, k), -np.inf, dtype=dtype)                          # (Q, k)
    out_r = np.full((nq, k), -1, dtype=np.int64)                            # (Q, k)
    if k == 0 or nq == 0:
        return out_s, out_r
    bad = None
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n,):
            raise ValueError(f"allowed must be a boolean mask of shape ({n},), got "
                             f"{allowed.shape}")
        bad = np.flatnonzero(~allowed)
    ex = None
    if exclude is not None:
        ex = sparse.csr_matrix(exclude)
        if ex.shape != (nq, n):
            raise ValueError(f"exclude has shape {ex.shape}, scores have {(nq, n)}")
    if n <= SORT_ALL_MAX and dtype == np.float32:
        _top_k_sorted(s, k, ex, bad, out_s, out_r)
        return out_s, out_r
    row = np.empty(n, dtype=dtype)          # the query's scores, masked       (N,)
    work = np.empty(n, dtype=dtype)         # partition scratch                (N,)
    for j in range(nq):
        row[:] = s[j]
        if bad is not None:
            row[bad] = -np.inf
        if ex is not None:
            row[ex.indices[ex.indptr[j]:ex.indptr[j + 1]]] = -np.inf
        if k < n:
            work[:] = row
            work.partition(n - k)
            if np.isnan(work[n - k:]).any():     # NaN sorts last: any NaN lands up here
                raise ValueError(f"scores of query {j} hold NaN")
            kth = work[n - k]
            # ascending rows at or above the k-th best (ties at it included, lowest first)
            cand = np.flatnonzero(row >= kth) if kth > -np.inf else np.flatnonzero(
                row > -np.inf)
        else:
            if np.isnan(row).any():
                raise ValueError(f"scores of query {j} hold NaN")
            cand = np.flatnonzero(row > -np.inf)
        best = _desc_rows(row[cand], cand)[:k]
        out_r[j, :len(best)] = best
        out_s[j, :len(best)] = row[best]
    return out_s, out_r


# --------------------------------------------------------------------------------------------
# Where given candidates rank: cut-off tests without ranked lists
# --------------------------------------------------------------------------------------------
#: Score cells of one group of queries ``rank_cutoffs`` masks and partitions at once (two
#: copies of this many scores: 32 MiB in float32).
RANK_GROUP_CELLS = 4_000_000


def _group_masked(s: np.ndarray, start: int, stop: int, ex: sparse.csr_matrix | None,
                  bad: np.ndarray | None) -> np.ndarray:
    """A copy of score rows ``start:stop`` (float32, or float64 where given) with the
    candidates ``bad`` (row numbers) and each row's excluded ones at -inf. (A copy, then a
    row-by-row scatter: at 1M candidates 1.6x faster than a broadcast ``np.where``.)"""
    work = np.array(s[start:stop], dtype=np.float64 if s.dtype == np.float64 else np.float32)
    if bad is not None and len(bad):
        for r in work:
            r[bad] = -np.inf
    if ex is not None:
        part = ex[start:stop]
        work[np.repeat(np.arange(len(work)), np.diff(part.indptr)), part.indices] = -np.inf
    return work


def _check_block_args(shape: tuple[int, int], targets: Any, exclude: Any,
                      allowed: np.ndarray | None
                      ) -> tuple[sparse.csr_matrix, sparse.csr_matrix | None, np.ndarray | None]:
    """``targets`` and ``exclude`` as CSR of ``shape`` (targets' indices sorted), and
    ``allowed`` as a boolean mask (None when all are allowed)."""
    nq, n = shape
    t = sparse.csr_matrix(targets)
    if t.shape != (nq, n):
        raise ValueError(f"targets have shape {t.shape}, scores have {(nq, n)}")
    if not t.has_sorted_indices:
        t = t.sorted_indices()                  # a copy: the caller's matrix is left as is
    ex = None
    if exclude is not None:
        ex = sparse.csr_matrix(exclude)
        if ex.shape != (nq, n):
            raise ValueError(f"exclude has shape {ex.shape}, scores have {(nq, n)}")
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n,):
            raise ValueError(f"allowed must be a boolean mask of shape ({n},), got "
                             f"{allowed.shape}")
    return t, ex, allowed


def rank_cutoffs(scores: Any, targets: Any, cutoffs: Iterable[int], exact: int, *,
                 exclude: Any = None, allowed: np.ndarray | None = None, threads: int = 1
                 ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Where the stored entries of ``targets`` rank among each query's candidates, without
    building any ranked list: the same ranking as :func:`top_k_rows` (every candidate scored,
    ``exclude`` / ``allowed`` as there, equal scores to the lower row), so an entry is in a
    query's top k exactly when :func:`top_k_rows` would return it.

    ``scores`` (Q, N) finite; ``targets`` a (Q, N) sparse matrix. Returns, for the targets
    in CSR order (indices sorted within each query): ``ranks`` (nnz,) int64, the entry's
    rank (0 = best) where it is below ``exact``, else -1; and ``within``: for every k in
    ``cutoffs``, (nnz,) bool, whether the entry is in the query's top k. A target that is not
    a candidate (excluded, not allowed) is -1 and never within.

    Per group of queries one multi-point ``partition`` finds the score at every cut-off; an
    entry is within k when its score is above it, and at an equal score when fewer of the
    equal candidates come before it than the cut-off leaves room for. Only the ``exact``
    best are sorted. Cost: one O(N) selection per query, no O(k log k) sort of a large k.
    ``threads`` > 1: groups of queries are ranked side by side in that many threads (numpy's
    copies and partitions release the GIL; each group writes its own entries).
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (queries, candidates), got shape {s.shape}")
    cutoffs = sorted({int(k) for k in cutoffs})
    if (cutoffs and cutoffs[0] < 1) or int(exact) < 1:
        raise ValueError(f"cut-offs must be positive integers, got {cutoffs}, exact={exact}")
    t, ex, ok = _check_block_args(s.shape, targets, exclude, allowed)
    bad = None if ok is None else np.flatnonzero(~ok)
    nq, n = s.shape
    ranks = np.full(t.nnz, -1, dtype=np.int64)
    within = {k: np.zeros(t.nnz, dtype=bool) for k in cutoffs}
    if n == 0 or t.nnz == 0:
        return ranks, within
    e = min(int(exact), n)
    clipped = {k: min(k, n) for k in cutoffs}
    # cut-offs largest first: each one partitions only the best of the one before (a
    # multi-point numpy partition of the whole row ran 7x slower than one point at 1M)
    sizes = sorted(set(clipped.values()) | {e}, reverse=True)
    step = max(1, RANK_GROUP_CELLS // n)

    def group(start: int) -> None:
        stop = min(nq, start + step)
        a, b = int(t.indptr[start]), int(t.indptr[stop])
        if a == b:
            return
        work = _group_masked(s, start, stop, ex, bad)                        # (G, N)
        q = np.repeat(np.arange(stop - start), np.diff(t.indptr[start:stop + 1]))  # (m,)
        col = t.indices[a:b].astype(np.int64)                                # (m,)
        v = work[q, col]                  # the targets' scores, -inf if not candidates (m,)
        live = v > -np.inf
        prev, kth = n, {}
        for size in sizes:       # kth[k]: each query's k-th best; work[:, n - k:] its k best
            if size < prev:
                work[:, n - prev:].partition(prev - size, axis=1)
            kth[size] = work[:, n - size].copy() if size < n else work.min(axis=1)  # (G,)
            prev = size
        nan = np.isnan(work[:, n - sizes[0]:]).any(axis=1)   # NaN partitions to the top
        if nan.any():
            raise ValueError(f"scores of query {start + int(nan.argmax())} hold NaN")

        def before(j: int, value: float) -> int:
            """Candidates of entry j's query scored ``value`` at a lower row than it (the
            rare tie: read from the scores and masks, the work row is partitioned)."""
            row, c = start + int(q[j]), int(col[j])
            same = s[row, :c] == value                                       # (c,)
            if ok is not None:
                same &= ok[:c]
            if ex is not None:
                gone = np.unique(ex.indices[ex.indptr[row]:ex.indptr[row + 1]])
                same[gone[gone < c]] = False
            return int(np.count_nonzero(same))

        for k, kk in clipped.items():
            cut = kth[kk]                                                    # (G,)
            room = kk - (work[:, n - kk:] > cut[:, None]).sum(axis=1)        # (G,) ties' room
            inside = live & (v > cut[q])
            for j in np.flatnonzero(live & (v == cut[q])).tolist():
                inside[j] = before(j, v[j]) < room[q[j]]
            within[k][a:b] = inside
        # exact ranks of the entries at or above the e-th best: candidates above them in the
        # e best, plus equal-scored candidates at lower rows
        top = work[:, n - e:]                                                # (G, e)
        near = np.flatnonzero(live & (v >= kth[e][q]))
        if len(near):
            above = (top[q[near]] > v[near, None]).sum(axis=1)               # (M,)
            same = (top[q[near]] == v[near, None]).sum(axis=1)
            r = above.astype(np.int64)
            for i in np.flatnonzero((same > 1) | (v[near] == kth[e][q[near]])).tolist():
                j = int(near[i])
                r[i] += before(j, v[j])
            r[r >= e] = -1
            ranks[a + near] = r
    starts = range(0, nq, step)
    if int(threads) > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=int(threads)) as pool:
            list(pool.map(group, starts))       # list(): a group's error is raised here
    else:
        for start in starts:
            group(start)
    return ranks, within


class SharedRanking:
    """:func:`rank_cutoffs`'s exact ranks for a scorer whose scores are one ``row`` (N,)
    for every query (popularity): the allowed candidates are ordered once (score
    descending, lower row first), and a target's rank in a query is its place in that order
    less the query's excluded candidates ahead of it. Cost: one sort of N at construction,
    then a sort of each call's exclusions, whatever the cut-off."""

    def __init__(self, row: Any, allowed: np.ndarray | None = None) -> None:
        r = np.asarray(row)
        if r.ndim != 1:
            raise ValueError(f"row must be one score per candidate, got shape {r.shape}")
        if np.isnan(r).any():
            raise ValueError("scores hold NaN")
        self.n = len(r)
        _, _, ok = _check_block_args((0, self.n), sparse.csr_matrix((0, self.n)), None,
                                     allowed)
        cand = np.arange(self.n) if ok is None else np.flatnonzero(ok)                                            # (C,)
        vals = r[cand] if r.dtype == np.float64 else r[cand].astype(np.float32)
        order = _desc_rows(vals, cand)                   # candidates, best first    (C,)
        self.pos = np.full(self.n, -1, dtype=np.int64)   # place in that order, -1 = none
        self.pos[order] = np.arange(len(order))

    def ranks(self, targets: Any, exclude: Any = None) -> np.ndarray:
        """Ranks (nnz,) int64 of the stored entries of ``targets`` (Q, N) in CSR order
        (indices sorted within each query), -1 for a target that is not a candidate;
        ``exclude`` (Q, N) sparse: candidates removed from each query's ranking."""
        nq = sparse.csr_matrix(targets).shape[0]
        t, ex, _ = _check_block_args((nq, self.n), targets, exclude, None)
        q = np.repeat(np.arange(nq, dtype=np.int64), np.diff(t.indptr))          # (m,)
        p = self.pos[t.indices]                                                   # (m,)
        ranks = p.copy()
        if ex is not None and ex.nnz:
            eq = np.repeat(np.arange(nq, dtype=np.int64), np.diff(ex.indptr))
            ep = self.pos[ex.indices]
            keep = ep >= 0
            span = np.int64(self.n + 1)
            keys = np.sort(eq[keep] * span + ep[keep])                            # (E,)
            mine = q * span + p
            lo = np.searchsorted(keys, mine)
            ranks = p - (lo - np.searchsorted(keys, q * span))
            ranks[np.searchsorted(keys, mine, side="right") > lo] = -1   # itself excluded
        ranks[p < 0] = -1
        return ranks
