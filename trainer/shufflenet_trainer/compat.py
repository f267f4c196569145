"""The flags of the command lines users bring: Ascend ModelZoo ShuffleNetV2 and pytorch/examples.

Two layers, both pure (no devices, files or environment reads: what they need is passed in):

- `add_flags` declares the foreign flags on our parser and `resolve_flags` maps the ones that
  only change a setting (`--amp` as a switch, `--pretrained` as a switch, `--dist-backend`,
  `--data=DIR`...) onto TrainConfig fields inside `parse_config`.
- `translate` maps the ones that change *who runs*: `--multiprocessing-distributed`,
  `--world-size`/`--rank` (nodes or processes), `--dist-url`, `--addr`, `--local_rank`,
  `--device_num`, `--gpu`. It returns our own command line (`--nproc`, `--device-list`,
  `--device-id`, a global `-b`, `-j` per rank) and the rank environment to set, so that the
  launcher and every rank it starts see one canonical form and never map twice.

Where a foreign flag cannot mean here what it meant there, the error names what to use.
docs/migration.md holds the table of every flag.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError

# `--amp` given bare (ModelZoo's switch): apex at --opt-level, as their main script does.
AMP_SWITCH = "apex"
# `--pretrained` given bare (pytorch/examples' switch): torchvision's ImageNet weights.
PRETRAINED_SWITCH = "torchvision"
# ModelZoo's static loss scale when --amp is a switch and --loss-scale is not given.
MODELZOO_LOSS_SCALE = 64.0
# ModelZoo sets MASTER_PORT to this on Ascend, whatever --dist-url says.
MODELZOO_MASTER_PORT = 29688
OPT_LEVELS = {"O0": "off", "O1": "apex-O1", "O2": "apex-O2"}
BACKEND_DEVICE = {"gloo": "cpu", "nccl": "cuda", "hccl": "npu"}

# The foreign flags that decide the processes; the ranks started by the launcher must not
# see them (they would start launchers of their own). Value-taking first, then switches.
DIST_FLAGS = (
    "--world-size", "--world_size", "--rank", "--dist-url", "--dist_url", "--addr",
    "--device_num", "--device-num", "--local_rank", "--local-rank", "--gpu",
)  # fmt: skip
DIST_SWITCHES = ("--multiprocessing-distributed", "--multiprocessing_distributed")


def add_flags(p: argparse.ArgumentParser) -> None:
    """Declare the foreign flags (their own group in --help); mapped by resolve_flags/translate."""
    g = p.add_argument_group(
        "pytorch/examples and Ascend ModelZoo flags (docs/migration.md)",
        "accepted so that existing command lines run unchanged; mapped onto the flags above",
    )
    g.add_argument("--data", dest="data_option", metavar="DIR", help="dataset root (= DATA)")
    g.add_argument(
        "--world-size",
        "--world_size",
        dest="legacy_world_size",
        metavar="N",
        type=int,
        default=None,
        help="nodes with --multiprocessing-distributed, else processes (-1: as 1)",
    )
    g.add_argument(
        "--rank",
        dest="legacy_rank",
        metavar="R",
        type=int,
        default=None,
        help="node rank with --multiprocessing-distributed, else process rank",
    )
    g.add_argument(
        "--dist-url",
        "--dist_url",
        dest="dist_url",
        metavar="URL",
        help="tcp://HOST:PORT sets MASTER_ADDR/MASTER_PORT; env:// reads them",
    )
    g.add_argument(
        "--dist-backend",
        "--dist_backend",
        dest="dist_backend",
        choices=tuple(BACKEND_DEVICE),
        help="picks --device when it is not given (gloo: cpu, nccl: cuda, hccl: npu)",
    )
    g.add_argument(
        "--multiprocessing-distributed",
        "--multiprocessing_distributed",
        dest="multiprocessing_distributed",
        action="store_true",
        help="one process per device of this node (= --nproc); -b is then the node's batch",
    )
    g.add_argument("--addr", metavar="HOST", help="MASTER_ADDR (ModelZoo)")
    g.add_argument(
        "--device_num",
        "--device-num",
        dest="device_num",
        metavar="N",
        type=int,
        default=None,
        help="devices of this node when --device-list is not given (ModelZoo)",
    )
    g.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        metavar="I",
        type=int,
        default=None,
        help="this process is that rank of the node (shell-loop and torch.distributed.launch)",
    )
    g.add_argument("--gpu", metavar="I", type=int, default=None, help="= --device-id (one process)")
    g.add_argument(
        "--opt-level",
        "--opt_level",
        dest="opt_level",
        choices=("O0", "O1", "O2", "O3"),
        default=None,
        help="apex level of the bare --amp switch (ModelZoo default O2)",
    )
    g.add_argument(
        "-bm",
        "--benchmark",
        type=int,
        choices=(0, 1),
        default=0,
        help="ModelZoo: 0 trains normally; 1 (gradient accumulation) is refused",
    )
    g.add_argument(
        "--num-classes",
        "--num_classes",
        dest="num_classes",
        metavar="N",
        type=int,
        default=None,
        help="classes of --dummy data; with a dataset, checked against its classes",
    )
    # ModelZoo's checkpoint naming and frequency: accepted only to say what happens here.
    g.add_argument("--checkpoint-nameprefix", "--checkpoint_nameprefix", dest="ckpt_prefix")
    g.add_argument("--checkpoint-freq", "--checkpoint_freq", dest="ckpt_freq", type=int)
    g.add_argument(
        "--weights",
        dest="weights",
        metavar="PATH",
        help="start from local weights: a torchvision state_dict or a shufflenet-train "
        "checkpoint (--pretrained PATH also works)",
    )


def normalize_argv(argv: Sequence[str], *, is_dir: Callable[[str], bool]) -> list[str]:
    """Spell the switch forms of `--amp` and `--pretrained` so argparse cannot misread them.

    Both flags take an optional value here (`--amp fp16`, `--pretrained PATH`) and are bare
    switches in the scripts users bring, where the next word may be the dataset
    (`--pretrained /data/imagenet`): a flag, a folder or nothing after them makes them the
    switch.
    """
    out: list[str] = []
    args = list(argv)
    switches = {"--amp": AMP_SWITCH, "--pretrained": PRETRAINED_SWITCH}
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else None
        if arg in switches and (nxt is None or nxt.startswith("-") or is_dir(nxt)):
            out.append(f"{arg}={switches[arg]}")
        else:
            out.append(arg)
    return out


def resolve_flags(ns: argparse.Namespace) -> dict[str, object]:
    """Namespace values that the foreign setting flags stand for (those given only).

    Returns the TrainConfig fields to override; raises ConfigError where a flag cannot mean
    here what it meant in its script.
    """
    out: dict[str, object] = {}
    if ns.data_option is not None:
        if ns.data is not None and ns.data != ns.data_option:
            raise ConfigError(
                f"two datasets: DATA {ns.data} and --data {ns.data_option}: pass one of them"
            )
        out["data"] = ns.data_option
    for flag, value in (
        ("--checkpoint-nameprefix", ns.ckpt_prefix),
        ("--checkpoint-freq", ns.ckpt_freq),
    ):
        if value is not None:
            raise ConfigError(
                f"{flag} {value}: the checkpoint here is checkpoint.pth.tar in the result "
                "folder, written every epoch (and on SIGTERM); drop the flag, and use "
                "--output-dir for where it goes"
            )
    if ns.benchmark == 1:
        raise ConfigError(
            "--benchmark 1 (ModelZoo's gradient accumulation to a batch of 2048) is not "
            "supported: pass the batch you want as -b and drop --benchmark"
        )
    if ns.dist_backend is not None:
        wanted = BACKEND_DEVICE[ns.dist_backend]
        if ns.device is None:
            out["device"] = wanted
        elif ns.device != wanted:
            raise ConfigError(
                f"--dist-backend {ns.dist_backend} does not fit --device {ns.device} (it uses "
                f"{dict((v, k) for k, v in BACKEND_DEVICE.items())[ns.device]}): drop "
                "--dist-backend, the backend follows the device"
            )
    if ns.amp == AMP_SWITCH:
        level = ns.opt_level or "O2"
        if level == "O3":
            raise ConfigError("--opt-level O3 (pure fp16) is not supported: use --amp fp16")
        out["amp"] = OPT_LEVELS[level]
        if ns.loss_scale is None and level != "O0":
            out["loss_scale"] = MODELZOO_LOSS_SCALE
    elif ns.opt_level is not None and ns.amp is not None and OPT_LEVELS.get(ns.opt_level) != ns.amp:
        raise ConfigError(
            f"--opt-level {ns.opt_level} contradicts --amp {ns.amp}: drop --opt-level"
        )
    weights, hub = ns.weights, False
    if ns.pretrained == PRETRAINED_SWITCH:
        if ns.resume not in (None, "auto"):
            # ModelZoo's fine-tuning form: --pretrained --resume PATH loads PATH's weights
            # and starts at epoch 0 (pytorch/examples would resume PATH instead).
            weights, out["resume"] = weights or ns.resume, None
        else:
            hub = weights is None
    elif ns.pretrained is not None:
        if weights is not None and weights != ns.pretrained:
            raise ConfigError("--weights and --pretrained PATH name two files: pass --weights")
        weights = ns.pretrained
    out["pretrained"], out["torchvision_weights"] = weights, hub
    return out


# Open MPI's names for the rank environment (`mpirun -np N -x MASTER_ADDR -x MASTER_PORT`).
MPI_ENV = {
    "OMPI_COMM_WORLD_RANK": "RANK",
    "OMPI_COMM_WORLD_SIZE": "WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK": "LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "LOCAL_WORLD_SIZE",
}


def mpi_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The torchrun-style variables for a process started by mpirun, where not set already
    (a launcher's own variables win). MASTER_ADDR/PORT are the user's to pass (`-x`)."""
    if "RANK" in environ or "OMPI_COMM_WORLD_RANK" not in environ:
        return {}
    return {ours: environ[theirs] for theirs, ours in MPI_ENV.items() if theirs in environ}


@dataclass(frozen=True)
class Translation:
    """Our command line for a foreign one, and the rank environment it implies."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def strip_flags(
    argv: Sequence[str], with_value: Sequence[str], switches: Sequence[str] = ()
) -> list[str]:
    """argv without the given flags (`--flag V`, `--flag=V` and bare switches)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in switches:
            pass
        elif arg in with_value:
            skip = True
        elif not any(arg.startswith(flag + "=") for flag in with_value):
            out.append(arg)
    return out


def _master(ns: argparse.Namespace) -> tuple[str | None, int | None]:
    """MASTER_ADDR/PORT from --dist-url tcp://HOST:PORT, the address overridden by --addr."""
    host = port = None
    url = ns.dist_url
    if url and url != "env://":
        parts = urlsplit(url)
        if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
            raise ConfigError(
                f"--dist-url {url}: pass tcp://HOST:PORT or env:// (MASTER_ADDR/MASTER_PORT)"
            )
        host, port = parts.hostname, parts.port
    return ns.addr or host, port


@dataclass(frozen=True)
class _Master:
    """Where the ranks meet, as --dist-url and --addr say (None: not given)."""

    addr: str | None
    port: int | None

    def env(self, **ranks: str) -> dict[str, str]:
        """MASTER_ADDR/PORT (ModelZoo's defaults where not given) with the rank variables."""
        port = str(self.port or MODELZOO_MASTER_PORT)
        return {"MASTER_ADDR": self.addr or "127.0.0.1", **ranks, "MASTER_PORT": port}


def translate(
    argv: Sequence[str],
    ns: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    host_devices: Callable[[], int],
) -> Translation:
    """Map the process-deciding foreign flags of `argv` (parsed as `ns`) onto ours.

    - `--multiprocessing-distributed`: --world-size counts nodes and --rank is the node;
      the node runs one process per device (--device-list, else --device_num, else
      `host_devices()`), started here (`--nproc`), or, with `--local_rank=$i`, by the
      user's shell loop (this process is that one rank). -b and -j are the node's, as in
      both scripts: the global batch is -b x nodes, workers are split over the processes.
    - Otherwise `--world-size N --rank R` (N > 1) make this process rank R of N, and -b is
      that process's batch (pytorch/examples): the global batch is -b x N.
    - `--gpu N` is `--device-id N`.
    """
    mpd = bool(ns.multiprocessing_distributed)
    # The world size as the flags count it: nodes with --multiprocessing-distributed, else
    # processes (-1, their default, as 1).
    ws = ns.legacy_world_size
    nodes = ws if ws is not None and ws >= 1 else 1
    plain = ns.gpu is None and ns.local_rank is None and ns.legacy_rank in (None, 0)
    if not mpd and nodes == 1 and plain:
        return Translation(list(argv))
    if "RANK" in environ and "WORLD_SIZE" in environ and (mpd or nodes > 1):
        raise ConfigError(
            "--multiprocessing-distributed/--world-size start or name ranks, but RANK and "
            "WORLD_SIZE are already set (torchrun or the operator): drop those flags"
        )
    args = strip_flags(argv, DIST_FLAGS, DIST_SWITCHES)
    master = _Master(*_master(ns))
    if mpd:
        return _translate_node(args, ns, nodes, master, host_devices)
    return _translate_processes(args, ns, environ, nodes, master)


def _translate_processes(
    args: list[str],
    ns: argparse.Namespace,
    environ: Mapping[str, str],
    nodes: int,
    master: _Master,
) -> Translation:
    """pytorch/examples without --multiprocessing-distributed: this process is rank
    --rank of --world-size processes, with a per-process -b."""
    rank = ns.legacy_rank
    if nodes == 1 and rank not in (None, 0):
        raise ConfigError(f"--rank {rank} needs --world-size > {rank}")
    env: dict[str, str] = {}
    if ns.local_rank is not None and "LOCAL_RANK" not in environ:
        env["LOCAL_RANK"] = str(ns.local_rank)
    if nodes > 1:
        if rank is None or not 0 <= rank < nodes:
            raise ConfigError(f"--world-size {nodes}: pass --rank in [0, {nodes})")
        env.update(master.env(RANK=str(rank), WORLD_SIZE=str(nodes)))
        args += ["-b", str(ns.batch_size * nodes)]
    if ns.gpu is not None:
        args += ["--device-id", str(ns.gpu)]
    return Translation(args, env)


def _translate_node(
    args: list[str],
    ns: argparse.Namespace,
    nodes: int,
    master: _Master,
    host_devices: Callable[[], int],
) -> Translation:
    """--multiprocessing-distributed: node --rank of --world-size nodes runs one process
    per device, started here or (with --local_rank) by the user's shell loop."""
    if ns.gpu is not None:
        raise ConfigError(
            "--gpu picks one device, --multiprocessing-distributed all of them: use "
            "--device-list to choose the devices"
        )
    devices = ns.device_list
    per_node = len(devices) if devices else ns.device_num or ns.nproc or host_devices()
    if per_node < 1:
        raise ConfigError("--multiprocessing-distributed found no device: pass --device-list")
    node = ns.legacy_rank or 0
    if not 0 <= node < nodes:
        raise ConfigError(f"--rank {node} must be a node in [0, --world-size {nodes})")
    args = strip_flags(args, ("--nproc", "--device-list"))  # replaced below
    args += ["-b", str(ns.batch_size * nodes), "-j", str(math.ceil(ns.workers / per_node))]
    world = nodes * per_node
    env: dict[str, str] = {}
    # One node started here without a port to meet on: the launcher picks a free one.
    launcher_picks_port = nodes == 1 and master.port is None and ns.local_rank is None
    if world > 1 and not launcher_picks_port:
        env = master.env(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(per_node))
    if ns.local_rank is not None:
        return _shell_loop_rank(args, env, ns.local_rank, devices, node, per_node)
    if per_node == 1:
        args += ["--device-id", str(devices[0] if devices else 0)]
    else:
        args += ["--nproc", str(per_node)]
        if devices:
            args += ["--device-list", ",".join(map(str, devices))]
    if env:
        env.update(RANK=str(node * per_node), LOCAL_RANK="0")
    return Translation(args, env)


def _shell_loop_rank(
    args: list[str],
    env: dict[str, str],
    local_rank: int,
    devices: Sequence[int] | None,
    node: int,
    per_node: int,
) -> Translation:
    """--multiprocessing-distributed --local_rank I: the user starts each rank of the node,
    this process is rank I of it, on its device."""
    if not 0 <= local_rank < per_node:
        raise ConfigError(f"--local_rank {local_rank} must be in [0, {per_node})")
    device = devices[local_rank] if devices else local_rank
    args = [*args, "--device-id", str(device)]
    if env:  # world > 1 (with --local_rank the launcher never picks the port)
        env = {**env, "RANK": str(node * per_node + local_rank), "LOCAL_RANK": str(local_rank)}
    return Translation(args, env)
