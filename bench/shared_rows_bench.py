"""A training step with each tower run once per distinct row vs once per row (issue 10, 11).

    python bench/shared_rows_bench.py [--shape ml-100k|ml-25m] [--batches 80] [--rounds 3]
        [--pair-negatives 0 4]

Training batches group an event with its sampled negatives (``stream.EventBatches``); an item
negative repeats its event's user features, so ``DSSM.forward`` runs the user tower once per
event (``features.USER_ROW``). This bench takes the same encoded batches of the default preset
(``audience``, protocol A) and times full training steps (forward, BCE, backward, optimiser:
what ``training.fit`` does per batch) with the shared rows (``shared``) and with the keys
removed so each tower runs on every row (``every row``: the same features, the same rows),
alternating in one process, threads pinned to 1. ``ml-100k`` reads ../shared/data/ml-100k;
``ml-25m`` generates a set with ML-25M's table sizes (162k users, 59k items) but 2M
interactions (a step's cost depends on the tables, not on the log's length). Prints CPU ms
per step (the optimiser's share separately), the ratio, the CPU model and load average.
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
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dssm_core import io, pipeline, synthetic, training  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from dssm_core.events import EventLog  # noqa: E402
from dssm_core.features import ROW_KEYS  # noqa: E402
from dssm_core.model import DSSM  # noqa: E402
from machine import cpu_model, load_1min  # noqa: E402

torch.set_num_threads(1)


def dataset(shape: str):
    if shape == "ml-100k":
        path = ROOT.parent / "shared" / "data" / "ml-100k"
        if not path.exists():
            raise SystemExit(f"{path} is absent: try --shape ml-25m")
        return io.load(str(path))
    big = synthetic.LARGE_SHAPES["ml-25m"]
    return synthetic.generate_large(big["n_users"], big["n_items"], 2_000_000, days=big["days"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("ml-100k", "ml-25m"), default="ml-100k")
    ap.add_argument("--batches", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pair-negatives", type=int, nargs="+", default=[0, 4])
    args = ap.parse_args()
    ds = dataset(args.shape)
    cfg = preset("audience")
    sp = pipeline.split(ds, cfg)
    elog = EventLog.of(ds)
    enc = pipeline.make_encoder(cfg).fit(ds, sp.train, pool=sp.pool, event_log=elog)
    ctx = enc.context(ds, sp.pool, event_log=elog)
    print(f"{args.shape}: {len(ds.users):,} users x {len(ds.items):,} items; cpu {cpu_model()}; "
          f"load {load_1min()}", flush=True)
    for pairs in args.pair_negatives:
        trial = cfg.with_(pair_negatives=pairs)
        train = pipeline._events(enc, ctx, {}, ds, trial, sp.train, cfg.seed, sp.known)
        model = DSSM(enc.user_specs_, enc.item_specs_, trial).train()
        opt = training.make_optimizer(model, trial, training.SPARSE_MIN_ROWS)
        batches = [training._as_tensors(b, model.feature_specs, "train", need_label=True)
                   for _, b in zip(range(args.batches), train.batches(1, trial.batch_size))]
        users = sum(int((x[ROW_KEYS[0]] == torch.arange(len(y))).sum()) for x, y in batches)
        rows = sum(len(y) for _, y in batches)
        cpu = {"shared": 0.0, "every row": 0.0}
        step = dict.fromkeys(cpu, 0.0)
        for _ in range(args.rounds):
            for name in cpu:
                t0 = time.process_time()
                with model.ids_prechecked(), model.sparse_gradients(training.SPARSE_MIN_ROWS):
                    for x, y in batches:
                        if name == "every row":
                            x = {k: v for k, v in x.items() if k not in ROW_KEYS}
                        loss = F.binary_cross_entropy_with_logits(model(x), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        t1 = time.process_time()
                        opt.step()
                        step[name] += time.process_time() - t1
                cpu[name] += time.process_time() - t0
        n = args.batches * args.rounds
        print(f"pair_negatives {pairs}: {rows / len(batches):.0f} rows a batch, user tower on "
              f"{users / rows:.2f} of them; CPU ms/step shared {cpu['shared'] / n * 1e3:.2f} "
              f"(optimiser {step['shared'] / n * 1e3:.2f}), every row "
              f"{cpu['every row'] / n * 1e3:.2f} (optimiser {step['every row'] / n * 1e3:.2f}); "
              f"ratio {cpu['shared'] / cpu['every row']:.3f}; load {load_1min()}", flush=True)


if __name__ == "__main__":
    main()
