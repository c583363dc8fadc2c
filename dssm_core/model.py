"""The DSSM two-tower model: every parameter of the engine lives here.

A user tower and an item tower each turn a batch of features into an L2-normalised vector;
the score of a (user, item) pair is ``gamma * cos(u, v)`` and its probability
``sigmoid(gamma * cos(u, v))`` (the article, section 3.4).

- ``EmbeddingBlock`` owns the ``nn.Embedding`` tables of one tower's sparse and sequence
  features (index 0 = padding/unknown, a zero row that is never trained) and pools sequences
  with the padding masked out: ``[a, 0, 0]`` mean-pools to ``emb(a)``, not ``emb(a) / 3``.
- A ``SequenceFeature`` with ``shared_with`` uses the named sparse feature's table, which may
  live in the other tower (the user's ``hist`` shares the item-id table). ``DSSM`` owns such
  shared tables once, in ``DSSM.shared``, and hands them to both towers.
- ``Tower`` = embeddings + dense features -> concat -> MLP (optional batch norm, activation,
  dropout between layers; nothing after the last layer, so vectors can point anywhere).
- ``DSSM.user_tower(batch) -> (B, D)``, ``DSSM.item_tower(batch) -> (B, D)`` (unit norm) and
  ``DSSM.forward(batch) -> (B,)`` logits. A batch may carry ``USER_ROW`` / ``ITEM_ROW``
  (which row's tower input each row repeats: training batches group an event with its
  sampled negatives); ``forward`` then runs each tower once per distinct row and gathers, the
  same logits in eval mode, a shared dropout mask in training.

Initialisation is drawn from a private generator seeded with ``cfg.seed``, so the same config
gives the same initial weights whatever the global RNG state: embeddings ~ N(0, 0.1^2) (not
the article's 1e-4, which leaves cosines near zero and training stalled), linear layers
Kaiming-uniform for the chosen activation, biases zero.

Speed (CPU training is the product's case): embedding lookups use ``lookup`` (its backward is
one ``index_add_`` instead of the stock sort-based one: torch's ``index_select`` with a hook
zeroing the table's padding row) and dropout uses ``FastDropout`` (``rand_like`` instead of
``bernoulli_``, one product); values and gradients are the same. Within
``DSSM.sparse_gradients(min_rows)`` (how ``training.fit`` runs) the gradient of a table of at
least ``min_rows`` rows is sparse: only the rows the batch looked up (never the padding row),
so a step's cost does not grow with the number of users; ``optim.RowWiseAdam`` then updates
just those rows. Smaller tables keep dense gradients (a dense update of a few thousand rows
costs less than the sparse bookkeeping).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TrainConfig
from .features import (ITEM_ROW, USER_ROW, DenseFeature, Feature, SequenceFeature,
                       SparseFeature)

#: Activations a tower may use, by the name ``TrainConfig.activation`` holds.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
}

#: Probability of hiding a training row's user/item id when the config does not say.
DEFAULT_ID_DROPOUT = 0.0

#: Standard deviation of the embedding initialisation.
EMBEDDING_INIT_STD = 0.1


def _check_unique_names(specs: Sequence[Feature], what: str) -> None:
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what}: duplicate feature names {dupes}")


class EmbeddingBlock(nn.Module):
    """The embedding tables of one tower and the pooling of its sequences.

    specs: the tower's features (dense features are passed through untouched by ``forward``).
    shared: tables owned elsewhere (by ``DSSM``), by feature name; a sparse feature whose name
        is in ``shared`` uses that table, and so does a sequence whose ``shared_with`` names it.
        They are not registered here, so the owner holds them once.
    generator: seeds the initialisation of the tables this block owns.
    id_dropout: in training mode, each id of the sparse features named in ``id_features`` is
        replaced by 0 (unknown) with this probability, so the tower learns to serve users and
        items unseen in training (cold start) from their other features instead of meeting an
        all-zero id vector for the first time at test time.
    """

    def __init__(
        self,
        specs: Sequence[Feature],
        shared: Mapping[str, nn.Embedding] | None = None,
        *,
        generator: torch.Generator | None = None,
        id_dropout: float = 0.0,
        id_features: Iterable[str] = (),
    ) -> None:
        super().__init__()
        _check_unique_names(specs, "EmbeddingBlock")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.id_dropout = float(id_dropout)
        self.id_features = frozenset(id_features)
        #: check every lookup's ids against the table size (``DSSM.ids_prechecked`` turns it
        #: off for callers that validated all ids once, up front)
        self.check_ids = True
        #: tables of at least this many rows get sparse gradients, the looked-up rows only
        #: (``DSSM.sparse_gradients``); None: every gradient dense
        self.sparse_min_rows: int | None = None
        #: where id dropout draws (None: torch's global generator; ``DSSM.random_source``)
        self.generator: torch.Generator | None = None
        shared = dict(shared or {})
        by_name = {s.name: s for s in specs}
        self.sparse: tuple[SparseFeature, ...] = tuple(
            s for s in specs if isinstance(s, SparseFeature))
        self.sequences: tuple[SequenceFeature, ...] = tuple(
            s for s in specs if isinstance(s, SequenceFeature))
        self.dense: tuple[DenseFeature, ...] = tuple(
            s for s in specs if isinstance(s, DenseFeature))
        self.tables = nn.ModuleDict()
        # Plain dict: shared tables are referenced, not owned (no double registration).
        self._shared: dict[str, nn.Embedding] = {}
        for s in self.sparse:
            if s.name in shared:
                self._shared[s.name] = _checked_table(shared[s.name], s)
            else:
                self.tables[s.name] = _new_table(s.vocab_size, s.embedding_dim, generator)
        for s in self.sequences:
            if s.shared_with is None:
                self.tables[s.name] = _new_table(s.vocab_size, s.embedding_dim, generator)
            elif s.shared_with in shared:
                self._shared[s.name] = _checked_table(shared[s.shared_with], s)
            elif isinstance(by_name.get(s.shared_with), SparseFeature):
                if s.shared_with in self._shared:
                    self._shared[s.name] = _checked_table(self._shared[s.shared_with], s)
                else:
                    _checked_table(self.tables[s.shared_with], s)
            else:
                raise ValueError(
                    f"sequence {s.name!r} shares the table of {s.shared_with!r}, "
                    "which is not a sparse feature of either tower"
                )
        self.output_dim = (sum(s.embedding_dim for s in self.sparse)
                           + sum(s.embedding_dim for s in self.sequences)
                           + sum(s.dim for s in self.dense))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every batch key this block reads."""
        return tuple(s.name for s in (*self.sparse, *self.sequences, *self.dense))

    def table(self, name: str) -> nn.Embedding:
        """The embedding table a sparse or sequence feature looks up."""
        if name in self._shared:
            return self._shared[name]
        if name in self.tables:
            return self.tables[name]  # type: ignore[return-value]
        seq = next((s for s in self.sequences if s.name == name), None)
        if seq is not None and seq.shared_with is not None:
            return self.tables[seq.shared_with]  # type: ignore[return-value]
        raise KeyError(f"no embedding table for feature {name!r}")

    def is_sparse(self, table: nn.Embedding) -> bool:
        """Whether ``table``'s gradient is sparse now (see ``sparse_min_rows``)."""
        return self.sparse_min_rows is not None and \
            table.num_embeddings >= self.sparse_min_rows

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Concatenate every feature's vector: (B, output_dim)."""
        parts: list[Tensor] = []
        for s in self.sparse:
            ids = _get(batch, s.name)                                      # (B,)
            if self.training and self.id_dropout > 0 and s.name in self.id_features:
                drop = torch.rand(ids.shape, generator=self.generator) < self.id_dropout
                ids = ids.masked_fill(drop, 0)
            table = self.table(s.name)
            parts.append(lookup(table, ids, check=self.check_ids,
                                sparse=self.is_sparse(table)))             # (B, E)
        for s in self.sequences:
            ids = _get(batch, s.name)                                      # (B, L)
            if ids.dim() != 2:
                raise ValueError(f"sequence {s.name!r} must be (B, L), got {tuple(ids.shape)}")
            table = self.table(s.name)
            emb = lookup(table, ids, check=self.check_ids,
                         sparse=self.is_sparse(table))                     # (B, L, E)
            parts.append(pool(emb, ids != 0, s.pooling))                   # (B, E)
        for s in self.dense:
            x = _get(batch, s.name).to(torch.float32)
            if x.dim() == 1:
                x = x.unsqueeze(1)                                         # (B, 1)
            if x.shape[1] != s.dim:
                raise ValueError(f"dense {s.name!r} has {x.shape[1]} columns, spec says {s.dim}")
            parts.append(x)                                                # (B, dim)
        return torch.cat(parts, dim=1)                                     # (B, output_dim)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with ``rand_like`` (vectorised) instead of
    ``bernoulli_``: the same distribution, about twice as fast on CPU."""

    #: where the masks are drawn from (None: torch's global generator); see
    #: ``DSSM.random_source``
    generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        draw = torch.rand(x.shape, dtype=x.dtype, generator=self.generator)  # (B, H)
        if x.dtype != torch.float32:     # bfloat16 (autocast): the scale stays a float32 scalar
            return x * (draw >= self.p) * (1.0 / (1.0 - self.p))
        # one product in the graph: ``x * keep * scale`` rounds each kept value once, and
        # so does ``x * (keep * scale)`` (keep is exactly 0 or 1): the same bits either way
        return x * draw.ge_(self.p).mul_(1.0 / (1.0 - self.p))            # 0 or 1/(1-p)


class _GatherRows(torch.autograd.Function):
    """Row gather whose gradient is sparse: an uncoalesced (V, E) COO tensor holding one row
    per looked-up id (repeats summed when coalesced), without the padding row's ids at all,
    as ``nn.Embedding(sparse=True)`` gives; its cost follows the batch, not the table.
    (Dense gradients need no node of their own: ``lookup`` uses ``index_select``.)
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, flat_ids: Tensor, padding_idx: int) -> Tensor:
        ctx.save_for_backward(flat_ids)
        ctx.shape = tuple(weight.shape)
        ctx.dtype = weight.dtype
        ctx.padding_idx = padding_idx
        return weight.index_select(0, flat_ids)                            # (N, E)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (flat_ids,) = ctx.saved_tensors
        grad = grad.to(ctx.dtype)                                          # (N, E)
        if ctx.padding_idx >= 0:
            keep = (flat_ids != ctx.padding_idx).nonzero().squeeze(1)      # (K,)
            flat_ids, grad = flat_ids.index_select(0, keep), grad.index_select(0, keep)
        # ids were range-checked (or come from a validated batch): skip the checks
        return torch.sparse_coo_tensor(flat_ids.unsqueeze(0), grad.contiguous(), ctx.shape,
                                       is_coalesced=False, check_invariants=False
                                       ), None, None


def lookup(table: nn.Embedding, ids: Tensor, *, check: bool = True, sparse: bool = False
           ) -> Tensor:
    """``table(ids)`` for ids of any shape -> (*ids.shape, E), with a fast CPU backward.

    check: verify 0 <= ids < table size (two reductions; skip only for ids validated before).
    sparse: the table's gradient is a sparse tensor of the looked-up rows (padding excluded),
        for an optimiser that updates only those (``optim.RowWiseAdam``).
    """
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"embedding ids must be integers, got {ids.dtype}")
    flat = ids.reshape(-1).long()
    if check and flat.numel() and (int(flat.min()) < 0
                                   or int(flat.max()) >= table.num_embeddings):
        raise ValueError(f"ids out of range [0, {table.num_embeddings}) for an embedding table")
    pad = -1 if table.padding_idx is None else int(table.padding_idx)
    weight = table.weight
    if sparse and weight.requires_grad:
        out = _GatherRows.apply(weight, flat, pad)                         # (N, E)
    else:
        # dense: torch's own index_select, whose backward is one zeros().index_add_ (not
        # the stock embedding backward's sort of every index); the padding row's gradient
        # is zeroed by a hook on the table, once every lookup's part is summed
        if pad >= 0 and weight.requires_grad:
            _zero_padding_gradient(weight, pad)
        out = weight.index_select(0, flat)                                 # (N, E)
    return out.reshape(*ids.shape, table.embedding_dim)


def _zero_padding_gradient(weight: Tensor, pad: int) -> None:
    """Give ``weight`` (once) a gradient hook that zeroes row ``pad`` of a dense gradient
    (a sparse one, from ``_GatherRows``, never holds it)."""
    hooks = getattr(weight, "_backward_hooks", None) or {}
    if any(getattr(h, "padding_row", None) == pad for h in hooks.values()):
        return                 # (looked up in the hooks themselves: a copy may lack them)

    def zero_row(grad: Tensor) -> Tensor:
        if grad.is_sparse:
            return grad
        grad = grad.clone()
        grad[pad] = 0
        return grad

    zero_row.padding_row = pad  # type: ignore[attr-defined]
    weight.register_hook(zero_row)


def pool(emb: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool ``emb`` (B, L, E) over the positions where ``mask`` (B, L) is True -> (B, E).

    Padding never counts: "mean" divides by the number of real positions, "max" ignores
    padded positions; a row with no real position pools to zeros.
    """
    m = mask.unsqueeze(-1).to(emb.dtype)                                   # (B, L, 1)
    if how == "sum":
        return (emb * m).sum(dim=1)                                        # (B, E)
    if how == "mean":
        count = m.sum(dim=1).clamp(min=1.0)                                # (B, 1)
        return (emb * m).sum(dim=1) / count                                # (B, E)
    if how == "max":
        neg = torch.finfo(emb.dtype).min
        out = emb.masked_fill(~mask.unsqueeze(-1), neg).amax(dim=1)        # (B, E)
        return torch.where(mask.any(dim=1, keepdim=True), out, torch.zeros_like(out))
    raise ValueError(f"pooling must be mean, sum or max, got {how!r}")


class Tower(nn.Module):
    """Embeddings and dense features -> concat -> MLP -> L2-normalised vector.

    hidden: layer sizes; the last is the output dimension D. Between layers (never after
    the last): optional batch norm, then the activation, then dropout (if > 0). A linear layer
    followed by batch norm has no bias (BN's shift replaces it); weights saved by a version
    that still had one load exactly: the bias is folded into BN's running mean.
    id_dropout / id_features: see ``EmbeddingBlock``.
    """

    def __init__(
        self,
        specs: Sequence[Feature],
        hidden: Sequence[int],
        *,
        batch_norm: bool = False,
        dropout: float = 0.0,
        activation: str = "relu",
        shared: Mapping[str, nn.Embedding] | None = None,
        generator: torch.Generator | None = None,
        id_dropout: float = 0.0,
        id_features: Iterable[str] = (),
    ) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a tower needs at least one feature")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1 and at least one layer, got {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embeddings = EmbeddingBlock(specs, shared, generator=generator,
                                         id_dropout=id_dropout, id_features=id_features)
        layers: list[nn.Module] = []
        width = self.embeddings.output_dim
        for k, h in enumerate(hidden):
            last = k == len(hidden) - 1
            # a bias right before batch norm is cancelled by its mean subtraction (BN's own
            # shift replaces it): leaving it out is the same model, minus dead parameters
            linear = nn.Linear(width, int(h), bias=last or not batch_norm)
            _init_linear(linear, None if last else activation, generator)
            layers.append(linear)
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(int(h)))
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(FastDropout(dropout))
            width = int(h)
        self.mlp = nn.Sequential(*layers)
        self.output_dim = width
        self.register_load_state_dict_pre_hook(_fold_bias_into_batch_norm)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, D), each row of unit L2 norm."""
        x = self.embeddings(batch)                                         # (B, F)
        # float32 from here even when the MLP ran under bfloat16 autocast: the cosine keeps
        # full precision (a bf16 cosine is off by ~0.4 %, 0.04 in a gamma=10 logit)
        return F.normalize(self.mlp(x).float(), p=2.0, dim=1)              # (B, D)


class DSSM(nn.Module):
    """Two towers scored by ``gamma * cos(u, v)``.

    user_specs / item_specs: feature specs sized from data (see ``encoding``); names unique
        across both towers. A sequence's ``shared_with`` may name a sparse feature of either
        tower; that table is created once, here, and used by both.
    cfg: uses ``user_hidden``, ``item_hidden``, ``batch_norm``, ``dropout``, ``activation``,
        ``gamma`` and ``seed`` (initialisation). Embedding sizes come from the specs (the
        encoder sizes them from ``cfg.embedding_dim``).
    id_dropout: probability of hiding the ``user_id``/``item_id`` of a training row (see
        ``EmbeddingBlock``); default ``cfg.id_dropout`` if the config has that field, else
        ``DEFAULT_ID_DROPOUT``.
    """

    def __init__(
        self,
        user_specs: Sequence[Feature],
        item_specs: Sequence[Feature],
        cfg: TrainConfig,
        *,
        id_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if id_dropout is None:
            id_dropout = float(getattr(cfg, "id_dropout", DEFAULT_ID_DROPOUT))
        user_specs, item_specs = tuple(user_specs), tuple(item_specs)
        _check_unique_names(user_specs + item_specs, "DSSM")
        self.user_specs = user_specs
        self.item_specs = item_specs
        self.gamma = float(cfg.gamma)
        gen = torch.Generator().manual_seed(int(cfg.seed))
        by_name = {s.name: s for s in user_specs + item_specs}
        shared_names = sorted({s.shared_with for s in user_specs + item_specs
                               if isinstance(s, SequenceFeature) and s.shared_with})
        self.shared = nn.ModuleDict()
        for name in shared_names:
            target = by_name.get(name)
            if not isinstance(target, SparseFeature):
                raise ValueError(f"shared_with={name!r} does not name a sparse feature")
            self.shared[name] = _new_table(target.vocab_size, target.embedding_dim, gen)
        tables = {name: self.shared[name] for name in shared_names}
        self.id_dropout = float(id_dropout)
        common = dict(batch_norm=cfg.batch_norm, dropout=cfg.dropout, activation=cfg.activation,
                      shared=tables, generator=gen, id_dropout=self.id_dropout)
        self.user = Tower(user_specs, cfg.user_hidden, id_features=_id_names(user_specs, "user"),
                          **common)  # type: ignore[arg-type]
        self.item = Tower(item_specs, cfg.item_hidden, id_features=_id_names(item_specs, "item"),
                          **common)  # type: ignore[arg-type]
        if self.user.output_dim != self.item.output_dim:
            raise ValueError(f"towers end in different sizes: user {self.user.output_dim} "
                             f"vs item {self.item.output_dim}")

    @property
    def output_dim(self) -> int:
        """D, the size of both towers' vectors."""
        return self.user.output_dim

    @property
    def temperature(self) -> float:
        """1 / gamma: the softmax temperature the in-batch objective uses by default."""
        return 1.0 / self.gamma

    @property
    def user_feature_names(self) -> tuple[str, ...]:
        return self.user.embeddings.feature_names

    @property
    def item_feature_names(self) -> tuple[str, ...]:
        return self.item.embeddings.feature_names

    @property
    def feature_specs(self) -> dict[str, Feature]:
        """Every feature of both towers by name."""
        return {s.name: s for s in self.user_specs + self.item_specs}

    def id_feature(self, tower: str) -> str | None:
        """The feature that identifies a user/item: ``user_id``/``item_id`` if present, else the
        tower's first sparse feature, else None. Used to spot accidental hits in a batch."""
        if tower not in ("user", "item"):
            raise ValueError(f"tower must be 'user' or 'item', got {tower!r}")
        return _id_feature(self.user_specs if tower == "user" else self.item_specs, tower)

    def user_tower(self, batch: Mapping[str, Tensor]) -> Tensor:
        """User vectors (B, D), unit L2 norm."""
        return self.user(batch)

    def item_tower(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Item vectors (B, D), unit L2 norm."""
        return self.item(batch)

    def score(self, user_vectors: Tensor, item_vectors: Tensor) -> Tensor:
        """Row-wise logits gamma * cos for aligned (B, D) pairs -> (B,)."""
        return self.gamma * (user_vectors * item_vectors).sum(dim=1)       # (B,)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits gamma * cos(u, v), (B,); the probability is ``torch.sigmoid`` of them.

        A batch may say which rows repeat another row's tower input (``USER_ROW`` /
        ``ITEM_ROW``: see ``shared_rows``); each tower then runs once per distinct row."""
        u = _shared_rows(self.user, batch, batch.get(USER_ROW), self.user_feature_names)
        v = _shared_rows(self.item, batch, batch.get(ITEM_ROW), self.item_feature_names)
        return self.score(u, v)                                            # (B,)

    def embedding_tables(self) -> list[nn.Embedding]:
        """Every embedding table of the model, each once (a shared table too)."""
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]

    def ids_prechecked(self) -> contextlib.AbstractContextManager["DSSM"]:
        """Within this block lookups skip their per-batch id range check: for callers that
        validated every id of their data once (``training`` does, in ``_as_tensors``)."""
        return self._blocks_set("check_ids", False)

    def sparse_gradients(self, min_rows: int = 0) -> contextlib.AbstractContextManager["DSSM"]:
        """Within this block the gradients of the embedding tables of at least ``min_rows``
        rows are sparse: only the rows the batch looked up, without the padding row
        (``training.fit`` trains so, with ``optim.RowWiseAdam`` for those tables)."""
        return self._blocks_set("sparse_min_rows", max(0, int(min_rows)))

    @contextlib.contextmanager
    def random_source(self, generator: torch.Generator | None) -> Iterator["DSSM"]:
        """Within this block dropout and id dropout draw from ``generator`` instead of
        torch's global one (``training.fit`` gives each fit its own, seeded: fits may run
        side by side in threads, each reproducible)."""
        modules = [m for m in self.modules() if isinstance(m, (FastDropout, EmbeddingBlock))]
        before = [m.generator for m in modules]
        for m in modules:
            m.generator = generator
        try:
            yield self
        finally:
            for m, g in zip(modules, before):
                m.generator = g

    def sparse_tables(self, min_rows: int = 0) -> list[nn.Embedding]:
        """The tables ``sparse_gradients(min_rows)`` makes sparse, each once."""
        return [t for t in self.embedding_tables() if t.num_embeddings >= min_rows]

    @contextlib.contextmanager
    def _blocks_set(self, flag: str, value: Any) -> Iterator["DSSM"]:
        """Set ``flag`` of both towers' ``EmbeddingBlock`` for the block, then restore it."""
        blocks = [self.user.embeddings, self.item.embeddings]
        before = [getattr(b, flag) for b in blocks]
        for b in blocks:
            setattr(b, flag, value)
        try:
            yield self
        finally:
            for b, was in zip(blocks, before):
                setattr(b, flag, was)


def _shared_rows(tower: Tower, batch: Mapping[str, Tensor], rows: Tensor | None,
                 names: Sequence[str]) -> Tensor:
    """``tower(batch)`` computed once per distinct row: ``rows[r]`` is the row of this batch
    whose input row ``r`` repeats (``rows[r] == r``: its own; an item negative points at its
    event, whose user features it shares). Rows point only at rows that are their own."""
    if rows is None:
        return tower(batch)
    n = len(rows)
    own = rows == torch.arange(n)                                          # (B,) bool
    if bool(own.all()):
        return tower(batch)
    keep = own.nonzero().squeeze(1)                                        # (U,)
    out = tower({k: batch[k].index_select(0, keep) for k in names})       # (U, D)
    slot = torch.cumsum(own, 0) - 1                                        # row -> its place in keep
    return out.index_select(0, slot.index_select(0, rows))                # (B, D)


def _id_feature(specs: Sequence[Feature], tower: str) -> str | None:
    sparse = [s.name for s in specs if isinstance(s, SparseFeature)]
    wanted = f"{tower}_id"
    if wanted in sparse:
        return wanted
    return sparse[0] if sparse else None


def _id_names(specs: Sequence[Feature], tower: str) -> tuple[str, ...]:
    name = _id_feature(specs, tower)
    return (name,) if name is not None else ()


def _get(batch: Mapping[str, Tensor], name: str) -> Tensor:
    try:
        return batch[name]
    except KeyError:
        raise ValueError(f"the batch has no feature {name!r} (has {sorted(batch)})") from None


def _new_table(vocab: int, dim: int, generator: torch.Generator | None) -> nn.Embedding:
    table = nn.Embedding(vocab, dim, padding_idx=0)
    with torch.no_grad():
        table.weight.normal_(0.0, EMBEDDING_INIT_STD, generator=generator)
        table.weight[0].zero_()
    return table


def _checked_table(table: nn.Module, spec: SparseFeature | SequenceFeature) -> nn.Embedding:
    if not isinstance(table, nn.Embedding):
        raise ValueError(f"{spec.name}: shared table is not an nn.Embedding")
    if table.num_embeddings != spec.vocab_size or table.embedding_dim != spec.embedding_dim:
        raise ValueError(
            f"{spec.name}: shares a table of {table.num_embeddings}x{table.embedding_dim}, "
            f"but its spec says {spec.vocab_size}x{spec.embedding_dim}"
        )
    return table


def _fold_bias_into_batch_norm(module: "Tower", state_dict: dict[str, Tensor], prefix: str,
                               *_: Any) -> None:
    """Load-time hook: a saved bias of a linear layer that now precedes batch norm without
    one. In training mode BN subtracts the batch mean, so the bias never mattered; in eval
    mode BN subtracts its running mean, which had absorbed it: ``(Wx + b) - rm`` equals
    ``Wx - (rm - b)``. So the bias is dropped and subtracted from the running mean."""
    layers = list(module.mlp)
    for i, layer in enumerate(layers[:-1]):
        key = f"{prefix}mlp.{i}.bias"
        if (isinstance(layer, nn.Linear) and layer.bias is None and key in state_dict
                and isinstance(layers[i + 1], nn.BatchNorm1d)):
            bias = state_dict.pop(key)
            mean_key = f"{prefix}mlp.{i + 1}.running_mean"
            if mean_key in state_dict:
                state_dict[mean_key] = state_dict[mean_key] - bias


def _init_linear(layer: nn.Linear, activation: str | None, generator: torch.Generator | None
                 ) -> None:
    """Kaiming-uniform for ReLU-like activations, Xavier for the rest and the last layer."""
    with torch.no_grad():
        fan_in, fan_out = layer.in_features, layer.out_features
        if activation in ("relu", "leaky_relu", "elu", "gelu", "silu"):
            bound = math.sqrt(6.0 / fan_in)                      # Kaiming uniform, gain sqrt(2)
        else:
            gain = 5.0 / 3.0 if activation == "tanh" else 1.0
            bound = gain * math.sqrt(6.0 / (fan_in + fan_out))   # Xavier uniform
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()


def flops_per_sample(model: DSSM, *, training: bool = True) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of the towers' linear layers for one (user,
    item) pair; ``training`` counts forward + backward as 3x the forward. Embedding lookups,
    pooling and normalisation are memory-bound and not counted."""
    forward = sum(2 * m.in_features * m.out_features
                  for m in model.modules() if isinstance(m, nn.Linear))
    return 3 * forward if training else forward


def parameter_count(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (distinct) parameters of a module."""
    params: Iterable[nn.Parameter] = module.parameters()
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)
