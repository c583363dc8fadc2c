"""As-of feature encoding throughput: queries searched in sorted order vs unsorted.

Run: OMP_NUM_THREADS=1 python bench/asof_bench.py [n_events]
The "unsorted" figure patches events._query_order to answer "already sorted", which
sends the queries to np.searchsorted in their own (event) order as before this change.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.machine import cpu_model, load_1min  # noqa: E402
from dssm_core import encoding, events, synthetic  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    ds = synthetic.generate(n_users=max(1000, n // 25), n_items=max(200, n // 100),
                            n_interactions=n, seed=0)
    enc = encoding.FeatureEncoder().fit(ds, np.arange(n))
    rows = np.random.default_rng(0).permutation(n)        # unsorted queries, as training asks
    real = events._query_order
    for label, patch in (("sorted queries", real), ("unsorted queries", lambda k: None)):
        events._query_order = patch
        try:
            t = time.perf_counter()
            enc.transform_events(ds, rows)
            dt = time.perf_counter() - t
        finally:
            events._query_order = real
        print(f"{label}: {n:,} events in {dt:.2f} s = {n / dt:,.0f} events/s "
              f"(load {load_1min():.2f}, {cpu_model()}, 1 thread)")


if __name__ == "__main__":
    main()
