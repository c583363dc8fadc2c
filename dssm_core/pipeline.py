"""One training run, data to stored model: the one code path the CLI and the app share.

``split`` -> ``FeatureEncoder.fit`` on the training rows -> ``DSSM`` -> ``training.fit`` ->
honest evaluation on the held-out rows (with the baselines, in the same run) -> every user and
item embedded -> (``run_training``) stored in one transaction.

Protocols (every summary carries its name and description):

- **T** (the article's): label rating > threshold; all interactions sorted by time; the first
  80 % are training rows (their last eighth is validation, for early stopping), the last 20 %
  the test. Test AUC and logloss; then the audience question on the same split: for each
  positive test interaction (u, i) whose item occurs in the training rows, rank every user for
  item i (user and item vectors as of the split time), users who interacted with i in the
  training rows removed; item->user recall@K pools every such interaction (micro average). The
  user->item direction is measured the same way (items the user had in training removed).
- **L** (leave-last-out, as torch-rechub and retrieval libraries report): for every user with
  at least two interactions, the last one (by time) is the test; the rest are training rows
  (each user's last remaining one, for users with two or more left, is validation). History and statistics come from the
  training rows only. Every held-out interaction is relevant whatever its rating; user->item and
  item->user recall@K with already-seen candidates removed, exact search over all items/users.
  There is no shared "now" in this question: each user's vector is as of just after their own
  last known event (``_own_last_event``), so the recency statistic reads what a training event
  shows rather than the months since a user's last session.

Labels: rating > ``cfg.label_threshold`` (implicit data: every observed event). Where the run
samples negatives (implicit data: ``cfg.negatives``; rated data: ``cfg.explicit_negatives``),
training, validation and test rows all get them (seeded; an item the user interacted with
in the known rows - anywhere, for the test - is never drawn), so test AUC/logloss measure the
same mixture the model learned.

Baselines on the same split, in the same run: popularity (items ranked by training count,
users by training activity) for both retrieval directions, and the per-item mean label rate
(smoothed towards the global rate) for test AUC and logloss.
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from .config import TrainConfig
from .dataset import Dataset
from .encoding import FeatureEncoder, as_str_array, negative_generators
from .events import EventLog
from .heap import return_freed_memory
from .stream import EventBatches, by_event
from . import evaluation, metrics, peers
from .progress import Progress, Reporter, Throttled
from .trials import (EarlyRefit, TrainingCancelled, fit_progress, fit_trials,  # noqa: F401
                     slot_share)

log = logging.getLogger(__name__)

#: Cut-offs of every retrieval metric in a summary.
KS = evaluation.KS
#: The validation figure retrieval runs stop on: mean of both directions' recall@50.
VAL_RECALL = "val_recall@50"
#: ``TrainConfig.tune``: the settings tried, each trained on the training rows and judged on
#: validation (never on the test); the best is kept (and refitted when ``cfg.refit``).
#: "negatives": whether random (existing user, item) pairs join the negatives. They teach
#: the users' activity, which finds who interacts next among existing users (protocol A) and
#: misleads where every user has exactly one held-out item (protocol L).
TUNE_SPACES: dict[str, tuple[dict[str, Any], ...]] = {
    "none": (),
    "negatives": ({"pair_negatives": 0}, {"pair_negatives": 4}),
}
#: Tuning trials train side by side, one thread each, when the process may use a core per
#: trial, every trial's fit runs on one torch thread and their training rows (events x rows
#: per event, summed) are at most this many: each keeps its validation rows and a prefetch
#: queue, so larger runs train their trials one after another.
PARALLEL_TRIAL_ROWS = 5_000_000
#: With trials side by side, the refit of the trial leading on validation starts on the core
#: the first trial to end leaves idle (``trials.EarlyRefit``: the same model, sooner; on
#: ML-100K's default run about 20 % less wall time). False: the refit waits for every trial.
EARLY_REFIT = True
#: Pseudo-count of the item-mean baseline (pulls rarely seen items to the global like-rate).
BASELINE_SMOOTHING = 5.0
#: How often (seconds) ``run_training`` asks the store whether a cancel was requested.
CANCEL_POLL_S = 0.5

PROTOCOL_DESCRIPTIONS = {
    "T": ("time split: label rating > {thr:g}; interactions sorted by time, first 80% train "
          "(its last eighth validation), last 20% test; retrieval queries = positive test "
          "interactions whose item occurs in training, vectors as of the split time, "
          "candidates already seen in training removed, exact search, micro-averaged"),
    "L": ("leave-last-out: per user with >= 2 interactions the last one is the test, the rest "
          "train (each user's last remaining one validation); features from training rows only; every "
          "held-out interaction is relevant; already-seen removed, exact search"),
    "A": ("audience: interactions ordered by (time, row), the first 80% are the past (its last "
          "eighth validation), the rest the future; any rating is an interaction; candidates "
          "are users with a past row (targetable) and items with a past row (known); relevant "
          "= future pairs not in the past; features and vectors from the past only; exact "
          "search, already-seen removed, recall pooled over relevant pairs (micro)"),
}


@dataclass(frozen=True)
class Split:
    """Row positions (into ``dataset.interactions``) of one evaluation protocol.

    train: rows the model is fitted on (encoders too). val: rows for early stopping.
    test: held-out rows. split_time: T and A: the first test timestamp; L: None.
    pool: rows history and statistics may come from (None = every interaction). Under A
    the past (train + validation): the future's rows never feed a feature, even rows that
    share the split's second.
    """

    protocol: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    split_time: int | None
    pool: np.ndarray | None
    description: str

    @property
    def known(self) -> np.ndarray:
        """Every row the model may know of: train and validation (the pool itself where it
        is exactly those rows, as under A and L: no second copy at scale)."""
        if self.pool is not None and len(self.pool) == len(self.train) + len(self.val):
            return self.pool
        return np.sort(np.concatenate([self.train, self.val]))


@dataclass
class TrainResult:
    """Everything one in-memory training produced. Two sets of vectors, (N, D) float32 each,
    aligned with ``user_ids`` / ``item_ids`` (every user/item of the dataset):

    - ``eval_user_vectors`` / ``eval_item_vectors``: as of the split (features from the
      known rows only): what the test figures were computed with. Evaluate with these.
    - ``audience_user_vectors`` / ``audience_item_vectors``: as of the end of the data
      (held-out interactions included): what is stored and what audiences search. Never
      evaluate with these: they have seen the test.
    """

    model: Any
    encoder: FeatureEncoder
    cfg: TrainConfig
    split: Split
    history: list[dict[str, Any]]
    fit: Any
    summary: dict[str, Any]
    user_ids: np.ndarray
    item_ids: np.ndarray
    eval_user_vectors: np.ndarray
    eval_item_vectors: np.ndarray
    audience_user_vectors: np.ndarray
    audience_item_vectors: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def describe_protocol(protocol: str, cfg: TrainConfig | None = None) -> str:
    """The one-line description stored with every summary of ``protocol``."""
    if protocol not in PROTOCOL_DESCRIPTIONS:
        known = ", ".join(PROTOCOL_DESCRIPTIONS)
        raise ValueError(f"unknown protocol {protocol!r}; known: {known}")
    thr = cfg.label_threshold if cfg is not None else 3.0
    return PROTOCOL_DESCRIPTIONS[protocol].format(thr=thr)


# ------------------------------------------------------------------------------------ split
def split(dataset: Dataset, cfg: TrainConfig) -> Split:
    """Train/validation/test rows of ``cfg.protocol`` (see the module docstring)."""
    inter = dataset.interactions
    n = len(inter)
    if n < 10:
        raise ValueError(f"too few interactions to split ({n}); need at least 10")
    ts = inter["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(n), ts))          # by time, then by row: deterministic
    desc = describe_protocol(cfg.protocol, cfg)
    if cfg.protocol == "T":
        n_test = int(round(n * cfg.test_fraction))
        n_known = n - n_test
        n_val = int(round(n_known * cfg.val_fraction))
        if n_test < 1 or n_val < 1 or n_known - n_val < 1:
            raise ValueError(f"split leaves an empty part (n={n}, test={n_test}, val={n_val})")
        train, val, test = order[:n_known - n_val], order[n_known - n_val:n_known], order[n_known:]
        return Split("T", np.sort(train), np.sort(val), np.sort(test), int(ts[test].min()),
                     None, desc)
    if cfg.protocol == "A":
        n_past = int(math.floor(n * (1.0 - cfg.test_fraction) + 1e-9))
        n_val = int(round(n_past * cfg.val_fraction))
        if n_past - n_val < 1 or n_val < 1 or n - n_past < 1:
            raise ValueError(f"split leaves an empty part (n={n}, past={n_past}, val={n_val})")
        past, future = order[:n_past], order[n_past:]
        train, val = past[:n_past - n_val], past[n_past - n_val:]
        return Split("A", np.sort(train), np.sort(val), np.sort(future), int(ts[future[0]]),
                     np.sort(past), desc)
    # L: the last interaction of every user with at least two
    users = as_str_array(inter["user_id"])
    codes = pd.factorize(users)[0]
    by_user = order[np.argsort(codes[order], kind="stable")]   # users, each in time order
    cu = codes[by_user]
    last = np.r_[cu[1:] != cu[:-1], True]
    count = np.bincount(codes)
    is_test = last & (count[cu] >= 2)
    test = by_user[is_test]
    # validation: the same rule inside the rest (each user's last remaining interaction,
    # for users with at least two left), so choices are made on the question the test asks
    rest_by_user = by_user[~is_test]
    cr = codes[rest_by_user]
    last_r = np.r_[cr[1:] != cr[:-1], True] if len(cr) else np.zeros(0, dtype=bool)
    count_r = np.bincount(cr, minlength=len(count))
    val = rest_by_user[last_r & (count_r[cr] >= 2)]
    rest = np.setdiff1d(order, test)
    train = np.setdiff1d(rest, val)
    if len(test) < 1 or len(val) < 1 or len(train) < 1:
        raise ValueError("leave-last-out needs users with at least two interactions")
    pool = np.sort(rest)
    return Split("L", np.sort(train), np.sort(val), np.sort(test), None, pool, desc)


# ------------------------------------------------------------------------------------ train
def make_encoder(cfg: TrainConfig) -> FeatureEncoder:
    """The (unfitted) feature encoder a config asks for."""
    return FeatureEncoder(history_len=cfg.history_len, label_threshold=cfg.label_threshold,
                          embedding_dim=cfg.embedding_dim)


def train(
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: Any = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Split, encode, train, evaluate (with baselines) and embed, all in memory.

    Raises ``TrainingCancelled`` when ``should_stop`` stops the training, ``ValueError`` for
    data that cannot be trained on. ``dist``: a ``distributed.DistContext`` (every rank
    calls this; rank 0's result is the product, see ``training.fit``). ``progress``: told
    the stages "encode", "train", "evaluate", "embed" (``dssm_core.progress``).
    """
    import torch

    if dist is not None and not dist.active:
        # one process (the CLI always makes a context): train as without one, so the
        # tuning trials run side by side and no batch is sliced for a single rank
        dist = None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.num_threads))
    try:
        return _train(dataset, cfg, on_epoch_end, should_stop, dist, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    dataset: Dataset,
    cfg: TrainConfig,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    should_stop: Callable[[], bool] | None,
    dist: Any = None,
    progress: Progress | None = None,
) -> TrainResult:
    from . import training
    from .model import DSSM

    t0 = time.perf_counter()
    tell = Reporter(progress)
    tell("encode", 0.0)
    sp = split(dataset, cfg)
    elog = EventLog.of(dataset)                     # the ids are mapped here, once
    enc = make_encoder(cfg).fit(dataset, sp.train, pool=sp.pool, event_log=elog)
    tell("encode", 0.5)
    # the validation tables (as of the end of the training rows) first: their context is
    # dropped before the past's is built, so two never coexist (peak memory at scale)
    val_tables = eval_tables(enc, dataset, sp, validation=True, event_log=elog)
    monitor, validator = _monitor(enc, dataset, sp, cfg, event_log=elog, tables=val_tables)
    tf = time.perf_counter()
    ctx = enc.context(dataset, sp.pool, event_log=elog)      # shared by every trial
    samplers: dict[str, Any] = {}
    known = sp.known
    t_features = time.perf_counter() - tf
    space = [cfg.with_(**o) for o in TUNE_SPACES[cfg.tune]] or [cfg]
    tf = time.perf_counter()
    rows = [tuple(_events(enc, ctx, samplers, dataset, trial_cfg, r, seed, known)
                  for r, seed in ((sp.train, cfg.seed), (sp.val, cfg.seed + 1)))
            for trial_cfg in space]
    t_features += time.perf_counter() - tf
    tell("encode", 1.0)
    return_freed_memory()
    tell("train", 0.0)
    # (a generator, not a loop: a loop variable would keep the last trial's rows, and with
    # them the past's context, alive until the function returns)
    if any(_single_class(enc, elog, x) for x, _v in rows):
        raise ValueError("the training rows hold a single class: change label_threshold")
    slots = len(space) + bool(cfg.refit)

    def fit_trial(k: int, epoch_cb: Callable[[dict[str, Any]], None],
                  stop_cb: Callable[[], bool]) -> tuple[Any, Any]:
        model = DSSM(enc.user_specs_, enc.item_specs_, space[k])
        fr = training.fit(model, rows[k][0], rows[k][1], space[k], on_epoch_end=epoch_cb,
                          should_stop=stop_cb, monitor=monitor, validator=validator,
                          dist=dist)
        return model, fr

    def refit_for(k: int) -> tuple[Any, int, Callable[..., Any]]:
        """Trial ``k``'s refit: its settings learn from the whole past (the validation rows
        are its most recent part), a fresh model trained for a number of epochs."""
        model = DSSM(enc.user_specs_, enc.item_specs_, space[k])
        both = _events(enc, ctx, samplers, dataset, space[k],
                       np.concatenate([rows[k][0].rows, rows[k][1].rows]), cfg.seed, known)

        def train(epochs: int, epoch_cb: Callable[[dict[str, Any]], None],
                  stop_cb: Callable[[], bool]) -> Any:
            return training.fit(model, both, None, _refit_config(space[k], epochs),
                                on_epoch_end=epoch_cb, should_stop=stop_cb, dist=dist)

        return model, _stream_rows(both), train

    side_by_side = len(space) > 1 and dist is None and _trial_cores(space) >= len(space) \
        and sum(_stream_rows(x) for x, _ in rows) <= PARALLEL_TRIAL_ROWS
    # the refit of the trial leading on validation starts on the core the first trial to
    # end leaves idle (trials.EarlyRefit: the model is the same, only sooner)
    early = EarlyRefit(refit_for, len(space), monitor, training.MONITORS[monitor],
                       int(cfg.epochs), int(cfg.batch_size)) \
        if EARLY_REFIT and side_by_side and cfg.refit and all(len(v) for _, v in rows) else None
    try:
        fits = fit_trials(fit_trial, len(space), side_by_side, tell, on_epoch_end,
                          should_stop, [(_stream_rows(x), c) for (x, _), c in zip(rows, space)],
                          slots, watch=early)
        trials: list[dict[str, Any]] = []
        best: tuple[float, int] | None = None
        for k, (model, fr) in enumerate(fits):
            kept = next((h for h in fr.history if h["epoch"] == fr.best_epoch), None)
            score = None if kept is None else kept.get(monitor)
            trials.append({"trial": k + 1, "overrides": TUNE_SPACES[cfg.tune][k] if
                           TUNE_SPACES[cfg.tune] else {}, "best_epoch": int(fr.best_epoch),
                           monitor: score})
            value = -math.inf if score is None else (score if training.MONITORS[monitor]
                                                     else -score)
            if best is None or value > best[0]:
                best = (value, k)
        assert best is not None
        chosen = best[1]
        model, fr = fits[chosen]
        x_train, x_val = rows[chosen]
        cfg_used = space[chosen]
        fitted = model                          # validation figures are this model's
        if cfg.refit and fr.best_epoch >= 1 and len(x_val):
            # the epoch count was chosen on validation; now learn from the whole past for
            # that many epochs (already under way when it was the early refit's trial)
            share = slot_share(tell, len(space), slots)
            refitted = None if early is None else early.take(chosen, int(fr.best_epoch),
                                                             should_stop, share)
            if refitted is not None:
                model = refitted
            else:
                model, n_rows, refit_train = refit_for(chosen)
                epoch_cb, stop_cb = fit_progress(share, None, should_stop, n_rows,
                                                 _refit_config(cfg_used, int(fr.best_epoch)))
                if refit_train(int(fr.best_epoch), epoch_cb, stop_cb).stopped == "cancelled":
                    raise TrainingCancelled("training cancelled")
    finally:
        if early is not None:
            early.cancel()
            early = None
    tell("train", 1.0)
    return_freed_memory()
    tell("evaluate", 0.0)
    t1 = time.perf_counter()
    labels = item_label_counts(x_train, len(dataset.items) + 1, x_val)
    # the training rows, their negative samplers and the trials are not read again: gone
    # before the test's own sampler is built (25M: two samplers and 20M training row
    # numbers held at once at the start of evaluation); ``validator``'s closure holds a
    # validation question evaluate builds anew
    rows = fits = x_train = x_val = samplers = refit_train = validator = None  # type: ignore
    return_freed_memory()
    # the test rows (and their negatives) are encoded and scored a chunk at a time: only
    # their labels, items and scores are kept
    x_test = test_scores(model, enc, ctx, dataset, sp.test, cfg_used, seed=cfg.seed + 2)
    tell("evaluate", 0.1)
    eval_u, eval_i = eval_vectors(model, enc, dataset, sp, event_log=elog, context=ctx)
    tell("evaluate", 0.2)
    if sp.pool is not None:
        # the past's context is not read again: the end's is built for the embedding. Gone
        # before the questions are asked (peak memory at scale)
        ctx = None  # type: ignore[assignment]
    return_freed_memory()
    summary = evaluate(model, enc, dataset, sp, cfg_used, item_labels=labels,
                       x_test=x_test, vectors=(eval_u, eval_i),
                       val_model=fitted, progress=tell.part("evaluate", 0.4, 1.0),
                       event_log=elog, val_tables=val_tables)
    t_eval = time.perf_counter() - t1

    # what the audience pages search: everyone as of the end of the data
    tell("embed", 0.0)
    val_tables = x_test = None                              # type: ignore[assignment]
    if sp.pool is None:
        ctx_end = ctx
    else:    # the past's context went before evaluation; now the whole data's
        ctx_end = enc.context(dataset, None, event_log=elog)
    user_ids, u_table = enc.user_table(dataset, None, context=ctx_end)
    user_vectors = training.embed(model, "user", u_table)                  # (n_users, D)
    tell("embed", 0.5)
    item_ids, i_table = enc.item_table(dataset, None, context=ctx_end)
    item_vectors = training.embed(model, "item", i_table)                  # (n_items, D)
    tell("embed", 1.0)

    seconds = [h["seconds"] for h in fr.history if h.get("seconds") is not None]
    summary.update({
        "dataset": dataset.name or dataset.format,
        "preset": cfg.preset,
        "objective": cfg.objective,
        "n_users": int(len(user_ids)),
        "n_items": int(len(item_ids)),
        "n_train": int(len(sp.train)),
        "n_val": int(len(sp.val)),
        "n_test": int(len(sp.test)),
        "epochs_run": len(fr.history),
        "best_epoch": int(fr.best_epoch),
        "monitor": fr.monitor,
        "refit": bool(cfg.refit),
        "tune": cfg.tune,
        "tune_trials": trials if len(space) > 1 else [],
        "tune_choice": (chosen + 1) if len(space) > 1 else None,
        "stopped": fr.stopped,
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "train_samples_per_second": float(fr.samples_per_second),
        "precision": fr.precision,
        "feature_seconds": round(t_features, 3),
        "eval_seconds": round(t_eval, 3),
    })
    return TrainResult(model=model, encoder=enc, cfg=cfg, split=sp, history=list(fr.history),
                       fit=fr, summary=summary, user_ids=user_ids, item_ids=item_ids,
                       eval_user_vectors=eval_u, eval_item_vectors=eval_i,
                       audience_user_vectors=user_vectors, audience_item_vectors=item_vectors,
                       timings={"features": t_features, "eval": t_eval,
                                "total": time.perf_counter() - t0})


def _events(enc: FeatureEncoder, ctx: Any, samplers: dict[str, Any], dataset: Dataset,
            cfg: TrainConfig, rows: np.ndarray, seed: int, known: np.ndarray
            ) -> EventBatches:
    """Rows with the negatives ``cfg`` draws, encoded a batch at a time. Implicit data:
    ``cfg.negatives`` sampled items (else there is no class 0); rated data:
    ``cfg.explicit_negatives``; never a pair of the ``known`` rows (the run's, always the
    same). ``samplers`` keeps the negative samplers built so far (one per item
    distribution), for the trials and the refit to share. The test gets its negatives
    exactly as training does (``transform_events``)."""
    neg = _item_negatives(dataset, cfg)
    sampler = None
    if neg or cfg.user_negatives or cfg.pair_negatives:
        if cfg.negatives_by not in samplers:
            samplers[cfg.negatives_by] = enc.negative_sampler(ctx.log, known,
                                                              cfg.negatives_by)
        sampler = samplers[cfg.negatives_by]
    return EventBatches(enc, ctx, rows, sampler, negatives=neg,
                        user_negatives=int(cfg.user_negatives),
                        pair_negatives=int(cfg.pair_negatives), seed=seed)


def _item_negatives(dataset: Dataset, cfg: TrainConfig) -> int:
    """Sampled negative items per event: ``cfg.negatives`` for implicit data (else there is
    no class 0), ``cfg.explicit_negatives`` for rated data."""
    return int(cfg.negatives) if dataset.implicit else int(cfg.explicit_negatives)


def _stream_rows(rows: EventBatches) -> int:
    """Training rows one epoch of ``rows`` feeds (each event with its negatives)."""
    return len(rows) * rows.per_event


def _single_class(enc: FeatureEncoder, elog: EventLog, rows: EventBatches) -> bool:
    """Whether every training row holds one label (no negatives drawn, one rating side)."""
    if rows.per_event > 1 and len(rows):
        return False
    like = enc._likes(elog.rating[rows.rows].astype(np.float64))
    return len(like) == 0 or bool(like.min() == like.max())


def _refit_config(cfg: TrainConfig, epochs: int) -> TrainConfig:
    """A refit's settings: ``epochs`` epochs, nothing held out to stop on."""
    return cfg.with_(epochs=int(epochs), early_stopping_patience=0)


def _trial_cores(space: list[TrainConfig]) -> int:
    """Cores for tuning trials side by side: those this process may run on, when every
    trial's fit runs on one thread (a fit that asked for more threads keeps them)."""
    if any(int(c.num_threads) != 1 for c in space):
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:           # not Linux
        return os.cpu_count() or 1


def judged_by_retrieval(dataset: Dataset, cfg: TrainConfig) -> bool:
    """True when the run's label is "interacted" (implicit data, or every rating counts),
    so it is judged by retrieval recall; False for "liked" (judged by AUC)."""
    if dataset.implicit:
        return True
    ratings = dataset.interactions["rating"].to_numpy(dtype=np.float64)
    return bool(len(ratings)) and float(np.nanmin(ratings)) > cfg.label_threshold


def _monitor(enc: FeatureEncoder, dataset: Dataset, sp: Split, cfg: TrainConfig, *,
             event_log: EventLog | None = None,
             tables: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
             ) -> tuple[str, Callable[[Any], dict[str, Any]] | None]:
    """What early stopping watches (``cfg.monitor``; "auto" = what the task is judged by)
    and, for retrieval, the per-epoch validator that measures it. ``tables``: the
    validation ``eval_tables`` when the caller has them."""
    monitor = cfg.monitor
    if monitor == "auto":
        monitor = VAL_RECALL if judged_by_retrieval(dataset, cfg) else "val_auc"
    # (config.watched_metric says the same from the rating scale alone, for the pages)
    if monitor != VAL_RECALL:
        return monitor, None
    from . import training

    val_q = validation_question(dataset, sp, _Codes.of(dataset, event_log))
    u_table, i_table = tables if tables is not None else eval_tables(
        enc, dataset, sp, validation=True, event_log=event_log)

    def validate(m: Any) -> dict[str, Any]:
        scorer = evaluation.VectorScorer(training.embed(m, "user", u_table),
                                         training.embed(m, "item", i_table))
        fig = evaluation.ask(val_q, {"model": scorer}, ks=(50,), shares=(),
                             threads=int(cfg.num_threads))
        return {"val_i2u_recall@50": fig["i2u_recall@50"],
                "val_u2i_recall@50": fig["u2i_recall@50"],
                VAL_RECALL: evaluation.recall_score(fig)}

    return monitor, validate


# ------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class _Codes:
    """Every interaction's user and item code (position in ``dataset.users`` / ``.items``)."""

    user: np.ndarray
    item: np.ndarray
    n_users: int
    n_items: int

    @classmethod
    def of(cls, dataset: Dataset, event_log: EventLog | None = None) -> "_Codes":
        """From the run's ``event_log`` (else one made here): the ids are mapped once per
        distinct value (``events.codes_in``), never as one Python string per interaction
        (25M interactions: minutes and gigabytes)."""
        elog = EventLog.of(dataset) if event_log is None else event_log
        u, i = elog.user, elog.item
        if (u < 0).any() or (i < 0).any():       # the Dataset contract lists everyone
            raise ValueError("an interaction names a user or item missing from the tables")
        return cls(u.astype(np.int64), i.astype(np.int64), elog.n_users, elog.n_items)

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.user[rows], self.item[rows]


def test_question(dataset: Dataset, sp: Split, cfg: TrainConfig,
                  codes: "_Codes | None" = None) -> evaluation.Question:
    """The audience question of ``sp``'s test (see ``evaluation``): A: future pairs among
    targetable users and known items; L: every held-out pair; T: positive held-out pairs
    whose item occurs in the known rows. Past = the known (train + validation) rows."""
    c = codes or _Codes.of(dataset)
    known = sp.known
    if sp.protocol == "A":
        return evaluation.future_question(c.user, c.item, known, sp.test, c.n_users,
                                          c.n_items)
    test = sp.test
    if sp.protocol == "T":
        if not dataset.implicit:
            test = test[dataset.interactions["rating"].to_numpy()[test] > cfg.label_threshold]
        seen_items = np.bincount(c.item[known], minlength=c.n_items) > 0
        test = test[seen_items[c.item[test]]]
    return evaluation.heldout_question(c.user, c.item, known, test, c.n_users, c.n_items)


def validation_question(dataset: Dataset, sp: Split,
                        codes: "_Codes | None" = None) -> evaluation.Question:
    """The validation question: the test's rule inside the known rows, the training rows as
    the past. A and T: protocol A's rule with the validation rows as the future (T's test
    ranks everyone, but a choice made for users who do not exist yet would be a choice for
    nobody); L: every validation pair (each user's last known interaction), all candidates."""
    c = codes or _Codes.of(dataset)
    if sp.protocol == "L":
        return evaluation.heldout_question(c.user, c.item, sp.train, sp.val, c.n_users,
                                           c.n_items)
    return evaluation.future_question(c.user, c.item, sp.train, sp.val, c.n_users, c.n_items)


def eval_vectors(model: Any, enc: FeatureEncoder, dataset: Dataset, sp: Split, *,
                 validation: bool = False, event_log: EventLog | None = None,
                 context: Any = None,
                 tables: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Every user's and item's vector as the evaluation may know them: as of the split (the
    test question) or as of the end of the training rows (``validation``). Never as of the
    end of the data. -> (users (U, D), items (I, D)) float32. ``tables``: the
    ``eval_tables`` to embed, when the caller has them; else see ``eval_tables``."""
    from . import training

    u_table, i_table = tables if tables is not None else eval_tables(
        enc, dataset, sp, validation=validation, event_log=event_log, context=context)
    return training.embed(model, "user", u_table), training.embed(model, "item", i_table)


def eval_tables(enc: FeatureEncoder, dataset: Dataset, sp: Split, *, validation: bool = False,
                event_log: EventLog | None = None, context: Any = None
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The user and item tower features ``eval_vectors`` embeds (see there); ``event_log``:
    the dataset's, when the caller has it; ``context``: the caller's as-of context over
    ``sp.pool`` (the past), used for the test question's tables (protocols A and L) instead
    of building the same one again (at 25M interactions: gigabytes and a minute)."""
    if validation:
        as_of, pool = None, sp.train
    elif sp.protocol == "T":
        as_of, pool = sp.split_time, None
    else:
        as_of, pool = None, sp.pool
    if context is not None and not validation and sp.protocol != "T":
        ctx = context
    else:
        ctx = enc.context(dataset, pool, event_log=event_log)  # one for both tables
    user_as_of = _own_last_event(dataset, pool, ctx.log) if sp.protocol == "L" else as_of
    _, u_table = enc.user_table(dataset, user_as_of, context=ctx)
    _, i_table = enc.item_table(dataset, as_of, context=ctx)
    return u_table, i_table


def _own_last_event(dataset: Dataset, rows: np.ndarray, event_log: EventLog | None = None
                    ) -> np.ndarray:
    """Protocol L's user "now": just after each user's own last event in ``rows`` (a user
    with none: after every event). Leave-last-out asks what each user does next, at a time
    of their own that the question does not say; a shared end of the data would measure
    recency from months after most users' last session, a state no training event shows.
    Only ``rows`` are read, so nothing held out enters. -> one timestamp per
    ``dataset.users`` row."""
    from .encoding import END_OF_TIME

    elog = EventLog.of(dataset) if event_log is None else event_log
    rows = np.asarray(rows, dtype=np.int64)
    code, ts = elog.user[rows], elog.time[rows]
    keep = code >= 0
    last = np.full(elog.n_users, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, code[keep], ts[keep])
    return np.where(last == np.iinfo(np.int64).min, END_OF_TIME, last + 1)


@dataclass
class Peers:
    """Popularity and EASE fitted on the past of one question, lambda chosen on validation."""

    scorers: dict[str, Any]
    ease_lambda: float | None
    ease_note: str | None
    validation: dict[str, Any]


def fit_peers(val_q: evaluation.Question, test_q: evaluation.Question, *,
              lambdas: tuple[float, ...] = peers.EASE_LAMBDAS,
              memory_bytes: int = peers.EASE_MEMORY_BYTES, threads: int = 1) -> Peers:
    """Popularity and EASE for ``test_q``. EASE's lambda is the one with the best mean
    recall@50 on ``val_q`` (fitted on its past), refitted on ``test_q``'s past. EASE runs
    when its matrices fit in ``memory_bytes`` (``peers.ease_skip_reason``): the grid shares
    one Gram matrix and one work matrix (each fit's B is the next one's work matrix), only
    the best lambda's validation figures are kept, and the test's fit is one matrix.
    ``threads``: for ``evaluation.ask``."""
    scorers: dict[str, Any] = {"popularity": peers.Popularity(test_q.past)}
    val_figures = evaluation.ask(val_q, {"popularity": peers.Popularity(val_q.past)},
                                 prefix="val_")
    note = peers.ease_skip_reason(test_q.n_items, memory_bytes)
    best: float | None = None
    if note is None:
        gram = peers.gram_matrix(val_q.past)                                     # (I, I)
        best_score, best_figures, work = -1.0, None, None
        for lam in lambdas:
            ease = peers.EASE(val_q.past, lam, gram=gram, out=work,
                              memory_bytes=memory_bytes)
            fig = evaluation.ask(val_q, {"ease": ease}, prefix="val_", threads=threads)
            score = evaluation.recall_score(fig, prefix="val_", tag="baseline_ease_")
            val_figures[f"ease_lambda_{lam:g}"] = score
            if score is not None and score > best_score:
                best, best_score, best_figures = lam, score, fig
            work = ease.b if ease.b.dtype == gram.dtype else None   # float32: reuse it
            del ease
        del gram, work
        if best is None:                  # no validation pair at all: the middle of the grid
            best = lambdas[len(lambdas) // 2]
            best_figures = evaluation.ask(
                val_q, {"ease": peers.EASE(val_q.past, best, memory_bytes=memory_bytes)},
                prefix="val_", threads=threads)
        val_figures.update(best_figures)
        scorers["ease"] = peers.EASE(test_q.past, best, memory_bytes=memory_bytes)
    return Peers(scorers, best, note, val_figures)


def evaluate(
    model: Any,
    enc: FeatureEncoder,
    dataset: Dataset,
    sp: Split,
    cfg: TrainConfig,
    *,
    item_labels: tuple[np.ndarray, np.ndarray],
    x_test: "ScoredRows",
    with_peers: bool = True,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    val_model: Any = None,
    progress: evaluation.Progress | None = None,
    event_log: EventLog | None = None,
    val_tables: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Test AUC/logloss and the audience question (both directions) for the model and, on
    the same split, the peers: item-mean (AUC/logloss), popularity and EASE (retrieval).
    Also the validation figures (prefix ``val_``) every choice is made on. ``x_test``: the
    model's scores of the test rows (``test_scores``); ``item_labels``: the training and
    validation rows' labels by item (``item_label_counts``), what the item-mean baseline is
    fitted on. ``vectors``: the model's ``eval_vectors``
    when the caller has them already. ``val_model``: the model whose validation figures are
    reported (the one fitted without the validation rows, when ``model`` was refitted on
    them; default ``model``). ``progress(done, total)``: queries of the test question
    ranked so far. ``event_log`` / ``val_tables``: the dataset's event log and the
    validation ``eval_tables``, when the caller has them."""
    out: dict[str, Any] = {"protocol": sp.protocol, "protocol_description": sp.description}
    y, p = x_test.label, x_test.score
    out.update(_auc_logloss("test", y, p))
    out["test_positive_rate"] = float(y.mean()) if len(y) else None
    out["test_rows"] = int(len(y))                 # rated/observed test rows + sampled negatives
    # item-mean like-rate baseline, fitted on train + validation labels by item (items first
    # seen in validation keep their own rate), with sampled negatives where the run samples
    # them: the same mixture as the test
    p_base = item_mean_rates(*item_labels)[x_test.item_ref + 1]
    out.update(_auc_logloss("baseline_item_mean_test", y, p_base))

    codes = _Codes.of(dataset, event_log)
    test_q = test_question(dataset, sp, cfg, codes)
    val_q = validation_question(dataset, sp, codes)
    U, V = vectors if vectors is not None else eval_vectors(model, enc, dataset, sp,
                                                            event_log=event_log)
    scorers: dict[str, Any] = {"model": evaluation.VectorScorer(U, V)}
    if with_peers:
        pe = fit_peers(val_q, test_q, threads=int(cfg.num_threads))
        scorers.update(pe.scorers)
        out.update(pe.validation)
        out["ease_lambda"] = pe.ease_lambda
        out["ease_note"] = pe.ease_note
    Uv, Vv = eval_vectors(val_model if val_model is not None else model, enc, dataset, sp,
                          validation=True, event_log=event_log, tables=val_tables)
    out.update(evaluation.ask(val_q, {"model": evaluation.VectorScorer(Uv, Vv)},
                              prefix="val_", threads=int(cfg.num_threads)))
    out.update(evaluation.ask(test_q, scorers, progress=progress,
                              threads=int(cfg.num_threads)))
    out["test_targetable_users"] = test_q.candidates("i2u")
    out["test_known_items"] = test_q.candidates("u2i")
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in out.items()}


def item_mean_baseline(train_items: np.ndarray, train_labels: np.ndarray,
                       test_items: np.ndarray, smoothing: float = BASELINE_SMOOTHING
                       ) -> np.ndarray:
    """Per-item like-rate from training labels, smoothed towards the global rate with
    ``smoothing`` pseudo-counts; index 0 (unknown item) gets the global rate. -> (N,)"""
    train_items = np.asarray(train_items, dtype=np.int64)
    test_items = np.asarray(test_items, dtype=np.int64)
    size = int(max(train_items.max(initial=0), test_items.max(initial=0))) + 1
    n = np.bincount(train_items, minlength=size).astype(np.float64)
    pos = np.bincount(train_items, weights=np.asarray(train_labels, dtype=np.float64),
                      minlength=size)
    return item_mean_rates(n, pos, smoothing)[test_items]


def item_mean_rates(n: np.ndarray, pos: np.ndarray, smoothing: float = BASELINE_SMOOTHING
                    ) -> np.ndarray:
    """``item_mean_baseline``'s rate of every item index from its training rows ``n`` and
    positive labels ``pos`` (float64, (I,) each; index 0 = unknown item, which gets the
    global rate; 0.5 without any training row). -> (I,) float64"""
    total = float(n.sum())
    g = float(pos.sum()) / total if total else 0.5
    rate = (pos + smoothing * g) / np.maximum(n + smoothing, 1e-12)
    rate[0] = g
    return rate


def item_label_counts(rows: EventBatches, size: int, *more: EventBatches
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and positive labels per item index (``item_ref + 1``; 0: an item not listed) of
    ``rows`` (and of ``more`` rows, added) and the negatives ``label_batches()`` draws for
    them, counted a batch at a time (never every label at once). ``size``: number of item
    indices. -> ((size,), (size,)) float64"""
    n = np.zeros(size, dtype=np.float64)
    pos = np.zeros(size, dtype=np.float64)
    for part in (rows, *more):
        for b in part.label_batches():
            idx = b["item_ref"] + 1
            n += np.bincount(idx, minlength=size)
            pos += np.bincount(idx, weights=b["label"].astype(np.float64), minlength=size)
    return n, pos


#: Test events whose features are encoded and scored at once (each with its negatives):
#: 65,536 events x 5 rows of the audience preset's ~200 bytes of features is about 65 MB.
TEST_CHUNK_EVENTS = 65_536


@dataclass(frozen=True)
class ScoredRows:
    """The test rows without their features: what test AUC/logloss and the item-mean
    baseline read. Aligned (N,) arrays in ``transform_events``' row order (the events, then
    their item, user and pair negatives): ``label`` float32, ``item_ref`` int64 (position in
    ``dataset.items``, -1: not listed), ``score`` float32 (the model's probability)."""

    label: np.ndarray
    item_ref: np.ndarray
    score: np.ndarray


def test_scores(model: Any, enc: FeatureEncoder, ctx: Any, dataset: Dataset,
                rows: np.ndarray, cfg: TrainConfig, *, seed: int,
                chunk_events: int = TEST_CHUNK_EVENTS) -> ScoredRows:
    """The model's scores of the test rows: the events at ``rows`` and the negatives ``cfg``
    draws for them, exactly the rows ``enc.transform_events(dataset, rows, seed=seed, ...,
    context=ctx)`` returns (the same draws, never a pair of any interaction, the same
    order), but encoded and scored ``chunk_events`` events at a time: the negatives are
    drawn once for every event (codes only, ``features=False``), then each chunk's features
    are built from its share of those draws, scored and dropped."""
    from . import training

    if chunk_events < 1:
        raise ValueError("chunk_events must be >= 1")
    rows = np.asarray(rows, dtype=np.int64)
    counts = dict(negatives=_item_negatives(dataset, cfg),
                  user_negatives=int(cfg.user_negatives),
                  pair_negatives=int(cfg.pair_negatives))
    sampler = None
    if max(counts.values()) > 0 and len(rows):
        sampler = enc.negative_sampler(ctx.log, None, cfg.negatives_by)
    draws = _RecordedDraws(sampler)
    rngs = negative_generators(seed)
    every = enc.encode_rows(ctx, rows, draws, rngs=rngs, features=False, **counts)
    parts: list[list[np.ndarray]] = [[] for _ in range(1 + len(draws.calls))]
    for lo in range(0, len(rows), chunk_events):
        hi = min(lo + chunk_events, len(rows))
        replay = draws.replay(lo, hi)
        x = enc.encode_rows(ctx, rows[lo:hi], replay, rngs=rngs, groups=True, **counts)
        # scored grouped by event: the user tower runs once per event for its item negatives
        grouped, order, _ = by_event(x)
        del x
        p = np.empty(len(order), dtype=np.float32)
        p[order] = training.predict(model, grouped)                            # (rows,)
        del grouped
        # this chunk's events, then its item / user / pair negatives: each to its own part
        cuts = np.cumsum([hi - lo, *replay.sizes()])[:-1]
        for part, piece in zip(parts, np.split(p, cuts)):
            part.append(piece)
    score = np.concatenate([np.concatenate(part) for part in parts if part]
                           or [np.zeros(0, np.float32)]).astype(np.float32, copy=False)
    return ScoredRows(every["label"], every["item_ref"], score)


class _RecordedDraws:
    """A ``NegativeSampler`` whose answers to one ``encode_rows`` call over all the test
    rows are kept (item codes and positions only), to be replayed for chunks of those rows
    (``replay``): a chunk encodes exactly the negatives the whole call drew for its events.
    ``calls``: per kind ("items", "users", "pairs"), (negatives per event, the answer)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.calls: dict[str, tuple[int, tuple[np.ndarray, ...]]] = {}

    def items(self, ucode: np.ndarray, n: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
        out = self.sampler.items(ucode, n, rng)
        self.calls["items"] = (int(n), out)
        return out

    def users(self, icode: np.ndarray, times: np.ndarray, n: int, rng: np.random.Generator,
              random_items: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.sampler.users(icode, times, n, rng, random_items)
        self.calls["pairs" if random_items else "users"] = (int(n), out)
        return out

    def replay(self, lo: int, hi: int) -> "_Replay":
        """The draws of events ``lo`` to ``hi`` (positions in the recorded rows)."""
        return _Replay(self.calls, lo, hi)


class _Replay:
    """The recorded draws of events ``lo:hi``, answered as a ``NegativeSampler`` answers a
    call for those events alone (positions counted from ``lo``); the generators are not
    used."""

    def __init__(self, calls: dict[str, tuple[int, tuple[np.ndarray, ...]]], lo: int,
                 hi: int) -> None:
        self.calls, self.lo, self.hi = calls, int(lo), int(hi)

    def _slice(self, kind: str) -> tuple[np.ndarray, ...]:
        n, (keep, *rest) = self.calls[kind]
        a, b = np.searchsorted(keep, [self.lo * n, self.hi * n])   # keep is sorted
        return (keep[a:b] - self.lo * n, *(r[a:b] for r in rest))

    def items(self, ucode: np.ndarray, n: int, rng: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._slice("items")                                  # type: ignore[return-value]

    def users(self, icode: np.ndarray, times: np.ndarray, n: int, rng: Any,
              random_items: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._slice("pairs" if random_items else "users")     # type: ignore[return-value]

    def sizes(self) -> list[int]:
        """Negatives of each recorded kind in this chunk, in ``encode_rows``' row order."""
        return [len(self._slice(k)[0]) for k in ("items", "users", "pairs") if k in self.calls]


def _auc_logloss(prefix: str, y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    both = len(y) > 0 and 0 < float(y.sum()) < len(y)
    return {f"{prefix}_auc": metrics.auc(y, p) if both else None,
            f"{prefix}_logloss": metrics.logloss(y, p) if len(y) else None}


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------ store
def report(summary: dict[str, Any], run_id: int | None = None) -> dict[str, Any]:
    """The nested JSON report of one run (the CLI's ``--report``) from its flat summary."""
    def block(prefix: str) -> dict[str, Any]:
        return {f"recall@{k}": summary.get(f"{prefix}_recall@{k}") for k in KS}

    return {
        "run_id": run_id,
        "protocol": summary.get("protocol"),
        "protocol_description": summary.get("protocol_description"),
        "dataset": summary.get("dataset"),
        "preset": summary.get("preset"),
        "objective": summary.get("objective"),
        "test": {"auc": summary.get("test_auc"), "logloss": summary.get("test_logloss")},
        "retrieval": {"item_to_user": block("i2u"), "user_to_item": block("u2i")},
        "baseline_popularity": {"retrieval": {
            "item_to_user": block("baseline_popularity_i2u"),
            "user_to_item": block("baseline_popularity_u2i")}},
        "baseline_ease": {"lambda": summary.get("ease_lambda"),
                          "note": summary.get("ease_note"),
                          "retrieval": {
                              "item_to_user": block("baseline_ease_i2u"),
                              "user_to_item": block("baseline_ease_u2i")}},
        "validation": {"retrieval": {
            "item_to_user": block("val_i2u"), "user_to_item": block("val_u2i")}},
        "verdict": peer_verdict(summary),
        "baseline_item_mean": {"test": {
            "auc": summary.get("baseline_item_mean_test_auc"),
            "logloss": summary.get("baseline_item_mean_test_logloss")}},
        "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "train_samples_per_second": summary.get("train_samples_per_second"),
        "best_epoch": summary.get("best_epoch"),
        "epochs_run": summary.get("epochs_run"),
        "summary": summary,
    }


#: What each peer is called in a verdict.
PEER_NAMES = {"popularity": "popularity", "ease": "EASE"}
DIRECTION_NAMES = {"i2u": "item→user (audiences)", "u2i": "user→item (recommendations)"}


def peer_verdict(summary: dict[str, Any], k: int = 50) -> list[str]:
    """Plain sentences, one per (direction, peer) where the run's model finds fewer of the
    test's relevant pairs in its top ``k`` than a simple peer on the same split; empty when
    it wins or ties everywhere (or nothing was measured)."""
    out = []
    for d, dname in DIRECTION_NAMES.items():
        mine = summary.get(f"{d}_recall@{k}")
        if mine is None:
            continue
        for peer, pname in PEER_NAMES.items():
            theirs = summary.get(f"baseline_{peer}_{d}_recall@{k}")
            if theirs is not None and float(theirs) > float(mine):
                out.append(f"On its own test, {pname} beats this model {dname}: recall@{k} "
                           f"{float(theirs):.3f} vs the model's {float(mine):.3f}.")
    return out


def peer_standing(summary: dict[str, Any], k: int = 50) -> str | None:
    """One short phrase for a runs table: "beats popularity and EASE", or which peers beat
    it (any direction, recall@``k``); None when the run measured no retrieval."""
    if summary.get(f"i2u_recall@{k}") is None and summary.get(f"u2i_recall@{k}") is None:
        return None
    losers = []
    for peer, pname in PEER_NAMES.items():
        for d in DIRECTION_NAMES:
            mine, theirs = summary.get(f"{d}_recall@{k}"), summary.get(
                f"baseline_{peer}_{d}_recall@{k}")
            if mine is not None and theirs is not None and float(theirs) > float(mine):
                losers.append(pname)
                break
    measured = [p for peer, p in PEER_NAMES.items()
                if summary.get(f"baseline_{peer}_i2u_recall@{k}") is not None]
    if losers:
        return "⚠ loses to " + " and ".join(losers)
    return "beats " + " and ".join(measured) if measured else None


def peer_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's headline test figures beside its peers on the same split, in plain words:
    one row per figure with ``Metric``, ``Model``, ``Popularity``, ``EASE``, ``Item mean``
    (None where a peer does not answer that question) and ``Best`` (who is highest; lowest
    for log loss). Rows the run did not measure are left out."""
    rows = [("Test AUC (higher is better)", "test_auc", None, None,
             "baseline_item_mean_test_auc", True),
            ("Test log loss (lower is better)", "test_logloss", None, None,
             "baseline_item_mean_test_logloss", False)]
    for code, label in (("i2u", "Item→user"), ("u2i", "User→item")):
        for k in KS:
            rows.append((f"{label} recall@{k}", f"{code}_recall@{k}",
                         f"baseline_popularity_{code}_recall@{k}",
                         f"baseline_ease_{code}_recall@{k}", None, True))
    rows += [(f"Item→user recall@{share}", f"i2u_recall@{share}",
              f"baseline_popularity_i2u_recall@{share}", f"baseline_ease_i2u_recall@{share}",
              None, True) for share in ("1%", "5%")]
    out = []
    for label, key, pop, ease, mean, higher in rows:
        mine = summary.get(key)
        if mine is None:
            continue
        row = {"Metric": label, "Model": mine,
               "Popularity": summary.get(pop) if pop else None,
               "EASE": summary.get(ease) if ease else None,
               "Item mean": summary.get(mean) if mean else None}
        scored = {k: v for k, v in row.items() if k != "Metric" and v is not None}
        row["Best"] = (max if higher else min)(scored, key=scored.__getitem__)
        out.append(row)
    return out


def _weights_bytes(model: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def run_training(
    store: Any,
    dataset_id: int,
    cfg: TrainConfig,
    *,
    run_id: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    project: bool = True,
    dist: Any = None,
    progress: Progress | None = None,
) -> int:
    """Train dataset ``dataset_id`` of ``store`` and store the run; returns its id.

    Creates the run (or takes the queued ``run_id``), marks it running, records every epoch,
    stops when ``store.cancel_requested(run_id)`` or ``should_stop()`` says so, and writes
    summary, weights, encoders and embeddings with ``store.finish_run`` (one transaction).
    A failure calls ``store.fail_run(run_id, text)`` and re-raises; a cancel marks the run
    "cancelled" and raises ``TrainingCancelled``. Then, if ``project``, the UMAP maps are
    computed, by the store's warm projection worker when one is up (``projector.project``),
    else in this process (a failure there is logged and never fails the run).
    ``dist``: rank 0 of a distributed training (the other ranks call ``train`` with theirs).
    ``progress``: told every stage ("load" ... "maps", ``dssm_core.progress``); the store
    records them too (``Store.set_progress``, at most every ``PROGRESS_WRITE_S``), for the
    pages.
    """
    if run_id is None:
        run_id = int(store.create_run(int(dataset_id), cfg.to_dict(), preset=cfg.preset,
                                      objective=cfg.objective, protocol=cfg.protocol))
    run_id = int(run_id)
    # a run that cannot start (unknown, or already ended) is left as it is
    from .jobs import Heartbeat, host_name

    store.mark_running(run_id, os.getpid(), host=host_name())
    heartbeat = Heartbeat(store, run_id).start()  # the reaper's sign of life, every few s
    tell = Reporter(_recording(store, run_id, progress))
    try:
        tell("load", 0.0)
        dataset = store.load_dataset(int(dataset_id))
        tell("load", 1.0)

        def epoch_cb(record: dict[str, Any]) -> None:
            store.add_epoch(run_id, record)
            if on_epoch_end is not None:
                on_epoch_end(record)

        last_poll = [0.0, False]   # per-run closure state: time of the last poll, its answer

        def stop_cb() -> bool:
            if should_stop is not None and should_stop():
                return True
            now = time.monotonic()
            if now - last_poll[0] >= CANCEL_POLL_S:
                last_poll[0] = now
                last_poll[1] = bool(store.cancel_requested(run_id))
            return bool(last_poll[1])

        result = train(dataset, cfg, on_epoch_end=epoch_cb, should_stop=stop_cb, dist=dist,
                       progress=tell)
        tell("store", 0.0)
        store.finish_run(
            run_id, summary=result.summary, weights=_weights_bytes(result.model),
            encoders=result.encoder.to_json(), user_ids=result.user_ids,
            user_vectors=result.audience_user_vectors, item_ids=result.item_ids,
            item_vectors=result.audience_item_vectors,
            run_tables=_audience_tables(dataset, result.user_ids, result.item_ids))
        tell("store", 1.0)
    except (TrainingCancelled, KeyboardInterrupt):
        log.info("run %d cancelled", run_id)
        _safe_fail(store, run_id, "cancelled by request", "cancelled")
        raise
    except BaseException as exc:
        _safe_fail(store, run_id, f"{type(exc).__name__}: {exc}", "failed")
        raise
    finally:
        heartbeat.stop()
    if project:
        tell("maps", 0.0)
        try:
            from . import projector

            maps = [0]

            def map_stored(kind: str, params: dict[str, Any]) -> None:
                maps[0] += 1
                tell("maps", maps[0] / 2)

            # by the store's warm worker when one is up, else in this process
            projector.project(store, run_id, on_progress=map_stored)
        except Exception:  # noqa: BLE001 - maps are optional, the run stands
            log.exception("run %d: computing the embedding maps failed", run_id)
        tell("maps", 1.0)
    return run_id


def _audience_tables(dataset: Dataset, user_ids: Any, item_ids: Any
                     ) -> dict[str, pd.DataFrame] | None:
    """``audience.run_tables`` for the run, or None (logged) when they cannot be computed:
    audiences then read the dataset's tables, as for runs stored before schema 5."""
    from . import audience

    try:
        return audience.run_tables(dataset, user_ids, item_ids)
    except Exception:  # noqa: BLE001 - an optional speed-up, the run stands without it
        log.exception("the audience tables of the run could not be computed")
        return None


#: Seconds between two progress writes of a run to the store (stage changes always write).
PROGRESS_WRITE_S = 1.0


def _recording(store: Any, run_id: int, progress: Progress | None) -> Progress:
    """``progress`` that also records the stage in the store (``Store.set_progress``, at most
    every ``PROGRESS_WRITE_S`` within a stage); a failed write is logged, never raised."""
    def write(stage: str, fraction: float, message: str | None) -> None:
        try:
            store.set_progress(run_id, stage, fraction, message)
        except Exception as exc:  # noqa: BLE001 - progress is never worth a failed run
            log.warning("run %d: progress not recorded: %s", run_id, exc)

    record = Throttled(write, PROGRESS_WRITE_S)

    def both(stage: str, fraction: float, message: str | None = None) -> None:
        record(stage, fraction, message)
        if progress is not None:
            progress(stage, fraction, message)

    return both


def _safe_fail(store: Any, run_id: int, text: str, status: str) -> None:
    try:
        store.fail_run(run_id, text, status=status)
    except Exception:  # noqa: BLE001 - never hide the original error
        log.exception("run %d: could not record the failure", run_id)


def load_model(store: Any, run_id: int) -> tuple[Any, FeatureEncoder, TrainConfig]:
    """Rebuild a stored run's model (eval mode), encoder and config; weights are read with
    ``torch.load(..., weights_only=True)``."""
    import torch

    from .model import DSSM

    run = store.get_run(int(run_id))
    cfg = TrainConfig.from_dict(run["config"])
    enc = FeatureEncoder.from_json(store.load_encoders(int(run_id)))
    model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
    state = torch.load(io.BytesIO(store.load_weights(int(run_id))), weights_only=True,
                       map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model, enc, cfg
