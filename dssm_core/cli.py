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
from typing import Callable, Sequence

from .dataset import DataValidationError

log = logging.getLogger(__name__)


DESCRIPTION = (
    "Audience explorer from the command line: check a MovieLens-style dataset (inspect), train "
    "a two-tower model on it (train), list the stored runs (runs), draw their maps (project), "
    "and export the users most similar to an item (audience) or to a list of users "
    "(lookalike) as CSV. The store is the one the app uses: $DSSM_DB_URL, else "
    "data/dssm.db.")


class CliError(Exception):
    """A usage problem the person can fix; printed as one line, exit code 2."""


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
    from . import movielens

    mapping = None
    if args.mapping:
        spec = _json_object(args.mapping, "--mapping", '{"user": "u", "item": "i"}')
        mapping = movielens.ColumnMapping.from_dict(spec)
    ds = movielens.load(args.data, mapping=mapping)
    print(json.dumps(ds.summary()))
    for w in ds.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    """UMAP maps of a stored run's embeddings, saved in the store (one JSON line per map)."""
    from . import projection

    store = _open_store(args.db)
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

    projection.project_run(store, int(run_id), kinds=tuple(args.kinds),
                           max_points=args.max_points, seed=args.seed, on_progress=report)
    print(json.dumps({"run_id": int(run_id), "stage": "done"}), flush=True)
    return 0


# --- train ------------------------------------------------------------------------------------
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
    return TrainConfig.from_dict(cfg)


def _train_dataset(args: argparse.Namespace):  # -> Dataset
    if args.data:
        from . import movielens

        ds = movielens.load(args.data)
        for w in ds.warnings:  # the same repairs `inspect` reports (trailing columns, BOM...)
            print(f"warning: {w}", file=sys.stderr)
        return ds
    from . import synthetic

    return synthetic.generate()


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a DSSM; one progress line per epoch on stderr, the summary JSON on stdout."""
    from . import pipeline

    cfg = _train_config(args)

    def on_epoch(rec: dict) -> None:
        def f(key: str) -> str:
            v = rec.get(key)
            return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

        print(f"epoch {rec['epoch']}/{cfg.epochs} loss {f('train_loss')} "
              f"train_auc {f('train_auc')} val_auc {f('val_auc')} "
              f"val_logloss {f('val_logloss')} {rec.get('seconds', 0.0):.2f}s",
              file=sys.stderr, flush=True)

    try:
        if args.db:
            if args.data and args.dataset_id is not None:
                raise CliError("give DATA or --dataset-id, not both")
            store = _open_store(args.db)
            dataset_id = args.dataset_id
            if dataset_id is None:
                known = {d.id for d in store.list_datasets()}
                dataset_id = store.add_dataset(_train_dataset(args), reuse=True)
                if dataset_id in known:  # the same data again: train on the stored copy
                    print(f"note: this data is already stored as dataset {dataset_id} "
                          f"({store.get_dataset(dataset_id).name}); training on it",
                          file=sys.stderr)
            run_id = pipeline.run_training(store, int(dataset_id), cfg, run_id=args.run_id,
                                           on_epoch_end=on_epoch, project=not args.no_project)
            summary = store.get_run(run_id).summary
            out = {"run_id": run_id, "dataset_id": int(dataset_id), **summary}
        else:
            if args.dataset_id is not None or args.run_id is not None:
                raise CliError("--dataset-id and --run-id need --db")
            result = pipeline.train(_train_dataset(args), cfg, on_epoch_end=on_epoch)
            run_id, summary = None, result.summary
            out = {"run_id": None, **summary}
    except pipeline.TrainingCancelled:
        print("error: training cancelled", file=sys.stderr)
        return 3
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
    sp.add_argument("--preset", default="default", metavar="{" + ",".join(PRESETS) + "}",
                    help="starting settings: default (will they like it), audience (will they "
                         "interact: the app's choice for audiences) or article (the original "
                         "article's sizes, for comparison)")
    sp.add_argument("--objective", "--loss", dest="objective", default=None,
                    choices=("pointwise", "inbatch"))
    sp.add_argument("--protocol", default=None, choices=("T", "L"),
                    help="T: time split 80/20 (default); L: per user the last interaction")
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
    sp.set_defaults(func=_cmd_train)


# --- runs / audience / lookalike (stored runs and audiences) ---------------------------------
def _open_store(url: str | None):  # -> Store
    """The store at ``url`` (default ``Store.default_url()``); a bad URL is a usage error."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from .store import Store

    target = url or Store.default_url()
    try:
        return Store(target)
    except (ArgumentError, SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot open the store at {target}: {first}") from exc


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _cmd_runs(args: argparse.Namespace) -> int:
    """A table of the stored runs, newest first (``--json``: one JSON object per line)."""
    store = _open_store(args.db)
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

    store = _open_store(args.db)
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

    with open(args.users, "rb") as fh:
        seeds = audience.read_user_ids(fh.read())
    if not seeds:
        raise CliError(f"{args.users}: the seed list is empty")
    request = audience.AudienceRequest(
        seed_users=tuple(seeds), top_n=args.top, percent=args.percent,
        where=_parse_where(args.where), ranges=_parse_ranges(args.ranges),
        min_score=args.min_score)
    return _write_audience(args, request)


DB_HELP = "store URL (default: $DSSM_DB_URL or data/dssm.db)"


def _add_audience_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--db", default=None, help=DB_HELP)
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
    p = argparse.ArgumentParser(prog="python -m dssm_core", description=DESCRIPTION)
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

    _add_train_parser(sub)

    sp = sub.add_parser("runs", help="table of the stored training runs")
    sp.add_argument("--db", default=None, help=DB_HELP)
    sp.add_argument("--dataset", type=int, default=None, help="only runs of this dataset id")
    sp.add_argument("--json", action="store_true", help="one JSON object per run")
    sp.set_defaults(func=_cmd_runs)

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
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
