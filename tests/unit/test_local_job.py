"""scripts/cluster/local_job.py: the example job as `make demo-cluster` applies it, and the
PersistentVolumes an admin makes for its claims."""

from __future__ import annotations

import runpy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shufflenet_contract import job as jobs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "cpu-digits-2rank.yaml"
demo = runpy.run_path(str(ROOT / "scripts" / "cluster" / "local_job.py"))


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_job_is_the_example_as_shipped_but_for_the_overrides() -> None:
    assert demo["local_job"](example()) == example()
    job = demo["local_job"](example(), overrides={"training.epochs": 2})
    expected = example()
    expected["spec"]["training"]["epochs"] = 2
    # No image, no pull policy: the operator's default trainer image, pulled from a registry.
    assert "image" not in job["spec"] and "imagePullPolicy" not in job["spec"]
    # No securityContext, no volumes: the operator's defaults and the example's claims.
    assert job == expected
    jobs.validate_job(job)


def test_volumes_bind_the_examples_claims_to_host_directories(tmp_path: Path) -> None:
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    objects = demo["claim_volumes"](example(), data=data, checkpoints=ckpt, namespace="team")
    pvs = {o["spec"]["claimRef"]["name"]: o for o in objects if o["kind"] == "PersistentVolume"}
    pvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert set(pvs) == set(pvcs) == {"digits", "shufflenet-checkpoints"}
    assert pvs["digits"]["spec"]["hostPath"]["path"] == str(data)
    assert pvs["shufflenet-checkpoints"]["spec"]["hostPath"]["path"] == str(ckpt)
    for claim, pvc in pvcs.items():
        pv = pvs[claim]
        # Bound both ways and outside any storage class: no other claim or provisioner.
        assert pv["spec"]["claimRef"] == {"namespace": "team", "name": claim}
        assert pvc["metadata"]["namespace"] == "team"
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""
        assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"]
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_cli_prints_the_volumes_then_the_job_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["volumes", str(EXAMPLE), "--data", str(tmp_path), "--checkpoints", str(tmp_path)]
    assert demo["main"](argv) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert sorted(kinds) == ["PersistentVolume"] * 2 + ["PersistentVolumeClaim"] * 2
    argv = ["job", str(EXAMPLE), "--name", "n", "--set", "training.epochs=3"]
    assert demo["main"](argv) == 0
    (job,) = yaml.safe_load_all(capsys.readouterr().out)
    assert job["metadata"]["name"] == "n" and job["spec"]["training"]["epochs"] == 3
