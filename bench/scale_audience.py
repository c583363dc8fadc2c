"""Audiences at 10M users, ids past the old blob ceiling, and a 25M-interaction dataset.

Phases (each in its own fresh process, so that its peak RSS is its own):

* ``write``   - synthetic 10M users x 32 (unit float32, ids ``u0000001``...) plus a dataset of
                those users (gender, age band, occupation, zip as categoricals; one
                interaction per user over 5,000 items with genres): ``Store.finish_run``
                timed (goal <= 10 s), the dataset's ``add_dataset`` beside it.
              Then the run's audience tables (``audience.run_tables``, what training now
                computes from the dataset in memory) are computed and kept with the same run
                (``Store.save_run_tables``), both timed.
* ``open-dataset`` - a fresh process: the run opened as runs stored before schema 5 are
                (``load_run(use_run_tables=False)``: the first audience reads the dataset's
                user table and interactions, 10M text ids): the "before".
* ``open``    - a fresh process: ``audience.load_run`` (goal <= 5 s, <= 2.5 GB RSS above the
                vectors' own 1.28 GB); then a top-1 % audience with insights, the first (it
                reads the run's tables: integer codes) and warm ones (goal <= 0.5 s);
                then ``UserIndex.query`` vs ``faiss.IndexFlatIP.search`` on the same vectors in
                the same process (k = 1,000 and k = 1 %; goal ours <= faiss; ids compared).
                ``--profile``: a cProfile of the first audience (both open phases).
* ``uuids``   - 8M 36-character ids (the size whose one 1.15 GB id blob SQLite refused) x 8
                dims: write and read back; the largest stored value is printed.
* ``dataset`` - 25M interactions (162k users, 59k items, ML-25M's shape; categorical ids as
                the loader gives for large files): ``add_dataset``, the same again with
                ``reuse=True`` (recognised by content hash: nothing stored), ``load_dataset``.

Every figure is printed with the CPU model, the load average and the phase's peak RSS.
Threads pinned to 1 (numpy/OpenBLAS and faiss). Temporary files under ``--dir``
(default /work/tmp/aud10m), removed at the end unless ``--keep``.
Usage: python bench/scale_audience.py [--users 10000000]
       [--phases write open-dataset open uuids dataset] [--profile]
Benchmark-only dependency: ``faiss-cpu`` (``pip install faiss-cpu``); skipped when absent.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from machine import cpu_model, load_1min  # noqa: E402
from store_bench import tiny_dataset  # noqa: E402

DIM = 32
N_ITEMS = 5_000
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def rss_gb() -> float:
    """This process's resident memory now (GB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def say(what: str, **figures) -> None:
    """One result line: the figures, then the CPU seconds this process used since the last
    :func:`mark` (wall time on a shared machine runs ahead of it), the load average and the
    peak RSS."""
    shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    cpu = time.process_time()
    used = cpu - getattr(say, "last_cpu", 0.0)
    say.last_cpu = time.process_time()                   # the printing is not counted
    print(f"{what}: {shown} | cpu_s {used:.2f} s | load {load_1min()} | "
          f"peak RSS {peak_rss_gb():.2f} GB", flush=True)


def mark() -> None:
    """Start counting CPU seconds for the next :func:`say` line here."""
    say.last_cpu = time.process_time()


def numbered_ids(n: int, prefix: str = "u", digits: int = 7) -> np.ndarray:
    """``u0000000``, ``u0000001``... as a fixed-width unicode array, built from code points."""
    cp = np.empty((n, 1 + digits), dtype=np.uint32)
    cp[:, 0] = ord(prefix)
    k = np.arange(n)
    for j in range(digits):
        cp[:, digits - j] = ord("0") + (k // 10 ** j) % 10
    return cp.view(f"<U{1 + digits}").reshape(n)


def uuid_like_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """36-character ids shaped like UUIDs (8-4-4-4-12 hex digits), from code points."""
    hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8).astype(np.uint32)
    cp = hexd[rng.integers(0, 16, size=(n, 36), dtype=np.uint8)]
    cp[:, [8, 13, 18, 23]] = ord("-")
    return np.ascontiguousarray(cp).view("<U36").reshape(n)


def unit_vectors(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.standard_normal((n, d), dtype=np.float32)                        # (N, D)
    for s in range(0, n, 1 << 20):
        blk = m[s:s + (1 << 20)]
        blk /= np.sqrt(np.einsum("ij,ij->i", blk, blk))[:, None]
    return m


def categorical(codes: np.ndarray, labels: list[str] | np.ndarray) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=pd.Index(labels, dtype=object))


def audience_dataset(ids: np.ndarray, rng: np.random.Generator):
    """The run's users with attributes and one interaction each over N_ITEMS items."""
    from dssm_core.dataset import Dataset

    n = len(ids)
    cats = pd.Index(ids.astype(object))
    users = pd.DataFrame({
        "user_id": cats.to_numpy(),
        "gender": categorical(rng.integers(0, 2, n), ["F", "M"]),
        "age": categorical(rng.integers(0, 7, n),
                           ["Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]),
        "occupation": categorical(rng.integers(0, 21, n), [f"occ{j}" for j in range(21)]),
        "zip": categorical(rng.integers(0, 1000, n), [f"{j:05d}" for j in range(0, 100_000, 100)]),
    })
    item_ids = [f"i{j}" for j in range(N_ITEMS)]
    items = pd.DataFrame({
        "item_id": item_ids, "title": [f"Movie {j} (19{j % 100:02d})" for j in range(N_ITEMS)],
        "genres": [[GENRES[j % len(GENRES)], GENRES[(j * 7 + 3) % len(GENRES)]]
                   for j in range(N_ITEMS)]})
    inter = pd.DataFrame({
        "user_id": categorical(np.arange(n), cats),
        "item_id": categorical(rng.integers(0, N_ITEMS, n), item_ids),
        "rating": np.full(n, 4.0, np.float32),
        "timestamp": np.arange(n, dtype=np.int64)})
    return Dataset(interactions=inter, users=users, items=items, format="synthetic",
                   name="scale-audience", rating_scale=(1.0, 5.0))


def phase_write(url: str, n: int, out: Path) -> None:
    from dssm_core import store as store_mod
    from dssm_core.store import Store

    rng = np.random.default_rng(0)
    mark()
    t = time.perf_counter()
    uvec = unit_vectors(n, DIM, rng)
    ivec = unit_vectors(N_ITEMS, DIM, rng)
    ids = numbered_ids(n)
    ds = audience_dataset(ids, rng)
    say("synthetic data", users=n, dim=DIM, seconds=time.perf_counter() - t)
    st = Store(url)
    mark()
    t = time.perf_counter()
    did = st.add_dataset(ds)
    say(f"dataset of the run stored ({n:,} users, {n:,} interactions)",
        seconds=time.perf_counter() - t)
    from dssm_core import audience

    item_ids = np.array([f"i{j}" for j in range(N_ITEMS)])
    mark()
    t = time.perf_counter()
    tables = audience.run_tables(ds, ids, item_ids)
    say("audience tables computed from the dataset in memory (run_tables: training adds this)",
        seconds=time.perf_counter() - t,
        **{f"{k}_rows": len(v) for k, v in tables.items()})
    del ds
    rid = st.create_run(did, {"epochs": 1})
    st.mark_running(rid, pid=os.getpid())
    mark()
    t = time.perf_counter()
    st.finish_run(rid, summary={}, weights=b"w" * 1024, encoders={}, user_ids=ids,
                  user_vectors=uvec, item_ids=item_ids, item_vectors=ivec)
    write = time.perf_counter() - t
    say(f"store write (finish_run, {n:,} x {DIM} users + {N_ITEMS:,} items)", seconds=write,
        goal_s=10.0, met=write <= 10.0)
    mark()
    t = time.perf_counter()
    st.save_run_tables(rid, tables)
    say("audience tables kept with the run (save_run_tables)", seconds=time.perf_counter() - t,
        parquet_mb=largest_value(st, store_mod.RunTablePartRow.data) / 1e6)
    st.dispose()
    out.write_text(json.dumps({"run_id": rid, "write_s": write}))


def phase_open(url: str, run_id: int, k_small: int, *, use_run_tables: bool = True,
               profile: bool = False, out: Path | None = None) -> None:
    from dssm_core import audience
    from dssm_core.store import Store

    st = Store(url)
    base = rss_gb()
    mark()
    t = time.perf_counter()
    run = audience.load_run(st, run_id, use_run_tables=use_run_tables)
    open_s = time.perf_counter() - t
    vec_gb = run.index.columns_.nbytes / 1e9
    above = peak_rss_gb() - vec_gb
    say("open a run for audiences (load_run)", seconds=open_s, goal_s=5.0, met=open_s <= 5.0,
        rss_before_gb=base, vectors_gb=vec_gb, peak_above_vectors_gb=above,
        goal_above_gb=2.5, met_memory=above <= 2.5)
    items = ["i1", "i2", "i3", "i4", "i5", "i6"]
    first_from = ("the run's tables (codes)" if use_run_tables
                  else "the dataset's user table + interactions (text ids)")
    results = []
    for j, item in enumerate(items):
        req = audience.AudienceRequest(items=[item], percent=1.0,
                                       exclude_seen=j >= 3)
        prof = None
        if profile and j == 0:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        rss0 = rss_gb()
        mark()
        t = time.perf_counter()
        r = audience.build_audience(run, req)
        s = time.perf_counter() - t
        if prof is not None:
            prof.disable()
        label = f"first (reads {first_from})" if j == 0 else "warm"
        say(f"top-1% audience with insights, {label}, exclude_seen={req.exclude_seen}",
            seconds=s, members=r.size, insight_rows=len(r.insights), goal_s=0.5,
            met=s <= 0.5, rss_added_gb=rss_gb() - rss0)
        if prof is not None:
            import pstats

            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        results.append(r)
    if out is not None:                      # the audiences themselves, to compare the phases
        out.write_text(json.dumps([{
            "ids": r.members["user_id"].astype(str).tolist(),
            "scores": r.members["score"].round(7).tolist(),
            "insights": r.insights.astype(str).to_numpy().tolist(),
            "excluded": r.excluded} for r in results]))
    if not use_run_tables:
        return
    try:
        import faiss
    except ImportError:
        print("faiss-cpu is not installed: no comparison (pip install faiss-cpu)")
        return
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    flat = faiss.IndexFlatIP(run.index.dim)
    mark()
    t = time.perf_counter()
    flat.add(np.ascontiguousarray(run.index.matrix_))
    say("faiss IndexFlatIP add (from our (N, D) view)", seconds=time.perf_counter() - t)
    for k in (k_small, max(1, run.index.size // 100)):
        ours_t, faiss_t, same = [], [], True
        for _ in range(5):
            q = rng.standard_normal(run.index.dim).astype(np.float32)
            q /= np.linalg.norm(q)
            mark()
            t = time.perf_counter()
            s1, r1 = run.index.query_rows(q, k)
            ours_t.append(time.perf_counter() - t)
            mark()
            t = time.perf_counter()
            s2, r2 = flat.search(q[None, :], k)
            faiss_t.append(time.perf_counter() - t)
            same &= bool(np.array_equal(np.sort(r1[0]), np.sort(r2[0])))
        o, f = float(np.median(ours_t)), float(np.median(faiss_t))
        say(f"query top-{k} (median of 5)", ours_ms=o * 1e3, faiss_ms=f * 1e3,
            ratio=o / f, same_ids=same, met=o <= f)


def largest_value(st, column) -> int:
    """The longest value of a stored column, in bytes (SQLite refuses one over 1e9)."""
    from sqlalchemy import func, select

    with st.engine.connect() as conn:
        return int(conn.execute(select(func.max(func.length(column)))).scalar() or 0)


def phase_uuids(url: str, n: int) -> None:
    from dssm_core import store as store_mod
    from dssm_core.store import Store

    rng = np.random.default_rng(2)
    ids = uuid_like_ids(n, rng)
    vec = unit_vectors(n, 8, rng)
    old_blob = len(store_mod._ids_to_bytes(ids[:1000])) / 1000 * n
    st = Store(url)
    did = st.add_dataset(tiny_dataset())
    rid = st.create_run(did, {})
    mark()
    t = time.perf_counter()
    st.finish_run(rid, summary={}, weights=b"", encoders={}, user_ids=ids, user_vectors=vec,
                  item_ids=np.array(["i0"]), item_vectors=np.ones((1, 8), np.float32))
    write = time.perf_counter() - t
    big = largest_value(st, store_mod.EmbeddingIdChunkRow.data)
    say(f"{n:,} uuid-like 36-char ids x 8 dims stored", seconds=write,
        schema2_blob_gb=old_blob / 1e9, largest_id_chunk_mb=big / 1e6)
    mark()
    t = time.perf_counter()
    got, _ = st.load_embeddings(rid, "user")
    say("ids and vectors read back", seconds=time.perf_counter() - t,
        identical=bool(np.array_equal(got, ids)))
    st.dispose()


def phase_dataset(url: str, n: int) -> None:
    from dssm_core import store as store_mod
    from dssm_core.dataset import Dataset
    from dssm_core.store import Store

    rng = np.random.default_rng(3)
    n_users, n_items = 162_541, 59_047
    mark()
    t = time.perf_counter()
    user_ids = pd.Index([str(j + 1) for j in range(n_users)], dtype=object)
    item_ids = pd.Index([str(j + 1) for j in range(n_items)], dtype=object)
    item_pop = rng.zipf(1.3, n_items).astype(np.float64)
    item_pop /= item_pop.sum()
    inter = pd.DataFrame({
        "user_id": categorical(rng.integers(0, n_users, n), user_ids),
        "item_id": categorical(rng.choice(n_items, n, p=item_pop), item_ids),
        "rating": (rng.integers(1, 11, n) / 2).astype(np.float32),
        "timestamp": np.sort(rng.integers(789_652_009, 1_574_327_703, n)).astype(np.int64)})
    ds = Dataset(
        interactions=inter,
        users=pd.DataFrame({"user_id": user_ids.to_numpy()}),
        items=pd.DataFrame({"item_id": item_ids.to_numpy(),
                            "title": [f"Movie {j}" for j in range(n_items)],
                            "genres": [[GENRES[j % len(GENRES)]] for j in range(n_items)]}),
        format="ml-latest", name="ml-25m-shape")
    say(f"synthetic {n:,} interactions ({n_users:,} users, {n_items:,} items)",
        seconds=time.perf_counter() - t)
    st = Store(url)
    mark()
    t = time.perf_counter()
    did = st.add_dataset(ds, reuse=True)
    say("dataset stored (add_dataset, Parquet parts + content hash)",
        seconds=time.perf_counter() - t,
        largest_part_mb=largest_value(st, store_mod.DatasetPartRow.data) / 1e6,
        db_and_wal_mb=sum(p.stat().st_size for p in
                          Path(url.removeprefix("sqlite:///")).parent.glob("dataset.db*")) / 1e6)
    mark()
    t = time.perf_counter()
    again = st.add_dataset(ds, reuse=True)
    say("the same dataset again (add_dataset reuse=True)", seconds=time.perf_counter() - t,
        reused=again == did, datasets=len(st.list_datasets()))
    st.dispose()
    st = Store(url)
    mark()
    t = time.perf_counter()
    got = st.load_dataset(did)
    say("dataset loaded (load_dataset, fresh Store)", seconds=time.perf_counter() - t,
        rows=len(got.interactions),
        equal=bool(got.interactions["user_id"].astype(str).iloc[-1000:].tolist()
                   == inter["user_id"].astype(str).iloc[-1000:].tolist()))
    st.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000_000)
    ap.add_argument("--uuid-users", type=int, default=8_000_000)
    ap.add_argument("--interactions", type=int, default=25_000_000)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--phases", nargs="+",
                    default=["write", "open-dataset", "open", "uuids", "dataset"])
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the first audience of the open phases")
    ap.add_argument("--dir", default="/work/tmp/aud10m")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)   # child process
    ap.add_argument("--url", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-id", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return run_phase(args)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()} | {os.cpu_count()} cores | load {load_1min()} | threads 1")
    url = f"sqlite:///{folder / 'scale.db'}"
    state = folder / "write.json"
    try:
        for phase in args.phases:
            extra = []
            if phase in ("open", "open-dataset"):
                extra = ["--run-id", str(json.loads(state.read_text())["run_id"])]
                extra += ["--profile"] if args.profile else []
            if phase in ("uuids", "dataset"):
                extra = ["--url", f"sqlite:///{folder / (phase + '.db')}"]
            cmd = [sys.executable, __file__, "--phase", phase, "--users", str(args.users),
                   "--uuid-users", str(args.uuid_users), "--interactions",
                   str(args.interactions), "--k", str(args.k), "--dir", str(folder)]
            if "--url" not in extra:
                cmd += ["--url", url]
            print(f"--- phase {phase} (fresh process)", flush=True)
            rc = subprocess.run(cmd + extra).returncode
            if rc:
                print(f"phase {phase} failed with exit status {rc}")
                return rc
        got = [folder / f"audiences-{p}.json" for p in ("open-dataset", "open")]
        if all(p.exists() for p in got):
            same = json.loads(got[0].read_text()) == json.loads(got[1].read_text())
            print(f"audiences from the run's tables == from the dataset's tables (ids, scores, "
                  f"insights, exclusions of all 6): {same}")
    finally:
        if not args.keep:
            for p in [*folder.glob("*.db*"), *folder.glob("audiences-*.json")]:
                p.unlink()
            if state.exists():
                state.unlink()
    return 0


def run_phase(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if args.phase == "write":
        phase_write(args.url, args.users, folder / "write.json")
    elif args.phase in ("open", "open-dataset"):
        phase_open(args.url, args.run_id, args.k, use_run_tables=args.phase == "open",
                   profile=args.profile, out=folder / f"audiences-{args.phase}.json")
    elif args.phase == "uuids":
        phase_uuids(args.url, args.uuid_users)
    elif args.phase == "dataset":
        phase_dataset(args.url, args.interactions)
    else:
        raise SystemExit(f"unknown phase {args.phase!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
