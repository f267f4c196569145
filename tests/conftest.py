from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "k8s")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Each test carries its tier's marker from its folder, so that `-m` selects tiers.
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_default_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # Training runs started by tests would otherwise all serve metrics on the default port
    # 9400 and collide with each other or with anything else on the machine; the tests
    # that check the exporter pass their own free ports.
    monkeypatch.setenv("METRICS_PORT", "0")


@pytest.fixture(autouse=True)
def _fixed_shuffle_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # Measuring the shuffle kernels costs every small training run ~2 s at its first steps
    # (6.6 s against 4.7 s for a 2-step CLI run); tests/unit/test_kernel_choice.py and the
    # --dummy run of tests/unit/test_synthetic.py cover the measured choice.
    monkeypatch.setenv("SHUFFLENET_SHUFFLE_KERNEL", "copy")
