"""The edge: read a job and its children from the API server, apply a Plan, post Events.

Everything is a plain dict in the API's camelCase form, so the pure functions never see
client classes. Creation tolerates 409 (it exists: an earlier reconcile or an operator that
died mid-way made it) and deletion tolerates 404, which is what makes reconciles idempotent.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException

from shufflenet_contract import crd

from . import policy, render
from . import status as st
from .observed import Observed, owned_by
from .policy import Plan

log = logging.getLogger(__name__)

_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
# What Kubernetes takes as a label value.
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_VALUE_MAX = 63

# Pod creations in flight at once for one job (within the client's connection pool).
CREATE_PARALLELISM = 8


def load_api_client() -> client.ApiClient:
    """In a pod: its service account; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Rejected(Exception):
    """The API server refused a child: the job's spec is at fault, not a passing condition
    (the message says what to change)."""

    @classmethod
    def invalid(cls, kind: str, name: str, message: str) -> Rejected:
        """A child refused as invalid or undecodable (422, 400)."""
        return cls(f"{kind} {name} rejected by the API server: {message}")


class Refused(Exception):
    """The API server refused a child for now (403 from admission: a PriorityClass that does
    not exist yet, an exhausted quota): the spec may do once the cluster changes."""


class PodGroupUnavailable(Rejected):
    """Gang scheduling was asked for, but the cluster has no Volcano PodGroup API."""

    def __init__(self) -> None:
        super().__init__(
            f"spec.scheduling.gang: true needs Volcano's PodGroup API "
            f"({render.PODGROUP_GROUP}/{render.PODGROUP_VERSION}), which this cluster does "
            "not serve: install Volcano, or set spec.scheduling.gang to false and leave "
            "spec.scheduling.schedulerName out (the default scheduler then binds the pods)",
        )


def _client_message(exc: ValueError) -> str:
    """The first problem the client found, as `field.path: what is wrong`."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = [str(p) for p in first.get("loc", ())]
            if loc and loc[0].isdigit():  # the argument's position in the call
                loc = loc[1:]
            return f"{'.'.join(loc)}: {first.get('msg')}"
        except (TypeError, IndexError, AttributeError, KeyError):
            pass
    lines = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in lines[:3])


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _overdue(pod: dict[str, Any], now: datetime) -> bool:
    """Being deleted, and past its grace period (deletionTimestamp)."""
    deleting = st.parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
    return deleting is not None and deleting <= now


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def _get(self, read: Any, *args: Any) -> dict[str, Any] | None:
        try:
            return self._plain(read(*args))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(
            self.custom.get_namespaced_custom_object,
            crd.GROUP,
            crd.VERSION,
            namespace,
            crd.PLURAL,
            name,
        )

    def observe(self, namespace: str, name: str) -> Observed | None:
        """The job and its children as they are now; None when the job is gone."""
        job = self.get_job(namespace, name)
        if job is None:
            return None
        pods: list[dict[str, Any]] = []
        # A name the API server takes (up to 253 characters) may not be a label value: no
        # pod can carry it, and selecting by it is refused (400), which would keep the job
        # from ever reaching the plan that fails it on its name.
        if len(name) <= _LABEL_VALUE_MAX and _LABEL_VALUE.match(name):
            selector = f"{render.JOB_LABEL}={name}"
            # The raw JSON: turning hundreds of pods into client objects and back into dicts
            # costs ~9x the request itself (measured on a 256-rank job, docs/benchmarks.md).
            response = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False
            )
            pods = json.loads(response.data)["items"]
        uid = job["metadata"]["uid"]
        # Only children this job owns: a job re-created under the same name must not adopt
        # the pods of its predecessor that the garbage collector has yet to remove.
        owned = [p for p in pods if owned_by(p, uid)]
        foreign = len(pods) - len(owned)
        if (job.get("status") or {}).get("phase") in policy.TERMINAL:
            # A finished job's plan looks at its pods only (cleanup, TTL).
            return Observed(job, owned, foreign_pods=foreign)
        children = self._children(job)
        # The same for the other children, read by name: an object of that name that the job
        # does not own (another job's, or made by hand to have the job adopt and rewrite it)
        # is not the job's; the plan leaves it alone and the job waits for the name.
        ours = {kind: c for kind, c in children.items() if c is not None and owned_by(c, uid)}
        taken = tuple(
            (kind, str(c["metadata"].get("name")))
            for kind, c in children.items()
            if c is not None and kind not in ours
        )
        return Observed(
            job,
            owned,
            service=ours.get("Service"),
            configmap=ours.get("ConfigMap"),
            foreign_pods=foreign,
            has_podgroup="PodGroup" in ours,
            foreign_children=taken,
            nodes=self._nodes(owned, int((job.get("status") or {}).get("restarts") or 0)),
        )

    def _nodes(self, pods: list[dict[str, Any]], attempt: int) -> dict[str, dict[str, Any]]:
        """The Nodes of this attempt's pods that failed or are being deleted (quarantine's
        evidence), and of any pod still there past its deletion grace (a kubelet confirms
        within it, unless its node is lost): not of every pod a restart deletes. One the
        operator may not read (no RBAC to get nodes: 403) or that is gone is left out:
        quarantine then goes by what the pods say alone."""
        now = datetime.now(timezone.utc)
        names = {
            str(p["spec"]["nodeName"])
            for p in pods
            if (p.get("spec") or {}).get("nodeName")
            and (
                (
                    st.pod_restart(p) == attempt
                    and (st.pod_phase(p) == "Failed" or st.is_deleting(p))
                )
                or _overdue(p, now)
            )
        }
        found: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            try:
                node = self._get(self.core.read_node, name)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                log.warning("node %s: not readable (%s): quarantine without it", name, exc.reason)
                return found
            if node is not None:
                found[name] = node
        return found

    def _children(self, job: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
        """The job's Service, rank-table ConfigMap (npu) and PodGroup (gang) as read by
        name, whoever owns them (None: not there)."""
        namespace, spec = job["metadata"]["namespace"], job.get("spec") or {}
        found: dict[str, dict[str, Any] | None] = {
            "Service": self._get(
                self.core.read_namespaced_service, render.service_name(job), namespace
            )
        }
        if (spec.get("devices") or {}).get("type") == "npu":
            found["ConfigMap"] = self._get(
                self.core.read_namespaced_config_map, render.configmap_name(job), namespace
            )
        if (spec.get("scheduling") or {}).get("gang"):
            # 404: no such group, or no such API (Volcano missing): creating it will tell.
            found["PodGroup"] = self._get(
                self.custom.get_namespaced_custom_object,
                render.PODGROUP_GROUP,
                render.PODGROUP_VERSION,
                namespace,
                render.PODGROUP_PLURAL,
                render.podgroup_name(job),
            )
        return found

    def _create_podgroup(self, namespace: str, body: dict[str, Any]) -> Any:
        try:
            return self.custom.create_namespaced_custom_object(
                render.PODGROUP_GROUP,
                render.PODGROUP_VERSION,
                namespace,
                render.PODGROUP_PLURAL,
                body,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise PodGroupUnavailable() from None
            raise

    def apply(self, job: dict[str, Any], plan: Plan, now: datetime) -> None:
        """Carry out `plan` for `job` (as read), in the order Plan documents: create,
        configmap, status, delete; then its Events and, past its TTL, the job itself."""
        namespace = job["metadata"]["namespace"]
        self._create_children(namespace, plan.create)
        if plan.configmap_data is not None:
            self._write_rank_table(job, plan.configmap_data)
        self._write_status(job, plan.status)
        # Pods are deleted after the status is written: should the operator die in between,
        # the status already says why (a restart's reason, Failed), and their stale restart
        # label has them deleted, not mistaken for a new failure, next time.
        self._delete_pods(namespace, plan.delete_pods)
        self._delete_pods(namespace, plan.force_delete_pods, grace_period_seconds=0)
        for event in plan.events:
            self.post_event(job, event, now)
        if plan.delete_job:
            self._delete_job(job)

    def _create_children(self, namespace: str, manifests: list[dict[str, Any]]) -> None:
        # Pods last (the PodGroup and the rank-table ConfigMap they use come first), several
        # at a time: one by one, creating a 256-rank job's pods took half its start time.
        children = [m for m in manifests if m["kind"] != "Pod"]
        pods = [m for m in manifests if m["kind"] == "Pod"]
        for manifest in children:
            self._create(namespace, manifest)
        if pods:
            with ThreadPoolExecutor(min(CREATE_PARALLELISM, len(pods))) as pool:
                for done in [pool.submit(self._create, namespace, m) for m in pods]:
                    done.result()

    def _write_rank_table(self, job: dict[str, Any], data: dict[str, str]) -> None:
        """The table into the job's own ConfigMap only. The plan writes none that it saw
        was not the job's; the `test` operation makes sure of it at the moment of writing
        (one made in between, after the job's was deleted, is not written either): the API
        server applies a JSON patch whole or not at all, and refuses it when a test fails."""
        patch = [
            {
                "op": "test",
                "path": "/metadata/ownerReferences/0/uid",
                "value": job["metadata"]["uid"],
            },
            {"op": "add", "path": "/data", "value": data},
        ]
        try:
            self.core.patch_namespaced_config_map(
                render.configmap_name(job),
                job["metadata"]["namespace"],
                patch,
                _content_type=_JSON_PATCH,
            )
        except ApiException as exc:
            _gone_meanwhile(exc)

    def _write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        """The job's status subresource, when it changed."""
        old = job.get("status") or {}
        if status == old:
            return
        # A merge patch keeps what it does not mention: dropped fields are set to null.
        patch = {**{k: None for k in old if k not in status}, **status}
        namespace, name = _key(job)
        try:
            self.custom.patch_namespaced_custom_object_status(
                crd.GROUP,
                crd.VERSION,
                namespace,
                crd.PLURAL,
                name,
                {"status": patch},
                _content_type=_MERGE,
            )
        except ApiException as exc:
            _gone_meanwhile(exc)

    def _delete_pods(
        self,
        namespace: str,
        pods: list[tuple[str, str]],
        grace_period_seconds: int | None = None,
    ) -> None:
        """Each (name, uid): only that very pod (a namesake created since is kept).
        `grace_period_seconds` 0: removed at once, without waiting for its kubelet."""
        for pod_name, uid in pods:
            try:
                self.core.delete_namespaced_pod(
                    pod_name,
                    namespace,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=grace_period_seconds,
                        preconditions=client.V1Preconditions(uid=uid),
                    ),
                )
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise

    def _delete_job(self, job: dict[str, Any]) -> None:
        """ttlSecondsAfterFinished: the job goes, its children with it (garbage collector)."""
        namespace, name = _key(job)
        try:
            self.custom.delete_namespaced_custom_object(
                crd.GROUP,
                crd.VERSION,
                namespace,
                crd.PLURAL,
                name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _create(self, namespace: str, manifest: dict[str, Any]) -> None:
        create = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "PodGroup": self._create_podgroup,
        }[manifest["kind"]]
        try:
            create(namespace, manifest)
        except ValueError as exc:
            # The client checks the types of what it sends (pydantic on kubernetes >= 37):
            # a podTemplate or volume source the CRD keeps as written can fail here, before
            # the API server sees it. Retrying would fail the same way, forever.
            raise Rejected(
                f"{manifest['kind']} {manifest['metadata']['name']} rejected by the "
                f"Kubernetes client: {_client_message(exc)}"
            ) from None
        except ApiException as exc:
            # 422: invalid; 400: not even decodable (a quantity such as an emptyDir's
            # sizeLimit "lots" fails while the body is read). Both come from the job's spec
            # and would fail the same way on every retry.
            if exc.status in (400, 422):
                raise Rejected.invalid(
                    manifest["kind"], manifest["metadata"]["name"], _api_message(exc)
                ) from None
            if exc.status == 403:
                raise Refused(
                    f"{manifest['kind']} {manifest['metadata']['name']} refused by the API "
                    f"server: {_api_message(exc)}"
                ) from None
            if exc.status != 409:
                raise

    def post_event(self, job: dict[str, Any], event: st.Event, now: datetime) -> None:
        meta = job["metadata"]
        stamp = st.format_time(now)
        body = {
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": crd.API_VERSION,
                "kind": crd.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": render.MANAGED_BY},
            "reportingComponent": render.MANAGED_BY,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            # An Event is a courtesy: losing one must not fail the reconcile.
            log.warning("event %s on %s/%s not posted: %s", event.reason, *_key(job), exc.reason)


def _gone_meanwhile(exc: ApiException) -> None:
    """A write that found its object deleted since the reconcile read it (404: a job
    deleted, with its ConfigMap, mid-reconcile) has nothing left to do: the next look
    forgets the job, or makes the ConfigMap again. Any other error is raised."""
    if exc.status != 404:
        raise exc
    log.info("not written: deleted meanwhile (%s)", exc.reason)


def _key(job: dict[str, Any]) -> tuple[str, str]:
    return job["metadata"]["namespace"], job["metadata"]["name"]
