"""The audience question, asked of any scorer (the model, popularity, EASE) on one split.

A ``Question`` holds, in user/item codes (positions in ``dataset.users`` / ``dataset.items``):
the past pairs (what the scorers may know; excluded from every ranking), the relevant future
pairs, and which users and items are candidates at all. ``ask`` ranks, for every query of
each direction, all candidates (exact: every candidate scored, already-seen ones removed,
ties to the lower index: the ranking of ``retrieval.top_k_rows``) and returns recall@K pooled
over relevant pairs (micro), per-query recall (macro), NDCG@K, and item->user recall at 1 %
and 5 % of the candidate users. No ranked list is built: ``retrieval.rank_cutoffs`` places
the relevant pairs against each query's cut-off scores (one partial selection per query, in
float32 query chunks of bounded memory), and a query-independent scorer (popularity) is
ranked once for all queries (``retrieval.SharedRanking``).

Builders:

- ``future_question`` (protocol A, and every protocol's validation): past rows and future
  rows; targetable users = users with a past row, known items = items with a past row.
  item->user: relevant = targetable users with a future row for the item and no past row for
  it; candidates = every targetable user without a past row for it. user->item: relevant =
  known items in the user's future and not in their past; candidates = known items not in
  their past.
- ``heldout_question`` (protocols T and L): the held-out pairs given, every user and item a
  candidate, past pairs removed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from scipy import sparse

from . import metrics, retrieval
from .peers import Scorer, interaction_matrix

#: Cut-offs of every retrieval metric in a summary.
KS = (10, 50, 100)
#: Audience sizes as shares of the candidate users (item->user only).
SHARES = (0.01, 0.05)
DIRECTIONS = ("i2u", "u2i")
#: Queries per chunk of a scorer ranked once for all (``shared_scores``): bounds the
#: chunk's sparse exclusions and their sort keys.
SHARED_CHUNK = 65_536
#: ``progress(done, total)``: queries ranked so far of all that ``ask`` ranks.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Question:
    """One audience question in codes. ``past`` is the (n_users, n_items) binary matrix of
    known pairs; ``relevant`` the (n_users, n_items) binary matrix of pairs to find (never
    overlapping ``past``); ``user_ok`` / ``item_ok``: candidate masks (None = all)."""

    past: sparse.csr_matrix
    relevant: sparse.csr_matrix
    user_ok: np.ndarray | None = None
    item_ok: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return int(self.past.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.past.shape[1])

    @property
    def n_relevant(self) -> int:
        return int(self.relevant.nnz)

    def candidates(self, direction: str) -> int:
        ok = self.user_ok if direction == "i2u" else self.item_ok
        return (self.n_users if direction == "i2u" else self.n_items) if ok is None \
            else int(ok.sum())


def _pairs(rows: np.ndarray, ucode: np.ndarray, icode: np.ndarray, n_users: int,
           n_items: int) -> sparse.csr_matrix:
    return interaction_matrix(ucode[rows], icode[rows], n_users, n_items)


def future_question(ucode: np.ndarray, icode: np.ndarray, past_rows: np.ndarray,
                    future_rows: np.ndarray, n_users: int, n_items: int) -> Question:
    """Protocol A's question (see the module docstring) from interaction rows."""
    past = _pairs(past_rows, ucode, icode, n_users, n_items)
    user_ok = np.diff(past.indptr) > 0
    item_ok = np.bincount(past.indices, minlength=n_items) > 0
    fut = future_rows[user_ok[ucode[future_rows]] & item_ok[icode[future_rows]]]
    rel = _pairs(fut, ucode, icode, n_users, n_items)
    rel = rel - rel.multiply(past)
    rel.eliminate_zeros()
    return Question(past, rel.tocsr(), user_ok, item_ok)


def heldout_question(ucode: np.ndarray, icode: np.ndarray, past_rows: np.ndarray,
                     heldout_rows: np.ndarray, n_users: int, n_items: int) -> Question:
    """Protocols T and L: every user and item a candidate; relevant = held-out pairs that
    are not past pairs."""
    past = _pairs(past_rows, ucode, icode, n_users, n_items)
    rel = _pairs(heldout_rows, ucode, icode, n_users, n_items)
    rel = rel - rel.multiply(past)
    rel.eliminate_zeros()
    return Question(past, rel.tocsr(), None, None)


class VectorScorer:
    """Cosine-ready vectors of both sides: scores are dot products (the towers' outputs are
    L2-normalised, so this is the cosine the model ranks by)."""

    name = "model"

    def __init__(self, user_vectors: np.ndarray, item_vectors: np.ndarray) -> None:
        self.u = np.ascontiguousarray(user_vectors, dtype=np.float32)
        self.v = np.ascontiguousarray(item_vectors, dtype=np.float32)

    def scores(self, direction: str, queries: np.ndarray) -> np.ndarray:
        if direction == "i2u":
            return self.v[queries] @ self.u.T
        return self.u[queries] @ self.v.T


def share_k(share: float, n_candidates: int) -> int:
    """Audience size of ``share`` of ``n_candidates`` (at least 1)."""
    return max(1, int(math.ceil(share * n_candidates)))


def ask(question: Question, scorers: Mapping[str, Scorer], *, ks: Iterable[int] = KS,
        shares: Iterable[float] = SHARES, prefix: str = "",
        progress: Progress | None = None, threads: int = 1) -> dict[str, Any]:
    """Every scorer's figures on ``question``: keys ``{prefix}{name}{direction}_{metric}``
    where ``name`` is "" for the scorer called "model" and ``baseline_<name>_`` otherwise;
    metrics ``recall@K`` (micro), ``macro_recall@K``, ``ndcg@K`` and, item->user only,
    ``recall@1%`` / ``recall@5%``. Also ``{prefix}{direction}_queries`` and
    ``{prefix}{direction}_relevant``. A metric without any relevant pair is None.
    ``progress(done, total)``: queries ranked so far, over every scorer and direction.
    ``threads``: threads that rank query groups side by side (``retrieval.rank_cutoffs``)."""
    ks = tuple(sorted({int(k) for k in ks}))
    shares = tuple(shares)
    out: dict[str, Any] = {}
    by_query = {"u2i": question.relevant, "i2u": question.relevant.T.tocsr()}
    seen = {"u2i": question.past, "i2u": question.past.T.tocsr()}
    n_queries = {d: int((np.diff(by_query[d].indptr) > 0).sum()) for d in DIRECTIONS}
    total, done = len(scorers) * sum(n_queries.values()), 0

    def tick(d: int, _: int) -> None:
        if progress is not None:
            progress(done + d, total)

    for direction in DIRECTIONS:
        rel = by_query[direction]
        queries = np.flatnonzero(np.diff(rel.indptr) > 0)
        out[f"{prefix}{direction}_queries"] = int(len(queries))
        out[f"{prefix}{direction}_relevant"] = int(rel.nnz)
        ok = question.user_ok if direction == "i2u" else question.item_ok
        n_cand = question.candidates(direction)
        share_ks = {s: share_k(s, n_cand) for s in shares} if direction == "i2u" else {}
        hit_ks = tuple(sorted(set(share_ks.values())))
        for name, scorer in scorers.items():
            tag = "" if name == "model" else f"baseline_{name}_"
            counts = _counts(scorer, direction, queries, rel, seen[direction], ok, ks,
                             hit_ks, tick, threads)
            done += len(queries)
            for k in ks:
                out[f"{prefix}{tag}{direction}_recall@{k}"] = _micro(counts, k)
                out[f"{prefix}{tag}{direction}_macro_recall@{k}"] = _macro(counts, k)
                out[f"{prefix}{tag}{direction}_ndcg@{k}"] = _mean(counts, "ndcg", k)
            for s, k in share_ks.items():
                out[f"{prefix}{tag}{direction}_recall@{s:.0%}"] = _micro(counts, k)
    return out


def _counts(scorer: Scorer, direction: str, queries: np.ndarray, rel: sparse.csr_matrix,
            seen: sparse.csr_matrix, ok: np.ndarray | None, ks: tuple[int, ...],
            hit_ks: tuple[int, ...] = (), progress: Progress | None = None,
            threads: int = 1) -> dict[str, np.ndarray] | None:
    """Per-query counts of ``scorer`` on ``queries``: ``n_relevant``, ``hits@k`` for every k
    in ``ks`` and ``hit_ks``, ``ndcg@k`` for every k in ``ks`` (as ``metrics.ranked_counts``
    gives from ranked lists). No ranked list is built: ``retrieval.rank_cutoffs`` tells,
    for the relevant pairs only, whether each is within each cut-off and its exact rank
    below ``max(ks)``, in query chunks of ``retrieval.chunk_rows`` (one chunk's float32
    score block within ``retrieval.BLOCK_BYTES``). A scorer whose scores do not depend on
    the query (``shared_scores``: popularity) is ranked once for all queries
    (``retrieval.SharedRanking``). Relevance and exclusions stay sparse.
    ``progress(done, total)`` after every chunk."""
    if len(queries) == 0:
        return None
    n = rel.shape[1]
    shared = getattr(scorer, "shared_scores", None)
    once = retrieval.SharedRanking(shared(direction), ok) if shared is not None else None
    cut = tuple(sorted(set(ks) | set(hit_ks)))
    chunk = retrieval.chunk_rows(n) if once is None else SHARED_CHUNK
    parts = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        ex = seen[q]                                                         # (c, N) sparse
        relevant = rel[q]
        relevant = relevant - relevant.multiply(ex)          # a seen pair is never relevant
        if ok is not None:
            relevant = relevant.multiply(ok[None, :].astype(relevant.dtype))
        relevant = sparse.csr_matrix(relevant)
        relevant.eliminate_zeros()
        if once is None:
            s = scorer.scores(direction, q)                                  # (c, N)
            ranks, within = retrieval.rank_cutoffs(s, relevant, cut, max(ks), exclude=ex,
                                                   allowed=ok, threads=threads)
            del s
        else:
            ranks = once.ranks(relevant, exclude=ex)
            within = {k: (ranks >= 0) & (ranks < k) for k in cut}
        parts.append(_tally(relevant, ranks, within, ks, hit_ks))
        if progress is not None:
            progress(start + len(q), len(queries))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _tally(relevant: sparse.csr_matrix, ranks: np.ndarray, within: Mapping[int, np.ndarray],
           ks: tuple[int, ...], hit_ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-query ``n_relevant``, ``hits@k`` and ``ndcg@k`` (binary relevance, log2 discount,
    ideal DCG of min(n_relevant, k) hits) from each relevant pair's cut-off tests and rank
    (-1 = not among the best ``max(ks)``)."""
    nq = relevant.shape[0]
    n_rel = np.diff(relevant.indptr).astype(np.int64)                        # (c,)
    query = np.repeat(np.arange(nq), n_rel)                                  # (m,)
    k_max = max(ks)
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))                        # (K,)
    gain = np.where(ranks >= 0, discount[np.clip(ranks, 0, k_max - 1)], 0.0)  # (m,)
    out: dict[str, np.ndarray] = {"n_relevant": n_rel}
    for k in sorted(set(ks) | set(hit_ks)):
        out[metrics.metric_name("hits", k)] = np.bincount(
            query, weights=within[k], minlength=nq).astype(np.float64)
    for k in ks:
        dcg = np.bincount(query, weights=np.where((ranks >= 0) & (ranks < k), gain, 0.0),
                          minlength=nq)
        idcg = np.cumsum(np.r_[0.0, discount[:k]])[np.minimum(n_rel, k)]
        out[metrics.metric_name("ndcg", k)] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg,
                                                                                 1), 0.0)
    return out


def _micro(counts: dict[str, np.ndarray] | None, k: int) -> float | None:
    if counts is None or counts["n_relevant"].sum() == 0:
        return None
    return float(counts[metrics.metric_name("hits", k)].sum() / counts["n_relevant"].sum())


def _macro(counts: dict[str, np.ndarray] | None, k: int) -> float | None:
    if counts is None:
        return None
    nr = counts["n_relevant"]
    keep = nr > 0
    if not keep.any():
        return None
    return float(np.mean(counts[metrics.metric_name("hits", k)][keep] / nr[keep]))


def _mean(counts: dict[str, np.ndarray] | None, metric: str, k: int) -> float | None:
    if counts is None:
        return None
    keep = counts["n_relevant"] > 0
    if not keep.any():
        return None
    return float(np.mean(counts[metrics.metric_name(metric, k)][keep]))


def recall_score(figures: Mapping[str, Any], *, prefix: str = "", tag: str = "",
                 k: int = 50) -> float | None:
    """The one number a choice is made on: the mean of item->user and user->item recall@k
    (micro) of one scorer in ``ask``'s output (None when either is missing)."""
    a = figures.get(f"{prefix}{tag}i2u_recall@{k}")
    b = figures.get(f"{prefix}{tag}u2i_recall@{k}")
    if a is None or b is None:
        return None
    return (float(a) + float(b)) / 2.0
