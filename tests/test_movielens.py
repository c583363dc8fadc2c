"""dssm_core.movielens: every input layout, every source kind, every bad input.

Expected values are worked out by hand from the tiny fixtures in tests/fixtures/ (which mirror
the real GroupLens layouts: separators, header or not, encodings, column order). Real-file
tests use ../shared/data and skip when it is absent.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dssm_core import movielens
from dssm_core.movielens import ColumnMapping, DataValidationError, load, peek_columns, sniff

FIX = Path(__file__).resolve().parent / "fixtures"


def _zip_folder(folder: Path, out: Path, top: str | None = None, extra: dict | None = None
                ) -> Path:
    """Zip ``folder`` the GroupLens way: every file under one top folder."""
    top = top or folder.name
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", "")
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{top}/{p.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _row(df: pd.DataFrame, key: str, value: str) -> dict:
    hit = df[df[key] == value]
    assert len(hit) == 1, f"{key}={value}: {len(hit)} rows"
    return hit.iloc[0].to_dict()


def _latest(tmp_path: Path, ratings: bytes, name: str = "ratings.csv") -> Path:
    d = tmp_path / "ml-latest-small"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(ratings)
    return d


# ---------------------------------------------------------------- formats


def test_ml100k_fixture_folder() -> None:
    ds = load(FIX / "ml-100k")
    assert ds.format == "ml-100k" and ds.name == "ml-100k"
    assert ds.summary() == {
        "format": "ml-100k", "n_users": 4, "n_items": 5, "n_items_without_interactions": 0,
        "n_interactions": 9,
        "user_columns": ["gender", "age", "occupation", "zip"],
        "item_columns": ["title", "genres", "year"],
        "rating_scale": [1.0, 5.0], "time_span": [874965758, 891350062],
    }
    assert ds.rating_scale == (1.0, 5.0) and ds.warnings == []
    inter = ds.interactions
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter["rating"].dtype == np.float32 and inter["timestamp"].dtype == np.int64
    assert inter.iloc[3].tolist() == ["2", "3", 2.0, 888551003]
    assert _row(ds.users, "user_id", "2") == {
        "user_id": "2", "gender": "F", "age": 53, "occupation": "other", "zip": "94043"}
    les = _row(ds.items, "item_id", "3")
    assert les["title"] == "Misérables, Les (1995)"  # latin-1 0xE9 decoded
    assert les["genres"] == ["Drama", "Musical"] and les["year"] == 1995
    unknown = _row(ds.items, "item_id", "5")
    assert unknown["title"] == "unknown" and unknown["genres"] == ["unknown"]
    assert pd.isna(unknown["year"])
    assert _row(ds.items, "item_id", "1")["genres"] == ["Animation", "Children's", "Comedy"]


def test_ml100k_without_u_genre_uses_the_19_fixed_names(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    shutil.copytree(FIX / "ml-100k", d)
    (d / "u.genre").unlink()
    ds = load(d)
    assert _row(ds.items, "item_id", "2")["genres"] == ["Action", "Adventure", "Thriller"]
    assert len(movielens.ML100K_GENRES) == 19


def test_ml100k_genre_names_come_from_u_genre(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    shutil.copytree(FIX / "ml-100k", d)
    names = [f"g{i}" for i in range(19)]
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(names)))
    ds = load(d)
    # item 2 flags Action(1), Adventure(2), Thriller(16)
    assert _row(ds.items, "item_id", "2")["genres"] == ["g1", "g2", "g16"]


def test_ml100k_zip_grouplens_layout(tmp_path: Path) -> None:
    z = _zip_folder(FIX / "ml-100k", tmp_path / "ml-100k.zip",
                    extra={"__MACOSX/ml-100k/._u.data": b"\x00\x05junk"})
    before = sorted(tmp_path.iterdir())
    ds = load(z)
    assert sorted(tmp_path.iterdir()) == before  # read in memory, nothing extracted
    assert ds.format == "ml-100k" and ds.name == "ml-100k"
    assert ds.summary()["n_interactions"] == 9
    assert _row(ds.items, "item_id", "3")["title"] == "Misérables, Les (1995)"


def test_small_table_errors_name_the_file_line_after_blank_lines(tmp_path: Path) -> None:
    # u.user / users.dat are read line by line with blank lines skipped: the error must
    # still name the line of the file (5), not the count of rows read (4)
    d = tmp_path / "ml-100k"
    shutil.copytree(FIX / "ml-100k", d)
    (d / "u.user").write_text("1|24|M|technician|85711\n\n2|53|F|other|94043\n"
                              "3|23|M|writer|32067\n4|old|M|writer|32067\n")
    with pytest.raises(DataValidationError) as ei:
        load(d)
    assert (ei.value.line, ei.value.column) == (5, "age")
    d1 = tmp_path / "ml-1m"
    shutil.copytree(FIX / "ml-1m", d1)
    (d1 / "users.dat").write_text("1::F::1::10::48067\n\n2::M::x::16::70072\n")
    with pytest.raises(DataValidationError) as ei:
        load(d1)
    assert (ei.value.line, ei.value.column) == (3, "age")


def test_ml1m_codes_kept_and_labels_added() -> None:
    ds = load(FIX / "ml-1m")
    assert ds.format == "ml-1m" and ds.rating_scale == (1.0, 5.0)
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (3, 3, 6)
    assert s["user_columns"] == ["gender", "age", "occupation", "zip", "age_label",
                                 "occupation_label"]
    assert _row(ds.users, "user_id", "1") == {
        "user_id": "1", "gender": "F", "age": 1, "occupation": 10, "zip": "48067",
        "age_label": "Under 18", "occupation_label": "K-12 student"}
    assert _row(ds.users, "user_id", "2")["age_label"] == "56+"
    assert _row(ds.users, "user_id", "3")["occupation_label"] == "scientist"
    # movies.dat lists a film nobody rated: it stays (cold-start item), latin-1 decoded
    assert len(ds.items) == 4
    assert _row(ds.items, "item_id", "2000")["title"] == "Misérables, Les (1998)"
    assert _row(ds.items, "item_id", "661")["genres"] == ["Animation", "Children's", "Musical"]
    assert _row(ds.items, "item_id", "3068")["year"] == 1982


def test_ml1m_label_tables_match_the_readme() -> None:
    assert movielens.ML1M_AGE_LABELS == {1: "Under 18", 18: "18-24", 25: "25-34",
                                         35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
    assert len(movielens.ML1M_OCCUPATION_LABELS) == 21
    assert movielens.ML1M_OCCUPATION_LABELS[12] == "programmer"
    assert movielens.ML1M_OCCUPATION_LABELS[20] == "writer"


def test_ml10m_half_stars_no_users(tmp_path: Path) -> None:
    ds = load(FIX / "ml-10M100K")
    assert ds.format == "ml-10m" and ds.rating_scale == (0.5, 5.0)
    assert ds.users.columns.tolist() == ["user_id"] and len(ds.users) == 3
    assert sorted(ds.interactions["rating"].tolist()) == [0.5, 3.0, 3.5, 4.5, 5.0]
    assert _row(ds.items, "item_id", "292")["genres"] == ["Action", "Drama", "Sci-Fi",
                                                          "Thriller"]
    z = _zip_folder(FIX / "ml-10M100K", tmp_path / "ml-10m.zip")
    assert load(z).summary() == ds.summary()


def test_ml_latest_small() -> None:
    ds = load(FIX / "ml-latest-small")
    assert ds.format == "ml-latest" and ds.rating_scale == (0.5, 5.0)
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (3, 5, 7)
    assert s["user_columns"] == [] and s["rating_scale"] == [0.5, 5.0]
    assert _row(ds.items, "item_id", "318")["title"] == "Shawshank Redemption, The (1994)"
    amelie = _row(ds.items, "item_id", "4973")
    assert amelie["title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert amelie["year"] == 2001 and amelie["genres"] == ["Comedy", "Romance"]
    bm = _row(ds.items, "item_id", "176601")
    assert bm["genres"] == [] and pd.isna(bm["year"])
    assert len(ds.items) == 6
    r = ds.interactions
    assert r[(r.user_id == "2") & (r.item_id == "1")]["rating"].tolist() == [2.5]


def test_ml_latest_zip_and_upload_object(tmp_path: Path) -> None:
    z = _zip_folder(FIX / "ml-latest-small", tmp_path / "ml-latest-small.zip")

    class Upload:  # what Streamlit's UploadedFile offers
        name = "ml-latest-small.zip"

        def getvalue(self) -> bytes:
            return z.read_bytes()

    ds = load(Upload())
    assert ds.format == "ml-latest" and ds.summary()["n_interactions"] == 7
    assert ds.name == "ml-latest-small"


def test_article_merged_csv() -> None:
    ds = load(FIX / "article.csv")
    assert ds.format == "article" and ds.name == "article"
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (3, 3, 6)
    assert _row(ds.items, "item_id", "2355") == {
        "item_id": "2355", "title": "Bug's Life, A (1998)",
        "genres": ["Animation", "Children's", "Comedy"], "year": 1998}
    u = _row(ds.users, "user_id", "2")
    assert (u["gender"], u["age"], u["occupation"], u["zip"]) == ("M", 56, 16, "70072")
    assert (u["age_label"], u["occupation_label"]) == ("56+", "self-employed")


def test_generic_with_user_and_item_tables() -> None:
    mp = ColumnMapping(user="customer", item="product", rating="stars", timestamp="when",
                       title="name", genres="category", users_file="customers.csv",
                       items_file="products.csv", interactions_file="events.csv",
                       rating_scale=(1, 5))
    ds = load(FIX / "generic", mapping=mp)
    assert ds.format == "generic" and ds.rating_scale == (1.0, 5.0)
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (3, 3, 5)
    assert s["user_columns"] == ["segment", "region"]
    assert s["item_columns"] == ["title", "genres", "year", "price"]
    # 2024-01-05T10:00:00Z = 19727 days * 86400 + 10 h; a bare date is midnight UTC
    assert ds.interactions["timestamp"].tolist()[:3] == [1704448800, 1704540600, 1704585600]
    assert _row(ds.users, "user_id", "c1") == {"user_id": "c1", "segment": "gold",
                                               "region": "north"}
    # c3 rated but has no row in customers.csv: filled, with a warning
    assert _row(ds.users, "user_id", "c3") == {"user_id": "c3", "segment": "unknown",
                                               "region": "unknown"}
    assert any("no row in the users table" in w for w in ds.warnings)
    mug = _row(ds.items, "item_id", "p1")
    assert (mug["title"], mug["genres"], mug["year"], mug["price"]) == (
        "Blue Mug (2019)", ["kitchen", "gifts"], 2019, 9.5)
    assert len(ds.items) == 4  # the unsold chair stays
    assert ds.items["price"].dtype == np.float64


def test_generic_implicit_without_timestamp() -> None:
    ds = load(FIX / "generic" / "clicks.tsv", mapping=ColumnMapping(user="visitor", item="page"))
    assert ds.implicit and ds.rating_scale is None
    assert ds.summary()["rating_scale"] is None  # no scale to report for implicit feedback
    assert ds.interactions["rating"].tolist() == [1.0] * 5
    assert ds.interactions["timestamp"].tolist() == [0, 1, 2, 3, 4]
    assert any("row order" in w for w in ds.warnings)
    assert ds.interactions[["user_id", "item_id"]].values.tolist() == [
        ["v1", "a"], ["v1", "b"], ["v2", "a"], ["v3", "c"], ["v3", "a"]]


def test_generic_attributes_from_the_interactions_file() -> None:
    data = (b"uid;sku;score;ts;gender;color\n"
            b"u1;s1;4;100;F;red\nu1;s2;2;200;F;blue\nu2;s1;5;300;M;red\n")
    mp = ColumnMapping(user="uid", item="sku", rating="score", timestamp="ts",
                       user_attributes=("gender",), item_attributes=("color",))
    ds = load(("shop.csv", data), mapping=mp)
    assert ds.users.to_dict("list") == {"user_id": ["u1", "u2"], "gender": ["F", "M"]}
    assert ds.items[["item_id", "color"]].to_dict("list") == {"item_id": ["s1", "s2"],
                                                              "color": ["red", "blue"]}
    assert ds.rating_scale == (2.0, 5.0)  # no declared scale: the data's range


def test_generic_parquet(tmp_path: Path) -> None:
    df = pd.DataFrame({"who": [10, 10, 11, 12], "what": ["x", "y", "x", "z"],
                       "r": [3.0, 4.0, 5.0, 1.0], "t": [5, 6, 7, 8]})
    p = tmp_path / "events.parquet"
    df.to_parquet(p)
    assert peek_columns(p) == ["who", "what", "r", "t"]
    ds = load(p, mapping=ColumnMapping(user="who", item="what", rating="r", timestamp="t"))
    assert ds.interactions.values.tolist() == [
        ["10", "x", 3.0, 5], ["10", "y", 4.0, 6], ["11", "x", 5.0, 7], ["12", "z", 1.0, 8]]
    assert sniff(p) == "generic"


def test_list_of_uploads_is_one_folder() -> None:
    files = [(p.name, p.read_bytes()) for p in sorted((FIX / "ml-1m").iterdir())]
    ds = load(files)
    assert ds.format == "ml-1m" and ds.summary()["n_interactions"] == 6
    g = FIX / "generic"
    mp = ColumnMapping(user="customer", item="product", users_file="customers.csv")
    ds = load([("events.csv", (g / "events.csv").read_bytes()),
               ("customers.csv", (g / "customers.csv").read_bytes())], mapping=mp)
    assert ds.summary()["user_columns"] == ["segment", "region"]


def test_sources_path_str_tuple_and_read_object() -> None:
    data = (FIX / "article.csv").read_bytes()

    class Reader:
        name = "article.csv"

        def read(self) -> bytes:
            return data

    a = load(str(FIX / "article.csv")).summary()
    assert load(("article.csv", data)).summary() == a
    assert load(Reader()).summary() == a
    assert load(("x.csv", data), name="Mine").name == "Mine"


@pytest.mark.parametrize("path,fmt", [
    ("ml-100k", "ml-100k"), ("ml-1m", "ml-1m"), ("ml-10M100K", "ml-10m"),
    ("ml-latest-small", "ml-latest"), ("article.csv", "article"),
    ("generic/clicks.tsv", "generic"),
])
def test_sniff(path: str, fmt: str) -> None:
    assert sniff(FIX / path) == fmt
    assert fmt in {f.name for f in movielens.FORMATS}


def test_formats_and_peek_columns() -> None:
    assert [f.name for f in movielens.FORMATS] == [
        "ml-100k", "ml-1m", "ml-10m", "ml-latest", "article", "generic"]
    assert all(f.label and f.files and f.notes for f in movielens.FORMATS)
    assert peek_columns(FIX / "generic" / "events.csv") == ["customer", "product", "stars",
                                                             "when"]
    assert peek_columns(FIX / "generic", file="products.csv") == ["product", "name",
                                                                 "category", "price"]
    assert peek_columns(("t.csv", b"a,b,c,,,\n1,2,3,,,\n")) == ["a", "b", "c"]
    with pytest.raises(DataValidationError, match="several files"):
        peek_columns(FIX / "generic")


def test_column_mapping_checks() -> None:
    with pytest.raises(ValueError, match="different columns"):
        ColumnMapping(user="a", item="a")
    with pytest.raises(ValueError, match="min < max"):
        ColumnMapping(user="a", item="b", rating_scale=(5, 1))
    with pytest.raises(ValueError, match="one character"):
        ColumnMapping(user="a", item="b", sep="::")
    with pytest.raises(ValueError, match="unknown encoding"):
        ColumnMapping(user="a", item="b", encoding="klingon")
    m = ColumnMapping.from_dict({"user": "a", "item": "b", "rating_scale": [1, 10],
                                 "user_attributes": ["g"]})
    assert m.rating_scale == (1.0, 10.0) and m.user_attributes == ("g",)
    assert m.to_dict()["rating_scale"] == [1.0, 10.0]
    assert ColumnMapping.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert len({m, ColumnMapping.from_dict(m.to_dict())}) == 1  # hashable, equal
    with pytest.raises(ValueError, match="unknown column mapping keys: itm"):
        ColumnMapping.from_dict({"user": "a", "itm": "b"})
    with pytest.raises(ValueError, match="needs 'item'"):
        ColumnMapping.from_dict({"user": "a"})
    # a column has one role: an id, rating or time column is never also an attribute or title
    with pytest.raises(ValueError, match="'a' is already the user id column; it cannot also "
                                         "be a user attribute"):
        ColumnMapping(user="a", item="b", user_attributes=("a",))
    with pytest.raises(ValueError, match="'t' is already the timestamp column"):
        ColumnMapping(user="a", item="b", timestamp="t", item_attributes=("t",))
    with pytest.raises(ValueError, match="'b' is already the item id column; it cannot also "
                                         "be the item title"):
        ColumnMapping(user="a", item="b", title="b")


def test_large_files_get_categorical_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from dssm_core.io import assemble

    monkeypatch.setattr(assemble, "CATEGORY_MIN_ROWS", 5)
    ds = load(FIX / "ml-100k")
    inter = ds.interactions
    assert isinstance(inter["user_id"].dtype, pd.CategoricalDtype)
    assert sorted(inter["user_id"].cat.categories) == ["1", "2", "3", "4"]
    assert inter["item_id"].astype(str).tolist()[:3] == ["1", "2", "1"]


@pytest.mark.parametrize("path", ["ml-100k", "ml-1m", "ml-10M100K", "ml-latest-small",
                                  "article.csv"])
def test_both_engines_give_the_same_dataset(path: str) -> None:
    a = load(FIX / path)
    b = load(FIX / path, engine="pyarrow")
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert movielens.ENGINES == ("auto", "pandas", "pyarrow")
    with pytest.raises(ValueError, match="engine"):
        load(FIX / path, engine="polars")


@pytest.mark.parametrize("ratings", [
    b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,abc,5\n",  # not a number
    b"userId,movieId,rating,timestamp\n1,2,3.0,4\n,3,4.0,5\n",  # missing id
    b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,4.0,5,6\n",  # extra field
    b"userId,movieId,rating,timestamp\n1,2,3.0,4\n\n1,3,7.0,5\n",  # off scale after a blank
    b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,4.0,5.5\n",  # fractional time
])
def test_both_engines_report_the_same_error(ratings: bytes, tmp_path: Path) -> None:
    d = _latest(tmp_path, ratings)
    a, b = _error(d), _error(d, engine="pyarrow")
    assert str(a) == str(b) and a.line in (3, 4)


def test_non_integer_ids_fall_back_to_text(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\nalice,1,4.0,10\nbob,tt01,3.5,11\n")
    ds = load(d)
    assert ds.interactions[["user_id", "item_id"]].values.tolist() == [["alice", "1"],
                                                                       ["bob", "tt01"]]


# ---------------------------------------------------------------- real files


def test_real_ml100k_folder_and_zip(ml100k_dir: Path, tmp_path: Path) -> None:
    ds = load(ml100k_dir)
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (943, 1682, 100_000)
    assert len(ds.users) == 943 and len(ds.items) == 1682
    assert ds.warnings == []
    assert _row(ds.items, "item_id", "1")["title"] == "Toy Story (1995)"
    z = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(ml100k_dir.iterdir()):
            zf.write(p, f"ml-100k/{p.name}")
    dz = load(z)
    assert dz.summary() == s
    pd.testing.assert_frame_equal(dz.interactions, ds.interactions)


def test_real_movielens_sample(shared_data: Path) -> None:
    path = shared_data / "movielens_sample.txt"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    users = {r["user_id"] for r in rows}
    items = {r["movie_id"] for r in rows}
    events = {tuple(r[k] for k in ("user_id", "movie_id", "rating", "timestamp")) for r in rows}
    ds = load(path)
    s = ds.summary()
    assert ds.format == "article"
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (len(users), len(items),
                                                                 len(events))
    assert s["time_span"] == [min(int(r["timestamp"]) for r in rows),
                              max(int(r["timestamp"]) for r in rows)]


# ---------------------------------------------------------------- validation


def _error(source, **kw) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        load(source, **kw)
    return info.value


def test_empty_file() -> None:
    e = _error(("ratings.csv", b""))
    assert e.file == "ratings.csv" and "empty file" in str(e) and "found 0 bytes" in str(e)
    e = _error(("events.csv", b"  \n\n"))
    assert "empty file" in str(e)


def test_header_only_file() -> None:
    e = _error(("ratings.csv", b"userId,movieId,rating,timestamp\n"))
    assert "no data rows" in str(e)


def test_binary_file() -> None:
    e = _error(("ratings.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"))
    # two line ends (\r\n, \n) come before the first NUL byte: line 3, character 1
    assert "binary file" in str(e) and (e.line, e.column) == (3, None)
    assert "found byte 0x00 at character 1" in str(e)


def test_gzip_and_utf16_files() -> None:
    assert "gzip" in str(_error(("ratings.csv", b"\x1f\x8b\x08\x00rest")))
    utf16 = "userId,movieId,rating,timestamp\n1,2,3,4\n".encode("utf-16")
    e = _error(("ratings.csv", utf16))
    assert "UTF-16" in str(e) and "expected UTF-8" in str(e)


def test_undecodable_utf8_names_line_and_character(tmp_path: Path) -> None:
    data = b"user,item\nu1,i1\nu2,caf\xe9\n"  # latin-1 e-acute in a UTF-8 file
    e = _error(("events.csv", data), mapping=ColumnMapping(user="user", item="item"))
    # "u2,caf" is 6 characters: the bad byte is the 7th of line 3
    assert e.line == 3 and "0xe9" in str(e) and "character 7" in str(e)
    assert "expected utf-8" in str(e)
    ds = load(("events.csv", data), mapping=ColumnMapping(user="user", item="item",
                                                          encoding="latin-1"))
    assert ds.interactions["item_id"].tolist() == ["i1", "café"]


def test_one_column_separator(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId;movieId;rating;timestamp\n1;2;3.0;4\n")
    e = _error(d)
    assert e.line == 1 and "one column" in str(e) and "','" in str(e)
    d2 = tmp_path / "ml-100k"
    d2.mkdir()
    (d2 / "u.data").write_bytes(b"1,2,3,881250949\n2,3,4,881250950\n")
    e = _error(d2)
    assert e.file.endswith("u.data") and e.line == 1 and "separator tab" in str(e)
    assert "expected 4 columns" in str(e)
    e = _error(("x.csv", b"abc\n1\n"), mapping=ColumnMapping(user="a", item="b"))
    assert "one column" in str(e) and e.line == 1


def test_missing_required_column(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,score,timestamp\n1,2,3.0,4\n")
    e = _error(d)
    assert e.column == "rating" and e.line == 1
    assert "missing required column 'rating'" in str(e)
    assert "found columns: userId, movieId, score, timestamp" in str(e)
    e = _error(FIX / "generic" / "events.csv",
               mapping=ColumnMapping(user="customer", item="sku"))
    assert e.column == "sku" and "customer, product, stars, when" in str(e)


def test_non_numeric_rating_first_bad_line(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,abc,5\n"
                          b"2,3,xyz,6\n")
    e = _error(d)
    assert (e.line, e.column) == (3, "rating")
    assert "expected a number, found 'abc'" in str(e)
    assert str(e).startswith(str(d / "ratings.csv") + ", line 3, column 'rating'")


def test_non_numeric_timestamp(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    shutil.copytree(FIX / "ml-1m", d)
    (d / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3::yesterday\n")
    e = _error(d)
    assert (e.line, e.column) == (2, "timestamp") and "found 'yesterday'" in str(e)
    e = _error(("e.csv", b"u,i,t\na,b,2024-01-01\nc,d,soon\n"),
               mapping=ColumnMapping(user="u", item="i", timestamp="t"))
    assert (e.line, e.column) == (3, "t") and "'soon'" in str(e)


def test_missing_ids(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n,3,4.0,5\n")
    e = _error(d)
    assert (e.line, e.column) == (3, "userId") and "missing value" in str(e)
    d2 = tmp_path / "ml-100k"
    d2.mkdir()
    (d2 / "u.data").write_bytes(b"1\t2\t3\t4\n2\t\t3\t5\n")
    e = _error(d2)
    assert (e.line, e.column) == (2, "item_id")


def test_rating_outside_declared_scale(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,6.0,5\n")
    e = _error(d)
    assert (e.line, e.column) == (3, "rating")
    assert "expected a rating from 0.5 to 5 in steps of 0.5, found 6.0" in str(e)
    d1 = tmp_path / "ml-1m"
    shutil.copytree(FIX / "ml-1m", d1)
    (d1 / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3.5::978300761\n")
    e = _error(d1)
    assert e.line == 2 and "from 1 to 5 in steps of 1, found 3.5" in str(e)
    e = _error(("e.csv", b"u,i,r\na,x,1\nb,y,11\n"),
               mapping=ColumnMapping(user="u", item="i", rating="r", rating_scale=(1, 10)))
    assert (e.line, e.column) == (3, "r") and "from 1 to 10, found 11" in str(e)


def test_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,4.0,5,9\n")
    e = _error(d)
    assert e.line == 3 and "expected 4 fields separated by ',', found 5" in str(e)


def test_zip_with_no_known_files() -> None:
    data = _zip_bytes({"stuff/README.md": b"hello", "stuff/photo.png": b"\x89PNG"})
    e = _error(("stuff.zip", data))
    assert e.file == "stuff.zip"
    assert "no known MovieLens files" in str(e) and "README.md" in str(e)


def test_empty_zip() -> None:
    e = _error(("empty.zip", _zip_bytes({})))
    assert "no files found" in str(e)


@pytest.mark.parametrize("bad", ["../evil/ratings.csv", "/etc/ratings.csv",
                                 "ml/../../ratings.csv", "C:/x/ratings.csv"])
def test_zip_entry_leaving_its_folder(bad: str, tmp_path: Path) -> None:
    data = _zip_bytes({"ml/ratings.csv": b"userId,movieId,rating,timestamp\n1,2,3,4\n",
                       bad: b"x"})
    e = _error(("ml.zip", data))
    assert "leaves the archive's folder" in str(e) and e.file == "ml.zip"


def test_zip_bomb_refused_before_extracting() -> None:
    zeros = b"0" * (8 << 20)  # 8 MiB that deflate packs ~1000-fold
    data = _zip_bytes({"ml/ratings.csv": zeros})
    assert len(data) < 100_000
    e = _error(("ml.zip", data))
    assert "zip bomb" in str(e) and "expand" in str(e)
    small = _zip_bytes({"ml/ratings.csv": b"userId,movieId,rating,timestamp\n" + b"1,2,3,4\n" * 50})
    e = _error(("ml.zip", small), max_unzipped_bytes=200)
    # 32-byte header + 50 lines of 8 bytes = 432
    assert "would expand to 432 bytes; the limit is 200 bytes" in str(e)


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    e = _error(FIX / "article.csv", max_bytes=100)
    assert "the limit is 100 bytes" in str(e) and e.file.endswith("article.csv")
    e = _error(("a.csv", b"x" * 101), max_bytes=100)
    assert "file is 101 bytes" in str(e)
    e = _error(FIX / "ml-100k", max_bytes=100)  # a folder's files are checked as read
    assert "the limit is 100 bytes" in str(e)


def test_fewer_than_two_users_or_items(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,4.0,5\n")
    e = _error(d)
    assert "at least 2 users and 2 items, found 1 user(s) and 2 item(s)" in str(e)
    d2 = _latest(tmp_path / "b", b"userId,movieId,rating,timestamp\n1,2,3.0,4\n2,2,4.0,5\n")
    assert "found 2 user(s) and 1 item(s)" in str(_error(d2))


def test_unknown_layout_needs_a_mapping() -> None:
    e = _error(FIX / "generic" / "events.csv")
    assert "give a column mapping" in str(e) and "customer, product, stars, when" in str(e)


def test_missing_path_and_wrong_type() -> None:
    assert "no such file" in str(_error("/nonexistent/ratings.csv"))
    assert "need a file name" in str(_error(b"1,2,3"))
    assert "cannot read a int" in str(_error(42))


def test_not_a_zip_named_zip() -> None:
    e = _error(("data.zip", b"userId,movieId\n"))
    assert "not a readable zip" in str(e)


# ---------------------------------------------------------------- tolerated, with a warning


def test_exact_duplicates_dropped(tmp_path: Path) -> None:
    d = _latest(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,2,3.0,4\n"
                          b"1,2,4.0,9\n2,3,4.0,5\n1,2,3.0,4\n")
    ds = load(d)
    # rows 2 and 5 repeat row 1 exactly; row 3 re-rates the same film later: kept
    assert ds.interactions.values.tolist() == [["1", "2", 3.0, 4], ["1", "2", 4.0, 9],
                                               ["2", "3", 4.0, 5]]
    assert "2 exact duplicate interaction(s) dropped" in ds.warnings


def test_spreadsheet_export_bom_crlf_trailing_columns(tmp_path: Path) -> None:
    text = ("userId,movieId,rating,timestamp,,,\r\n1,2,3.0,4,,,\r\n"
            "2,3,4.5,5,,,\r\n")
    d = _latest(tmp_path, b"\xef\xbb\xbf" + text.encode())
    ds = load(d)
    assert ds.interactions.values.tolist() == [["1", "2", 3.0, 4], ["2", "3", 4.5, 5]]
    w = " | ".join(ds.warnings)
    assert "byte order mark" in w and "CRLF" in w and "3 trailing empty column(s)" in w
    # each said once, though sniffing also read the file; the 4th: no movies.csv
    assert len(ds.warnings) == 4 and ds.warnings[3].startswith("File movies.csv not found")


def test_headerless_trailing_tabs_and_blank_lines(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_bytes(b"1\t2\t3\t4\t\t\n\n2\t3\t4\t5\t\t\n")
    ds = load(d)
    assert ds.interactions.values.tolist() == [["1", "2", 3.0, 4], ["2", "3", 4.0, 5]]
    assert any("2 trailing empty column(s)" in w for w in ds.warnings)
    assert any("u.user not found" in w for w in ds.warnings)
    assert ds.items[["item_id", "title", "genres"]].to_dict("list") == {
        "item_id": ["2", "3"], "title": ["", ""], "genres": [[], []]}
    assert ds.items["year"].isna().all() and str(ds.items["year"].dtype) == "Int64"


def test_users_missing_from_user_table_are_filled(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    shutil.copytree(FIX / "ml-100k", d)
    with (d / "u.data").open("ab") as fh:
        fh.write(b"9\t1\t4\t893000000\n")
    ds = load(d)
    assert _row(ds.users, "user_id", "9") == {"user_id": "9", "gender": "unknown",
                                              "age": pytest.approx(np.nan, nan_ok=True),
                                              "occupation": "unknown", "zip": "unknown"}
    assert "1 users in the interactions have no row in the users table" in ds.warnings[0]


def test_generic_numeric_timestamps_and_bad_one(tmp_path: Path) -> None:
    mp = ColumnMapping(user="u", item="i", timestamp="t")
    ds = load(("e.csv", b"u,i,t\na,x,100\nb,y,250.6\n"), mapping=mp)
    assert ds.interactions["timestamp"].tolist() == [100, 251]  # rounded to whole seconds
    e = _error(("e.csv", b"u,i,t\na,x,100\n\nb,y,later\n"), mapping=mp)
    assert (e.line, e.column) == (4, "t") and "found 'later'" in str(e)


def test_generic_side_tables_with_their_own_key_names() -> None:
    events = b"uid\tsku\nu1\ts1\nu2\ts2\nu2\ts1\n"
    people = b"id,age,zip\nu1,31,02134\nu2,45,94043\n"
    goods = b"code;label;tags\ns1;Kettle;kitchen/home\ns2;Lamp (2020);home\n"
    mp = ColumnMapping(user="uid", item="sku", users_file="people.csv", users_key="id",
                       items_file="goods.csv", items_key="code", title="label", genres="tags",
                       genre_sep="/", interactions_file="events.tsv")
    ds = load([("events.tsv", events), ("people.csv", people), ("goods.csv", goods)],
              mapping=mp)
    # numbers become numeric, but zip codes with a leading zero stay text
    assert ds.users.to_dict("list") == {"user_id": ["u1", "u2"], "age": [31, 45],
                                        "zip": ["02134", "94043"]}
    assert ds.items[["item_id", "title", "genres", "year"]].values.tolist() == [
        ["s1", "Kettle", ["kitchen", "home"], pd.NA], ["s2", "Lamp (2020)", ["home"], 2020]]
    e = _error([("events.tsv", events), ("people.csv", people)],
               mapping=ColumnMapping(user="uid", item="sku", users_file="people.csv"))
    assert "missing required column 'uid'; found columns: id, age, zip" in str(e)


@pytest.mark.parametrize("engine", ["auto", "pyarrow"])
def test_diagnosis_across_batches(engine: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dssm_core.io import diagnose

    monkeypatch.setattr(diagnose, "_DIAGNOSE_BATCH", 4)
    good = [f"{u},{i},3.5,{100 + u}" for u in range(1, 6) for i in (1, 2)]  # lines 2-11
    lines = ["userId,movieId,rating,timestamp", *good[:5], "", *good[5:],
             "7,1,4.0,1_000x", "8,1,9.5,5"]
    d = _latest(tmp_path, ("\n".join(lines) + "\n").encode())
    e = _error(d, engine=engine)
    # header (1) + 5 rows + blank line (7) + 5 rows: the bad timestamp is on line 13
    assert (e.line, e.column) == (13, "timestamp") and "found '1_000x'" in str(e)


@pytest.mark.parametrize("fixture,mapping", [
    ("ml-100k", None), ("ml-1m", None), ("ml-10M100K", None), ("ml-latest-small", None),
    ("article.csv", None),
    ("generic", ColumnMapping(user="customer", item="product", rating="stars",
                              timestamp="when", interactions_file="events.csv",
                              users_file="customers.csv", items_file="products.csv",
                              title="name", genres="category")),
])
def test_every_format_inside_a_grouplens_style_zip(fixture: str, mapping, tmp_path: Path
                                                   ) -> None:
    path = FIX / fixture
    plain = load(path, mapping=mapping)
    if path.is_dir():
        z = _zip_folder(path, tmp_path / f"{fixture}.zip")
    else:
        z = tmp_path / "merged.zip"
        with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(path, f"merged/{path.name}")
    zipped = load(z, mapping=mapping)
    assert zipped.format == plain.format
    assert zipped.summary() == plain.summary()
    pd.testing.assert_frame_equal(zipped.interactions, plain.interactions)
    pd.testing.assert_frame_equal(zipped.items, plain.items)
    assert sniff(z) == (plain.format if mapping is None else "generic")


_BAD_TABLES = {
    "bad rating after blank lines, CRLF": (
        "ratings.csv", b"userId,movieId,rating,timestamp\r\n1,2,3.0,4\r\n\r\n\r\n1,3,x,5\r\n"),
    "off-scale then a short row": (
        "ratings.csv", b"userId,movieId,rating,timestamp\n1,2,3.0,4\n\n2,3,5.5,6\n2,4\n"),
    "short row first": (
        "ratings.csv", b"userId,movieId,rating,timestamp\n1,2,3.0,4\n2,4\n2,3,5.5,6\n"),
    "missing id": ("ratings.csv", b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1, ,3.0,4\n"),
    "fractional time": ("ratings.csv", b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,3,4.5\n"),
    "u.data nan rating": ("u.data", b"1\t2\t3\t4\n\n1\t3\tnan\t5\n"),
    "dat extra field": ("ratings.dat", b"1::2::3::4\n1::3::4::5::6\n"),
}


@pytest.mark.parametrize("case", sorted(_BAD_TABLES))
def test_fast_and_streaming_diagnosis_agree(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _BAD_TABLES[case]
    from dssm_core.io import diagnose

    real = diagnose._diagnose_unquoted
    calls = []

    def spy(t):
        calls.append(t.display)
        return real(t)

    # a 1-row look-ahead, so the whole-file vectorised path has to find the problem
    monkeypatch.setattr(diagnose, "_DIAGNOSE_BATCH", 1)
    monkeypatch.setattr(diagnose, "_diagnose_unquoted", spy)
    fast = _error(source)
    assert calls, "the vectorised diagnosis did not run"

    def unavailable(t):
        raise ImportError("forced: take the streaming path")

    monkeypatch.setattr(diagnose, "_diagnose_unquoted", unavailable)
    monkeypatch.setattr(diagnose, "_DIAGNOSE_BATCH", 1 << 16)
    slow = _error(source)
    assert str(fast) == str(slow)
    assert (fast.line, fast.column) == _BAD_WHERE[case]


# worked out by hand: header = line 1, blank lines count, the first problem wins
_BAD_WHERE = {
    "bad rating after blank lines, CRLF": (5, "rating"),
    "off-scale then a short row": (4, "rating"),
    "short row first": (3, None),
    "missing id": (3, "movieId"),
    "fractional time": (3, "timestamp"),
    "u.data nan rating": (3, "rating"),
    "dat extra field": (2, None),
}


def test_open_source_resolves_an_upload_once_for_sniff_peek_and_load() -> None:
    from dssm_core import io as dio

    class Upload:  # like Streamlit's UploadedFile; counts how often its bytes are taken
        name = "events.csv"
        calls = 0

        def getvalue(self) -> bytes:
            Upload.calls += 1
            return b"customer,sku,stars\nc1,s1,4\nc2,s2,5\nc1,s2,3\n"

    src = dio.open_source(Upload())
    assert dio.sniff(src) == "generic"
    assert dio.peek_columns(src) == ["customer", "sku", "stars"]
    ds = dio.load(src, mapping=dio.ColumnMapping(user="customer", item="sku", rating="stars"))
    assert ds.interactions["rating"].tolist() == [4.0, 5.0, 3.0]
    assert Upload.calls == 1
