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
(b) ``dssm_core.training.fit`` with the ``article`` preset on the same arrays and model sizes;
(c) ``dssm_core.training.fit`` with the ``default`` preset.

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
from dssm_core.model import DSSM  # noqa: E402

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
                    sample_num, epochs, seconds)


# ---------------------------------------------------------------------------- (b), (c) ours
def our_fit(label: str, x: dict[str, np.ndarray], enc: Any, cfg: TrainConfig) -> Measured:
    """``training.fit`` without validation data (nothing but the optimisation is timed)."""
    model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
    fr = training.fit(model, x, None, cfg)
    for h in fr.history:
        print(f"  {label[:3]} epoch {h['epoch']}: loss {h['train_loss']:.4f} "
              f"auc {h['train_auc']:.4f}", file=sys.stderr, flush=True)
    return Measured(label, fr.train_rows, len(fr.history), fr.train_seconds)


def median(runs: list[Measured]) -> Measured:
    """The run of median training seconds (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def markdown(runs: list[Measured]) -> str:
    """The Markdown table; ratios are against the first run, (a)."""
    base = runs[0].samples_per_second
    out = ["| training loop | rows x epochs | train seconds | samples/s | vs (a) |",
           "|---|---|---|---|---|"]
    for r in runs:
        ratio = r.samples_per_second / base if base > 0 else float("nan")
        out.append(f"| {r.label} | {r.rows:,} x {r.epochs} | {r.seconds:.1f} | "
                   f"{r.samples_per_second:,.0f} | {ratio:.1f}x |")
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
            our_fit("(c) ours (`training.fit`), `default` preset", x_def, enc_def, dflt),
        ])
    runs = [median(list(col)) for col in zip(*rounds)]
    table = markdown(runs)
    a, b, c = (r.samples_per_second for r in runs)
    meta = {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "epochs": args.epochs, "repeats": args.repeats}
    result = {"meta": meta,
              "runs": [{"label": r.label, "rows": r.rows, "epochs": r.epochs,
                        "train_seconds": r.seconds,
                        "samples_per_second": r.samples_per_second} for r in runs],
              "rounds": [[{"label": r.label, "train_seconds": r.seconds,
                           "samples_per_second": r.samples_per_second} for r in rnd]
                         for rnd in rounds],
              "ratio_b_over_a": b / a, "ratio_c_over_a": c / a}
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "article_loop_bench.json").write_text(json.dumps(result, indent=2))
    print(table)
    for i, rnd in enumerate(rounds, 1):
        sa, sb, sc = (r.samples_per_second for r in rnd)
        print(f"round {i}: samples/s (a) {sa:,.0f}  (b) {sb:,.0f}  (c) {sc:,.0f}  "
              f"(b)/(a) {sb / sa:.2f}x  (c)/(a) {sc / sa:.2f}x")
    print(f"\nmedian rounds: (b)/(a) = {b / a:.2f}x, (c)/(a) = {c / a:.2f}x")
    print(f"\ncommand: OMP_NUM_THREADS=1 python bench/article_loop_bench.py "
          f"--data {args.data} --epochs {args.epochs} --repeats {args.repeats}")
    print(f"{meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
