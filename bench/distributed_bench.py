"""Distributed training speed: samples/s with 1 and 2 local processes, in one run.

    python bench/distributed_bench.py [--interactions 60000] [--epochs 3]

Configurations, each training ``training.fit`` on the same synthetic set (pointwise, the
tests' small towers, batch 512, seed 11) for ``--epochs`` epochs, early stopping off:
1 process x 1 thread, 2 processes x 1 thread (gloo, torchrun), 1 process x 2 threads.
samples/s = training rows x epochs / rank 0's training seconds (evaluation excluded). Threads
are pinned (torch.set_num_threads and OMP/MKL env). Prints a Markdown table with the CPU
model and the 1-minute load average before and after, and writes bench/out/distributed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(out: str, interactions: int, epochs: int, threads: int) -> None:
    import numpy as np
    import torch

    from dssm_core import distributed, synthetic
    from dssm_core.config import TrainConfig
    from dssm_core.encoding import FeatureEncoder
    from dssm_core.model import DSSM
    from dssm_core.training import fit

    torch.set_num_threads(threads)
    cfg = TrainConfig(epochs=epochs, batch_size=512, learning_rate=1e-2, embedding_dim=16,
                      user_hidden=(64, 32), item_hidden=(64, 32), history_len=10,
                      early_stopping_patience=0, seed=11, num_threads=threads,
                      precision="float32")
    ctx = distributed.init(device="cpu")
    try:
        ds = synthetic.generate(n_users=3000, n_items=600, n_interactions=interactions, seed=3)
        rows = np.arange(int(len(ds.interactions) * 0.8))
        enc = FeatureEncoder(history_len=cfg.history_len, embedding_dim=cfg.embedding_dim)
        enc.fit(ds, rows)
        model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
        res = fit(model, enc.transform_events(ds, rows), None, cfg, dist=ctx)
        if ctx.is_main:
            Path(out).write_text(json.dumps({"rows": res.train_rows, "epochs": epochs,
                                             "train_seconds": res.train_seconds}))
        ctx.barrier()
    finally:
        distributed.teardown(ctx)


def main() -> int:
    from bench.machine import cpu_model, load_1min

    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, default=60_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--worker", nargs=2, metavar=("OUT", "THREADS"))
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.interactions, a.epochs, int(a.worker[1]))
        return 0
    outdir = ROOT / "bench" / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    load_before = load_1min()
    rows = []
    for procs, threads in ((1, 1), (2, 1), (1, 2)):
        out = outdir / f"dist_{procs}x{threads}.json"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=str(ROOT))
        tail = [__file__, "--interactions", str(a.interactions), "--epochs", str(a.epochs),
                "--worker", str(out), str(threads)]
        cmd = ([sys.executable, *tail] if procs == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs}", *tail])
        subprocess.run(cmd, env=env, check=True)
        r = json.loads(out.read_text())
        rate = r["rows"] * r["epochs"] / r["train_seconds"]
        rows.append({"processes": procs, "threads": threads, "rows": r["rows"],
                     "train_seconds": r["train_seconds"], "samples_per_s": rate})
    load_after = load_1min()
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_1min_before": load_before,
              "load_1min_after": load_after, "epochs": a.epochs, "runs": rows}
    (outdir / "distributed.json").write_text(json.dumps(result, indent=2))
    print(f"CPU: {result['cpu']} ({result['cores']} cores); load average (1 min) "
          f"{load_before:.2f} before, {load_after:.2f} after\n")
    print("| processes x threads | training rows | epochs | train s | samples/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} x {r['threads']} | {r['rows']:,} | {a.epochs} | "
              f"{r['train_seconds']:.2f} | {r['samples_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
