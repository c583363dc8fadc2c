"""Issue 11 end to end: load -> encode -> 1 epoch -> evaluate -> embed -> store, at scale.

    OMP_NUM_THREADS=2 python bench/scale_bench.py [--interactions 2000000] [--users N]
        [--items N] [--threads 2] [--batch-size 4096] [--workdir /tmp/scale_bench]

A synthetic dataset in ML-25M's shape (``synthetic.LARGE_SHAPES["ml-25m"]``: 162k users, 59k
items, 25 years), scaled to ``--interactions`` with the users and items in proportion unless
given, is generated and stored in a fresh SQLite store by a child process (so the peak RSS
printed is the training process's alone; the "load" figure is reading it back, as the job
does) and trained by ``pipeline.run_training`` with the CLI's default preset cut to what the
issue's goal names: one epoch, no tuning trials, no refit, no maps. Every stage's wall time
comes from the run's own progress callback; peak RSS from ``getrusage``. Prints one JSON line
and a Markdown row with the CPU model and load average; writes bench/out/scale_bench.json.

The parts have their own benches: bench/scale_encode.py (as-of encoding events/s),
bench/scale_train.py (samples/s against the user table's size), bench/scale_eval.py
(evaluation through retrieval.top_k_rows), bench/eval_rank_bench.py (evaluation's cut-off
tests), bench/scale_audience.py (10M-user audiences).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dssm_core import pipeline, synthetic  # noqa: E402
from dssm_core.config import preset  # noqa: E402
from dssm_core.store import Store  # noqa: E402
from machine import cpu_model  # noqa: E402


def peak_rss_gb() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_now_gb() -> float:
    """This process's resident set now (Linux: /proc/self/statm), 0.0 where unreadable."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def generate(work: Path, n_users: int, n_items: int, interactions: int, days: int
             ) -> dict[str, object]:
    """The synthetic dataset, stored in ``work``/store.db (the parent's input)."""
    t = time.perf_counter()
    ds = synthetic.generate_large(n_users, n_items, interactions, days=days)
    t_generate = time.perf_counter() - t
    store = Store(f"sqlite:///{work / 'store.db'}")
    t = time.perf_counter()
    dataset_id = store.add_dataset(ds, "scale bench")
    t_add = time.perf_counter() - t
    store.dispose()
    return {"dataset_id": dataset_id, "generate_s": round(t_generate, 1),
            "store_s": round(t_add, 1), "generator_peak_rss_gb": round(peak_rss_gb(), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="rows per batch (default: the preset's)")
    ap.add_argument("--workdir", default="/tmp/scale_bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale_bench.json"))
    ap.add_argument("--generate-only", action="store_true",
                    help="(internal) generate and store the dataset in --workdir, print its "
                         "id and timings as JSON, exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    shape = synthetic.LARGE_SHAPES["ml-25m"]
    share = args.interactions / shape["n_interactions"]
    n_users = args.users or max(100, round(shape["n_users"] * share))
    n_items = args.items or max(100, round(shape["n_items"] * share))
    work = Path(args.workdir)
    if args.generate_only:
        print(json.dumps(generate(work, n_users, n_items, args.interactions, shape["days"])))
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load0 = os.getloadavg()

    # the dataset is generated and stored by a child process: this process starts from the
    # store, as a training job does, so its peak RSS is the product's alone
    child = subprocess.run(
        [sys.executable, __file__, "--generate-only", "--interactions", str(args.interactions),
         "--users", str(n_users), "--items", str(n_items), "--workdir", str(work)],
        check=True, capture_output=True, text=True)
    made = json.loads(child.stdout.strip().splitlines()[-1])
    dataset_id, t_generate, t_add = made["dataset_id"], made["generate_s"], made["store_s"]
    store = Store(f"sqlite:///{work / 'store.db'}")

    cfg = preset("audience").with_(epochs=1, tune="none", refit=False,
                                   num_threads=args.threads)
    if args.batch_size:
        cfg = cfg.with_(batch_size=args.batch_size)
    marks: dict[str, list[float]] = {}
    rss_at_start: dict[str, float] = {}       # resident GB when each stage first reports
    peak_by_stage: dict[str, float] = {}      # the process's peak so far, at each stage's end
    t_run = time.perf_counter()

    def progress(stage: str, fraction: float, message: str | None = None) -> None:
        now = time.perf_counter() - t_run
        first = stage not in marks
        span = marks.setdefault(stage, [now, now])
        span[1] = now
        if first:
            rss_at_start[stage] = round(rss_now_gb(), 2)
        peak_by_stage[stage] = round(peak_rss_gb(), 2)
        if first or fraction >= 1.0 or int(now) % 60 == 0:
            print(f"  {now:8.1f}s {stage} {fraction:.0%} rss now {rss_now_gb():.2f} GB, "
                  f"peak {peak_rss_gb():.2f} GB", file=sys.stderr, flush=True)

    # where the memory peaks: a sampler thread reads the resident set every 0.2 s and keeps,
    # per 10-second window, the largest reading and the stage/fraction reported last
    last = {"stage": "start", "fraction": 0.0}
    windows: dict[int, list] = {}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            now = time.perf_counter() - t_run
            rss = rss_now_gb()
            w = windows.setdefault(int(now // 10), [0.0, "", 0.0])
            if rss > w[0]:
                windows[int(now // 10)] = [rss, last["stage"], last["fraction"]]

    def tracked(stage: str, fraction: float, message: str | None = None) -> None:
        last["stage"], last["fraction"] = stage, fraction
        progress(stage, fraction, message)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run_id = pipeline.run_training(store, dataset_id, cfg, project=False, progress=tracked)
    total = time.perf_counter() - t_run
    sampling.set()
    sampler.join()
    top = sorted(windows.items(), key=lambda kv: -kv[1][0])[:8]
    print("  highest resident sets (10 s windows): " + "; ".join(
        f"{w * 10}-{w * 10 + 10} s {v[0]:.2f} GB in {v[1]} {v[2]:.0%}" for w, v in top),
        file=sys.stderr, flush=True)
    run = store.get_run(run_id)
    summary = run.summary
    stages = {k: round(v[1] - v[0], 1) for k, v in marks.items()}
    result = {
        "interactions": args.interactions, "users": n_users, "items": n_items,
        "threads": args.threads, "batch_size": cfg.batch_size,
        "generate_s": t_generate, "store_dataset_s": t_add,
        "generator_peak_rss_gb": made["generator_peak_rss_gb"],
        "run_s": round(total, 1), "stages_s": stages, "peak_rss_gb": round(peak_rss_gb(), 2),
        "rss_at_stage_start_gb": rss_at_start, "peak_rss_by_stage_end_gb": peak_by_stage,
        "highest_rss_windows": [{"from_s": w * 10, "rss_gb": round(v[0], 2), "stage": v[1],
                                 "fraction": round(v[2], 3)} for w, v in top],
        "status": str(run.status),
        "train_samples_per_second": summary.get("train_samples_per_second"),
        "test_i2u_recall@50": summary.get("i2u_recall@50"),
        "test_u2i_recall@50": summary.get("u2i_recall@50"),
        "baseline_ease_i2u_recall@50": summary.get("baseline_ease_i2u_recall@50"),
        "cpu": cpu_model(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
    }
    store.dispose()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"| {args.interactions:,} | {n_users:,} x {n_items:,} | {args.threads} | "
          f"{result['run_s']} | {stages} | {result['peak_rss_gb']} | "
          f"{result['cpu']}, load {load0[0]:.1f} -> {result['loadavg_end'][0]:.1f} |")


if __name__ == "__main__":
    main()
