"""Training step cost against the size of the user table: dense Adam vs row-wise updates.

    python bench/scale_train.py [--batches 200] [--users 1000 100000 1000000] [--threads 1 2]
        [--items 10000] [--variants dense rowwise sparseadam auto]

Same model (the ``audience`` preset's towers: embeddings 32, MLP 128-64, dropout 0.1,
weight decay 1e-5, pointwise BCE, batch 1024; user_id, a small user attribute, a 5-item
history sharing the item-id table, two dense statistics; item_id over 10k items, a genre,
two dense statistics) and the same synthetic batches (uniform random ids, seeded), with the
user table at 1k / 100k / 1M rows. Each setting runs ``--warmup`` untimed steps then
``--batches`` timed ones, and reports training samples/s and the ms per step spent in the
optimiser's ``step`` alone, for:

- ``dense``: what ``training.fit`` did before: dense table gradients, fused Adam on all;
- ``rowwise``: what it does now (``training.make_optimizer``): sparse table gradients,
  ``optim.RowWiseAdam`` on the tables, fused Adam on the rest;
- ``sparseadam``: sparse gradients with ``torch.optim.SparseAdam`` on the tables (speed
  reference only: it has no weight decay, so its tables train without it);
- ``auto``: what ``training.fit`` does by default: row-wise for tables of at least
  ``training.SPARSE_MIN_ROWS`` rows, dense fused Adam for smaller ones (``--items 1682
  --users 943`` is ML-100K's size, where every table is below the threshold).

Threads pinned (torch and BLAS) to each of ``--threads`` in turn; CPU model, load average and
peak RSS printed beside the figures. Goal (issue 11): samples/s at 1M rows >= 0.7x at 1k.
Writes bench/out/scale_train.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu_model, load_1min  # noqa: E402

from dssm_core import optim, tasks, training  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from dssm_core.features import DenseFeature, SequenceFeature, SparseFeature  # noqa: E402
from dssm_core.model import DSSM  # noqa: E402

N_ITEMS = 10_000
HIST = 5
VARIANTS = ("dense", "rowwise", "sparseadam", "auto")


def specs(n_users: int, dim: int, n_items: int = N_ITEMS) -> tuple[list, list]:
    """User and item feature specs; index 0 of every table is padding."""
    user = [SparseFeature("user_id", n_users + 1, dim), SparseFeature("age", 8, dim),
            SequenceFeature("hist", n_items + 1, dim, HIST, "mean", shared_with="item_id"),
            DenseFeature("user_count"), DenseFeature("user_recency")]
    item = [SparseFeature("item_id", n_items + 1, dim), SparseFeature("genre", 20, dim),
            DenseFeature("item_count"), DenseFeature("item_mean")]
    return user, item


def batches(n_users: int, n: int, bs: int, seed: int, n_items: int = N_ITEMS
            ) -> list[tuple[dict, torch.Tensor]]:
    """``n`` batches of ``bs`` rows with uniform random ids (history: 0-5 real items)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        hist = torch.randint(1, n_items + 1, (bs, HIST), generator=g)
        hist = hist * (torch.rand(bs, HIST, generator=g) < 0.8)             # some padding
        b = {"user_id": torch.randint(1, n_users + 1, (bs,), generator=g),
             "age": torch.randint(1, 8, (bs,), generator=g), "hist": hist,
             "user_count": torch.rand(bs, 1, generator=g),
             "user_recency": torch.rand(bs, 1, generator=g),
             "item_id": torch.randint(1, n_items + 1, (bs,), generator=g),
             "genre": torch.randint(1, 20, (bs,), generator=g),
             "item_count": torch.rand(bs, 1, generator=g),
             "item_mean": torch.rand(bs, 1, generator=g)}
        out.append((b, (torch.rand(bs, generator=g) < 0.2).float()))
    return out


def optimizer_for(variant: str, model: DSSM, cfg) -> object:
    if variant == "dense":
        return training._adam(list(model.parameters()), cfg)
    if variant == "rowwise":
        return training.make_optimizer(model, cfg)
    if variant == "auto":
        return training.make_optimizer(model, cfg, training.SPARSE_MIN_ROWS)
    tables = [t.weight for t in model.embedding_tables()]
    ids = {id(t) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in ids]
    return optim.Chain(training._adam(dense, cfg),
                       torch.optim.SparseAdam(tables, lr=cfg.learning_rate))


def run_one(variant: str, n_users: int, threads: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(threads)
    cfg = preset("audience", batch_size=args.batch)
    user, item = specs(n_users, cfg.embedding_dim, args.items)
    model = DSSM(user, item, cfg)
    model.train()
    task = tasks.for_config(model, cfg)
    autocast = training.resolve_precision(cfg.precision) == "bfloat16"
    data = batches(n_users, args.warmup + args.batches, args.batch, seed=7,
                   n_items=args.items)
    opt = optimizer_for(variant, model, cfg)
    min_rows = {"dense": None, "auto": training.SPARSE_MIN_ROWS}.get(variant, 0)
    step_s = 0.0
    with model.ids_prechecked(), (contextlib.nullcontext() if min_rows is None
                                  else model.sparse_gradients(min_rows)):
        for i, (b, y) in enumerate(data):
            if i == args.warmup:
                t0, step_s = time.perf_counter(), 0.0
            loss, _ = task.loss(b, y, autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            s0 = time.perf_counter()
            opt.step()
            step_s += time.perf_counter() - s0
        total = time.perf_counter() - t0
    return {"variant": variant, "users": n_users, "threads": threads,
            "samples_per_s": args.batches * args.batch / total,
            "ms_per_batch": 1000 * total / args.batches,
            "optimizer_ms_per_step": 1000 * step_s / args.batches,
            "final_loss": float(loss.detach()), "precision": "bfloat16" if autocast
            else "float32", "load_1min": load_1min(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--items", type=int, default=N_ITEMS)
    args = p.parse_args(argv)
    cpu = cpu_model()
    print(f"CPU: {cpu}; torch {torch.__version__}; batch {args.batch}, {args.items:,} items, "
          f"{args.batches} timed batches after {args.warmup}", flush=True)
    rows = []
    for threads in args.threads:
        for variant in args.variants:
            for n_users in args.users:
                r = run_one(variant, n_users, threads, args)
                rows.append(r)
                print(f"threads {threads} {variant:10s} users {n_users:>9,}: "
                      f"{r['samples_per_s']:>9,.0f} samples/s, {r['ms_per_batch']:6.2f} ms/batch, "
                      f"optimizer {r['optimizer_ms_per_step']:6.2f} ms/step "
                      f"(load {r['load_1min']}, peak RSS {r['peak_rss_mb']:.0f} MB)", flush=True)
    ratios = {}
    for threads in args.threads:
        for variant in args.variants:
            sel = {r["users"]: r["samples_per_s"] for r in rows
                   if r["threads"] == threads and r["variant"] == variant}
            lo, hi = min(args.users), max(args.users)
            ratios[f"{variant}@{threads}t"] = sel[hi] / sel[lo]
            print(f"threads {threads} {variant}: samples/s at {hi:,} users / at {lo:,} = "
                  f"{sel[hi] / sel[lo]:.2f} (goal >= 0.7)")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu, "torch": torch.__version__, "python": platform.python_version(),
            "batch": args.batch, "batches": args.batches, "warmup": args.warmup,
            "items": args.items, "sparse_min_rows": training.SPARSE_MIN_ROWS,
            "load_1min_end": load_1min()}
    (out / "scale_train.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                       "ratio_max_over_min_users": ratios},
                                                      indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
