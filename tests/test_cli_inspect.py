"""``python -m dssm_core inspect DATA``: one JSON line and exit 0; bad input exit 2, one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dssm_core import cli

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"

ML1M_SUMMARY = {
    "format": "ml-1m", "n_users": 3, "n_items": 3, "n_items_without_interactions": 1,
    "n_interactions": 6,
    "user_columns": ["gender", "age", "occupation", "zip", "age_label", "occupation_label"],
    "item_columns": ["title", "genres", "year"],
    "rating_scale": [1.0, 5.0], "time_span": [978297039, 978302109],
}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dssm_core", "inspect", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_subprocess_prints_one_json_line() -> None:
    out = _run(str(FIX / "ml-1m"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == ML1M_SUMMARY
    assert out.stderr == ""


def test_subprocess_bad_input_exit_2_one_line(tmp_path: Path) -> None:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n")
    out = _run(str(z))
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {z}: archive entry '../ratings.csv' leaves")


def test_subprocess_generic_mapping_and_warnings() -> None:
    out = _run(str(FIX / "generic" / "clicks.tsv"), "--mapping",
               '{"user": "visitor", "item": "page"}')
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert (s["format"], s["n_users"], s["n_items"], s["n_interactions"]) == ("generic", 3, 3, 5)
    assert s["time_span"] == [0, 4]
    assert out.stderr == ("warning: No timestamp column: the row order is used as the time "
                          "order\n")


def test_main_success(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(FIX / "ml-1m")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == ML1M_SUMMARY and out.err == ""


@pytest.mark.parametrize("args,message", [
    (["/no/such/folder"], "error: /no/such/folder: no such file or folder"),
    ([str(FIX / "generic" / "events.csv")], "not a known MovieLens layout"),
    ([str(FIX / "generic" / "clicks.tsv"), "--mapping", "[1"], "--mapping is not valid JSON"),
    ([str(FIX / "generic" / "clicks.tsv"), "--mapping", '{"user": "visitor"}'],
     "a column mapping needs 'item'"),
    ([str(FIX / "generic" / "clicks.tsv"), "--mapping", '["visitor"]'],
     "--mapping must be a JSON object"),
])
def test_main_bad_input(args: list[str], message: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", *args]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.splitlines()) == 1
    assert out.err.startswith("error: ") and message in out.err


def test_main_bad_rating_names_line_and_column(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,five,5\n")
    assert cli.main(["inspect", str(d)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {d / 'ratings.csv'}, line 3, column 'rating': not a number: "
                   "expected a number, found 'five'\n")
