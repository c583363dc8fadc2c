"""Feature specs: plain frozen data. The model owns every ``nn.Embedding``.

A batch is a ``dict[str, torch.Tensor]`` keyed by feature name:
- ``SparseFeature``   -> LongTensor (B,), index 0 = padding/unknown
- ``DenseFeature``    -> FloatTensor (B, dim)
- ``SequenceFeature`` -> LongTensor (B, max_len), right-padded with 0
Names are unique across both towers (e.g. ``user_id``, ``gender``, ``hist``, ``item_id``,
``genres``, ``user_mean_rating``). A batch may also carry ``USER_ROW`` / ``ITEM_ROW``
(LongTensor (B,), not features): per row, the row of the same batch whose user / item tower
input it repeats (itself if none); ``DSSM.forward`` then runs each tower once per distinct row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Union

#: Batch keys naming which row's tower input each row repeats (see the module docstring;
#: ``stream.EventBatches.batches`` groups an event with its negatives and sets them).
USER_ROW = "__user_row__"
ITEM_ROW = "__item_row__"
ROW_KEYS = (USER_ROW, ITEM_ROW)


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature. ``vocab_size`` counts index 0 (padding/unknown)."""

    name: str
    vocab_size: int
    embedding_dim: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1 or self.embedding_dim < 1:
            raise ValueError(f"{self.name}: vocab_size and embedding_dim must be >= 1")


@dataclass(frozen=True)
class DenseFeature:
    """A real-valued feature of ``dim`` columns, already scaled by the encoders."""

    name: str
    dim: int = 1

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"{self.name}: dim must be >= 1")


@dataclass(frozen=True)
class SequenceFeature:
    """A variable-length list of categorical ids, pooled (padding masked out).

    ``shared_with`` names a ``SparseFeature`` whose embedding table this sequence uses
    (the user's history shares the item-id table); then ``vocab_size`` and
    ``embedding_dim`` must equal that feature's.
    """

    name: str
    vocab_size: int
    embedding_dim: int
    max_len: int
    pooling: str = "mean"
    shared_with: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "sum", "max"):
            raise ValueError(f"{self.name}: pooling must be mean, sum or max, got {self.pooling!r}")
        if self.max_len < 1 or self.vocab_size < 1 or self.embedding_dim < 1:
            raise ValueError(f"{self.name}: max_len, vocab_size and embedding_dim must be >= 1")


Feature = Union[SparseFeature, DenseFeature, SequenceFeature]
_KINDS = {"sparse": SparseFeature, "dense": DenseFeature, "sequence": SequenceFeature}


def feature_to_dict(f: Feature) -> dict[str, Any]:
    """JSON-able form, so specs travel with a stored run."""
    kind = {SparseFeature: "sparse", DenseFeature: "dense", SequenceFeature: "sequence"}[type(f)]
    return {"kind": kind, **asdict(f)}


def feature_from_dict(d: dict[str, Any]) -> Feature:
    d = dict(d)
    kind = d.pop("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown feature kind {kind!r}")
    return _KINDS[kind](**d)
