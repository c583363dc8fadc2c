"""Data-loading benchmark: ML-100K from ../shared and a synthetic 10M-row ml-latest ratings.csv.

    OMP_NUM_THREADS=1 python bench/load_bench.py [--rows 10000000] [--repeat 3]

The synthetic file (ml-latest layout: ``userId,movieId,rating,timestamp`` header, half-star
ratings, ~160k users, ~50k movies with a long-tail popularity) is written to a temp folder, never
into the repository. Each measurement runs ``movielens.load`` in a fresh Python process and
reports the load's wall and CPU time and the process's own peak resident memory (``VmHWM``;
``ru_maxrss`` would carry this script's peak over into the child), so the engines cannot share
caches or memory. ``--errors`` also times the error path (a bad value on line 4 / the last
line). The goal (issue 2): 10M rows parsed and validated in <= 15 s with peak memory <= 2 GB
on the 2-core development machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"

CHILD = r"""
import json, os, resource, sys, time
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, sys.argv[1])
from dssm_core import movielens


def peak_mb():
    # VmHWM: this process's own peak RSS (ru_maxrss can carry the parent's peak over exec)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


t0, c0 = time.perf_counter(), time.process_time()
try:
    ds = movielens.load(sys.argv[2], engine=sys.argv[3])
except movielens.DataValidationError as exc:  # the --errors cases
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2),
                      "cpu_seconds": round(time.process_time() - c0, 2),
                      "peak_rss_mb": peak_mb(),
                      "error": str(exc).split(": ", 1)[-1][:200], "line": exc.line}))
    raise SystemExit(0)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({
    "seconds": round(seconds, 2),
    "cpu_seconds": round(cpu, 2),
    "peak_rss_mb": peak_mb(),
    "n_interactions": int(len(ds.interactions)),
    "n_users": int(ds.interactions["user_id"].nunique()),
    "n_items": int(ds.interactions["item_id"].nunique()),
    "warnings": len(ds.warnings),
}))
"""


def write_ratings(path: Path, rows: int, seed: int = 0) -> None:
    """A ml-latest-style ratings.csv of ``rows`` lines (plus header).

    Like the real files: sorted by user, each (user, movie) pair at most once, long-tail movie
    popularity, half-star ratings as "3.5", unix-second timestamps.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_users, n_items = 160_000, 50_000
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop /= pop.sum()
    movie_ids = np.sort(rng.choice(200_000, n_items, replace=False)) + 1
    stars = np.array([f"{x:.1f}" for x in np.arange(0.5, 5.01, 0.5)])
    # draw 15% extra (user, movie) pairs, keep the distinct ones, then exactly ``rows``
    k = int(rows * 1.15) + 1000
    pairs = np.unique(rng.integers(0, n_users, k).astype(np.int64) * n_items
                      + rng.choice(n_items, k, p=pop))
    if len(pairs) < rows:
        raise SystemExit(f"could not draw {rows:,} distinct pairs; lower --rows")
    pairs = np.sort(rng.choice(pairs, rows, replace=False))
    users, items = pairs // n_items + 1, movie_ids[pairs % n_items]
    t0 = 1_100_000_000
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        chunk = 1_000_000
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            rating = stars[rng.integers(0, len(stars), end - start)]
            ts = t0 + rng.integers(0, 400_000_000, end - start)
            fh.write("\n".join(
                f"{u},{i},{r},{t}" for u, i, r, t in zip(
                    users[start:end].tolist(), items[start:end].tolist(), rating.tolist(),
                    ts.tolist())
            ) + "\n")


def measure(data: str | Path, engine: str) -> dict:
    """Load ``data`` in a fresh process; its timings, peak RSS and counts (or its error)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(data), engine],
        capture_output=True, text=True, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        raise SystemExit(f"load failed ({engine}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per engine")
    ap.add_argument("--errors", action="store_true",
                    help="also time a bad value on line 4 and on the last line (error path)")
    args = ap.parse_args()

    results: dict[str, list[dict]] = {}
    load_before = f"{os.getloadavg()[0]:.1f}"
    if (ML100K / "u.data").exists():
        results["ml-100k (folder)"] = [measure(ML100K, "auto") for _ in range(args.repeat)]
    with tempfile.TemporaryDirectory(prefix="load_bench_") as tmp:
        folder = Path(tmp) / "ml-latest-synthetic"
        folder.mkdir()
        t = time.perf_counter()
        write_ratings(folder / "ratings.csv", args.rows)
        size_mb = (folder / "ratings.csv").stat().st_size / 1e6
        print(f"wrote {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
        for _ in range(args.repeat):  # alternate the engines so drifting load hits both
            for engine in ("pandas", "pyarrow"):
                label = f"{args.rows:,}-row ratings.csv, engine={engine}"
                results.setdefault(label, []).append(measure(folder, engine))
        if args.errors:
            errors = {}
            lines = (folder / "ratings.csv").read_bytes().split(b"\n")
            for where, pos in (("line 4", 3), ("last line", len(lines) - 1)):
                bad = Path(tmp) / f"bad-{pos}"
                bad.mkdir()
                mutated = lines[:pos] + [b"5,7,4.0,oops"] + lines[pos:]
                (bad / "ratings.csv").write_bytes(b"\n".join(mutated))
                del mutated
                errors[where] = measure(bad, "auto")
                (bad / "ratings.csv").unlink()
            del lines
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores)")
    print("| case | load s best / median / worst | CPU s (median) | peak RSS MB (max) | counts |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        secs = sorted(r["seconds"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        r0 = runs[0]
        counts = f"{r0['n_users']:,} users, {r0['n_items']:,} items, {r0['n_interactions']:,} rows"
        timing = f"{secs[0]:.2f} / {statistics.median(secs):.2f} / {secs[-1]:.2f}"
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        print(f"| {label} | {timing} | {cpu:.2f} | {rss:.0f} | {counts} |")
    if args.errors:
        print("| bad value 'oops' in the timestamp column | load s | peak RSS MB | reported |")
        print("|---|---|---|---|")
        for where, r in errors.items():
            print(f"| {where} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
                  f"line {r['line']}: {r['error'][:60]} |")
        results["errors"] = errors  # type: ignore[assignment]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
