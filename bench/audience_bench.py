"""Audience search: top-1000 users for one item, ours vs faiss flat vs the memory floor.

For N in (100k, 1M) synthetic users and d in (32, 64) (seeded random unit vectors):

* ours   - ``dssm_core.audience.UserIndex().index(matrix, ids)`` then ``query_rows(q, 1000)``
           (exact, blocked, what ``build_audience`` and the CLI use);
* faiss  - ``faiss.IndexFlatIP`` (exact inner product), ``search(q, 1000)``;
* gemv   - ``matrix @ q`` alone (the scores, no selection), for reference;
* floor  - matrix bytes / measured read bandwidth: the fastest of three pure read kernels
           (u64 max, u64 bitwise-or reduce, float32 sum) over a 512 MiB buffer.

Then ``build_audience`` end to end (what one page action costs) at each N.

Each round times every contender once in turn (they share the machine's noise, and every query
starts with caches holding another contender's matrix: the strict comparison); the table gives
the median and the best of ``--repeat`` rounds, and checks ours returns faiss's ids. Then each
contender also answers ``--repeat`` queries in a row ("alone": consecutive scans of the same
matrix, as an analyst's session issues them, find part of it still in the L3 cache).
Threads pinned to 1 (numpy/OpenBLAS and faiss's OpenMP).

Benchmark-only dependency: ``faiss-cpu`` (not in requirements.txt; ``pip install faiss-cpu``).
Usage: OMP_NUM_THREADS=1 python bench/audience_bench.py [--repeat 25] [--sizes 100000 1000000]
       [--dims 32 64] [--k 1000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dssm_core.audience import UserIndex  # noqa: E402


def read_bandwidth(mib: int = 512, repeat: int = 7) -> float:
    """Best single-thread read bandwidth (bytes/s) over a buffer bigger than any cache."""
    buf = np.ones(mib * 2**20 // 8, dtype=np.uint64)
    f32 = buf.view(np.float32)
    kernels: list[Callable[[], object]] = [buf.max, lambda: np.bitwise_or.reduce(buf), f32.sum]
    best = float("inf")
    for _ in range(repeat):
        for k in kernels:
            t = time.perf_counter()
            k()
            best = min(best, time.perf_counter() - t)
    return buf.nbytes / best


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    m = rng.standard_normal((n, d), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


def bench_one(n: int, d: int, k: int, repeat: int, bandwidth: float, faiss) -> dict:
    rng = np.random.default_rng(n + d)
    matrix = unit_rows(rng, n, d)                                          # (N, D)
    ids = np.array([f"u{i}" for i in range(n)])
    q = unit_rows(rng, 1, d)                                               # (1, D)
    index = UserIndex().index(matrix, ids)
    contenders: dict[str, Callable[[], object]] = {
        "ours": lambda: index.query_rows(q[0], k),
        "gemv": lambda: matrix @ q[0],
    }
    if faiss is not None:
        flat = faiss.IndexFlatIP(d)
        flat.add(matrix)
        contenders["faiss"] = lambda: flat.search(q, k)
        _, f_rows = flat.search(q, k)
        _, o_rows = index.query_rows(q[0], k)
        same = sorted(f_rows[0].tolist()) == sorted(o_rows[0].tolist())
    else:
        same = None
    for f in contenders.values():  # warm-up
        f()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, f in contenders.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    alone: dict[str, float] = {}
    for name, f in contenders.items():
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        alone[name] = statistics.median(ts)
    floor = matrix.nbytes / bandwidth
    row = {"n": n, "d": d, "k": k, "matrix_mib": matrix.nbytes / 2**20,
           "floor_ms": floor * 1e3, "same_ids_as_faiss": same}
    for name, ts in times.items():
        row[f"{name}_median_ms"] = statistics.median(ts) * 1e3
        row[f"{name}_best_ms"] = min(ts) * 1e3
        row[f"{name}_alone_median_ms"] = alone[name] * 1e3
    if faiss is not None:
        row["ours_vs_faiss_median"] = row["ours_median_ms"] / row["faiss_median_ms"]
        row["ours_vs_faiss_best"] = row["ours_best_ms"] / row["faiss_best_ms"]
        row["ours_vs_faiss_alone"] = alone["ours"] / alone["faiss"]
    row["ours_vs_floor_best"] = row["ours_best_ms"] / row["floor_ms"]
    return row


def bench_build(n: int, d: int, repeat: int) -> dict:
    """``build_audience`` end to end (scores, exclusions, percentiles, insights, reach) on a
    synthetic run of n users with three categorical attributes and a favourite genre."""
    import pandas as pd

    from dssm_core import audience

    rng = np.random.default_rng(7)
    matrix = unit_rows(rng, n, d)
    ids = np.array([f"u{i}" for i in range(n)])
    users = pd.DataFrame({
        "gender": rng.choice(["F", "M"], n), "age": rng.choice(["18-24", "25-34", "35-44"], n),
        "occupation": rng.choice([f"occ{i}" for i in range(21)], n)}, index=pd.Index(ids))
    run = audience.LoadedRun(
        run_id=1, dataset_id=1, index=audience.UserIndex().index(matrix, ids),
        item_ids=np.array(["i0"]), item_vectors=unit_rows(rng, 1, d),
        users=users, items=pd.DataFrame({"title": ["t"]}, index=pd.Index(["i0"])),
        seen=pd.DataFrame({"user_id": ids[:1000], "item_id": ["i0"] * 1000}),
        favourite_genre=rng.choice(["Drama", "Comedy", "Action"], n).astype(object))
    req = audience.AudienceRequest(items=["i0"], top_n=1000, exclude_seen=True,
                                   where={"gender": ["F"]})
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        audience.build_audience(run, req)
        times.append(time.perf_counter() - t)
    return {"n": n, "d": d, "build_median_ms": statistics.median(times) * 1e3,
            "build_best_ms": min(times) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        faiss = None
        print("faiss-cpu is not installed: comparing with gemv and the floor only")
    bw = read_bandwidth()
    print(f"read bandwidth (best of 3 kernels, 1 thread): {bw / 1e9:.1f} GB/s")
    rows = []
    head = (f"{'N':>9} {'d':>3} {'MiB':>5} | {'ours med/best':>14} | {'faiss med/best':>15} | "
            f"{'gemv med/best':>14} | {'floor':>6} | {'ours/faiss':>10} | {'ours/floor':>10} "
            "| same | alone: ours / faiss")
    print(head)
    for n in args.sizes:
        for d in args.dims:
            r = bench_one(n, d, args.k, args.repeat, bw, faiss)
            rows.append(r)
            fz = (f"{r['faiss_median_ms']:6.2f}/{r['faiss_best_ms']:6.2f}" if faiss else "-")
            ratio = (f"{r['ours_vs_faiss_median']:.2f}/{r['ours_vs_faiss_best']:.2f}"
                     if faiss else "-")
            print(f"{n:>9} {d:>3} {r['matrix_mib']:>5.0f} | "
                  f"{r['ours_median_ms']:6.2f}/{r['ours_best_ms']:6.2f} | {fz:>15} | "
                  f"{r['gemv_median_ms']:6.2f}/{r['gemv_best_ms']:6.2f} | "
                  f"{r['floor_ms']:6.2f} | {ratio:>10} | {r['ours_vs_floor_best']:10.2f} | "
                  f"{r['same_ids_as_faiss']} | {r['ours_alone_median_ms']:.2f} / "
                  + (f"{r['faiss_alone_median_ms']:.2f} ms ({r['ours_vs_faiss_alone']:.2f})"
                     if faiss else "-"), flush=True)
    builds = []
    for n in args.sizes:
        b = bench_build(n, 64, max(3, args.repeat // 5))
        builds.append(b)
        print(f"build_audience (top 1000, exclude seen, a filter, insights, reach), N={n:,} d=64:"
              f" median {b['build_median_ms']:.0f} ms, best {b['build_best_ms']:.0f} ms",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_Bps": bw, "rows": rows,
                                               "build": builds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
