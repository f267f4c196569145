"""``snjob``: the user CLI of ShuffleNet training jobs.

Subcommands: ``valprep`` (sort the flat ImageNet val folder by class), ``run-local`` (run a
job manifest on this machine), ``render crd`` (the CRD YAML from its Python source),
``render job-spec`` (docs/job-spec.md, the CRD's field reference), ``status`` (a job on a
cluster: phase, ranks, progress, conditions, Events).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .argparsing import StrictParser
from .atomic import atomic_write
from .errors import EXIT_CONFIG, ConfigError, TrainerError, one_line


def _valprep(args: argparse.Namespace) -> int:
    from .data.prep.valprep import describe, valprep

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


def _run_local(args: argparse.Namespace) -> int:
    from .jobs.runlocal import run_local

    return run_local(
        args.manifest,
        cpu=args.cpu,
        data=args.data,
        output_dir=args.output_dir,
        sets=args.set,
        metrics_port=args.metrics_port,
        dry_run=args.dry_run,
        grace=args.grace,
    )


def add_run_local(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run-local",
        help="run a ShuffleNetTrainingJob manifest on this machine, one process per rank",
        description=(
            "Validate the manifest against the CRD schema, then run its ranks here with the "
            "environment the operator gives rank pods. Exits with the job's status."
        ),
    )
    p.add_argument("manifest", metavar="JOB_YAML", help="a ShuffleNetTrainingJob manifest")
    p.add_argument(
        "--cpu",
        action="store_true",
        help="run the ranks on CPU with gloo when this machine lacks the job's NPUs/GPUs",
    )
    p.add_argument("--data", metavar="DIR", help="the dataset on this machine (spec.data)")
    p.add_argument(
        "--output-dir",
        default="result",
        metavar="DIR",
        help="stands for the checkpoint volume: the job runs in DIR/<namespace>/<name> "
        "(results, checkpoints, rank logs); run again, it continues there",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a manifest field before validation (YAML value), e.g. "
        "spec.devices.count=2; repeatable",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="first metrics port; rank k serves on PORT+k (default spec.metrics.port; 0 disables)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print each rank's command and environment"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long stopped ranks may take to save before they are killed",
    )
    p.set_defaults(func=_run_local)


def _render(args: argparse.Namespace) -> int:
    from shufflenet_contract.crd import render_yaml
    from shufflenet_contract.jobspec import render_markdown

    text = render_yaml() if args.what == "crd" else render_markdown()
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    if not args.output.strip():
        raise ConfigError("-o/--output is empty: pass a file path, or - for stdout")
    try:
        with atomic_write(args.output) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"-o/--output {args.output}: {exc.strerror or exc}: pass a file path in an "
            "existing, writable folder"
        ) from None
    return 0


def add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="write generated files (the CRD, its reference) from their Python source",
        description="Render the ShuffleNetTrainingJob CRD (crd) or its field reference, "
        "docs/job-spec.md (job-spec), from shufflenet_contract.crd.",
    )
    p.add_argument("what", choices=["crd", "job-spec"], help="what to render")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=_render)


def _status(args: argparse.Namespace) -> int:
    from .jobs.status import job_status

    print(job_status(args.name, args.namespace, args.kubectl))
    return 0


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="a job on the cluster: phase, ranks, progress, conditions, recent Events",
        description="Show a ShuffleNetTrainingJob's status, read with kubectl (its current "
        "context and credentials). Exit 1 when it cannot be read (not found, no access).",
    )
    p.add_argument("name", help="the job's metadata.name")
    p.add_argument("-n", "--namespace", help="its namespace (default: kubectl's)")
    p.add_argument("--kubectl", metavar="PATH", help="kubectl binary (default: from PATH)")
    p.set_defaults(func=_status)


class _Parser(StrictParser):
    """argparse whose usage error is one line, `snjob [COMMAND]: error: ...`, exit 2 (not the
    usage text first); the subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviated flags: with them `--=` reads as `--help` with a value, and an error
        # names a flag the command line does not have.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        line = one_line(f"{message} (see {self.prog} --help)")
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {line}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snjob", description="ShuffleNet training jobs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_valprep(sub)
    add_run_local(sub)
    add_render(sub)
    add_status(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a TrainerError is one `error:` line on stderr and its exit code
    (docs/training.md). Bad arguments exit 2 from the parser (SystemExit), one line too."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TrainerError as exc:
        print(f"snjob {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
