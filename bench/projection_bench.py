"""Benchmarks of the maps and audience pages' work (figures go to BENCHMARKS.md, "App").

1. First projection of a 50k-user run in a fresh process, including umap's numba warm-up
   (goal <= 60 s; it runs in the background job after training, never on a click).
   1b. The same run's two maps by the warm projection worker (``dssm_core.projector``, as the
   app does): time from the hand-over to both maps stored (goal <= 30 s after training), and
   whether they are bit-identical to the in-process maps of 1.
2. Opening a stored projection: the Embedding maps page rendered by AppTest on that run, cold
   (store read + run load + figure) and warm (a rerun, e.g. changing the colouring); goal <= 1 s.
3. An audience with insights for the top 1,000 users on ML-100K-sized data (943 users, 1,682
   items; the real files when ../shared/data is there, else a synthetic set of that size):
   ``audience.build_audience`` alone and the Audience page's rerun; goal <= 1 s.

Usage: ``OMP_NUM_THREADS=1 python bench/projection_bench.py [--users 50000] [--dim 32]``.
Run it as its own process: the warm-up figure is only meaningful in a fresh interpreter.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "app"))

from machine import cpu_model  # noqa: E402  (bench/machine.py)


def _clustered_vectors(groups: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around one random centre per group (what a trained tower looks like)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(groups.max()) + 1, dim))                  # (G, D)
    v = (centres[groups] + rng.normal(0.0, 0.8, (len(groups), dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)                     # (N, D)


def _add_run(store, ds, dim: int, seed: int) -> int:
    dataset_id = store.add_dataset(ds, name=ds.name or "bench")
    run_id = store.create_run(dataset_id, {"epochs": 1}, preset="default",
                              objective="pointwise", protocol="T")
    ug = np.asarray(ds.truth["user_group"]) if "user_group" in ds.truth else \
        np.random.default_rng(seed).integers(0, 6, len(ds.users))
    ig = np.asarray(ds.truth["item_group"]) if "item_group" in ds.truth else \
        np.random.default_rng(seed + 1).integers(0, 6, len(ds.items))
    store.finish_run(run_id, summary={"test_auc": 0.0}, weights=b"bench", encoders={},
                     user_ids=ds.users["user_id"].to_numpy(),
                     user_vectors=_clustered_vectors(ug, dim, seed),
                     item_ids=ds.items["item_id"].to_numpy(),
                     item_vectors=_clustered_vectors(ig, dim, seed + 2))
    return run_id


class _Clock:
    """Wall seconds and this process's CPU seconds (all threads) of a block. On a shared,
    busy machine wall time stretches with the load; CPU time is what the work itself costs."""

    def __enter__(self) -> "_Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def _app_times(page: str, setup, change, repeats: int = 3) -> dict[str, float]:
    """Opening ``page`` in a new session (router + page, cold caches), the rerun after
    ``setup(at)``, and (median of ``repeats``) a rerun after ``change(at, k)``: wall and CPU s."""
    from apphelpers import new_app

    with _Clock() as c:
        at = new_app(page, timeout=300)
    assert not at.exception, at.exception
    out = {"open_wall": c.wall, "open_cpu": c.cpu}
    setup(at)
    with _Clock() as c:
        at.run()
    assert not at.exception, at.exception
    out.update(first_wall=c.wall, first_cpu=c.cpu)
    walls, cpus = [], []
    for k in range(repeats):
        change(at, k)
        with _Clock() as c:
            at.run()
        assert not at.exception, at.exception
        walls.append(c.wall)
        cpus.append(c.cpu)
    out.update(rerun_wall=float(np.median(walls)), rerun_cpu=float(np.median(cpus)))
    return {k: round(v, 2) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--only-maps", action="store_true",
                   help="only 1 and 1b (the maps of the large run), not the pages")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from dssm_core import audience, projection, synthetic
    from dssm_core.store import Store

    out: dict[str, Any] = {"users": args.users, "dim": args.dim, "cpu": cpu_model(),
                           "load_avg_1min_at_start": round(os.getloadavg()[0], 1)}
    tmp = Path(tempfile.mkdtemp(prefix="projbench-"))
    url = f"sqlite:///{tmp / 'store.db'}"
    os.environ["DSSM_DB_URL"] = url
    os.environ["DSSM_DEMO"] = "off"
    store = Store(url)

    # ---- 1. first projection of a large run, fresh process, warm-up included
    t0 = time.perf_counter()
    big = synthetic.generate(n_users=args.users, n_items=args.items,
                             n_interactions=3 * args.users, seed=7)
    big_run = _add_run(store, big, args.dim, seed=1)
    out["setup_s"] = round(time.perf_counter() - t0, 1)
    with _Clock() as c:
        projection.warm_up()
    out["warm_up_wall_s"], out["warm_up_cpu_s"] = round(c.wall, 1), round(c.cpu, 1)
    with _Clock() as c:
        projection.project_run(store, big_run, kinds=("user",))
    out["project_users_wall_s"], out["project_users_cpu_s"] = round(c.wall, 1), round(c.cpu, 1)
    out["first_projection_wall_s"] = round(out["warm_up_wall_s"] + c.wall, 1)
    out["first_projection_cpu_s"] = round(out["warm_up_cpu_s"] + c.cpu, 1)
    with _Clock() as c:
        projection.project_run(store, big_run, kinds=("item",))
    out["project_items_wall_s"], out["project_items_cpu_s"] = round(c.wall, 1), round(c.cpu, 1)

    # ---- 1b. the same maps by the warm projection worker (what the app does since issue 14):
    # the worker compiled umap while the model trained; "after training" is the hand-over
    # (request -> both maps stored), and the maps must be the in-process ones, bit for bit.
    from dssm_core import jobs, projector

    plain = {k: store.load_projection(big_run, k)[1] for k in ("user", "item")}
    os.environ[jobs.PROJECTOR_ENV] = "on"
    t0 = time.perf_counter()
    worker = jobs.ensure_projector(url, idle_s=60)
    log_file = projector.worker_log_path(url)
    while '"warm"' not in (log_file.read_text() if log_file.exists() else ""):
        if worker.poll() is not None:
            raise RuntimeError(log_file.read_text())
        time.sleep(0.2)
    out["worker_start_to_warm_wall_s"] = round(time.perf_counter() - t0, 1)
    with _Clock() as c:
        res = projector.project(store, big_run)
    assert {p["by"] for p in res.values()} == {"worker"}, res
    out["maps_after_training_warm_worker_wall_s"] = round(c.wall, 1)
    out["worker_map_seconds"] = {k: p["seconds"] for k, p in res.items()}
    stored = [json.loads(x) for x in log_file.read_text().splitlines()
              if x.startswith("{") and '"stored"' in x]
    out["maps_after_training_warm_worker_cpu_s"] = stored[-1]["cpu_s"]
    out["worker_warm_up_s"] = [json.loads(x) for x in log_file.read_text().splitlines()
                               if x.startswith("{") and '"warm"' in x][0]["seconds"]
    out["worker_maps_identical_to_plain_umap"] = all(
        np.array_equal(plain[k], store.load_projection(big_run, k)[1]) for k in plain)
    out["maps_after_training_fresh_process_wall_s"] = round(
        out["first_projection_wall_s"] + out["project_items_wall_s"], 1)
    worker.kill()
    worker.wait()

    if args.only_maps:
        out["load_avg_1min_at_end"] = round(os.getloadavg()[0], 1)
        store.dispose()
        print(json.dumps(out, indent=1))
        return

    # ---- 2. opening the stored map (the Embedding maps page)
    def pick_big(at):
        at.selectbox(key="emb_run").set_value(big_run)

    colours = ["gender", "age", "favourite genre"]
    for k, v in _app_times(
            "pages/embeddings.py", pick_big,
            lambda at, k: at.selectbox(key="emb_colour_user").set_value(colours[k % 3])).items():
        out[f"map_page_{k}_s"] = v
    t0 = time.perf_counter()
    store.load_projection(big_run, "user")
    out["load_projection_s"] = round(time.perf_counter() - t0, 3)

    # ---- 3. audience with insights, ML-100K-sized
    ml = ROOT.parent / "shared" / "data" / "ml-100k"
    if (ml / "u.data").exists():
        from dssm_core import movielens

        small = movielens.load(str(ml), name="MovieLens 100K")
        out["audience_data"] = "ml-100k"
    else:
        small = synthetic.generate(n_users=943, n_items=1_682, n_interactions=100_000, seed=3)
        out["audience_data"] = "synthetic 943x1682"
    small_run = _add_run(store, small, args.dim, seed=4)
    t0 = time.perf_counter()
    loaded = audience.load_run(store, small_run)
    out["audience_load_run_s"] = round(time.perf_counter() - t0, 2)
    items = small.interactions["item_id"].value_counts().index[:5].astype(str).tolist()
    times = []
    for k in range(5):
        req = audience.AudienceRequest(items=(items[k],), top_n=1_000)
        t0 = time.perf_counter()
        res = audience.build_audience(loaded, req)
        times.append(time.perf_counter() - t0)
    out["audience_top1000_insights_s"] = round(float(np.median(times)), 4)
    out["audience_members"] = res.size

    def pick_small(at):
        at.selectbox(key="aud_run").set_value(small_run)
        at.checkbox(key="aud_exclude_seen").set_value(False)
        at.number_input(key="aud_top_n").set_value(943)
        at.multiselect(key="aud_items").set_value([items[0]])

    for k, v in _app_times(
            "pages/audience.py", pick_small,
            lambda at, k: at.multiselect(key="aud_items").set_value([items[k + 1]])).items():
        out[f"audience_page_{k}_s"] = v
    out["load_avg_1min_at_end"] = round(os.getloadavg()[0], 1)
    store.dispose()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
