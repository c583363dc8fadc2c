"""``python -m dssm_core ...``: a thin argparse layer over the engine.

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


class CliError(Exception):
    """A usage problem the person can fix; printed as one line, exit code 2."""


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import movielens

    ds = movielens.load(args.data)
    print(json.dumps(ds.summary()))
    for w in ds.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dssm_core", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("inspect", help="sniff a MovieLens-style file/folder/zip, print a JSON summary")
    sp.add_argument("data", help="a folder, a .zip or a file")
    sp.set_defaults(func=_cmd_inspect)
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
    except (DataValidationError, CliError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
