"""Model quality and speed: presets x objectives x protocols, baselines, in one run.

    OMP_NUM_THREADS=1 python bench/train_bench.py [--data ../shared/data/ml-100k] [--quick]

For each dataset (ML-100K from ../shared when present, else skipped with a message; the
synthetic demo always) and each protocol (T, L) it trains the ``article`` preset, the
``default`` preset with both objectives and the ``audience`` preset, and reports test AUC /
logloss, item->user and user->item recall@10/50/100, seconds per epoch and training samples
per second, next to the popularity and item-mean baselines measured on the same split in the
same run. Threads are pinned to 1 (torch and BLAS). Prints a Markdown table and writes JSON
to bench/out/train_bench.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dssm_core import pipeline, synthetic  # noqa: E402
from dssm_core.config import preset  # noqa: E402

torch.set_num_threads(1)

#: (label, preset, overrides)
RUNS = (
    ("article (pointwise)", "article", {}),
    ("default pointwise", "default", {"objective": "pointwise"}),
    ("default inbatch", "default", {"objective": "inbatch"}),
    ("audience (interacted + negatives)", "audience", {}),
)
COLUMNS = ("test_auc", "test_logloss", "i2u_recall@10", "i2u_recall@50", "i2u_recall@100",
           "u2i_recall@10", "u2i_recall@50", "u2i_recall@100", "seconds_per_epoch",
           "train_samples_per_second", "best_epoch", "epochs_run")


def _fmt(v: object, key: str) -> str:
    if v is None:
        return "-"
    if key == "train_samples_per_second":
        return f"{float(v):,.0f}"
    if key == "seconds_per_epoch":
        return f"{float(v):.2f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def bench_dataset(name: str, ds, quick: bool) -> list[dict]:
    rows: list[dict] = []
    for protocol in ("T", "L"):
        baselines: list[tuple[str, dict]] = []
        for label, preset_name, over in RUNS:
            kw = dict(over, protocol=protocol)
            if quick:
                kw["epochs"] = 2
            cfg = preset(preset_name, **kw)
            t0 = time.perf_counter()
            s = pipeline.train(ds, cfg).summary
            wall = time.perf_counter() - t0
            row = {"dataset": name, "protocol": protocol, "model": label, "wall_s": wall,
                   **{k: s.get(k) for k in COLUMNS}, "description": s["protocol_description"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            # baselines depend on the queries and test rows, which depend on the label
            # threshold and the sampled negatives: list them once per distinct setting
            if not any(_baselines(s) == _baselines(b) for _, b in baselines):
                baselines.append((label, s))
        for i, (label, s) in enumerate(baselines):
            tag = "" if i == 0 else f" (test of {label.split(' ')[0]})"
            rows.append({"dataset": name, "protocol": protocol,
                         "model": f"baseline: popularity{tag}",
                         **{k: s.get(f"baseline_popularity_{k}") for k in COLUMNS
                            if k.startswith(("i2u", "u2i"))}})
            rows.append({"dataset": name, "protocol": protocol,
                         "model": f"baseline: item mean label rate{tag}",
                         "test_auc": s.get("baseline_item_mean_test_auc"),
                         "test_logloss": s.get("baseline_item_mean_test_logloss")})
    return rows


def _baselines(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k.startswith("baseline_")}


def markdown(rows: list[dict]) -> str:
    head = ["dataset", "protocol", "model", "AUC", "logloss", "i2u R@10", "i2u R@50",
            "i2u R@100", "u2i R@10", "u2i R@50", "u2i R@100", "s/epoch", "samples/s",
            "best/run epochs"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ep = (f"{r['best_epoch']}/{r['epochs_run']}" if r.get("epochs_run") is not None
              else "-")
        cells = [r["dataset"], r["protocol"], r["model"]] + [
            _fmt(r.get(k), k) for k in COLUMNS[:-2]] + [ep]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--quick", action="store_true", help="2 epochs per model (smoke run)")
    p.add_argument("--skip-synthetic", action="store_true")
    args = p.parse_args(argv)
    rows: list[dict] = []
    if Path(args.data, "u.data").exists():
        from dssm_core import movielens

        rows += bench_dataset("ML-100K", movielens.load(args.data), args.quick)
    else:
        print(f"ML-100K not found at {args.data}: skipped", file=sys.stderr)
    if not args.skip_synthetic:
        rows += bench_dataset("synthetic demo", synthetic.generate(), args.quick)
    meta = {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpus": os.cpu_count()}
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_bench.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                         indent=2))
    print(markdown(rows))
    print(f"\n{meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
