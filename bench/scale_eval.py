"""Evaluation at scale: item->user ranking of 1M users x 32 dims, 20k item queries with
already-seen exclusions, before and after evaluation ranked through ``retrieval.top_k_rows``.

* old - the ranking evaluation used before (kept here verbatim for the comparison): per chunk
        of ``CHUNK_CELLS`` score cells, dense (Q, N) relevance and exclusion masks, float64
        scores and a full stable ``argsort`` of every query's row. Too slow for 20k queries:
        it runs on the first ``--old-queries`` and is extrapolated linearly.
* new - ``evaluation._counts`` (what ``evaluation.ask`` runs per scorer and direction): query
        chunks of ``retrieval.chunk_rows`` (a 256 MiB float32 block), sparse exclusions,
        ``retrieval.top_k_rows`` partial selection for the largest cut-off (5 % of the users).

Both get the cut-offs ``ask`` uses item->user: recall@10/50/100 and at 1 % / 5 % of the users.
Each path runs in its own process, so its peak RSS (``resource.getrusage``) is its own; the
counts of the old path's queries are checked equal to the new path's. Threads pinned to 1.

Usage: OMP_NUM_THREADS=1 python bench/scale_eval.py [--users 1000000] [--items 20000]
       [--dim 32] [--past 5000000] [--future 500000] [--old-queries 48] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from dssm_core import evaluation, metrics, peers  # noqa: E402

#: The old evaluation's chunk: score cells (queries x candidates) ranked at once.
CHUNK_CELLS = 8_000_000


def old_counts(scorer, direction: str, queries: np.ndarray, rel: sparse.csr_matrix,
               seen: sparse.csr_matrix, ok, ks) -> dict[str, np.ndarray]:
    """The evaluation ranking before this change (dense masks, float64, full stable sort)."""
    n = rel.shape[1]
    chunk = max(1, min(len(queries), CHUNK_CELLS // max(n, 1)))
    parts = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        s = np.asarray(scorer.scores(direction, q), dtype=np.float64)
        relevant = rel[q].toarray() > 0
        exclude = seen[q].toarray() > 0
        if ok is not None:
            exclude |= ~ok[None, :]
        relevant &= ~exclude
        s = np.where(exclude, -np.inf, s)
        order = np.argsort(-s, axis=1, kind="stable")[:, :max(ks)]           # (Q, K)
        top = np.where(np.take_along_axis(exclude, order, axis=1), -1, order)
        parts.append(metrics.ranked_counts(top, sparse.csr_matrix(relevant), ks))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_data(args: argparse.Namespace):
    rng = np.random.default_rng(args.seed)
    u = rng.standard_normal((args.users, args.dim), dtype=np.float32)         # (U, D)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = rng.standard_normal((args.items, args.dim), dtype=np.float32)         # (I, D)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    past = peers.interaction_matrix(rng.integers(0, args.users, args.past),
                                    rng.integers(0, args.items, args.past),
                                    args.users, args.items)
    fut = peers.interaction_matrix(rng.integers(0, args.users, args.future),
                                   rng.integers(0, args.items, args.future),
                                   args.users, args.items)
    fut = (fut - fut.multiply(past)).tocsr()
    fut.eliminate_zeros()
    return evaluation.VectorScorer(u, v), past.T.tocsr(), fut.T.tocsr()   # i2u: items x users


def run_path(args: argparse.Namespace) -> dict:
    scorer, seen, rel = make_data(args)
    queries = np.flatnonzero(np.diff(rel.indptr) > 0)
    n_users = rel.shape[1]
    ks = tuple(sorted(set(evaluation.KS) | {evaluation.share_k(s, n_users)
                                              for s in evaluation.SHARES}))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.path == "old":
        queries = queries[:args.old_queries]
        t = time.perf_counter()
        counts = old_counts(scorer, "i2u", queries, rel, seen, None, ks)
    else:
        if args.queries:
            queries = queries[:args.queries]
        t = time.perf_counter()
        counts = evaluation._counts(scorer, "i2u", queries, rel, seen, None, evaluation.KS,
                                    tuple(k for k in ks if k not in evaluation.KS))
    seconds = time.perf_counter() - t
    hits = {k: float(counts[f"hits@{k}"].sum()) for k in ks}
    return {"path": args.path, "queries": int(len(queries)), "seconds": seconds,
            "ms_per_query": 1e3 * seconds / max(len(queries), 1), "ks": list(ks),
            "rss_before_mb": rss0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "n_relevant": int(counts["n_relevant"].sum()), "hits": hits,
            "first": {k: counts[f"hits@{k}"][:args.old_queries].tolist() for k in ks}
            | {"ndcg@100": counts["ndcg@100"][:args.old_queries].round(12).tolist()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--past", type=int, default=5_000_000, help="already-seen pairs")
    p.add_argument("--future", type=int, default=500_000, help="relevant pairs")
    p.add_argument("--old-queries", type=int, default=48)
    p.add_argument("--queries", type=int, default=0, help="new path: first N (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--path", choices=("old", "new"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.path:
        print(json.dumps(run_path(args)))
        return
    out = {"cpu": cpu_model(), "threads": 1, "users": args.users, "items": args.items,
           "dim": args.dim, "past_pairs": args.past}
    for path in ("new", "old"):
        cmd = [sys.executable, __file__, "--path", path] + sys.argv[1:]
        load = os.getloadavg()[0]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])
        res["load_1min_before"] = round(load, 2)
        out[path] = res
    old, new = out["old"], out["new"]
    same = all(old["first"][k] == new["first"][k][:old["queries"]] for k in old["first"])
    old["extrapolated_seconds"] = old["ms_per_query"] * new["queries"] / 1e3
    out["same_counts_on_old_queries"] = same
    out["speedup_per_query"] = old["ms_per_query"] / new["ms_per_query"]
    out["load_1min_after"] = round(os.getloadavg()[0], 2)
    print(f"CPU {out['cpu']}, 1 thread, {args.users:,} users x {args.dim}, "
          f"{new['queries']:,} item->user queries, {args.past:,} seen pairs excluded, "
          f"cut-offs {new['ks']}")
    for name, r in (("old", old), ("new", new)):
        total = r.get("extrapolated_seconds", r["seconds"])
        print(f"  {name}: {r['ms_per_query']:.1f} ms/query over {r['queries']:,} queries -> "
              f"{total:,.0f} s for all {new['queries']:,}"
              f"{' (extrapolated)' if name == 'old' else ''}; peak RSS {r['peak_rss_mb']:,.0f} MB"
              f" (data {r['rss_before_mb']:,.0f} MB); load before {r['load_1min_before']}")
    print(f"  speed-up per query {out['speedup_per_query']:.1f}x; same counts on the old "
          f"path's queries: {same}; load after {out['load_1min_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
