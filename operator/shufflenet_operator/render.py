"""A validated ShuffleNetTrainingJob -> the manifests of its children (pure functions).

Children, all owned by the job (the garbage collector removes them with it) and named
deterministically, so that creating one twice is a harmless 409 and an operator restart
never duplicates anything:

- `<job>`: a headless Service selecting the job's rank pods (their DNS names for the
  rendezvous: `<job>-rank-<k>.<job>.<namespace>.svc`);
- `<job>-ranktable` (NPU jobs): the HCCL rank table ConfigMap, mounted in every rank pod;
- `<job>` (when spec.scheduling.gang): a Volcano PodGroup of all rank pods, so that the
  scheduler binds all of them or none (a job half placed holds devices and cannot train);
- `<job>-rank-<k>`: one pod per device, with the env contract of `shufflenet_contract.job`
  (`<job>-node-<k>`: one pod per spec.devices.perPod devices, running that many ranks),
  locked down to pass Pod Security "restricted" unless spec.podTemplate loosens it, with
  CPU and memory requests and a bounded /dev/shm (`RankResources`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from shufflenet_contract import crd, env, ranktable
from shufflenet_contract import job as jobs

# Labels the PodMonitor, the Service selector and the operator itself rely on.
JOB_LABEL = f"{crd.GROUP}/job-name"
RANK_LABEL = f"{crd.GROUP}/rank"
# Which whole-job attempt a pod belongs to (status.restarts when it was created): a pod of an
# earlier attempt is stale and deleted, never mistaken for a failure of the current one.
RESTART_LABEL = f"{crd.GROUP}/restart"
MANAGED_BY = "shufflenet-operator"

CONTAINER = "trainer"
METRICS_PORT_NAME = "metrics"
RENDEZVOUS_PORT_NAME = "rendezvous"
DATA_VOLUME = "data"
CHECKPOINT_VOLUME = "checkpoint"
RANKTABLE_VOLUME = "ranktable"
SHM_VOLUME = "dshm"
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"
RANK_TABLE_FILE = f"{ranktable.MOUNT_DIR}/{ranktable.FILE_KEY}"

# Every rank pod passes Pod Security "restricted" as rendered (spec.podTemplate may loosen
# it, within the operator's job policy). No runAsUser: the image's own user runs the trainer,
# and with runAsNonRoot the kubelet refuses to start a container whose user is root or not
# numeric, since it cannot tell (verifyRunAsNonRoot, pkg/kubelet/kuberuntime/
# security_context_others.go): the images set a numeric USER (10001; 1000, HwHiAiUser, for
# Ascend).
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# A read-only root filesystem: what the trainer writes goes to its volumes (checkpoints,
# /tmp, /dev/shm).
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# Where CANN and torch_npu write, moved under the writable /tmp (they default to the user's
# home or the working directory): the files of this machine alone (ASCEND_WORK_PATH, CANN's
# environment variable reference envref_07_0007), the shareable ones such as compiled
# kernels (ASCEND_CACHE_PATH, envref_07_0006), torch_npu's operator compile cache
# (ACL_OP_COMPILER_CACHE_DIR) and the process logs (ASCEND_PROCESS_LOG_PATH,
# envref_07_0120). Defaults, as in images/trainer-ascend, which a podTemplate may change.
ASCEND_WRITABLE_ENV = {
    "ASCEND_WORK_PATH": f"{TMP_PATH}/ascend/work",
    "ASCEND_CACHE_PATH": f"{TMP_PATH}/ascend/cache",
    "ACL_OP_COMPILER_CACHE_DIR": f"{TMP_PATH}/ascend/cache/op",
    "ASCEND_PROCESS_LOG_PATH": f"{TMP_PATH}/ascend/log",
}


@dataclass(frozen=True)
class RankResources:
    """What the operator gives each rank (device) of a pod, times the ranks in the pod
    (spec.devices.perPod), unless the job's podTemplate says otherwise: requests for `cpu`
    and `memory` (quantities, as in a pod spec), and the `shm` sizeLimit of /dev/shm.

    Requests and no limits: the pods are Burstable, not BestEffort (which the kubelet evicts
    first, and one evicted rank restarts the whole job), the scheduler places them where
    the CPU and memory are, and a namespace's requests quota admits them without a
    LimitRange. No memory limit: a rank OOM-killed at a peak (DataLoader workers, /dev/shm
    pages) also restarts the whole job; a job that wants a limit sets one in its podTemplate.
    """

    cpu: str
    memory: str
    shm: str


RANK_RESOURCE_KEYS = ("cpu", "memory", "shm")
# Floors, not sizes: they make a rank Burstable and admissible under a requests quota on any
# node, the smallest included (four ranks on two cores), and leave sizing to the admin
# (--rank-resources), who knows the node: an Ascend server shares 192 cores among 8 chips.
# A floor too big leaves a job Pending where it would run; one too small only shares CPUs.
RANK_RESOURCES: dict[str, RankResources] = {
    "cpu": RankResources(cpu="250m", memory="1Gi", shm="1Gi"),
    "gpu": RankResources(cpu="250m", memory="2Gi", shm="2Gi"),
    "npu": RankResources(cpu="250m", memory="2Gi", shm="2Gi"),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity_parts(text: str) -> tuple[Decimal, str]:
    """A plain quantity (500m, 2, 1.5, 16Gi) as (number, unit); ValueError otherwise."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 500m, 2, 1.5 or 16Gi")
    return Decimal(match[1]), match[2] or ""


def check_quantity(text: str) -> str:
    """`text` when it is a plain quantity; ValueError otherwise."""
    _quantity_parts(text)
    return text


def scale_quantity(quantity: str, times: int) -> str:
    """`quantity` times `times`, in its own unit: 500m x 2 = 1000m, 16Gi x 8 = 128Gi."""
    number, unit = _quantity_parts(quantity)
    return f"{(number * times).normalize():f}{unit}"


def rank_resources(
    changes: Iterable[tuple[str, Mapping[str, str]]],
    base: Mapping[str, RankResources] = RANK_RESOURCES,
) -> dict[str, RankResources]:
    """`base` with `changes` (device type, {key: quantity}) applied in order."""
    out = dict(base)
    for device, fields in changes:
        out[device] = replace(out[device], **fields)
    return out


# Volcano's PodGroup, and the pod annotation naming a pod's group (the key Volcano shares
# with the scheduler-plugins coscheduling plugin).
PODGROUP_GROUP = "scheduling.volcano.sh"
PODGROUP_VERSION = "v1beta1"
PODGROUP_PLURAL = "podgroups"
PODGROUP_ANNOTATION = "scheduling.k8s.io/group-name"


def service_name(job: Mapping[str, Any]) -> str:
    return str(job["metadata"]["name"])


def configmap_name(job: Mapping[str, Any]) -> str:
    return f"{job['metadata']['name']}-ranktable"


def master_addr(job: Mapping[str, Any]) -> str:
    """Rank 0's DNS name through the headless Service (no cluster domain assumed)."""
    meta = job["metadata"]
    return f"{jobs.pod_name(job, 0)}.{service_name(job)}.{meta['namespace']}.svc"


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector(job: Mapping[str, Any]) -> dict[str, str]:
    return {JOB_LABEL: str(job["metadata"]["name"])}


def _metadata(job: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job["metadata"]["namespace"],
        "labels": {
            "app.kubernetes.io/name": "shufflenet-trainer",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            **selector(job),
            **labels,
        },
        "ownerReferences": [owner_reference(job)],
    }


def render_service(job: Mapping[str, Any]) -> dict[str, Any]:
    """The headless Service giving each rank pod a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job), {}),
        "spec": {
            "clusterIP": "None",
            "selector": selector(job),
            # Rank 0 must be resolvable before any rank is Ready: the rendezvous is what makes
            # them ready in the first place.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": RENDEZVOUS_PORT_NAME, "port": env.DEFAULT_MASTER_PORT},
                {"name": METRICS_PORT_NAME, "port": int(job["spec"]["metrics"]["port"])},
            ],
        },
    }


def podgroup_name(job: Mapping[str, Any]) -> str:
    return str(job["metadata"]["name"])


def render_podgroup(job: Mapping[str, Any]) -> dict[str, Any]:
    """The Volcano PodGroup of the job's rank pods: all of them, or none, get scheduled."""
    scheduling = job["spec"]["scheduling"]
    spec: dict[str, Any] = {"minMember": jobs.pod_count(job), "queue": scheduling["queue"]}
    if scheduling.get("priorityClassName"):
        spec["priorityClassName"] = scheduling["priorityClassName"]
    resource = jobs.resource_name(job)
    if resource:
        # Volcano's enqueue step admits the group only when the queue can hold all of it.
        spec["minResources"] = {resource: str(jobs.world_size(job))}
    return {
        "apiVersion": f"{PODGROUP_GROUP}/{PODGROUP_VERSION}",
        "kind": "PodGroup",
        "metadata": _metadata(job, podgroup_name(job), {}),
        "spec": spec,
    }


def render_configmap(job: Mapping[str, Any], attempt: int = 0) -> dict[str, Any]:
    """The rank-table ConfigMap as first created: status initializing, version 1."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, configmap_name(job), {}),
        "data": ranktable.configmap_data(
            ranktable.dump(ranktable.initializing_table()), 1, attempt
        ),
    }


def _volumes(
    job: Mapping[str, Any], shm_size: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job["spec"]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    data = spec["data"]
    if data.get("volume") and not data["dummy"]:
        volumes.append({"name": DATA_VOLUME, **copy.deepcopy(data["volume"])})
        mounts.append({"name": DATA_VOLUME, "mountPath": data["path"]})
    ckpt = spec["checkpoint"]
    # Without a volume the checkpoints die with the pod (and a restart starts over), but
    # the trainer still needs a writable directory there.
    source = copy.deepcopy(ckpt["volume"]) if ckpt.get("volume") else {"emptyDir": {}}
    volumes.append({"name": CHECKPOINT_VOLUME, **source})
    mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": ckpt["path"]})
    # DataLoader workers pass batches through shared memory; the runtime's 64 MiB default
    # /dev/shm is too small for ImageNet batches. Its pages are the pod's memory: unbounded,
    # the tmpfs could take half the node's; past sizeLimit the kubelet evicts the pod.
    shm = {"medium": "Memory", "sizeLimit": shm_size}
    volumes.append({"name": SHM_VOLUME, "emptyDir": shm})
    mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    # A writable /tmp under a read-only root filesystem: caches, and the rank table's
    # regular-file copy that HCCL reads (the mounted one is a symlink it refuses).
    volumes.append({"name": TMP_VOLUME, "emptyDir": {}})
    mounts.append({"name": TMP_VOLUME, "mountPath": TMP_PATH})
    if jobs.device_type(job) == "npu":
        volumes.append({"name": RANKTABLE_VOLUME, "configMap": {"name": configmap_name(job)}})
        mounts.append(
            {"name": RANKTABLE_VOLUME, "mountPath": ranktable.MOUNT_DIR, "readOnly": True}
        )
    return volumes, mounts


def render_pod(
    job: Mapping[str, Any],
    rank: int,
    restarts: int = 0,
    *,
    device_group: int | None = None,
    resources: Mapping[str, RankResources] = RANK_RESOURCES,
) -> dict[str, Any]:
    """Pod `rank` of attempt `restarts` (the rank itself, or the node rank of a pod of
    spec.devices.perPod devices), with spec.podTemplate merged in.

    `device_group`: the gid owning the NPU driver's device files on the nodes (the
    operator's --npu-device-group), added to an NPU pod's groups. `resources`: by device
    type, what each rank of the pod gets (the operator's --rank-resources).
    """
    name = jobs.pod_name(job, rank)
    env_list = _env(job, rank, restarts)
    per_pod = jobs.devices_per_pod(job)
    mine = resources[jobs.device_type(job)]
    volumes, mounts = _volumes(job, scale_quantity(mine.shm, per_pod))
    npu = jobs.device_type(job) == "npu"
    defaults = [{"name": k, "value": v} for k, v in ASCEND_WRITABLE_ENV.items()] if npu else []
    container = _container(job, env_list + defaults, mounts)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _pod_metadata(job, name, rank, restarts),
        "spec": _pod_spec(job, name, container, volumes),
    }
    if npu and device_group is not None:
        pod["spec"]["securityContext"]["supplementalGroups"] = [device_group]
    merged = merge_pod_template(pod, job["spec"].get("podTemplate") or {})
    _keep_env_contract(merged, env_list)
    requests = {"cpu": mine.cpu, "memory": mine.memory}
    _default_requests(merged, {k: scale_quantity(v, per_pod) for k, v in requests.items()})
    return _drop_shadowed_mounts(merged, {v["name"] for v in volumes})


def _env(job: Mapping[str, Any], rank: int, restarts: int) -> list[dict[str, Any]]:
    """The env contract of `shufflenet_contract.job`, as a container's env list."""
    npu = jobs.device_type(job) == "npu"
    pod_env = jobs.pod_env(
        job,
        rank,
        master_addr=master_addr(job),
        rank_table_file=RANK_TABLE_FILE if npu else None,
        attempt=restarts,
    )
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in pod_env.items()]
    # The pod's IP and UID and its node's IP exist only once the pod does: the downward API
    # fills them in.
    env_list += [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for name, path in env.DOWNWARD_API.items()
    ]
    return env_list


def _container(
    job: Mapping[str, Any], env_list: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    """The trainer container: its command, ports, mounts, devices and security context."""
    spec = job["spec"]
    per_pod = jobs.devices_per_pod(job)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec["image"],
        "command": ["shufflenet-train"],
        "args": jobs.trainer_args(
            job, data_path=spec["data"]["path"], output_dir=spec["checkpoint"]["path"]
        )
        # A pod of several devices starts a rank per device (ranks from its RANK env on).
        + (["--nproc", str(per_pod)] if per_pod > 1 else []),
        "env": env_list,
        "ports": _ports(int(spec["metrics"]["port"]), per_pod),
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    if spec.get("imagePullPolicy"):
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    resource = jobs.resource_name(job)
    if resource:
        count = str(per_pod)
        container["resources"] = {"limits": {resource: count}, "requests": {resource: count}}
    return container


def _ports(metrics_port: int, per_pod: int) -> list[dict[str, Any]]:
    return [
        {"name": METRICS_PORT_NAME, "containerPort": metrics_port},
        {"name": RENDEZVOUS_PORT_NAME, "containerPort": env.DEFAULT_MASTER_PORT},
        # The other ranks of a pod of several devices serve on port + local rank.
        *(
            {"name": f"{METRICS_PORT_NAME}-{k}", "containerPort": metrics_port + k}
            for k in range(1, per_pod)
        ),
    ]


def _pod_spec(
    job: Mapping[str, Any], name: str, container: dict[str, Any], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The pod's spec, with spec.scheduling's placement."""
    scheduling = job["spec"]["scheduling"]
    pod_spec: dict[str, Any] = {
        # The operator restarts the whole job; kubelet restarting one rank in place would
        # leave it alone against peers that already gave up on it.
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": service_name(job),
        "schedulerName": jobs.scheduler_name(job),
        "containers": [container],
        "volumes": volumes,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        # The trainer never talks to the API server: no token for whoever gets into a pod.
        "automountServiceAccountToken": False,
    }
    if scheduling.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(scheduling["nodeSelector"])
    if scheduling.get("tolerations"):
        pod_spec["tolerations"] = copy.deepcopy(scheduling["tolerations"])
    if scheduling.get("priorityClassName"):
        pod_spec["priorityClassName"] = scheduling["priorityClassName"]
    return pod_spec


def _pod_metadata(job: Mapping[str, Any], name: str, rank: int, restarts: int) -> dict[str, Any]:
    labels = {RANK_LABEL: str(rank), RESTART_LABEL: str(restarts)}
    metadata = _metadata(job, name, labels)
    # The pod's index, under the key MindX's tools and Volcano's hcclrank plugin read it by
    # (ranktable.RANK_INDEX_ANNOTATION): a replacement pod is created with the index of the
    # pod it replaces, so the rank ids of the table stay the same across restarts.
    metadata["annotations"] = {ranktable.RANK_INDEX_ANNOTATION: str(rank)}
    if jobs.gang(job):
        metadata["annotations"][PODGROUP_ANNOTATION] = podgroup_name(job)
    return metadata


def _keep_env_contract(pod: dict[str, Any], env_list: list[dict[str, Any]]) -> None:
    """The env contract is the operator's: an override may add variables, not change these."""
    ours = {e["name"] for e in env_list}
    for c in pod["spec"]["containers"]:
        if c.get("name") == CONTAINER:
            c["env"] = env_list + [e for e in c.get("env", []) if e.get("name") not in ours]


def _default_requests(pod: dict[str, Any], requests: Mapping[str, str]) -> None:
    """The trainer's `requests`, where the podTemplate set neither a request nor a limit of
    that resource: the job's own say wins, and a limit alone is its request too (the API
    server's defaulting), which a default request above it would make an invalid pod."""
    for c in pod["spec"]["containers"]:
        if c.get("name") == CONTAINER:
            resources = c.get("resources") or {}
            given = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
            missing = {k: v for k, v in requests.items() if k not in given}
            if missing:
                c["resources"] = {
                    **resources,
                    "requests": {**(resources.get("requests") or {}), **missing},
                }


def _drop_shadowed_mounts(pod: dict[str, Any], ours: set[str]) -> dict[str, Any]:
    """Where the template mounts a volume of its own at one of our mount paths (its scratch
    volume at /tmp), its mount wins: two mounts at one path make an invalid pod. Our volume
    is then dropped unless a container still mounts it."""
    spec = pod["spec"]
    for c in spec["containers"]:
        if c.get("name") == CONTAINER:
            mounts = c.get("volumeMounts") or []
            theirs = {m.get("mountPath") for m in mounts if m.get("name") not in ours}
            c["volumeMounts"] = [
                m for m in mounts if m.get("name") not in ours or m.get("mountPath") not in theirs
            ]
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    used = {m.get("name") for c in containers for m in c.get("volumeMounts") or []}
    spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in ours or v["name"] in used]
    return pod


# Lists of these keys are merged item by item on `name` (strategic merge patch does so for
# containers, volumes, env and mounts; it keys ports by containerPort, we by name too, since
# ours are named); any other list is replaced by the override.
_MERGE_BY_NAME = {
    "containers",
    "initContainers",
    "volumes",
    "env",
    "ports",
    "volumeMounts",
    "imagePullSecrets",
}


def _merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if key in _MERGE_BY_NAME and isinstance(base, list) and isinstance(override, list):
        out_list = [copy.deepcopy(b) for b in base]
        index = {b.get("name"): i for i, b in enumerate(out_list) if isinstance(b, dict)}
        for item in override:
            name = item.get("name") if isinstance(item, dict) else None
            if name is not None and name in index:
                mine = out_list[index[name]]
                if key == "volumes":
                    # A volume has one source: as strategic merge patch does (retainKeys),
                    # keep only the override's keys, so its PVC replaces our emptyDir.
                    mine = {k: v for k, v in mine.items() if k in item}
                out_list[index[name]] = _merge(mine, item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(override)


def merge_pod_template(pod: dict[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """`pod` with a PodTemplateSpec-like override (`metadata`, `spec`) merged in.

    The container named `trainer` in the override changes ours; other containers are added.
    A volume of the override named as one of ours replaces its source (a PVC for our /tmp).
    The operator's own labels, name, namespace and owner win: the Service, the PodMonitor and
    the restart bookkeeping select pods by them.
    """
    merged = copy.deepcopy(pod)
    meta = template.get("metadata") or {}
    if isinstance(meta, dict):
        for field in ("labels", "annotations"):
            extra = meta.get(field)
            if isinstance(extra, dict):
                merged["metadata"][field] = {**extra, **merged["metadata"].get(field, {})}
    spec = template.get("spec")
    if isinstance(spec, dict):
        merged["spec"] = _merge(merged["spec"], spec)
    return merged
