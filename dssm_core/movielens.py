"""Data in (kept for existing callers): the loaders now live in the ``dssm_core.io`` package.

``from dssm_core import movielens; movielens.load(...)`` keeps working; new code imports
``dssm_core.io``.
"""
from __future__ import annotations

from . import io as _io
from .io import *  # noqa: F401,F403  (the public names, listed in dssm_core.io.__all__)
from .io.formats import (ARTICLE_COLUMNS, ML1M_AGE_LABELS, ML1M_OCCUPATION_LABELS,
                         ML100K_GENRES)

__all__ = [*_io.__all__, "ARTICLE_COLUMNS", "ML100K_GENRES", "ML1M_AGE_LABELS",
           "ML1M_OCCUPATION_LABELS"]
