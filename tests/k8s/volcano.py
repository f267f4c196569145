"""Volcano's PodGroup API for tests: the CRD only (scheduling.volcano.sh/v1beta1 PodGroup,
the fields the operator writes), no Volcano scheduler or controller. Installed by a test that
needs it and removed after, since other tests check what happens without it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import client
from sim.node_agent import wait_for

from k8s.operator_harness import install_crd

NAME = "podgroups.scheduling.volcano.sh"


def podgroup_crd() -> dict[str, Any]:
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": "scheduling.volcano.sh",
            "names": {
                "kind": "PodGroup",
                "listKind": "PodGroupList",
                "plural": "podgroups",
                "singular": "podgroup",
                "shortNames": ["pg"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "minMember": {"type": "integer", "format": "int32"},
                                        "queue": {"type": "string"},
                                        "priorityClassName": {"type": "string"},
                                        "minResources": {
                                            "type": "object",
                                            "additionalProperties": {
                                                "x-kubernetes-int-or-string": True
                                            },
                                        },
                                    },
                                },
                                "status": open_object,
                            },
                        }
                    },
                }
            ],
        },
    }


@contextmanager
def podgroup_api(api: client.ApiClient) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(api)
    install_crd(api, podgroup_crd())
    try:
        yield
    finally:
        ext.delete_custom_resource_definition(NAME)

        def gone() -> bool:
            try:
                ext.read_custom_resource_definition(NAME)
            except client.ApiException as e:
                return e.status == 404
            return False

        wait_for(gone, timeout=60, what="PodGroup CRD removed")
