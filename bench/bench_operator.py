"""What the operator costs: rank-table builds, `kubectl apply` to a ready job, memory.

Run: python bench/bench_operator.py [--only ranktable|apply|memory ...] [--repeat 7]
         [--sizes 8,16,...,4096] [--ranks 256] [--apply-runs 3] [--jobs 100]
         [--job-ranks 2] [--job-device npu] [--resync-wait 60] [--json FILE]

1. ranktable: the pure functions of `shufflenet_contract.ranktable` as one reconcile runs
   them (parse the Ascend device plugin's annotation of every rank pod, build the table,
   dump hccl.json), for per-device pods (one `server_list` entry per pod, what the operator
   creates) and whole-node pods (8 chips per entry); then the operator's whole decision,
   `policy.plan()`, for a job whose N pods all carry their annotation (once when the table
   is written, once for a resync that changes nothing). Best and median of --repeat runs.
2. apply: a REAL control plane (etcd, kube-apiserver, controller manager, scheduler v1.20.2)
   in a temporary directory, SIMULATED nodes (tests/sim/node_agent.py: 8 Ascend chips each;
   it binds nothing itself, it plays kubelet and the device plugin for the pods the real
   scheduler places) and the real operator process. `kubectl apply -f job.yaml` of an
   N-rank NPU job (default scheduler, no gang scheduling, synthetic data), then the time to
   the first pod, (a) all N pods created, (b) all scheduled, (c) all Running, (d) the
   `<job>-ranktable` ConfigMap holding a completed hccl.json. Pods and the ConfigMap are
   watched with the Python client. Then the operator's own read of the job
   (`Kube.observe`: the job, its N pods as plain dicts, Service, ConfigMap), timed from this
   process against the real API server: the I/O half of a reconcile, next to plan() above;
   and the same pod list read as plain JSON, without the client's model classes. Between
   runs the job is deleted and the garbage collector removes its children.
3. memory: a fresh operator process: its resident memory idle, after creating half and then
   all of --jobs small jobs (default: 2-rank NPU jobs, each with its pods, Service and rank
   table; --job-device cpu for CPU ranks) once each has a status phase, once all are
   Running and after --resync-wait seconds more of resyncs (with the test harness's flags
   the operator looks at every job every 5 s, at a Running one every second:
   --progress-interval 1).

The operator runs with the flags of the test harness (tests/k8s/operator_harness.py).

Everything started (control plane, node agent, operator) is stopped and the temporary
directory removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines
from prometheus_client.parser import text_string_to_metric_families

from shufflenet_contract import crd, ranktable
from shufflenet_contract import job as jobs
from shufflenet_operator import policy, render
from shufflenet_operator import status as st
from shufflenet_operator.kube import Kube
from shufflenet_operator.observed import Observed

REPO = Path(__file__).resolve().parents[1]
# The control-plane helpers and the simulated nodes live with the tests (as `k8s`, `sim`).
sys.path.insert(0, str(REPO / "tests"))

from k8s.cluster import ControlPlane, start_control_plane, stop_control_plane  # noqa: E402
from k8s.operator_harness import Jobs, OperatorProcess, install_crd, job_manifest  # noqa: E402
from sim.node_agent import HOST_NET, NodeAgent, device_ip, wait_for  # noqa: E402

PARTS = ("ranktable", "apply", "memory")
CHIPS_PER_NODE = 8
DEFAULT_SIZES = ",".join(str(8 << i) for i in range(10))  # 8 .. 4096
# No Volcano here: the default scheduler places the pods, one by one.
SCHEDULING = {"schedulerName": "default-scheduler", "gang": False}
# shufflenet-operator's defaults for how often it looks at a job and scrapes its progress.
PRODUCTION_INTERVALS = ("--resync", "60", "--progress-interval", "30")


# -- helpers --------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeat: int, budget_s: float = 20.0) -> list[float]:
    """Seconds per call of `fn`, `repeat` times (at least 3 once `budget_s` has passed)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    return times


def summary_ms(times: Sequence[float]) -> dict[str, Any]:
    return {
        "best_ms": min(times) * 1e3,
        "median_ms": statistics.median(times) * 1e3,
        "runs": len(times),
    }


def annotation(node: int, chips: Sequence[int]) -> str:
    """The Ascend device plugin's pod annotation, as the simulated plugin writes it."""
    host = f"{HOST_NET}{node}"
    config = {
        "pod_name": f"pod-{node}",
        "server_id": host,
        "host_ip": host,
        "devices": [{"device_id": str(d), "device_ip": device_ip(node, d)} for d in chips],
    }
    return json.dumps(config, separators=(",", ":"))


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


def fmt_ms(summary: dict[str, Any]) -> str:
    return f"{summary['best_ms']:.2f} / {summary['median_ms']:.2f}"


# -- 1. rank table and plan() ---------------------------------------------------------------


def pods_of(ranks: int, whole_node: bool) -> list[tuple[int, str, str]]:
    """(pod rank, pod UID, annotation) of every rank pod of an N-rank job.

    UIDs have the real length (a UUID): per-device entries are keyed by them, so they weigh
    in the table's size.
    """
    if whole_node:
        everything = list(range(CHIPS_PER_NODE))
        return [
            (p, str(uuid.UUID(int=p)), annotation(p + 1, everything)) for p in range(ranks // 8)
        ]
    return [(r, str(uuid.UUID(int=r)), annotation(r // 8 + 1, [r % 8])) for r in range(ranks)]


def build_hccl_json(pods: Sequence[tuple[int, str, str]], whole_node: bool) -> str:
    annotated = [ranktable.AnnotatedPod(rank, uid, f"pod-{rank}", text) for rank, uid, text in pods]
    entries = ranktable.pods_from_annotations(annotated, CHIPS_PER_NODE if whole_node else 1)
    return ranktable.dump(ranktable.build_rank_table(entries))


def annotated_job(ranks: int) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """A job as the API returns it once all its pods were created, and its N pods, each
    scheduled, Running and annotated by the device plugin; plus its Service."""
    now = datetime.now(timezone.utc)
    manifest = job_manifest("bench", count=ranks, scheduling=SCHEDULING)
    manifest["metadata"] |= {"namespace": "bench", "uid": str(uuid.uuid4())}
    conditions = st.set_condition([], st.CREATED, True, "PodsCreated", "created", now)
    obj = {**manifest, "status": {"phase": "Pending", "restarts": 0, "conditions": conditions}}
    job = jobs.validate_job(manifest)
    pods = []
    for rank, uid, text in pods_of(ranks, whole_node=False):
        pod = render.render_pod(job, rank)
        pod["metadata"] |= {"uid": uid, "annotations": {ranktable.ANNOTATION: text}}
        pod["spec"]["nodeName"] = f"node-{rank // 8 + 1}"
        pod["status"] = {
            "phase": "Running",
            "podIP": f"127.2.{rank // 8 + 1}.{rank % 8 + 1}",
            "containerStatuses": [
                {"name": render.CONTAINER, "ready": True, "restartCount": 0, "state": {}}
            ],
        }
        pods.append(pod)
    return obj, pods, render.render_service(job)


def bench_ranktable(sizes: Sequence[int], repeat: int) -> list[dict[str, Any]]:
    settings = policy.Settings()
    results = []
    for n in sizes:
        row: dict[str, Any] = {"ranks": n}
        for layout, whole in (("per_device", False), ("whole_node", True)):
            pods = pods_of(n, whole)
            text = build_hccl_json(pods, whole)
            row[layout] = {
                **summary_ms(timed(lambda p=pods, w=whole: build_hccl_json(p, w), repeat)),
                "servers": len(pods),
                "json_bytes": len(text.encode()),
            }
        obj, pods, service = annotated_job(n)
        first = policy.plan(
            Observed(obj, pods, service=service), now=datetime.now(timezone.utc), settings=settings
        )
        assert first.ranktable_completed, "the plan did not complete the rank table"
        created_cm = {"data": first.configmap_data}

        def plan(configmap: dict[str, Any] | None, o=obj, p=pods, s=service) -> policy.Plan:
            now = datetime.now(timezone.utc)
            observed = Observed(o, p, service=s, configmap=configmap)
            return policy.plan(observed, now=now, settings=settings)

        initial_cm = render.render_configmap(jobs.validate_job(obj))
        row["plan_write"] = summary_ms(timed(lambda c=initial_cm: plan(c), repeat))
        row["plan_steady"] = summary_ms(timed(lambda c=created_cm: plan(c), repeat))
        assert plan(created_cm).configmap_data is None, "a steady resync rewrote the table"
        results.append(row)
        print(f"  ranktable: {n} ranks done", file=sys.stderr, flush=True)
    return results


def report_ranktable(rows: Sequence[dict[str, Any]]) -> None:
    print_table(
        "Rank table: annotation parse + build + dump, ms (best / median)",
        ["ranks", "per-device", "KiB", "whole-node", "KiB", "runs"],
        [
            [
                r["ranks"],
                fmt_ms(r["per_device"]),
                f"{r['per_device']['json_bytes'] / 1024:.1f}",
                fmt_ms(r["whole_node"]),
                f"{r['whole_node']['json_bytes'] / 1024:.1f}",
                f"{r['per_device']['runs']}/{r['whole_node']['runs']}",
            ]
            for r in rows
        ],
    )
    print_table(
        "policy.plan() of an N-rank job, all pods annotated, ms (best / median)",
        ["ranks", "writes the table", "steady resync", "runs"],
        [
            [
                r["ranks"],
                fmt_ms(r["plan_write"]),
                fmt_ms(r["plan_steady"]),
                f"{r['plan_write']['runs']}/{r['plan_steady']['runs']}",
            ]
            for r in rows
        ],
    )


# -- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    cp: ControlPlane
    core: client.CoreV1Api
    agent: NodeAgent
    root: Path
    operator_args: list[str] | None = None

    def namespace(self, name: str) -> str:
        """A new namespace whose `default` ServiceAccount can run pods."""
        self.core.create_namespace({"metadata": {"name": name}})

        def has_token() -> bool:
            try:
                return bool(self.core.read_namespaced_service_account("default", name).secrets)
            except client.ApiException as e:
                if e.status != 404:
                    raise
                return False

        wait_for(has_token, timeout=60, what=f"ServiceAccount {name}/default")
        return name

    @contextlib.contextmanager
    def operator(self, namespace: str) -> Iterator[OperatorProcess]:
        """The real operator watching `namespace`, with its production resync and progress
        intervals (the test harness's quicker ones would make the operator busier)."""
        log_dir = self.root / f"operator-{namespace}"
        log_dir.mkdir()
        op = OperatorProcess(self.cp, namespace, log_dir, args=PRODUCTION_INTERVALS)
        try:
            op.start()
            assert op.proc is not None
            self.operator_args = [str(a) for a in op.proc.args[3:]]  # after `python -m ...`
            yield op
        except Exception:
            print(op.logs()[-4000:], file=sys.stderr)
            raise
        finally:
            op.stop()


@contextlib.contextmanager
def cluster(nodes: int) -> Iterator[Cluster]:
    """A control plane in a temporary directory with `nodes` simulated 8-chip nodes."""
    root = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    state = root / "cluster"
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        stack.callback(stop_control_plane, state)
        t0 = time.monotonic()
        cp = start_control_plane(state)
        stack.callback(cp.api.close)
        install_crd(cp.api)
        core = client.CoreV1Api(cp.api)
        # The agent's nodes and pods go with the control plane: only its watch is stopped.
        agent = NodeAgent(core, name="bench")
        agent.start_watch()
        stack.callback(agent.stop_watch)
        for _ in range(nodes):
            agent.add_node(npus=CHIPS_PER_NODE)
        took = time.monotonic() - t0
        print(f"  cluster up with {nodes} nodes in {took:.1f} s", file=sys.stderr, flush=True)
        yield Cluster(cp, core, agent, root)


class Watch:
    """Watch objects of one kind in a namespace, calling on_event(type, object) for each.

    Reads the raw JSON (no client model classes): the bench must not load the 2 cores it
    shares with the control plane and the operator more than a controller's watch would.
    """

    def __init__(
        self,
        list_fn: Callable[..., Any],
        namespace: str,
        on_event: Callable[[str, dict[str, Any]], None],
        **selectors: str,
    ) -> None:
        self.list_fn, self.namespace, self.on_event = list_fn, namespace, on_event
        self.selectors = selectors
        self.listed = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        if not self.listed.wait(30):
            raise TimeoutError("the watch's first list did not come back")
        return self

    def __exit__(self, *exc: object) -> None:
        # A watch blocked in a read ends at its server-side timeout; nothing is called after
        # this, and the daemon thread is not waited for.
        self.stopped.set()
        with contextlib.suppress(Exception):
            self._resp.close()

    def call(self, **kw: Any) -> Any:
        """The list call with this watch's selectors, raw (urllib3 response)."""
        return self.list_fn(self.namespace, _preload_content=False, **self.selectors, **kw)

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                listing = json.loads(self.call().data)
                for item in listing["items"]:
                    self.on_event("ADDED", item)
                self.listed.set()
                self._resp = self.call(
                    watch=True,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=10,
                )
                for line in iter_resp_lines(self._resp):
                    event = json.loads(line)
                    if self.stopped.is_set():
                        return
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    self.on_event(event["type"], event["object"])
        except BaseException as exc:
            if not self.stopped.is_set():
                self.error = exc
                self.listed.set()


def scrape(op: OperatorProcess) -> dict[str, float]:
    """The operator's unlabelled samples (histogram sums and counts, process metrics)."""
    return {
        s.name: s.value
        for family in text_string_to_metric_families(op.metrics())
        for s in family.samples
        if not s.labels
    }


# -- 2. kubectl apply -> completed rank table -----------------------------------------------


class ApplyProgress:
    """Times at which the job's pods and rank table reached each milestone."""

    MILESTONES = ("first_pod", "created", "scheduled", "running", "ranktable")

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self.pods: dict[str, tuple[bool, bool]] = {}  # name -> (scheduled, running)
        self.at: dict[str, float] = {}
        self.table: dict[str, Any] | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def _mark(self, milestone: str, reached: bool) -> None:
        if reached and milestone not in self.at:
            self.at[milestone] = time.monotonic()
            if all(m in self.at for m in self.MILESTONES):
                self.done.set()

    def on_pod(self, type_: str, pod: dict[str, Any]) -> None:
        with self._lock:
            name = pod["metadata"]["name"]
            if type_ == "DELETED":
                self.pods.pop(name, None)
                return
            running = (pod.get("status") or {}).get("phase") == "Running"
            self.pods[name] = (bool(pod["spec"].get("nodeName")), running)
            states = self.pods.values()
            self._mark("first_pod", True)
            self._mark("created", len(self.pods) == self.ranks)
            self._mark("scheduled", sum(s for s, _ in states) == self.ranks)
            self._mark("running", sum(r for _, r in states) == self.ranks)

    def on_configmap(self, type_: str, cm: dict[str, Any]) -> None:
        text = (cm.get("data") or {}).get(ranktable.FILE_KEY, "")
        with contextlib.suppress(ValueError):
            table = json.loads(text)
            if type_ != "DELETED" and table.get("status") == ranktable.STATUS_COMPLETED:
                with self._lock:
                    self.table = table
                    self._mark("ranktable", True)


def apply_once(
    c: Cluster, op: OperatorProcess, namespace: str, ranks: int, timeout: float, repeat: int
) -> dict[str, Any]:
    name = f"bench{ranks}"
    path = c.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job_manifest(name, count=ranks, scheduling=SCHEDULING)))
    progress = ApplyProgress(ranks)
    before = scrape(op)
    pods = Watch(
        c.core.list_namespaced_pod,
        namespace,
        progress.on_pod,
        label_selector=f"{render.JOB_LABEL}={name}",
    )
    tables = Watch(
        c.core.list_namespaced_config_map,
        namespace,
        progress.on_configmap,
        field_selector=f"metadata.name={name}-ranktable",
    )
    with pods, tables:
        t0 = time.monotonic()
        c.cp.kubectl("apply", "-n", namespace, "-f", str(path))
        kubectl_s = time.monotonic() - t0
        if not progress.done.wait(timeout):
            raise TimeoutError(
                f"{name}: after {timeout:.0f} s only {sorted(progress.at)} of "
                f"{ApplyProgress.MILESTONES}; pods seen {len(progress.pods)}"
                f"{pods.error or tables.error or ''}"
            )
        after = scrape(op)
    result: dict[str, Any] = {f"{m}_s": progress.at[m] - t0 for m in ApplyProgress.MILESTONES}
    observe = Kube(c.cp.api)
    result["observe"] = summary_ms(timed(lambda: observe.observe(namespace, name), repeat))
    # The same pods as JSON only, without the client's model classes.
    result["list_json"] = summary_ms(timed(lambda: json.loads(pods.call().data), repeat))
    assert progress.table is not None
    for rank in (0, ranks - 1):
        ranktable.validate_rank_table(progress.table, rank, ranks)
    result["kubectl_apply_s"] = kubectl_s
    prefix = "shufflenet_operator_reconcile_seconds"
    result["reconciles"] = int(after[f"{prefix}_count"] - before[f"{prefix}_count"])
    result["reconcile_total_s"] = after[f"{prefix}_sum"] - before[f"{prefix}_sum"]

    # Delete it the way a user would and let the garbage collector remove the children.
    t1 = time.monotonic()
    Jobs(c.cp.api, namespace).delete(name)

    def children_gone() -> bool:
        selector = f"{render.JOB_LABEL}={name}"
        return not (
            c.core.list_namespaced_pod(namespace, label_selector=selector, limit=1).items
            or c.core.list_namespaced_config_map(namespace, label_selector=selector).items
            or c.core.list_namespaced_service(namespace, label_selector=selector).items
        )

    wait_for(children_gone, timeout=180, interval=0.5, what=f"{name}'s children deleted")
    result["gc_s"] = time.monotonic() - t1
    return result


def bench_apply(
    c: Cluster, ranks: int, runs: int, timeout: float, repeat: int
) -> list[dict[str, Any]]:
    namespace = c.namespace("bench-apply")
    results = []
    with c.operator(namespace) as op:
        for i in range(runs):
            results.append(apply_once(c, op, namespace, ranks, timeout, repeat))
            print(f"  apply: run {i + 1} done", file=sys.stderr, flush=True)
    return results


def report_apply(ranks: int, nodes: int, runs: Sequence[dict[str, Any]]) -> None:
    columns = {
        "first pod": "first_pod_s",
        "all pods created": "created_s",
        "scheduled": "scheduled_s",
        "Running": "running_s",
        "rank table": "ranktable_s",
        "kubectl exits": "kubectl_apply_s",
        "in reconciles": "reconcile_total_s",
        "GC after delete": "gc_s",
    }
    print_table(
        f"kubectl apply of a {ranks}-rank NPU job ({nodes} simulated nodes x 8 NPUs): "
        "seconds from the apply; the operator's reconciles meanwhile; one Kube.observe() "
        "of the running job and one list of its pods as plain JSON, ms (best / median)",
        ["run", *columns, "reconciles", "observe ms", "list as JSON ms"],
        [
            [i + 1, *(f"{r[k]:.2f}" for k in columns.values()), r["reconciles"],
             fmt_ms(r["observe"]), fmt_ms(r["list_json"])]
            for i, r in enumerate(runs)
        ],
    )  # fmt: skip


# -- 3. memory ------------------------------------------------------------------------------


def usage(op: OperatorProcess) -> dict[str, float | None]:
    """The operator's resident memory, MiB (VmRSS, VmHWM: the peak, and its own metric), the
    CPU seconds it has used and the reconciles it has done."""
    assert op.proc is not None
    proc = Path(f"/proc/{op.proc.pid}")
    fields = {}
    for line in (proc / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    # utime and stime, fields 14 and 15 of /proc/PID/stat (after the command in parentheses).
    ticks = (proc / "stat").read_text().rsplit(")", 1)[1].split()[11:13]
    metrics = scrape(op)
    memory = metrics.get("process_resident_memory_bytes")
    return {
        "vmrss_mib": fields["VmRSS"],
        "vmhwm_mib": fields["VmHWM"],
        "metric_mib": None if memory is None else memory / 2**20,
        "cpu_s": sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK"),
        "reconciles": metrics.get("shufflenet_operator_reconcile_seconds_count"),
    }


def bench_memory(
    c: Cluster, n_jobs: int, ranks: int, device: str, resync_wait: float
) -> dict[str, Any]:
    """The operator's memory idle, at half and all of `n_jobs` jobs, and after resyncs.

    Two loads give the cost of one more job apart from what any first job costs once
    (code paths run for the first time, connection pools, caches).
    """
    namespace = c.namespace("bench-memory")
    jobs_api = Jobs(c.cp.api, namespace)

    def phases() -> list[str | None]:
        listing = jobs_api.custom.list_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL
        )
        return [(j.get("status") or {}).get("phase") for j in listing["items"]]

    samples: list[dict[str, Any]] = []
    with c.operator(namespace) as op:
        t0 = time.monotonic()

        def sample(what: str, jobs_now: int) -> None:
            samples.append(
                {"when": what, "jobs": jobs_now, "t_s": time.monotonic() - t0, **usage(op)}
            )

        time.sleep(5)  # past start-up: watches open, first (empty) lists done
        sample("idle", 0)
        created = 0
        for target in (n_jobs // 2, n_jobs):
            for i in range(created, target):
                manifest = job_manifest(
                    f"mem-{i:03d}", device=device, count=ranks, scheduling=SCHEDULING
                )
                jobs_api.create(manifest)
            created = target
            wait_for(
                lambda n=target: sum(map(bool, phases())) == n,
                timeout=300,
                interval=0.5,
                what=f"a phase on {target} jobs",
            )
            sample("every job has a phase", target)
        wait_for(
            lambda: phases().count("Running") == n_jobs,
            timeout=300,
            interval=1,
            what="every job Running",
        )
        sample("every job Running", n_jobs)
        time.sleep(resync_wait)
        sample(f"after {resync_wait:.0f} s more", n_jobs)
    return {"jobs": n_jobs, "ranks_per_job": ranks, "device": device, "samples": samples}


def per_job_kib(sample: dict[str, Any], base: dict[str, Any]) -> str:
    """RSS growth per job from `base` to `sample`, KiB ("" when the job count is the same)."""
    jobs_more = sample["jobs"] - base["jobs"]
    if jobs_more <= 0:
        return ""
    return f"{(sample['vmrss_mib'] - base['vmrss_mib']) * 1024 / jobs_more:.0f}"


def report_memory(m: dict[str, Any]) -> None:
    idle, *loaded = m["samples"]
    half = next(s for s in loaded if s["jobs"] < m["jobs"])
    rows = []
    for s in m["samples"]:
        metric = "absent" if s["metric_mib"] is None else f"{s['metric_mib']:.1f}"
        rows.append(
            [
                s["when"],
                s["jobs"],
                f"{s['t_s']:.1f}",
                f"{s['vmrss_mib']:.1f}",
                f"{s['vmhwm_mib']:.1f}",
                metric,
                per_job_kib(s, idle),
                per_job_kib(s, half),
                f"{s['cpu_s']:.1f}",
                f"{s['reconciles'] or 0:.0f}",
            ]
        )
    print_table(
        f"Operator memory with {m['ranks_per_job']}-rank {m['device']} jobs (MiB; KiB per job "
        f"over idle, and per job from {half['jobs']} to {m['jobs']} jobs; the operator's CPU "
        "seconds and reconciles so far)",
        ["when", "jobs", "t s", "VmRSS", "VmHWM", "process_resident_memory_bytes",
         "KiB/job over idle", f"KiB/job over {half['jobs']}", "CPU s", "reconciles"],
        rows,
    )  # fmt: skip


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=PARTS, help="run this part (repeatable)")
    p.add_argument("--repeat", type=int, default=7, help="runs per rank-table figure")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="rank counts, comma-separated")
    p.add_argument("--ranks", type=int, default=256, help="ranks of the applied job")
    p.add_argument("--apply-runs", type=int, default=3)
    p.add_argument("--apply-timeout", type=float, default=180.0)
    p.add_argument("--jobs", type=int, default=100, help="jobs for the memory figure")
    p.add_argument("--job-ranks", type=int, default=2, help="ranks of each of those jobs")
    p.add_argument("--job-device", default="npu", choices=("npu", "cpu"))
    p.add_argument("--resync-wait", type=float, default=60.0)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    args.only = args.only or list(PARTS)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if any(n % CHIPS_PER_NODE for n in [*args.sizes, args.ranks]):
        p.error(f"rank counts must be multiples of {CHIPS_PER_NODE}")
    return args


def nodes_needed(args: argparse.Namespace) -> int:
    need = [args.ranks // CHIPS_PER_NODE] if "apply" in args.only else []
    if "memory" in args.only:
        chips = args.jobs * args.job_ranks if args.job_device == "npu" else 0
        # CPU ranks need no chips; a node takes 110 pods.
        need.append(max(-(-chips // CHIPS_PER_NODE), -(-args.jobs * args.job_ranks // 110)))
    return max(need, default=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the control plane and the operator are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    if "ranktable" in args.only:
        results["ranktable"] = bench_ranktable(args.sizes, args.repeat)
        report_ranktable(results["ranktable"])
    nodes = nodes_needed(args)
    if nodes:
        with cluster(nodes) as c:
            if "apply" in args.only:
                runs = bench_apply(c, args.ranks, args.apply_runs, args.apply_timeout, args.repeat)
                results["apply"] = {"ranks": args.ranks, "nodes": nodes, "runs": runs}
                report_apply(args.ranks, nodes, runs)
            if "memory" in args.only:
                results["memory"] = bench_memory(
                    c, args.jobs, args.job_ranks, args.job_device, args.resync_wait
                )
                report_memory(results["memory"])
            results["operator_args"] = c.operator_args
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["wall_s"] = time.monotonic() - started
    print(f"\n{os.cpu_count()} CPUs; wall time {results['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
