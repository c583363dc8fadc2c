"""Training rows encoded per batch: no table of every row x negatives is ever built.

``EventBatches`` is what ``training.fit`` reads when a run is larger than its memory: the
positions of a run's labelled events, the encoder's as-of context (``encoding._Context``,
built once per pool) and a ``events.NegativeSampler`` (built once per set of known rows).
Each epoch permutes the events with a seeded generator; each batch takes the next events,
draws their negatives (as ``FeatureEncoder.transform_events`` does: items by popularity or
uniformly, users, random pairs, never a known pair; the generators seeded by (seed, epoch,
batch)) and encodes the features of that batch only. Tuning trials share the context and
the sampler; only the negatives counts differ.

A batch of at most ``batch_size`` rows holds ``batch_size // (1 + negatives per event)``
whole events, each with its negatives, and marks the rows that repeat another row's tower
input (an item negative has its event's user features): ``DSSM.forward`` runs the user tower
once per event for its item negatives (5 rows of the audience preset's 1 + 4 share one user
vector), which is where the step's time went. A materialised table shuffles events and
negatives together instead (the same rows in distribution, batched differently, each tower
run on every row). Grouped batches were chosen on validation recall (BENCHMARKS.md).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .encoding import EVENT_OF, FeatureEncoder
from .events import NegativeSampler
from .features import ROW_KEYS

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
               features: bool = True, groups: bool = False) -> dict[str, np.ndarray]:
        """Features (``features``), ``label`` and ``item_ref`` of ``rows`` and
        (``negatives``) their negatives, drawn with generators seeded by ``(seed, *key)``;
        ``groups``: see ``FeatureEncoder.encode_rows``."""
        n, u, p = self.negatives if negatives else (0, 0, 0)
        rngs = tuple(np.random.default_rng([self.seed, *key, k]) for k in range(3))
        return self.encoder.encode_rows(self.context, rows, self.sampler, negatives=n,
                                        user_negatives=u, pair_negatives=p, rngs=rngs,
                                        features=features, groups=groups)

    def batches(self, epoch: int, batch_size: int, *, negatives: bool = True,
                shuffle: bool = True, features: bool = True
                ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch: the events in a seeded order (``shuffle``; else in ``rows`` order),
        ``batch_size`` rows per batch counting the negatives (``negatives``: draw them).

        Events are encoded ``CHUNK_BATCHES`` batches at a time (numpy's per-call cost paid
        once per chunk, memory still bounded). With features and negatives, a batch holds
        ``batch_size // per_event`` whole events, each followed by its negatives, and says
        which rows repeat another row's user or item features (``features.USER_ROW`` /
        ``ITEM_ROW``, positions within the batch): the model runs each tower once per
        distinct row (an event's item negatives share its user vector and its dropout).
        Without features the rows come events first, then negatives, ``batch_size`` a batch.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = self.rows
        if shuffle:
            order = order[np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        per = self.per_event if negatives else 1
        events = max(1, batch_size // per)
        grouped = features and per > 1
        step = events * CHUNK_BATCHES
        for c, start in enumerate(range(0, len(order), step)):
            data = self.encode(order[start:start + step], (epoch, c), negatives, features,
                               groups=grouped)
            if grouped:
                yield from _event_batches(data, events)
                continue
            n = len(data["label"])
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


def by_event(data: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                     np.ndarray]:
    """``encode_rows(groups=True)``'s rows reordered so that each event's rows are together
    (the event first, then its negatives): (the rows without ``EVENT_OF``, with ``ROW_KEYS``
    as new positions; ``order``: new row -> old row; each new row's event)."""
    event_of = data[EVENT_OF]
    order = np.argsort(event_of, kind="stable")       # the event precedes its negatives
    where = np.empty_like(order)
    where[order] = np.arange(len(order))              # old row -> new row
    out = {k: v[order] for k, v in data.items() if k != EVENT_OF}
    for key in ROW_KEYS:
        out[key] = where[out[key]]
    return out, order, event_of[order]


def _event_batches(data: dict[str, np.ndarray], events: int) -> Iterator[dict[str, np.ndarray]]:
    """``encode_rows(groups=True)``'s rows cut into batches of ``events`` whole events: each
    event's rows together (see ``by_event``), ``ROW_KEYS`` as positions within the batch."""
    data, _, first = by_event(data)
    cuts = np.searchsorted(first, np.arange(0, int(first[-1]) + 1 if len(first) else 0, events))
    bounds = [*cuts.tolist(), len(first)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        batch = {k: v[lo:hi] for k, v in data.items()}
        for key in ROW_KEYS:
            batch[key] = batch[key] - lo
        yield batch
