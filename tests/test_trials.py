"""Tuning trials and the early refit (``dssm_core.trials``).

The early refit runs a fake training here: a one-weight model that gains 1 per batch, three
batches an epoch, so its weight after epoch e is 3e; the test lets it through one epoch at
a time (a semaphore), so every interleaving below is fixed, not left to the scheduler.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dssm_core import pipeline, trials
from dssm_core.config import preset

torch.set_num_threads(1)


class _FakeRefits:
    """``refit_for`` for ``EarlyRefit``: records which trial was refitted; each refit's
    epochs wait for ``allow(n)``."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.gate = threading.Semaphore(0)
        self.epochs_run = 0

    def allow(self, epochs: int) -> None:
        for _ in range(epochs):
            self.gate.release()

    def __call__(self, k: int):
        self.started.append(k)
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.zero_()

        def train(epochs, epoch_cb, stop_cb):
            for e in range(1, epochs + 1):
                assert self.gate.acquire(timeout=10), "the test never let this epoch run"
                for _ in range(3):
                    if stop_cb():
                        return SimpleNamespace(stopped="cancelled")
                    with torch.no_grad():
                        model.weight += 1.0
                self.epochs_run = e
                epoch_cb({"epoch": e})
            return SimpleNamespace(stopped="completed")

        return model, 30, train


def _fit(best_epoch: int):
    return (None, SimpleNamespace(best_epoch=best_epoch, stopped="early"))


def _wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _weight(model) -> float:
    return float(model.weight.detach()[0, 0])


def test_the_leader_refits_on_past_its_count_and_is_taken_back_to_it() -> None:
    """Trial 1 ends first (best 0.30); trial 2 leads (0.40 so far) and is still running, so
    its refit starts with no epoch count, runs 3 epochs, then trial 2 ends with best epoch
    2: the refit stops at its next batch and its weights are those after epoch 2."""
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early.epoch(0, {"epoch": 1, "val_recall@50": 0.30})
    early.epoch(1, {"epoch": 1, "val_recall@50": 0.40})
    early.done(0, _fit(1))
    assert refits.started == [1] and early.trial == 1
    refits.allow(3)
    _wait_for(lambda: refits.epochs_run == 3, "three epochs")
    early.epoch(1, {"epoch": 2, "val_recall@50": 0.45})
    early.done(1, _fit(2))
    refits.allow(1)                      # lets it reach the batch where it sees the stop
    shares: list[float] = []
    model = early.take(1, 2, None, shares.append)
    assert _weight(model) == 6.0         # epoch 2's weights, not epoch 3's (9)
    assert shares[-1] == 1.0 and shares == sorted(shares)
    assert not model.training


def test_a_count_known_before_it_is_reached_stops_the_refit_there() -> None:
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_logloss", False, max_epochs=10, batch_size=10)
    early.epoch(0, {"epoch": 1, "val_logloss": 0.50})
    early.epoch(1, {"epoch": 1, "val_logloss": 0.40})      # lower is better: trial 2 leads
    early.done(0, _fit(1))
    assert early.trial == 1
    early.done(1, _fit(4))
    refits.allow(5)
    model = early.take(1, 4, None, lambda f: None)
    assert _weight(model) == 12.0 and refits.epochs_run == 4


def test_a_finished_leader_refits_exactly_its_own_count() -> None:
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early.epoch(0, {"epoch": 1, "val_recall@50": 0.50})
    early.epoch(0, {"epoch": 2, "val_recall@50": float("nan")})    # never counts as better
    early.epoch(1, {"epoch": 1, "val_recall@50": 0.20})
    early.done(0, _fit(1))
    assert refits.started == [0]
    refits.allow(1)
    model = early.take(0, 1, None, lambda f: None)
    assert _weight(model) == 3.0 and refits.epochs_run == 1


def test_on_a_tie_the_earlier_trial_leads_as_in_the_final_choice() -> None:
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early.epoch(0, {"epoch": 1, "val_recall@50": 0.30})
    early.epoch(1, {"epoch": 1, "val_recall@50": 0.30})
    early.done(1, _fit(1))               # trial 2 ends first; trial 1 (still running) leads
    assert refits.started == [0]
    early.cancel()


def test_a_wrong_guess_is_stopped_and_dropped() -> None:
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early.epoch(0, {"epoch": 1, "val_recall@50": 0.10})
    early.epoch(1, {"epoch": 1, "val_recall@50": 0.40})
    early.done(0, _fit(1))
    refits.allow(1)
    early.done(1, _fit(1))
    refits.allow(10)                     # whatever it still needs to reach a stop
    assert early.take(0, 1, None, lambda f: None) is None      # trial 1 was chosen after all
    assert not [t for t in threading.enumerate() if t.name == "dssm-early-refit"]


def test_a_cancel_while_waiting_for_the_refit_stops_it() -> None:
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early.epoch(1, {"epoch": 1, "val_recall@50": 0.40})
    early.done(0, _fit(1))
    early.done(1, _fit(5))
    refits.allow(1)
    polls: list[int] = []

    def stop() -> bool:
        polls.append(1)
        if len(polls) == 3:
            refits.allow(10)             # it may run on to its next batch, where it stops
        return len(polls) >= 3

    with pytest.raises(trials.TrainingCancelled):
        early.take(1, 5, stop, lambda f: None)
    assert not [t for t in threading.enumerate() if t.name == "dssm-early-refit"]


def test_no_refit_starts_for_a_leader_without_a_best_epoch_or_after_a_cancel() -> None:
    refits = _FakeRefits()
    early = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early.epoch(0, {"epoch": 1, "val_recall@50": 0.40})
    early.done(0, _fit(0))
    assert refits.started == [] and early.trial is None
    early2 = trials.EarlyRefit(refits, 2, "val_recall@50", True, max_epochs=10, batch_size=10)
    early2.done(0, (None, SimpleNamespace(best_epoch=1, stopped="cancelled")))
    assert refits.started == []
    assert early2.take(0, 1, None, lambda f: None) is None


_REAL_TAKE, _REAL_START = trials.EarlyRefit.take, trials.EarlyRefit._start


def _run(tiny, monkeypatch, side_by_side: bool, wrong_guess: bool = False):
    cfg = preset("audience", epochs=3, batch_size=256, embedding_dim=8, user_hidden=(32, 16),
                 item_hidden=(32, 16), tune="negatives", refit=True)
    monkeypatch.setattr(pipeline, "PARALLEL_TRIAL_ROWS", 10**12 if side_by_side else 0)
    monkeypatch.setattr(pipeline, "_trial_cores", lambda space: 2)
    taken: list[object] = []

    def take(self, chosen, best_epoch, should_stop, share):
        got = _REAL_TAKE(self, chosen, best_epoch, should_stop, share)
        taken.append((self.trial, chosen, got is not None))
        return got

    monkeypatch.setattr(trials.EarlyRefit, "take", take)
    if wrong_guess:       # the trial that trails on validation leads the guess
        monkeypatch.setattr(trials.EarlyRefit, "_start", _start_other(_REAL_START))
    r = pipeline.train(tiny, cfg)
    return r, taken


def _start_other(real_start):
    """``_start`` with the figures seen so far reversed: the trial that trails leads."""
    def start(self):
        self._best = [-b if np.isfinite(b) else b for b in self._best]
        real_start(self)
    return start


def test_the_run_with_an_early_refit_equals_the_plain_sequence(tiny_synthetic,
                                                              monkeypatch) -> None:
    seq, taken_seq = _run(tiny_synthetic, monkeypatch, False)
    par, taken = _run(tiny_synthetic, monkeypatch, True)
    assert taken_seq == []                    # one after another: no early refit
    chosen = par.summary["tune_choice"] - 1
    assert taken == [(chosen, chosen, True)]  # the leader was chosen and its refit taken
    np.testing.assert_array_equal(par.eval_user_vectors, seq.eval_user_vectors)
    np.testing.assert_array_equal(par.audience_user_vectors, seq.audience_user_vectors)
    for key in ("i2u_recall@50", "u2i_recall@50", "test_auc", "tune_trials"):
        assert par.summary[key] == seq.summary[key], key

    wrong, taken = _run(tiny_synthetic, monkeypatch, True, wrong_guess=True)
    assert len(taken) == 1 and taken[0][0] != taken[0][1] and taken[0][2] is False
    np.testing.assert_array_equal(wrong.eval_user_vectors, seq.eval_user_vectors)
    assert wrong.summary["i2u_recall@50"] == seq.summary["i2u_recall@50"]
    assert not [t for t in threading.enumerate() if t.name == "dssm-early-refit"]
