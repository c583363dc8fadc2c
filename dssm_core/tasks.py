"""One class per training objective: its training rows, its loss and its own validation loss.

``training.fit`` runs any task the same way (shuffle, batch, step, measure, stop early); the
objective's differences live here (as TFRS's Retrieval task or torchrec's TwoTowerTrainTask):

- ``Pointwise`` (the article): BCE on ``gamma * cos`` for every labelled row. Its train
  metrics come from the logits seen while training the epoch.
- ``InBatch``: sampled softmax over the batch's items with logQ correction (Yi et al. 2019),
  on positive rows only (or every observed pair). Its rows hold one class, so train AUC and
  logloss are measured after the epoch on a fixed seeded sample of up to ``metric_rows``
  labelled training rows; its probabilities are not calibrated (compare it on AUC).

What a run is *judged* by (validation recall@50 when the label is "interacted", AUC when
"liked") is chosen in ``pipeline`` from the data and label; ``default_monitor`` is only what a
task watches when nobody says.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

from .config import TrainConfig
from .losses import InBatchSoftmax, pointwise_loss
from .model import DSSM

#: Labelled training rows sampled to measure train AUC/logloss under the in-batch objective.
TRAIN_METRIC_ROWS = 20_000


class Pointwise:
    """BCE on every labelled row."""

    name = "pointwise"
    default_monitor = "val_logloss"
    collects_logits = True
    #: whether the rows it trains on include the sampled negatives
    uses_negatives = True

    def __init__(self, model: DSSM, cfg: TrainConfig) -> None:
        self.model = model

    def rows(self, x: dict[str, Tensor], y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The rows this objective trains on (every labelled row)."""
        return x, y

    def row_mask(self, y: Tensor) -> Tensor | None:
        """Which rows of a batch it trains on (None: all)."""
        return None

    def metric_rows(self, x: dict[str, Tensor], y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The labelled rows train metrics are measured on after an epoch (unused here: the
        epoch's own logits are the train metrics)."""
        return x, y

    def loss(self, batch: dict[str, Tensor], y: Tensor, autocast: bool
             ) -> tuple[Tensor, Tensor | None]:
        """(mean loss, the batch's logits or None) of one training batch."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = self.model(batch)                                 # (B,) float32
        return pointwise_loss(logits, y), logits.detach()

    def val_loss(self, x: dict[str, Tensor], y: Tensor, logits: Tensor, batch_size: int,
                 seed: int) -> float | None:
        """The objective on the validation rows (``logits``: the model's, eval mode)."""
        return float(pointwise_loss(logits, y))


class InBatch:
    """Sampled softmax over the batch, logQ-corrected, accidental hits masked."""

    name = "inbatch"
    default_monitor = "val_auc"
    collects_logits = False

    def __init__(self, model: DSSM, cfg: TrainConfig, *, item_to_user_weight: float | None = None,
                 temperature: float | None = None, logq: bool = True,
                 positives_only: bool = True, metric_rows: int = TRAIN_METRIC_ROWS) -> None:
        self.model = model
        self.seed = int(cfg.seed)
        self.positives_only = positives_only
        self.uses_negatives = not positives_only
        self.n_metric_rows = int(metric_rows)
        specs = model.feature_specs
        self.item_key, self.user_key = model.id_feature("item"), model.id_feature("user")
        if self.item_key is None:
            raise ValueError("the in-batch objective needs a sparse item id feature")
        w = item_to_user_weight
        if w is None:
            w = float(getattr(cfg, "item_to_user_weight", 0.0))
        self.criterion = InBatchSoftmax(
            specs[self.item_key].vocab_size,  # type: ignore[union-attr]
            temperature=temperature if temperature is not None else 1.0 / cfg.gamma,
            logq=logq,
            item_to_user_weight=w,
            num_users=(specs[self.user_key].vocab_size  # type: ignore[union-attr]
                       if self.user_key else None),
        )

    def rows(self, x: dict[str, Tensor], y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        keep = self.row_mask(y)
        pos = torch.nonzero(keep).squeeze(1) if keep is not None else torch.arange(len(y))
        if len(pos) < 2:
            raise ValueError("the in-batch objective needs at least 2 positive training rows")
        return {k: v[pos] for k, v in x.items()}, y[pos]

    def row_mask(self, y: Tensor) -> Tensor | None:
        """The positive rows (``positives_only``), else None (every row)."""
        return y > 0.5 if self.positives_only else None

    def metric_rows(self, x: dict[str, Tensor], y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        sample = np.random.default_rng(self.seed).permutation(len(y))
        sample = torch.from_numpy(np.sort(sample[:self.n_metric_rows]))
        return {k: v[sample] for k, v in x.items()}, y[sample]

    def _ids(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        return batch[self.item_key], batch[self.user_key] if self.user_key else None

    def loss(self, batch: dict[str, Tensor], y: Tensor, autocast: bool
             ) -> tuple[Tensor, Tensor | None]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            u = self.model.user_tower(batch)                                   # (B, D)
            v = self.model.item_tower(batch)                                   # (B, D)
        return self.criterion(u, v, *self._ids(batch)), None

    def val_loss(self, x: dict[str, Tensor], y: Tensor, logits: Tensor, batch_size: int,
                 seed: int) -> float | None:
        """The softmax on the validation positives: the same fixed (seeded) batches every
        epoch, eval mode, frequency estimate read but not updated."""
        pos = torch.nonzero(y > 0.5).squeeze(1)
        if len(pos) < 2:
            return None
        pos = pos[torch.randperm(len(pos), generator=torch.Generator().manual_seed(seed + 1))]
        return self.val_loss_batches(({k: v[idx] for k, v in x.items()}, y[idx])
                                     for idx in pos.split(batch_size))

    def val_loss_batches(self, batches: Iterable[tuple[dict[str, Tensor], Tensor]]
                         ) -> float | None:
        """The softmax over each batch of validation positives (eval mode, frequency
        estimate read but not updated), weighted by batch size; None without any."""
        model = self.model
        was_training = model.training
        model.eval()
        total, n = 0.0, 0
        try:
            with torch.no_grad():
                for batch, yb in batches:
                    if len(yb) < 2:
                        continue
                    loss = self.criterion(model.user_tower(batch), model.item_tower(batch),
                                          *self._ids(batch), update=False)
                    total += float(loss) * len(yb)
                    n += len(yb)
        finally:
            model.train(was_training)
        return total / n if n else None


TASKS = {"pointwise": Pointwise, "inbatch": InBatch}


def for_config(model: DSSM, cfg: TrainConfig, **options: Any) -> Pointwise | InBatch:
    """The task of ``cfg.objective`` (``options``: the in-batch task's keyword options)."""
    if cfg.objective not in TASKS:
        raise ValueError(f"unknown objective {cfg.objective!r}; known: {', '.join(TASKS)}")
    if cfg.objective == "pointwise":
        return Pointwise(model, cfg)
    return InBatch(model, cfg, **options)
