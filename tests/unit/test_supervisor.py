"""Tier 1's pure rules and its store protocol (train/supervisor.py), on a real TCPStore."""

from __future__ import annotations

import datetime
import threading

import pytest
import torch.distributed as dist

from shufflenet_contract.env import (
    INPLACE_BACKOFF,
    INPLACE_RESTARTS,
    EnvError,
    InPlacePolicy,
    read_generation,
    read_inplace_policy,
)
from shufflenet_contract.exitcodes import EXIT_CONFIG, EXIT_DATA, EXIT_DIST, EXIT_SIGTERM
from shufflenet_trainer.train.supervisor import (
    Generations,
    backoff_seconds,
    blame,
    in_place_retryable,
    recovery_record,
    with_resume_auto,
)


@pytest.mark.parametrize(
    ("code", "retried"),
    [(0, False), (1, False), (EXIT_CONFIG, False), (EXIT_DATA, False), (EXIT_SIGTERM, False),
     (EXIT_DIST, True), (137, True), (139, True)],
)  # fmt: skip
def test_only_crashes_and_lost_peers_are_retried_in_place(code: int, retried: bool) -> None:
    assert in_place_retryable(code) is retried


def test_backoff_doubles_per_generation_up_to_a_cap() -> None:
    policy = InPlacePolicy(restarts=20, backoff_seconds=1.5)
    assert [backoff_seconds(policy, g) for g in (1, 2, 3)] == [1.5, 3.0, 6.0]
    assert backoff_seconds(policy, 20) == 300.0
    assert backoff_seconds(InPlacePolicy(3, 0.0), 2) == 0.0


def test_the_cause_is_the_rank_that_did_not_merely_lose_its_peer() -> None:
    assert blame({0: EXIT_DIST, 1: 137}) == "rank 1: exit 137 (SIGKILL)"
    assert blame({0: EXIT_DIST, 1: EXIT_DIST}) == "rank 0: exit 134 (lost a peer rank or timed out)"
    assert blame({2: 139, 3: 137}) == "rank 2: exit 139 (SIGSEGV)"


def test_a_restart_resumes_from_the_runs_checkpoint_unless_one_is_named() -> None:
    assert with_resume_auto(["-b", "8"]) == ["-b", "8", "--resume", "auto"]
    assert with_resume_auto(["--resume", "x.pth"]) == ["--resume", "x.pth"]
    assert with_resume_auto(["--resume=auto"]) == ["--resume=auto"]


def test_a_recovery_record_counts_seconds_from_the_failure() -> None:
    recovery = {"generation": 2, "cause": "rank 1: exit 137 (SIGKILL)", "failed_at": 100.0,
                "rendezvous_at": 101.25}  # fmt: skip
    assert recovery_record(recovery, 104.0, 104.5) == {
        "generation": 2,
        "cause": "rank 1: exit 137 (SIGKILL)",
        "rendezvous_seconds": 1.25,
        "checkpoint_loaded_seconds": 4.0,
        "first_step_seconds": 4.5,
    }


def test_the_policy_has_defaults_and_names_a_bad_variable() -> None:
    assert read_inplace_policy({}) == InPlacePolicy()
    assert read_inplace_policy({INPLACE_RESTARTS: "0", INPLACE_BACKOFF: "2.5"}) == InPlacePolicy(
        0, 2.5
    )
    for env, name in [({INPLACE_RESTARTS: "-1"}, INPLACE_RESTARTS),
                      ({INPLACE_BACKOFF: "soon"}, INPLACE_BACKOFF),
                      ({INPLACE_BACKOFF: "nan"}, INPLACE_BACKOFF)]:  # fmt: skip
        with pytest.raises(EnvError, match=name):
            read_inplace_policy(env)
    assert read_generation({}) is None and read_generation({"SHUFFLENET_GENERATION": "3"}) == 3


def _stores(n: int) -> list[dist.TCPStore]:
    timeout = datetime.timedelta(seconds=10)
    server = dist.TCPStore("127.0.0.1", 0, n, is_master=True, timeout=timeout,
                           wait_for_workers=False)  # fmt: skip
    clients = [dist.TCPStore("127.0.0.1", server.port, n, is_master=False, timeout=timeout)
               for _ in range(n - 1)]  # fmt: skip
    return [server, *clients]


def test_generations_advance_once_meet_all_ranks_and_keep_the_exits() -> None:
    a, b = (Generations(s, rank, 2) for rank, s in enumerate(_stores(2)))
    a.report(0, EXIT_DIST, 10.0)
    b.report(0, 137, 9.5)
    a.advance(0)
    b.advance(0)  # the second rank to see the failure changes nothing
    assert a.current() == b.current() == 1
    met: list[str | None] = []
    peer = threading.Thread(target=lambda: met.append(b.meet(1, 10, lambda: False)))
    peer.start()
    assert a.meet(1, 10, lambda: False) is None
    peer.join()
    assert met == [None]
    assert a.exits(0) == {0: (EXIT_DIST, 10.0), 1: (137, 9.5)}


def test_a_barrier_ends_on_an_abort_or_its_timeout() -> None:
    a, b = (Generations(s, rank, 2) for rank, s in enumerate(_stores(2)))
    assert a.meet(1, 0.3, lambda: False) == "not every rank came back within 0.3s"
    b.abort("rank 1: exit 2 (bad configuration)")
    b.abort("a later reason is not kept")
    assert a.meet(2, 10, lambda: False) == "rank 1: exit 2 (bad configuration)"
