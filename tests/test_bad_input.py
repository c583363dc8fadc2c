"""Bad input of every kind, through the API and the CLI: a clear answer, and nothing stored.

Each data case is one small file (or folder, or zip) with the place of its problem worked out
by hand: the file, the 1-based line as an editor shows it (header = line 1, blank lines
count) and the column. Every case is run three ways:

- ``dssm_core.io.load`` raises ``DataValidationError`` with that ``file``/``line``/``column``;
- ``python -m dssm_core inspect`` exits 2 with one ``error:`` line naming them, no traceback;
- ``python -m dssm_core train DATA --db STORE`` exits 2 and the store's bytes (sha256 of the
  SQLite file after a WAL checkpoint) are unchanged.

Then the commands against a store (unknown or finished runs, a mistyped ``--db``, wrong JSON
types, hostile lengths, special files) and the inputs that are repaired with a warning.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dssm_core import io as dio
from dssm_core.cli import main
from dssm_core.dataset import DataValidationError
from test_audience import make_tiny_store

ROOT = Path(__file__).resolve().parents[1]
GENRE_FLAGS = "|".join(["0"] * 18 + ["1"])  # 19 ML-100K genre flags: Western
M_RATED = {"user": "user", "item": "item", "rating": "rating", "timestamp": "ts"}
HEADER = "user,item,rating,ts\n"


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _corrupt_zip() -> bytes:
    """A zip whose one member's deflate stream is damaged (the headers are intact)."""
    rows = "".join(f"{u}\t{i}\t3\t{1000 + 50 * u + i}\n" for u in range(1, 40) for i in range(1, 40))
    data = bytearray(_zip({"ml-100k/u.data": rows.encode()}))
    start = 30 + len("ml-100k/u.data")  # the local header, then the compressed bytes
    for k in range(start + 8, start + 72):
        data[k] ^= 0xA5
    return bytes(data)


def _parquet(columns: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def _too_long_field() -> bytes:
    return (b"userId,movieId,rating,timestamp\n1,2,3,4\n\"" + b"x" * 200_000
            + b",3,4,5\n3,1,5,6\n")


# name -> (files {relative path: bytes}, DATA inside the case folder, mapping,
#          (file as the message names it, line, column), words of the message)
DATA_CASES: dict[str, tuple] = {
    # -- item 1: tracebacks before --------------------------------------------------------
    "corrupt zip member": (
        {"ml.zip": _corrupt_zip()}, "ml.zip", None,
        ("ml.zip:ml-100k/u.data", None, None), "corrupt archive entry"),
    "CR-only line ends and a bad rating": (
        {"ml/u.data": b"1\t2\t3\t4\r2\t3\tx\t5\r3\t1\t5\t6\r"}, "ml", None,
        ("ml/u.data", 2, "rating"), "not a number"),
    "u.data row with fewer fields, first line": (
        {"ml/u.data": b"1\t2\t3\n2\t3\t4\t5\n3\t1\t5\t6\n"}, "ml", None,
        ("ml/u.data", 1, None), "expected 4 fields separated by tab, found 3"),
    "ratings.dat row with fewer fields": (
        {"ml/ratings.dat": b"1::2::3::4\n2::3::4::5\n3::1::5\n"}, "ml", None,
        ("ml/ratings.dat", 3, None), "expected 4 fields separated by '::', found 3"),
    "movies.csv row with fewer fields (text columns)": (
        {"ml/ratings.csv": b"userId,movieId,rating,timestamp\n1,1,3,4\n2,2,4,5\n",
         "ml/movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Jumanji\n"},
        "ml", None, ("ml/movies.csv", 3, None), "expected 3 fields separated by ',', found 2"),
    "generic items table row with fewer fields": (
        {"g/events.csv": HEADER.encode() + b"1,a,3,10\n2,b,4,20\n",
         "g/items.csv": b"item,title,colour\na,Alpha,red\n\nb,Beta\n"},
        "g", {**M_RATED, "interactions_file": "events.csv", "items_file": "items.csv"},
        ("g/items.csv", 4, None), "expected 3 fields separated by ',', found 2"),
    "field longer than the csv module's limit": (
        {"ml/ratings.csv": _too_long_field()}, "ml", None,
        ("ml/ratings.csv", 3, None), "opened and never closed"),
    # -- item 2: wrong values accepted before ---------------------------------------------
    "infinite rating": (
        {"t.csv": (HEADER + "1,a,3,100\n2,b,inf,200\n3,a,5,300\n").encode()}, "t.csv", M_RATED,
        ("t.csv", 3, "rating"), "not a number: expected a number, found 'inf'"),
    "rating beyond float32": (
        {"t.csv": (HEADER + "1,a,3,100\n2,b,1e300,200\n3,a,5,300\n").encode()}, "t.csv",
        M_RATED, ("t.csv", 3, "rating"), "rating out of range"),
    "infinite timestamp": (
        {"t.csv": (HEADER + "1,a,3,100\n\n2,b,4,-inf\n3,a,5,300\n").encode()}, "t.csv",
        M_RATED, ("t.csv", 4, "ts"), "not a number"),
    "timestamp 1e300": (
        {"t.csv": (HEADER + "1,a,3,100\n2,b,4,1e300\n3,a,5,300\n").encode()}, "t.csv",
        M_RATED, ("t.csv", 3, "ts"), "time out of range"),
    # (Parquet: "line" is the row number, header-less)
    "infinite rating in Parquet": (
        {"t.parquet": _parquet({"user": ["1", "2", "3"], "item": ["a", "b", "a"],
                                "rating": [3.0, float("inf"), 5.0], "ts": [1, 2, 3]})},
        "t.parquet", M_RATED, ("t.parquet", 2, "rating"), "not a number"),
    "timestamp 1e300 in Parquet": (
        {"t.parquet": _parquet({"user": ["1", "2", "3"], "item": ["a", "b", "a"],
                                "rating": [3.0, 4.0, 5.0], "ts": [1.0, 2.0, 1e300]})},
        "t.parquet", M_RATED, ("t.parquet", 3, "ts"), "time out of range"),
    # -- item 3: messages without a place before ------------------------------------------
    "date out of range": (
        {"t.csv": (HEADER + "1,a,3,2020-01-01\n2,b,4,10000-01-01\n3,a,5,2020-01-02\n").encode()},
        "t.csv", M_RATED, ("t.csv", 3, "ts"), "not a time"),
    "timestamp beyond int64 in u.data": (
        {"ml/u.data": b"1\t2\t3\t4\n2\t3\t4\t99999999999999999999\n3\t1\t5\t6\n"}, "ml", None,
        ("ml/u.data", 2, "timestamp"), "integer out of range"),
    # -- item 5: special files are in test_special_files_are_refused ----------------------
    # -- kinds handled before (kept) -------------------------------------------------------
    "empty file": ({"ml/u.data": b""}, "ml", None, ("ml/u.data", None, None), "empty file"),
    "binary file": (
        {"ml/u.data": b"1\t2\t3\t4\n\x00\x01\x02"}, "ml", None, ("ml/u.data", 2, None),
        "binary file"),
    "UTF-16 text": (
        {"t.csv": "user,item\n1,a\n".encode("utf-16")}, "t.csv",
        {"user": "user", "item": "item"}, ("t.csv", 1, None), "UTF-16"),
    "gzip file": ({"ml/u.data": b"\x1f\x8b\x08\x00rest"}, "ml", None, ("ml/u.data", 1, None),
                  "gzip"),
    "not UTF-8": (
        {"t.csv": HEADER.encode() + b"1,a,3,100\n2,b\xff,4,200\n"}, "t.csv", M_RATED,
        ("t.csv", 3, None), "cannot decode byte 0xff"),
    "one column": (
        {"t.csv": b"user item\n1 a\n"}, "t.csv", {"user": "user", "item": "item"},
        ("t.csv", 1, None), "found one column"),
    "missing column": (
        {"ml/ratings.csv": b"userId,movieId,timestamp\n1,2,4\n"}, "ml", None,
        ("ml/ratings.csv", 1, "rating"), "missing required column 'rating'"),
    "column named twice": (
        {"ml/ratings.csv": b"userId,movieId,rating,rating,timestamp\n1,2,3,3,4\n"}, "ml", None,
        ("ml/ratings.csv", 1, "rating"), "appears twice"),
    "rating not a number": (
        {"ml/ratings.csv": b"userId,movieId,rating,timestamp\n1,2,3,4\n\n1,3,five,5\n"}, "ml",
        None, ("ml/ratings.csv", 4, "rating"), "found 'five'"),
    "missing id": (
        {"ml/u.data": b"1\t2\t3\t4\n\t3\t4\t5\n"}, "ml", None, ("ml/u.data", 2, "user_id"),
        "missing value"),
    "rating off the scale": (
        {"ml/u.data": b"1\t2\t3\t4\n2\t3\t6\t5\n"}, "ml", None, ("ml/u.data", 2, "rating"),
        "outside the declared scale"),
    "fractional timestamp": (
        {"ml/ratings.csv": b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,3,4.5\n"}, "ml",
        None, ("ml/ratings.csv", 3, "timestamp"), "not an integer"),
    "genre flag not 0/1": (
        {"ml/u.data": b"1\t1\t3\t4\n2\t2\t4\t5\n",
         "ml/u.item": f"1|A (1995)|x||u|{GENRE_FLAGS}\n2|B (1996)|x||u|{GENRE_FLAGS[:-1]}7\n"
         .encode()}, "ml", None, ("ml/u.item", 2, "Western"), "genre flag 0 or 1"),
    "too few users": (
        {"ml/u.data": b"1\t2\t3\t4\n1\t3\t4\t5\n"}, "ml", None, ("ml/u.data", None, None),
        "at least 2 users"),
    "zip entry leaving its folder": (
        {"bad.zip": _zip({"../u.data": b"1\t2\t3\t4\n"})}, "bad.zip", None,
        ("bad.zip", None, None), "leaves the archive's folder"),
    "zip bomb": (
        {"bomb.zip": _zip({"u.data": b"0" * (4 << 20)})}, "bomb.zip", None,
        ("bomb.zip", None, None), "zip bomb"),
    "zip with no data files": (
        {"x.zip": _zip({"a/readme.md": b"hello", "a/notes.md": b"x"})}, "x.zip", None,
        ("x.zip", None, None), "no known MovieLens files"),
    "unknown layout without a mapping": (
        {"t.csv": b"customer,sku\n1,a\n"}, "t.csv", None, ("t.csv", 1, None),
        "not a known MovieLens layout"),
}


def _write_case(base: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def store_digest(db_path: Path) -> str:
    """sha256 of the SQLite file after a WAL checkpoint (what a copy of the store would hold)."""
    con = sqlite3.connect(db_path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return hashlib.sha256(db_path.read_bytes()).hexdigest()


@pytest.fixture()
def store_db(tmp_path: Path) -> tuple[str, Path]:
    """A store holding one dataset and one succeeded run (run 1 of dataset 1)."""
    path = tmp_path / "store.db"
    store, _ = make_tiny_store(f"sqlite:///{path}")
    store.dispose()
    return f"sqlite:///{path}", path


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in-process; an exception escaping ``main`` fails the test (a traceback)."""
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, err


def _assert_one_error_line(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _place(file: str, line: int | None, column: str | None) -> str:
    return ", ".join([file] + ([f"line {line}"] if line else [])
                     + ([f"column '{column}'"] if column else []))


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_refused_with_its_place_and_stores_nothing(
        case: str, tmp_path: Path, store_db, capsys) -> None:
    files, data, mapping, (file, line, column), words = DATA_CASES[case]
    base = tmp_path / "in"
    _write_case(base, files)
    source = base / data
    # the API
    with pytest.raises(DataValidationError) as info:
        dio.load(source, mapping=None if mapping is None else dio.ColumnMapping.from_dict(mapping))
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert err.file is not None and err.file.endswith(file), str(err)
    assert words in str(err)
    # the CLI: inspect
    argv = ["inspect", str(source)] + (["--mapping", json.dumps(mapping)] if mapping else [])
    msg = _assert_one_error_line(*_cli(argv, capsys))
    assert msg.startswith("error: ") and _place(file, line, column) in msg and words in msg
    # the CLI: train into a store, which stays byte for byte as it was
    url, path = store_db
    before = store_digest(path)
    msg = _assert_one_error_line(*_cli(["train", str(source), "--db", url, "--epochs", "1",
                                        "--no-project"], capsys))
    if mapping is None:  # train reads MovieLens layouts only; a generic table is refused
        assert _place(file, line, column) in msg and words in msg
    assert store_digest(path) == before


def test_size_limits_are_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_bytes(b"1\t2\t3\t4\n" * 100)  # 800 bytes
    with pytest.raises(DataValidationError, match="file is 800 bytes; the limit is 799 bytes"):
        dio.load(path, max_bytes=799)
    assert len(dio.load([("u.data", b"1\t2\t3\t4\n2\t3\t4\t5\n")]).interactions) == 2
    archive = _zip({"ml/u.data": b"1\t2\t3\t4\n" * 100})
    with pytest.raises(DataValidationError, match="expand to 800 bytes; the limit is 100"):
        dio.load(("ml.zip", archive), max_unzipped_bytes=100)


# ----------------------------------------------------------------------- special files (5)
def test_special_files_are_refused(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for path, what in ((Path("/dev/zero"), "a character device"), (fifo, "a named pipe")):
        with pytest.raises(DataValidationError, match=what) as info:
            dio.load(path)  # returns at once: never opened, never read
        assert info.value.file == str(path)
        msg = _assert_one_error_line(*_cli(["inspect", str(path)], capsys))
        assert msg == f"error: {path}: {what}" + msg.split(what, 1)[1]
        assert "not a regular file" in msg
    # a folder holding a FIFO next to the data: the FIFO is not a file of the folder
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_bytes(b"1\t1\t3\t4\n2\t2\t4\t5\n")
    os.mkfifo(folder / "u.item")
    ds = dio.load(folder)
    assert len(ds.interactions) == 2 and "u.item not found" in " ".join(ds.warnings)


@pytest.mark.timeout(120)
def test_special_files_as_a_process_exit_2_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "seeds.txt"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for argv in (["inspect", "/dev/zero"], ["inspect", str(fifo)],
                 ["lookalike", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--users",
                  str(fifo), "--top", "3", "--out", str(tmp_path / "o.csv")]):
        proc = subprocess.run([sys.executable, "-m", "dssm_core", *argv], capture_output=True,
                              text=True, timeout=60, env=env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "none.db").exists()


# ------------------------------------------------------------- commands against a store (4)
def test_train_with_a_finished_or_unknown_run_id_leaves_the_store_as_it_was(
        store_db, tmp_path: Path, capsys) -> None:
    url, path = store_db
    before = store_digest(path)
    cases = [
        (["--dataset-id", "1", "--run-id", "1"], "run 1 is succeeded"),
        (["--dataset-id", "1", "--run-id", "99"], "no run with id 99"),
        (["--dataset-id", "7"], "no dataset with id 7"),
    ]
    folder = tmp_path / "ml"
    _write_case(folder, {"u.data": b"1\t1\t3\t4\n2\t2\t4\t5\n3\t1\t5\t6\n"})
    cases.append(([str(folder), "--run-id", "1"], "not DATA"))
    for extra, words in cases:
        msg = _assert_one_error_line(*_cli(["train", "--db", url, "--no-project", *extra],
                                           capsys))
        assert words in msg
        assert store_digest(path) == before
    # data the config cannot split: refused before the dataset is stored
    msg = _assert_one_error_line(*_cli(["train", str(folder), "--db", url, "--no-project"],
                                       capsys))
    assert "too few interactions to split (3)" in msg
    assert store_digest(path) == before


@pytest.mark.parametrize("command", [
    ["runs"], ["runs", "--json"], ["project"],
    ["audience", "--item", "A", "--top", "2", "--out", "OUT"],
    ["lookalike", "--users", "SEEDS", "--top", "2", "--out", "OUT"],
])
def test_readers_refuse_a_store_that_does_not_exist(command, tmp_path: Path, capsys) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("u1\n")
    argv = [str(seeds) if a == "SEEDS" else str(tmp_path / "o.csv") if a == "OUT" else a
            for a in command]
    missing = tmp_path / "typo" / "sotre.db"
    msg = _assert_one_error_line(*_cli([*argv, "--db", f"sqlite:///{missing}"], capsys))
    assert f"no store at {missing}: the file does not exist" in msg
    assert not missing.parent.exists()  # neither the file nor its folder was created
    # a database that is not a store is refused too, and left alone
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    digest = store_digest(other)
    msg = _assert_one_error_line(*_cli([*argv, "--db", f"sqlite:///{other}"], capsys))
    assert "holds no store (no 'runs' table)" in msg
    assert store_digest(other) == digest


def test_database_password_is_never_shown(tmp_path: Path, capsys) -> None:
    url = "postgresql+psycopg://analyst:s3cr3t-pw@127.0.0.1:1/dssm"  # nothing listens on 1
    for argv in (["runs", "--db", url], ["train", "--db", url, "--no-project", "--epochs", "1"]):
        msg = _assert_one_error_line(*_cli(argv, capsys))
        assert "s3cr3t-pw" not in msg and "analyst:***@127.0.0.1:1/dssm" in msg


def test_postgres_wrong_password_and_a_database_without_a_store(capsys) -> None:
    url = os.environ.get("DSSM_TEST_PG_URL")
    if not url:
        pytest.skip("DSSM_TEST_PG_URL is not set: no PostgreSQL server (.ci/postgres.sh)")
    from sqlalchemy.engine import make_url

    u = make_url(url)
    wrong = u.set(password="not-the-pw-9").render_as_string(hide_password=False)
    msg = _assert_one_error_line(*_cli(["runs", "--db", wrong], capsys))
    assert "not-the-pw-9" not in msg and "password authentication failed" in msg
    assert f"{u.username}:***@" in msg
    other = u.set(database="postgres").render_as_string(hide_password=False)
    msg = _assert_one_error_line(*_cli(["runs", "--db", other], capsys))
    assert "holds no store (no 'runs' table)" in msg and f":{u.password}@" not in msg


@pytest.mark.parametrize("flag, value, words", [
    ("--mapping", {"user": 1, "item": "item"},
     "--mapping: column mapping key 'user': expected text, found the number 1"),
    ("--mapping", {"user": "user", "item": "item", "user_attributes": "age"},
     "key 'user_attributes': expected a list of column names (text), found the text \"age\""),
    ("--mapping", {"user": "user", "item": "item", "rating_scale": 5},
     "key 'rating_scale': expected a list of two numbers [min, max] or null, found the "
     "number 5"),
    ("--mapping", {"user": "user", "item": "item", "genres": "g", "genre_sep": ""},
     "key 'genre_sep': expected at least one character"),
    ("--mapping", {"user": ["u"], "item": "item"}, "key 'user': expected text, found the list"),
    ("--config-json", {"epochs": "5"},
     "--config-json: config key 'epochs': expected a whole number, found the text \"5\""),
    ("--config-json", {"learning_rate": "fast"}, "key 'learning_rate': expected a number"),
    ("--config-json", {"user_hidden": 64}, "key 'user_hidden': expected a list of whole numbers"),
    ("--config-json", {"batch_norm": 1}, "key 'batch_norm': expected true or false"),
    ("--config-json", {"dropout": None}, "key 'dropout': expected a number, found null"),
])
def test_wrong_json_types_name_the_key(flag: str, value: dict, words: str, tmp_path: Path,
                                       store_db, capsys) -> None:
    url, path = store_db
    before = store_digest(path)
    data = tmp_path / "t.csv"
    data.write_text("user,item,g\n1,a,x\n2,b,y\n")
    if flag == "--mapping":
        argv = ["inspect", str(data), "--mapping", json.dumps(value)]
    else:
        argv = ["train", "--db", url, "--dataset-id", "1", "--config-json", json.dumps(value)]
    msg = _assert_one_error_line(*_cli(argv, capsys))
    assert words in msg
    assert store_digest(path) == before


def test_a_huge_id_is_shortened_in_the_message(store_db, tmp_path: Path, capsys) -> None:
    url, _ = store_db
    huge = "x" * 20_000_000
    msg = _assert_one_error_line(*_cli(["audience", "--db", url, "--item", huge, "--top", "2",
                                        "--out", str(tmp_path / "a.csv")], capsys))
    assert f"unknown item ids in run 1: '{'x' * 80}… (20,000,000 characters)'" in msg
    assert len(msg) < 300
    msg = _assert_one_error_line(*_cli(["audience", "--db", url, "--item", "A", "--top", "2",
                                        "--where", f"{huge}=1", "--out",
                                        str(tmp_path / "a.csv")], capsys))
    assert len(msg) < 400 and "… (20,000,000 characters)" in msg


def test_seed_lists_with_an_unclosed_quote_or_special_files(store_db, tmp_path: Path,
                                                            capsys) -> None:
    url, path = store_db
    before = store_digest(path)
    seeds = tmp_path / "seeds.csv"
    seeds.write_bytes(b"user_id,note\nu1,a\n\"" + b"y" * 200_000 + b",b\n")
    out = tmp_path / "o.csv"
    base = ["lookalike", "--db", url, "--top", "2", "--out", str(out)]
    msg = _assert_one_error_line(*_cli([*base, "--users", str(seeds)], capsys))
    assert f"{seeds}, line 3: cannot split the line into fields" in msg
    msg = _assert_one_error_line(*_cli([*base, "--users", "/dev/zero"], capsys))
    assert msg.startswith("error: /dev/zero: a character device, not a regular file")
    msg = _assert_one_error_line(*_cli([*base, "--users", str(tmp_path)], capsys))
    assert "a folder, not a regular file: expected a file" in msg
    good = tmp_path / "good.txt"
    good.write_text("u1\n")
    msg = _assert_one_error_line(*_cli([*base[:-1], str(tmp_path / "no" / "o.csv"),
                                        "--users", str(good)], capsys))
    assert "--out: the folder" in msg and "does not exist" in msg
    assert not out.exists() and store_digest(path) == before


def test_usage_errors_are_one_line(capsys) -> None:
    rc, err = _cli_exit(["audience", "--run", "x" * 5000, "--item", "A", "--top", "1",
                         "--out", "o.csv"], capsys)
    msg = _assert_one_error_line(rc, err)
    assert "invalid int value" in msg and len(msg) < 2100


def _cli_exit(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code), capsys.readouterr().err


# ------------------------------------------------------------- repaired with a warning (2)
def _load_bytes(name: str, data: bytes, mapping: dict | None = None):
    return dio.load((name, data),
                    mapping=None if mapping is None else dio.ColumnMapping.from_dict(mapping))


def test_cr_only_line_ends_are_read_as_line_ends() -> None:
    ds = _load_bytes("u.data", b"1\t2\t3\t4\r2\t3\t4\t5\r3\t1\t5\t6\r")
    assert ds.interactions["timestamp"].tolist() == [4, 5, 6]
    assert ds.interactions["rating"].tolist() == [3.0, 4.0, 5.0]
    assert any("CR only" in w for w in ds.warnings)
    ds = _load_bytes("t.csv", b"user,item\r1,a\r2,b\r", {"user": "user", "item": "item"})
    assert ds.interactions["item_id"].astype(str).tolist() == ["a", "b"]


@pytest.mark.parametrize("times, seconds, words", [
    # 1.6e12 ms = 1.6e9 s (2020-09-13): divided by 1,000, the order kept
    (["1600000000000", "1600000001500", "1600000003000"], [1600000000, 1600000001, 1600000003],
     "look like milliseconds"),
    (["1600000000000000", "1600000002000000", "1600000001000000"],
     [1600000000, 1600000002, 1600000001], "look like microseconds"),
    (["1600000000000000000", "1600000000000000001", "1600000009000000000"],
     [1600000000, 1600000000, 1600000009], "look like nanoseconds"),
    (["-86400", "0", "86400"], [-86400, 0, 86400], "1 time(s) before 1970"),
    # 7258118400 = 2200-01-01: kept, with a warning
    (["100", "7258118400", "200"], [100, 7258118400, 200], "1 time(s) more than a year in the "
                                                           "future (the latest 2200-01-01)"),
])
def test_odd_times_are_kept_or_rescaled_with_a_warning(times, seconds, words) -> None:
    rows = "".join(f"{u},{i},3,{t}\n" for (u, i), t in zip(((1, "a"), (2, "b"), (3, "a")), times))
    ds = _load_bytes("t.csv", (HEADER + rows).encode(), M_RATED)
    assert ds.interactions["timestamp"].tolist() == seconds
    assert any(words in w for w in ds.warnings), ds.warnings


def test_dates_past_2262_are_whole_seconds_with_a_warning() -> None:
    # 3000-01-01T00:00:00Z = 32503680000 s; 2020-01-01 = 1577836800 s
    rows = "1,a,3,2020-01-01\n2,b,4,3000-01-01\n"
    ds = _load_bytes("t.csv", (HEADER + rows).encode(), M_RATED)
    assert ds.interactions["timestamp"].tolist() == [1577836800, 32503680000]
    assert any("future (the latest 3000-01-01)" in w for w in ds.warnings)


def test_utf8_titles_keep_their_accents_latin1_still_read() -> None:
    item = f"1|Amélie (2001)|x||u|{GENRE_FLAGS}\n2|Café (1995)|x||u|{GENRE_FLAGS}\n"
    udata = b"1\t1\t3\t4\n2\t2\t4\t5\n"
    for encoding in ("utf-8", "latin-1"):
        ds = dio.load([("u.data", udata), ("u.item", item.encode(encoding))])
        assert ds.items["title"].tolist() == ["Amélie (2001)", "Café (1995)"], encoding
        assert ds.items["genres"].tolist() == [["Western"], ["Western"]]


def test_an_infinite_attribute_stays_text() -> None:
    data = b"user,item,score\n1,a,1.5\n2,b,inf\n3,a,2\n"
    ds = _load_bytes("t.csv", data, {"user": "user", "item": "item", "user_attributes": ["score"]})
    assert ds.users["score"].tolist() == ["1.5", "inf", "2"]
    json.dumps(ds.summary(), allow_nan=False)  # the summary is JSON (no Infinity)
