"""Which failures of a multi-rank run are a lost peer (exit 134, the job restarts) and which
are not: by exception type, by the collective that failed, and by the backend's own error
codes; with real gloo process groups whose peer dies or hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from shufflenet_trainer.errors import DistributedError
from shufflenet_trainer.jobs.launch import free_port
from shufflenet_trainer.train.distributed import is_peer_failure

# What torch_npu raises for a failed HCCL call (HCCL_CHECK_ERROR in Ascend/pytorch
# torch_npu/csrc/distributed/HCCLUtils.hpp): a RuntimeError naming the call and its
# HcclResult, then the DIST error code ERR02200.
HCCL = (
    "createHCCLComm:torch_npu/csrc/distributed/ProcessGroupHCCL.cpp:1479 HCCL function error: "
    "{call}, error code is {code}\n[ERROR] 2025-03-26-17:01:03 (PID:159, Device:0, RankID:1) "
    "ERR02200 DIST call hccl api failed."
)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("timeout must be a positive number"),
        RuntimeError("connection string has no host"),
        RuntimeError("Given groups=1, weight of size [24, 3, 3, 3]: socket of peer mismatch"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] not enough memory: timed out"),
        RuntimeError("HCCL AllReduce & Reduce: Unsupported data type at::kBool"),
        RuntimeError(HCCL.format(call="HcclAllReduce(...)", code=1)),  # HCCL_E_PARA
        RuntimeError(HCCL.format(call="HcclCommInitClusterInfoConfig(...)", code=10)),  # file
        ValueError("gloo"),
        KeyError("nccl"),
        TimeoutError("reading the data volume timed out"),
        ConnectionError("the metrics scraper went away"),
    ],
    ids=repr,
)
def test_errors_that_only_mention_peers_are_not_a_lost_peer(exc: BaseException) -> None:
    assert not is_peer_failure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        DistributedError("x"),
        dist.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited"),
        dist.DistNetworkError("Connection reset by peer"),
        dist.DistStoreError("Timed out after 60 seconds waiting for clients"),
        RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer"),
        # HCCL_E_TIMEOUT, _TCP_CONNECT, _ROCE_CONNECT, _TCP_TRANSFER, _ROCE_TRANSFER,
        # _NETWORK, _REMOTE (error CQE), _SUSPENDING (hicann hccl_types.h HcclResult)
        *(RuntimeError(HCCL.format(call="HcclAllReduce(...)", code=c)) for c in (9, 11, 12)),
        *(RuntimeError(HCCL.format(call="HcclBroadcast(...)", code=c)) for c in (13, 14, 19)),
        *(RuntimeError(HCCL.format(call="HcclAllReduce(...)", code=c)) for c in (21, 22)),
    ],
    ids=repr,
)
def test_lost_peers_are_recognised_by_type_origin_or_backend_code(exc: BaseException) -> None:
    assert is_peer_failure(exc)


PEER = textwrap.dedent(
    """
    import datetime, json, os, sys, time
    import torch, torch.distributed as dist
    from shufflenet_trainer.train.distributed import DistContext, is_peer_failure
    rank, how = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=3))
    ctx = DistContext(rank=rank, world_size=2, backend="gloo")
    ctx.barrier()
    if rank == 1:
        if how == "dies":
            os._exit(137)
        time.sleep(8)  # hangs: never joins the next collective
        os._exit(0)
    time.sleep(0.3)
    seen = {}
    for name, call in [
        ("all_reduce_sum", lambda: ctx.all_reduce_sum(torch.ones(3))),
        ("stop_vote", lambda: [ctx.stop_vote(False), ctx.stop_vote(False)]),
        ("raw_all_reduce", lambda: dist.all_reduce(torch.ones(3))),
    ]:
        try:
            call()
            seen[name] = "no error"
        except Exception as exc:
            seen[name] = [type(exc).__name__, is_peer_failure(exc), str(exc)[:200]]
        if how == "dies":
            continue
        break  # a hung gloo pair is unusable after its first timeout
    unrelated = RuntimeError("timed out waiting for the connection to the data volume")
    seen["unrelated"] = is_peer_failure(unrelated)
    print(json.dumps(seen), flush=True)
    os._exit(0)
    """
)


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_real_gloo_peer_lost_is_a_peer_failure(how: str) -> None:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PEER, str(rank), how],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    out, err = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=60)
    seen = json.loads(out.strip().splitlines()[-1]) if out.strip() else err[-2000:]
    assert isinstance(seen, dict), seen
    assert seen.pop("unrelated") is False
    assert seen, "no collective was tried"
    for name, outcome in seen.items():
        assert outcome != "no error" and outcome[1] is True, (name, outcome)
