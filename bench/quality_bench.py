"""Audience quality: the default preset beside popularity and EASE, on several data shapes.

    OMP_NUM_THREADS=1 python bench/quality_bench.py [--seeds 42 1 2] [--protocols L A]
        [--candidates] [--datasets ml-100k demo latest-small many-short]

For each dataset (ML-100K from ../shared when present, else skipped with a message; the
synthetic demo; synthetic sets shaped like other MovieLens releases, ``synthetic.SHAPES``)
and each protocol, it trains the CLI's default (the ``audience`` preset) and reports
item->user and user->item recall@50 (micro) on the test, next to popularity and EASE fitted on
the same split in the same run, with the **validation** figure (same rule inside the past)
that every choice is made on. ``--candidates`` also trains the candidate settings the preset
was chosen from (``CANDIDATES``): the choice is the one with the best mean validation recall
over every dataset and protocol; test figures are printed, never used to choose.

Threads are pinned to 1 (torch and BLAS). Prints Markdown tables and writes
bench/out/quality_bench.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dssm_core import movielens, pipeline, synthetic  # noqa: E402
from dssm_core.config import preset  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_model  # noqa: E402

torch.set_num_threads(1)
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"

#: Settings the audience preset was chosen from (overrides of the "audience" preset).
CANDIDATES = {
    "before: 4 popularity-drawn item negatives": {
        "negatives_by": "popularity", "explicit_negatives": 4, "pair_negatives": 0,
        "refit": False},
    "2 uniform item + 4 random-pair negatives, refit": {
        "negatives_by": "uniform", "explicit_negatives": 2, "pair_negatives": 4,
        "refit": True},
    "4 uniform item + 4 random-pair negatives, refit": {
        "negatives_by": "uniform", "explicit_negatives": 4, "pair_negatives": 4,
        "refit": True},
}
FIGS = ("i2u_recall@50", "u2i_recall@50")


def _datasets(names: list[str]):
    for name in names:
        if name == "ml-100k":
            if not ML100K.exists():
                print(f"skipping ml-100k: {ML100K} is absent", file=sys.stderr)
                continue
            yield name, movielens.load(ML100K)
        else:
            yield name, synthetic.shaped(name)


#: implicit ALS settings tried on validation: (factors, regularization); 15 iterations,
#: confidence 1 + ALPHA * x on the binary past matrix.
ALS_GRID = ((64, 0.01), (64, 0.1), (128, 0.1), (128, 1.0))
ALS_ALPHA = 10.0


def _als_fit(past, factors: int, reg: float, seed: int):
    """implicit ALS on the binary ``past`` -> its factors as an evaluation scorer."""
    from implicit.cpu.als import AlternatingLeastSquares
    from dssm_core.evaluation import VectorScorer

    model = AlternatingLeastSquares(factors=factors, regularization=reg, iterations=15,
                                    alpha=ALS_ALPHA, random_state=seed, num_threads=1,
                                    calculate_training_loss=False)
    model.fit(past.tocsr().astype(np.float32), show_progress=False)
    return VectorScorer(model.user_factors, model.item_factors)


def als_peer(ds, r, seed: int) -> dict | None:
    """implicit ALS beside the run when the package is installed: its setting chosen from
    ``ALS_GRID`` on the run's validation question (fitted on that question's past), refitted
    on the test question's past. -> summary-style keys (``baseline_als_…``, ``val_…``) or
    None when implicit is absent."""
    try:
        import implicit  # noqa: F401
    except ImportError:
        return None
    from dssm_core import evaluation
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        val_q = pipeline.validation_question(ds, r.split)
        test_q = pipeline.test_question(ds, r.split, r.cfg)
        best, best_fig, best_score = None, None, -1.0
        for factors, reg in ALS_GRID:
            fig = evaluation.ask(val_q, {"als": _als_fit(val_q.past, factors, reg, seed)},
                                 ks=(50,), shares=(), prefix="val_")
            score = evaluation.recall_score(fig, prefix="val_", tag="baseline_als_")
            if score is not None and score > best_score:
                best, best_fig, best_score = (factors, reg), fig, score
        assert best is not None
        out = dict(best_fig)
        out.update(evaluation.ask(test_q, {"als": _als_fit(test_q.past, *best, seed)},
                                  ks=(50,), shares=()))
    out["als_setting"] = {"factors": best[0], "regularization": best[1]}
    return out


def _row(s: dict, prefix: str = "") -> dict:
    out = {}
    for tag, who in (("", "model"), ("baseline_popularity_", "popularity"),
                     ("baseline_ease_", "ease"), ("baseline_als_", "als")):
        for f in FIGS:
            out[f"{who} {f}"] = s.get(f"{prefix}{tag}{f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--protocols", nargs="+", default=["L", "A"])
    ap.add_argument("--datasets", nargs="+",
                    default=["ml-100k", "demo", "latest-small", "many-short"])
    ap.add_argument("--candidates", action="store_true",
                    help="train every candidate setting instead (first seed only)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality_bench.json"))
    args = ap.parse_args()

    env = {"cpu": cpu_model(), "threads": 1, "loadavg_start": os.getloadavg(),
           "torch": torch.__version__}
    results = []
    for ds_name, ds in _datasets(args.datasets):
        for protocol in args.protocols:
            runs = [("default", None, s) for s in args.seeds]
            if args.candidates:       # the choice: candidates only, first seed
                runs = [(label, over, args.seeds[0]) for label, over in CANDIDATES.items()]
            for label, over, seed in runs:
                cfg = preset("audience", protocol=protocol, seed=seed, **(over or {}))
                t0 = time.perf_counter()
                r = pipeline.train(ds, cfg)
                s = dict(r.summary)
                als = als_peer(ds, r, seed)
                if als is not None:
                    s.update(als)
                rec = {"dataset": ds_name, "protocol": protocol, "run": label, "seed": seed,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "best_epoch": s["best_epoch"], "ease_lambda": s.get("ease_lambda"),
                       "tune_trials": s.get("tune_trials"), "tune_choice": s.get("tune_choice"),
                       "als_setting": s.get("als_setting"),
                       "test": _row(s), "val": _row(s, "val_"),
                       "test_extra": {k: s.get(k) for k in (
                           "i2u_recall@1%", "i2u_recall@5%", "i2u_macro_recall@50",
                           "baseline_ease_i2u_recall@1%", "baseline_popularity_i2u_recall@1%")},
                       "loadavg": os.getloadavg()}
                results.append(rec)
                print(json.dumps(rec), flush=True)
    env["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "results": results}, indent=1))
    _print_tables(env, results)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print_tables(env: dict, results: list[dict]) -> None:
    print(f"\nCPU: {env['cpu']}; 1 thread; load average at start "
          f"{env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f}\n")
    try:
        import implicit  # noqa: F401
        print(f"(implicit {implicit.__version__} ALS: setting chosen on validation from "
              f"{ALS_GRID}, alpha {ALS_ALPHA:g})\n")
    except ImportError:
        print("(implicit ALS: the `implicit` package is not installed here; skipped)\n")
    print("| dataset | protocol | seeds | model i2u | EASE i2u | ALS i2u | pop i2u | model u2i "
          "| EASE u2i | ALS u2i | pop u2i | val model i2u / u2i | val EASE i2u / u2i "
          "| val ALS i2u / u2i | s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["dataset"], r["protocol"]) for r in results},
                  key=lambda k: (k[0], k[1]))
    for ds, pr in keys:
        rs = [r for r in results if r["dataset"] == ds and r["protocol"] == pr
              and r["run"] == "default"]
        if not rs:
            continue
        m = {k: _mean([r["test"][k] for r in rs]) for k in rs[0]["test"]}
        v = {k: _mean([r["val"][k] for r in rs]) for k in rs[0]["val"]}
        m = {k: m.get(k) for k in _row({})} | m
        v = {k: v.get(k) for k in _row({})} | v
        print(f"| {ds} | {pr} | {len(rs)} | {_f(m['model i2u_recall@50'])} | "
              f"{_f(m['ease i2u_recall@50'])} | {_f(m['als i2u_recall@50'])} | "
              f"{_f(m['popularity i2u_recall@50'])} | "
              f"{_f(m['model u2i_recall@50'])} | {_f(m['ease u2i_recall@50'])} | "
              f"{_f(m['als u2i_recall@50'])} | "
              f"{_f(m['popularity u2i_recall@50'])} | {_f(v['model i2u_recall@50'])} / "
              f"{_f(v['model u2i_recall@50'])} | {_f(v['ease i2u_recall@50'])} / "
              f"{_f(v['ease u2i_recall@50'])} | {_f(v['als i2u_recall@50'])} / "
              f"{_f(v['als u2i_recall@50'])} | {_mean([r['seconds'] for r in rs]):.0f} |")
    cands = [r for r in results if r["run"] != "default"]
    if cands:
        print("\nCandidates (first seed), VALIDATION mean of i2u and u2i recall@50 "
              "(the choice is made on this column's mean over datasets):\n")
        print("| candidate | " + " | ".join(f"{d} {p}" for d, p in keys) + " | mean |")
        print("|---|" + "---|" * (len(keys) + 1))
        for label in CANDIDATES:
            cells = []
            for d, p in keys:
                r = next((r for r in cands if r["run"] == label and r["dataset"] == d
                          and r["protocol"] == p), None)
                cells.append(None if r is None else _mean(
                    [r["val"]["model i2u_recall@50"], r["val"]["model u2i_recall@50"]]))
            print(f"| {label} | " + " | ".join(_f(c) for c in cells) + f" | {_f(_mean(cells))} |")


if __name__ == "__main__":
    main()
