"""Training loop, prediction and embedding for ``model.DSSM``.

Data is a ``dict[str, np.ndarray]`` keyed by feature name (both towers) plus ``"label"``
(float 0/1), as ``encoding.FeatureEncoder.transform_events`` returns it. Arrays are turned
into tensors once; each epoch permutes them once and batches are contiguous slices (no
``DataLoader``, no per-example Python).

``fit`` reports one dict per epoch to ``on_epoch_end`` with the stable keys ``epoch``,
``train_loss``, ``train_auc``, ``train_logloss``, ``val_loss``, ``val_auc``, ``val_logloss``,
``seconds`` (a metric that cannot be computed, e.g. without validation data, is ``None``;
``val_loss`` is the training objective on the validation rows). Metrics are
computed once per epoch from the collected predictions (at most ``TRAIN_LOGIT_ROWS`` of
them), never per batch.

Objectives (``cfg.objective``) are ``tasks.Pointwise`` and ``tasks.InBatch``: each owns its
training rows, its loss and its validation loss, and ``fit`` has no objective branches.
Validation always uses every validation row.
  Caveat, measured on ML-100K (protocol L): item-tower features that change with the event's
  time (statistics "as of event time") let the in-batch softmax tell a row's own item from the
  other rows' items by *when* they happened, a shortcut useless at retrieval time, where every
  candidate is scored as of one moment: user->item recall@50 fell from 0.29 to 0.11. Feed the
  item tower time-invariant values for this objective (e.g. item statistics as of the end of
  the training rows, or none).
"""
from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from .config import TrainConfig
from .features import ROW_KEYS, DenseFeature, Feature
from .heap import return_freed_memory
from . import metrics, optim, tasks
from .model import DSSM
from .stream import EventBatches

log = logging.getLogger(__name__)

TRAIN_METRIC_ROWS = tasks.TRAIN_METRIC_ROWS
#: Keys of every per-epoch record, in order.
EPOCH_KEYS = ("epoch", "train_loss", "train_auc", "train_logloss", "val_loss", "val_auc",
              "val_logloss", "seconds")
#: Embedding tables of at least this many rows train with sparse gradients and row-wise
#: Adam; smaller ones with dense fused Adam. At ML-100K's sizes (943 users, 1,682 items) the
#: row-wise bookkeeping cost more than a dense update of every row (optimiser 2.3-4.2 vs
#: 9.9-14.6 ms a step, 1.10-1.22x the samples/s). Whole pipeline steps with a 162k-user table
#: (bench/sparse_threshold_bench.py, 2 threads), a dense item table against a row-wise one:
#: 4k items 0.67-0.80x the step's time, 16k items 1.06-1.12x, 59k items (ML-25M's)
#: 1.14-1.23x; the cut sits above the crossover, where row-wise clearly wins.
SPARSE_MIN_ROWS = 32_768
#: Metrics early stopping can watch, and whether higher is better.
MONITORS = {"val_loss": False, "val_logloss": False, "val_auc": True, "val_recall@50": True}
STOP_REASONS = ("completed", "early", "cancelled")
#: Validation events x rows per event up to which ``fit`` encodes the validation rows once
#: and keeps their tensors for every epoch (the same draws each time): ML-100K's 10,000
#: events x 9 rows hold about 25 MB (~260 bytes a row); more are encoded again each epoch.
VAL_CACHE_ROWS = 500_000
#: Train AUC / logloss of an epoch (objectives that measure them on the logits seen while
#: training) come from its first batches up to this many rows: the batches arrive in a
#: seeded random order, and a 25M-interaction epoch would otherwise keep 700 MB of logits.
TRAIN_LOGIT_ROWS = 2_000_000
#: Streamed training batches a background thread encodes ahead of the optimisation steps
#: (numpy and the range checks release the interpreter often enough for the encoding to
#: overlap the steps on a second core; the batches are the same); 0: encode in line.
PREFETCH_BATCHES = 32


def native_bfloat16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:           # a build without the probe's kernels
            continue
    return False


def resolve_precision(precision: str) -> str:
    """``TrainConfig.precision`` -> what a training step runs in: "float32" or "bfloat16"."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, got {precision!r}")
    return precision


def _adam(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; the fused CPU kernel where this torch has one (one call per step instead of a
    dozen small ops per parameter tensor; same update rule)."""
    try:
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_optimizer(model: DSSM, cfg: TrainConfig, sparse_min_rows: int = 0
                   ) -> optim.Chain:
    """What ``fit`` steps: fused Adam for the dense parameters (MLPs, batch norm, embedding
    tables under ``sparse_min_rows`` rows) and lazy row-wise Adam (``optim.RowWiseAdam``,
    same lr and weight decay) for the larger tables, whose gradients are sparse under
    ``model.sparse_gradients(sparse_min_rows)``: a step updates the rows its batch touched,
    so its cost does not grow with the number of users or items."""
    tables = [t.weight for t in model.sparse_tables(sparse_min_rows)]
    in_tables = {id(w) for w in tables}
    dense = [p for p in model.parameters() if id(p) not in in_tables]
    parts: list[torch.optim.Optimizer] = []
    if dense:
        parts.append(_adam(dense, cfg))
    if tables:
        parts.append(optim.RowWiseAdam(tables, lr=cfg.learning_rate,
                                       weight_decay=cfg.weight_decay))
    return optim.Chain(*parts)


@dataclass
class FitResult:
    """What ``fit`` returns; the model itself holds the best epoch's weights.

    history: one dict per finished epoch (keys ``EPOCH_KEYS``).
    best_epoch: the (1-based) epoch whose weights were restored; 0 when none finished.
    stopped: "completed" (all epochs), "early" (patience ran out) or "cancelled".
    monitor: the validation metric early stopping watched (None without validation data).
    train_rows: training rows per epoch (positives only for "inbatch").
    train_seconds: wall time of the optimisation steps only, summed over epochs.
    precision: what the training steps' matrix products ran in ("float32" or "bfloat16").
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str = "completed"
    monitor: str | None = None
    train_rows: int = 0
    train_seconds: float = 0.0
    precision: str = "float32"

    @property
    def samples_per_second(self) -> float:
        """Training rows processed per second of optimisation (0 when nothing ran)."""
        done = self.train_rows * len(self.history)
        return done / self.train_seconds if self.train_seconds > 0 else 0.0


def fit(
    model: DSSM,
    train: Mapping[str, np.ndarray] | EventBatches,
    val: Mapping[str, np.ndarray] | EventBatches | None,
    cfg: TrainConfig,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    monitor: str | None = None,
    item_to_user_weight: float | None = None,
    temperature: float | None = None,
    logq: bool = True,
    positives_only: bool = True,
    validator: Callable[[DSSM], dict[str, Any]] | None = None,
    dist: Any = None,
    sparse_min_rows: int = SPARSE_MIN_ROWS,
) -> FitResult:
    """Train ``model`` in place with Adam (row-wise for the embedding tables: see
    ``make_optimizer``); restore the best epoch's weights; return the record.

    cfg: uses objective, epochs, batch_size, learning_rate, weight_decay,
        early_stopping_patience (< 1 disables early stopping), seed, num_threads and, for
        "inbatch", gamma (temperature 1 / gamma) and ``item_to_user_weight`` if the config
        has such a field (else 0).
    on_epoch_end: called with each epoch's record (see module docstring).
    should_stop: polled before every batch; True cancels (``stopped == "cancelled"``).
    monitor: "val_logloss", "val_auc" or "val_loss" (the objective itself on the validation
        rows: BCE, or the in-batch softmax over validation positives in fixed batches);
        default val_logloss for "pointwise", val_auc for "inbatch" (whose probabilities are
        not calibrated; on ML-100K its val_loss bottomed out epochs before recall did).
    validator: called with the model (eval mode) after every epoch; the figures it returns
        join the epoch's record (how the retrieval task measures validation recall, which
        ``monitor="val_recall@50"`` then watches).
    item_to_user_weight / temperature / logq: "inbatch" options overriding the config (see
        ``losses.InBatchSoftmax``).
    positives_only: "inbatch" trains on ``label == 1`` rows (default); False trains on every
        row as an observed pair (who interacts at all, whatever the rating; on ML-100K
        protocol L this raised user->item recall@50 from 0.30 to 0.34).
    sparse_min_rows: tables of at least this many rows get sparse gradients and row-wise
        Adam (``make_optimizer``); 0: every table.
    dist: a ``distributed.DistContext``: data-parallel training (each rank its slice of
        every batch, gradients averaged; rank 0 alone evaluates, calls ``on_epoch_end`` and
        ``validator`` and decides stopping, which every rank follows).
    """
    if monitor is None:
        monitor = tasks.TASKS[cfg.objective].default_monitor \
            if cfg.objective in tasks.TASKS else "val_logloss"
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {sorted(MONITORS)}, got {monitor!r}")
    if monitor == "val_recall@50" and validator is None:
        raise ValueError("monitor 'val_recall@50' needs a validator that measures it")
    specs = model.feature_specs
    streaming = isinstance(train, EventBatches)
    x_train = y_train = None
    if not streaming:
        x_train, y_train = _as_tensors(train, specs, "train", need_label=True)
        if y_train is None:
            raise ValueError("train: missing columns ['label']")
    x_val, y_val = None, None
    val_stream: _ValidationRows | None = None
    if isinstance(val, EventBatches):
        val_stream = _ValidationRows(val, specs, VAL_CACHE_ROWS) if len(val) else None
    elif val is not None:
        x_val, y_val = _as_tensors(val, specs, "val", need_label=True)
        if y_val is not None and len(y_val) == 0:
            x_val, y_val = None, None
    has_val = x_val is not None or val_stream is not None

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.num_threads))
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(model.ids_prechecked())    # _as_tensors range-checked every id
        # large tables: row-wise updates (optim.py)
        stack.enter_context(model.sparse_gradients(sparse_min_rows))
        # dropout draws from this fit's own generator (fits may run side by side)
        stack.enter_context(model.random_source(torch.Generator().manual_seed(int(cfg.seed))))
        order_gen = torch.Generator().manual_seed(int(cfg.seed))  # shuffling

        task = tasks.for_config(model, cfg, item_to_user_weight=item_to_user_weight,
                                temperature=temperature, logq=logq,
                                positives_only=positives_only)
        if streaming:
            metric_x, metric_y = (None, None) if task.collects_logits else _as_tensors(
                train.sample(task.n_metric_rows, int(cfg.seed)), specs, "train",
                need_label=True)
            n = len(train)
        else:
            metric_x, metric_y = (None, None) if task.collects_logits else \
                task.metric_rows(x_train, y_train)
            x_train, y_train = task.rows(x_train, y_train)
            n = len(y_train)
        if n == 0:
            raise ValueError("no training rows")

        optimizer = make_optimizer(model, cfg, sparse_min_rows)
        # --- distributed hook (dssm_core/distributed.py) ---
        main = dist is None or dist.is_main
        if dist is not None:
            dist.sync_parameters(model)
        params = list(model.parameters())
        batches_done = 0
        # --- end distributed hook ---
        precision = resolve_precision(str(getattr(cfg, "precision", "float32")))
        autocast = precision == "bfloat16"
        result = FitResult(monitor=monitor if has_val else None, train_rows=n,
                           precision=precision)
        higher = MONITORS[monitor]
        best_value = -math.inf if higher else math.inf
        best_state: dict[str, Tensor] | None = None
        since_best = 0
        bs = int(cfg.batch_size)
        patience = int(cfg.early_stopping_patience)

        for epoch in range(1, int(cfg.epochs) + 1):
            t0 = time.perf_counter()
            model.train()
            if streaming:
                epoch_batches = _prefetched(_stream_batches(
                    train, epoch, bs, specs, task.uses_negatives, task.row_mask),
                    PREFETCH_BATCHES)
            else:
                epoch_batches = _array_batches(x_train, y_train,
                                               torch.randperm(n, generator=order_gen), bs)
            loss_sum, loss_rows = 0.0, 0
            logits_seen: list[Tensor] = []
            labels_seen: list[Tensor] = []
            seen_rows = 0
            cancelled = False
            for full, y_full in epoch_batches:
                stop = main and should_stop is not None and should_stop()
                if dist is not None:
                    stop = bool(dist.broadcast_decision(int(stop))[0])
                if stop:
                    cancelled = True
                    break
                start, end = 0, len(y_full)
                if end - start < 2:      # batch norm / softmax need 2 rows; drop a lone last row
                    continue
                if dist is not None:     # this rank's slice of the batch
                    if not dist.usable(start, end):
                        continue
                    start, end = dist.slice(start, end)
                if dist is None:         # the whole batch: no per-key slicing
                    batch, y_batch = full, y_full
                else:
                    batch = _slice_rows(full, start, end)
                    y_batch = y_full[start:end]
                loss, logits = task.loss(batch, y_batch, autocast)
                if logits is not None and seen_rows < TRAIN_LOGIT_ROWS:
                    logits_seen.append(logits)
                    labels_seen.append(y_batch)
                    seen_rows += len(y_batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if dist is not None:
                    dist.average_gradients(params)
                    batches_done += 1
                    dist.maybe_fail(batches_done)
                optimizer.step()
                loss_sum += float(loss.detach()) * (end - start)
                loss_rows += end - start
            result.train_seconds += time.perf_counter() - t0
            if streaming:
                # the epoch's batches, freed (many in the prefetch thread's arena), stay
                # resident until trimmed: the validation pass would build its peak on them
                return_freed_memory()
            if streaming and epoch == 1:
                result.train_rows = loss_rows if dist is None else len(train) * train.per_event
            if dist is not None:
                loss_sum, loss_rows = dist.sum_floats(loss_sum, loss_rows)
            if cancelled:
                result.stopped = "cancelled"
                log.info("training cancelled during epoch %d", epoch)
                break
            if not main:     # distributed: rank 0 evaluates and decides, this rank follows
                stop_now, result.best_epoch = dist.broadcast_decision(0, 0)
                if stop_now:
                    result.stopped = "early"
                    break
                continue

            if task.collects_logits:
                scores = torch.sigmoid(torch.cat(logits_seen)).numpy()
                labels = torch.cat(labels_seen).numpy()
            else:
                scores = _predict_tensors(model, metric_x, 8192)
                labels = metric_y.numpy()
            train_auc, train_logloss = _auc_logloss(labels, scores)
            val_loss = val_auc = val_logloss = None
            if x_val is not None and y_val is not None:
                val_logits = _logits_tensors(model, x_val, 8192)                 # (N_val,)
                val_auc, val_logloss = _auc_logloss(y_val.numpy(),
                                                    torch.sigmoid(val_logits).numpy())
                val_loss = task.val_loss(x_val, y_val, val_logits, bs, int(cfg.seed))
            elif val_stream is not None:
                val_auc, val_logloss, val_loss = _stream_validation(model, val_stream, task,
                                                                    bs)
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / max(loss_rows, 1),
                "train_auc": train_auc,
                "train_logloss": train_logloss,
                "val_loss": val_loss,
                "val_auc": val_auc,
                "val_logloss": val_logloss,
                "seconds": time.perf_counter() - t0,
            }
            if validator is not None and has_val:
                model.eval()
                record.update(validator(model))
            result.history.append(record)
            log.info("epoch %d: %s", epoch, record)
            if on_epoch_end is not None:
                on_epoch_end(dict(record))

            value = record.get(monitor)
            stop_now = False
            if not has_val or value is None:
                best_state, result.best_epoch = None, epoch     # no validation: keep the last
            elif (value > best_value) if higher else (value < best_value):
                best_value, since_best, result.best_epoch = value, 0, epoch
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                since_best += 1
                if patience >= 1 and since_best >= patience:
                    result.stopped = "early"
                    stop_now = True
                    log.info("early stop after epoch %d (best %d)", epoch, result.best_epoch)
            if dist is not None:
                dist.broadcast_decision(int(stop_now), result.best_epoch)
            if stop_now:
                break

        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return result
    finally:
        stack.close()
        torch.set_num_threads(previous_threads)


def predict(model: DSSM, data: Mapping[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
    """Probabilities ``sigmoid(gamma * cos(u, v))`` (N,) float32 for aligned rows of ``data``."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    x, _ = _as_tensors(data, model.feature_specs, "data", need_label=False)
    return _predict_tensors(model, x, batch_size)


def embed(model: DSSM, tower: str, table: Mapping[str, np.ndarray], batch_size: int = 8192
          ) -> np.ndarray:
    """Unit vectors (N, D) float32 of one tower ("user" or "item") for a table of its features.

    ``table`` holds (at least) the tower's features, as ``encoder.user_table``/``item_table``
    return them. Runs in eval mode without gradients.
    """
    if tower not in ("user", "item"):
        raise ValueError(f"tower must be 'user' or 'item', got {tower!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    specs = model.user_specs if tower == "user" else model.item_specs
    x, _ = _as_tensors(table, {s.name: s for s in specs}, f"{tower} table", need_label=False)
    fn = model.user_tower if tower == "user" else model.item_tower
    out = torch.empty((_rows(x), model.output_dim), dtype=torch.float32)       # (N, D)
    return _eval_batches(model, fn, x, batch_size, out).numpy()


# ---------------------------------------------------------------------------------------------

def _array_batches(x: Mapping[str, Tensor], y: Tensor, perm: Tensor, batch_size: int
                   ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """Materialised rows in the order ``perm``: one gather per epoch, contiguous batches."""
    xs = {k: v[perm] for k, v in x.items()}
    ys = y[perm]
    for start in range(0, len(ys), batch_size):
        yield {k: v[start:start + batch_size] for k, v in xs.items()}, \
            ys[start:start + batch_size]


def _stream_batches(source: EventBatches, epoch: int, batch_size: int,
                    specs: Mapping[str, Feature], negatives: bool,
                    mask: Callable[[Tensor], Tensor | None], *, shuffle: bool = True,
                    what: str = "train") -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """The rows ``mask`` keeps of each batch ``source`` encodes (with its negatives when
    ``negatives``; in a seeded order when ``shuffle``)."""
    for data in source.batches(epoch, batch_size, negatives=negatives, shuffle=shuffle):
        x, y = _as_tensors(data, specs, what, need_label=True)
        assert y is not None
        keep = mask(y)
        if keep is not None:     # rows left out: the shared-row positions no longer hold
            x, y = {k: v[keep] for k, v in x.items() if k not in ROW_KEYS}, y[keep]
        yield x, y


def _prefetched(items: Iterator[Any], depth: int = PREFETCH_BATCHES) -> Iterator[Any]:
    """``items`` in order, produced by a background thread up to ``depth`` items ahead of
    the consumer. An exception raised while producing is raised here, at its place in the
    sequence; leaving early (``close``, a ``break``) stops the thread before returning."""
    if depth < 1:
        yield from items
        return
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, end))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))

    worker = threading.Thread(target=produce, name="dssm-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


class _ValidationRows:
    """The validation events' encoded batches, the same every epoch (fixed draws and
    order): encoded once and kept as tensors when the rows (events x ``per_event``) number
    at most ``max_rows``, else encoded again at each pass (memory stays bounded)."""

    def __init__(self, source: EventBatches, specs: Mapping[str, Feature],
                 max_rows: int = VAL_CACHE_ROWS) -> None:
        self.source = source
        self.specs = specs
        self.keep = len(source) * source.per_event <= max_rows
        self._kept: dict[tuple[int, bool, bool], list[tuple[dict[str, Tensor], Tensor]]] = {}

    def batches(self, batch_size: int, negatives: bool, shuffle: bool,
                mask: Callable[[Tensor], Tensor | None] = lambda y: None
                ) -> Iterable[tuple[dict[str, Tensor], Tensor]]:
        """``_stream_batches(source, 0, batch_size, specs, negatives, mask, shuffle=...)``:
        the same tensors as encoding them again (epoch 0's seeded order when ``shuffle``).
        The mask must be the same for a given ``(batch_size, negatives, shuffle)``."""
        fresh = _stream_batches(self.source, 0, batch_size, self.specs, negatives, mask,
                                shuffle=shuffle, what="val")
        if not self.keep:
            return fresh
        key = (int(batch_size), bool(negatives), bool(shuffle))
        if key not in self._kept:
            self._kept[key] = list(fresh)
        return self._kept[key]


def _stream_validation(model: DSSM, rows: _ValidationRows, task: Any, batch_size: int
                       ) -> tuple[float | None, float | None, float | None]:
    """(AUC, logloss, the objective) on the validation events, encoded in chunks with the
    same draws every epoch (eval mode)."""
    logits, labels = [], []
    for x, y in rows.batches(8192, True, False):
        logits.append(_logits_tensors(model, x, 8192))                          # (b,)
        labels.append(y)
    if not logits:
        return None, None, None
    val_logits, y_val = torch.cat(logits), torch.cat(labels)
    auc, logloss = _auc_logloss(y_val.numpy(), torch.sigmoid(val_logits).numpy())
    if task.collects_logits:
        return auc, logloss, task.val_loss({}, y_val, val_logits, batch_size, 0)
    return auc, logloss, task.val_loss_batches(
        rows.batches(batch_size, False, True, lambda y: y > 0.5))


def _rows(x: Mapping[str, Tensor]) -> int:
    return len(next(iter(x.values()))) if x else 0


def _slice_rows(x: Mapping[str, Tensor], start: int, end: int) -> dict[str, Tensor]:
    """Rows ``start:end`` of a batch. Its shared-row keys (``features.ROW_KEYS``) become
    positions within the slice; a row whose source lies outside it becomes its own source
    (every row carries its features: the tower runs on it, same values)."""
    if start == 0 and end >= _rows(x):
        return dict(x)
    out = {k: v[start:end] for k, v in x.items()}
    for key in ROW_KEYS:
        if key in out:
            rows = out[key] - start
            own = torch.arange(len(rows))
            out[key] = torch.where((rows >= 0) & (rows < len(rows)), rows, own)
    return out


def _eval_batches(model: DSSM, fn: Callable[[dict[str, Tensor]], Tensor],
                  x: Mapping[str, Tensor], batch_size: int, out: Tensor) -> Tensor:
    """``out[rows] = fn(batch)`` over contiguous batches of ``x`` (tensors from ``_as_tensors``,
    whose ids are range-checked), in eval mode, without gradients; the model's mode is
    restored. Returns ``out``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.ids_prechecked():
            for start in range(0, _rows(x), batch_size):
                batch = _slice_rows(x, start, start + batch_size)
                out[start:start + batch_size] = fn(batch)                      # (b, ...)
    finally:
        model.train(was_training)
    return out


def _logits_tensors(model: DSSM, x: Mapping[str, Tensor], batch_size: int) -> Tensor:
    """Logits (N,) in eval mode, without gradients; the model's mode is restored."""
    return _eval_batches(model, model, x, batch_size, torch.empty(_rows(x), dtype=torch.float32))


def _predict_tensors(model: DSSM, x: Mapping[str, Tensor], batch_size: int) -> np.ndarray:
    return torch.sigmoid(_logits_tensors(model, x, batch_size)).numpy()


def _as_tensors(
    data: Mapping[str, np.ndarray],
    specs: Mapping[str, Feature],
    what: str,
    *,
    need_label: bool,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Tensors for every feature in ``specs`` (ints int64, dense float32 (N, dim)) + label."""
    missing = [name for name in specs if name not in data]
    if need_label and "label" not in data:
        missing.append("label")
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    out: dict[str, Tensor] = {}
    n: int | None = None
    for name, spec in specs.items():
        arr = np.asarray(data[name])
        if not arr.flags.writeable:      # torch cannot wrap read-only memory safely
            arr = arr.copy()
        if isinstance(spec, DenseFeature):
            t = torch.as_tensor(arr, dtype=torch.float32)
            if t.dim() == 1:
                t = t.unsqueeze(1)                                             # (N, 1)
        else:
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{what}: {name!r} must hold integer indices, got {arr.dtype}")
            t = torch.as_tensor(arr.astype(np.int64, copy=False))
            size = spec.vocab_size  # type: ignore[union-attr]
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
                bad = t[(t < 0) | (t >= size)].unique()[:5].tolist()
                raise ValueError(f"{what}: {name!r} holds indices outside [0, {size}): {bad}")
        if n is None:
            n = len(t)
        elif len(t) != n:
            raise ValueError(f"{what}: {name!r} has {len(t)} rows, expected {n}")
        out[name] = t
    label = None
    if "label" in data:
        label = torch.tensor(np.asarray(data["label"]), dtype=torch.float32).reshape(-1)
        if n is not None and len(label) != n:
            raise ValueError(f"{what}: label has {len(label)} rows, expected {n}")
        n = len(label) if n is None else n
    for key in ROW_KEYS:     # which rows repeat another's tower input (positions in data)
        if key in data:
            rows = torch.as_tensor(np.asarray(data[key], dtype=np.int64))
            size = len(rows) if n is None else n
            if len(rows) != size or (size and (int(rows.min()) < 0
                                               or int(rows.max()) >= size)):
                raise ValueError(f"{what}: {key!r} does not index the batch's {size} rows")
            if not bool((rows[rows] == rows).all()):
                raise ValueError(f"{what}: {key!r} points at a row that is not its own source")
            out[key] = rows
    return out, label


def _auc_logloss(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """AUC (None when only one class is present) and clipped logloss of probabilities.
    (float32 stays float32: the metrics work a chunk at a time, never on float64 copies of a
    whole validation set.)"""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores).ravel()
    if len(labels) == 0:
        return None, None
    if not np.all(np.isfinite(scores)):
        raise ValueError("the model's predictions are not finite: training diverged "
                         "(try a lower learning rate)")
    both = 0 < np.count_nonzero(labels > 0.5) < len(labels)
    return (metrics.auc(labels, scores) if both else None), metrics.logloss(labels, scores)
