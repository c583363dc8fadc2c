"""Formats: the MovieLens layouts (ML-100K, ML-1M, ML-10M, ml-latest) and the article's CSV."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..dataset import DataValidationError
from .assemble import _year
from .diagnose import _decode
from .sources import _Entry, _Source
from .tables import _Scale, _delimited, _first_line, _prepare, _split_header


ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)


#: ML-1M README: age codes and occupation codes with their readable labels.
ML1M_AGE_LABELS = {
    1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+",
}


ML1M_OCCUPATION_LABELS = {
    0: "other or not specified", 1: "academic/educator", 2: "artist", 3: "clerical/admin",
    4: "college/grad student", 5: "customer service", 6: "doctor/health care",
    7: "executive/managerial", 8: "farmer", 9: "homemaker", 10: "K-12 student", 11: "lawyer",
    12: "programmer", 13: "retired", 14: "sales/marketing", 15: "scientist",
    16: "self-employed", 17: "technician/engineer", 18: "tradesman/craftsman",
    19: "unemployed", 20: "writer",
}


ARTICLE_COLUMNS = (
    "user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age",
    "occupation", "zip",
)


@dataclass(frozen=True)
class FormatInfo:
    """One input layout ``load`` understands (for the app's help text and format picker)."""

    name: str
    label: str
    files: str
    notes: str


FORMATS: tuple[FormatInfo, ...] = (
    FormatInfo("ml-100k", "MovieLens 100K", "u.data, u.user, u.item (u.genre)",
               "tab-separated ratings; pipe-separated users and items, latin-1 or UTF-8; "
               "19 genre flags"),
    FormatInfo("ml-1m", "MovieLens 1M", "ratings.dat, users.dat, movies.dat",
               "'::'-separated; age and occupation codes kept, readable labels added"),
    FormatInfo("ml-10m", "MovieLens 10M", "ratings.dat, movies.dat",
               "'::'-separated, half-star ratings, no user attributes"),
    FormatInfo("ml-latest", "MovieLens latest / latest-small / 20M / 25M",
               "ratings.csv, movies.csv",
               "CSV with header, half-star ratings, '|'-separated genres, no user attributes"),
    FormatInfo("article", "Merged CSV of the DSSM article",
               "one .csv/.txt: " + ",".join(ARTICLE_COLUMNS),
               "one row per rating with the movie's and the user's attributes"),
    FormatInfo("generic", "Any CSV, TSV or Parquet with a column mapping",
               "interactions file (+ optional user and item tables)",
               "name the user and item columns; no rating column = implicit feedback"),
)


def _genre_list(s: str, sep: str = "|") -> list[str]:
    if not s or s == "(no genres listed)":
        return []
    return [g.strip() for g in s.split(sep) if g.strip()]


def _items_frame(ids: Sequence[str], titles: Sequence[str], genres: Sequence[list[str]],
                 extra: dict[str, Any] | None = None) -> pd.DataFrame:
    titles = [str(t).strip() for t in titles]
    df = pd.DataFrame({
        "item_id": [str(i).strip() for i in ids],
        "title": titles,
        "genres": list(genres),
        "year": pd.array([_year(t) for t in titles], dtype="Int64"),
    })
    for k, v in (extra or {}).items():
        df[k] = v
    return df


def _split_rows(entry: _Entry, warnings: list[str], sep: str, n_fields: int | None,
                names: Sequence[str], encodings: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Split a small ``sep``-separated file (ML-100K u.user/u.item/u.genre with '|', ML-1M
    users.dat/movies.dat with '::') into ``(line number, fields)`` pairs, blank lines skipped.

    The text is decoded with the first of ``encodings`` that fits. Line numbers are 1-based
    lines of the file (not row counts), so callers' errors point at the right line.
    """
    data = _prepare(entry.read(), entry.display, warnings)
    text = None
    for enc in encodings:
        try:
            text = data.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        text = _decode(data, encodings[-1], entry.display)
    rows: list[tuple[int, list[str]]] = []
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split(sep)
        if n_fields is not None and len(parts) != n_fields:
            if len(parts) < 2:
                raise DataValidationError(
                    f"found one column with separator '{sep}': expected {n_fields} fields "
                    f"({sep.join(names[:6])}{'...' if len(names) > 6 else ''}), "
                    f"found '{line[:60]}'",
                    file=entry.display, line=i,
                )
            raise DataValidationError(
                f"expected {n_fields} fields separated by '{sep}' "
                f"({sep.join(names[:6])}{'...' if len(names) > 6 else ''}), found {len(parts)}",
                file=entry.display, line=i,
            )
        if not parts[0].strip():
            raise DataValidationError("missing value: expected an id, found an empty field",
                                      file=entry.display, line=i, column=names[0])
        rows.append((i, parts))
    return rows


#: GroupLens' files are latin-1 (ML-100K) or mostly so; a file re-saved as UTF-8 is read as
#: UTF-8 (tried first: latin-1 text with accents is almost never valid UTF-8), so titles keep
#: their accents instead of turning into mojibake.
_TEXT_ENCODINGS = ("utf-8", "latin-1")
_RATING_KINDS = {"user_id": "intid", "item_id": "intid", "rating": "rating", "timestamp": "int"}


_WHOLE_STARS = _Scale(1.0, 5.0, 1.0)


_HALF_STARS = _Scale(0.5, 5.0, 0.5)


def _load_ml100k(src: _Source, warnings: list[str], engine: str) -> dict[str, Any]:
    udata = src.find("u.data")
    assert udata is not None
    inter = _delimited(udata, warnings, sep="\t", header=False,
                       names=("user_id", "item_id", "rating", "timestamp"),
                       kinds=_RATING_KINDS, quoting=False, scale=_WHOLE_STARS, engine=engine)
    users = items = None
    uuser = src.find("u.user")
    if uuser is not None:
        names = ("user_id", "age", "gender", "occupation", "zip")
        numbered = _split_rows(uuser, warnings, "|", 5, names, _TEXT_ENCODINGS)
        rows = [r for _, r in numbered]
        ages = []
        for line, r in numbered:
            try:
                ages.append(int(r[1]))
            except ValueError:
                raise DataValidationError(
                    f"not an integer: expected an age in years, found '{r[1]}'",
                    file=uuser.display, line=line, column="age",
                ) from None
        users = pd.DataFrame({
            "user_id": [r[0].strip() for r in rows],
            "gender": [r[2] for r in rows],
            "age": np.array(ages, dtype=np.int64),
            "occupation": [r[3] for r in rows],
            "zip": [r[4] for r in rows],
        })
    else:
        warnings.append("File u.user not found: users have no attributes")
    genre_names: list[str] = list(ML100K_GENRES)
    ugenre = src.find("u.genre")
    if ugenre is not None:
        pairs = _split_rows(ugenre, warnings, "|", 2, ("genre", "index"), _TEXT_ENCODINGS)
        by_index: dict[int, str] = {}
        for line, (g, idx) in pairs:
            try:
                by_index[int(idx)] = g
            except ValueError:
                raise DataValidationError(
                    f"expected a genre index (integer), found '{idx}'",
                    file=ugenre.display, line=line, column="index",
                ) from None
        if sorted(by_index) != list(range(len(by_index))):
            raise DataValidationError(
                f"genre indexes must run 0..{len(by_index) - 1}, found {sorted(by_index)}",
                file=ugenre.display,
            )
        genre_names = [by_index[i] for i in range(len(by_index))]
    uitem = src.find("u.item")
    if uitem is not None:
        n = 5 + len(genre_names)
        names = ("item_id", "title", "release_date", "video_release_date", "imdb_url",
                 *genre_names)
        numbered = _split_rows(uitem, warnings, "|", n, names, _TEXT_ENCODINGS)
        rows = [r for _, r in numbered]
        genres = []
        for line, r in numbered:
            flags = r[5:]
            bad = [f for f in flags if f.strip() not in ("0", "1")]
            if bad:
                col = genre_names[flags.index(bad[0])]
                raise DataValidationError(f"expected a genre flag 0 or 1, found '{bad[0]}'",
                                          file=uitem.display, line=line, column=col)
            genres.append([g for g, f in zip(genre_names, flags) if f.strip() == "1"])
        items = _items_frame([r[0] for r in rows], [r[1] for r in rows], genres)
    else:
        warnings.append("File u.item not found: items have no titles or genres")
    return {"interactions": inter, "users": users, "items": items, "scale": (1.0, 5.0)}


def _ml1m_user_frame(numbered: list[tuple[int, list[str]]], display: str) -> pd.DataFrame:
    """users.dat rows (with their line numbers) as the canonical users table."""
    rows = [r for _, r in numbered]
    ages: list[int] = []
    occs: list[int] = []
    for line, r in numbered:
        for value, col, out in ((r[2], "age", ages), (r[3], "occupation", occs)):
            try:
                out.append(int(value))
            except ValueError:
                raise DataValidationError(
                    f"not an integer: expected an ML-1M {col} code, found '{value}'",
                    file=display, line=line, column=col,
                ) from None
    return pd.DataFrame({
        "user_id": [r[0].strip() for r in rows],
        "gender": [r[1] for r in rows],
        "age": np.array(ages, dtype=np.int64),
        "occupation": np.array(occs, dtype=np.int64),
        "zip": [r[4].strip() for r in rows],
        "age_label": [ML1M_AGE_LABELS.get(a, "unknown") for a in ages],
        "occupation_label": [ML1M_OCCUPATION_LABELS.get(o, "unknown") for o in occs],
    })


def _load_dat(src: _Source, warnings: list[str], engine: str) -> dict[str, Any]:
    ratings = src.find("ratings.dat")
    assert ratings is not None
    users_e = src.find("users.dat")
    is_1m = users_e is not None
    inter = _delimited(ratings, warnings, sep="::", header=False,
                       names=("user_id", "item_id", "rating", "timestamp"), kinds=_RATING_KINDS,
                       quoting=False, scale=_WHOLE_STARS if is_1m else _HALF_STARS,
                       engine=engine)
    users = items = None
    if users_e is not None:
        numbered = _split_rows(users_e, warnings, "::", 5,
                               ("UserID", "Gender", "Age", "Occupation", "Zip-code"),
                               _TEXT_ENCODINGS)
        users = _ml1m_user_frame(numbered, users_e.display)
    movies = src.find("movies.dat")
    if movies is not None:
        rows = [r for _, r in _split_rows(movies, warnings, "::", 3,
                                          ("MovieID", "Title", "Genres"), _TEXT_ENCODINGS)]
        items = _items_frame([r[0] for r in rows], [r[1] for r in rows],
                             [_genre_list(r[2]) for r in rows])
    else:
        warnings.append("File movies.dat not found: items have no titles or genres")
    return {"interactions": inter, "users": users, "items": items,
            "scale": (1.0, 5.0) if is_1m else (0.5, 5.0),
            "format": "ml-1m" if is_1m else "ml-10m"}


def _load_latest(src: _Source, warnings: list[str], engine: str) -> dict[str, Any]:
    ratings = src.find("ratings.csv")
    assert ratings is not None
    df = _delimited(ratings, warnings, sep=",", header=True, names=None,
                    kinds={"userId": "intid", "movieId": "intid", "rating": "rating",
                           "timestamp": "int"},
                    required=("userId", "movieId", "rating", "timestamp"),
                    scale=_HALF_STARS, engine=engine)
    inter = df  # renamed in place: no copy of a large frame
    inter.columns = ["user_id" if c == "userId" else "item_id" if c == "movieId" else c
                     for c in inter.columns]
    items = None
    movies = src.find("movies.csv")
    if movies is not None:
        m = _delimited(movies, warnings, sep=",", header=True, names=None,
                       kinds={"movieId": "id", "title": "str", "genres": "str"},
                       required=("movieId", "title", "genres"), engine="pandas")
        items = _items_frame(m["movieId"].astype(str).tolist(), m["title"].tolist(),
                             [_genre_list(g) for g in m["genres"]])
    else:
        warnings.append("File movies.csv not found: items have no titles or genres")
    return {"interactions": inter, "users": None, "items": items, "scale": (0.5, 5.0)}


def _load_article(entry: _Entry, warnings: list[str], engine: str) -> dict[str, Any]:
    data = _prepare(entry.read(), entry.display, [])
    header = [h.strip() for h in _split_header(_first_line(data, "utf-8", entry.display), ",")]
    present = [c for c in ARTICLE_COLUMNS if c in header]
    kinds = {c: "str" for c in present}
    kinds.update({"user_id": "intid", "movie_id": "intid", "rating": "rating",
                  "timestamp": "int"})
    ignored = [c for c in header if c and c not in ARTICLE_COLUMNS]
    if ignored:
        warnings.append(f"{entry.display}: columns not used: {', '.join(ignored)}")
    df = _delimited(entry, warnings, sep=",", header=True, names=None, kinds=kinds,
                    required=("user_id", "movie_id", "rating", "timestamp"),
                    scale=_WHOLE_STARS, engine=engine)
    df = df.rename(columns={"movie_id": "item_id"})
    inter = df[["user_id", "item_id", "rating", "timestamp"]]
    first_items = df.drop_duplicates("item_id")
    items = _items_frame(
        first_items["item_id"].astype(str).tolist(),
        first_items["title"].tolist() if "title" in df else [""] * len(first_items),
        [_genre_list(g) for g in first_items["genres"]] if "genres" in df
        else [[] for _ in range(len(first_items))],
    )
    user_cols = [c for c in ("gender", "age", "occupation", "zip") if c in df.columns]
    first_users = df.drop_duplicates("user_id")
    users = pd.DataFrame({"user_id": first_users["user_id"].astype(str).to_numpy()})
    for c in user_cols:
        users[c] = first_users[c].to_numpy()
    codes_ok = True
    for c, table in (("age", ML1M_AGE_LABELS), ("occupation", ML1M_OCCUPATION_LABELS)):
        if c in users:
            nums = pd.to_numeric(users[c], errors="coerce")
            if nums.isna().any() or not nums.isin(list(table)).all():
                codes_ok = False
    if codes_ok and "age" in users and "occupation" in users:
        users["age"] = pd.to_numeric(users["age"]).astype(np.int64)
        users["occupation"] = pd.to_numeric(users["occupation"]).astype(np.int64)
        users["age_label"] = users["age"].map(ML1M_AGE_LABELS)
        users["occupation_label"] = users["occupation"].map(ML1M_OCCUPATION_LABELS)
    else:
        users = _numeric_where_possible(users, [c for c in ("age", "occupation") if c in users])
    return {"interactions": inter, "users": users, "items": items, "scale": (1.0, 5.0)}


def _numeric_where_possible(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Attribute columns whose every non-empty value is a finite number become numeric.

    Codes with leading zeros (zip "02134", "007") stay text, and so does a column holding an
    infinite number (a numeric one becomes text): a model feature has to be finite.
    """
    for c in cols:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s):
            if not np.isinf(s.to_numpy(dtype=np.float64, na_value=np.nan)).any():
                continue
            s = df[c] = s.astype(object).where(s.notna(), "").astype(str)
        text = s.astype(str).str.strip()
        if text.str.match(r"[+-]?0\d").any():
            continue
        num = pd.to_numeric(text.where(text != "", None), errors="coerce")
        finite = bool(np.isfinite(num.dropna().to_numpy(dtype=np.float64)).all())
        if finite and num.notna().sum() == (text != "").sum() and num.notna().any():
            whole = num.dropna()
            df[c] = num.astype("Int64") if (whole == np.floor(whole)).all() else num
    return df
