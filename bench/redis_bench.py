"""Redis serving: publish 1M user vectors, read them back, and check the served audience.

One process, threads pinned, a local Redis (``--redis``, default ``$DSSM_TEST_REDIS_URL``;
``.ci/redis.sh`` starts a private one). A SQLite store in a temporary folder holds one run
with N user vectors (default 1,000,000, d = 32) and 10,000 item vectors. ``--repeat`` times:

* vectors - ``serving.write_vectors`` of the N user vectors on one pipeline, executed
            (float32 bytes in 64k-row chunks and their ids): the issue's figure, goal <= 10 s;
* publish - ``serving.publish_run`` of the whole run (store read, users + items, tables,
            manifest switch): what ``python -m dssm_core publish`` does;
* load    - ``serving.load_run``: vectors and tables back from Redis into the exact index.

Then the check: for 5 items, the top 1,000 users served from Redis equal the store's ids
(``audience.audience_for``), in order. Usage:
    OMP_NUM_THREADS=1 python bench/redis_bench.py [--redis URL] [--n 1000000] [--dim 32]
        [--repeat 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from dssm_core import audience, serving  # noqa: E402
from dssm_core.store import Store  # noqa: E402
from machine import cpu_model, load_1min  # noqa: E402
from store_bench import tiny_dataset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", default=os.environ.get("DSSM_TEST_REDIS_URL"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not args.redis:
        ap.error("no Redis: give --redis URL or set DSSM_TEST_REDIS_URL (.ci/redis.sh)")
    client = serving.connect(args.redis)
    ns = f"bench-{os.getpid()}"
    rng = np.random.default_rng(0)
    uids = np.char.add("u", np.arange(args.n).astype(str))
    uvec = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    iids = np.char.add("i", np.arange(10_000).astype(str))
    ivec = rng.standard_normal((10_000, args.dim), dtype=np.float32)
    out: dict = {"cpu": cpu_model(), "n": args.n, "dim": args.dim,
                 "threads": os.environ["OMP_NUM_THREADS"], "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        did = store.add_dataset(tiny_dataset())
        rid = store.create_run(did, {"embedding_dim": args.dim})
        store.mark_running(rid)
        store.finish_run(rid, summary={}, weights=b"w", encoders={}, user_ids=uids,
                         user_vectors=uvec, item_ids=iids, item_vectors=ivec)
        try:
            for _ in range(args.repeat):
                row = {"load_before": load_1min()}
                t0 = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                serving.write_vectors(pipe, f"{ns}:raw", "user", uids, uvec)
                pipe.execute()
                row["vectors_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                serving.publish_run(store, client, rid, namespace=ns)
                row["publish_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                served = serving.load_run(client, rid, namespace=ns)
                row["load_s"] = time.perf_counter() - t0
                row["load_after"] = load_1min()
                out["rounds"].append(row)
                print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
            stored = audience.load_run(store, rid)
            same = []
            for item in ("i0", "i1", "i2", "i3", "i4"):
                req = audience.AudienceRequest(items=(item,), top_n=1000)
                a = audience.build_audience(served, req).members["user_id"].tolist()
                b = audience.build_audience(stored, req).members["user_id"].tolist()
                same.append(a == b and len(a) == 1000)
            out["served_equals_store"] = all(same)
        finally:
            keys = list(client.scan_iter(match=f"{ns}:*"))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
            store.dispose()
    for key in ("vectors_s", "publish_s", "load_s"):
        vals = [r[key] for r in out["rounds"]]
        out[key] = {"best": round(min(vals), 3), "median": round(statistics.median(vals), 3)}
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if out["served_equals_store"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
