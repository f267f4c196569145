"""Operator edge (kube.Kube): what observe reads as the job's children, and how the rank
table is written, against stand-ins for the API clients."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from helpers.jobs import job_manifest
from kubernetes import client
from kubernetes.client import ApiException

from shufflenet_operator import render
from shufflenet_operator.kube import Kube

UID = "job-uid"


def owned(kind: str, name: str, uid: str | None = UID) -> dict[str, Any]:
    refs = [{"kind": "ShuffleNetTrainingJob", "name": "sn", "uid": uid}] if uid else []
    return {"kind": kind, "metadata": {"name": name, "ownerReferences": refs}}


class Objects:
    """Stand-in for CoreV1Api and CustomObjectsApi: objects by (kind, name)."""

    def __init__(self, job: dict[str, Any], children: dict[tuple[str, str], Any]) -> None:
        self.job = job
        self.children = children
        self.patches: list[tuple[str, Any, str | None]] = []

    def _read(self, kind: str, name: str) -> Any:
        if (kind, name) not in self.children:
            raise ApiException(status=404)
        return self.children[(kind, name)]

    def get_namespaced_custom_object(self, group: str, *args: Any) -> Any:
        *_, plural, name = args
        if plural == "shufflenettrainingjobs":
            return self.job
        return self._read("PodGroup", name)

    def read_namespaced_service(self, name: str, namespace: str) -> Any:
        return self._read("Service", name)

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        return self._read("ConfigMap", name)

    def list_namespaced_pod(self, namespace: str, **_: Any) -> Any:
        return SimpleNamespace(data=json.dumps({"items": []}))

    def patch_namespaced_config_map(
        self, name: str, namespace: str, body: Any, _content_type: str | None = None
    ) -> None:
        if self.job is None:  # deleted, its ConfigMap with it
            raise ApiException(status=404)
        self.patches.append((name, body, _content_type))

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> None:
        if self.job is None:
            raise ApiException(status=404)
        self.patches.append((args[-2], args[-1], None))


def kube_with(children: dict[tuple[str, str], Any]) -> tuple[Kube, Objects]:
    job = job_manifest(metadata={"namespace": "ns", "uid": UID}, scheduling={"gang": True})
    fake = Objects(job, children)
    kube = Kube(client.ApiClient())
    kube.core = kube.custom = fake  # type: ignore[assignment]
    return kube, fake


def test_children_the_job_owns_are_its_own() -> None:
    kube, _ = kube_with(
        {
            ("Service", "sn"): owned("Service", "sn"),
            ("ConfigMap", "sn-ranktable"): owned("ConfigMap", "sn-ranktable"),
            ("PodGroup", "sn"): owned("PodGroup", "sn"),
        }
    )
    seen = kube.observe("ns", "sn")
    assert seen is not None
    assert seen.service is not None and seen.configmap is not None and seen.has_podgroup
    assert seen.foreign_children == ()


@pytest.mark.parametrize("uid", [None, "another-uid"], ids=["no-owner", "another-owner"])
def test_children_of_the_jobs_names_it_does_not_own_are_foreign(uid: str | None) -> None:
    kube, fake = kube_with(
        {
            ("Service", "sn"): owned("Service", "sn", uid),
            ("ConfigMap", "sn-ranktable"): owned("ConfigMap", "sn-ranktable", uid),
            ("PodGroup", "sn"): owned("PodGroup", "sn"),
        }
    )
    seen = kube.observe("ns", "sn")
    assert seen is not None
    assert seen.service is None and seen.configmap is None and seen.has_podgroup
    assert seen.foreign_children == (("Service", "sn"), ("ConfigMap", "sn-ranktable"))
    assert seen.foreign("Service") and not seen.foreign("PodGroup")
    assert fake.patches == []


def test_missing_children_are_neither_ours_nor_foreign() -> None:
    kube, _ = kube_with({})
    seen = kube.observe("ns", "sn")
    assert seen is not None
    assert (seen.service, seen.configmap, seen.has_podgroup) == (None, None, False)
    assert seen.foreign_children == ()


def test_the_rank_table_is_written_only_into_a_configmap_the_job_owns() -> None:
    kube, fake = kube_with({})
    data = {"hccl.json": "{}", "version": "2", "attempt": "0"}
    kube._write_rank_table(fake.job, data)
    ((name, patch, content_type),) = fake.patches
    assert name == render.configmap_name(fake.job)
    # A JSON patch, applied whole or not at all: the test fails on any other ConfigMap.
    assert content_type == "application/json-patch+json"
    assert patch == [
        {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": UID},
        {"op": "add", "path": "/data", "value": data},
    ]
    # Our own ConfigMap carries exactly that owner reference first.
    rendered = render.render_configmap(fake.job)
    assert rendered["metadata"]["ownerReferences"][0]["uid"] == UID


def test_a_job_deleted_mid_reconcile_is_no_error_but_other_failures_are() -> None:
    kube, fake = kube_with({})
    job = fake.job
    fake.job = None  # deleted after the reconcile read it
    # Nothing to write, nothing raised: the next look finds the job gone and forgets it.
    kube._write_status(job, {"phase": "Running"})
    kube._write_rank_table(job, {"hccl.json": "{}"})
    assert fake.patches == []
    fake.job = job
    kube._write_status(job, {"phase": "Running"})
    assert fake.patches == [("sn", {"status": {"phase": "Running"}}, None)]

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise ApiException(status=403)

    fake.patch_namespaced_custom_object_status = forbidden  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        kube._write_status(job, {"phase": "Failed"})
