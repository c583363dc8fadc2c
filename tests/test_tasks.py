"""tasks: each objective owns its training rows, loss and validation loss."""
from __future__ import annotations

import pytest
import torch

from dssm_core import tasks
from dssm_core.config import TrainConfig
from dssm_core.features import SparseFeature
from dssm_core.model import DSSM


def _model(cfg: TrainConfig) -> DSSM:
    return DSSM([SparseFeature("user_id", 5, 4)], [SparseFeature("item_id", 6, 4)], cfg)


def test_each_objective_has_its_task() -> None:
    cfg = TrainConfig(user_hidden=(8,), item_hidden=(8,))
    assert isinstance(tasks.for_config(_model(cfg), cfg), tasks.Pointwise)
    ib = cfg.with_(objective="inbatch")
    assert isinstance(tasks.for_config(_model(ib), ib), tasks.InBatch)
    assert tasks.Pointwise.default_monitor == "val_logloss"
    assert tasks.InBatch.default_monitor == "val_auc"


def test_training_rows_follow_the_objective() -> None:
    cfg = TrainConfig(user_hidden=(8,), item_hidden=(8,), objective="inbatch")
    x = {"user_id": torch.tensor([1, 2, 3, 4]), "item_id": torch.tensor([1, 2, 3, 4])}
    y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    rows, labels = tasks.for_config(_model(cfg), cfg).rows(x, y)
    assert rows["item_id"].tolist() == [1, 3, 4] and labels.tolist() == [1, 1, 1]
    every, _ = tasks.for_config(_model(cfg), cfg, positives_only=False).rows(x, y)
    assert every["item_id"].tolist() == [1, 2, 3, 4]
    pw = cfg.with_(objective="pointwise")
    same, _ = tasks.for_config(_model(pw), pw).rows(x, y)
    assert same["item_id"].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least 2 positive"):
        tasks.for_config(_model(cfg), cfg).rows(x, torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_pointwise_loss_is_bce_of_the_logits() -> None:
    cfg = TrainConfig(user_hidden=(8,), item_hidden=(8,))
    m = _model(cfg)
    t = tasks.for_config(m, cfg)
    batch = {"user_id": torch.tensor([1, 2]), "item_id": torch.tensor([3, 4])}
    y = torch.tensor([1.0, 0.0])
    loss, logits = t.loss(batch, y, autocast=False)
    want = torch.nn.functional.binary_cross_entropy_with_logits(m(batch), y)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert logits.shape == (2,)
