"""``python -m dssm_core runs | audience | lookalike`` over a store holding a hand-made run
(the six users of ``test_audience``: item A scores u1 1, u2 .8, u6 .8, u3 .6, u4 0, u5 -1).
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dssm_core.cli import main
from test_audience import make_tiny_store, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store, _ = make_tiny_store(url)
    store.dispose()
    return url


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_runs_table_and_json(db: str, capsys) -> None:
    assert main(["runs", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "status", "dataset", "preset", "objective", "protocol",
                                "epochs", "duration", "test_auc", "created", "(UTC)"]
    assert lines[1].split()[:8] == ["1", "succeeded", "tiny", "default", "pointwise", "T",
                                    "0/1", "0:00"]
    assert lines[1].split()[8] == "0.5000"
    assert main(["runs", "--db", db, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (rec["id"], rec["status"], rec["dataset_name"]) == (1, "succeeded", "tiny")


def test_runs_on_an_empty_store(tmp_path: Path, capsys) -> None:
    from dssm_core.store import Store

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url).dispose()   # a store with no runs (a missing file is refused: test_bad_input)
    assert main(["runs", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == "no runs stored yet"


def test_audience_top_n_to_csv(db: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "a.csv"
    assert main(["audience", "--db", db, "--item", "A", "--top", "3", "--include-seen",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["run_id"], summary["size"], summary["population"]) == (1, 3, 6)
    rows = read_csv(out)
    assert rows[0][:4] == ["rank", "user_id", "score", "percentile"]
    assert [r[1] for r in rows[1:]] == ["u1", "u2", "u6"]
    assert [r[2] for r in rows[1:]] == ["1.000000", "0.800000", "0.800000"]
    assert rows[1][-3:] == ["1", "A", '\'=HYPERLINK("http://evil.example","click")']


def test_audience_exclusions_filters_and_percent(db: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b.csv"
    assert main(["audience", "--db", db, "--run", "1", "--item", "A", "--percent", "50",
                 "--exclude-seen", "--out", str(out)]) == 0
    assert [r[1] for r in read_csv(out)[1:]] == ["u2", "u3", "u5"]
    assert json.loads(capsys.readouterr().out)["excluded"] == {"already interacted": 3}
    assert main(["audience", "--db", db, "--item", "A", "--item", "B", "--top", "9",
                 "--include-seen", "--where", "gender=F", "--where", "age=25-34", "--where", "age=35-44",
                 "--out", str(out)]) == 0
    assert [r[1] for r in read_csv(out)[1:]] == ["u1", "u4"]  # tie at .7071; u3 is "=cmd"
    captured = capsys.readouterr()
    assert "warning: Asked for 9 users but only 2 are eligible" in captured.err


def test_lookalike_from_a_file(db: str, tmp_path: Path, capsys) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# our best customers\nu1\nu4\n", encoding="utf-8")
    out = tmp_path / "l.csv"
    assert main(["lookalike", "--db", db, "--users", str(seeds), "--top", "2",
                 "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [r[1] for r in rows[1:]] == ["u2", "u3"]
    assert rows[1][-3:] == ["1", "", ""]                               # no items
    # an exported audience works as a seed file (its user_id column)
    assert main(["lookalike", "--db", db, "--users", str(out), "--top", "1",
                 "--out", str(tmp_path / "l2.csv")]) == 0
    assert [r[1] for r in read_csv(tmp_path / "l2.csv")[1:]] == ["u1"]  # centroid of u2, u3


@pytest.mark.parametrize("argv, message", [
    (["audience", "--item", "nope", "--top", "3"], "error: unknown item ids in run 1: 'nope'"),
    (["audience", "--item", "A", "--top", "0"], "error: top_n must be a whole number >= 1"),
    (["audience", "--item", "A", "--top", "3", "--where", "gender"],
     "error: --where needs attr=value, got 'gender'"),
    (["audience", "--item", "A", "--top", "3", "--run", "9"], "error: no run with id 9"),
    (["audience", "--item", "A", "--top", "3", "--where", "height=2"],
     "error: unknown user attribute 'height'"),
])
def test_audience_errors_exit_2_with_one_line(db: str, tmp_path: Path, capsys, argv,
                                             message) -> None:
    out = tmp_path / "x.csv"
    assert main([*argv, "--db", db, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()


def test_unwritable_out_is_one_line_exit_2(db: str, tmp_path: Path, capsys) -> None:
    # --out naming a folder: IsADirectoryError, an OSError that is not FileNotFoundError
    assert main(["audience", "--item", "A", "--top", "1", "--db", db,
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_lookalike_errors(db: str, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n", encoding="utf-8")
    assert main(["lookalike", "--db", db, "--users", str(empty), "--top", "2",
                 "--out", str(tmp_path / "o.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {empty}: the seed list is empty"
    bad = tmp_path / "bad.txt"
    bad.write_text("u1\nghost\n", encoding="utf-8")
    assert main(["lookalike", "--db", db, "--users", str(bad), "--top", "2",
                 "--out", str(tmp_path / "o.csv")]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown user ids: 'ghost'"
    assert main(["lookalike", "--db", db, "--users", str(tmp_path / "missing.txt"),
                 "--top", "2", "--out", str(tmp_path / "o.csv")]) == 2


def test_no_succeeded_run_and_bad_url(tmp_path: Path, capsys) -> None:
    from dssm_core.store import Store

    url = f"sqlite:///{tmp_path / 'q.db'}"
    s = Store(url)
    s.create_run(s.add_dataset(tiny_dataset()), {})                   # queued only
    s.dispose()
    assert main(["audience", "--db", url, "--item", "A", "--top", "1",
                 "--out", str(tmp_path / "o.csv")]) == 2
    assert "no succeeded run" in capsys.readouterr().err
    assert main(["runs", "--db", "not a url"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot open the store at not a url")
    assert main(["project", "--db", "not a url"]) == 2                  # same message
    assert capsys.readouterr().err.startswith("error: cannot open the store at not a url")


def test_module_entry_point_end_to_end(db: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "DSSM_DB_URL": db}                                          # --db defaults to it
    out = tmp_path / "e.csv"
    ok = subprocess.run([sys.executable, "-m", "dssm_core", "audience", "--item", "B",
                         "--top", "2", "--out", str(out)], capture_output=True, text=True,
                        env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    # B scores u4 1, u3 .8, u2 .6, u1 0: u2 and u4 rated B, so by default they are left out
    assert [r[1] for r in read_csv(out)[1:]] == ["u3", "u1"]
    bad = subprocess.run([sys.executable, "-m", "dssm_core", "audience", "--item", "Z",
                          "--top", "2", "--out", str(out)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: unknown item ids in run 1: 'Z'"]
    np.testing.assert_equal(bad.stdout, "")


# ------------------------------------------------------------- parity and manners (issue 14 item 8)
def test_audience_excludes_seen_users_by_default_like_the_app(db: str, tmp_path: Path,
                                                              capsys) -> None:
    from dssm_core import audience

    assert audience.DEFAULT_EXCLUDE_SEEN is True                     # the app's checkbox default
    out = tmp_path / "d.csv"
    assert main(["audience", "--db", db, "--item", "A", "--top", "3", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert "warning: The last 1 of the 3 members score below 0" in cap.err
    # u1, u4, u6 rated A: the pool is u2 .8, u3 .6, u5 -1; percentiles within those 3
    assert summary["excluded"] == {"already interacted": 3} and summary["eligible"] == 3
    assert summary["n_below_zero"] == 1
    rows = read_csv(out)
    assert [r[1] for r in rows[1:]] == ["u2", "u3", "u5"]
    assert [r[3] for r in rows[1:]] == ["100.000", "66.667", "33.333"]
    # a floor of 0 leaves u5 out; --range filters a numeric attribute (none here: age is text)
    assert main(["audience", "--db", db, "--item", "A", "--top", "3", "--min-score", "0",
                 "--out", str(out)]) == 0
    assert [r[1] for r in read_csv(out)[1:]] == ["u2", "u3"]
    capsys.readouterr()
    assert main(["audience", "--db", db, "--item", "A", "--top", "3", "--range", "age=1:2",
                 "--out", str(out)]) == 2
    assert "'age' is not numeric" in capsys.readouterr().err
    assert main(["audience", "--db", db, "--item", "A", "--top", "3", "--range", "age=1",
                 "--out", str(out)]) == 2
    assert "--range needs attr=low:high" in capsys.readouterr().err


def test_help_speaks_to_a_user(capsys) -> None:
    from dssm_core.cli import build_parser
    from dssm_core.config import PRESETS

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "export the users most similar to an item" in text and "``" not in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(PRESETS) + "}" in text                       # the choices, listed
    assert "--epochs EPOCHS most passes over the training rows" in text
    args = build_parser().parse_args(["project"])                      # --db defaults too
    assert args.db is None


def test_train_reports_repairs_and_reuses_a_stored_copy(tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    from dssm_core import cli, pipeline
    from dssm_core.store import Store

    d = tmp_path / "ml-100k"
    d.mkdir()
    # 12 rows (enough to split: train checks the config on the data before storing it)
    (d / "u.data").write_bytes(b"".join(f"{1 + k % 3}\t{2 + k % 4}\t{1 + k % 5}\t{k}\t\t\n"
                                        .encode() for k in range(12)))
    trained: list[int] = []

    def fake_training(store, dataset_id, cfg, **kw):             # the data path, not the model
        trained.append(int(dataset_id))
        return store.create_run(int(dataset_id), cfg.to_dict())

    monkeypatch.setattr(pipeline, "run_training", fake_training)
    url = f"sqlite:///{tmp_path / 't.db'}"
    assert cli.main(["train", str(d), "--db", url, "--no-project"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "2 trailing empty column(s)" in err   # as `inspect` says
    assert cli.main(["train", str(d), "--db", url, "--no-project"]) == 0
    assert "already stored as dataset 1" in capsys.readouterr().err
    store = Store(url)
    assert trained == [1, 1] and len(store.list_datasets()) == 1
    store.dispose()
