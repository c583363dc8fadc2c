"""Training configuration: one frozen dataclass, passed whole and saved with every run.

A stored run's model is rebuilt from ``TrainConfig.from_dict(run.config)`` plus the stored
encoders (which carry the data-sized feature specs) and weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .jsonfields import checked_kwargs

OBJECTIVES = ("pointwise", "inbatch")
PROTOCOLS = ("A", "L", "T")
PRECISIONS = ("auto", "float32", "bfloat16")
#: What early stopping may watch; "auto" = what the run is judged by: validation recall@50
#: (mean of both directions) when the label is "interacted", validation AUC when "liked".
#: Bounded searches on validation (``pipeline.TUNE_SPACES`` holds what each tries).
TUNES = ("none", "negatives")
MONITORS = ("auto", "val_recall@50", "val_auc", "val_logloss", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Sizes that come from data are not here.

    preset: name of the preset this config started from ("default", "article", "custom").
    objective: "pointwise" (BCE on sigmoid(gamma*cos), the article) or "inbatch"
        (sampled softmax over the batch's items with logQ correction, Yi et al. 2019).
    protocol: "T" (time split: first 80% train, last eighth of it validation, last 20% test)
        or "L" (per user, the last interaction held out).
    label_threshold: a rating strictly above it is a positive (the article: > 3).
    history_len: the last L positively rated items (strictly before the event) form ``hist``.
    gamma: the cosine scale; score = sigmoid(gamma * cos(u, v)). For "inbatch" the softmax
        temperature is 1 / gamma.
    negatives: for implicit data (no ratings), sampled negatives per positive (pointwise).
    explicit_negatives: for rated data, sampled items the user never interacted with (in the
        training rows) added per row with label 0, so the model also learns who interacts at
        all (what audience retrieval needs); the test rows get the same sampling, so test
        AUC/logloss then measure that mixture. 0 = rated pairs only, as the article.
    negatives_by: how those negative items are drawn: "popularity" (count ** 0.75 + 1: the
        model learns to prefer the long tail) or "uniform" (the model keeps the popularity
        prior, which finds who interacts next).
    user_negatives: per row, users drawn uniformly among the training users who never
        interacted with its item, with label 0: the item->user side (which users for this
        item; it teaches that active users interact more). Sampled the same way for
        validation and test rows.
    pair_negatives: per row, random pairs of an existing user and a training item (neither
        drawn by popularity), label 0: the model keeps both the items' popularity and the
        users' activity, what "who interacts next" mostly is.
    id_dropout: in training, the probability of hiding a row's user_id/item_id (index 0), so
        the towers also learn from attributes and history alone (cold-start users and items).
    item_to_user_weight: "inbatch" only: weight w of the item->user softmax (each item picks its
        user among the batch's users); the loss is (1 - w) * user->item + w * item->user.
    precision: the towers' matrix products in training steps: "float32", "bfloat16"
        (autocast; weights, optimizer state, the cosine and the loss stay float32) or "auto"
        = bfloat16 where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), else
        float32. Evaluation and the stored embeddings are always float32. On ML-100K it made
        the article preset's steps 1.7x faster at the same test AUC (BENCHMARKS.md).
    monitor: the validation figure early stopping watches and the kept epoch is best on
        (``MONITORS``); "auto" = the one the run is judged by.
    refit: after early stopping chose the epoch count on validation, train a fresh model
        (same seed) on training + validation rows for that many epochs; it is the one
        tested, stored and searched (validation figures stay those of the first fit).
    tune: a bounded search on validation (``TUNES``): "none", or "negatives" (with and
        without random-pair negatives); every trial is stored in the run's summary.
    """

    preset: str = "default"
    objective: str = "pointwise"
    protocol: str = "T"
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    embedding_dim: int = 16
    user_hidden: tuple[int, ...] = (128, 64)
    item_hidden: tuple[int, ...] = (128, 64)
    batch_norm: bool = False
    dropout: float = 0.0
    activation: str = "relu"
    gamma: float = 10.0
    label_threshold: float = 3.0
    history_len: int = 50
    negatives: int = 4
    explicit_negatives: int = 0
    negatives_by: str = "popularity"
    user_negatives: int = 0
    pair_negatives: int = 0
    val_fraction: float = 0.125
    test_fraction: float = 0.2
    early_stopping_patience: int = 2
    id_dropout: float = 0.0
    item_to_user_weight: float = 0.0
    precision: str = "auto"
    monitor: str = "auto"
    refit: bool = False
    tune: str = "none"
    seed: int = 42
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        for name in ("epochs", "batch_size", "embedding_dim", "history_len", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.user_hidden or not self.item_hidden:
            raise ValueError("user_hidden and item_hidden need at least one layer")
        if self.user_hidden[-1] != self.item_hidden[-1]:
            raise ValueError(
                "the two towers must end in the same size: "
                f"user {self.user_hidden[-1]} vs item {self.item_hidden[-1]}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.test_fraction < 1.0 or not 0.0 < self.val_fraction < 1.0:
            raise ValueError("test_fraction and val_fraction must be in (0, 1)")
        if min(self.negatives, self.explicit_negatives, self.user_negatives,
               self.pair_negatives) < 0:
            raise ValueError("negatives, explicit_negatives, user_negatives and "
                             "pair_negatives must be >= 0")
        if self.negatives_by not in ("popularity", "uniform"):
            raise ValueError(
                f"negatives_by must be 'popularity' or 'uniform', got {self.negatives_by!r}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.tune not in TUNES:
            raise ValueError(f"tune must be one of {TUNES}, got {self.tune!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.item_to_user_weight <= 1.0:
            raise ValueError(
                f"item_to_user_weight must be in [0, 1], got {self.item_to_user_weight}"
            )

    @property
    def output_dim(self) -> int:
        return self.user_hidden[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["user_hidden"] = list(self.user_hidden)
        d["item_hidden"] = list(self.item_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A config from a JSON object (``--config-json``, a stored run), every value
        type-checked (``ValueError`` naming the key) before the values are."""
        return cls(**checked_kwargs(cls, d, "config"))

    def with_(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def describe_objective(cfg: TrainConfig, rating_scale: tuple[float, float] | None) -> str:
    """What this config trains the towers to tell apart, in an analyst's words.

    ``rating_scale``: the dataset's (min, max), or None for implicit feedback. The words follow
    the labels the encoder really makes: a rating strictly above ``label_threshold`` is a
    positive, so a threshold below the scale makes every rating a positive, and then only the
    sampled unseen items (``explicit_negatives``) are negatives - "who interacts", not
    "who likes" (the audience preset). E.g. ``"Like / dislike: a rating above 3 is a like"``.
    """
    t = float(cfg.label_threshold)
    if rating_scale is None:
        positive, per = "every interaction is a positive", "interaction"
        negatives = cfg.negatives
    elif t < float(rating_scale[0]):
        positive, per = "every rating is a positive", "rating"
        negatives = cfg.explicit_negatives
    else:
        positive, per = None, "rating"
        negatives = cfg.explicit_negatives
    if cfg.objective == "inbatch":
        what = positive or f"a rating above {t:g} is a positive"
        return (f"In-batch softmax: {what}, scored against the other items of its batch "
                "(popularity-corrected)")
    if positive is None:
        text = f"Like / dislike: a rating above {t:g} is a like, the others are dislikes"
        if negatives:
            text += f", plus {negatives} sampled unseen items per rating as dislikes"
        return text
    if not negatives:
        return (f"Interacted or not: {positive}, and nothing is a negative "
                "(raise the like threshold or sample unseen items)")
    return (f"Interacted or not: {positive}; {negatives} items the user never interacted "
            f"with, sampled per {per}, are the negatives")


#: Named starting points. "article" is the article's model as written (towers 300-300-128,
#: embedding dim 4, gamma 1, batch 256, batch norm); "default" is ours, chosen by measurement
#: on ML-100K protocol T (bench/train_bench.py, BENCHMARKS.md): towers 128-64, embedding dim
#: 16, gamma 10, batch 1024, lr 3e-3, dropout 0.3, weight decay 1e-5, the last 10 liked items
#: as history (the same AUC as 50 at 0.7x the epoch time) - better AUC and logloss than
#: "article" at several times its speed. "audience" predicts who will interact at all, not
#: who will like: every rating counts as a positive (label_threshold 0) and 4 sampled unseen
#: items per row are the negatives (embedding dim 32, dropout 0.1), with only the last 5 items
#: as history (what a user watches next follows what they watched last: on ML-100K protocol L
#: this raised item->user recall@50 from 0.35 to 0.40 and user->item from 0.35 to 0.41, mean
#: of 4 seeds, over a 50-item history); that multiplies item->user recall by about 6 over
#: "default" (see BENCHMARKS.md).
PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(dropout=0.3, weight_decay=1e-5, history_len=10),
    "audience": TrainConfig(preset="audience", protocol="A", embedding_dim=32, dropout=0.1,
                            weight_decay=1e-5, label_threshold=0.0, explicit_negatives=4,
                            negatives_by="uniform", tune="negatives", refit=True,
                            history_len=5),
    "article": TrainConfig(
        preset="article",
        epochs=10,
        batch_size=256,
        learning_rate=1e-3,
        embedding_dim=4,
        user_hidden=(300, 300, 128),
        item_hidden=(300, 300, 128),
        batch_norm=True,
        gamma=1.0,
        early_stopping_patience=10,
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with overrides applied (validated again).

    The result keeps the preset's name in ``preset`` (what the run started from); the stored
    config records every field, overrides included.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if overrides:
        cfg = replace(cfg, **overrides)
    return cfg


#: What each monitor is called on a page.
MONITOR_LABELS = {"val_recall@50": "Validation recall@50", "val_auc": "Validation AUC",
                  "val_logloss": "Validation log loss", "val_loss": "Validation loss"}


def watched_metric(cfg: TrainConfig, rating_scale: tuple[float, float] | None) -> str:
    """The validation figure early stopping watches for ``cfg`` on data with this rating
    scale (None = implicit): ``cfg.monitor``, or for "auto" what the run is judged by -
    recall@50 (both directions) when every event is a positive ("interacted"), AUC when the
    label is "liked" (rating above the threshold)."""
    if cfg.monitor != "auto":
        return cfg.monitor
    interacted = rating_scale is None or float(rating_scale[0]) > cfg.label_threshold
    return "val_recall@50" if interacted else "val_auc"


def kept_epoch(records: list[dict[str, Any]], monitor: str) -> dict[str, Any] | None:
    """The epoch record early stopping keeps (so far): the best ``monitor`` value (highest
    for recall and AUC, lowest for losses; the first on ties); None when none has it."""
    higher = monitor in ("val_recall@50", "val_auc")
    best = None
    for rec in records:
        v = rec.get(monitor)
        if v is None or v != v:                         # missing or NaN
            continue
        if best is None or (v > best[monitor] if higher else v < best[monitor]):
            best = rec
    return best

