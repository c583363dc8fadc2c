"""Tuning trials of one run: fits of a few settings judged on validation, side by side when
the cores allow, and the chosen setting's refit started before the last trial ends.

``fit_trials`` runs the trials one after another, or each in its own thread while the
calling thread relays their epoch records (in trial order), their progress and the cancel.

``EarlyRefit``: with two trials side by side on two cores, the first to end leaves a core
idle until the other ends (on ML-100K's default run, trial 2 trains alone for about half of
its time). Then, the refit (the settings trained on the whole past for as many epochs as
their trial's best) of the trial that leads on validation so far starts on that core.

- A refit has no validation and no schedule: its first E epochs are the E-epoch refit, bit
  for bit (the same seeded model, dropout and negatives). So the early refit may start
  before its epoch count is known, trains on, keeps a copy of the weights after each epoch
  while the count is unknown, and stops at the first batch after the count is reached.
- When the trials end and the trial chosen (by the same rule as always: the best monitored
  validation figure, the earlier trial on a tie) is the one refitting, its refit is used.
  Otherwise the early refit is stopped and dropped, and the chosen trial refits as before.
  Either way the model is the one the plain sequence gives; only the wall time differs.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Any, Callable

from .config import TrainConfig
from .progress import Reporter

log = logging.getLogger(__name__)

#: How often (seconds) the relaying thread polls ``should_stop`` while trials run side by side
#: (and while it waits for an early refit).
TRIAL_POLL_SECONDS = 0.05

EpochCallback = Callable[[dict[str, Any]], None]
StopCallback = Callable[[], bool]


class TrainingCancelled(Exception):
    """Raised when a training is cancelled (``should_stop`` answered True)."""


def fit_progress(share: Callable[[float], None], on_epoch_end: EpochCallback | None,
                 should_stop: StopCallback | None, rows: int, cfg: TrainConfig
                 ) -> tuple[EpochCallback, StopCallback]:
    """``on_epoch_end`` and ``should_stop`` for ``training.fit`` that also tell ``share``
    how much of this fit is done (0..1 of its ``cfg.epochs``); ``fit`` polls
    ``should_stop`` before every batch, which counts the batches within an epoch."""
    batches = max(1, math.ceil(int(rows) / int(cfg.batch_size)))
    every = max(1, batches // 200)
    done = [0, 0]                    # this fit's closure state: epochs ended, batches polled

    def at() -> float:
        epoch = done[0] + min(done[1], batches) / batches
        return epoch / max(1, int(cfg.epochs))

    def epoch_end(record: dict[str, Any]) -> None:
        done[0], done[1] = done[0] + 1, 0
        share(at())
        if on_epoch_end is not None:
            on_epoch_end(record)

    def stop() -> bool:
        done[1] += 1
        if done[1] % every == 0:
            share(at())
        return bool(should_stop()) if should_stop is not None else False

    return epoch_end, stop


def slot_share(tell: Reporter, slot: int, slots: int) -> Callable[[float], None]:
    """A fit's own progress as the "train" stage's: it is part ``slot`` of ``slots``
    (tuning trials, then the refit)."""
    return lambda done: tell("train", (slot + done) / slots)


def numbered(cb: EpochCallback | None, offset: int, trial: int, n_trials: int
             ) -> EpochCallback | None:
    """``cb`` with epochs numbered on from earlier trials (and the trial named), so that
    every epoch of a tuned run is recorded once."""
    if cb is None or n_trials <= 1:
        return cb

    def renumbered(rec: dict[str, Any]) -> None:
        cb({**rec, "epoch": offset + int(rec["epoch"]), "trial": trial + 1,
            "trial_epoch": int(rec["epoch"])})

    return renumbered


#: ``refit_for(k)`` -> (model, training rows per epoch, ``train(epochs, epoch_cb, stop_cb)``
#: -> FitResult): trial ``k``'s refit, a fresh model and how to train it.
RefitFactory = Callable[[int], tuple[Any, int, Callable[[int, EpochCallback, StopCallback],
                                                          Any]]]


class EarlyRefit:
    """The refit of the trial leading on validation, on the core the first trial to end
    leaves idle (see the module docstring). ``epoch`` and ``done`` are called by
    ``fit_trials``'s relaying thread; ``take`` by the caller once the trials are chosen;
    ``cancel`` on any way out."""

    def __init__(self, refit_for: RefitFactory, n_trials: int, monitor: str, higher: bool,
                 max_epochs: int, batch_size: int) -> None:
        self._refit_for = refit_for
        self._n = int(n_trials)
        self._monitor = monitor
        self._higher = bool(higher)
        self._max_epochs = int(max_epochs)
        self._batch_size = int(batch_size)
        self._best = [-math.inf] * self._n          # best monitored figure so far (signed)
        self._fits: dict[int, Any] = {}              # finished trials' (model, FitResult)
        self.trial: int | None = None                # whose refit runs (None: none started)
        self._cond = threading.Condition()
        self._target: int | None = None              # its epoch count, once known
        self._epochs_done = 0
        self._batches = 0
        self._rows = 0
        self._states: dict[int, dict[str, Any]] = {}  # weights after each epoch, count unknown
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._result: Any = None
        self._error: BaseException | None = None

    # -------------------------------------------------------- relaying thread (fit_trials)
    def epoch(self, k: int, record: dict[str, Any]) -> None:
        """Trial ``k`` ended an epoch: keep its best monitored figure (as ``training.fit``
        keeps its best epoch: strictly better, a missing or NaN figure never is)."""
        value = record.get(self._monitor)
        if value is None or not math.isfinite(float(value)):
            return
        signed = float(value) if self._higher else -float(value)
        if signed > self._best[k]:
            self._best[k] = signed

    def done(self, k: int, fit: Any) -> None:
        """Trial ``k`` ended with ``fit`` = (model, FitResult), None when it failed. When one
        trial is left running, the leader's refit starts."""
        if fit is None:
            return
        self._fits[k] = fit
        if self.trial == k:
            self._set_target(int(fit[1].best_epoch))
        elif self.trial is None and len(self._fits) == self._n - 1 and \
                not any(fr.stopped == "cancelled" for _, fr in self._fits.values()):
            self._start()

    def _start(self) -> None:
        # the leader; on a tie the earlier trial, as the final choice
        leader = max(range(self._n), key=lambda j: (self._best[j], -j))
        target = int(self._fits[leader][1].best_epoch) if leader in self._fits else None
        if target is not None and target < 1:
            return
        self.trial, self._target = leader, target
        model, rows, train = self._refit_for(leader)
        self._model, self._rows = model, int(rows)
        epochs = self._max_epochs if target is None else target

        def epoch_end(record: dict[str, Any]) -> None:
            # called in the refit's thread between two epochs, while no step runs
            with self._cond:
                self._epochs_done, self._batches = int(record["epoch"]), 0
                if self._target is None:
                    self._states[self._epochs_done] = {
                        name: t.detach().clone() for name, t in model.state_dict().items()}
                elif self._epochs_done >= self._target:
                    self._stop.set()
                self._cond.notify_all()

        def stop() -> bool:
            self._batches += 1
            return self._stop.is_set()

        def run() -> None:
            try:
                self._result = train(epochs, epoch_end, stop)
            except BaseException as exc:  # noqa: BLE001 - raised by take()
                self._error = exc

        log.info("refit of trial %d started before the last trial ended", leader + 1)
        self._thread = threading.Thread(target=run, name="dssm-early-refit", daemon=True)
        self._thread.start()

    def _set_target(self, target: int) -> None:
        with self._cond:
            self._target = target
            if self._epochs_done >= target:
                self._stop.set()

    # ------------------------------------------------------------------------- caller
    def take(self, chosen: int, best_epoch: int, should_stop: StopCallback | None,
             share: Callable[[float], None]) -> Any | None:
        """The refitted model of trial ``chosen`` (trained ``best_epoch`` epochs) when its
        refit is the one that started early: waits for it, telling ``share`` its progress
        and polling ``should_stop``. None (and the early refit stopped) otherwise. Raises
        ``TrainingCancelled``, or what the refit raised."""
        if self._thread is None or self.trial != chosen:
            self.cancel()
            return None
        self._set_target(int(best_epoch))
        batches = max(1, math.ceil(self._rows / self._batch_size))
        while self._thread.is_alive():
            self._thread.join(TRIAL_POLL_SECONDS)
            if should_stop is not None and should_stop():
                self.cancel()
                raise TrainingCancelled("training cancelled")
            done = self._epochs_done + min(self._batches, batches) / batches
            share(min(1.0, done / max(1, int(best_epoch))))
        if self._error is not None:
            raise self._error
        if self._epochs_done < best_epoch:       # it ended short: never finished its epochs
            raise RuntimeError(f"the early refit stopped after {self._epochs_done} of "
                               f"{best_epoch} epochs")
        if best_epoch in self._states:           # it trained on past the count: go back
            self._model.load_state_dict(self._states[best_epoch])
        self._model.eval()
        self._states.clear()
        share(1.0)
        return self._model

    def cancel(self) -> None:
        """Stop the early refit (if any) at its next batch and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._states.clear()


def fit_trials(fit_trial: Callable[[int, EpochCallback, StopCallback], tuple[Any, Any]],
               n: int, side_by_side: bool, tell: Reporter, on_epoch_end: EpochCallback | None,
               should_stop: StopCallback | None, sizes: list[tuple[int, TrainConfig]],
               slots: int, watch: EarlyRefit | None = None) -> list[tuple[Any, Any]]:
    """The ``n`` tuning trials' ``(model, FitResult)``, one after another or (``side_by_side``)
    each in its own thread while this thread relays: every epoch record reaches
    ``on_epoch_end`` here, in this thread, numbered as if the trials had run in order (a
    later trial's records wait until the earlier ones are done), progress is the sum of the
    trials' shares, and ``should_stop`` is polled here, every ``TRIAL_POLL_SECONDS``; once it
    says stop, every trial stops at its next batch. ``watch`` (side by side only) hears of
    every epoch and every trial's end as they happen. Raises ``TrainingCancelled``, or what
    a trial raised."""
    if not side_by_side:
        fits, offset = [], 0
        for k in range(n):
            epoch_cb, stop_cb = fit_progress(
                slot_share(tell, k, slots), numbered(on_epoch_end, offset, k, n),
                should_stop, *sizes[k])
            model, fr = fit_trial(k, epoch_cb, stop_cb)
            if fr.stopped == "cancelled":
                raise TrainingCancelled("training cancelled")
            offset += len(fr.history)
            fits.append((model, fr))
        return fits

    inbox: queue.Queue[tuple[str, int, Any]] = queue.Queue()
    cancel = threading.Event()
    results: list[tuple[Any, Any] | None] = [None] * n
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            epoch_cb, stop_cb = fit_progress(
                lambda done: inbox.put(("share", k, done)),
                lambda rec: inbox.put(("epoch", k, rec)), cancel.is_set, *sizes[k])
            results[k] = fit_trial(k, epoch_cb, stop_cb)
        except BaseException as exc:  # noqa: BLE001 - raised in the relaying thread
            errors.append(exc)
            cancel.set()
        finally:
            inbox.put(("done", k, None))

    import torch

    workers = [threading.Thread(target=run, args=(k,), name=f"dssm-trial-{k + 1}", daemon=True)
               for k in range(n)]
    # torch's thread count is the process's: one for every fit, whichever ends first
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shares = [0.0] * n
    waiting: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    finished = [False] * n
    current, offset, counted = 0, 0, [0] * n
    for w in workers:
        w.start()
    try:
        while not all(finished):
            try:
                kind, k, value = inbox.get(timeout=TRIAL_POLL_SECONDS)
            except queue.Empty:
                kind, k, value = "", -1, None
            if kind == "share":
                shares[k] = value
                tell("train", sum(shares) / slots)
            elif kind == "epoch":
                waiting[k].append(value)
                counted[k] += 1
                if watch is not None:
                    watch.epoch(k, value)
            elif kind == "done":
                finished[k] = True
                if watch is not None and not cancel.is_set():
                    watch.done(k, results[k])
            # records in trial order: the current trial's at once, a later one's when every
            # earlier trial is done (then its epochs are numbered on from theirs)
            while current < n:
                for rec in waiting[current]:
                    if on_epoch_end is not None:
                        numbered(on_epoch_end, offset, current, n)(rec)  # type: ignore[misc]
                waiting[current] = []
                if not finished[current]:
                    break
                offset += counted[current]
                current += 1
            if not cancel.is_set() and should_stop is not None and should_stop():
                cancel.set()
    finally:
        if not all(finished):        # left by an exception here: stop the trials first
            cancel.set()
        for w in workers:
            w.join()
        if cancel.is_set() and watch is not None:
            watch.cancel()
        torch.set_num_threads(previous_threads)
    if errors:
        raise errors[0]
    fits = [r for r in results if r is not None]
    if len(fits) < n or any(fr.stopped == "cancelled" for _, fr in fits):
        raise TrainingCancelled("training cancelled")
    return fits
