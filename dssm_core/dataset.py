"""The canonical dataset every loader returns and every later stage consumes.

Kept apart from ``movielens`` (which owns the file formats) so that ``synthetic`` and
``store`` can build and read datasets without importing the parsers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


#: How many characters of a user's value (an id, a column or file name) a message repeats.
SHOWN_CHARS = 80


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as text for a message: at most ``limit`` characters, then "…" and the length.

    Messages repeat what the person gave (an unknown id, a column name); a 20 MB id must not
    become a 20 MB error line. Line breaks are shown as ``\\n`` so a message stays one line.
    """
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text):,} characters)"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _shorten_path(path: str, limit: int = 2 * SHOWN_CHARS) -> str:
    """A long path keeps its start and its end (the file's own name)."""
    if len(path) <= limit:
        return path
    half = limit // 2
    return f"{path[:half]}…{path[-half:]}"


class DataValidationError(ValueError):
    """Bad input. The message names the file, the line and the column, and what was expected.

    ``file``, ``line`` (1-based, as an editor shows it) and ``column`` are kept as attributes
    so the app can highlight them; any of them may be ``None`` when it does not apply.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        where = []
        if file:
            where.append(_shorten_path(str(file)))
        if line is not None:
            where.append(f"line {line}")
        if column:
            where.append(f"column '{shorten(column)}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclass
class Dataset:
    """MovieLens-style data in canonical form.

    interactions: one row per event, columns exactly ``user_id`` (str), ``item_id`` (str),
        ``rating`` (float32; 1.0 for implicit feedback), ``timestamp`` (int64 unix seconds;
        when the source has no time, the row order is used and a warning says so).
        The id columns may be pandas ``category`` dtype with string categories (large files).
    users: ``user_id`` (str, unique) plus whatever attribute columns the source has
        (e.g. gender, age, occupation, zip). Every user in ``interactions`` has a row.
    items: ``item_id`` (str, unique), ``title`` (str), ``genres`` (list[str]) plus whatever
        else (e.g. year). Every item in ``interactions`` has a row.
    format: the detected format name, e.g. ``"ml-100k"``, ``"ml-1m"``, ``"synthetic"``.
    rating_scale: (min, max) of the declared scale, or ``None`` for implicit feedback.
    warnings: tolerated problems (duplicates dropped, BOM, trailing empty columns...).
    truth: ground truth that is not a model feature (the synthetic set's planted groups).
    """

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    format: str
    name: str = ""
    rating_scale: tuple[float, float] | None = (1.0, 5.0)
    warnings: list[str] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def implicit(self) -> bool:
        """True when the source had no ratings (every observed interaction is a positive)."""
        return self.rating_scale is None

    @property
    def user_columns(self) -> list[str]:
        return [c for c in self.users.columns if c != "user_id"]

    @property
    def item_columns(self) -> list[str]:
        return [c for c in self.items.columns if c != "item_id"]

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary printed by ``python -m dssm_core inspect``."""
        inter = self.interactions
        ratings = inter["rating"]
        ts = inter["timestamp"]
        n_items = int(inter["item_id"].nunique())
        listed = int(self.items["item_id"].nunique()) if "item_id" in self.items else n_items
        return {
            "format": self.format,
            "n_users": int(inter["user_id"].nunique()),
            "n_items": n_items,
            # items of the items table never interacted with: a run gives them vectors too
            # (from their attributes), so its item count is n_items + this
            "n_items_without_interactions": max(0, listed - n_items),
            "n_interactions": int(len(inter)),
            "user_columns": self.user_columns,
            "item_columns": self.item_columns,
            # observed range; implicit feedback has no scale (every rating is 1.0)
            "rating_scale": (
                [float(ratings.min()), float(ratings.max())]
                if len(inter) and not self.implicit else None
            ),
            "time_span": [int(ts.min()), int(ts.max())] if len(inter) else None,
        }
