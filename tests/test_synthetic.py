from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dssm_core import synthetic


def test_default_sizes_and_schema() -> None:
    ds = synthetic.generate()
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (2000, 1000, 100_000)
    assert list(ds.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert ds.user_columns == ["gender", "age", "occupation", "zip"]
    assert ds.item_columns == ["title", "genres", "year"]
    assert ds.interactions["timestamp"].is_monotonic_increasing
    assert not ds.interactions.duplicated(["user_id", "item_id"]).any()
    assert set(ds.interactions["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ds.format == "synthetic" and not ds.implicit


def test_deterministic() -> None:
    a = synthetic.generate(n_users=200, n_items=80, n_interactions=3000, seed=11)
    b = synthetic.generate(n_users=200, n_items=80, n_interactions=3000, seed=11)
    c = synthetic.generate(n_users=200, n_items=80, n_interactions=3000, seed=12)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert not a.interactions.equals(c.interactions)


def test_planted_groups_are_visible_in_the_data() -> None:
    ds = synthetic.generate(n_users=600, n_items=300, n_interactions=20_000, seed=5)
    ug = ds.truth["user_group"]
    ig = ds.truth["item_group"]
    inter = ds.interactions
    same = ug.loc[inter["user_id"]].to_numpy() == ig.loc[inter["item_id"]].to_numpy()
    # with 6 groups and affinity 8, in-group picks are well above chance (1/6)
    assert same.mean() > 0.35
    # and in-group items are rated higher
    r = inter["rating"].to_numpy()
    assert r[same].mean() > r[~same].mean() + 1.0
    # demographics lean with the group: the classics group is mostly 50+
    old = ds.users.set_index("user_id")["age"].isin(["50-55", "56+"])
    classics = ug == 4
    assert old[classics.index[classics]].mean() > 0.6 > old[classics.index[~classics]].mean()


@pytest.mark.parametrize("kwargs", [
    {"n_users": 1}, {"n_items": 1}, {"n_interactions": 10, "n_users": 100},
    {"n_users": 3, "n_items": 3, "n_interactions": 10}, {"affinity": 0.5},
])
def test_bad_sizes_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        synthetic.generate(**kwargs)


def test_every_user_and_item_has_a_row() -> None:
    ds = synthetic.generate(n_users=100, n_items=50, n_interactions=1500, seed=1)
    assert set(ds.interactions["user_id"]) <= set(ds.users["user_id"])
    assert set(ds.interactions["item_id"]) <= set(ds.items["item_id"])
    assert ds.users["user_id"].is_unique and ds.items["item_id"].is_unique
    assert all(isinstance(g, list) and g for g in ds.items["genres"])
    assert np.issubdtype(ds.interactions["timestamp"].dtype, np.integer)
