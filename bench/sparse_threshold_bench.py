"""Where row-wise (sparse) embedding updates start to beat dense Adam, in whole pipeline steps.

    python bench/sparse_threshold_bench.py [--users 162000] [--items 4000 16000 59000]
        [--thresholds 65536 2048] [--rounds 2] [--interactions 2000000] [--threads 2]

For each item-table size, a synthetic dataset in ML-25M's proportions with ``--users`` users
(so the user table is row-wise in every variant) goes through ``pipeline.train`` with the
CLI's default preset cut to one epoch without tuning; each variant sets
``training.fit``'s ``sparse_min_rows`` (tables of at least that many rows get sparse
gradients and ``optim.RowWiseAdam``, smaller ones dense fused Adam) and times
``--timed`` batches after ``--warmup`` (the real step: streamed features, grouped rows,
prefetch thread, optimiser). The variants alternate ``--rounds`` times in one process;
CPU model and load average are printed beside every figure. Chose
``training.SPARSE_MIN_ROWS``. Writes bench/out/sparse_threshold_bench.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dssm_core import pipeline, synthetic, training  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from machine import cpu_model  # noqa: E402


def ms_per_batch(ds, cfg, min_rows: int, warmup: int, timed: int) -> float:
    """Mean wall ms of ``timed`` training batches after ``warmup`` with this threshold."""
    defaults = training.fit.__kwdefaults__
    before = defaults["sparse_min_rows"]
    defaults["sparse_min_rows"] = min_rows
    seen, mark = [0], [0.0]

    def stop() -> bool:                       # polled once before every batch
        seen[0] += 1
        if seen[0] == warmup:
            mark[0] = time.perf_counter()
        if seen[0] == warmup + timed:
            mark[0] = time.perf_counter() - mark[0]
            return True
        return False

    try:
        pipeline.train(ds, cfg, should_stop=stop)
    except pipeline.TrainingCancelled:
        pass
    finally:
        defaults["sparse_min_rows"] = before
    if seen[0] < warmup + timed:
        raise RuntimeError(f"the epoch ended after {seen[0]} batches: raise --interactions")
    return mark[0] / timed * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=162_000)
    ap.add_argument("--items", type=int, nargs="+", default=[4_000, 16_000, 59_000])
    ap.add_argument("--thresholds", type=int, nargs="+", default=[65_536, 2_048])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--timed", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "sparse_threshold_bench.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("audience").with_(epochs=1, tune="none", refit=False,
                                   num_threads=args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads; "
          f"{args.users:,} users; batch {cfg.batch_size}", flush=True)
    rows = []
    for n_items in args.items:
        ds = synthetic.generate_large(args.users, n_items, args.interactions,
                                      days=synthetic.LARGE_SHAPES["ml-25m"]["days"])
        for r in range(args.rounds):
            for th in args.thresholds:
                ms = ms_per_batch(ds, cfg, th, args.warmup, args.timed)
                item_rows = "row-wise" if n_items + 1 >= th else "dense"
                load = os.getloadavg()[0]
                rows.append({"items": n_items, "round": r + 1, "sparse_min_rows": th,
                             "item_table": item_rows, "ms_per_batch": round(ms, 2),
                             "load": round(load, 2)})
                print(f"items {n_items:>7,} round {r + 1} sparse_min_rows {th:>7,} "
                      f"(item table {item_rows:8}): {ms:6.2f} ms/batch  load {load:.2f}",
                      flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads,
                                          "users": args.users, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
