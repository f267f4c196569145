"""SIMULATED rank: a torch-free stand-in for `shufflenet-train` in the cluster soak.

Dozens of real trainers do not fit on a small machine; this program keeps the parts of the
trainer's contract the operator depends on, and nothing else:

* it reads its rank environment with shufflenet_contract.env (a bad one: exit 2);
* on NPU jobs it waits for a completed rank table of its own attempt that lists its pod, as
  the trainer does (ranktable.wait_for_table: a timeout is exit 134, a wrong table of this
  attempt exit 2), and reports the table it accepted in `--report-dir` for the soak's
  rank-table check;
* its "steps" are a barrier over TCP with rank 0 at MASTER_ADDR:MASTER_PORT: a peer that dies
  or hangs (SIGSTOP) makes the others give up after `--peer-timeout` seconds with the
  trainer's lost-peer code 134, as gloo and HCCL time out;
* rank 0 keeps a "checkpoint" (the next step) in `--checkpoint-dir`, written then renamed,
  and every attempt resumes from it;
* SIGTERM: the checkpoint is written and the rank exits 143; after its steps it exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shufflenet_contract import exitcodes, ranktable
from shufflenet_contract.env import EnvError, RankEnv, read_rank_env

PROGRESS = "sim-progress.json"


class PeerLost(Exception):
    """A peer died, hung or never came: the trainer's EXIT_DIST."""


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write then rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_progress(directory: Path) -> int:
    try:
        return int(json.loads((directory / PROGRESS).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def accept_table(env: RankEnv, args: argparse.Namespace) -> None:
    """Wait for this attempt's table as the trainer does, then report what was accepted."""
    assert env.rank_table_file is not None
    member = ranktable.Member.of(env)
    snapshot = ranktable.wait_for_table(env.rank_table_file, member, timeout=args.table_timeout)
    table = ranktable.parse(snapshot.text)
    report = {
        "job": env.job_name,
        "rank": env.rank,
        "attempt": env.attempt,
        "pod_uid": env.pod_uid,
        "world": env.world_size,
        "table_attempt": snapshot.attempt,
        "table_version": snapshot.version,
        "table_status": table.get("status"),
        "server_ids": [s["server_id"] for s in table.get("server_list", [])],
        "ranks": sum(len(s["device"]) for s in table.get("server_list", [])),
        "time": time.time(),
    }
    if args.report_dir:
        name = f"{env.job_name}-a{env.attempt}-r{env.rank}-{(env.pod_uid or 'x')[:8]}.json"
        write_json(Path(args.report_dir) / name, report)


def _line(f: Any) -> str:
    try:
        text = f.readline()
    except (TimeoutError, OSError) as exc:
        raise PeerLost(f"no word from a peer: {exc}") from None
    if not text:
        raise PeerLost("a peer closed the connection")
    return text.strip()


def _send(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall(f"{text}\n".encode())
    except OSError as exc:
        raise PeerLost(f"a peer is gone: {exc}") from None


def run_master(env: RankEnv, args: argparse.Namespace, ckpt: Path) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((env.pod_ip or "127.0.0.1", env.master_port or 29500))
    srv.listen(16)
    srv.settimeout(args.connect_timeout)
    peers: dict[int, tuple[socket.socket, Any]] = {}
    deadline = time.monotonic() + args.connect_timeout
    while len(peers) < env.world_size - 1:
        srv.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            conn, _ = srv.accept()
        except (TimeoutError, OSError):
            raise PeerLost(f"{len(peers) + 1} of {env.world_size} ranks joined") from None
        conn.settimeout(args.peer_timeout)
        f = conn.makefile("r")
        try:
            rank, attempt = (int(x) for x in _line(f).split())
        except (PeerLost, ValueError):
            conn.close()
            continue
        if attempt != env.attempt or rank in peers or not 0 < rank < env.world_size:
            # A process of another attempt (or a duplicate) is no member of this group.
            print(f"refused rank {rank} of attempt {attempt}", file=sys.stderr, flush=True)
            conn.close()
            continue
        peers[rank] = (conn, f)
    step = read_progress(ckpt)
    print(f"all {env.world_size} ranks joined; resuming at step {step}", flush=True)

    def save(next_step: int) -> None:
        write_json(ckpt / PROGRESS, {"step": next_step, "attempt": env.attempt})

    def on_term(*_: object) -> None:
        save(step)
        sys.exit(exitcodes.EXIT_SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    for conn, _ in peers.values():
        _send(conn, str(step))
    while step < args.steps:
        for _, f in peers.values():
            if _line(f) != str(step):
                raise PeerLost("a peer is out of step")
        time.sleep(args.step_seconds)
        step += 1
        for conn, _ in peers.values():
            _send(conn, str(step))
        if step % 5 == 0:
            save(step)
    save(step)
    for conn, _ in peers.values():
        _send(conn, "done")


def run_peer(env: RankEnv, args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(exitcodes.EXIT_SIGTERM))
    deadline = time.monotonic() + args.connect_timeout
    while True:
        try:
            conn = socket.create_connection(
                (env.master_addr, env.master_port or 29500), timeout=args.peer_timeout
            )
            break
        except OSError:
            if time.monotonic() > deadline:
                raise PeerLost(f"rank 0 at {env.master_addr} never answered") from None
            time.sleep(0.3)
    conn.settimeout(args.peer_timeout)
    f = conn.makefile("r")
    _send(conn, f"{env.rank} {env.attempt}")
    step = int(_line(f))
    while step < args.steps:
        _send(conn, str(step))
        got = _line(f)
        if got != str(step + 1):
            raise PeerLost(f"rank 0 said {got!r} at step {step}")
        step += 1
    if _line(f) != "done":
        raise PeerLost("rank 0 did not finish")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--step-seconds", type=float, default=0.3)
    p.add_argument("--peer-timeout", type=float, default=5.0)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--table-timeout", type=float, default=60.0)
    p.add_argument("--report-dir", default="")
    args = p.parse_args(argv)
    try:
        env = read_rank_env(os.environ)
    except EnvError as exc:
        print(f"sim-rank: error: {exc}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    try:
        if env.rank_table_file is not None:
            accept_table(env, args)
        if env.rank == 0:
            args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            run_master(env, args, args.checkpoint_dir)
        else:
            run_peer(env, args)
    except ranktable.RankTableTimeout as exc:
        print(f"sim-rank {env.rank}: {exc}", file=sys.stderr)
        return exitcodes.EXIT_DIST
    except ranktable.RankTableError as exc:
        print(f"sim-rank {env.rank}: rank table: {exc}", file=sys.stderr)
        return exitcodes.EXIT_CONFIG
    except PeerLost as exc:
        print(f"sim-rank {env.rank}: lost a peer: {exc}", file=sys.stderr)
        return exitcodes.EXIT_DIST
    print(f"sim-rank {env.rank}: done", flush=True)
    return exitcodes.EXIT_OK


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
