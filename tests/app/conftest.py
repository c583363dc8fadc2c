"""Fixtures for the app tests: a temporary store per test, the demo off, AppTest helpers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from apphelpers import kill_jobs


@pytest.fixture()
def app_store(tmp_path: Path, monkeypatch) -> Iterator[Any]:
    """An empty store in tmp_path that the app under test uses (``DSSM_DB_URL``); demo off."""
    from dssm_core.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("DSSM_DB_URL", url)
    monkeypatch.setenv("DSSM_DEMO", "off")
    store = Store(url)
    yield store
    kill_jobs(store)
    store.dispose()
