"""2-D maps of a run's embeddings: UMAP with the cosine metric and a fixed seed.

Projections are computed once per run, in the background training process right after training
(``pipeline.run_training`` calls :func:`project_run`), and stored with
``store.save_projection``; the app's Embeddings page only reads them. umap-learn spends tens of
seconds compiling numba code on its first call in a fresh process, so nothing here runs on a
click: :func:`warm_up` pays that cost up front in a background process.

Above ``max_points`` vectors a seeded random sample is projected, and the stored parameters say
so (``sampled``, ``n_total``, ``n_projected``).

umap is imported lazily inside the functions: importing it takes seconds, and the app's pages
import this module without projecting anything.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("user", "item")
DEFAULT_MAX_POINTS = 50_000

#: Below this many points UMAP's spectral initialisation is undefined; a PCA layout is used.
_MIN_UMAP_POINTS = 4


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal coordinates of ``x`` (N, D), zero-padded; deterministic."""
    centred = x - x.mean(axis=0, keepdims=True)                      # (N, D)
    _, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    xy = centred @ vt[:2].T                                           # (N, <=2)
    out = np.zeros((x.shape[0], 2), dtype=np.float32)
    out[:, : xy.shape[1]] = xy
    # Fix the sign of each axis so the layout does not depend on the SVD's sign choice.
    for j in range(xy.shape[1]):
        col = out[:, j]
        if col[np.argmax(np.abs(col))] < 0:
            out[:, j] = -col
    return out


def project(
    vectors: np.ndarray,
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
) -> np.ndarray:
    """UMAP of ``vectors`` (N, D) to (N, 2) float32 with the cosine metric and a fixed seed.

    The same input and seed always give the same map (umap runs single-threaded when seeded).
    ``n_neighbors`` is clamped to N - 1 for small inputs; with fewer than 4 points UMAP is
    undefined and the first two principal coordinates are returned instead.
    ``n_epochs``: UMAP's optimisation epochs (None = umap's default, 200 above 10k points).

    Raises ValueError for an empty or non-2-D input, non-finite values, or bad parameters.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, D), got shape {x.shape}")
    n = x.shape[0]
    if n == 0 or x.shape[1] == 0:
        raise ValueError(f"nothing to project: shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinite values")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}")
    if not 0.0 <= min_dist <= 1.0:
        raise ValueError(f"min_dist must be in [0, 1], got {min_dist}")
    if n < _MIN_UMAP_POINTS:
        return _pca_2d(x)

    import umap  # lazy: seconds to import, and numba compiles on first use

    reducer = umap.UMAP(
        n_components=2,
        metric="cosine",
        n_neighbors=min(n_neighbors, n - 1),
        min_dist=min_dist,
        n_epochs=n_epochs,
        random_state=seed,
        low_memory=True,
    )
    with warnings.catch_warnings():
        # "n_jobs overridden by setting random_state": expected, we want determinism.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*", category=UserWarning)
        xy = reducer.fit_transform(x)                                 # (N, 2)
    return np.ascontiguousarray(xy, dtype=np.float32)


def sample_indices(n_total: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded random sample of ``max_points`` out of ``n_total``.

    All rows (``arange(n_total)``) when ``n_total <= max_points``.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n_total <= max_points:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=max_points, replace=False))


def warm_up(seed: int = 0) -> float:
    """Compile umap's numba code (exact and approximate neighbour paths) on a tiny array.

    Call it in a background process before the first real projection; returns the seconds it
    took (about 30 s in a fresh process without numba's on-disk cache, well under 1 s after).
    """
    import umap

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 8)).astype(np.float32)                   # (64, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The approximate (NN-descent) path is what runs above 4,096 points.
        umap.UMAP(n_components=2, metric="cosine", n_neighbors=5, n_epochs=5, random_state=seed,
                  force_approximation_algorithm=True, low_memory=True).fit_transform(x)
        umap.UMAP(n_components=2, metric="cosine", n_neighbors=5, n_epochs=5,
                  random_state=seed, low_memory=True).fit_transform(x)
    seconds = time.perf_counter() - t0
    log.info("umap warm-up took %.1f s", seconds)
    return seconds


def project_run(
    store: Any,
    run_id: int,
    kinds: Sequence[str] = KINDS,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Project a stored run's embeddings and store each map with ``store.save_projection``.

    For each kind in ``kinds`` ("user", "item"): load ``store.load_embeddings(run_id, kind)``,
    take a seeded random sample above ``max_points`` rows, run :func:`project` and save
    ``(ids, xy, params)``. ``params`` records method, metric, n_neighbors, min_dist, seed,
    n_total, n_projected, sampled, max_points, umap version and seconds.
    ``on_progress(kind, params)`` is called after each map is stored.

    Returns ``{kind: params}``. Raises ValueError for an unknown kind.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown embedding kind(s) {bad}; expected some of {list(KINDS)}")
    import umap

    out: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        ids, vectors = store.load_embeddings(run_id, kind)            # (N,), (N, D)
        ids = np.asarray(ids)
        idx = sample_indices(len(ids), max_points, seed)
        xy = project(vectors[idx], seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)
        n_proj = len(idx)
        params: dict[str, Any] = {
            # what project() really did: a PCA layout under 4 points, n_neighbors clamped
            "method": "umap" if n_proj >= _MIN_UMAP_POINTS else "pca",
            "metric": "cosine",
            "n_neighbors": int(min(n_neighbors, max(n_proj - 1, 1))),
            "min_dist": float(min_dist),
            "seed": int(seed),
            "n_total": int(len(ids)),
            "n_projected": int(len(idx)),
            "sampled": bool(len(idx) < len(ids)),
            "max_points": int(max_points),
            "umap_version": str(umap.__version__),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        store.save_projection(run_id, kind, ids[idx], xy, params)
        log.info("run %s: %s map of %d/%d points in %.1f s", run_id, kind, params["n_projected"],
                 params["n_total"], params["seconds"])
        out[kind] = params
        if on_progress is not None:
            on_progress(kind, params)
    return out
