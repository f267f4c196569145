"""A ShuffleNetTrainingJob manifest -> what each rank gets: its environment and command line.

The operator builds rank pods from these functions and `snjob run-local` builds local
processes from the same ones, so a manifest that runs locally runs the same way on a cluster
(paths and addresses aside).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from . import crd, env, schema

# Pod names are `<job>-rank-<k>` and DNS labels (at most 63 characters), so job names are
# DNS-1035 labels short enough for the suffix of a 4-digit rank.
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63 - len("-rank-9999")
# Namespaces are DNS-1123 labels; a manifest without one (`snjob run-local`) is in "default",
# where `kubectl apply` would put it.
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_NAMESPACE = "default"
MAX_PODS = 10000
# Chips of one node an Ascend training job may hold (Huawei's affinity scheduling rules).
ASCEND_CHIPS_PER_POD = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)

# shufflenet-train's --device per devices.type.
TRAINER_DEVICE = {"npu": "npu", "gpu": "cuda", "cpu": "cpu"}
# Each run of the trainer writes its result folder `training_<N>p_job_<time>` under its
# --output-dir (a job's run folder); --resume auto and snjob run-local find them by this
# prefix. No namespace or job name starts with it ('_' is not in a DNS label), so the result
# folders that earlier versions wrote at the checkpoint volume's root never pass for a run
# folder, and are never looked at.
RESULT_DIR_PREFIX = "training_"
RESULT_DIR_GLOB = RESULT_DIR_PREFIX + "*"
# spec.scheduling.schedulerName when left out: Volcano with gang scheduling, else
# kube-scheduler's name (every cluster has it).
GANG_SCHEDULER = "volcano"
DEFAULT_SCHEDULER = "default-scheduler"


class ManifestError(ValueError):
    """The manifest is not a valid job; the message starts with the field path."""


def validate_job(obj: Any) -> dict[str, Any]:
    """A defaulted copy of a ShuffleNetTrainingJob manifest, or ManifestError naming the field.

    Beyond the CRD schema it checks what the schema cannot say: apiVersion/kind, the name
    and namespace, that perPod divides the devices, the chips an Ascend pod may hold, at
    most MAX_PODS pods, that the global batch divides over the ranks (the trainer would
    refuse it anyway, but a cluster should not start pods to find out), and that
    spec.checkpoint.initFrom stays on the checkpoint volume.
    """
    if not isinstance(obj, dict):
        raise ManifestError("(root): a manifest must be a YAML mapping")
    if obj.get("apiVersion") != crd.API_VERSION:
        raise ManifestError(f"apiVersion: must be {crd.API_VERSION}, got {obj.get('apiVersion')!r}")
    if obj.get("kind") != crd.KIND:
        raise ManifestError(f"kind: must be {crd.KIND}, got {obj.get('kind')!r}")
    _check_metadata(obj.get("metadata"))
    try:
        job = schema.apply(obj, crd.SCHEMA)
    except schema.SchemaError as exc:
        raise ManifestError(str(exc)) from None
    ranks = job["spec"]["devices"]["count"]
    per_pod = job["spec"]["devices"]["perPod"]
    if ranks % per_pod:
        raise ManifestError(
            f"spec.devices.perPod: {per_pod} devices per pod must divide spec.devices.count {ranks}"
        )
    if job["spec"]["devices"]["type"] == "npu":
        _check_ascend_ranks(per_pod)
    if ranks // per_pod > MAX_PODS:
        raise ManifestError(
            f"spec.devices.count: {ranks} devices make {ranks // per_pod} pods, more than "
            f"{MAX_PODS}: raise spec.devices.perPod"
        )
    _check_pod_template_env(job["spec"].get("podTemplate") or {})
    if "initFrom" in job["spec"]["checkpoint"]:
        _check_init_from(job["spec"]["checkpoint"]["initFrom"])
    batch = job["spec"]["training"]["batchSize"]
    if batch % ranks:
        raise ManifestError(
            f"spec.training.batchSize: {batch} is the global batch and must divide by "
            f"spec.devices.count {ranks}"
        )
    return job


def _check_metadata(meta: Any) -> None:
    """The name and namespace make the job's pod names and its run folder (run_dir)."""
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise ManifestError("metadata.name: is required")
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        raise ManifestError(
            f"metadata.name: {name!r} must be a DNS label of at most {MAX_NAME} characters "
            "(lower-case letters, digits, '-'; starting with a letter)"
        )
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    if (
        not isinstance(namespace, str)
        or not NAMESPACE_PATTERN.match(namespace)
        or len(namespace) > 63
    ):
        raise ManifestError(
            f"metadata.namespace: {namespace!r} must be a DNS label of at most 63 characters "
            "(lower-case letters, digits, '-')"
        )


def _check_init_from(path: str) -> None:
    """initFrom names a place on the checkpoint volume: the trainer reads it below the
    volume's mount path, so it must not lead out of the volume."""
    if path.startswith("/") or ".." in path.split("/") or "\0" in path:
        raise ManifestError(
            f"spec.checkpoint.initFrom: {path!r} must be a path relative to the checkpoint "
            "volume, without '..': e.g. <namespace>/<job name> for that job's run folder"
        )


def _check_pod_template_env(template: Mapping[str, Any]) -> None:
    """Env entries of the podTemplate's containers are merged into ours by name: one without
    a name, or with a value that is not a string, would make every rank pod invalid (the API
    server refuses a number where EnvVar.value is a string)."""
    spec = template.get("spec") if isinstance(template, Mapping) else None
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    for i, container in enumerate(containers if isinstance(containers, list) else []):
        env = container.get("env") if isinstance(container, Mapping) else None
        for j, var in enumerate(env if isinstance(env, list) else []):
            where = f"spec.podTemplate.spec.containers[{i}].env[{j}]"
            if (
                not isinstance(var, Mapping)
                or not isinstance(var.get("name"), str)
                or not var["name"]
            ):
                raise ManifestError(f"{where}.name: every env entry needs a name (a string)")
            if "value" in var and not isinstance(var["value"], str):
                raise ManifestError(
                    f"{where}.value: {var['value']!r} must be a string: quote it in the YAML"
                )


def _check_ascend_ranks(per_pod: int) -> None:
    """Huawei's schedulers give a pod of an Ascend training job only these chip counts (the
    HCCS rings of a server; 910 servers: 1, 2, 4 or 8; 910B/A3 boxes of 16 also 3-7 and
    10-16 even): another count is never placed, or fails HCCL's initialisation."""
    if per_pod not in ASCEND_CHIPS_PER_POD:
        raise ManifestError(
            f"spec.devices.perPod: {per_pod} NPUs in a pod: Ascend servers give a job 1-8, "
            "10, 12, 14 or 16 chips of one node (8 for a whole 910 server)"
        )


def world_size(job: Mapping[str, Any]) -> int:
    return int(job["spec"]["devices"]["count"])


def device_type(job: Mapping[str, Any]) -> str:
    return str(job["spec"]["devices"]["type"])


def resource_name(job: Mapping[str, Any]) -> str | None:
    """The extended resource each rank pod requests (None for cpu ranks)."""
    devices = job["spec"]["devices"]
    return devices.get("resourceName") or crd.DEFAULT_RESOURCE.get(devices["type"])


def devices_per_pod(job: Mapping[str, Any]) -> int:
    return int(job["spec"]["devices"].get("perPod") or 1)


def pod_count(job: Mapping[str, Any]) -> int:
    """Rank pods of the job: one per device, or one per spec.devices.perPod devices."""
    return world_size(job) // devices_per_pod(job)


def gang(job: Mapping[str, Any]) -> bool:
    """spec.scheduling.gang: the rank pods are one Volcano PodGroup."""
    return bool(job["spec"]["scheduling"].get("gang"))


def scheduler_name(job: Mapping[str, Any]) -> str:
    """The rank pods' scheduler: spec.scheduling.schedulerName when the job names one, else
    Volcano for a gang job (it binds the PodGroup whole) and the cluster's own scheduler
    otherwise, so that a job without gang scheduling runs on a cluster without Volcano."""
    named = job["spec"]["scheduling"].get("schedulerName")
    if named:
        return str(named)
    return GANG_SCHEDULER if gang(job) else DEFAULT_SCHEDULER


def pod_name(job: Mapping[str, Any], pod: int, per_pod: int | None = None) -> str:
    """`<job>-rank-<k>` for one-device pods; `<job>-node-<k>` for pods of several devices
    (ranks k x perPod ...), whose index is the node rank."""
    per = devices_per_pod(job) if per_pod is None else per_pod
    return f"{job['metadata']['name']}-{'rank' if per == 1 else 'node'}-{pod}"


def pod_env(
    job: Mapping[str, Any],
    pod: int,
    *,
    master_addr: str,
    master_port: int = env.DEFAULT_MASTER_PORT,
    pod_ip: str | None = None,
    metrics_port: int | None = None,
    rank_table_file: str | None = None,
    per_pod: int | None = None,
    attempt: int | None = None,
) -> dict[str, str]:
    """The environment of pod `pod`, LOCAL_RANK and device index 0.

    A one-device pod is rank `pod`. A pod of P = spec.devices.perPod devices gets its first
    rank's environment (RANK = pod x P, LOCAL_WORLD_SIZE = P) and runs `shufflenet-train
    --nproc P`, whose launcher starts its P ranks. `per_pod` overrides perPod (`snjob
    run-local` runs every rank as a process of its own: 1). `metrics_port` defaults to
    spec.metrics.port (a local run of several ranks on one host passes distinct ports).
    `attempt` is the whole-job attempt the pod is created for (the job's status.restarts).
    The in-place restart budget (tier 1) comes from spec.runPolicy.
    """
    spec = job["spec"]
    per = devices_per_pod(job) if per_pod is None else per_pod
    rank = env.RankEnv(
        rank=pod * per,
        world_size=world_size(job),
        local_rank=0,
        local_world_size=per,
        master_addr=master_addr,
        master_port=master_port,
        device_id=0,
        rank_table_file=rank_table_file,
        job_name=job["metadata"]["name"],
        pod_name=pod_name(job, pod, per),
        pod_ip=pod_ip,
        metrics_port=spec["metrics"]["port"] if metrics_port is None else metrics_port,
        hccl_connect_timeout=env.hccl_connect_timeout(spec["training"]["distTimeoutSeconds"]),
        hccl_exec_timeout=spec["training"].get("hcclExecTimeoutSeconds"),
        attempt=attempt,
    )
    return {
        **env.rank_env(rank, device_type=device_type(job)),
        **env.inplace_env(inplace_policy(job)),
    }


def inplace_policy(job: Mapping[str, Any]) -> env.InPlacePolicy:
    """spec.runPolicy's budget of restarts in place (tier 1) and their first backoff."""
    run_policy = job["spec"].get("runPolicy") or {}
    return env.InPlacePolicy(
        restarts=run_policy.get("inPlaceRestarts", env.DEFAULT_INPLACE_RESTARTS),
        backoff_seconds=run_policy.get(
            "inPlaceBackoffSeconds", env.DEFAULT_INPLACE_BACKOFF_SECONDS
        ),
    )


# spec.training key -> shufflenet-train flag, for the optional scalar settings.
_FLAGS = {
    "epochs": "--epochs",
    "batchSize": "-b",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "larsEta": "--lars-eta",
    "lrSchedule": "--lr-schedule",
    "warmupEpochs": "--warmup-epochs",
    "momentum": "--momentum",
    "weightDecay": "--wd",
    "labelSmoothing": "--label-smoothing",
    "amp": "--amp",
    "imageSize": "--image-size",
    "valResize": "--val-resize",
    "workers": "-j",
    "printFreq": "-p",
    "evalFreq": "--eval-freq",
    "seed": "--seed",
    "distTimeoutSeconds": "--dist-timeout",
}


def run_dir(job: Mapping[str, Any], root: str) -> str:
    """The job's run folder on the checkpoint volume mounted at `root`:
    `<root>/<namespace>/<name>`, the trainer's --output-dir.

    Live jobs differ in namespace or name, so two jobs never share a run folder, and a job
    re-created under the same name finds its run again and continues it.
    """
    meta = job["metadata"]
    return posixpath.join(root, meta.get("namespace") or DEFAULT_NAMESPACE, meta["name"])


def trainer_args(
    job: Mapping[str, Any],
    *,
    data_path: str | None,
    output_dir: str,
) -> list[str]:
    """The shufflenet-train arguments of every rank (the same for all ranks).

    `data_path`/`output_dir` are where the data and checkpoint volumes are mounted, as the
    rank sees them; the run writes into its run folder below `output_dir` (run_dir), and
    spec.checkpoint.initFrom is read below it too. Runs always pass `--resume auto`, so a
    restarted or re-created job continues from its newest valid checkpoint. (A CPU stand-in
    run of a GPU/NPU job keeps these arguments and sets env.FORCE_CPU instead.)
    """
    spec = job["spec"]
    training = spec["training"]
    args: list[str] = []
    if spec["data"]["dummy"]:
        args.append("--dummy")
    else:
        args.append(data_path or spec["data"]["path"])
    args += ["-a", spec["model"]["arch"], "--device", TRAINER_DEVICE[device_type(job)]]
    for key, flag in _FLAGS.items():
        if key not in training or training[key] is None:
            continue
        args += [flag, str(training[key])]
    if training.get("channelsLast"):
        args.append("--channels-last")
    args += ["--output-dir", run_dir(job, output_dir), "--resume", "auto"]
    if spec["checkpoint"].get("initFrom"):
        init = posixpath.normpath(posixpath.join(output_dir, spec["checkpoint"]["initFrom"]))
        args += ["--init-from", init]
    args += list(training.get("extraArgs", []))
    return args
