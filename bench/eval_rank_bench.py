"""Evaluation ranking at 1M users: ranked lists (``top_k_rows`` + ``ranked_counts``, what
``evaluation.ask`` ran before) against cut-off tests (``retrieval.rank_cutoffs``, and
``retrieval.SharedRanking`` for popularity, what it runs now), both directions, model and
popularity, on a question shaped like the 1M-user x 20M-interaction scale run.

Synthetic question: ``--users`` x ``--items`` with ``--past`` already-seen pairs (excluded
from every ranking) and ``--future`` relevant pairs, random unit vectors of ``--dim`` for
the model. The cut-offs are ``ask``'s: recall/NDCG@10/50/100 and, item->user, recall at
1 % / 5 % of the users. Each (direction, scorer) runs the first ``--sample`` queries (item
->user) or ``--sample * 16`` (user->item) through both paths, alternating in one process
(BLAS pinned to 1 thread; the cut-off path's ranking in ``--threads``), checks every count
equal, and extrapolates to all the queries.
Popularity's cut-off path (one ordering for every query) runs on all the queries, as
``ask`` runs it: a sample would charge its one sort to a few queries.

Usage: OMP_NUM_THREADS=1 python bench/eval_rank_bench.py [--users 1000000] [--items 47200]
       [--past 16000000] [--future 4000000] [--sample 256] [--threads 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from bench.machine import cpu_model, load_1min  # noqa: E402
from dssm_core import evaluation, metrics, peers, retrieval  # noqa: E402


def ranked_list_counts(scorer, direction: str, queries: np.ndarray, rel: sparse.csr_matrix,
                       seen: sparse.csr_matrix, ok, ks: tuple[int, ...]) -> dict:
    """The counting ``evaluation.ask`` did before (kept here for the comparison): every
    query's ranked list of max(ks) candidates by ``top_k_rows``, then ``ranked_counts``."""
    n = rel.shape[1]
    chunk = retrieval.chunk_rows(n)
    parts = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        s = scorer.scores(direction, q)
        ex = seen[q]
        _, top = retrieval.top_k_rows(s, max(ks), exclude=ex, allowed=ok)
        del s
        relevant = rel[q]
        relevant = relevant - relevant.multiply(ex)
        if ok is not None:
            relevant = relevant.multiply(ok[None, :].astype(relevant.dtype))
        parts.append(metrics.ranked_counts(top, sparse.csr_matrix(relevant), ks))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_question(args: argparse.Namespace):
    rng = np.random.default_rng(args.seed)
    u = rng.standard_normal((args.users, args.dim), dtype=np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    # long-tailed items (Zipf-like), as in MovieLens-shaped data
    w = 1.0 / np.arange(1, args.items + 1) ** 0.9
    w /= w.sum()
    past = peers.interaction_matrix(rng.integers(0, args.users, args.past),
                                    rng.choice(args.items, args.past, p=w),
                                    args.users, args.items)
    fut = peers.interaction_matrix(rng.integers(0, args.users, args.future),
                                   rng.choice(args.items, args.future, p=w),
                                   args.users, args.items)
    q = evaluation.future_question(
        np.r_[past.nonzero()[0], fut.nonzero()[0]], np.r_[past.nonzero()[1], fut.nonzero()[1]],
        np.arange(past.nnz), np.arange(past.nnz, past.nnz + fut.nnz), args.users, args.items)
    return q, evaluation.VectorScorer(u, v), peers.Popularity(q.past)


def direction_parts(q, direction: str, sample: int) -> tuple:
    """(relevant, seen, allowed, queries, hit cut-offs, sampled queries) of one direction, as
    ``evaluation.ask`` has them: ``sample`` item queries, or ``sample * 16`` user queries."""
    rel = q.relevant if direction == "u2i" else q.relevant.T.tocsr()
    seen = q.past if direction == "u2i" else q.past.T.tocsr()
    ok = q.user_ok if direction == "i2u" else q.item_ok
    queries = np.flatnonzero(np.diff(rel.indptr) > 0)
    n_cand = q.candidates(direction)
    hit_ks = tuple(evaluation.share_k(s, n_cand) for s in evaluation.SHARES) \
        if direction == "i2u" else ()
    return rel, seen, ok, queries, hit_ks, queries[:sample * (1 if direction == "i2u" else 16)]


def question_args(p: argparse.ArgumentParser, sample: int) -> None:
    """The question's shape (``make_question``) and the sampled queries, as options."""
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=47_200)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--past", type=int, default=16_000_000)
    p.add_argument("--future", type=int, default=4_000_000)
    p.add_argument("--sample", type=int, default=sample)
    p.add_argument("--seed", type=int, default=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    question_args(p, 256)
    p.add_argument("--threads", type=int, default=1,
                   help="threads of the cut-off path's ranking (BLAS stays at 1)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    t0 = time.perf_counter()
    q, model, pop = make_question(args)
    out: dict = {"cpu": cpu_model(), "threads": args.threads, "users": args.users,
                 "items": args.items,
                 "past_pairs": int(q.past.nnz), "relevant_pairs": int(q.n_relevant),
                 "build_s": round(time.perf_counter() - t0, 1), "load_before": load_1min(),
                 "rows": []}
    print(f"CPU {out['cpu']}, ranking threads {args.threads} (BLAS 1); {args.users:,} users "
          f"x {args.items:,} items, "
          f"{q.past.nnz:,} seen pairs, {q.n_relevant:,} relevant; load {out['load_before']}")
    for direction in evaluation.DIRECTIONS:
        rel, seen, ok, queries, hit_ks, sample = direction_parts(q, direction, args.sample)
        for name, scorer in (("model", model), ("popularity", pop)):
            times = {}
            res = {}
            asked = {"lists": sample, "cutoffs": queries if name == "popularity" else sample}
            for path in ("lists", "cutoffs", "lists", "cutoffs"):
                t = time.perf_counter()
                if path == "lists":
                    c = ranked_list_counts(scorer, direction, asked[path], rel, seen, ok,
                                           tuple(sorted(set(evaluation.KS) | set(hit_ks))))
                else:
                    c = evaluation._counts(scorer, direction, asked[path], rel, seen, ok,
                                           evaluation.KS, hit_ks, threads=args.threads)
                times.setdefault(path, []).append(time.perf_counter() - t)
                res[path] = c
            same = all(np.allclose(res["cutoffs"][k][:len(sample)], res["lists"][k])
                       for k in res["cutoffs"])
            best = {k: min(v) for k, v in times.items()}
            row = {"direction": direction, "scorer": name, "queries": int(len(queries)),
                   "sample": int(len(sample)), "same_counts": bool(same),
                   "ms_per_query_lists": 1e3 * best["lists"] / len(sample),
                   "ms_per_query_cutoffs": 1e3 * best["cutoffs"] / len(asked["cutoffs"])}
            row["all_queries_s_lists"] = row["ms_per_query_lists"] * len(queries) / 1e3
            row["all_queries_s_cutoffs"] = row["ms_per_query_cutoffs"] * len(queries) / 1e3
            row["speedup"] = row["ms_per_query_lists"] / row["ms_per_query_cutoffs"]
            out["rows"].append(row)
            print(f"  {direction} {name:10s}: {len(queries):>9,} queries; lists "
                  f"{row['ms_per_query_lists']:.3f} ms/q -> {row['all_queries_s_lists']:,.0f} s; "
                  f"cut-offs {row['ms_per_query_cutoffs']:.3f} ms/q -> "
                  f"{row['all_queries_s_cutoffs']:,.0f} s; {row['speedup']:.1f}x; "
                  f"same counts: {same}", flush=True)
    out["total_s_lists"] = sum(r["all_queries_s_lists"] for r in out["rows"])
    out["total_s_cutoffs"] = sum(r["all_queries_s_cutoffs"] for r in out["rows"])
    out["load_after"] = load_1min()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  all queries, model + popularity, both directions: lists "
          f"{out['total_s_lists']:,.0f} s, cut-offs {out['total_s_cutoffs']:,.0f} s "
          f"({out['total_s_lists'] / out['total_s_cutoffs']:.1f}x); peak RSS "
          f"{out['peak_rss_mb']:,.0f} MB; load after {out['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
