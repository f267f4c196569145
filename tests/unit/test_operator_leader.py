"""Leader election's pure parts: the decision by client-go's rules, the Lease record, the
flags. tests/k8s/test_operator_ha.py runs two operators against a real API server."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import kopf
import pytest

from shufflenet_operator import handlers, main
from shufflenet_operator.leader import (
    Decision,
    Record,
    Timing,
    acquired,
    decide,
    lease_spec,
    record_of,
    released,
    renewed,
)

T = Timing()  # 15 / 10 / 2
ME, OTHER = "op-a_1", "op-b_2"
WALL = datetime(2026, 12, 8, 3, 4, 5, 6000, tzinfo=timezone.utc)


def held_by(holder: str, duration: int = 15, transitions: int = 0) -> Record:
    return Record(holder, duration, WALL, WALL, transitions)


def test_no_lease_is_acquired_by_creating_it() -> None:
    assert decide(None, 0.0, 100.0, ME, T) is Decision.ACQUIRE


def test_a_lease_held_by_another_is_waited_for_until_unchanged_for_its_duration() -> None:
    # Measured from when this candidate saw the record change, never from renewTime: the
    # other node's clock may differ from ours.
    seen_at = 100.0
    assert decide(held_by(OTHER), seen_at, seen_at + 14.9, ME, T) is Decision.WAIT
    assert decide(held_by(OTHER), seen_at, seen_at + 15.0, ME, T) is Decision.ACQUIRE
    # The holder's own leaseDurationSeconds counts, not ours.
    assert decide(held_by(OTHER, duration=60), seen_at, seen_at + 30, ME, T) is Decision.WAIT


def test_a_released_lease_is_taken_at_once() -> None:
    free = released(held_by(OTHER, transitions=3), WALL)
    assert free.holder == "" and free.lease_duration_seconds == 1 and free.transitions == 3
    assert decide(free, 100.0, 100.0, ME, T) is Decision.ACQUIRE


def test_the_holder_renews_until_it_misses_the_renew_deadline() -> None:
    mine = held_by(ME)
    assert decide(mine, 100.0, 101.0, ME, T, last_renewed=100.0) is Decision.RENEW
    assert decide(mine, 100.0, 109.9, ME, T, last_renewed=100.0) is Decision.RENEW
    # renewDeadline after its last renewal a leader stops, before the leaseDuration after
    # which a standby that saw that renewal may take over.
    assert decide(mine, 100.0, 110.0, ME, T, last_renewed=100.0) is Decision.LOST


def test_a_leader_that_finds_another_holder_or_no_lease_has_lost() -> None:
    assert decide(held_by(OTHER), 105.0, 105.0, ME, T, last_renewed=104.0) is Decision.LOST
    assert decide(None, 105.0, 105.0, ME, T, last_renewed=104.0) is Decision.LOST


def test_records_acquired_renewed_released_keep_client_gos_fields() -> None:
    first = acquired(None, ME, WALL, T)
    assert first == Record(ME, 15, WALL, WALL, 0)
    later = datetime(2026, 12, 8, 3, 4, 7, tzinfo=timezone.utc)
    assert renewed(first, later, T) == Record(ME, 15, WALL, later, 0)
    # A new holder: a transition, its own acquireTime.
    taken = acquired(held_by(OTHER, transitions=4), ME, later, T)
    assert (taken.holder, taken.acquire_time, taken.transitions) == (ME, later, 5)


def test_the_record_round_trips_through_the_leases_spec() -> None:
    record = Record(ME, 15, WALL, datetime(2026, 12, 8, 3, 4, 7, tzinfo=timezone.utc), 2)
    spec = lease_spec(record)
    # MicroTime: six fractional digits always (the API server parses RFC3339Micro).
    assert spec == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "leaseTransitions": 2,
        "acquireTime": "2026-12-08T03:04:05.006000Z",
        "renewTime": "2026-12-08T03:04:07.000000Z",
    }
    assert record_of({"spec": spec}) == record
    # As the API server may return a Lease another client wrote: fields left out.
    assert record_of({"spec": {}}) == Record()
    assert record_of(None) is None
    assert record_of({"spec": lease_spec(released(record, WALL))}).holder == ""


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--leader-elect-renew-deadline", "15"], "lease-duration must be greater than"),
        (["--leader-elect-retry-period", "9"], "renew-deadline must be greater than 1.2 x"),
        (["--leader-elect-retry-period", "0"], "greater than zero"),
    ],
)
def test_durations_are_checked_as_client_go_checks_them(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main.parse_args(["--leader-elect", "--leader-elect-resource-namespace", "ns", *flags])
    assert message in capsys.readouterr().err


def test_leader_election_flags_default_to_client_gos_durations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = main.parse_args([])
    assert not args.leader_elect  # one process reconciles from the start, as before
    monkeypatch.setenv("POD_NAMESPACE", "shufflenet-system")
    args = main.parse_args(["--leader-elect"])
    assert args.leader_elect_namespace == "shufflenet-system"
    assert args.leader_elect_name == "shufflenet-operator"
    timing = (
        args.leader_elect_lease_duration,
        args.leader_elect_renew_deadline,
        args.leader_elect_retry_period,
    )
    assert timing == (15, 10, 2)


def test_leader_election_flags_reach_the_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    argv = ["--leader-elect", "--leader-elect-resource-namespace", "ops"]
    argv += ["--leader-elect-resource-name", "lock", "--leader-elect-lease-duration", "30"]
    assert main.main(argv) == 0
    options = handlers.options_of(seen["memo"])
    assert options.leader_elect and options.leader_elect_name == "lock"
    assert (options.leader_elect_namespace, options.leader_elect_lease_duration) == ("ops", 30)
    # Every replica's kopf runs standalone: no kopf peering objects.
    assert seen["standalone"] is True
