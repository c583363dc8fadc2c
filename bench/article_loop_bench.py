"""Training loop speed: the article's loop against ours, same model, same arrays, one run.

    OMP_NUM_THREADS=1 python bench/article_loop_bench.py [--data ../shared/data/ml-100k]
        [--epochs 2] [--repeats 3]

On ML-100K (protocol T training rows, features exactly as ``pipeline.train`` builds them) it
trains, in one process and for the same fixed number of epochs (no early stopping):

(a) the article's training loop (``BaseTower.fit``, section 3 of the article) re-created
    faithfully around OUR ``DSSM`` with the ``article`` preset's sizes: every feature array
    concatenated into one float tensor X, ``TensorDataset`` + ``DataLoader(shuffle=True,
    batch_size=256)``, each batch ``.float()``-converted and unpacked per feature by slicing
    (as ``input_from_feature_columns`` does), sigmoid output, ``binary_cross_entropy(...,
    reduction='sum')`` plus the L2 term over every embedding parameter recomputed each step
    (``get_regularization_loss``, l2 = 1e-6), ``.item()`` of both losses, backward, Adam step,
    and the per-batch ``roc_auc_score`` and accuracy on the batch's numpy predictions (the
    article compiles with ``metrics=['auc', 'accuracy']``);
(b) ``dssm_core.training.fit`` with the ``article`` preset on the same arrays and model sizes,
    as it runs by default (``precision="auto"``: bfloat16 matrix products where the CPU has
    them natively, else float32);
(b32) the same with ``precision="float32"`` (what the loop alone buys);
(c) ``dssm_core.training.fit`` with the ``default`` preset (``precision="auto"``).

Efficiency: the machine's matmul GFLOP/s is measured in the same process (one thread;
float32 and bfloat16; at the article towers' own shape, a 256 x 300 by 300 x 300 product, and
at 1024^3), and each loop's achieved GFLOP/s = samples/s x ``model.flops_per_sample`` (linear
layers, forward + backward = 3 x forward) is stated against it.

The three loops run back to back ``--repeats`` times (fresh, identically seeded models each
round) and the table shows each loop's median round, since shared CPUs are noisy.
Reported: training samples per second = training rows x epochs / seconds spent in the
optimisation loop (validation excluded; none is run), and (b)/(a), (c)/(a). Threads are pinned
to 1 (torch and BLAS). Prints a Markdown table and writes JSON to
bench/out/article_loop_bench.json.
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
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.metrics import accuracy_score, roc_auc_score  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dssm_core import pipeline, training  # noqa: E402
from dssm_core.config import PRESETS, TrainConfig  # noqa: E402
from dssm_core.dataset import Dataset  # noqa: E402
from dssm_core.features import DenseFeature, Feature, SparseFeature  # noqa: E402
from dssm_core.model import DSSM, flops_per_sample  # noqa: E402
from dssm_core.training import resolve_precision  # noqa: E402

torch.set_num_threads(1)

#: The article's DSSM default: ``l2_reg_embedding=1e-6`` on every embedding table.
ARTICLE_L2_EMBEDDING = 1e-6
#: The article's ``fit`` default batch size (also the ``article`` preset's).
ARTICLE_BATCH_SIZE = 256


@dataclass
class Measured:
    """One training run: rows per epoch, epochs and the seconds of the optimisation loop."""

    label: str
    rows: int
    epochs: int
    seconds: float
    flops_per_sample: int = 0
    precision: str = "float32"

    @property
    def samples_per_second(self) -> float:
        return self.rows * self.epochs / self.seconds if self.seconds > 0 else 0.0


def features(ds: Dataset, cfg: TrainConfig) -> tuple[dict[str, np.ndarray], Any]:
    """Protocol-T training rows encoded exactly as ``pipeline.train`` does, and the encoder."""
    sp = pipeline.split(ds, cfg)
    enc = pipeline.make_encoder(cfg).fit(ds, sp.train, pool=sp.pool)
    neg = int(cfg.negatives) if ds.implicit else int(cfg.explicit_negatives)
    x_train = enc.transform_events(ds, sp.train, pool=sp.pool, negatives=neg, seed=cfg.seed,
                                   known=sp.known)
    return x_train, enc


# ------------------------------------------------------------------- (a) the article's loop
def pack(x: dict[str, np.ndarray], specs: list[Feature]
         ) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """The article's ``fit`` input: every feature (1-D arrays as one column) concatenated
    along the last axis into one array, and ``feature_index`` name -> (start, end) column."""
    cols: list[np.ndarray] = []
    index: dict[str, tuple[int, int]] = {}
    start = 0
    for s in specs:
        a = np.asarray(x[s.name])
        if a.ndim == 1:
            a = np.expand_dims(a, axis=1)
        cols.append(a)
        index[s.name] = (start, start + a.shape[1])
        start += a.shape[1]
    return np.concatenate(cols, axis=-1), index


def unpack(X: Tensor, specs: list[Feature], index: dict[str, tuple[int, int]]
           ) -> dict[str, Tensor]:
    """``input_from_feature_columns``: slice each feature's columns out of the float batch,
    ``.long()`` for ids (a sparse id is one column), floats as they are for dense values."""
    batch: dict[str, Tensor] = {}
    for s in specs:
        a, b = index[s.name]
        if isinstance(s, DenseFeature):
            batch[s.name] = X[:, a:b]
        elif isinstance(s, SparseFeature):
            batch[s.name] = X[:, a:b].long().squeeze(1)
        else:
            batch[s.name] = X[:, a:b].long()
    return batch


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every embedding table's weight (the article regularises user and item tables)."""
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            seen.setdefault(id(m.weight), m.weight)
    return list(seen.values())


def regularization_loss(weights: list[nn.Parameter], l2: float) -> Tensor:
    """``BaseTower.get_regularization_loss`` with l1 = 0."""
    total = torch.zeros((1,))
    for w in weights:
        total += torch.sum(l2 * torch.square(w))
    return total


def article_loop(model: DSSM, x: dict[str, np.ndarray], cfg: TrainConfig, epochs: int
                 ) -> Measured:
    """``BaseTower.fit`` (verbose > 0, no validation) around our model; times the epochs."""
    specs = list(model.user_specs + model.item_specs)
    X, index = pack(x, specs)
    y = np.asarray(x["label"], dtype=np.float32)
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    loader = DataLoader(dataset=data, shuffle=True, batch_size=ARTICLE_BATCH_SIZE)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)   # article: 0.001
    loss_func = F.binary_cross_entropy
    reg_weights = embedding_parameters(model)
    aux_loss = torch.zeros((1,))

    def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
        try:                                      # a batch of one class (as DeepCTR does)
            return float(roc_auc_score(y_true, y_score))
        except ValueError:
            return float("nan")

    metrics = {"auc": auc,
               "acc": lambda t, p: float(accuracy_score(t, np.where(p > 0.5, 1, 0)))}
    sample_num = len(data)
    seconds = 0.0
    torch.manual_seed(int(cfg.seed))
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        loss_epoch = 0.0
        total_loss_epoch = 0.0
        train_result: dict[str, list[float]] = {}
        for _, (x_train, y_train) in enumerate(loader):
            xb = x_train.float()
            yb = y_train.float()
            y_pred = torch.sigmoid(model(unpack(xb, specs, index))).squeeze()
            optim.zero_grad()
            loss = loss_func(y_pred, yb.squeeze(), reduction="sum")
            reg_loss = regularization_loss(reg_weights, ARTICLE_L2_EMBEDDING)
            total_loss = loss + reg_loss + aux_loss
            loss_epoch += loss.item()
            total_loss_epoch += total_loss.item()
            total_loss.backward()
            optim.step()
            for name, fn in metrics.items():
                train_result.setdefault(name, []).append(
                    fn(yb.cpu().data.numpy(), y_pred.cpu().data.numpy().astype("float64")))
        seconds += time.perf_counter() - t0
        print(f"  (a) epoch {epoch + 1}: loss {total_loss_epoch / sample_num:.4f} "
              f"auc {np.nanmean(train_result['auc']):.4f} "
              f"acc {np.mean(train_result['acc']):.4f}", file=sys.stderr, flush=True)
    return Measured("(a) article's loop (DataLoader, per-batch sklearn metrics), article sizes",
                    sample_num, epochs, seconds, flops_per_sample(model), "float32")


# ---------------------------------------------------------------------------- (b), (c) ours
def our_fit(label: str, x: dict[str, np.ndarray], enc: Any, cfg: TrainConfig) -> Measured:
    """``training.fit`` without validation data (nothing but the optimisation is timed)."""
    model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
    fr = training.fit(model, x, None, cfg)
    for h in fr.history:
        print(f"  {label[:3]} epoch {h['epoch']}: loss {h['train_loss']:.4f} "
              f"auc {h['train_auc']:.4f}", file=sys.stderr, flush=True)
    return Measured(label, fr.train_rows, len(fr.history), fr.train_seconds,
                    flops_per_sample(model), fr.precision)


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Best-of-5 GFLOP/s of ``torch.mm`` (m x k) @ (k x n) on this thread."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    reps = 1
    while True:                                   # calibrate to ~seconds / 5 per trial
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        dt = time.perf_counter() - t
        if dt > seconds / 5 or reps > 1 << 20:
            break
        reps *= 2
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2.0 * m * k * n / best / 1e9


def peaks() -> dict[str, float]:
    """Measured matmul GFLOP/s: float32 and bfloat16, the towers' shape and 1024^3."""
    return {f"{name} {shape}": matmul_gflops(*dims, dtype)
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
            for shape, dims in (("256x300x300", (256, 300, 300)),
                                ("1024^3", (1024, 1024, 1024)))}


def median(runs: list[Measured]) -> Measured:
    """The run of median training seconds (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def markdown(runs: list[Measured], peak: dict[str, float]) -> str:
    """The Markdown table; ratios are against the first run, (a); efficiency against the
    measured matmul GFLOP/s at the towers' shape in the loop's precision."""
    base = runs[0].samples_per_second
    out = ["| training loop | precision | rows x epochs | train seconds | samples/s | vs (a) "
           "| MFLOP/sample | achieved GFLOP/s | of measured matmul peak |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ratio = r.samples_per_second / base if base > 0 else float("nan")
        achieved = r.samples_per_second * r.flops_per_sample / 1e9
        top = peak.get(f"{r.precision} 256x300x300", float("nan"))
        out.append(f"| {r.label} | {r.precision} | {r.rows:,} x {r.epochs} | {r.seconds:.1f} | "
                   f"{r.samples_per_second:,.0f} | {ratio:.2f}x | "
                   f"{r.flops_per_sample / 1e6:.2f} | {achieved:.1f} | {achieved / top:.0%} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"),
                   help="ML-100K folder (with u.data)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per loop (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of (a), (b), (c) back to back; the table shows each loop's "
                        "median round (default 3; shared CPUs are noisy)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        p.error("--epochs and --repeats must be >= 1")
    if not Path(args.data, "u.data").exists():
        print(f"ML-100K not found at {args.data} (no u.data): nothing to measure. "
              "Pass --data DIR.", file=sys.stderr)
        return 2
    from dssm_core import movielens

    ds = movielens.load(args.data)
    # fixed epochs, early stopping off, one thread
    art = PRESETS["article"].with_(epochs=args.epochs, early_stopping_patience=0, num_threads=1)
    dflt = PRESETS["default"].with_(epochs=args.epochs, early_stopping_patience=0,
                                    num_threads=1)
    art32 = art.with_(precision="float32")
    x_art, enc_art = features(ds, art)
    x_def, enc_def = features(ds, dflt)
    print(f"ML-100K protocol T: {len(x_art['label']):,} training rows, "
          f"{args.epochs} epochs each", file=sys.stderr, flush=True)

    rounds: list[list[Measured]] = []
    for r in range(args.repeats):            # (a), (b), (c) back to back, fresh models
        print(f"round {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        rounds.append([
            article_loop(DSSM(enc_art.user_specs_, enc_art.item_specs_, art), x_art, art,
                         args.epochs),
            our_fit("(b) ours (`training.fit`), `article` preset", x_art, enc_art, art),
            our_fit("(b32) ours, `article` preset, `precision=\"float32\"`", x_art, enc_art,
                    art32),
            our_fit("(c) ours (`training.fit`), `default` preset", x_def, enc_def, dflt),
        ])
    runs = [median(list(col)) for col in zip(*rounds)]
    peak = peaks()
    table = markdown(runs, peak)
    a, b, b32, c = (r.samples_per_second for r in runs)
    meta = {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "epochs": args.epochs, "repeats": args.repeats,
            "auto_precision": resolve_precision("auto"), "matmul_gflops": peak}
    result = {"meta": meta,
              "runs": [{"label": r.label, "rows": r.rows, "epochs": r.epochs,
                        "train_seconds": r.seconds,
                        "samples_per_second": r.samples_per_second} for r in runs],
              "rounds": [[{"label": r.label, "train_seconds": r.seconds,
                           "samples_per_second": r.samples_per_second} for r in rnd]
                         for rnd in rounds],
              "ratio_b_over_a": b / a, "ratio_b32_over_a": b32 / a, "ratio_c_over_a": c / a}
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "article_loop_bench.json").write_text(json.dumps(result, indent=2))
    print(table)
    print("\nmeasured matmul GFLOP/s (1 thread): "
          + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    for i, rnd in enumerate(rounds, 1):
        sa, sb, sb32, sc = (r.samples_per_second for r in rnd)
        print(f"round {i}: samples/s (a) {sa:,.0f}  (b) {sb:,.0f}  (b32) {sb32:,.0f}  "
              f"(c) {sc:,.0f}  (b)/(a) {sb / sa:.2f}x  (b32)/(a) {sb32 / sa:.2f}x  "
              f"(c)/(a) {sc / sa:.2f}x")
    print(f"\nmedian rounds: (b)/(a) = {b / a:.2f}x, (b32)/(a) = {b32 / a:.2f}x, "
          f"(c)/(a) = {c / a:.2f}x")
    print(f"\ncommand: OMP_NUM_THREADS=1 python bench/article_loop_bench.py "
          f"--data {args.data} --epochs {args.epochs} --repeats {args.repeats}")
    print(f"{meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
