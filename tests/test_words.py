"""What the analyst reads: objective labels that say what the labels really are, and warnings
that start like sentences (a capital, a number, or the file they are about)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dssm_core.config import PRESETS, describe_objective
from dssm_core.movielens import ColumnMapping, load

FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("preset, changes, scale, text", [
    # the audience preset: threshold 0 under a 1-5 scale makes every rating a positive
    ("audience", {}, (1.0, 5.0),
     "Interacted or not: every rating is a positive; 4 items the user never interacted with, "
     "sampled per rating, are the negatives"),
    ("default", {}, (1.0, 5.0),
     "Like / dislike: a rating above 3 is a like, the others are dislikes"),
    ("default", {"label_threshold": 3.5, "explicit_negatives": 2}, (0.5, 5.0),
     "Like / dislike: a rating above 3.5 is a like, the others are dislikes, plus 2 sampled "
     "unseen items per rating as dislikes"),
    ("default", {"negatives": 6}, None,
     "Interacted or not: every interaction is a positive; 6 items the user never interacted "
     "with, sampled per interaction, are the negatives"),
    ("default", {"label_threshold": 0.0}, (1.0, 5.0),
     "Interacted or not: every rating is a positive, and nothing is a negative (raise the like "
     "threshold or sample unseen items)"),
    ("default", {"objective": "inbatch"}, (1.0, 5.0),
     "In-batch softmax: a rating above 3 is a positive, scored against the other items of its "
     "batch (popularity-corrected)"),
    ("audience", {"objective": "inbatch"}, (1.0, 5.0),
     "In-batch softmax: every rating is a positive, scored against the other items of its "
     "batch (popularity-corrected)"),
])
def test_describe_objective(preset, changes, scale, text) -> None:
    assert describe_objective(PRESETS[preset].with_(**changes), scale) == text


#: a sentence: a capital or a number first, or the file (path) it is about and a colon
_SENTENCE = re.compile(r"^([A-Z0-9]|[\w./\-]+\.\w+: )")


def _assert_sentences(warnings: list[str]) -> None:
    assert warnings
    for w in warnings:
        assert _SENTENCE.match(w), w


def test_loader_warnings_start_like_sentences(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_bytes(b"1\t2\t3\t4\t\t\n2\t3\t4\t5\t\t\n2\t3\t4\t5\t\t\n")
    ds = load(d)                                   # no u.user, no u.item, a duplicate row
    assert "File u.user not found: users have no attributes" in ds.warnings
    assert "File u.item not found: items have no titles or genres" in ds.warnings
    _assert_sentences(ds.warnings)
    generic = load(FIX / "generic" / "clicks.tsv",
                   mapping=ColumnMapping.from_dict({"user": "visitor", "item": "page"}))
    assert generic.warnings == ["No timestamp column: the row order is used as the time order"]


def test_audience_warnings_start_like_sentences(tmp_path: Path) -> None:
    from dssm_core import audience
    from test_audience import make_tiny_store

    store, run_id = make_tiny_store(f"sqlite:///{tmp_path / 'a.db'}")
    run = audience.load_run(store, run_id)
    res = audience.build_audience(run, audience.AudienceRequest(
        seed_users=("u1",), top_n=9, exclude_seen=True, exclude_users=("ghost",)))
    assert res.warnings[0] == ("Excluding users who already interacted applies to item "
                               "audiences only; ignored for a lookalike")
    assert len(res.warnings) == 4          # + the members scoring below 0
    _assert_sentences(res.warnings)
    store.dispose()
