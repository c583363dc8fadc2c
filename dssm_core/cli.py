"""``python -m dssm_core ...``: a thin argparse layer over the engine.

The description shown by ``--help`` is :data:`DESCRIPTION`.

Exit codes: 0 success, 2 bad input or usage (one clear line on stderr, no traceback),
1 anything unexpected. Each sub-command's handler lives here and calls one engine function.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn, Sequence, TextIO

from .dataset import DataValidationError, shorten

log = logging.getLogger(__name__)


DESCRIPTION = (
    "Audience explorer from the command line: check a MovieLens-style dataset (inspect), train "
    "a two-tower model on it (train), list the stored runs (runs), draw their maps (project), "
    "and export the users most similar to an item (audience) or to a list of users "
    "(lookalike) as CSV. The store is the one the app uses: $DSSM_DB_URL, else "
    "data/dssm.db.")


class CliError(Exception):
    """A usage problem the person can fix; printed as one line, exit code 2."""


#: The longest error line printed (the messages shorten what they repeat; this is the net).
MAX_ERROR_CHARS = 2000


def _one_line(message: object) -> str:
    """``message`` as one line of at most ``MAX_ERROR_CHARS`` characters."""
    text = " ".join(str(message).splitlines()).strip()
    return shorten(text, MAX_ERROR_CHARS) if len(text) > MAX_ERROR_CHARS else text


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one ``error:`` line (exit code 2) like every other."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {_one_line(message)} (see {self.prog} --help)\n")


def _json_object(text: str, flag: str, example: str) -> dict:
    """``text`` parsed as a JSON object; ``CliError`` naming ``flag`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise CliError(f"{flag} must be a JSON object like {example}")
    return value


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Load DATA (any supported layout) and print ``Dataset.summary()`` as one JSON line."""
    from . import io

    mapping = None
    if args.mapping:
        spec = _json_object(args.mapping, "--mapping", '{"user": "u", "item": "i"}')
        try:
            mapping = io.ColumnMapping.from_dict(spec)
        except ValueError as exc:
            raise CliError(f"--mapping: {exc}") from None
    ds = io.load(args.data, mapping=mapping)
    print(json.dumps(ds.summary()))
    for w in ds.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    """UMAP maps of a stored run's embeddings, saved in the store (one JSON line per map)."""
    from . import projector

    store = _open_store(args.db, must_exist=True)
    run_id = args.run
    if run_id is None:
        run_id = store.newest_succeeded_run()
        if run_id is None:
            raise CliError("no succeeded run in the store; train one first")
    # The first call in a fresh process compiles umap's numba code (~30 s) before projecting.
    print(json.dumps({"run_id": int(run_id), "stage": "started"}), flush=True)

    def report(kind: str, params: dict) -> None:
        print(json.dumps({"run_id": int(run_id), "stage": "stored", "kind": kind, **params}),
              flush=True)

    # by the store's warm projection worker when one is up (no compilation), else here
    projector.project(store, int(run_id), kinds=tuple(args.kinds), max_points=args.max_points,
                      seed=args.seed, on_progress=report)
    print(json.dumps({"run_id": int(run_id), "stage": "done"}), flush=True)
    return 0


def _cmd_projector(args: argparse.Namespace) -> int:
    """The store's long-lived projection worker (started by the app's training jobs)."""
    from . import projector
    from .store import default_url

    def emit(event: dict) -> None:
        print(json.dumps(event), flush=True)

    projector.serve(args.db or default_url(), warm=not args.no_warm_up,
                    idle_s=args.idle_s, emit=emit)
    return 0


# --- train ------------------------------------------------------------------------------------
#: stderr not a terminal (a log file): a progress line at each stage's start and end and at
#: most this often (seconds) in between.
PROGRESS_LINE_S = 5.0
#: stderr a terminal: the bar is redrawn at most this often (seconds).
PROGRESS_BAR_S = 0.1
#: Characters of the bar.
PROGRESS_BAR_WIDTH = 24


class _ProgressPrinter:
    """A training's progress (``dssm_core.progress``) on stderr: one bar redrawn in place
    when stderr is a terminal, else a line now and then (``PROGRESS_LINE_S``; a stage's first
line once some of it is done, and its last). Whole lines
    (an epoch's figures) go through :meth:`line`, above the bar. stdout is never touched."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from .progress import Throttled

        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if isatty is not None else False
        self.tty = tty
        self._drawn = False         # a bar is on the terminal's current line
        self._said: tuple[str, str] | None = None   # (stage, percent) of the last log line
        self._show = Throttled(self._draw, PROGRESS_BAR_S if tty else PROGRESS_LINE_S, clock)

    def __call__(self, stage: str, fraction: float, message: str | None = None) -> None:
        if fraction > 0.0 or self.tty:   # a log gets no "0 %" line (nor one before an error)
            self._show(stage, fraction, message)

    def _draw(self, stage: str, fraction: float, message: str | None) -> None:
        from .progress import STAGES, stage_label, stage_number

        text = (f"{stage_label(stage)} {100 * fraction:3.0f}% (stage {stage_number(stage)}/"
                f"{len(STAGES)})" + (f": {message}" if message else ""))
        if self.tty:
            filled = int(round(fraction * PROGRESS_BAR_WIDTH))
            bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")    # \x1b[K: clear to the line's end
            self._drawn = True
        else:
            said = (stage, f"{100 * fraction:3.0f}")
            if said == self._said:          # a log line only when the percent moved
                return
            self._said = said
            self.stream.write(f"progress: {text}\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """Print a whole line (above the bar, which the next report redraws)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (terminal only)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _train_config(args: argparse.Namespace):  # -> TrainConfig
    """The preset, then ``--config-json`` overrides, then the explicit flags."""
    from .config import PRESETS, TrainConfig

    if args.preset not in PRESETS:
        raise CliError(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    cfg = PRESETS[args.preset].to_dict()
    if args.config_json:
        cfg.update(_json_object(args.config_json, "--config-json", '{"epochs": 5}'))
    for flag, key in (("objective", "objective"), ("protocol", "protocol"),
                      ("epochs", "epochs"), ("seed", "seed"), ("threads", "num_threads"),
                      ("precision", "precision")):
        value = getattr(args, flag)
        if value is not None:
            cfg[key] = value
    try:
        return TrainConfig.from_dict(cfg)
    except ValueError as exc:
        where = "--config-json" if args.config_json else "the training options"
        raise CliError(f"{where}: {exc}") from None


def _train_dataset(args: argparse.Namespace):  # -> Dataset
    if args.data:
        from . import io

        ds = io.load(args.data)
        for w in ds.warnings:  # the same repairs `inspect` reports (trailing columns, BOM...)
            print(f"warning: {w}", file=sys.stderr)
        return ds
    from . import synthetic

    return synthetic.generate()


def _check_writable(path: str, flag: str) -> None:
    """Refuse an output path whose folder is missing before any work is done."""
    folder = Path(path).expanduser().parent
    if not folder.is_dir():
        raise CliError(f"{flag}: the folder {shorten(folder, 160)} does not exist")


def _train_target(args: argparse.Namespace, cfg):  # -> (Store, dataset id)
    """The store and the dataset a ``train --db`` trains, with everything checked first.

    DATA is read and validated, and the config tried on it (``pipeline.split``), before the
    store is even opened; a ``--run-id`` must name a queued run and a ``--dataset-id`` a
    stored dataset. Only then is the dataset added, so bad input leaves the store as it was.
    """
    from . import pipeline
    from .store import ACTIVE_STATUSES

    if args.data and args.dataset_id is not None:
        raise CliError("give DATA or --dataset-id, not both")
    if args.data and args.run_id is not None:
        raise CliError("--run-id trains a queued run of a stored dataset: give --dataset-id, "
                       "not DATA")
    dataset = None
    if args.dataset_id is None:
        dataset = _train_dataset(args)
        pipeline.split(dataset, cfg)  # data the config cannot split: refused, nothing stored
    store = _open_store(args.db, must_exist=args.dataset_id is not None or
                        args.run_id is not None)
    if args.run_id is not None:
        run = store.get_run(int(args.run_id))  # StoreError: no run with that id
        if run["status"] not in ACTIVE_STATUSES:
            raise CliError(f"run {args.run_id} is {run['status']}; only a queued run can be "
                           "trained (start a new run without --run-id)")
        if args.dataset_id is not None and int(run["dataset_id"]) != int(args.dataset_id):
            raise CliError(f"run {args.run_id} belongs to dataset {run['dataset_id']}, "
                           f"not {args.dataset_id}")
    if dataset is None:
        store.get_dataset(int(args.dataset_id))  # StoreError: no dataset with that id
        if args.run_id is None:
            pipeline.split(store.load_dataset(int(args.dataset_id)), cfg)
        return store, int(args.dataset_id)
    known = {d.id for d in store.list_datasets()}
    dataset_id = store.add_dataset(dataset, reuse=True)
    if dataset_id in known:  # the same data again: train on the stored copy
        print(f"note: this data is already stored as dataset {dataset_id} "
              f"({store.get_dataset(dataset_id).name}); training on it", file=sys.stderr)
    return store, dataset_id


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a DSSM; one progress line per epoch on stderr, the summary JSON on stdout."""
    from . import distributed

    if args.workers < 1:
        raise CliError("--workers must be >= 1")
    if args.workers > 1 and distributed.env_world() is None:   # launch the ranks
        import subprocess

        cmd = distributed.torchrun_command(args.workers, distributed.without_workers(args.argv))
        return subprocess.call(cmd)
    dist = distributed.init()
    if dist.active:     # torchrun stops the other ranks with SIGTERM: fail the run, cleanly
        import signal

        def _terminated(signum: int, frame: object) -> None:
            raise SystemExit(f"training rank {dist.rank} stopped by signal {signum} "
                             "(another rank failed)")

        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _train_ranked(args, dist)
    finally:
        distributed.teardown(dist)


def _train_ranked(args: argparse.Namespace, dist) -> int:  # dist: distributed.DistContext
    from . import pipeline

    cfg = _train_config(args)
    if not dist.is_main:    # a helper rank: train its slices, store and print nothing
        if args.db:
            dataset_id = dist.broadcast_decision(0)[0]
            dataset = _open_store(args.db, must_exist=True).load_dataset(dataset_id)
        else:
            dataset = _train_dataset(args)
        try:
            pipeline.train(dataset, cfg, dist=dist)
        except pipeline.TrainingCancelled:
            return 3
        dist.barrier()          # rank 0 has stored the run
        return 0

    shown = _ProgressPrinter()

    def on_epoch(rec: dict) -> None:
        def f(key: str) -> str:
            v = rec.get(key)
            return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

        recall = (f" val_recall@50 {f('val_recall@50')}"
                  if rec.get("val_recall@50") is not None else "")
        trial = (f"trial {rec['trial']}/{len(pipeline.TUNE_SPACES[cfg.tune])} "
                 if rec.get("trial") else "")
        epoch = rec.get("trial_epoch", rec["epoch"])
        shown.line(f"{trial}epoch {epoch}/{cfg.epochs} loss {f('train_loss')} "
                   f"train_auc {f('train_auc')} val_auc {f('val_auc')} "
                   f"val_logloss {f('val_logloss')}{recall} {rec.get('seconds', 0.0):.2f}s")

    try:
        if args.report:
            _check_writable(args.report, "--report")
        if args.db:
            if args.data:
                shown("load", 0.0, "reading DATA")
            store, dataset_id = _train_target(args, cfg)
            dist.broadcast_decision(int(dataset_id))       # the helper ranks load it too
            run_id = pipeline.run_training(
                store, int(dataset_id), cfg, run_id=args.run_id, on_epoch_end=on_epoch,
                project=not args.no_project and not dist.active, dist=dist, progress=shown)
            if dist.active:     # release the helper ranks before the maps, then draw them
                dist.barrier()
                if not args.no_project:
                    from . import projector

                    try:
                        projector.project(store, run_id)
                    except Exception:  # noqa: BLE001 - maps are optional, the run stands
                        logging.getLogger(__name__).exception(
                            "run %d: computing the embedding maps failed", run_id)
            summary = store.get_run(run_id).summary
            out = {"run_id": run_id, "dataset_id": int(dataset_id), **summary}
        else:
            if args.dataset_id is not None or args.run_id is not None:
                raise CliError("--dataset-id and --run-id need --db")
            shown("load", 0.0, "reading DATA" if args.data else "the synthetic demo")
            dataset = _train_dataset(args)
            shown("load", 1.0)
            result = pipeline.train(dataset, cfg, on_epoch_end=on_epoch, dist=dist,
                                    progress=shown)
            dist.barrier()
            run_id, summary = None, result.summary
            out = {"run_id": None, **summary}
    except pipeline.TrainingCancelled:
        shown.close()
        print("error: training cancelled", file=sys.stderr)
        return 3
    finally:
        shown.close()
    print(json.dumps(out, default=str))
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(pipeline.report(summary, run_id), fh, indent=2, default=str)
    return 0


def _add_train_parser(sub) -> None:  # sub: argparse._SubParsersAction
    from .config import PRESETS

    sp = sub.add_parser("train", help="train a DSSM and print its honest metrics as JSON")
    sp.add_argument("data", nargs="?", default=None,
                    help="a folder, .zip or file (default: the synthetic demo dataset)")
    sp.add_argument("--db", default=None,
                    help="store URL: store the run there (default: train in memory only)")
    sp.add_argument("--dataset-id", type=int, default=None, help="a stored dataset (with --db)")
    sp.add_argument("--run-id", type=int, default=None, help="a queued run to execute (with --db)")
    # listed, not argparse choices: a wrong name is then the usual one-line "error:" (exit 2)
    sp.add_argument("--preset", default="audience", metavar="{" + ",".join(PRESETS) + "}",
                    help="starting settings: audience (the default, as in the app: will they "
                         "interact, judged by recall under protocol A), default (will they like "
                         "it: AUC/logloss) or article (the original article's sizes, for "
                         "comparison)")
    sp.add_argument("--objective", "--loss", dest="objective", default=None,
                    choices=("pointwise", "inbatch"))
    sp.add_argument("--protocol", default=None, choices=("A", "L", "T"),
                    help="A: the past 80%% of interactions vs the future, targetable users "
                         "only (the audience preset's); L: per user the last interaction; "
                         "T: time split 80/20 over everyone (the other presets')")
    sp.add_argument("--epochs", type=int, default=None,
                    help="most passes over the training rows (default: the preset's); training "
                         "may stop earlier when validation stops improving")
    sp.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    sp.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    sp.add_argument("--precision", default=None, choices=("auto", "float32", "bfloat16"),
                    help="the towers' matrix products while training (default auto: bfloat16 "
                         "where the CPU has it natively)")
    sp.add_argument("--config-json", default=None, metavar="JSON",
                    help="TrainConfig fields overriding the preset, e.g. '{\"epochs\": 5}'")
    sp.add_argument("--no-project", action="store_true",
                    help="with --db: skip computing the UMAP maps after training")
    sp.add_argument("--report", default=None, metavar="FILE",
                    help="also write a nested JSON report to FILE")
    sp.add_argument("--workers", type=int, default=1,
                    help="local training processes (torch.distributed data parallel: gloo on "
                         "CPU, NCCL on CUDA); above 1 starts them with torchrun (default 1)")
    sp.set_defaults(func=_cmd_train)


# --- runs / audience / lookalike (stored runs and audiences) ---------------------------------
def _masked(url: str) -> str:
    """``url`` with any password hidden (``urls.masked_url``)."""
    from .urls import masked_url

    return masked_url(url)


def _scrubbed(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ***."""
    from .urls import scrubbed, url_password

    return scrubbed(text, url_password(url))


def _require_store(url: str) -> None:
    """Refuse a store that does not exist yet, without creating it (for commands that only
    read, or that name a stored run or dataset): a mistyped ``--db`` is an error, not an
    empty store that answers "no runs"."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    u = make_url(url)
    shown = _masked(url)
    if u.get_backend_name() == "sqlite":
        if u.database in (None, "", ":memory:"):
            raise CliError(f"{shown} is an in-memory database: it holds no store")
        path = Path(u.database).expanduser()
        if not path.is_file():
            raise CliError(f"no store at {shorten(path, 160)}: the file does not exist (check "
                           "--db or $DSSM_DB_URL; `train DATA --db URL` creates a store)")
    engine = create_engine(url)
    try:
        has_runs = inspect(engine).has_table("runs")
    finally:
        engine.dispose()
    if not has_runs:
        raise CliError(f"{shown} holds no store (no 'runs' table); check --db or $DSSM_DB_URL")


def _open_store(url: str | None, *, must_exist: bool = False):  # -> Store
    """The store at ``url`` (default ``Store.default_url()``); a bad URL is a usage error.

    ``must_exist``: refuse (``CliError``) a store that is not there instead of creating it.
    Messages never show the database password.
    """
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from .store import Store

    target = url or Store.default_url()
    try:
        if must_exist:
            _require_store(target)
        return Store(target)
    except (ArgumentError, SQLAlchemyError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CliError(f"cannot open the store at {_masked(target)}: "
                       f"{_scrubbed(first, target)}") from None


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _cmd_runs(args: argparse.Namespace) -> int:
    """A table of the stored runs, newest first (``--json``: one JSON object per line)."""
    store = _open_store(args.db, must_exist=True)
    runs = store.list_runs(dataset_id=args.dataset)
    if args.json:
        for r in runs:
            print(json.dumps(r.to_dict(), default=str))
        return 0
    header = ["id", "status", "dataset", "preset", "objective", "protocol", "epochs",
              "duration", "test_auc", "created (UTC)"]
    rows = []
    for r in runs:
        auc = r.summary.get("test_auc")
        rows.append([
            str(r.id), str(r.status), str(r.dataset_name), str(r.preset), str(r.objective),
            str(r.protocol), f"{r.epoch}/{r.epochs_total}", _fmt_duration(r.duration_s),
            f"{auc:.4f}" if isinstance(auc, (int, float)) else "-",
            r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "-",
        ])
    if not rows:
        print("no runs stored yet")
        return 0
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _parse_where(items: Sequence[str] | None) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for item in items or []:
        attr, sep, value = item.partition("=")
        if not sep or not attr.strip():
            raise CliError(f"--where needs attr=value, got {item!r}")
        where.setdefault(attr.strip(), []).append(value.strip())
    return where


def _parse_ranges(items: Sequence[str] | None) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}
    for item in items or []:
        attr, sep, span = item.partition("=")
        lo, colon, hi = span.partition(":")
        try:
            if not sep or not colon or not attr.strip():
                raise ValueError
            ranges[attr.strip()] = (float(lo), float(hi))
        except ValueError:
            raise CliError(f"--range needs attr=low:high with two numbers, got {item!r}") from None
    return ranges


def _write_audience(args: argparse.Namespace, request) -> int:  # request: AudienceRequest
    from . import audience

    _check_writable(args.out, "--out")
    if getattr(args, "redis", None):
        from . import serving

        result = serving.audience_for(serving.connect(args.redis), args.run, request,
                                      namespace=args.namespace)
    else:
        store = _open_store(args.db, must_exist=True)
        result = audience.audience_for(store, args.run, request)
    data = result.to_csv_bytes()
    with open(args.out, "wb") as fh:
        fh.write(data)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(json.dumps({"run_id": result.run_id, "size": result.size,
                      "requested": result.requested, "eligible": result.eligible,
                      "population": result.population, "threshold": round(result.threshold, 6),
                      "excluded": result.excluded, "n_below_zero": result.n_below_zero,
                      "out": str(args.out)}))
    return 0


def _cmd_audience(args: argparse.Namespace) -> int:
    """Top users for one item or a campaign of items, written as CSV."""
    from . import audience

    request = audience.AudienceRequest(
        items=tuple(args.item), top_n=args.top, percent=args.percent,
        exclude_seen=args.exclude_seen, where=_parse_where(args.where),
        ranges=_parse_ranges(args.ranges), min_score=args.min_score)
    return _write_audience(args, request)


def _cmd_lookalike(args: argparse.Namespace) -> int:
    """Users most like a seed list (seeds excluded), written as CSV."""
    from . import audience

    from .io import read_regular_file

    seeds = audience.read_user_ids(read_regular_file(args.users), file=args.users)
    if not seeds:
        raise CliError(f"{args.users}: the seed list is empty")
    request = audience.AudienceRequest(
        seed_users=tuple(seeds), top_n=args.top, percent=args.percent,
        where=_parse_where(args.where), ranges=_parse_ranges(args.ranges),
        min_score=args.min_score)
    return _write_audience(args, request)


DB_HELP = "store URL (default: $DSSM_DB_URL or data/dssm.db)"


def _cmd_publish(args: argparse.Namespace) -> int:
    """Publish a run's vectors (and with --audiences its saved audiences) to Redis."""
    from . import serving

    client = serving.connect(args.redis)
    store = _open_store(args.db, must_exist=True)
    report = serving.publish_run(store, client, args.run, audiences=args.audiences,
                                 namespace=args.namespace)
    print(json.dumps({**report.to_dict(), "redis": _masked(args.redis)}))
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    """Compute and keep the audience tables of runs stored without them (one JSON line)."""
    from . import audience

    store = _open_store(args.db, must_exist=True)
    if args.run is not None:
        ids = [int(args.run)]
    else:
        ids = [r.id for r in store.list_runs() if r.succeeded]

    def say(stage: str, fraction: float, message: str | None = None) -> None:
        print(f"progress: {message}", file=sys.stderr, flush=True)

    done, had = [], []
    for rid in sorted(ids):
        try:
            (done if audience.backfill_run_tables(store, rid, progress=say) else had).append(rid)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    print(json.dumps({"backfilled": done, "already_had_tables": had}))
    return 0


REDIS_HELP = ("Redis URL, e.g. redis://localhost:6379/0 (password: in the URL or "
              "$DSSM_REDIS_PASSWORD / $REDISCLI_AUTH; never printed)")


def _add_audience_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--db", default=None, help=DB_HELP)
    sp.add_argument("--redis", default=None, metavar="URL",
                    help="answer from the run's vectors published in Redis instead of the "
                         "store (`publish`); " + REDIS_HELP)
    sp.add_argument("--namespace", default="dssm", help="Redis key namespace (default dssm)")
    sp.add_argument("--run", type=int, default=None, help="run id (default: newest succeeded)")
    size = sp.add_mutually_exclusive_group(required=True)
    size.add_argument("--top", type=int, help="audience size N (clamped to the eligible users)")
    size.add_argument("--percent", type=float, help="audience size as %% of all users")
    sp.add_argument("--where", action="append", metavar="ATTR=VALUE",
                    help="keep users with this attribute value (repeat; same ATTR = any of)")
    sp.add_argument("--range", action="append", metavar="ATTR=LOW:HIGH", dest="ranges",
                    help="keep users whose numeric attribute is within LOW..HIGH (inclusive)")
    sp.add_argument("--min-score", type=float, default=None, metavar="COSINE",
                    help="leave out users scoring below this similarity (e.g. 0: only users "
                         "whose taste leans towards the query)")
    sp.add_argument("--out", required=True, help="CSV file to write")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m dssm_core", description=DESCRIPTION)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("inspect",
                        help="sniff a MovieLens-style file/folder/zip, print a JSON summary")
    sp.add_argument("data", help="a folder, a .zip or a file")
    sp.add_argument("--mapping", metavar="JSON", default=None,
                    help='column mapping for a generic table, e.g. '
                         '\'{"user": "customer", "item": "sku", "rating": "stars"}\'')
    sp.set_defaults(func=_cmd_inspect)

    sp = sub.add_parser("project", help="compute and store the UMAP maps of a run's embeddings")
    sp.add_argument("--db", default=None, help=DB_HELP)
    sp.add_argument("--run", type=int, default=None, help="run id (default: newest succeeded)")
    sp.add_argument("--kinds", nargs="+", choices=("user", "item"), default=["user", "item"])
    sp.add_argument("--max-points", type=int, default=50_000,
                    help="above this many vectors a seeded random sample is projected")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=_cmd_project)

    sp = sub.add_parser("projector", help="keep umap compiled and compute maps as runs ask "
                                          "(the app starts it with each training)")
    sp.add_argument("--db", default=None,
                    help="store URL (default: $DSSM_DB_URL, else sqlite:///data/dssm.db)")
    sp.add_argument("--idle-s", type=float, default=1800.0,
                    help="exit after this many seconds with no request and no training")
    sp.add_argument("--no-warm-up", action="store_true",
                    help="do not compile umap before the first request")
    sp.set_defaults(func=_cmd_projector)

    _add_train_parser(sub)

    sp = sub.add_parser("runs", help="table of the stored training runs")
    sp.add_argument("--db", default=None, help=DB_HELP)
    sp.add_argument("--dataset", type=int, default=None, help="only runs of this dataset id")
    sp.add_argument("--json", action="store_true", help="one JSON object per run")
    sp.set_defaults(func=_cmd_runs)

    sp = sub.add_parser("backfill-tables",
                        help="compute and keep the audience tables of runs stored without "
                             "them (before schema 5): their audiences then open fast")
    sp.add_argument("--db", default=None, help=DB_HELP)
    sp.add_argument("--run", type=int, default=None,
                    help="only this run (default: every succeeded run lacking them)")
    sp.set_defaults(func=_cmd_backfill)

    sp = sub.add_parser("publish", help="write a run's user and item vectors (and saved "
                        "audiences) to Redis for serving")
    sp.add_argument("--redis", required=True, metavar="URL", help=REDIS_HELP)
    sp.add_argument("--db", default=None, help=DB_HELP)
    sp.add_argument("--run", type=int, default=None, help="run id (default: newest succeeded)")
    sp.add_argument("--audiences", action="store_true", help="also the run's saved audiences")
    sp.add_argument("--namespace", default="dssm", help="Redis key namespace (default dssm)")
    sp.set_defaults(func=_cmd_publish)

    sp = sub.add_parser("audience", help="top users for one item or several, as CSV")
    sp.add_argument("--item", action="append", required=True, help="item id (repeat for several)")
    from .audience import DEFAULT_EXCLUDE_SEEN

    seen = sp.add_mutually_exclusive_group()
    seen.add_argument("--exclude-seen", dest="exclude_seen", action="store_true",
                      default=DEFAULT_EXCLUDE_SEEN,
                      help="leave out users who already interacted with the item(s) (the "
                           "default, as in the app)")
    seen.add_argument("--include-seen", dest="exclude_seen", action="store_false",
                      help="keep users who already interacted with the item(s)")
    _add_audience_args(sp)
    sp.set_defaults(func=_cmd_audience)

    sp = sub.add_parser("lookalike", help="users most like a seed list of users, as CSV")
    sp.add_argument("--users", required=True,
                    help="seed user ids: one per line, or a CSV with a user_id column")
    _add_audience_args(sp)
    sp.set_defaults(func=_cmd_lookalike)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (DataValidationError, CliError, ValueError, OSError, KeyError) as exc:
        # OSError: a missing, unreadable or unwritable file (--users, --out, --report)
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
