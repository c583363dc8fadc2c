"""Store: write and bulk-read a run's 1M user embeddings (SQLite file; PostgreSQL if asked).

For each d in ``--dims`` (default 32 and 64), ``--repeat`` times (a fresh database each time):

* write - ``Store.finish_run`` of a run with N user vectors (default 1,000,000) and 10,000
          item vectors (weights 1 MiB, one transaction, committed: what training does);
* load  - ``Store.load_embeddings(run, "user")`` in a fresh ``Store`` (ids + (N, D) float32),
          three times: the best, and the first (which may pay first-touch page faults);
* get   - ``Store.get_vectors(run, "user", 10 random ids)`` (single vectors by id).

Goals (issue 4): write <= 3 s, load <= 0.5 s for 1M vectors. Threads pinned; one process.
Usage: OMP_NUM_THREADS=1 python bench/store_bench.py [--n 1000000] [--dims 32 64]
       [--repeat 3] [--dir /tmp] [--pg URL] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dssm_core.dataset import Dataset  # noqa: E402
from dssm_core.store import Base, Store  # noqa: E402


def tiny_dataset() -> Dataset:
    return Dataset(
        interactions=pd.DataFrame({"user_id": ["u0"], "item_id": ["i0"],
                                   "rating": np.array([4.0], np.float32),
                                   "timestamp": np.array([0], np.int64)}),
        users=pd.DataFrame({"user_id": ["u0"]}),
        items=pd.DataFrame({"item_id": ["i0"], "title": ["t"], "genres": [["g"]]}),
        format="synthetic", name="bench")


def one_round(url: str, n: int, d: int, rng: np.random.Generator) -> dict[str, float]:
    uvec = rng.standard_normal((n, d), dtype=np.float32)
    ivec = rng.standard_normal((10_000, d), dtype=np.float32)
    uids = np.array([f"u{i}" for i in range(n)])
    iids = np.array([f"i{i}" for i in range(10_000)])
    weights = rng.bytes(2**20)
    st = Store(url)
    did = st.add_dataset(tiny_dataset())
    rid = st.create_run(did, {"epochs": 1})
    st.mark_running(rid, pid=os.getpid())
    t = time.perf_counter()
    st.finish_run(rid, summary={"test_auc": 0.5}, weights=weights, encoders={},
                  user_ids=uids, user_vectors=uvec, item_ids=iids, item_vectors=ivec)
    write = time.perf_counter() - t
    st.dispose()
    fresh = Store(url)
    loads = []
    for _ in range(3):
        t = time.perf_counter()
        ids, vec = fresh.load_embeddings(rid, "user")
        loads.append(time.perf_counter() - t)
    load = min(loads)
    if vec.tobytes() != uvec.tobytes() or ids.tolist()[:3] != ["u0", "u1", "u2"]:
        raise SystemExit("round trip mismatch")
    pick = rng.choice(n, 10, replace=False)
    t = time.perf_counter()
    got = fresh.get_vectors(rid, "user", uids[pick])
    get = time.perf_counter() - t
    if got.tobytes() != uvec[pick].tobytes():
        raise SystemExit("get_vectors mismatch")
    fresh.dispose()
    return {"write_s": write, "load_s": load, "first_load_s": loads[0], "get10_s": get}


def first_touch_seconds(nbytes: int) -> float:
    """Seconds a fresh process needs to allocate and first touch ``nbytes`` (the page-fault
    cost any loader pays once per process; large on sandboxed machines)."""
    import subprocess

    code = ("import numpy as np, time; t = time.perf_counter(); "
            f"x = np.empty({nbytes} // 4, np.float32); x[:] = 1; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def warm_up(nbytes: int) -> None:
    """Touch and free ``nbytes`` so this process's later big allocations are not first-touch."""
    x = np.empty(nbytes // 4, np.float32)
    x[:] = 1
    del x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the SQLite files (default: a temp dir)")
    ap.add_argument("--pg", default=None, help="also bench this PostgreSQL URL (tables dropped!)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    biggest = args.n * max(args.dims) * 4
    print(f"first touch of {biggest / 2**20:.0f} MiB in a fresh process: "
          f"{first_touch_seconds(biggest):.2f} s (an environment cost, paid once per process)")
    warm_up(3 * biggest)
    backends = ["sqlite"] + (["postgresql"] if args.pg else [])
    print(f"N={args.n:,} user vectors (+10,000 items), best and median of {args.repeat}")
    print(f"{'backend':>10} {'d':>3} {'MiB':>5} | {'write best/med s':>17} | "
          f"{'load best/med s':>16} | {'1st load med s':>14} | {'get 10 ids ms':>13}")
    for backend in backends:
        for d in args.dims:
            res = []
            for _ in range(args.repeat):
                if backend == "sqlite":
                    folder = tempfile.mkdtemp(dir=args.dir, prefix="store-bench-")
                    url = f"sqlite:///{folder}/bench.db"
                else:
                    from sqlalchemy import create_engine

                    url = args.pg
                    eng = create_engine(url)
                    Base.metadata.drop_all(eng)
                    eng.dispose()
                try:
                    res.append(one_round(url, args.n, d, rng))
                finally:
                    if backend == "sqlite":
                        shutil.rmtree(folder, ignore_errors=True)
            row = {"backend": backend, "n": args.n, "d": d,
                   "matrix_mib": args.n * d * 4 / 2**20}
            for key in ("write_s", "load_s", "first_load_s", "get10_s"):
                vals = [r[key] for r in res]
                row[key + "_best"] = min(vals)
                row[key + "_median"] = statistics.median(vals)
            rows.append(row)
            print(f"{backend:>10} {d:>3} {row['matrix_mib']:>5.0f} | "
                  f"{row['write_s_best']:8.2f}/{row['write_s_median']:6.2f}   | "
                  f"{row['load_s_best']:7.2f}/{row['load_s_median']:6.2f}   | "
                  f"{row['first_load_s_median']:14.2f} | "
                  f"{row['get10_s_best'] * 1e3:8.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
