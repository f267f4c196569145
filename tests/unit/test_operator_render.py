"""Operator: job -> child manifests (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from helpers.jobs import job_manifest

from shufflenet_contract import crd, env, ranktable
from shufflenet_contract import job as jobs
from shufflenet_operator import render


def make_job(devices: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    obj = job_manifest(
        metadata={"namespace": "ns", "uid": "job-uid"},
        devices=devices,
        **{"training": {"batchSize": 64}, **spec},
    )
    return jobs.validate_job(obj)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_npu_pod_has_one_chip_the_env_contract_and_the_rank_table() -> None:
    job = make_job()
    pod = render.render_pod(job, 3, restarts=2)
    meta = pod["metadata"]
    assert meta["name"] == "sn-rank-3" and meta["namespace"] == "ns"
    assert meta["labels"][render.JOB_LABEL] == "sn"
    assert meta["labels"][render.RANK_LABEL] == "3"
    assert meta["labels"][render.RESTART_LABEL] == "2"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": crd.API_VERSION,
            "kind": crd.KIND,
            "name": "sn",
            "uid": "job-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["hostname"] == "sn-rank-3" and spec["subdomain"] == "sn"
    (container,) = spec["containers"]
    assert container["resources"]["limits"] == {"huawei.com/Ascend910": "1"}
    variables = env_of(pod)
    expected = jobs.pod_env(
        job,
        3,
        master_addr="sn-rank-0.sn.ns.svc",
        rank_table_file=f"{ranktable.MOUNT_DIR}/{ranktable.FILE_KEY}",
        attempt=2,
    )
    for k, v in expected.items():
        assert variables[k] == v, k
    assert variables["RANK"] == "3" and variables["WORLD_SIZE"] == "8"
    assert variables["LOCAL_RANK"] == "0"
    # What a rank needs to recognise its attempt's rank table: the attempt, its pod's UID
    # and its node's IP (the last two from the downward API).
    assert variables["SHUFFLENET_ATTEMPT"] == "2"
    assert variables[env.POD_IP] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert variables["POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert variables["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[render.RANKTABLE_VOLUME] == ranktable.MOUNT_DIR
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[render.RANKTABLE_VOLUME]["configMap"] == {"name": "sn-ranktable"}
    assert container["args"] == jobs.trainer_args(
        job, data_path="/data/imagenet", output_dir="/checkpoints"
    )
    assert {"name": "metrics", "containerPort": 9400} in container["ports"]


@pytest.mark.parametrize(
    ("devices", "resource"),
    [
        ({"type": "gpu", "count": 2}, {"nvidia.com/gpu": "1"}),
        ({"type": "npu", "count": 2, "resourceName": "huawei.com/Ascend910B"}, None),
        ({"type": "cpu", "count": 2}, None),
    ],
)
def test_resources_per_device_type(devices: dict[str, Any], resource: Any) -> None:
    pod = render.render_pod(make_job(devices), 0)
    container = pod["spec"]["containers"][0]
    if devices["type"] == "cpu":
        # No device, and no limits: only the default requests.
        assert container["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"}}
        assert "RANK_TABLE_FILE" not in env_of(pod)
        assert render.RANKTABLE_VOLUME not in {v["name"] for v in pod["spec"]["volumes"]}
    elif devices["type"] == "npu":
        assert container["resources"]["limits"] == {"huawei.com/Ascend910B": "1"}
    else:
        assert container["resources"]["limits"] == resource
        assert "RANK_TABLE_FILE" not in env_of(pod)


def test_data_and_checkpoint_volumes_and_scheduling() -> None:
    job = make_job(
        data={"volume": {"persistentVolumeClaim": {"claimName": "imagenet"}}, "path": "/d"},
        checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "ck"}}, "path": "/ck"},
        scheduling={
            "schedulerName": "default-scheduler",
            "nodeSelector": {"accelerator": "huawei-Ascend910"},
            "tolerations": [{"key": "npu", "operator": "Exists"}],
            "priorityClassName": "high",
        },
    )
    pod = render.render_pod(job, 0)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "imagenet"}
    assert volumes["checkpoint"]["persistentVolumeClaim"] == {"claimName": "ck"}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/d" and mounts["checkpoint"] == "/ck"
    assert pod["spec"]["schedulerName"] == "default-scheduler"
    assert pod["spec"]["nodeSelector"] == {"accelerator": "huawei-Ascend910"}
    assert pod["spec"]["tolerations"] == [{"key": "npu", "operator": "Exists"}]
    assert pod["spec"]["priorityClassName"] == "high"
    # Without a checkpoint volume the trainer still gets a writable directory.
    bare = render.render_pod(make_job(), 0)
    assert {v["name"]: v for v in bare["spec"]["volumes"]}["checkpoint"] == {
        "name": "checkpoint",
        "emptyDir": {},
    }
    assert "data" not in {v["name"] for v in bare["spec"]["volumes"]}


def test_pod_template_is_merged_but_cannot_steal_the_pod() -> None:
    template = {
        "metadata": {
            "labels": {"team": "vision", render.JOB_LABEL: "other"},
            # A template cannot move a pod's rank index: the table's rank ids follow it.
            "annotations": {"a": "b", ranktable.RANK_INDEX_ANNOTATION: "7"},
        },
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "env": [
                        {"name": "HCCL_BUFFSIZE", "value": "200"},
                        {"name": "RANK", "value": "9"},
                    ],
                    "resources": {"limits": {"memory": "64Gi"}},
                },
                {"name": "sidecar", "image": "busybox"},
            ],
            "volumes": [{"name": "extra", "emptyDir": {}}],
            "hostNetwork": True,
        },
    }
    job = make_job(podTemplate=template)
    before = copy.deepcopy(template)
    pod = render.render_pod(job, 1)
    assert template == before
    labels = pod["metadata"]["labels"]
    assert labels["team"] == "vision" and labels[render.JOB_LABEL] == "sn"
    assert pod["metadata"]["annotations"] == {
        "a": "b",
        render.PODGROUP_ANNOTATION: "sn",
        ranktable.RANK_INDEX_ANNOTATION: "1",
    }
    trainer, sidecar = pod["spec"]["containers"]
    assert sidecar == {"name": "sidecar", "image": "busybox"}
    variables = env_of(pod)
    assert variables["HCCL_BUFFSIZE"] == "200"
    assert variables["RANK"] == "1"  # the contract is not the template's to change
    assert trainer["resources"]["limits"] == {"huawei.com/Ascend910": "1", "memory": "64Gi"}
    assert "extra" in {v["name"] for v in pod["spec"]["volumes"]}
    assert pod["spec"]["hostNetwork"] is True


def test_service_and_configmap() -> None:
    job = make_job()
    svc = render.render_service(job)
    assert svc["metadata"]["name"] == "sn"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {render.JOB_LABEL: "sn"}
    assert svc["spec"]["publishNotReadyAddresses"] is True
    cm = render.render_configmap(job)
    assert cm["metadata"]["name"] == "sn-ranktable"
    assert ranktable.parse(cm["data"]["hccl.json"]) == {"status": "initializing"}
    assert cm["data"]["version"] == "1" and cm["data"]["attempt"] == "0"
    assert render.render_configmap(job, 2)["data"]["attempt"] == "2"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "job-uid"


def volumes_and_mounts(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    return volumes, mounts


@pytest.mark.parametrize("kind", ["npu", "gpu", "cpu"])
def test_every_rank_pod_has_a_writable_tmp(kind: str) -> None:
    pod = render.render_pod(make_job({"type": kind, "count": 2}), 0)
    volumes, mounts = volumes_and_mounts(pod)
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}} and mounts["tmp"] == "/tmp"


def test_template_volume_at_tmp_wins() -> None:
    # The same name: the template's source replaces ours (no emptyDir left beside its PVC).
    pvc = {"name": "tmp", "persistentVolumeClaim": {"claimName": "scratch"}}
    pod = render.render_pod(make_job(podTemplate={"spec": {"volumes": [pvc]}}), 0)
    volumes, mounts = volumes_and_mounts(pod)
    assert volumes["tmp"] == pvc and mounts["tmp"] == "/tmp"
    # The same path under another name: its mount alone is at /tmp, and our volume is gone.
    template = {
        "spec": {
            "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
            "containers": [
                {"name": "trainer", "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]}
            ],
        }
    }
    pod = render.render_pod(make_job(podTemplate=template), 0)
    volumes, mounts = volumes_and_mounts(pod)
    assert "tmp" not in volumes and "tmp" not in mounts and mounts["scratch"] == "/tmp"
    paths = [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]]
    assert len(paths) == len(set(paths))
    assert {"dshm", "checkpoint", render.RANKTABLE_VOLUME} <= set(volumes)


def test_whole_node_pod_holds_its_devices_and_starts_a_rank_per_device() -> None:
    job = make_job({"type": "npu", "count": 16, "perPod": 8})
    pod = render.render_pod(job, 1)
    assert pod["metadata"]["name"] == "sn-node-1"
    assert pod["metadata"]["labels"][render.RANK_LABEL] == "1"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"huawei.com/Ascend910": "8"}
    assert container["args"][-2:] == ["--nproc", "8"]
    # Local rank k serves its metrics on the job's port + k: each is declared for scraping.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [ports["metrics"], ports["metrics-1"], ports["metrics-7"]] == [9400, 9401, 9407]
    variables = env_of(pod)
    # The launcher in the pod starts ranks 8..15 from its first rank's environment.
    assert variables[env.RANK] == "8" and variables[env.WORLD_SIZE] == "16"
    assert variables[env.LOCAL_WORLD_SIZE] == "8" and variables[env.LOCAL_RANK] == "0"
    assert variables[env.MASTER_ADDR] == "sn-node-0.sn.ns.svc"
    assert render.render_podgroup(job)["spec"]["minMember"] == 2


def test_devices_per_pod_must_divide_the_device_count() -> None:
    with pytest.raises(jobs.ManifestError, match=r"^spec\.devices\.perPod: 8 .* 12"):
        make_job({"type": "npu", "count": 12, "perPod": 8}, training={"batchSize": 48})


def test_gang_scheduling_puts_every_pod_in_one_podgroup() -> None:
    job = make_job(scheduling={"queue": "research", "priorityClassName": "high"})
    group = render.render_podgroup(job)
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1" and group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "sn"
    assert group["metadata"]["ownerReferences"][0]["uid"] == "job-uid"
    assert group["spec"] == {
        "minMember": 8,
        "queue": "research",
        "priorityClassName": "high",
        "minResources": {"huawei.com/Ascend910": "8"},
    }
    pod = render.render_pod(job, 0)
    assert pod["metadata"]["annotations"] == {
        render.PODGROUP_ANNOTATION: "sn",
        ranktable.RANK_INDEX_ANNOTATION: "0",
    }
    assert pod["spec"]["schedulerName"] == "volcano"
    plain = render.render_pod(make_job(scheduling={"gang": False}), 0)
    assert plain["metadata"]["annotations"] == {ranktable.RANK_INDEX_ANNOTATION: "0"}


@pytest.mark.parametrize(
    ("scheduling", "scheduler"),
    [
        ({"gang": False}, "default-scheduler"),  # runs on a cluster without Volcano
        ({"gang": False, "schedulerName": "kai"}, "kai"),
        ({"gang": True}, "volcano"),
        ({"gang": True, "schedulerName": "volcano-npu"}, "volcano-npu"),
    ],
)
def test_rank_pods_scheduler_follows_gang_unless_the_job_names_one(
    scheduling: dict[str, Any], scheduler: str
) -> None:
    job = make_job(scheduling=scheduling)
    for pod in (render.render_pod(job, k) for k in range(jobs.pod_count(job))):
        assert pod["spec"]["schedulerName"] == scheduler


def test_rank_pods_write_into_the_jobs_own_run_folder() -> None:
    # The checkpoint volume is shared by many jobs: each job trains, and --resume auto
    # looks, only in <mount path>/<namespace>/<name>; initFrom is read below the mount.
    job = make_job(checkpoint={"path": "/ckpt", "initFrom": "other-ns/a"})
    for k in range(2):
        args = render.render_pod(job, k, restarts=0)["spec"]["containers"][0]["args"]
        assert args[args.index("--output-dir") + 1] == "/ckpt/ns/sn"
        assert args[args.index("--resume") + 1] == "auto"
        assert args[args.index("--init-from") + 1] == "/ckpt/other-ns/a"


# --- secure by default --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npu", "gpu", "cpu"])
def test_rank_pods_are_locked_down_by_default(kind: str) -> None:
    pod = render.render_pod(make_job({"type": kind, "count": 2}), 1)
    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # The image's numeric user runs the trainer: the kubelet checks it is not root.
    assert "runAsUser" not in spec["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The pods of one job do not share the dicts (a template merge must not leak).
    other = render.render_pod(make_job({"type": kind, "count": 2}), 0)
    assert other["spec"]["securityContext"] is not spec["securityContext"]


def test_npu_pods_write_cann_files_under_tmp_and_get_the_device_group() -> None:
    pod = render.render_pod(make_job(), 0, device_group=1001)
    variables = env_of(pod)
    assert {k: variables[k] for k in render.ASCEND_WRITABLE_ENV} == {
        "ASCEND_WORK_PATH": "/tmp/ascend/work",
        "ASCEND_CACHE_PATH": "/tmp/ascend/cache",
        "ACL_OP_COMPILER_CACHE_DIR": "/tmp/ascend/cache/op",
        "ASCEND_PROCESS_LOG_PATH": "/tmp/ascend/log",
    }
    _, mounts = volumes_and_mounts(pod)
    assert mounts["tmp"] == "/tmp"
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [1001]
    assert "supplementalGroups" not in render.render_pod(make_job(), 0)["spec"]["securityContext"]
    # Only NPU pods: the group is the Ascend driver's.
    gpu = render.render_pod(make_job({"type": "gpu", "count": 2}), 0, device_group=1001)
    assert "supplementalGroups" not in gpu["spec"]["securityContext"]
    assert not set(render.ASCEND_WRITABLE_ENV) & set(env_of(gpu))


def test_pod_template_can_loosen_the_defaults() -> None:
    template = {
        "spec": {
            "automountServiceAccountToken": True,
            "securityContext": {"runAsNonRoot": False, "runAsUser": 0},
            "containers": [
                {
                    "name": "trainer",
                    "securityContext": {
                        "readOnlyRootFilesystem": False,
                        "capabilities": {"add": ["SYS_PTRACE"]},
                    },
                    "env": [{"name": "ASCEND_PROCESS_LOG_PATH", "value": "/checkpoints/log"}],
                }
            ],
        }
    }
    pod = render.render_pod(make_job(podTemplate=template), 0)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"] == {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,
        "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]},
    }
    # CANN's folders are defaults, not the env contract: a template may move them.
    assert env_of(pod)["ASCEND_PROCESS_LOG_PATH"] == "/checkpoints/log"
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))


# --- CPU, memory and /dev/shm ---------------------------------------------------------------


def shm_of(pod: dict[str, Any]) -> dict[str, Any]:
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == render.SHM_VOLUME]
    return shm["emptyDir"]


@pytest.mark.parametrize(
    ("devices", "requests", "shm"),
    [
        ({"type": "cpu", "count": 2}, {"cpu": "250m", "memory": "1Gi"}, "1Gi"),
        ({"type": "gpu", "count": 2}, {"cpu": "250m", "memory": "2Gi"}, "2Gi"),
        ({"type": "npu", "count": 2}, {"cpu": "250m", "memory": "2Gi"}, "2Gi"),
        # A pod of several ranks gets as much per rank.
        ({"type": "cpu", "count": 4, "perPod": 2}, {"cpu": "500m", "memory": "2Gi"}, "2Gi"),
        ({"type": "npu", "count": 16, "perPod": 8}, {"cpu": "2000m", "memory": "16Gi"}, "16Gi"),
    ],
)
def test_rank_pods_request_cpu_and_memory_by_device_type_and_bound_dev_shm(
    devices: dict[str, Any], requests: dict[str, str], shm: str
) -> None:
    pod = render.render_pod(make_job(devices), 0)
    (container,) = pod["spec"]["containers"]
    resources = container["resources"]
    device = jobs.resource_name(make_job(devices))
    per_pod = {device: str(jobs.devices_per_pod(make_job(devices)))} if device else {}
    assert resources["requests"] == {**requests, **per_pod}
    # Requests only: no CPU or memory limit to OOM-kill or throttle a rank.
    assert resources.get("limits", {}) == per_pod
    assert shm_of(pod) == {"medium": "Memory", "sizeLimit": shm}


def test_the_operators_setting_changes_the_defaults() -> None:
    resources = render.rank_resources([("gpu", {"cpu": "8", "shm": "8Gi"})])
    assert resources["gpu"] == render.RankResources(cpu="8", memory="2Gi", shm="8Gi")
    assert resources["npu"] == render.RANK_RESOURCES["npu"]
    job = make_job({"type": "gpu", "count": 4, "perPod": 2})
    pod = render.render_pod(job, 0, resources=resources)
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "16",
        "memory": "4Gi",
        "nvidia.com/gpu": "2",
    }
    assert shm_of(pod)["sizeLimit"] == "16Gi"


def test_the_jobs_own_resources_win_over_the_defaults() -> None:
    own = {"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}}
    template = {"spec": {"containers": [{"name": "trainer", "resources": own}]}}
    pod = render.render_pod(make_job(podTemplate=template), 0)
    resources = pod["spec"]["containers"][0]["resources"]
    # Its CPU request; no memory request under its limit (the API server takes the limit
    # as the request); the chip, as always.
    assert resources["requests"] == {"cpu": "2", "huawei.com/Ascend910": "1"}
    assert resources["limits"] == {"memory": "4Gi", "huawei.com/Ascend910": "1"}
    # Its /dev/shm size too.
    shm = {"name": render.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}}
    pod = render.render_pod(make_job(podTemplate={"spec": {"volumes": [shm]}}), 0)
    assert shm_of(pod)["sizeLimit"] == "32Gi"


@pytest.mark.parametrize(
    ("quantity", "times", "scaled"),
    [("500m", 2, "1000m"), ("16Gi", 8, "128Gi"), ("1.5", 2, "3"), ("0.5", 3, "1.5"), ("4", 1, "4")],
)
def test_quantities_scale_in_their_own_unit(quantity: str, times: int, scaled: str) -> None:
    assert render.scale_quantity(quantity, times) == scaled


@pytest.mark.parametrize("text", ["", "8x", "-1", "1e3", "Gi", "1 Gi"])
def test_a_bad_quantity_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="is not a quantity such as 500m"):
        render.check_quantity(text)


@pytest.mark.parametrize(
    ("run_policy", "expected"),
    [
        # Unset: the contract's defaults, a few restarts in place before the whole job.
        ({}, env.InPlacePolicy(crd.DEFAULT_INPLACE_RESTARTS, crd.DEFAULT_INPLACE_BACKOFF_SECONDS)),
        ({"inPlaceRestarts": 5, "inPlaceBackoffSeconds": 2.5}, env.InPlacePolicy(5, 2.5)),
        # Off: the pod's process trains itself and a crash restarts the whole job.
        ({"inPlaceRestarts": 0}, env.InPlacePolicy(0, crd.DEFAULT_INPLACE_BACKOFF_SECONDS)),
    ],
)
def test_the_in_place_restart_budget_reaches_every_rank_from_the_run_policy(
    run_policy: dict[str, Any], expected: env.InPlacePolicy
) -> None:
    job = make_job({"type": "cpu", "count": 2}, runPolicy=run_policy)
    for rank in range(2):
        values = {
            k: v for k, v in env_of(render.render_pod(job, rank)).items() if isinstance(v, str)
        }
        assert env.read_inplace_policy(values) == expected
