"""The default run's training epochs with and without the identical-result speedups (issue 10).

    python bench/fit_speed_bench.py [--data ../shared/data/ml-100k] [--epochs 2] [--rounds 2]

Sets up what ``python -m dssm_core train DATA`` trains (the ``audience`` preset, protocol A:
its split, encoder, as-of context and validation recall) and fits the tune's second trial
(``pair_negatives=4``, 9 rows per event) for ``--epochs`` epochs, alternating in one process:

- ``inline``: the validation rows encoded again at every epoch and the training batches
  encoded between the steps (``training.VAL_CACHE_ROWS = 0``, ``PREFETCH_BATCHES = 0``);
- ``kept+prefetch``: what ``fit`` does now: the validation tensors kept for every epoch,
  the training batches encoded a queue ahead by a background thread.

The model-side changes of the same issue (one-product dropout, contiguous lookup gradient)
are in both. Each variant's history (every loss, AUC, logloss and recall) must be the same
bit for bit; CPU seconds (every thread of the process) and wall seconds are summed over the
rounds and printed beside the CPU model and load average (the wall time gains only where a
second core is free). Threads pinned to 1.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dssm_core import io, pipeline, training  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from dssm_core.events import EventLog  # noqa: E402
from dssm_core.model import DSSM  # noqa: E402
from machine import cpu_model, load_1min  # noqa: E402

torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ds = io.load(args.data)
    cfg = preset("audience")
    sp = pipeline.split(ds, cfg)
    elog = EventLog.of(ds)
    enc = pipeline.make_encoder(cfg).fit(ds, sp.train, pool=sp.pool, event_log=elog)
    ctx = enc.context(ds, sp.pool, event_log=elog)
    monitor, validator = pipeline._monitor(enc, ds, sp, cfg, event_log=elog)
    trial = cfg.with_(pair_negatives=4, epochs=args.epochs, early_stopping_patience=0)
    samplers: dict = {}
    train, val = (pipeline._events(enc, ctx, samplers, ds, trial, rows, seed, sp.known)
                  for rows, seed in ((sp.train, cfg.seed), (sp.val, cfg.seed + 1)))
    variants = {"inline": (0, 0),
                "kept+prefetch": (training.VAL_CACHE_ROWS, training.PREFETCH_BATCHES)}
    cpu = dict.fromkeys(variants, 0.0)
    wall = dict.fromkeys(variants, 0.0)
    histories: dict[str, list] = {}
    print(f"cpu: {cpu_model()}; {len(train)} training events x {train.per_event} rows, "
          f"{len(val)} validation events; load {load_1min()}")
    for r in range(args.rounds):
        for name, (cache_rows, prefetch) in variants.items():
            training.VAL_CACHE_ROWS, training.PREFETCH_BATCHES = cache_rows, prefetch
            model = DSSM(enc.user_specs_, enc.item_specs_, trial)
            c0, w0 = time.process_time(), time.perf_counter()
            fr = training.fit(model, train, val, trial, monitor=monitor, validator=validator)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
            hist = [{k: v for k, v in h.items() if k != "seconds"} for h in fr.history]
            if histories.setdefault(name, hist) != hist:
                raise SystemExit(f"{name}: round {r + 1} gave another history")
            print(f"round {r + 1} {name}: cpu {cpu[name]:.1f} s wall {wall[name]:.1f} s "
                  f"(cumulative) load {load_1min()}", flush=True)
    same = histories["inline"] == histories["kept+prefetch"]
    print(f"histories identical: {same}")
    for name in variants:
        print(f"{name:>14}: {cpu[name] / args.rounds:.2f} CPU-s, "
              f"{wall[name] / args.rounds:.2f} wall-s per fit of {args.epochs} epochs")
    print(f"ratio kept+prefetch / inline: CPU {cpu['kept+prefetch'] / cpu['inline']:.3f}, "
          f"wall {wall['kept+prefetch'] / wall['inline']:.3f}; load {load_1min()}")
    if not same:
        raise SystemExit("the speedups changed a figure")


if __name__ == "__main__":
    main()
