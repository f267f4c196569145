import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_default_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # Training runs started by tests would otherwise all serve metrics on the default port
    # 9400 and collide with each other or with anything else on the machine; the tests
    # that check the exporter pass their own free ports.
    monkeypatch.setenv("METRICS_PORT", "0")
