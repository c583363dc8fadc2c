"""Typed records the store hands out: :class:`DatasetInfo`, :class:`RunInfo`, :class:`AudienceInfo`,
and the one definition of a run's statuses (:class:`RunStatus`).

Pages and the CLI read fields as attributes (``run.status``, ``run.config``) instead of probing
dicts. For callers not moved yet, a record also answers ``record["field"]`` and
``record.get("field", default)`` with the same values; ``to_dict()`` gives a JSON-able dict
(the CLI's ``runs --json``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Iterator


class RunStatus(str, Enum):
    """Where a training run is. A ``str`` enum: ``RunStatus.QUEUED == "queued"``, so stored
    text and JSON stay plain strings."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        """Queued or running: a process should be working on it."""
        return self in ACTIVE_STATUSES

    @property
    def ended(self) -> bool:
        """Succeeded, failed or cancelled: nothing will change it any more."""
        return not self.active


#: Every status, in a run's life order.
STATUSES: tuple[RunStatus, ...] = tuple(RunStatus)
#: A run is "active" while queued or running.
ACTIVE_STATUSES: tuple[RunStatus, ...] = (RunStatus.QUEUED, RunStatus.RUNNING)


class _Record:
    """Mapping-style read access over a dataclass's fields (see the module docstring)."""

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key``, or ``default`` when there is no such field."""
        return getattr(self, key) if key in self._names() else default

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def keys(self) -> list[str]:
        return list(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (statuses as text)."""
        out = {n: getattr(self, n) for n in self._names()}
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in out.items()}


@dataclass(frozen=True)
class DatasetInfo(_Record):
    """A stored dataset's metadata (no table data). Counts are of the interactions: ``n_items``
    counts items with at least one interaction."""

    id: int
    name: str
    format: str | None
    n_users: int
    n_items: int
    n_interactions: int
    content_hash: str
    rating_scale: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)
    created_at: datetime | None = None


@dataclass(frozen=True)
class RunInfo(_Record):
    """A training run: what it trains, where it is, how long it took and what it scored.

    ``summary`` is empty until the run succeeds; ``epoch`` counts finished epochs of
    ``epochs_total``; ``duration_s`` runs to now while the run is active.
    """

    id: int
    dataset_id: int
    dataset_name: str | None
    status: RunStatus
    preset: str | None
    objective: str | None
    protocol: str | None
    config: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    #: Host name of the training process; ``heartbeat_at`` its last sign of life.
    host: str | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    epochs_total: int = 0
    #: Where the training process is: ``{"stage", "fraction", "message"}`` (see
    #: ``dssm_core.progress``), None before it reports.
    progress: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status.active

    @property
    def succeeded(self) -> bool:
        return self.status is RunStatus.SUCCEEDED


@dataclass(frozen=True)
class AudienceInfo(_Record):
    """A saved audience. ``members`` (rank, user_id, score by rank) only from
    ``Store.load_audience``; None in listings."""

    id: int
    run_id: int
    name: str
    size: int
    definition: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    members: Any = None  # pd.DataFrame | None (pandas is not imported here)
