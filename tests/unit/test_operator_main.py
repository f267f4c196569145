"""shufflenet-operator's flags reach the handlers through kopf's memo, not module globals."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from shufflenet_operator import handlers, main, policy, render


def started_with(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> handlers.Options:
    """The options the handlers get when the operator starts with `argv` (kopf stubbed)."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    assert main.main(argv) == 0
    return handlers.options_of(seen["memo"])


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


def test_the_job_policy_and_the_npu_device_group_are_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    assert main.main(["--job-policy", "restricted", "--npu-device-group", "1001"]) == 0
    options = handlers.options_of(seen["memo"])
    assert (options.job_policy, options.npu_device_group) == ("restricted", 1001)
    # The defaults: Pod Security "baseline", and the image's own group for the NPUs.
    defaults = main.parse_args([])
    assert (defaults.job_policy, defaults.npu_device_group) == ("baseline", None)
    assert handlers.Options().job_policy == policy.Settings().job_policy == "baseline"


def test_rank_resources_change_the_defaults_one_key_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["--rank-resources", "npu=cpu:16,memory:64Gi", "--rank-resources", "npu=shm:8Gi"]
    options = started_with(monkeypatch, argv)
    assert options.rank_resources["npu"] == render.RankResources("16", "64Gi", "8Gi")
    assert options.rank_resources["gpu"] == render.RANK_RESOURCES["gpu"]
    # Without the flag: the defaults, the same under `kopf run -m`.
    assert main.parse_args([]).rank_resources == handlers.Options().rank_resources
    assert handlers.Options().rank_resources == policy.Settings().rank_resources


def test_trainer_images_are_flags_by_device_type(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--trainer-image", "cpu=r:5000/a/t-cpu:1", "--trainer-image", "npu=r/t@sha256:ab"]
    options = started_with(monkeypatch, argv)
    assert options.trainer_images == {"cpu": "r:5000/a/t-cpu:1", "npu": "r/t@sha256:ab"}
    assert main.parse_args([]).trainer_images == handlers.Options().trainer_images == {}
    assert policy.Settings().trainer_images == {}


@pytest.mark.parametrize(
    "argv",
    [
        ["--trainer-image", "tpu=r/t:1"],
        ["--trainer-image", "cpu="],
        ["--trainer-image", "r/t:1"],
        ["--job-policy", "strict"],
        ["--npu-device-group", "0"],
        ["--npu-device-group", "wheel"],
        ["--rank-resources", "tpu=cpu:1"],
        ["--rank-resources", "gpu=cpu:8x"],
        ["--rank-resources", "gpu=requests:1"],
        ["--rank-resources", "gpu"],
        ["--rank-resources", "gpu=cpu8"],
    ],
)
def test_a_bad_job_policy_or_group_stops_the_operator_at_once(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main.parse_args(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err
