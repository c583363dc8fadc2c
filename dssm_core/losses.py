"""Training objectives for the two towers (kept apart from the model and the metrics).

- ``pointwise_loss``: binary cross-entropy on the logits ``gamma * cos(u, v)`` against 0/1
  labels, the article's objective.
- ``InBatchSoftmax``: sampled softmax over the batch's positive pairs (Yi et al., RecSys 2019,
  "Sampling-bias-corrected neural modeling for large corpus item recommendations"). For user
  i the batch's items are the candidates and item i is the target. Popular items appear in
  batches more often and would be over-penalised as negatives, so each logit is corrected by
  ``- log p_j`` where ``p_j`` is the item's estimated probability of being in a batch, kept by
  ``StreamingFrequencyEstimator`` (the paper's Algorithm 2). A candidate that is the same
  item as the target (an accidental hit), or an item of the same user (a known positive), is
  masked out. Optionally the item->user direction
  too (for item j the batch's users are candidates), weighted by ``item_to_user_weight``:
  ``loss = (1 - w) * user->item + w * item->user``; this is the direction audience retrieval
  (top-N users for an item) uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pointwise_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` (B,) against ``labels`` (B,) in {0, 1}."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class StreamingFrequencyEstimator(nn.Module):
    """Estimates how often each id appears in a training batch, one batch at a time.

    The paper's Algorithm 2: array ``A`` holds the step at which each id (hashed into
    ``num_buckets``) was last seen, array ``B`` the estimated number of steps between two
    sightings. At step t, for each id y in the batch:
    ``B[h(y)] <- (1 - alpha) * B[h(y)] + alpha * (t - A[h(y)])`` then ``A[h(y)] <- t``,
    and the probability of y appearing in a batch is ``p = 1 / B[h(y)]``.

    The paper leaves the start open; here steps count from 1 and an id seen for the first
    time gets ``B = t`` (once in t steps), so no estimate starts at zero. Several copies of an
    id in one batch count as one sighting. ``h(y) = y mod num_buckets``: with ids already
    indexed 0..V-1 and ``num_buckets >= V`` there are no collisions.
    The state is held in (non-persistent) buffers of this instance.
    """

    def __init__(self, num_buckets: int, alpha: float = 0.01) -> None:
        super().__init__()
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.num_buckets = int(num_buckets)
        self.alpha = float(alpha)
        self.register_buffer("last_step", torch.zeros(num_buckets, dtype=torch.float64),
                             persistent=False)                             # A
        self.register_buffer("interval", torch.zeros(num_buckets, dtype=torch.float64),
                             persistent=False)                             # B
        self.register_buffer("seen", torch.zeros(num_buckets, dtype=torch.bool),
                             persistent=False)
        self.step = 0

    def update(self, ids: Tensor) -> None:
        """Record one batch (one step) of ids (B,)."""
        self.step += 1
        t = float(self.step)
        h = torch.unique(ids.reshape(-1).long() % self.num_buckets)            # (U,)
        first = ~self.seen[h]
        new_b = (1.0 - self.alpha) * self.interval[h] + self.alpha * (t - self.last_step[h])
        self.interval[h] = torch.where(first, torch.full_like(new_b, t), new_b)
        self.last_step[h] = t
        self.seen[h] = True

    def probability(self, ids: Tensor) -> Tensor:
        """Estimated probability (B,) float32 of each id being in a batch; 1 for unseen ids."""
        h = ids.reshape(-1).long() % self.num_buckets
        b = self.interval[h]
        p = torch.where(self.seen[h], 1.0 / b.clamp(min=1.0), torch.ones_like(b))
        return p.to(torch.float32).reshape(ids.shape)


class InBatchSoftmax(nn.Module):
    """Sampled softmax over the batch's positives, logQ-corrected, accidental hits masked.

    num_items / num_users: sizes of the id vocabularies (buckets of the frequency
        estimators); ``num_users`` is needed only for the logQ correction of the
        item->user direction.
    temperature: logits are ``cos / temperature``; pass ``1 / gamma`` to match the model's
        scale (the default in ``training.fit``).
    logq: subtract ``log p`` of each candidate (item, or user in the item->user direction).
    item_to_user_weight: w in [0, 1]; loss = (1 - w) * user->item + w * item->user.
    alpha: learning rate of the streaming frequency estimate.
    """

    def __init__(
        self,
        num_items: int,
        *,
        temperature: float = 0.1,
        logq: bool = True,
        item_to_user_weight: float = 0.0,
        num_users: int | None = None,
        alpha: float = 0.01,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= item_to_user_weight <= 1.0:
            raise ValueError(f"item_to_user_weight must be in [0, 1], got {item_to_user_weight}")
        self.temperature = float(temperature)
        self.logq = bool(logq)
        self.item_to_user_weight = float(item_to_user_weight)
        self.item_freq = StreamingFrequencyEstimator(num_items, alpha)
        self.user_freq = (StreamingFrequencyEstimator(num_users, alpha)
                          if num_users is not None else None)

    def forward(
        self,
        user_vectors: Tensor,
        item_vectors: Tensor,
        item_ids: Tensor,
        user_ids: Tensor | None = None,
        *,
        update: bool = True,
    ) -> Tensor:
        """Mean loss of a batch of B positive pairs: vectors (B, D), ids (B,).

        update: first record this batch in the frequency estimators (training); pass False
        to score without changing them.
        """
        if user_vectors.shape != item_vectors.shape or user_vectors.dim() != 2:
            raise ValueError(f"need two (B, D) matrices, got {tuple(user_vectors.shape)} "
                             f"and {tuple(item_vectors.shape)}")
        n = user_vectors.shape[0]
        if item_ids.shape != (n,) or (user_ids is not None and user_ids.shape != (n,)):
            raise ValueError("ids must be (B,) and aligned with the vectors")
        if update:
            self.item_freq.update(item_ids)
            if self.user_freq is not None and user_ids is not None:
                self.user_freq.update(user_ids)
        sim = user_vectors @ item_vectors.T / self.temperature         # (B, B) users x items
        target = torch.arange(n, device=sim.device)
        eye = torch.eye(n, dtype=torch.bool, device=sim.device)
        # Off-diagonal pairs that are positives too: the same item, or the same user (whose
        # other item is a known positive). Symmetric, so it serves both directions.
        hit = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)                  # (B, B)
        if user_ids is not None:
            hit = hit | (user_ids.unsqueeze(0) == user_ids.unsqueeze(1))
        hit = hit & ~eye
        loss = sim.new_zeros(())
        w = self.item_to_user_weight
        if w < 1.0:
            logits = sim
            if self.logq:
                logits = logits - torch.log(self.item_freq.probability(item_ids)).unsqueeze(0)
            loss = loss + (1.0 - w) * F.cross_entropy(logits.masked_fill(hit, -math.inf), target)
        if w > 0.0:
            logits = sim.T                                             # (B, B) items x users
            if self.logq and self.user_freq is not None and user_ids is not None:
                logits = logits - torch.log(self.user_freq.probability(user_ids)).unsqueeze(0)
            loss = loss + w * F.cross_entropy(logits.masked_fill(hit, -math.inf), target)
        return loss
