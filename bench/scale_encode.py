"""As-of feature encoding and the streaming epoch at scale (issue 11, item 1).

Run: OMP_NUM_THREADS=1 python bench/scale_encode.py [--events 1000000 10000000]
     [--old /work/main] [--epoch-events 2000000]

Per size (each in its own process, so that peak RSS is that size's): a synthetic log in
ML-25M's shape scaled to the size (162k users, 59k items and 25M events, in proportion;
``synthetic.generate_large``), protocol A's split (train 70 %, pool = the first 80 %), the
``audience`` preset's encoder. Figures: generation, ``EventLog.of``, ``FeatureEncoder.fit``,
the context (one sorted pass), as-of encoding of the training events (pool events, no search)
and of the test events (searched) in events/s on one core, a streaming epoch (4 uniform item
negatives per event, batches of 1024 rows, features and tensors but no model step) in rows/s,
and the peak RSS. ``--old DIR``: the same encoding of a 200k-event subset with the encoder of
another checkout (e.g. the main branch), in the same process.
"""
from __future__ import annotations

import argparse
import importlib
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.machine import cpu_model, load_1min  # noqa: E402

ML25M = (162_000, 59_000, 25_000_000)
CHUNK = 65_536


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _say(what: str, seconds: float, extra: str = "") -> None:
    print(f"  {what}: {seconds:.2f} s{extra} (load {load_1min():.2f}, peak RSS "
          f"{_rss_gb():.2f} GB)", flush=True)


def one_size(n_events: int, old: str | None, epoch_events: int) -> None:
    import torch

    from dssm_core import synthetic, training
    from dssm_core.config import PRESETS
    from dssm_core.events import EventLog
    from dssm_core.model import DSSM
    from dssm_core.pipeline import make_encoder
    from dssm_core.stream import EventBatches

    torch.set_num_threads(1)
    users = max(1_000, ML25M[0] * n_events // ML25M[2])
    items = max(500, ML25M[1] * n_events // ML25M[2])
    print(f"{n_events:,} events, {users:,} users, {items:,} items; {cpu_model()}, 1 thread",
          flush=True)
    t = time.perf_counter()
    ds = synthetic.generate_large(users, items, n_events, days=25 * 365, seed=0)
    _say("generate", time.perf_counter() - t)
    n = len(ds.interactions)
    train, pool, test = np.arange(int(n * 0.7)), np.arange(int(n * 0.8)), np.arange(int(n * 0.8), n)
    cfg = PRESETS["audience"]

    t = time.perf_counter()
    elog = EventLog.of(ds)
    _say("EventLog.of", time.perf_counter() - t)
    t = time.perf_counter()
    enc = make_encoder(cfg).fit(ds, train, pool=pool, event_log=elog)
    _say("FeatureEncoder.fit (context included)", time.perf_counter() - t)
    t = time.perf_counter()
    ctx = enc.context(ds, pool, event_log=elog)
    _say("context (one sorted pass)", time.perf_counter() - t)

    for label, rows in (("training events (pool, own time)", train),
                        ("test events (searched)", test)):
        t = time.perf_counter()
        for lo in range(0, len(rows), CHUNK):
            enc.encode_rows(ctx, rows[lo:lo + CHUNK])
        dt = time.perf_counter() - t
        _say(f"as-of encoding, {label}", dt, f" = {len(rows) / dt:,.0f} events/s")

    t = time.perf_counter()
    sampler = enc.negative_sampler(elog, pool, "uniform")
    _say("negative sampler", time.perf_counter() - t)
    rows = train[:epoch_events]
    source = EventBatches(enc, ctx, rows, sampler, negatives=4, seed=1)
    specs = DSSM(enc.user_specs_, enc.item_specs_, cfg).feature_specs
    t = time.perf_counter()
    done = 0
    for batch in source.batches(0, 1024):
        _, y = training._as_tensors(batch, specs, "train", need_label=True)
        done += len(y)
    dt = time.perf_counter() - t
    _say(f"streaming epoch over {len(rows):,} events", dt,
         f" = {done / dt:,.0f} rows/s ({len(rows) / dt:,.0f} events/s)")

    if old:
        sys.path.insert(0, old)
        for name in [m for m in sys.modules if m == "dssm_core" or m.startswith("dssm_core.")]:
            del sys.modules[name]
        old_encoding = importlib.import_module("dssm_core.encoding")
        sub = train[:200_000]
        t = time.perf_counter()
        old_enc = old_encoding.FeatureEncoder(history_len=cfg.history_len,
                                              label_threshold=cfg.label_threshold,
                                              embedding_dim=cfg.embedding_dim)
        old_enc.fit(ds, train, pool=pool)
        _say(f"old FeatureEncoder.fit ({old})", time.perf_counter() - t)
        t = time.perf_counter()
        old_enc.transform_events(ds, sub, pool=pool)
        dt = time.perf_counter() - t
        _say(f"old as-of encoding, {len(sub):,} training events", dt,
             f" = {len(sub) / dt:,.0f} events/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--old", default=None, help="another checkout's root, for the old encoder")
    ap.add_argument("--epoch-events", type=int, default=2_000_000,
                    help="events of the streaming epoch (at most the training events)")
    args = ap.parse_args()
    if len(args.events) == 1:
        one_size(args.events[0], args.old, args.epoch_events)
        return
    for n in args.events:               # one process per size: its own peak RSS
        cmd = [sys.executable, __file__, "--events", str(n), "--epoch-events",
               str(args.epoch_events)] + (["--old", args.old] if args.old else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
