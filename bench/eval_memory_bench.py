"""Issue 11: peak RSS of a training run's evaluation stage, part by part.

    OMP_NUM_THREADS=1 python bench/eval_memory_bench.py [--interactions 1000000]
        [--threads 1] [--batch-size N]

The synthetic data of bench/scale_bench.py (ML-25M's shape scaled to ``--interactions``),
trained in memory by ``pipeline.train`` with the audience preset cut as there (one epoch, no
tuning trials, no refit). A thread samples this process's resident set (/proc/self/statm)
every 20 ms and charges it to the part running: the pipeline's stages (from its progress
callback) and, within them, the evaluation's parts (wrapped here: test rows, predict, the
evaluation vectors, the peers and each EASE fit, the ranking). Prints each part's peak RSS
(GiB) and its seconds, the CPU model and the load average, one JSON line at the end.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dssm_core import encoding, evaluation, peers, pipeline, synthetic, training  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from machine import cpu_model  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_gb() -> float:
    """This process's resident set now, in GiB (2**30 bytes: the unit of scale_bench's
    "GB", which reads ``ru_maxrss`` KiB / 2**20)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**30


class Meter:
    """Peak RSS and seconds per part; the innermost part running is charged."""

    def __init__(self) -> None:
        self.stack: list[str] = ["setup"]
        self.peak: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.nbytes: dict[str, int] = {}     # size of a part's returned table of arrays
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def charge(self) -> None:
        r = rss_gb()
        with self._lock:
            for name in self.stack:          # a part's peak includes its inner parts
                self.peak[name] = max(self.peak.get(name, 0.0), r)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.charge()

    def start(self) -> "Meter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def stage(self, name: str) -> None:
        """A pipeline stage begins (replaces the previous stage, inner parts kept out)."""
        self.charge()
        with self._lock:
            self.stack = [name]

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*a: Any, **k: Any) -> Any:
            self.charge()
            with self._lock:
                key = f"{self.stack[0]}/{name}"
                self.stack.append(key)
            t = time.perf_counter()
            try:
                out = fn(*a, **k)
                if isinstance(out, dict) and out and all(hasattr(v, "nbytes")
                                                         for v in out.values()):
                    self.nbytes[key] = sum(int(v.nbytes) for v in out.values())
                return out
            finally:
                self.charge()
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
                with self._lock:
                    if key in self.stack:
                        self.stack.remove(key)
        return inner


def patch(meter: Meter) -> None:
    """Wrap the parts of the evaluation whose memory is charged separately (those that
    exist in this checkout)."""
    parts = [(encoding.FeatureEncoder, "transform_events", "test_rows (transform_events)"),
             (pipeline, "test_scores", "test_rows+predict (streamed)"),
             (training, "predict", "predict"),
             (pipeline, "eval_vectors", "eval_vectors"),
             (pipeline, "test_question", "questions"),
             (pipeline, "validation_question", "questions"),
             (pipeline, "fit_peers", "peers"),
             (peers, "gram_matrix", "ease_gram"),
             (evaluation, "ask", "ask (ranking)")]
    for owner, attr, name in parts:
        if hasattr(owner, attr):
            setattr(owner, attr, meter.wrap(name, getattr(owner, attr)))
    peers.EASE.__init__ = meter.wrap("ease_fit", peers.EASE.__init__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = synthetic.LARGE_SHAPES["ml-25m"]
    share = args.interactions / shape["n_interactions"]
    n_users = max(100, round(shape["n_users"] * share))
    n_items = max(100, round(shape["n_items"] * share))
    load0 = os.getloadavg()
    meter = Meter().start()
    patch(meter)
    meter.stage("generate")
    ds = synthetic.generate_large(n_users, n_items, args.interactions, days=shape["days"])
    cfg = preset("audience").with_(epochs=1, tune="none", refit=False,
                                   num_threads=args.threads)
    if args.batch_size:
        cfg = cfg.with_(batch_size=args.batch_size)
    t0 = time.perf_counter()
    marks: dict[str, list[float]] = {}

    def progress(stage: str, fraction: float, message: str | None = None) -> None:
        now = time.perf_counter() - t0
        if stage not in marks:
            marks[stage] = [now, now]
            meter.stage(stage)
            print(f"  {now:7.1f}s {stage} rss {rss_gb():.2f} GiB", file=sys.stderr,
                  flush=True)
        marks[stage][1] = now

    res = pipeline.train(ds, cfg, progress=progress)
    meter.stage("done")
    meter.stop()
    s = res.summary
    out = {
        "interactions": args.interactions, "users": n_users, "items": n_items,
        "threads": args.threads, "run_s": round(time.perf_counter() - t0, 1),
        "stages_s": {k: round(v[1] - v[0], 1) for k, v in marks.items()},
        "peak_rss_gib": {k: round(v, 2) for k, v in meter.peak.items()},
        "part_seconds": {k: round(v, 1) for k, v in meter.seconds.items()},
        "returned_gib": {k: round(v / 2**30, 3) for k, v in meter.nbytes.items()},
        "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "test_rows": s.get("test_rows"), "test_auc": s.get("test_auc"),
        "test_logloss": s.get("test_logloss"),
        "baseline_item_mean_test_auc": s.get("baseline_item_mean_test_auc"),
        "i2u_recall@50": s.get("i2u_recall@50"),
        "baseline_ease_i2u_recall@50": s.get("baseline_ease_i2u_recall@50"),
        "ease_lambda": s.get("ease_lambda"), "ease_note": s.get("ease_note"),
        "cpu": cpu_model(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
    }
    for k, v in out["peak_rss_gib"].items():
        print(f"{k:32s} peak {v:6.2f} GiB  {out['part_seconds'].get(k, '')}",
              file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
