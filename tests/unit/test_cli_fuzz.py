"""Fuzzed command lines of `shufflenet-train` and each `snjob` subcommand.

Each command line is a valid baseline (ours, pytorch/examples', ModelZoo's) with one to three
mutations: unknown flags, flags without their value, values of the wrong type, out of range,
huge, NaN/inf, unicode or overlong, paths that do not exist or are files instead of folders,
conflicting and repeated flags. Each one either goes ahead (for `shufflenet-train`: the
config `main` would run, from `cli.configure`, stopped before training) or ends with one
`error:` line that names the flag or value it is about and a documented exit code, never a
traceback; nothing in an existing output folder or the working directory is written. The
outcome counts are in docs/reliability.md.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import io
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.fixed_draws import local_constants_off
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shufflenet_contract import env as rank_env
from shufflenet_trainer import cli, snjob
from shufflenet_trainer.errors import LINE_LIMIT, TrainerError, one_line
from shufflenet_trainer.train.config import build_parser

EXAMPLES = 400  # per command
DOCUMENTED = {2, 3}  # docs/training.md, "Exit codes"
SNJOB_CODES = {0, 1, 2, 3}  # + 1: `snjob status` could not read the job (its --help)
MAX_LINE = LINE_LIMIT + len("snjob run-local: error: ")
EXAMPLE_MANIFESTS = Path(__file__).resolve().parents[2] / "manifests/examples"

# Placeholders of the sandbox's paths, filled per test.
OUT, DATA, FILE, MISSING, VAL, LABELS, MANIFEST, KUBECTL = (
    "{out}", "{data}", "{file}", "{missing}", "{val}", "{labels}", "{manifest}", "{kubectl}"
)  # fmt: skip

VALUES = [
    "", " ", "-1", "0", "1", "3.5", "1e-9", "nan", "NaN", "inf", "-inf", "1e309", "9" * 40,
    "-" + "9" * 40, "0x10", "abc", "ünïcødé", "名前", "x" * 3000, "-", "auto", "gpu", "npu",
    "O1", "fp16", "apex-O2", "dynamic", "0,1", "0,0", "-1,2", "a=b", "tcp://h:99999",
    "env://", "spec.devices.count=2", "spec.devices.count", "crd", "job-spec", "null",
    MISSING, FILE, DATA, OUT,
]  # fmt: skip
UNKNOWN = ["--foo", "-z", "---lr", "--=", "--lr-rate", "--batch_size", "--save-dir", "--"]

TRAIN_BASELINES = {
    "ours": ["--dummy", "-a", "shufflenet_v2_x0_5", "--epochs", "2", "-b", "8",
             "--output-dir", OUT],
    "dataset": [DATA, "--epochs", "3", "-b", "64", "--lr", "0.1", "--resume", "auto",
                "--checkpoint-steps", "100", "--output-dir", OUT],
    "pytorch/examples": [DATA, "-a", "shufflenet_v2_x1_0", "--dist-url", "tcp://127.0.0.1:23456",
                         "--dist-backend", "gloo", "--multiprocessing-distributed",
                         "--world-size", "1", "--rank", "0", "-b", "64", "--output-dir", OUT],
    "modelzoo": [f"--data={DATA}", "--addr=127.0.0.1", "--seed=49", "--workers=4",
                 "--learning-rate=0.5", "--print-freq=1", "--eval-freq=5",
                 "--arch=shufflenet_v2_x1_0", "--dist-backend=gloo", "--batch-size=64",
                 "--epochs=10", "--warm_up_epochs=1", "--momentum=0", "--num-classes=1000",
                 f"--workspace={OUT}"],
}  # fmt: skip
SNJOB_BASELINES = {
    "valprep": ["valprep", VAL, "--labels", LABELS, "--dry-run"],
    "run-local": ["run-local", MANIFEST, "--cpu", "--data", DATA, "--dry-run", "--output-dir", OUT],
    "render": ["render", "crd"],
    "status": ["status", "myjob", "-n", "ns", "--kubectl", KUBECTL],
}
# Kept by every mutation: without them a fuzzed `snjob` command would move the sandbox's
# images or train (run-local), which is not what these tests are for.
PINNED = {"--dry-run", "--kubectl", KUBECTL}


def _flags(parser: object) -> list[str]:
    return sorted(
        s
        for a in parser._actions
        for s in a.option_strings
        if s not in ("-h", "--help")  # type: ignore[attr-defined]
    )


def _snjob_flags(command: str) -> list[str]:
    sub = next(a for a in snjob.build_parser()._actions if a.dest == "command")
    return _flags(sub.choices[command])  # type: ignore[union-attr]


@dataclass(frozen=True)
class Op:
    kind: str  # insert, set, delete, dangling
    at: int
    words: tuple[str, ...]  # what goes in, or the flag it is about

    def apply(self, argv: list[str]) -> list[str]:
        out = list(argv)
        i = self.at % (len(out) + 1)
        if self.kind == "delete" and out:
            i = self.at % len(out)
            if out[i] not in PINNED:
                del out[i]
        elif self.kind == "dangling":  # a flag whose value is missing: the last word
            out.append(self.words[0])
        else:
            out[i:i] = list(self.words)
        return out


def ops(flags: list[str]) -> st.SearchStrategy[Op]:
    value = st.one_of(st.sampled_from(VALUES), st.text(max_size=20))
    at = st.integers(0, 40)
    return st.one_of(
        st.builds(Op, st.just("insert"), at, st.tuples(st.sampled_from(UNKNOWN))),
        st.builds(Op, st.just("set"), at, st.tuples(st.sampled_from(flags), value)),
        st.builds(
            lambda at, flag, v: Op("set", at, (f"{flag}={v}",)), at, st.sampled_from(flags), value
        ),
        st.builds(Op, st.just("insert"), at, st.tuples(st.sampled_from(flags))),
        st.builds(Op, st.just("insert"), at, st.tuples(value)),
        st.builds(Op, st.just("delete"), at, st.just(())),
        st.builds(Op, st.just("dangling"), at, st.tuples(st.sampled_from(flags))),
    )


@dataclass
class Sandbox:
    root: Path
    paths: dict[str, str]

    def fill(self, argv: list[str]) -> list[str]:
        out = []
        for word in argv:
            for key, path in self.paths.items():
                word = word.replace(key, path)
            out.append(word)
        return out

    def snapshot(self) -> list[tuple[str, int, int]]:
        """Every file and folder of the sandbox, with its size and mtime."""
        return sorted(
            (str(p), p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in self.root.rglob("*")
        )


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    out = tmp_path / "out"
    old = out / "training_1p_job_20260101000000"
    old.mkdir(parents=True)
    (old / "checkpoint.pth.tar").write_bytes(b"an earlier run's checkpoint")
    (old / "train.log").write_text("=> done\n")
    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / split / "n01440764").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "labels.txt").write_text("n01440764\n")
    kubectl = tmp_path / "kubectl"
    kubectl.write_text("#!/bin/sh\necho 'error: the server could not be reached' >&2\nexit 1\n")
    kubectl.chmod(0o755)
    manifest = tmp_path / "job.yaml"
    manifest.write_text((EXAMPLE_MANIFESTS / "cpu-digits-2rank.yaml").read_text())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in vars(rank_env).values():
        if isinstance(name, str) and name.isupper():
            monkeypatch.delenv(name, raising=False)
    paths = {
        OUT: str(out), DATA: str(data), FILE: str(tmp_path / "file.txt"),
        MISSING: str(tmp_path / "missing" / "x"), VAL: str(val),
        LABELS: str(tmp_path / "labels.txt"), MANIFEST: str(manifest), KUBECTL: str(kubectl),
    }  # fmt: skip
    return Sandbox(tmp_path, paths)


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """compat.translate sets the rank environment a foreign command line implies."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _names_it(message: str, argv: list[str], mutations: tuple[Op, ...]) -> bool:
    """The message names a flag or value the mutations put in, or a word of the command
    line (a value left without its flag; a check across flags names the flag it is
    written on)."""
    words = {w for m in mutations for w in m.words} | set(argv)
    words |= {w.split("=", 1)[0] for w in argv if w.startswith("-")}
    words |= {"data", "COMMAND", "VAL_DIR", "JOB_YAML", "--labels", "what", "name"}
    names = {one_line(w).lstrip("-").replace("_", "-") for w in words if w.strip("- ")}
    text = message.replace("_", "-")
    return any(n and n[:40] in text for n in names) or any(repr(w) in message for w in argv)


@dataclass
class Outcome:
    kind: str  # accepted, error, help
    code: int
    stderr: str

    def label(self) -> str:
        """What the counts in docs/reliability.md count: `accepted`, `help` or `exit N`."""
        return f"exit {self.code}" if self.kind == "error" else self.kind


Problems = list[str]


def _check_error(
    outcome: Outcome, argv: list[str], case: tuple[Op, ...], codes: set[int]
) -> Problems:
    lines = outcome.stderr.strip().splitlines()
    problems = []
    if outcome.code not in codes:
        problems.append(f"exit {outcome.code} is not documented")
    if len(lines) != 1 or "error: " not in lines[0]:
        problems.append(f"not one error line: {outcome.stderr[-500:]!r}")
    elif len(lines[0]) > MAX_LINE:
        problems.append(f"error line of {len(lines[0])} characters")
    elif not _names_it(lines[0], argv, case):
        problems.append(f"names no flag or value of the command line: {lines[0]!r}")
    return problems


def _fuzz(
    run: Callable[[list[str]], Outcome],
    baselines: dict[str, list[str]],
    flags: Callable[[str], list[str]],
    box: Sandbox,
    codes: set[int],
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    out_dir = box.paths[OUT]

    def guarded(argv: list[str], outcome: Outcome) -> Callable[[str], bool]:
        """Paths a command must leave alone: the output folder and the working directory,
        but for the file a successful `snjob render -o FILE` was asked to write."""
        target = _render_target(argv) if outcome.kind == "accepted" else None
        return lambda p: (p.startswith(out_dir) or "/cwd/" in p) and p != target

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same command lines every run: the counts in the docs hold
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(baselines)))
        case = tuple(data.draw(st.lists(ops(flags(name)), min_size=1, max_size=3)))
        argv = list(baselines[name])
        for op in case:
            argv = op.apply(argv)
        argv = box.fill(argv)
        before = box.snapshot()
        try:
            outcome = run(argv)
        except Exception as exc:  # a traceback for the user
            problems.append(f"{argv!r}: raised {type(exc).__name__}: {exc}")
            return
        outcomes[outcome.label()] += 1
        if outcome.kind == "error":
            problems.extend(f"{argv!r}: {p}" for p in _check_error(outcome, argv, case, codes))
        kept = guarded(argv, outcome)
        if [s for s in box.snapshot() if kept(s[0])] != [s for s in before if kept(s[0])]:
            problems.append(f"{argv!r}: wrote into the output or working folder")

    with local_constants_off():  # the same command lines whatever ran before
        one()
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
    return outcomes


def _render_target(argv: list[str]) -> str | None:
    """The file `snjob render ... -o FILE` writes (the last -o wins, as in argparse)."""
    target = None
    for i, word in enumerate(argv):
        if word in ("-o", "--output") and i + 1 < len(argv):
            target = argv[i + 1]
        elif word.startswith(("--output=", "-o=")):
            target = word.split("=", 1)[1]
        elif word.startswith("-o") and not word.startswith("--"):
            target = word[2:]
    return None if target is None else os.path.abspath(target)


def _train(argv: list[str]) -> Outcome:
    err = io.StringIO()
    with (
        _environ_kept(),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            cfg = cli.configure(argv).cfg
        except TrainerError as exc:
            return Outcome("error", exc.exit_code, cli.error_line(exc) + "\n")
        except SystemExit as exc:  # --help
            return Outcome("help" if exc.code == 0 else "exit", int(exc.code or 0), err.getvalue())
    # What goes ahead must be runnable: no NaN or infinity reaches the run, and the wait on
    # peers is a timedelta for torch.distributed (an overflow there is a traceback).
    odd = {k: v for k, v in cfg.to_dict().items() if isinstance(v, float) and not math.isfinite(v)}
    if odd:
        raise AssertionError(f"accepted a config with {odd}")
    datetime.timedelta(seconds=cfg.dist_timeout)
    return Outcome("accepted", 0, "")


def _snjob(argv: list[str]) -> Outcome:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = snjob.main(argv)
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = int(exc.code or 0)
            if code == 0:
                return Outcome("help", 0, "")
    return Outcome("accepted" if code == 0 else "error", code, err.getvalue())


def test_the_baselines_go_ahead(sandbox: Sandbox) -> None:
    for name, argv in TRAIN_BASELINES.items():
        assert _train(sandbox.fill(argv)).kind == "accepted", name
    for name, argv in SNJOB_BASELINES.items():
        outcome = _snjob(sandbox.fill(argv))
        # status's baseline reaches kubectl, which cannot reach a cluster here: exit 1.
        assert (outcome.kind, outcome.code) == (
            ("error", 1) if name == "status" else ("accepted", 0)
        ), (name, outcome)


def test_fuzzed_shufflenet_train_arguments(sandbox: Sandbox) -> None:
    counts = _fuzz(_train, TRAIN_BASELINES, lambda _: _flags(build_parser()), sandbox, DOCUMENTED)
    assert counts.total() >= EXAMPLES and counts["accepted"] and counts["exit 2"], counts
    print(f"shufflenet-train: {dict(counts)}")


@pytest.mark.parametrize("command", sorted(SNJOB_BASELINES))
def test_fuzzed_snjob_arguments(sandbox: Sandbox, command: str) -> None:
    counts = _fuzz(_snjob, {command: SNJOB_BASELINES[command]}, _snjob_flags, sandbox, SNJOB_CODES)
    assert counts.total() >= EXAMPLES and counts["exit 2"], counts
    print(f"snjob {command}: {dict(counts)}")


def test_an_overlong_value_is_cut_in_the_error_line(sandbox: Sandbox) -> None:
    outcome = _train(sandbox.fill([*TRAIN_BASELINES["ours"], "--epochs", "x" * 3000]))
    assert outcome.code == 2 and re.search(r"--epochs", outcome.stderr)
    assert len(outcome.stderr) <= MAX_LINE


EDGE_NUMBERS = ["nan", "inf", "-inf", "1e309", "1e300", "-1", "0", "9" * 40, "0.5"]


def test_every_numeric_flag_takes_every_edge_value(sandbox: Sandbox) -> None:
    """Sparse in the fuzzing above, so all of them: each numeric flag with each edge value."""
    numeric = sorted(
        a.option_strings[0]
        for a in build_parser()._actions
        if a.type in (int, float) and a.option_strings
    )
    problems, outcomes = [], collections.Counter()
    for flag in numeric:
        for value in EDGE_NUMBERS:
            argv = sandbox.fill([*TRAIN_BASELINES["ours"], flag, value])
            try:
                outcome = _train(argv)
            except AssertionError as exc:
                problems.append(f"{flag} {value}: {exc}")
                continue
            outcomes[outcome.label()] += 1
            if outcome.kind == "error":
                problems += [
                    f"{flag} {value}: {p}" for p in _check_error(outcome, argv, (), DOCUMENTED)
                ]
    assert not problems, "\n".join(problems)
    assert outcomes.total() == len(numeric) * len(EDGE_NUMBERS) >= 100, outcomes
    print(f"shufflenet-train numeric flags: {dict(outcomes)}")
