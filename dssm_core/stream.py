"""Training rows encoded per batch: no table of every row x negatives is ever built.

``EventBatches`` is what ``training.fit`` reads when a run is larger than its memory: the
positions of a run's labelled events, the encoder's as-of context (``encoding._Context``,
built once per pool) and a ``events.NegativeSampler`` (built once per set of known rows).
Each epoch permutes the events with a seeded generator; each batch takes the next events,
draws their negatives (as ``FeatureEncoder.transform_events`` does: items by popularity or
uniformly, users, random pairs, never a known pair; the generators seeded by (seed, epoch,
batch)) and encodes the features of that batch only. Tuning trials share the context and
the sampler; only the negatives counts differ.

A batch of ``batch_size`` rows holds ``batch_size // (1 + negatives per event)`` events
and their negatives (a materialised table shuffles events and negatives together instead:
the same rows in distribution, batched differently).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .encoding import FeatureEncoder
from .events import NegativeSampler

#: Batches encoded at once (see ``EventBatches.batches``).
CHUNK_BATCHES = 16
#: Rows per batch of ``EventBatches.label_batches`` (part of what is drawn: negatives are
#: seeded per chunk of batches).
LABEL_BATCH = 65536
#: Generator key of ``EventBatches.sample`` (epochs are numbered from 0 below it).
_SAMPLE_KEY = 2**31 - 1


class EventBatches:
    """The labelled events at ``rows`` (positions into the dataset's interactions), encoded
    a batch at a time.

    negatives / user_negatives / pair_negatives: per event, as in
    ``FeatureEncoder.transform_events``. seed: the base of every generator used here.
    """

    def __init__(self, encoder: FeatureEncoder, context: Any, rows: np.ndarray,
                 sampler: NegativeSampler | None = None, *, negatives: int = 0,
                 user_negatives: int = 0, pair_negatives: int = 0, seed: int = 0) -> None:
        self.encoder = encoder
        self.context = context
        self.rows = np.asarray(rows, dtype=np.int64)
        self.negatives = (int(negatives), int(user_negatives), int(pair_negatives))
        if sum(self.negatives) and sampler is None:
            raise ValueError("negatives need a sampler (FeatureEncoder.negative_sampler)")
        self.sampler = sampler
        self.seed = int(seed)

    def __len__(self) -> int:
        """Events (not rows: each brings up to ``per_event - 1`` negatives)."""
        return len(self.rows)

    @property
    def per_event(self) -> int:
        """Rows per event: itself and its negatives (fewer when some cannot be drawn)."""
        return 1 + sum(self.negatives)

    def encode(self, rows: np.ndarray, key: tuple[int, ...], negatives: bool = True,
               features: bool = True) -> dict[str, np.ndarray]:
        """Features (``features``), ``label`` and ``item_ref`` of ``rows`` and
        (``negatives``) their negatives, drawn with generators seeded by ``(seed, *key)``."""
        n, u, p = self.negatives if negatives else (0, 0, 0)
        rngs = tuple(np.random.default_rng([self.seed, *key, k]) for k in range(3))
        return self.encoder.encode_rows(self.context, rows, self.sampler, negatives=n,
                                        user_negatives=u, pair_negatives=p, rngs=rngs,
                                        features=features)

    def batches(self, epoch: int, batch_size: int, *, negatives: bool = True,
                shuffle: bool = True, features: bool = True
                ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch: the events in a seeded order (``shuffle``; else in ``rows`` order),
        ``batch_size`` rows per batch counting the negatives (``negatives``: draw them).

        Events are encoded ``CHUNK_BATCHES`` batches at a time (numpy's per-call cost paid
        once per chunk, memory still bounded); with ``shuffle`` a chunk's rows (events and
        negatives) are mixed before they are cut into batches."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = self.rows
        if shuffle:
            order = order[np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        per = self.per_event if negatives else 1
        step = max(1, batch_size // per) * CHUNK_BATCHES
        for c, start in enumerate(range(0, len(order), step)):
            data = self.encode(order[start:start + step], (epoch, c), negatives, features)
            n = len(data["label"])
            if shuffle:
                mix = np.random.default_rng([self.seed, epoch, c, 3]).permutation(n)
                data = {k: v[mix] for k, v in data.items()}
            for lo in range(0, n, batch_size):
                yield {k: v[lo:lo + batch_size] for k, v in data.items()}

    def sample(self, n_rows: int, seed: int) -> dict[str, np.ndarray]:
        """About ``n_rows`` rows (events of a seeded sample and their negatives), encoded."""
        k = max(1, n_rows // self.per_event)
        pick = np.sort(np.random.default_rng([self.seed, seed]).permutation(len(self.rows))[:k])
        return self.encode(self.rows[pick], (_SAMPLE_KEY, seed))

    def label_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """``label`` and ``item_ref`` of every event (in ``rows`` order) and of negatives
        drawn once for them (seeded), ``LABEL_BATCH`` rows at a time, without features:
        what the item-mean baseline counts (``pipeline.item_label_counts``)."""
        return self.batches(0, LABEL_BATCH, shuffle=False, features=False)
