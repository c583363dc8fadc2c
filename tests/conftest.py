"""Shared fixtures. Tests stay single-threaded: these are shared 2-core machines."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# No long-lived projection worker (it compiles umap, ~40 s of CPU) behind every background
# training of the suite; tests/test_projector.py switches it on where it is the subject.
os.environ.setdefault("DSSM_PROJECTOR", "off")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real MovieLens files); tests using it skip when it is absent."""
    path = SHARED / "data"
    if not (path / "ml-100k" / "u.data").exists():
        pytest.skip("../shared/data is absent: real MovieLens files not available here")
    return path


@pytest.fixture(scope="session")
def ml100k_dir(shared_data: Path) -> Path:
    return shared_data / "ml-100k"


@pytest.fixture(scope="session")
def tiny_synthetic():
    """A small deterministic synthetic dataset (300 users, 120 items, 6,000 events)."""
    from dssm_core import synthetic

    return synthetic.generate(n_users=300, n_items=120, n_interactions=6_000, seed=3)


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store URL in a temp folder."""
    return f"sqlite:///{tmp_path / 'store.db'}"
