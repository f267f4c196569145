"""The cluster fault-injection soak (tests/soak/cluster.py), short: `make soak` runs it long.

Real control plane and operator, SIMULATED nodes and ranks (tests/sim, tests/soak/sim_rank.py),
seeded faults of every class; it passes when no invariant was ever violated, jobs ended, and
the injector really injected (a broken injector must fail this test, not pass it quietly).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from soak.cluster import FAULTS, run_soak

pytestmark = pytest.mark.slow

SECONDS = 60
SEED = 7


def test_a_minute_of_faults_breaks_no_invariant(tmp_path: Path) -> None:
    result, lines = run_soak(SECONDS, SEED, tmp_path / "soak", settle_s=60, log=lambda _: None)
    report = "\n".join(lines)
    assert not result.violations, report
    assert lines[0] == result.summary()
    # The injector did its job: most fault classes hit, and the jobs lived through them.
    kinds = {f.kind for f in result.faults}
    assert len(kinds) >= len(FAULTS) - 2, f"only {sorted(kinds)} injected\n{report}"
    ended = sum(result.outcomes.values())
    assert ended >= 5, f"{ended} jobs ended: {dict(result.outcomes)}"
    assert result.outcomes["Succeeded/AllRanksSucceeded"] >= 3, dict(result.outcomes)
    restarts = sum(r[1] for f in result.faults for r in f.recovered.values())
    assert restarts >= 1, "no fault caused a restart"
