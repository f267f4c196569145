"""shufflenet-operator's flags reach the handlers through kopf's memo, not module globals."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from shufflenet_operator import handlers, main


def test_flags_reach_the_handlers_in_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    argv = ["-n", "team-a", "--restart-backoff", "3", "--workers", "5", "--metrics-port", "0"]
    assert main.main(argv) == 0
    options = handlers.options_of(seen["memo"])
    assert options.namespaces == ["team-a"]
    assert (options.restart_backoff_seconds, options.workers, options.metrics_port) == (3, 5, 0)
    assert seen["namespaces"] == ["team-a"] and not seen["clusterwide"]


def test_without_options_in_the_memo_the_defaults_apply() -> None:
    # `kopf run -m shufflenet_operator.handlers` starts with an empty memo.
    assert handlers.options_of(kopf.Memo()) == handlers.Options()
