"""Progress of one training run: its stages, in order, and how a caller hears of them.

A progress callback is called as ``progress(stage, fraction, message)``: ``stage`` is one of
:data:`STAGES` (they come in that order; a run without a store skips "load", "store" and
"maps"), ``fraction`` the share of that stage done, in [0, 1] and never decreasing within the
stage, ``message`` a short text or None. ``pipeline.train`` / ``pipeline.run_training`` call
it; the core never prints: the CLI draws it on stderr, the training job writes it to the
store (``Store.set_progress``) where the Train and Home pages read it.
"""
from __future__ import annotations

import time
from typing import Callable

#: Every stage of a run, in order.
STAGES = ("load", "encode", "train", "evaluate", "embed", "store", "maps")
#: What each stage is called on the pages and in the CLI.
STAGE_LABELS = {
    "load": "loading data",
    "encode": "encoding features",
    "train": "training",
    "evaluate": "evaluating",
    "embed": "embedding users and items",
    "store": "storing the run",
    "maps": "computing the maps",
}
#: ``progress(stage, fraction, message)``: see the module docstring.
Progress = Callable[[str, float, "str | None"], None]


def stage_label(stage: str | None) -> str:
    """The words for ``stage`` ("training"); unknown stages are shown as they are."""
    return STAGE_LABELS.get(str(stage), str(stage or ""))


def stage_number(stage: str | None) -> int:
    """1-based position of ``stage`` in :data:`STAGES` (0 when unknown)."""
    return STAGES.index(stage) + 1 if stage in STAGES else 0


class Reporter:
    """What ``pipeline`` calls: keeps each stage's fraction within [0, 1] and never lower
    than what it already reported (an early-stopped epoch loop jumps ahead, never back), and
    forwards to ``callback`` (None: reports go nowhere)."""

    def __init__(self, callback: Progress | None) -> None:
        self.callback = callback
        self.stage: str | None = None
        self.fraction = 0.0

    def __call__(self, stage: str, fraction: float, message: str | None = None) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}; known: {', '.join(STAGES)}")
        f = min(1.0, max(0.0, float(fraction)))
        if stage == self.stage:
            f = max(f, self.fraction)
        self.stage, self.fraction = stage, f
        if self.callback is not None:
            self.callback(stage, f, message)

    def part(self, stage: str, start: float, end: float) -> Callable[[int, int], None]:
        """``tick(done, total)`` reporting ``stage`` at ``start + (end - start) * done/total``."""
        def tick(done: int, total: int) -> None:
            self(stage, start + (end - start) * (done / total if total else 1.0))
        return tick


class Throttled:
    """``callback`` called at most every ``min_interval_s`` seconds within a stage, but always
    for a new stage and for a stage's end (fraction 1)."""

    def __init__(self, callback: Progress, min_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.callback = callback
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self._stage: str | None = None
        self._last = -float("inf")

    def __call__(self, stage: str, fraction: float, message: str | None = None) -> None:
        now = self.clock()
        if stage != self._stage or fraction >= 1.0 or now - self._last >= self.min_interval_s:
            self._stage, self._last = stage, now
            self.callback(stage, fraction, message)
