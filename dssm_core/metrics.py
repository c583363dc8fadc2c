"""Evaluation metrics: pure numpy functions, no state, no torch.

Classification (pointwise scores): ``auc``, ``logloss``.
Retrieval, in either direction (a query is a user and the candidates items, or a query is an
item and the candidates users): ``recall_at_k``, ``hit_rate_at_k``, ``ndcg_at_k`` over a score
matrix ``(Q, N)``, with exact ranking (every candidate scored; ties broken by the lower
candidate index) and already-seen filtering (``exclude``: candidates removed from a query's
ranking before the top K is taken). Ranking is ``retrieval.top_k_rows`` (the one exact top-K);
``ranking_counts`` returns the per-query numbers so a caller can evaluate a large set chunk by
chunk and ``summarize`` the totals; ``ranked_counts`` counts from ranked lists a caller has
already (``evaluation.ask``: sparse relevance, never a dense (Q, N) mask).

Metric names are stable strings built by ``metric_name``: ``"recall@50"``, ``"ndcg@10"``...
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import sparse

#: Probabilities are clipped to [EPS, 1 - EPS] before taking logs.
EPS = 1e-7

Relevance = np.ndarray | Sequence[Sequence[int]]


def metric_name(metric: str, k: int) -> str:
    """The stable name of a top-K metric, e.g. ``metric_name("recall", 50) == "recall@50"``."""
    return f"{metric}@{int(k)}"


#: Elements worked on at a time by ``auc`` and ``logloss`` (their temporaries stay a few MB).
METRIC_CHUNK = 1 << 20


def _scores(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """float32 or float64 as given (no copy), anything else as float64 -> (N,)."""
    s = np.asarray(values).ravel()
    return s if s.dtype in (np.float32, np.float64) else s.astype(np.float64)


def auc(labels: np.ndarray | Sequence[float], scores: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive outranks a random
    negative, ties counted one half (Mann-Whitney U).

    U is counted exactly: for each positive, the negatives below it plus half those equal
    to it, found by binary search in the sorted negatives (the same value as the mean-rank
    formula, bit for bit, while U fits a float64's integers). Memory: the sorted negatives,
    the sorted positives and a chunk of counts (a 15M-row validation set once took 1.3 GB of
    float64 ranks and sort orders).

    Raises ValueError when the lengths differ or only one class is present.
    """
    y = np.asarray(labels).ravel()
    s = _scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels ({len(y)}) and scores ({len(s)}) differ in length")
    pos = y > 0.5
    n_pos = int(np.count_nonzero(pos))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    negatives = np.sort(s[~pos])
    positives = np.sort(s[pos])          # sorted queries: the searches walk the table once
    del pos
    twice_u = 0                          # 2 U: below counts twice, ties once (exact int)
    for lo in range(0, n_pos, METRIC_CHUNK):
        q = positives[lo:lo + METRIC_CHUNK]
        twice_u += int(np.searchsorted(negatives, q, side="left").sum()) \
            + int(np.searchsorted(negatives, q, side="right").sum())
    return float((twice_u / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray | Sequence[float], probs: np.ndarray | Sequence[float],
            eps: float = EPS) -> float:
    """Mean binary cross-entropy of probabilities clipped to ``[eps, 1 - eps]``.

    Each element's term is computed in float64 a chunk at a time into one array, whose mean
    is taken as a whole (the same value as without chunks, bit for bit)."""
    y = np.asarray(labels).ravel()
    p = _scores(probs)
    if y.shape != p.shape:
        raise ValueError(f"labels ({len(y)}) and probs ({len(p)}) differ in length")
    if len(y) == 0:
        raise ValueError("logloss of zero samples")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    terms = np.empty(len(y), dtype=np.float64)
    for lo in range(0, len(y), METRIC_CHUNK):
        yc = y[lo:lo + METRIC_CHUNK].astype(np.float64)
        pc = np.clip(p[lo:lo + METRIC_CHUNK].astype(np.float64), eps, 1.0 - eps)
        terms[lo:lo + len(yc)] = yc * np.log(pc) + (1.0 - yc) * np.log(1.0 - pc)
    return float(-np.mean(terms))


def _as_mask(x: Relevance | None, shape: tuple[int, int], what: str) -> np.ndarray:
    """A (Q, N) bool mask from a bool matrix or from one list of candidate indices per query."""
    q, n = shape
    if x is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(x, np.ndarray) and x.dtype == bool and x.ndim == 2:
        if x.shape != shape:
            raise ValueError(f"{what} mask has shape {x.shape}, scores have {shape}")
        return x
    if len(x) != q:
        raise ValueError(f"{what} has {len(x)} entries, scores have {q} queries")
    mask = np.zeros(shape, dtype=bool)
    for row, idx in enumerate(x):
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{what} index out of range [0, {n}) in query {row}")
        mask[row, idx] = True
    return mask


def top_k(scores: np.ndarray, k: int, exclude: Relevance | None = None) -> np.ndarray:
    """Indices (Q, min(k, N)) of each query's k best candidates, best first, excluded ones
    left out (a query with fewer than k candidates left is padded with -1). Exact: every
    candidate is scored; ties go to the lower index. Ranked by ``retrieval.top_k_rows``
    (partial selection; float64 scores stay float64)."""
    from .retrieval import top_k_rows

    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (queries, candidates), got shape {s.shape}")
    if s.dtype != np.float64 and s.dtype != np.float32:
        s = s.astype(np.float64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ex = _as_mask(exclude, s.shape, "exclude")
    return top_k_rows(s, int(k), exclude=sparse.csr_matrix(ex) if ex.any() else None)[1]


def ranking_counts(
    scores: np.ndarray,
    relevant: Relevance,
    ks: Iterable[int],
    exclude: Relevance | None = None,
) -> dict[str, np.ndarray]:
    """Per-query counts for recall/hit-rate/NDCG at every k in ``ks``.

    scores: (Q, N) higher = better. relevant: (Q, N) bool or per-query candidate indices.
    exclude: already-seen candidates, removed from the ranking (a relevant candidate that is
    also excluded is not counted as relevant).
    Returns ``n_relevant`` (Q,) and, per k, ``hits@k`` (Q,) and ``ndcg@k`` (Q,).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (queries, candidates), got shape {s.shape}")
    ks = _check_ks(ks)
    rel = _as_mask(relevant, s.shape, "relevant")
    ex = _as_mask(exclude, s.shape, "exclude")
    rel = sparse.csr_matrix(rel & ~ex)
    if s.shape[1] == 0:
        return ranked_counts(np.empty((len(s), 0), dtype=np.int64), rel, ks)
    return ranked_counts(top_k(s, max(ks), ex), rel, ks)


def _check_ks(ks: Iterable[int]) -> list[int]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise ValueError(f"ks must be positive integers, got {out}")
    return out


def ranked_counts(top: np.ndarray, relevant: sparse.spmatrix, ks: Iterable[int]
                  ) -> dict[str, np.ndarray]:
    """``ranking_counts`` from each query's ranked list: ``top`` (Q, K) candidate indices,
    best first (-1 = no candidate), and ``relevant`` a sparse (Q, N) matrix whose stored
    entries are the query's relevant candidates (excluded ones already left out; every one
    counts in ``n_relevant``). Needs ``K >= min(max(ks), N)``.

    Returns ``n_relevant`` (Q,) and, per k, ``hits@k`` (Q,) and ``ndcg@k`` (Q,).
    """
    ks = _check_ks(ks)
    top = np.asarray(top, dtype=np.int64)
    rel = sparse.csr_matrix(relevant)
    nq, n = rel.shape
    if top.ndim != 2 or top.shape[0] != nq:
        raise ValueError(f"top must be ({nq}, K), got shape {top.shape}")
    if top.shape[1] < min(max(ks), n):
        raise ValueError(f"top holds {top.shape[1]} candidates per query; k={max(ks)} needs "
                         f"{min(max(ks), n)}")
    rel.sum_duplicates()
    rel.eliminate_zeros()
    n_rel = np.diff(rel.indptr).astype(np.int64)                            # (Q,)
    # membership of (query, candidate) in the relevant pairs by sorted integer keys
    rel_keys = np.sort(np.repeat(np.arange(nq, dtype=np.int64), n_rel) * n + rel.indices)
    top_keys = np.arange(nq, dtype=np.int64)[:, None] * n + np.maximum(top, 0)   # (Q, K)
    pos = np.minimum(np.searchsorted(rel_keys, top_keys), max(len(rel_keys) - 1, 0))
    got = (top >= 0) & (rel_keys[pos] == top_keys if len(rel_keys) else False)  # (Q, K)
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))                # (K,)
    out: dict[str, np.ndarray] = {"n_relevant": n_rel}
    for k in ks:
        kk = min(k, top.shape[1])
        hits = got[:, :kk].sum(axis=1)
        dcg = (got[:, :kk] * discount[:kk]).sum(axis=1)
        ideal_n = np.minimum(n_rel, kk)
        idcg = np.cumsum(np.r_[0.0, discount[:kk]])[ideal_n]
        out[metric_name("hits", k)] = hits.astype(np.float64)
        out[metric_name("ndcg", k)] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
    return out


def summarize(counts: dict[str, np.ndarray], ks: Iterable[int],
              average: str = "query") -> dict[str, float]:
    """recall@k, hit_rate@k, ndcg@k from ``ranking_counts`` output (possibly concatenated
    over chunks). Queries with no relevant candidate are skipped.

    average="query": mean over queries of hits / n_relevant (macro);
    average="relevant": total hits / total relevant (micro: each relevant pair counts once).
    hit_rate and ndcg are always means over queries.
    """
    if average not in ("query", "relevant"):
        raise ValueError(f"average must be 'query' or 'relevant', got {average!r}")
    n_rel = np.asarray(counts["n_relevant"], dtype=np.float64)
    keep = n_rel > 0
    out: dict[str, float] = {}
    for k in sorted({int(k) for k in ks}):
        hits = np.asarray(counts[metric_name("hits", k)], dtype=np.float64)[keep]
        ndcg = np.asarray(counts[metric_name("ndcg", k)], dtype=np.float64)[keep]
        nr = n_rel[keep]
        if not keep.any():
            out[metric_name("recall", k)] = float("nan")
            out[metric_name("hit_rate", k)] = float("nan")
            out[metric_name("ndcg", k)] = float("nan")
            continue
        if average == "query":
            recall = float(np.mean(hits / nr))
        else:
            recall = float(hits.sum() / nr.sum())
        out[metric_name("recall", k)] = recall
        out[metric_name("hit_rate", k)] = float(np.mean(hits > 0))
        out[metric_name("ndcg", k)] = float(np.mean(ndcg))
    return out


def recall_at_k(scores: np.ndarray, relevant: Relevance, k: int,
                exclude: Relevance | None = None, average: str = "query") -> float:
    """Share of each query's relevant candidates found in its top k (mean over queries with
    at least one relevant candidate; ``average="relevant"`` pools all pairs)."""
    return summarize(ranking_counts(scores, relevant, [k], exclude), [k], average)[
        metric_name("recall", k)]


def hit_rate_at_k(scores: np.ndarray, relevant: Relevance, k: int,
                  exclude: Relevance | None = None) -> float:
    """Share of queries with at least one relevant candidate in their top k."""
    return summarize(ranking_counts(scores, relevant, [k], exclude), [k])[
        metric_name("hit_rate", k)]


def ndcg_at_k(scores: np.ndarray, relevant: Relevance, k: int,
              exclude: Relevance | None = None) -> float:
    """Mean normalised discounted cumulative gain at k (binary relevance, log2 discount)."""
    return summarize(ranking_counts(scores, relevant, [k], exclude), [k])[
        metric_name("ndcg", k)]
