"""``snjob``: the user CLI of ShuffleNet training jobs.

Subcommands: ``valprep`` (sort the flat ImageNet val folder by class). ``run-local``,
``render`` and ``status`` attach to the same parser as further subcommands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import TrainerError


def _valprep(args: argparse.Namespace) -> int:
    from .valprep import describe, valprep

    report = valprep(args.val_dir, args.labels, dry_run=args.dry_run, link=args.link)
    print(describe(report, args.link))
    return 0


def add_valprep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "valprep",
        help="sort the flat ILSVRC2012 validation images into one folder per class",
        description=(
            "Sort ILSVRC2012_val_*.JPEG into VAL_DIR/<wnid>/ using LOC_val_solution.csv or a "
            "file with one wnid per line. Checks everything before moving; never overwrites; "
            "a second run changes nothing."
        ),
    )
    p.add_argument("val_dir", metavar="VAL_DIR", help="folder holding the validation images")
    p.add_argument(
        "--labels",
        required=True,
        metavar="FILE",
        help="LOC_val_solution.csv or a wnid-per-line text file",
    )
    p.add_argument("--dry-run", action="store_true", help="report the plan, change nothing")
    p.add_argument(
        "--link", action="store_true", help="hard-link into the class folders instead of moving"
    )
    p.set_defaults(func=_valprep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snjob", description="ShuffleNet training jobs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_valprep(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TrainerError as exc:
        print(f"snjob {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
