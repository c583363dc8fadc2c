"""dssm_core.projection: UMAP maps (cosine, seeded), sampling, and storage per run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dssm_core import projection

torch.set_num_threads(1)


def _clusters(n_per: int = 40, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two tight clusters around orthogonal directions e0 and e1 (cosine distance 1 apart)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d, dtype=np.float32)[:2]                          # (2, D)
    labels = np.repeat([0, 1], n_per)
    x = centres[labels] + rng.normal(0, 0.05, (2 * n_per, d)).astype(np.float32)  # (N, D)
    return x.astype(np.float32), labels


def test_project_shape_dtype_and_determinism():
    x, _ = _clusters()
    a = projection.project(x, seed=0)
    b = projection.project(x, seed=0)
    assert a.shape == (80, 2)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    c = projection.project(x, seed=1)
    assert not np.array_equal(a, c)


def test_project_uses_cosine_metric():
    # Directions e0 (A) and e1 (B), each at length 1 and 100. By Euclidean distance the short A
    # and short B points are neighbours (1.4 apart) and far from their long twins (99 apart);
    # by cosine distance only the direction counts, so short-A and long-A points are one mixed
    # cluster: most short-A points have a long-A point among their 5 nearest map neighbours.
    # (A Euclidean map gives 0 of 20: short and long points form separate islands.)
    x, labels = _clusters(n_per=40)
    length = np.tile(np.repeat([1.0, 100.0], 20), 2).astype(np.float32)[:, None]
    xy = projection.project(x * length, seed=0)
    short = length[:, 0] == 1.0
    group = np.where(labels == 0, np.where(short, "short A", "long A"),
                     np.where(short, "short B", "long B"))
    mixed = 0
    for i in np.flatnonzero(group == "short A"):
        d = np.linalg.norm(xy - xy[i], axis=1)
        near = group[np.argsort(d)[1:6]]
        assert "short B" not in near and "long B" not in near
        mixed += "long A" in near
    assert mixed >= 10


def test_project_separates_clusters():
    x, labels = _clusters()
    xy = projection.project(x, seed=0)
    c0, c1 = xy[labels == 0].mean(0), xy[labels == 1].mean(0)
    spread = max(np.linalg.norm(xy[labels == k] - xy[labels == k].mean(0), axis=1).max()
                 for k in (0, 1))
    # The gap between the two cluster centres exceeds every cluster's radius.
    assert np.linalg.norm(c0 - c1) > spread


def test_project_tiny_inputs_use_pca():
    # 3 points on a line along e0: the first principal axis is x (sign fixed so the largest
    # coordinate is positive), the second is zero. Centred x coords: -1, 0, 3 -> mean 2/3.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]], dtype=np.float32)
    xy = projection.project(x)
    np.testing.assert_allclose(xy, [[-5 / 3, 0.0], [-2 / 3, 0.0], [7 / 3, 0.0]], atol=1e-5)
    one = projection.project(np.ones((1, 4), dtype=np.float32))
    np.testing.assert_array_equal(one, np.zeros((1, 2), dtype=np.float32))


@pytest.mark.parametrize(
    "bad, kwargs, message",
    [
        (np.zeros((0, 4)), {}, "nothing to project"),
        (np.zeros(4), {}, "2-D"),
        (np.array([[np.nan, 1.0]] * 5), {}, "NaN"),
        (np.ones((5, 2)), {"n_neighbors": 1}, "n_neighbors"),
        (np.ones((5, 2)), {"min_dist": 2.0}, "min_dist"),
    ],
)
def test_project_rejects_bad_input(bad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        projection.project(bad, **kwargs)


def test_sample_indices():
    np.testing.assert_array_equal(projection.sample_indices(5, 10), np.arange(5))
    np.testing.assert_array_equal(projection.sample_indices(5, 5), np.arange(5))
    idx = projection.sample_indices(1000, 100, seed=3)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 1000
    np.testing.assert_array_equal(idx, projection.sample_indices(1000, 100, seed=3))
    assert not np.array_equal(idx, projection.sample_indices(1000, 100, seed=4))
    with pytest.raises(ValueError, match="max_points"):
        projection.sample_indices(10, 0)


# --------------------------------------------------------------------------- project_run (store)
def _store_with_run(url: str, n_users: int, n_items: int, dim: int = 8) -> tuple[object, int]:
    """A real Store holding the tiny synthetic dataset and one finished run of random vectors."""
    from dssm_core import synthetic
    from dssm_core.store import Store

    store = Store(url)
    ds = synthetic.generate(n_users=n_users, n_items=n_items, n_interactions=4 * n_users, seed=1)
    dataset_id = store.add_dataset(ds)
    run_id = store.create_run(dataset_id, {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, dim)).astype(np.float32)                 # (N, D)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    store.finish_run(run_id, summary={"test_auc": 0.5}, weights=b"w", encoders={},
                     user_ids=ds.users["user_id"].to_numpy(), user_vectors=unit(n_users),
                     item_ids=ds.items["item_id"].to_numpy(), item_vectors=unit(n_items))
    return store, run_id


def test_project_run_stores_maps_and_samples_above_max_points(sqlite_url):
    store, run_id = _store_with_run(sqlite_url, n_users=60, n_items=20)
    seen: list[str] = []
    out = projection.project_run(store, run_id, max_points=40, seed=5,
                                 on_progress=lambda kind, params: seen.append(kind))
    assert seen == ["user", "item"]

    ids, xy, params = store.load_projection(run_id, "user")
    assert xy.shape == (40, 2) and xy.dtype == np.float32
    assert params["sampled"] is True
    assert (params["n_total"], params["n_projected"], params["max_points"]) == (60, 40, 40)
    assert params["metric"] == "cosine" and params["seed"] == 5
    # The sample is the seeded one, in the stored order of the run's user ids.
    all_ids, vectors = store.load_embeddings(run_id, "user")
    idx = projection.sample_indices(60, 40, seed=5)
    np.testing.assert_array_equal(ids, all_ids[idx])
    np.testing.assert_array_equal(xy, projection.project(vectors[idx], seed=5))
    assert out["user"] == params

    item_ids, item_xy, item_params = store.load_projection(run_id, "item")
    assert item_params["sampled"] is False and item_params["n_projected"] == 20
    assert item_xy.shape == (20, 2)
    assert sorted(item_ids.tolist()) == sorted(store.load_embeddings(run_id, "item")[0].tolist())


def test_project_run_rejects_unknown_kind(sqlite_url):
    store, run_id = _store_with_run(sqlite_url, n_users=10, n_items=10)
    with pytest.raises(ValueError, match="unknown embedding kind"):
        projection.project_run(store, run_id, kinds=("movie",))
    assert store.load_projection(run_id, "user") is None


def test_cli_project_subcommand(sqlite_url, capsys):
    from dssm_core import cli

    store, run_id = _store_with_run(sqlite_url, n_users=30, n_items=12)
    assert cli.main(["project", "--db", sqlite_url, "--run", str(run_id), "--kinds", "item"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    stages = [json.loads(line)["stage"] for line in lines]
    assert stages == ["started", "stored", "done"]
    assert store.load_projection(run_id, "item")[1].shape == (12, 2)
    assert store.load_projection(run_id, "user") is None
