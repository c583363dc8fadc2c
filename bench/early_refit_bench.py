"""The default run with and without the early refit (issue 10: ML-100K's default run <= 2 min).

    python bench/early_refit_bench.py [--data ../shared/data/ml-100k] [--rounds 2]

Trains what ``python -m dssm_core train DATA`` trains (the ``audience`` preset, protocol A,
tune "negatives": two trials side by side, then the refit), in one process, alternating:

- ``after every trial``: the refit starts once both trials have ended
  (``pipeline.EARLY_REFIT = False``);
- ``early``: the refit of the trial leading on validation starts on the core the first
  trial to end leaves idle (``trials.EarlyRefit``, the default).

Every summary figure but the timings must be equal between the two (the script checks it),
as must the stored vectors. Wall and CPU seconds (every thread of the process) of
``pipeline.train`` per run, beside the CPU model and the load average. The first run of the
process also pays one-off warm-ups, so the order alternates from round to round.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dssm_core import io, pipeline  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from machine import cpu_model, load_1min  # noqa: E402

torch.set_num_threads(1)
TIMINGS = ("seconds_per_epoch", "train_samples_per_second", "feature_seconds", "eval_seconds")


def _one(ds, early: bool) -> tuple[float, float, dict, np.ndarray]:
    pipeline.EARLY_REFIT = early
    cfg = preset("audience")
    load = load_1min()
    w, c = time.perf_counter(), time.process_time()
    r = pipeline.train(ds, cfg)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    name = "early" if early else "after every trial"
    print(f"  {name:>17}: {wall:6.1f} s wall, {cpu:6.1f} s CPU (load {load:.2f} -> "
          f"{load_1min():.2f}); trials {r.summary['tune_trials']}, i2u/u2i recall@50 "
          f"{r.summary['i2u_recall@50']:.4f} / {r.summary['u2i_recall@50']:.4f}", flush=True)
    summary = {k: v for k, v in r.summary.items() if k not in TIMINGS}
    return wall, cpu, summary, r.audience_user_vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ds = io.load(args.data)
    print(f"{ds.name}: {len(ds.interactions):,} interactions; {cpu_model()}, "
          f"{os.cpu_count()} cores, 1 torch thread per fit", flush=True)
    walls: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    seen: dict[bool, tuple[dict, np.ndarray]] = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}", flush=True)
        for early in ((False, True) if rnd % 2 == 0 else (True, False)):
            wall, cpu, summary, vectors = _one(ds, early)
            walls[early].append(wall)
            cpus[early].append(cpu)
            if early in seen:
                assert seen[early][0] == summary, "a run's figures changed between rounds"
            seen[early] = (summary, vectors)
    same = seen[True][0] == seen[False][0] and np.array_equal(seen[True][1], seen[False][1])
    print(f"figures and vectors equal: {same}")
    e, a = np.median(walls[True]), np.median(walls[False])
    print(f"median wall: early {e:.1f} s, after every trial {a:.1f} s ({e / a:.2f}x); "
          f"CPU {np.median(cpus[True]):.1f} s vs {np.median(cpus[False]):.1f} s")
    if not same:
        raise SystemExit("the early refit changed the run's figures")


if __name__ == "__main__":
    main()
