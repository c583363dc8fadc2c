"""Evaluation's score-block size at 1M users: ``retrieval.BLOCK_BYTES`` (``--sizes``, MiB;
default 64 against 256), the validation/test question's cut-off counting (``evaluation._counts``, the model
scorer) in the run's 2 threads.

The question is ``bench/eval_rank_bench.py``'s (1M users x 47.2k items, 16M seen and 4M
future pairs, random unit vectors of 32, long-tailed items). Each direction's first
``--sample`` item queries (item->user) or ``--sample * 16`` user queries (user->item) are
counted at each block size, alternating, ``--rounds`` times; the counts must be equal.
Prints ms per query and the extrapolation to every query, with the CPU model and load.

Usage: python bench/eval_block_bench.py [--sample 512] [--rounds 2] [--threads 2]
       [--sizes 64 256]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_rank_bench import direction_parts, make_question, question_args  # noqa: E402
from bench.machine import cpu_model, load_1min  # noqa: E402
from dssm_core import evaluation, retrieval  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    question_args(p, 512)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256],
                   help="block sizes to compare, MiB (the first is the reference)")
    args = p.parse_args()
    q, model, _ = make_question(args)
    load0 = load_1min()
    print(f"CPU {cpu_model()}, {args.threads} threads; {args.users:,} users x {args.items:,} "
          f"items; load {load0}", flush=True)
    sizes = {f"{m} MiB": m * 2**20 for m in args.sizes}
    chunk_rows = retrieval.chunk_rows
    for direction in evaluation.DIRECTIONS:
        rel, seen, ok, queries, hit_ks, sample = direction_parts(q, direction, args.sample)
        times: dict[str, list[float]] = {k: [] for k in sizes}
        counts = {}
        for r in range(args.rounds):
            for name in (list(sizes) if r % 2 == 0 else list(sizes)[::-1]):
                # (chunk_rows' default is bound when it is defined: pass the size instead)
                retrieval.chunk_rows = (lambda n, block_bytes=sizes[name]:
                                        chunk_rows(n, block_bytes))
                t = time.perf_counter()
                counts[name] = evaluation._counts(model, direction, sample, rel, seen, ok,
                                                  evaluation.KS, hit_ks, threads=args.threads)
                times[name].append(time.perf_counter() - t)
        first = counts[next(iter(sizes))]
        same = all(np.array_equal(first[k], c[k]) for c in counts.values() for k in first)
        line = ", ".join(
            f"{name}: {1e3 * min(v) / len(sample):.3f} ms/query "
            f"({min(v) * len(queries) / len(sample):.0f} s for all {len(queries):,})"
            for name, v in times.items())
        print(f"  {direction}: {line}; same counts: {same}", flush=True)
    print(f"load {load0} -> {load_1min()}")


if __name__ == "__main__":
    main()
