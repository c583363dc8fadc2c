"""Issue 11: the validation pass's AUC and logloss at scale, in memory and time.

    python bench/metric_memory_bench.py [--rows 15000000] [--rounds 3]

The epoch's end scores every validation row (25M interactions: about 15M rows with their
negatives) and takes AUC and logloss of float32 probabilities. ``before`` is the formula the
project used until this change (float64 copies, mean ranks of tie groups, one pass over
whole arrays), kept here as the reference; ``after`` is ``training._auc_logloss`` now
(``metrics.auc`` counts U by binary search in the sorted negatives, ``metrics.logloss``
works a chunk at a time). Each runs in a fresh child process (peak RSS from ``getrusage``,
minus the process's resident set before the call), alternating, on the same seeded data with
the same share of positives and of tied scores as a validation set (probabilities in
float32). The two must give the same figures bit for bit. Prints one JSON line per round
and a Markdown row with the CPU model and load average.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu_model, load_1min  # noqa: E402


def before(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The reference: what ``training._auc_logloss`` computed before (float64 copies)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    pos = y > 0.5
    n_pos = int(pos.sum())
    auc = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * (len(y) - n_pos)))
    p = np.clip(s, 1e-7, 1.0 - 1e-7)
    return auc, float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """One positive in six (a positive and five negatives per event), float32 sigmoids."""
    rng = np.random.default_rng(0)
    y = (np.arange(rows) % 6 == 0).astype(np.float32)
    logits = rng.normal(size=rows).astype(np.float32) + 1.2 * y
    return y, (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def child(which: str, rows: int) -> None:
    from dssm_core import training

    y, p = data(rows)
    rss0 = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    figures = before(y, p) if which == "before" else training._auc_logloss(y, p)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"which": which, "seconds": round(seconds, 3),
                      "extra_peak_gb": round((max(peak, peak0) - rss0) / 2**30, 3),
                      "auc": figures[0], "logloss": figures[1]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=15_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rows)
        return
    load0 = load_1min()
    results: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for which in (("before", "after") if r % 2 == 0 else ("after", "before")):
            out = subprocess.run([sys.executable, __file__, "--child", which, "--rows",
                                  str(args.rows)], check=True, capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[which].append(res)
            print(json.dumps(res), flush=True)
    same = all(a["auc"] == b["auc"] and a["logloss"] == b["logloss"]
               for a, b in zip(results["before"], results["after"]))
    med = {k: (float(np.median([x["seconds"] for x in v])),
               float(np.median([x["extra_peak_gb"] for x in v]))) for k, v in results.items()}
    print(f"| {args.rows:,} rows | before {med['before'][0]:.2f} s, +{med['before'][1]:.2f} GB "
          f"| after {med['after'][0]:.2f} s, +{med['after'][1]:.2f} GB | same figures: {same} "
          f"| {cpu_model()}, load {load0} -> {load_1min()} |")


if __name__ == "__main__":
    main()
