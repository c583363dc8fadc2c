"""A deterministic MovieLens-style demo dataset with planted taste groups.

This is the app's and the CLI's embedded default: the project never ships MovieLens files
(their licence forbids redistribution). Each user belongs to one hidden taste group; each
group prefers a few genres and leans towards some demographics (gender, age band,
occupation, zip region). Users pick and rate items of their own group more often and more
highly, so a trained model can visibly recover the groups. The groups are returned in
``Dataset.truth`` only, never as a feature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .dataset import Dataset


@dataclass(frozen=True)
class _Group:
    name: str
    genres: tuple[str, ...]
    p_female: float
    ages: tuple[str, ...]
    occupations: tuple[str, ...]
    zip_region: str
    years: tuple[int, int]


GROUPS: tuple[_Group, ...] = (
    _Group("Action & sci-fi", ("Action", "Adventure", "Sci-Fi", "Thriller"), 0.2,
           ("18-24", "25-34"), ("college/grad student", "programmer", "technician/engineer"),
           "9", (1985, 2000)),
    _Group("Family & animation", ("Animation", "Children's", "Comedy", "Musical"), 0.6,
           ("25-34", "35-44"), ("homemaker", "K-12 student", "academic/educator"), "3",
           (1980, 2000)),
    _Group("Drama & romance", ("Drama", "Romance"), 0.75, ("25-34", "35-44", "45-49"),
           ("writer", "artist", "clerical/admin", "customer service"), "1", (1975, 2000)),
    _Group("Horror & mystery", ("Horror", "Mystery", "Thriller"), 0.35, ("18-24", "Under 18"),
           ("college/grad student", "K-12 student", "unemployed"), "6", (1975, 2000)),
    _Group("Classics & documentary", ("Documentary", "Film-Noir", "War", "Western"), 0.4,
           ("50-55", "56+"), ("retired", "doctor/health care", "lawyer"), "0", (1940, 1975)),
    _Group("Crime & comedy", ("Crime", "Comedy", "Drama"), 0.45, ("35-44", "45-49"),
           ("executive/managerial", "sales/marketing", "self-employed"), "7", (1970, 2000)),
)

ALL_AGES = ("Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
ALL_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
ALL_GENRES = tuple(sorted({g for grp in GROUPS for g in grp.genres} | {"Fantasy"}))

_ADJ = ("Silent", "Last", "Broken", "Golden", "Hidden", "Midnight", "Crimson", "Lost", "Wild",
        "Frozen", "Electric", "Secret", "Burning", "Distant", "Little", "Iron", "Velvet",
        "Final", "Hollow", "Bright", "Quiet", "Savage", "Endless", "Paper", "Neon")
_NOUN = ("Harbor", "Kingdom", "Promise", "Witness", "Garden", "Frontier", "Echo", "Mirror",
         "Station", "Summer", "Horizon", "Letter", "River", "Empire", "Shadow", "Voyage",
         "Orchard", "Signal", "Carnival", "Island", "Verdict", "Lantern", "Canyon", "Crown")

#: 2020-01-01T00:00:00Z, the start of the synthetic period.
START_TS = 1_577_836_800


def generate(
    n_users: int = 2_000,
    n_items: int = 1_000,
    n_interactions: int = 100_000,
    *,
    days: int = 365,
    affinity: float = 8.0,
    seed: int = 7,
    tail: float = 1.2,
    activity_sigma: float = 0.8,
    active_days: int | None = None,
    half_stars: bool = False,
    demographics: bool = True,
    name: str = "Demo (synthetic)",
) -> Dataset:
    """Build the demo dataset; the same arguments always give the same frames.

    affinity: how many times likelier a user is to pick an item of their own taste group
        (1.0 = no planted structure).
    tail: Pareto shape of item popularity (smaller = longer tail).
    activity_sigma: spread (log-normal sigma) of how many interactions users have.
    active_days: each user is active for at most this many days after joining (None: from
        joining to the end of the period).
    half_stars: ratings in steps of 0.5 from 0.5 to 5 (as MovieLens since 2003).
    demographics: False = the users table holds ids only.
    """
    if n_users < 2 or n_items < 2:
        raise ValueError("need at least 2 users and 2 items")
    if n_interactions < n_users:
        raise ValueError("need at least one interaction per user (n_interactions >= n_users)")
    if n_interactions > n_users * n_items:
        raise ValueError("n_interactions exceeds n_users * n_items")
    if affinity < 1.0:
        raise ValueError("affinity must be >= 1")
    rng = np.random.default_rng(seed)
    n_groups = len(GROUPS)

    # Items: a group each, 1-3 genres mostly from that group, a year, a popularity and a quality.
    item_group = rng.integers(0, n_groups, n_items)
    item_ids = np.array([str(i) for i in range(1, n_items + 1)])
    genres: list[list[str]] = []
    years = np.empty(n_items, dtype=np.int64)
    titles: list[str] = []
    for i, g in enumerate(item_group):
        grp = GROUPS[g]
        k = int(rng.integers(1, min(3, len(grp.genres)) + 1))
        gs = list(rng.choice(grp.genres, size=k, replace=False))
        if rng.random() < 0.1:
            extra = str(rng.choice(ALL_GENRES))
            if extra not in gs:
                gs.append(extra)
        genres.append(sorted(gs))
        years[i] = int(rng.integers(grp.years[0], grp.years[1] + 1))
        titles.append(f"{rng.choice(_ADJ)} {rng.choice(_NOUN)} ({years[i]})")
    popularity = rng.pareto(tail, n_items) + 1.0                     # long tail
    quality = rng.normal(0.0, 0.4, n_items)

    # Users: a group each; demographics lean towards the group's profile.
    user_group = rng.integers(0, n_groups, n_users)
    user_ids = np.array([str(u) for u in range(1, n_users + 1)])
    gender, age, occ, zips = [], [], [], []
    for g in user_group:
        grp = GROUPS[g]
        gender.append("F" if rng.random() < grp.p_female else "M")
        age.append(str(rng.choice(grp.ages)) if rng.random() < 0.75 else str(rng.choice(ALL_AGES)))
        occ.append(str(rng.choice(grp.occupations)) if rng.random() < 0.6
                   else str(rng.choice(ALL_OCCUPATIONS)))
        region = grp.zip_region if rng.random() < 0.6 else str(rng.integers(0, 10))
        zips.append(region + f"{int(rng.integers(0, 10_000)):04d}")

    # How many interactions each user has: log-normal activity, at least 1, summing exactly.
    activity = rng.lognormal(0.0, activity_sigma, n_users)
    counts = np.maximum(1, np.floor(activity / activity.sum() * n_interactions)).astype(np.int64)
    counts = np.minimum(counts, n_items)
    deficit = n_interactions - int(counts.sum())
    order = np.argsort(-activity)
    j = 0
    while deficit != 0:
        u = order[j % n_users]
        step = 1 if deficit > 0 else -1
        if (step > 0 and counts[u] < n_items) or (step < 0 and counts[u] > 1):
            counts[u] += step
            deficit -= step
        j += 1

    # Who picks what: popularity times affinity for the user's own group.
    pick_p = np.empty((n_groups, n_items))
    for g in range(n_groups):
        w = popularity * np.where(item_group == g, affinity, 1.0)
        pick_p[g] = w / w.sum()
    # Each user joins at some point of the period and is active from then to its end.
    period = days * 86_400
    join = (rng.beta(1.2, 2.5, n_users) * 0.9 * period).astype(np.int64)

    u_rows, i_rows, r_rows, t_rows = [], [], [], []
    for u in range(n_users):
        k = int(counts[u])
        g = user_group[u]
        items_u = rng.choice(n_items, size=k, replace=False, p=pick_p[g])
        same = item_group[items_u] == g
        mean = 3.0 + np.where(same, 1.1, -0.5) + quality[items_u]
        if half_stars:
            r = np.clip(np.rint(2 * (mean + rng.normal(0.0, 0.8, k))) / 2, 0.5, 5)
        else:
            r = np.clip(np.rint(mean + rng.normal(0.0, 0.8, k)), 1, 5)
        span = period - join[u]
        if active_days is not None:
            span = max(1, min(span, int(rng.integers(1, active_days + 1)) * 86_400))
        t = START_TS + join[u] + np.sort(rng.integers(0, span, k))
        u_rows.append(np.full(k, u))
        i_rows.append(items_u)
        r_rows.append(r)
        t_rows.append(t)
    uu = np.concatenate(u_rows)
    ii = np.concatenate(i_rows)
    interactions = pd.DataFrame({
        "user_id": user_ids[uu],
        "item_id": item_ids[ii],
        "rating": np.concatenate(r_rows).astype(np.float32),
        "timestamp": np.concatenate(t_rows).astype(np.int64),
    }).sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)

    users = pd.DataFrame({"user_id": user_ids, "gender": gender, "age": age,
                          "occupation": occ, "zip": zips})
    if not demographics:
        users = users[["user_id"]]
    items = pd.DataFrame({"item_id": item_ids, "title": titles, "genres": genres,
                          "year": years})
    truth = {
        "group_names": [g.name for g in GROUPS],
        "user_group": pd.Series(user_group, index=user_ids, name="group"),
        "item_group": pd.Series(item_group, index=item_ids, name="group"),
    }
    return Dataset(
        interactions=interactions, users=users, items=items, format="synthetic",
        name=name, rating_scale=(0.5 if half_stars else 1.0, 5.0), warnings=[], truth=truth,
    )


#: Synthetic stand-ins for MovieLens releases of other shapes than ML-100K (the product is
#: judged on data it has never seen; these are for benchmarks, never for choosing on test).
#: "latest-small": few users over 20 years, a 9k-item long tail, half stars, ids only.
#: "many-short": many users with short histories over 10 years, half stars, ids only.
SHAPES: dict[str, dict] = {
    "demo": {},
    "latest-small": dict(n_users=700, n_items=9_000, n_interactions=100_000, days=20 * 365,
                         tail=0.9, activity_sigma=1.2, active_days=400, half_stars=True,
                         demographics=False, seed=11, name="Synthetic latest-small shape"),
    "many-short": dict(n_users=8_000, n_items=3_000, n_interactions=100_000, days=10 * 365,
                       tail=1.0, activity_sigma=0.9, active_days=60, half_stars=True,
                       demographics=False, seed=13, name="Synthetic many-short shape"),
}


def shaped(shape: str) -> Dataset:
    """The synthetic dataset of one of ``SHAPES``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return generate(**SHAPES[shape])


#: Large synthetic stand-ins for benchmarks of scale (``generate_large``), in the shape of
#: MovieLens releases: ML-25M has 162k users, 59k items, 25M ratings over 25 years.
LARGE_SHAPES: dict[str, dict] = {
    "ml-25m": dict(n_users=162_000, n_items=59_000, n_interactions=25_000_000,
                   days=25 * 365),
}


def generate_large(
    n_users: int,
    n_items: int,
    n_interactions: int,
    *,
    days: int = 365,
    affinity: float = 8.0,
    seed: int = 7,
    tail: float = 1.2,
    activity_sigma: float = 0.8,
    name: str = "Synthetic (large)",
) -> Dataset:
    """The demo's taste groups at any size, vectorised (25M interactions in about a
    minute): ids only (no demographics), half-star ratings, ids as ``category`` columns.
    About ``n_interactions`` rows: each user's draws are made with replacement and repeats
    dropped, so a few users get fewer than planned. Not the same frames as ``generate``."""
    if n_users < 2 or n_items < 2 or n_interactions < n_users:
        raise ValueError("need at least 2 users, 2 items and one interaction per user")
    rng = np.random.default_rng(seed)
    n_groups = len(GROUPS)
    item_group = rng.integers(0, n_groups, n_items)
    genres = [sorted(set(rng.choice(GROUPS[g].genres, size=int(rng.integers(1, 3)))))
              for g in item_group]
    years = rng.integers(1940, 2020, n_items)
    popularity = rng.pareto(tail, n_items) + 1.0
    quality = rng.normal(0.0, 0.4, n_items)
    user_group = rng.integers(0, n_groups, n_users)
    activity = rng.lognormal(0.0, activity_sigma, n_users)
    cdfs = [np.cumsum(w / w.sum()) for w in
            (popularity * np.where(item_group == g, affinity, 1.0) for g in range(n_groups))]
    factor = 1.05
    for _ in range(6):        # more draws while repeats leave fewer pairs than asked
        counts = np.maximum(1, np.round(activity / activity.sum() * n_interactions * factor))
        user = np.repeat(np.arange(n_users), np.minimum(counts, n_items).astype(np.int64))
        # items by popularity x affinity of the user's group: inverse CDF per group
        item = np.empty(len(user), dtype=np.int64)
        for g in range(n_groups):
            mine = user_group[user] == g
            item[mine] = np.minimum(np.searchsorted(cdfs[g], rng.random(int(mine.sum()))),
                                    n_items - 1)
        pair = np.unique(user * n_items + item)              # repeats dropped, by user
        if len(pair) >= n_interactions:
            break
        factor *= 1.1 * n_interactions / len(pair)
    if len(pair) > n_interactions:
        pair = np.sort(rng.choice(pair, n_interactions, replace=False))
    user, item = pair // n_items, pair % n_items
    period = days * 86_400
    join = (rng.beta(1.2, 2.5, n_users) * 0.9 * period).astype(np.int64)
    ts = START_TS + join[user] + (rng.random(len(user)) * (period - join[user])).astype(np.int64)
    mean = 3.0 + np.where(item_group[item] == user_group[user], 1.1, -0.5) + quality[item]
    rating = np.clip(np.rint(2 * (mean + rng.normal(0.0, 0.8, len(user)))) / 2, 0.5, 5)
    order = np.argsort(ts, kind="stable")
    user_ids = pd.Index([str(u) for u in range(1, n_users + 1)])
    item_ids = pd.Index([str(i) for i in range(1, n_items + 1)])
    interactions = pd.DataFrame({
        "user_id": pd.Categorical.from_codes(user[order], categories=user_ids),
        "item_id": pd.Categorical.from_codes(item[order], categories=item_ids),
        "rating": rating[order].astype(np.float32),
        "timestamp": ts[order].astype(np.int64),
    })
    users = pd.DataFrame({"user_id": user_ids.to_numpy(dtype=object)})
    titles = [f"{_ADJ[i % len(_ADJ)]} {_NOUN[i % len(_NOUN)]} ({y})"
              for i, y in enumerate(years.tolist())]
    items = pd.DataFrame({"item_id": item_ids.to_numpy(dtype=object), "title": titles,
                          "genres": genres, "year": years})
    return Dataset(interactions=interactions, users=users, items=items, format="synthetic",
                   name=name, rating_scale=(0.5, 5.0), warnings=[], truth={})
