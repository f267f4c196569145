"""The operator <-> trainer contract: rank env, CRD schema and rendering, job -> rank plan."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.jobs import job_manifest

from shufflenet_contract import crd, env, job, jobspec, schema
from shufflenet_trainer.train import config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


# --- rank environment -----------------------------------------------------------------


def npu_rank(**changes: Any) -> env.RankEnv:
    """Rank 3 of 8 with every field `rank_env` writes set."""
    fields: dict[str, Any] = {
        "rank": 3, "world_size": 8, "local_rank": 1, "local_world_size": 4,
        "master_addr": "j-node-0.j.ns.svc", "master_port": 29500, "device_id": 1,
        "rank_table_file": "/user/serverid/devindex/config/hccl.json", "job_name": "j",
        "pod_name": "j-node-0", "pod_ip": "127.0.2.4", "metrics_port": 9400,
        "hccl_connect_timeout": env.hccl_connect_timeout(30), "hccl_exec_timeout": 600,
        "attempt": 2,
    }  # fmt: skip
    return env.RankEnv(**{**fields, **changes})


def test_rank_env_round_trips_through_read_rank_env() -> None:
    rank = npu_rank()
    built = env.rank_env(rank, device_type="npu")
    assert all(isinstance(v, str) for v in built.values())
    assert built["RANK_ID"] == built["RANK"] == "3" and built["RANK_SIZE"] == "8"
    assert built["ASCEND_DEVICE_ID"] == built["DEVICE_ID"] == "1"
    # At least torch_npu's 300 s of rank-table mode, within HCCL's [120, 7200].
    assert built["HCCL_CONNECT_TIMEOUT"] == "300"
    assert env.read_rank_env(built) == rank and rank.distributed
    # Only what is set travels: the required fields alone come back as they went.
    least = env.RankEnv(job_name="j", master_addr="a", master_port=1, device_id=0)
    assert env.read_rank_env(env.rank_env(least, device_type="cpu")) == least


def test_rank_env_writes_every_field_but_the_pods_own() -> None:
    # A new RankEnv field must be written by rank_env (and set in npu_rank) or be named in
    # NOT_WRITTEN: then it cannot come back from the environment as its default.
    got = env.read_rank_env(env.rank_env(npu_rank(), device_type="npu"))
    fields = dataclasses.fields(got)
    travelled = {f.name for f in fields if getattr(got, f.name) != f.default}
    assert travelled == {f.name for f in fields} - set(env.NOT_WRITTEN)


def test_rank_env_needs_the_variables_every_pod_gets() -> None:
    with pytest.raises(ValueError, match=r"needs master_addr, master_port$"):
        env.rank_env(env.RankEnv(job_name="j", device_id=0), device_type="cpu")


def test_pod_identity_attempt_and_overrides() -> None:
    rank = env.RankEnv(
        rank=1, world_size=2, job_name="j", master_addr="a", master_port=1, device_id=0,
        attempt=3,
    )  # fmt: skip
    built = env.rank_env(rank, device_type="npu")
    assert built[env.ATTEMPT] == "3"
    # The downward API's variables are the pod's, never built here.
    assert not set(env.DOWNWARD_API) & set(built)
    got = env.read_rank_env(
        {**built, "POD_UID": "0c5f-uid", "HOST_IP": "127.0.1.2", "SHUFFLENET_FORCE_CPU": "1",
         "SHUFFLENET_RANK_TABLE_DIR": "/scratch"}
    )  # fmt: skip
    assert (got.pod_uid, got.host_ip, got.attempt) == ("0c5f-uid", "127.0.1.2", 3)
    assert got.force_cpu and got.rank_table_dir == "/scratch"
    bare = env.read_rank_env({})
    assert (bare.pod_uid, bare.attempt, bare.force_cpu, bare.rank_table_dir) == (
        None, None, False, None
    )  # fmt: skip


def test_rank_env_npu_only_variables() -> None:
    built = env.rank_env(npu_rank(), device_type="gpu")
    assert not {"RANK_TABLE_FILE", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT"} & set(built)
    back = npu_rank(rank_table_file=None, hccl_connect_timeout=None, hccl_exec_timeout=None)
    assert env.read_rank_env(built) == back


@pytest.mark.parametrize(("seconds", "given"), [(10, "300"), (299, "300"), (1800, "1800"),
                                                (9000, "7200")])  # fmt: skip
def test_npu_pods_get_a_connect_timeout_of_at_least_300_within_hcclss_range(
    seconds: int, given: str
) -> None:
    assert env.hccl_connect_timeout(seconds) == int(given)


def test_hccl_exec_timeout_passes_through_to_npu_pods_in_hccls_range() -> None:
    rank = env.RankEnv(
        rank=0, world_size=2, job_name="j", master_addr="a", master_port=1, device_id=0,
        hccl_exec_timeout=600,
    )  # fmt: skip
    built = env.rank_env(rank, device_type="npu")
    assert built["HCCL_EXEC_TIMEOUT"] == "600"
    assert env.read_rank_env({**built, "MASTER_ADDR": "a"}).world_size == 2
    assert "HCCL_EXEC_TIMEOUT" not in env.rank_env(rank, device_type="gpu")
    with pytest.raises(ValueError, match=r"\[1, 17340\]"):
        env.rank_env(dataclasses.replace(rank, hccl_exec_timeout=17341), device_type="npu")


def test_no_env_is_a_single_process() -> None:
    got = env.read_rank_env({})
    assert (got.rank, got.world_size, got.distributed) == (0, 1, False)


def test_ascend_aliases_alone_are_enough() -> None:
    got = env.read_rank_env({"RANK_ID": "1", "RANK_SIZE": "2", "MASTER_ADDR": "h"})
    assert (got.rank, got.world_size, got.master_port) == (1, 2, env.DEFAULT_MASTER_PORT)


BAD_ENV = [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK=2 must be < WORLD_SIZE=2"),
    ({"RANK": "1"}, "WORLD_SIZE is not"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "MASTER_PORT=0"),
    ({"RANK": "0", "RANK_ID": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK=0 and RANK_ID=1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2"),
    ({"DEVICE_ID": "1", "ASCEND_DEVICE_ID": "2"}, "DEVICE_ID=1 and ASCEND_DEVICE_ID=2"),
    ({"HCCL_CONNECT_TIMEOUT": "60"}, "HCCL_CONNECT_TIMEOUT=60"),
    ({"HCCL_EXEC_TIMEOUT": "0"}, "HCCL_EXEC_TIMEOUT=0 must be in"),
    ({"HCCL_EXEC_TIMEOUT": "17341"}, "HCCL_EXEC_TIMEOUT=17341"),
    ({"POD_IP": "pod-a"}, "POD_IP"),
    ({"HOST_IP": "node-a"}, "HOST_IP='node-a' is not an IP address"),
    ({"SHUFFLENET_ATTEMPT": "-1"}, "SHUFFLENET_ATTEMPT=-1 must be >= 0"),
    ({"SHUFFLENET_FORCE_CPU": "yes"}, "SHUFFLENET_FORCE_CPU='yes'"),
]


@pytest.mark.parametrize(("environ", "words"), BAD_ENV)
def test_bad_env_names_the_variable(environ: dict[str, str], words: str) -> None:
    with pytest.raises(env.EnvError, match=words.replace("(", r"\(")):
        env.read_rank_env(environ)


def test_bad_env_is_a_configuration_error_of_the_trainer() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", "--dummy"],
        env={"RANK": "5", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: rank environment: RANK=5 must be < WORLD_SIZE=2"


# --- CRD ------------------------------------------------------------------------------


def test_committed_crd_yaml_equals_the_rendering() -> None:
    committed = (ROOT / "manifests" / "crd" / "shufflenettrainingjobs.yaml").read_text()
    assert committed == crd.render_yaml(), "run `make manifests` and commit the result"


def test_committed_job_spec_reference_equals_the_rendering() -> None:
    committed = (ROOT / "docs" / "job-spec.md").read_text()
    assert committed == jobspec.render_markdown(), "run `make manifests` and commit the result"


def test_every_field_the_user_sets_or_reads_is_described() -> None:
    # docs/job-spec.md and `kubectl explain` show these descriptions. The status's counters
    # and condition fields are described by their parent.
    described_by_parent = ("status.conditions[].", "status.ranks.", "status.rankTable.")
    missing = [
        path
        for root, schema in (("spec", crd.SPEC), ("status", crd.STATUS))
        for path, sub, _ in jobspec.fields(schema, root)
        if not sub.get("description") and not path.startswith(described_by_parent)
    ]
    assert not missing


def test_job_spec_reference_lists_defaults_and_limits() -> None:
    text = jobspec.render_markdown()
    row = next(line for line in text.splitlines() if line.startswith("| `spec.devices.count`"))
    assert "`1`" in row and ">= 1" in row
    assert "| `spec.devices` | object |  | required |" in text


def test_crd_is_structural_and_1_20_compatible() -> None:
    obj = crd.crd()
    assert obj["apiVersion"] == "apiextensions.k8s.io/v1"
    version = obj["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == [
        "Phase",
        "Waiting",
        "Ranks",
        "Epoch",
        "Img/s",
        "Top1",
        "Restarts",
        "Goodput",
        "Age",
        "Device",
        "Resource",
    ]
    wide = [c["jsonPath"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert wide == [".spec.devices.type", ".spec.devices.resourceName"]
    assert obj["spec"]["names"]["shortNames"] == ["snjob", "sntj"]

    def walk(node: dict[str, Any], path: str) -> None:
        # Structural: every node has a type (or preserves unknown fields); no CEL rules.
        assert "x-kubernetes-validations" not in node, path
        assert "type" in node, path
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if "default" in node:
            schema.apply(copy.deepcopy(node["default"]), node, path)  # defaults are valid

    walk(version["schema"]["openAPIV3Schema"], "")


def test_crd_enums_match_the_trainer() -> None:
    assert list(config.ARCH_NAMES) == crd.ARCHS
    assert list(config.AMP_MODES) == crd.AMP_MODES
    assert list(config.OPTIMIZERS) == crd.OPTIMIZERS
    assert list(config.SCHEDULES) == crd.SCHEDULES


def test_render_command_writes_the_file(tmp_path: Path) -> None:
    from shufflenet_trainer.snjob import main

    out = tmp_path / "crd.yaml"
    assert main(["render", "crd", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == crd.crd()


# --- manifests ------------------------------------------------------------------------


def minimal() -> dict[str, Any]:
    return job_manifest("tiny", image="img", devices={"type": "cpu"})


def test_examples_are_valid() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "cpu-digits-2rank.yaml",
        "npu-8rank.yaml",
        "gpu-2rank.yaml",
    }
    for path in EXAMPLES:
        job.validate_job(yaml.safe_load(path.read_text()))


def test_defaults_are_applied_like_the_api_server() -> None:
    got = job.validate_job(minimal())
    spec = got["spec"]
    assert spec["devices"]["count"] == 1
    assert spec["model"] == {"arch": "shufflenet_v2_x1_0"}
    assert spec["training"]["batchSize"] == 1024 and spec["training"]["epochs"] == 240
    assert "lr" not in spec["training"]  # scaled from the batch by the trainer
    assert spec["runPolicy"]["backoffLimit"] == 3 and spec["metrics"]["port"] == 9400
    assert spec["data"] == {"path": "/data/imagenet", "dummy": False}
    assert job.resource_name(got) is None


@pytest.mark.parametrize(
    ("scheduling", "scheduler"),
    [
        ({"gang": False}, "default-scheduler"),
        ({"gang": False, "schedulerName": "kai"}, "kai"),
        ({}, "volcano"),  # gang is the default
        ({"gang": True}, "volcano"),
        ({"gang": True, "schedulerName": "default-scheduler"}, "default-scheduler"),
    ],
)
def test_scheduler_follows_gang_unless_the_job_names_one(
    scheduling: dict[str, Any], scheduler: str
) -> None:
    # The schema has no default for schedulerName: a job without gang scheduling must run
    # on a cluster without Volcano, so the name left out stays distinguishable.
    got = job.validate_job(
        job_manifest(image="img", devices={"type": "cpu"}, scheduling=scheduling)
    )
    assert got["spec"]["scheduling"].get("schedulerName") == scheduling.get("schedulerName")
    assert job.scheduler_name(got) == scheduler


BAD_MANIFESTS = [
    ("spec.devices.count", 0, "spec.devices.count: must be >= 1"),
    ("spec.devices.type", "tpu", "spec.devices.type: 'tpu' is not one of npu, gpu, cpu"),
    ("spec.devices.cout", 2, "spec.devices.cout: unknown field"),
    ("spec.training.batchSize", "64", "spec.training.batchSize: must be an integer"),
    ("spec.training.lr", 0, "spec.training.lr: must be > 0"),
    ("spec.training.momentum", 1.0, "spec.training.momentum: must be < 1"),
    ("spec.model.arch", "resnet50", "spec.model.arch: 'resnet50' is not one of"),
    ("spec.metrics.port", 70000, "spec.metrics.port: must be <= 65535"),
    ("spec.runPolicy.suspend", "yes", "spec.runPolicy.suspend: must be a boolean"),
    ("spec.image", None, "spec.image: must not be null"),
    ("spec.training.extraArgs", ["-b", 3], "spec.training.extraArgs[1]: must be a string"),
    ("spec.scheduling.nodeSelector", {"a": 1}, "spec.scheduling.nodeSelector.a: must be a"),
    ("metadata.name", "Bad_Name", "metadata.name: 'Bad_Name' must be a DNS label"),
    ("metadata.namespace", "Team_A", "metadata.namespace: 'Team_A' must be a DNS label"),
    ("metadata.namespace", "a/b", "metadata.namespace: 'a/b' must be a DNS label"),
    ("spec.checkpoint.initFrom", "", "spec.checkpoint.initFrom: must have at least 1"),
    ("spec.checkpoint.initFrom", "/etc", "spec.checkpoint.initFrom: '/etc' must be a path rel"),
    ("spec.checkpoint.initFrom", "ns/../../x", "spec.checkpoint.initFrom: 'ns/../../x' must be"),
    ("spec.checkpoint.initFrom", "..", "spec.checkpoint.initFrom: '..' must be a path relative"),
    ("kind", "Job", "kind: must be ShuffleNetTrainingJob"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_MANIFESTS)
def test_schema_errors_name_the_field(path: str, value: Any, message: str) -> None:
    obj = minimal()
    node = obj
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    with pytest.raises(job.ManifestError) as info:
        job.validate_job(obj)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_field_and_indivisible_batch() -> None:
    obj = minimal()
    del obj["spec"]["devices"]["type"]
    with pytest.raises(job.ManifestError, match=r"^spec.devices.type: is required"):
        job.validate_job(obj)
    obj = minimal()
    obj["spec"]["devices"]["count"] = 3
    with pytest.raises(job.ManifestError, match=r"^spec.training.batchSize: 1024 .* divide"):
        job.validate_job(obj)


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ({"type": "npu", "count": 18, "perPod": 9}, r"^spec\.devices\.perPod: 9 NPUs in a pod"),
        ({"type": "npu", "count": 32, "perPod": 32}, r"^spec\.devices\.perPod: 32 NPUs"),
        ({"type": "cpu", "count": 20000}, r"^spec\.devices\.count: 20000 devices make 20000"),
    ],
)
def test_device_counts_no_node_can_serve_are_refused(devices: dict[str, Any], message: str) -> None:
    obj = minimal()
    obj["spec"]["devices"] = devices
    obj["spec"]["training"] = {"batchSize": 60480}
    with pytest.raises(job.ManifestError, match=message):
        job.validate_job(obj)
    # One-device pods of any count, whole 910 servers, a 16-chip box; any GPU grouping.
    for count, per_pod, kind in ((6, 1, "npu"), (24, 8, "npu"), (32, 16, "npu"), (18, 9, "gpu")):
        obj["spec"]["devices"] = {"type": kind, "count": count, "perPod": per_pod}
        obj["spec"]["training"] = {"batchSize": 288}
        job.validate_job(obj)


def test_pod_env_and_trainer_args() -> None:
    npu = job.validate_job(yaml.safe_load((ROOT / "manifests/examples/npu-8rank.yaml").read_text()))
    e = job.pod_env(npu, 5, master_addr="m", rank_table_file="/t/hccl.json")
    assert (e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["DEVICE_ID"]) == ("5", "8", "0", "0")
    assert e["POD_NAME"] == "shufflenet-imagenet-npu-rank-5" and e["METRICS_PORT"] == "9400"
    assert e["RANK_TABLE_FILE"] == "/t/hccl.json" and e["HCCL_CONNECT_TIMEOUT"] == "1800"
    assert "HCCL_EXEC_TIMEOUT" not in e  # HCCL's own default unless the spec sets one
    npu["spec"]["training"]["hcclExecTimeoutSeconds"] = 900
    assert job.pod_env(npu, 5, master_addr="m")["HCCL_EXEC_TIMEOUT"] == "900"
    del npu["spec"]["training"]["hcclExecTimeoutSeconds"]
    assert job.resource_name(npu) == "huawei.com/Ascend910"

    args = job.trainer_args(npu, data_path=None, output_dir="/checkpoints/x")
    assert args[0] == "/data/imagenet"
    assert args[args.index("--device") + 1] == "npu" and args[args.index("-b") + 1] == "8192"
    assert args[args.index("--amp") + 1] == "fp16"
    run = "/checkpoints/x/default/shufflenet-imagenet-npu"
    assert args[-4:] == ["--output-dir", run, "--resume", "auto"]
    # Every flag the job passes is one the trainer accepts.
    config.parse_config(args, world_size=8)
    # The CPU stand-in (SHUFFLENET_FORCE_CPU) runs the same command line on CPU, in the CPU's
    # default precision.
    forced = config.parse_config(args, world_size=8, force_cpu=True)
    assert (forced.device, forced.amp, forced.loss_scale) == ("cpu", "off", None)


def test_each_job_has_a_run_folder_of_its_own() -> None:
    a = job.validate_job(job_manifest("a", metadata={"namespace": "team-1"}))
    assert job.run_dir(a, "/checkpoints") == "/checkpoints/team-1/a"
    assert job.run_dir(a, "/checkpoints/") == "/checkpoints/team-1/a"
    assert job.run_dir(a, "out") == "out/team-1/a"
    # The same name in another namespace, and a manifest without one (`snjob run-local`,
    # where kubectl would use "default").
    other = job.validate_job(job_manifest("a", metadata={"namespace": "team-2"}))
    local = job.validate_job(job_manifest("a"))
    assert job.run_dir(other, "/c") == "/c/team-2/a" and job.run_dir(local, "/c") == "/c/default/a"
    for j in (a, other, local):
        args = job.trainer_args(j, data_path=None, output_dir="/c")
        assert args[args.index("--output-dir") + 1] == job.run_dir(j, "/c")
        assert "--init-from" not in args
    # No namespace or job name looks like a result folder, so folders of earlier versions at
    # the volume's root are never taken for a run folder.
    assert not job.NAMESPACE_PATTERN.match(job.RESULT_DIR_PREFIX + "x")
    assert not job.NAME_PATTERN.match(job.RESULT_DIR_PREFIX + "x")


@pytest.mark.parametrize(
    ("init_from", "flag"),
    [
        ("team-1/a", "/c/team-1/a"),
        ("team-1/a/training_1p_job_20260101000000/", "/c/team-1/a/training_1p_job_20260101000000"),
        ("./b/checkpoint.pth.tar", "/c/b/checkpoint.pth.tar"),
        ("old..run", "/c/old..run"),
    ],
)
def test_init_from_is_read_below_the_checkpoint_mount(init_from: str, flag: str) -> None:
    b = job.validate_job(job_manifest("b", checkpoint={"initFrom": init_from}))
    args = job.trainer_args(b, data_path=None, output_dir="/c")
    assert args[args.index("--init-from") + 1] == flag
    # The job still runs in its own folder and resumes there first.
    assert args[args.index("--output-dir") + 1] == "/c/default/b"
    assert args[args.index("--resume") + 1] == "auto"
    assert config.parse_config(args, world_size=8).init_from == flag


def test_contract_imports_without_torch() -> None:
    # The operator image has no torch: the contract must not pull it in.
    code = (
        "import sys\n"
        "from shufflenet_contract import crd, env, job, ranktable, schema\n"
        "assert crd.render_yaml()\n"
        "heavy = ('torch', 'shufflenet_trainer')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "X", "value": 0}],
            r"^spec\.podTemplate\.spec\.containers\[0\]\.env\[0\]\.value: 0 must be a string",
        ),
        ([{"value": "1"}], r"^spec\.podTemplate\.spec\.containers\[0\]\.env\[0\]\.name: every env"),
    ],
)
def test_pod_template_env_that_would_make_invalid_pods_is_refused(
    env: list[dict[str, Any]], message: str
) -> None:
    obj = minimal()
    obj["spec"]["podTemplate"] = {"spec": {"containers": [{"name": "trainer", "env": env}]}}
    with pytest.raises(job.ManifestError, match=message):
        job.validate_job(obj)
    obj["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": "0"}]
    job.validate_job(obj)
