"""Fault-injection soak of the operator on a real control plane (`make soak`).

Real: etcd, kube-apiserver, the scheduler, the controller manager's garbage collector, the
operator as its own process. SIMULATED (tests/sim): the kubelet and device plugin of a few
Ascend nodes, whose runtime runs each rank pod's container as a local process; the container
is tests/soak/sim_rank.py, a torch-free stand-in for the trainer that keeps its contract
(rank table, lost-peer exit 134, checkpoint and resume).

A seeded driver keeps a few jobs of 2-8 ranks running and injects, at random moments, the
faults of FAULTS; the invariants of soak/invariants.py are checked every poll and at the end.
It prints `soak: J jobs, F faults, V violations`, then each violation with its job, time and
the recorded events around it, and exits 1 when V > 0.

    PYTHONPATH=tests .venv/bin/python -m soak.cluster --seconds 1800 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8s.cluster import ControlPlane, restart_apiserver, start_control_plane, stop_control_plane
from k8s.operator_harness import Jobs, OperatorProcess, install_crd, job_manifest, new_namespace
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from sim.node_agent import NodeAgent
from sim.runtime import ProcessRuntime

from shufflenet_contract import crd, ranktable
from shufflenet_operator import render
from soak import invariants as inv

TESTS = Path(__file__).resolve().parents[1]
FAULTS = (
    "rank_kill",
    "rank_stop",
    "pod_delete",
    "node_remove",
    "operator_kill",
    "apiserver_restart",
    "suspend_flip",
    "spec_edit",
    "configmap_edit",
)
NODES, CHIPS = 4, 8
# How long a Running job may go unchanged: its longest attempt (steps x step time, plus the
# peers' timeout and a loaded machine's slack).
RUNNING_S = 120.0
STALL_S = 120.0


@dataclass
class Fault:
    kind: str
    time: float
    target: str  # a job, node or "*"
    detail: str
    jobs: dict[str, int] = field(default_factory=dict)  # job -> restarts when injected
    disrupted: set[str] = field(default_factory=set)
    recovered: dict[str, tuple[float, int, str]] = field(default_factory=dict)


@dataclass
class SoakResult:
    seed: int
    seconds: float
    jobs: int
    faults: list[Fault]
    violations: list[inv.Violation]
    outcomes: Counter[str]
    work_dir: Path

    def summary(self) -> str:
        return (
            f"soak: {self.jobs} jobs, {len(self.faults)} faults, {len(self.violations)} violations"
        )

    def fault_table(self) -> dict[str, dict[str, Any]]:
        """Per fault class: how many, jobs they hit, restarts caused, recovery times."""
        out: dict[str, dict[str, Any]] = {}
        for kind in FAULTS:
            mine = [f for f in self.faults if f.kind == kind]
            recs = [r for f in mine for r in f.recovered.values()]
            times = [r[0] for r in recs if r[2] == "Running"]
            out[kind] = {
                "faults": len(mine),
                "jobs_disrupted": sum(len(f.disrupted) for f in mine),
                "restarts": sum(r[1] for r in recs),
                "recovered": len(times),
                "ended": dict(Counter(r[2] for r in recs if r[2] != "Running")),
                "recover_median_s": round(statistics.median(times), 1) if times else None,
                "recover_max_s": round(max(times), 1) if times else None,
            }
        return out


def _sanitize(api: client.ApiClient, items: list[Any], kind: str) -> list[dict[str, Any]]:
    out = []
    for item in items:
        d = api.sanitize_for_serialization(item)
        d["kind"] = kind
        out.append(d)
    return out


def _metric_samples(text: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "shufflenet_operator_jobs":
                out[(s.name, s.labels["namespace"], s.labels["phase"])] = s.value
            elif s.name == "shufflenet_operator_job_restarts_total":
                out[(s.name, s.labels["job"], s.labels["namespace"])] = s.value
    return out


class Soak:
    def __init__(
        self,
        seconds: float,
        seed: int,
        work_dir: Path,
        *,
        max_active: int = 4,
        fault_interval: float = 4.0,
        settle_s: float = 90.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.seconds = seconds
        self.seed = seed
        self.rng = random.Random(seed)
        self.work = work_dir
        self.max_active = max_active
        self.fault_interval = fault_interval
        self.settle_s = settle_s
        self.log = log
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str, str]] = []  # (t, job or *, text)
        self.faults: list[Fault] = []
        self.monitor = inv.Monitor()
        self.jobs_made = 0
        self.world: dict[str, int] = {}
        self.uids: dict[str, str] = {}  # job name -> uid
        self.deleted: dict[str, str] = {}  # uid -> job name
        self.deleted_at: dict[str, float] = {}
        self.gc_seconds: dict[str, float] = {}  # uid -> seconds until its last child went
        self.api_down_since: float | None = None
        self.ended: dict[str, str] = {}  # job -> terminal phase first seen
        self.last_key: dict[str, tuple[Any, ...]] = {}
        self.last_change: dict[str, float] = {}
        self.started_pods: dict[str, tuple[str, int, int]] = {}  # uid -> (job, rank, attempt)
        self.pods_of_attempt: dict[tuple[str, int], set[str]] = defaultdict(set)
        self.checked_reports: set[str] = set()
        self.pending: list[tuple[float, str, Callable[[], None]]] = []
        self.cycle: list[str] = []
        self.jobs_seen: list[dict[str, Any]] = []
        self.pods_seen: list[dict[str, Any]] = []
        self.outcomes: Counter[str] = Counter()

    # -- setup ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, job: str, text: str) -> None:
        self.timeline.append((self.now(), job, text))

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        # Refused connections while the API server restarts are the fault itself.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        self.cp: ControlPlane = start_control_plane(self.work / "cluster")
        self.core = client.CoreV1Api(self.cp.api)
        install_crd(self.cp.api)
        self.ns = new_namespace(self.core)
        self.jobs = Jobs(self.cp.api, self.ns)
        self.agent = NodeAgent(self.core, name="soak")
        self.runtime = ProcessRuntime(
            self.work / "containers", self.agent.pod_ip, config_map=self._config_map
        )
        self.agent.runtime = self.runtime
        start = self.runtime.start

        def recording_start(pod: Any, ip: str, on_exit: Callable[[int], None]) -> None:
            labels = pod.metadata.labels or {}
            job = labels.get(render.JOB_LABEL, "")
            rank, attempt = int(labels[render.RANK_LABEL]), int(labels[render.RESTART_LABEL])
            self.started_pods[pod.metadata.uid] = (job, rank, attempt)
            start(pod, ip, on_exit)

        self.runtime.start = recording_start  # type: ignore[method-assign]
        self.agent.start_watch()
        for _ in range(NODES):
            self.agent.add_node(npus=CHIPS)
        (self.work / "reports").mkdir(exist_ok=True)
        # `privileged`: the jobs' checkpoints are hostPath folders, the only volumes the
        # simulated ranks (processes on this machine) can share.
        self.operator = OperatorProcess(
            self.cp, self.ns, self.work / "operator-logs", args=["--job-policy", "privileged"]
        )
        (self.work / "operator-logs").mkdir(exist_ok=True)
        self.operator.start()
        self.t0 = time.monotonic()

    def _config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return self.core.read_namespaced_config_map(name, namespace, _request_timeout=5).data
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.operator.stop()
        with contextlib.suppress(Exception):
            self.agent.close()
        with contextlib.suppress(Exception):
            self.cp.api.close()
        stop_control_plane(self.work / "cluster")

    # -- jobs ------------------------------------------------------------------------------

    def new_job(self) -> None:
        self.jobs_made += 1
        name = f"soak-{self.jobs_made}"
        ranks = self.rng.randint(2, 8)
        ckpt = self.work / "checkpoints" / name
        ckpt.mkdir(parents=True)
        steps = self.rng.randint(15, 40)
        args = [
            "--checkpoint-dir", str(ckpt), "--steps", str(steps), "--step-seconds", "0.3",
            "--peer-timeout", "5", "--connect-timeout", "30", "--table-timeout", "60",
            "--report-dir", str(self.work / "reports"),
        ]  # fmt: skip
        template = {
            "spec": {
                "containers": [
                    {
                        "name": render.CONTAINER,
                        "command": ["python", "-m", "soak.sim_rank"],
                        "args": args,
                        "env": [{"name": "PYTHONPATH", "value": str(TESTS)}],
                    }
                ]
            }
        }
        manifest = job_manifest(
            name,
            count=ranks,
            runPolicy={
                "backoffLimit": self.rng.randint(2, 8),
                "cleanPodPolicy": self.rng.choice(["Running", "All", "None"]),
            },
            checkpoint={
                "volume": {"hostPath": {"path": str(ckpt), "type": "Directory"}},
                "path": str(ckpt),
            },
            podTemplate=template,
        )
        created = self.jobs.create(manifest)
        self.world[name] = ranks
        self.uids[name] = created["metadata"]["uid"]
        self.note(name, f"created: {ranks} ranks, {steps} steps, {manifest['spec']['runPolicy']}")

    def delete_job(self, name: str) -> None:
        with contextlib.suppress(client.ApiException):
            self.jobs.delete(name)
        self.deleted[self.uids[name]] = name
        self.deleted_at[self.uids[name]] = self.now()
        self.note(name, "deleted")

    # -- faults ----------------------------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs_seen if inv.phase(j) not in inv.TERMINAL]

    def running_pods(self) -> list[dict[str, Any]]:
        """Live pods whose rank process runs."""
        pids = self.runtime.pids()
        return [
            p
            for p in self.pods_seen
            if inv.is_live(p)
            and (p.get("status") or {}).get("phase") == "Running"
            and p["metadata"]["uid"] in pids
        ]

    def next_kind(self) -> str:
        if not self.cycle:
            self.cycle = list(FAULTS)
            self.rng.shuffle(self.cycle)
        return self.cycle.pop()

    def inject(self) -> None:
        kind = self.next_kind()
        fault = getattr(self, f"fault_{kind}")()
        if fault is None:
            # No target for it now (no running pod, no job): its turn comes again.
            self.cycle.insert(0, kind)
            return
        self.faults.append(fault)
        self.note(fault.target, f"FAULT {fault.kind}: {fault.detail}")
        self.log(f"[{fault.time:7.1f}s] fault {fault.kind}: {fault.target}: {fault.detail}")

    def _fault(self, kind: str, target: str, detail: str, jobs: list[str]) -> Fault:
        restarts = {
            inv._name(j): int((j.get("status") or {}).get("restarts") or 0) for j in self.jobs_seen
        }
        return Fault(kind, self.now(), target, detail, {j: restarts.get(j, 0) for j in jobs})

    def _pick_pod(self) -> dict[str, Any] | None:
        pods = self.running_pods()
        return self.rng.choice(pods) if pods else None

    def _signal_rank(self, kind: str, sig: signal.Signals) -> Fault | None:
        pod = self._pick_pod()
        if pod is None:
            return None
        self.runtime.signal(pod["metadata"]["uid"], sig)
        job = inv.job_of(pod)
        return self._fault(kind, job, f"{sig.name} {pod['metadata']['name']}", [job])

    def fault_rank_kill(self) -> Fault | None:
        return self._signal_rank("rank_kill", signal.SIGKILL)

    def fault_rank_stop(self) -> Fault | None:
        # A hung rank: its peers time out in their next collective and exit 134.
        return self._signal_rank("rank_stop", signal.SIGSTOP)

    def fault_pod_delete(self) -> Fault | None:
        pod = self._pick_pod()
        if pod is None:
            return None
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(pod["metadata"]["name"], self.ns)
        job = inv.job_of(pod)
        return self._fault("pod_delete", job, f"deleted {pod['metadata']['name']}", [job])

    def fault_node_remove(self) -> Fault | None:
        pods = self.running_pods()
        nodes = sorted({p["spec"].get("nodeName") for p in pods} & set(self.agent.nodes))
        if not nodes:
            return None
        node = self.rng.choice(nodes)
        # Every pod bound to it goes, started or not (the pod garbage collector's part).
        # A lost machine: its processes die with it, then the Node and its pods go.
        self.agent.delete_node(node)
        bound = self.core.list_namespaced_pod(self.ns, field_selector=f"spec.nodeName={node}")
        mine = _sanitize(self.cp.api, bound.items, "Pod")
        for p in mine:
            self.runtime.signal(p["metadata"]["uid"], signal.SIGKILL)
        for p in mine:
            with contextlib.suppress(client.ApiException):
                self.core.delete_namespaced_pod(
                    p["metadata"]["name"],
                    self.ns,
                    body=client.V1DeleteOptions(grace_period_seconds=0),
                )
        self.pending.append((self.now() + 5, "node added", lambda: self.agent.add_node(npus=CHIPS)))
        jobs = sorted({inv.job_of(p) for p in mine})
        return self._fault("node_remove", node, f"{len(mine)} pods of {jobs}", jobs)

    def fault_operator_kill(self) -> Fault | None:
        restarting = [inv._name(j) for j in self.active() if inv.phase(j) == "Restarting"]
        jobs = [inv._name(j) for j in self.active()]
        fault = self._fault(
            "operator_kill",
            "*",
            "SIGKILL, restarted" + (f" while {restarting} restart" if restarting else ""),
            jobs,
        )
        self.operator.stop(kill=True)
        time.sleep(self.rng.uniform(0, 3))
        self.operator.start()
        return fault

    def fault_apiserver_restart(self) -> Fault | None:
        fault = self._fault("apiserver_restart", "*", "", [inv._name(j) for j in self.active()])
        took = restart_apiserver(self.cp, down_s=self.rng.uniform(0, 3))
        self.monitor.unavailable(took)
        fault.detail = f"SIGKILL, ready again after {took:.1f}s"
        return fault

    def fault_suspend_flip(self) -> Fault | None:
        jobs = [inv._name(j) for j in self.active() if inv.phase(j) != "Suspended"]
        if not jobs:
            return None
        job = self.rng.choice(jobs)
        self.jobs.patch_spec(job, {"runPolicy": {"suspend": True}})
        after = self.rng.uniform(3, 15)

        def resume() -> None:
            with contextlib.suppress(client.ApiException):
                self.jobs.patch_spec(job, {"runPolicy": {"suspend": False}})
                self.note(job, "resumed")

        self.pending.append((self.now() + after, f"resume {job}", resume))
        return self._fault("suspend_flip", job, f"suspended for {after:.1f}s", [job])

    def fault_spec_edit(self) -> Fault | None:
        jobs = [inv._name(j) for j in self.active()]
        ended = [n for n in self.ended if n not in self.deleted.values()]
        if ended and (not jobs or self.rng.random() < 0.25):
            # After the fact: a finished job keeps how it ended (terminal_phase_is_final).
            job = self.rng.choice(ended)
            with contextlib.suppress(client.ApiException):
                self.jobs.patch_spec(job, {"training": {"batchSize": self.world[job] * 8 + 1}})
            return self._fault("spec_edit", job, f"invalid batchSize after {self.ended[job]}", [])
        if not jobs:
            return None
        job = self.rng.choice(jobs)
        if self.rng.random() < 0.5:
            # The CRD schema refuses it: the API server must answer 422 and change nothing.
            try:
                self.jobs.patch_spec(job, {"runPolicy": {"backoffLimit": -1}})
            except client.ApiException as e:
                detail = f"backoffLimit -1: API server answered {e.status}"
                if e.status != 422:
                    self.monitor.violations.append(
                        inv.Violation("spec_edit_refused", job, self.now(), detail)
                    )
            else:
                detail = "backoffLimit -1 accepted"
                self.monitor.violations.append(
                    inv.Violation("spec_edit_refused", job, self.now(), detail)
                )
            return self._fault("spec_edit", job, detail, [job])
        # The schema cannot say it (the batch must divide over the ranks): the operator fails
        # the job InvalidSpec naming the field.
        batch = self.world[job] * 8 + 1
        self.jobs.patch_spec(job, {"training": {"batchSize": batch}})
        self.invalid_edits[job] = self.now()
        return self._fault("spec_edit", job, f"training.batchSize {batch}", [job])

    invalid_edits: dict[str, float]

    def fault_configmap_edit(self) -> Fault | None:
        npu = [inv._name(j) for j in self.active() if inv.phase(j) == "Running"]
        if not npu:
            return None
        job = self.rng.choice(npu)
        name = f"{job}-ranktable"
        try:
            if self.rng.random() < 0.5:
                self.core.delete_namespaced_config_map(name, self.ns)
                detail = "deleted the rank-table ConfigMap"
            else:
                initializing = ranktable.dump(ranktable.initializing_table())
                self.core.patch_namespaced_config_map(
                    name, self.ns, {"data": {ranktable.FILE_KEY: initializing}}
                )
                detail = "set its table back to initializing"
        except client.ApiException as e:
            detail = f"edit failed: {e.status}"
        return self._fault("configmap_edit", job, detail, [job])

    # -- observation -----------------------------------------------------------------------

    def processes(self) -> list[inv.RankProcess]:
        out = []
        for uid, pid in self.runtime.pids().items():
            if uid in self.started_pods:
                job, rank, attempt = self.started_pods[uid]
                out.append(inv.RankProcess(job, rank, attempt, uid, pid))
        return out

    def poll(self, final: bool = False) -> None:
        api = self.cp.api
        try:
            jobs = self.jobs.custom.list_namespaced_custom_object(
                crd.GROUP, crd.VERSION, self.ns, crd.PLURAL, _request_timeout=10
            )["items"]
            pods = _sanitize(
                api, self.core.list_namespaced_pod(self.ns, _request_timeout=10).items, "Pod"
            )
            cms = _sanitize(
                api,
                self.core.list_namespaced_config_map(self.ns, _request_timeout=10).items,
                "ConfigMap",
            )
            svcs = _sanitize(
                api,
                self.core.list_namespaced_service(self.ns, _request_timeout=10).items,
                "Service",
            )
        except Exception as exc:  # the API server is restarting
            self.log(f"[{self.now():7.1f}s] poll: API not answering ({type(exc).__name__})")
            self.api_down_since = self.api_down_since or self.now()
            return
        if self.api_down_since is not None:
            self.monitor.unavailable(self.now() - self.api_down_since)
            self.api_down_since = None
        procs = self.processes()
        now = self.now()
        self.jobs_seen, self.pods_seen = jobs, pods
        for p in pods:
            attempt = p["metadata"].get("labels", {}).get(render.RESTART_LABEL)
            if attempt is not None:
                self.pods_of_attempt[(inv.job_of(p), int(attempt))].add(p["metadata"]["uid"])
        for uid, (job, _, attempt) in list(self.started_pods.items()):
            self.pods_of_attempt[(job, attempt)].add(uid)
        findings: list[inv.Finding] = []
        findings += inv.one_live_pod_per_rank(pods)
        findings += inv.one_live_process_per_rank(procs)
        findings += inv.no_pods_while_suspended(jobs, pods, procs)
        findings += inv.cleanup_after_finish(jobs, pods)
        findings += inv.no_orphans_after_delete(self.deleted, pods + cms + svcs)
        owners = {uid for child in pods + cms + svcs for uid in inv.owner_uids(child)}
        for uid in set(self.deleted) - owners - set(self.gc_seconds):
            self.gc_seconds[uid] = now - self.deleted_at[uid]
        findings += inv.restarts_within_backoff_limit(jobs)
        findings += inv.terminal_phase_is_final(jobs, self.ended)
        cm_by_name = {inv._name(c): c for c in cms}
        for job in jobs:
            name = inv._name(job)
            key = inv.progress_key(job)
            if self.last_key.get(name) != key:
                self.record_transition(name, self.last_key.get(name), key)
                self.last_key[name] = key
                self.last_change[name] = now
            findings += inv.not_stalled(job, now - self.last_change[name], STALL_S, RUNNING_S)
            findings += inv.status_counts_match_pods(job, pods, 1)
            findings += inv.rank_table_follows_pods(job, cm_by_name.get(f"{name}-ranktable"))
            cm = cm_by_name.get(f"{name}-ranktable")
            if cm is not None:
                data = cm.get("data") or {}
                attempt = data.get(ranktable.ATTEMPT_KEY)
                try:
                    table = ranktable.parse(data.get(ranktable.FILE_KEY, ""))
                except ranktable.RankTableError:
                    table = None
                if attempt is not None and attempt.isdigit():
                    findings += inv.table_of_own_attempt(
                        name,
                        int(attempt),
                        table,
                        self.world.get(name, 0),
                        self.pods_of_attempt[(name, int(attempt))],
                        f"ConfigMap version {data.get(ranktable.VERSION_KEY)}",
                    )
            phase = inv.phase(job)
            if phase in inv.TERMINAL and name not in self.ended:
                self.ended[name] = phase
                self.job_ended(job)
            findings += self.invalid_edit_findings(job, now)
        findings += self.report_findings()
        checks = {
            "one_live_pod_per_rank", "one_live_process_per_rank", "no_pods_while_suspended",
            "cleanup_after_finish", "no_orphans_after_delete", "restarts_within_backoff_limit",
            "terminal_phase_is_final", "not_stalled", "status_counts_match_pods",
            "rank_table_follows_pods", "rank_table_of_own_attempt", "invalid_spec_fails_job",
        }  # fmt: skip
        if self.operator.proc is not None:
            try:
                samples = _metric_samples(self.operator.metrics())
                findings += inv.metrics_match_statuses(self.ns, jobs, samples)
                checks.add("metrics_match_statuses")
            except OSError:
                pass
        for v in self.monitor.observe(findings, now, checks):
            self.log(f"[{now:7.1f}s] VIOLATION {v.check} {v.job}: {v.detail}")
        self.track_recovery(jobs, now)

    def invalid_edit_findings(self, job: dict[str, Any], now: float) -> list[inv.Finding]:
        name = inv._name(job)
        since = self.invalid_edits.get(name)
        if since is None or now - since < 30:
            return []
        failed = next(
            (c for c in job.get("status", {}).get("conditions", []) if c["type"] == "Failed"), {}
        )
        ok = failed.get("status") == "True" and (
            failed.get("reason") != "InvalidSpec"
            or str(failed.get("message", "")).startswith("spec.training.batchSize")
        )
        if ok or (inv.phase(job) == "Succeeded" and self.ended.get(name) == "Succeeded"):
            return []
        return [inv.Finding("invalid_spec_fails_job", name, f"not Failed InvalidSpec: {failed}")]

    def report_findings(self) -> list[inv.Finding]:
        """What each rank accepted as its rank table (its report) was its attempt's."""
        out = []
        for path in sorted((self.work / "reports").glob("*.json")):
            if path.name in self.checked_reports:
                continue
            r = json.loads(path.read_text())
            job, attempt = r["job"], r["attempt"]
            where = f"rank {r['rank']} (pod {r['pod_uid'][:8]}, attempt {attempt})"
            found = []
            if r["table_attempt"] != str(attempt):
                found.append(
                    inv.Finding(
                        "rank_table_of_own_attempt",
                        job,
                        f"{where} accepted a table of attempt {r['table_attempt']}",
                    )
                )
            if r["ranks"] != r["world"]:
                found.append(
                    inv.Finding(
                        "rank_table_of_own_attempt",
                        job,
                        f"{where} accepted a table of {r['ranks']} of {r['world']} ranks",
                    )
                )
            foreign = [s for s in r["server_ids"] if s not in self.pods_of_attempt[(job, attempt)]]
            if foreign:
                found.append(
                    inv.Finding(
                        "rank_table_of_own_attempt",
                        job,
                        f"{where} accepted a table listing pods not of its attempt: {foreign}",
                    )
                )
            if not found:
                self.checked_reports.add(path.name)
            out += found
        return out

    def record_transition(
        self, job: str, old: tuple[Any, ...] | None, new: tuple[Any, ...]
    ) -> None:
        phase_old = old[0] if old else None
        if phase_old != new[0] or (old and old[1] != new[1]):
            self.note(job, f"phase {phase_old} -> {new[0]}, restarts {new[1]}")
        old_conds = {c[0]: c for c in (old[3] if old else ())}
        for c in new[3]:
            if old_conds.get(c[0]) != c:
                self.note(job, f"condition {c[0]}={c[1]} ({c[2]})")

    def job_ended(self, job: dict[str, Any]) -> None:
        name = inv._name(job)
        cond = next(
            (c for c in job["status"].get("conditions", []) if c["type"] == inv.phase(job)), {}
        )
        self.outcomes[f"{inv.phase(job)}/{cond.get('reason')}"] += 1
        self.log(
            f"[{self.now():7.1f}s] {name} {inv.phase(job)} ({cond.get('reason')}: "
            f"{cond.get('message')}), restarts {job['status'].get('restarts')}"
        )

    def track_recovery(self, jobs: list[dict[str, Any]], now: float) -> None:
        by_name = {inv._name(j): j for j in jobs}
        for f in self.faults:
            for name, before in f.jobs.items():
                if name in f.recovered:
                    continue
                job = by_name.get(name)
                if job is None:
                    f.recovered[name] = (now - f.time, 0, "deleted")
                    continue
                s = job.get("status") or {}
                restarts = int(s.get("restarts") or 0)
                phase = inv.phase(job)
                ranks = s.get("ranks") or {}
                if phase != "Running" or restarts > before:
                    f.disrupted.add(name)
                if phase in inv.TERMINAL:
                    f.recovered[name] = (now - f.time, restarts - before, phase)
                elif (
                    name in f.disrupted
                    and phase == "Running"
                    and (ranks.get("running") == ranks.get("total"))
                ):
                    f.recovered[name] = (now - f.time, restarts - before, "Running")
                elif name not in f.disrupted and now - f.time > 30:
                    f.recovered[name] = (now - f.time, 0, "undisturbed")

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> SoakResult:
        self.invalid_edits = {}
        next_fault = self.rng.expovariate(1 / self.fault_interval) + 5
        last_poll = -1.0
        while self.now() < self.seconds:
            now = self.now()
            for due, what, action in [p for p in self.pending if p[0] <= now]:
                self.pending.remove((due, what, action))
                try:
                    action()
                except Exception as exc:  # the API server may be restarting: try again
                    self.log(f"[{now:7.1f}s] {what} failed ({exc}); again in 2s")
                    self.pending.append((now + 2, what, action))
            if now - last_poll >= 1.0:
                self.poll()
                last_poll = now
                self.keep_jobs_going()
            if now >= next_fault:
                try:
                    self.inject()
                except Exception as exc:
                    self.log(f"[{now:7.1f}s] fault injection failed: {exc!r}")
                next_fault = self.now() + self.rng.expovariate(1 / self.fault_interval)
            time.sleep(0.2)
        self.settle()
        return SoakResult(
            self.seed,
            self.seconds,
            self.jobs_made,
            self.faults,
            self.monitor.violations,
            self.outcomes,
            self.work,
        )

    def keep_jobs_going(self) -> None:
        for job in self.jobs_seen:
            name = inv._name(job)
            # Finished jobs stay a while (their clean-up is checked), then most are deleted
            # (the garbage collector's part is checked).
            if (
                name in self.ended
                and name not in self.deleted.values()
                and self.now() - self.last_change.get(name, 0) > 30
                and self.rng.random() < 0.5
            ):
                self.delete_job(name)
        if len(self.active()) < self.max_active:
            try:
                self.new_job()
            except client.ApiException as exc:
                self.log(f"[{self.now():7.1f}s] job not created: {exc.status}")

    def settle(self) -> None:
        """No more faults or jobs: resume, let the jobs end, check, delete all, check."""
        self.log(f"[{self.now():7.1f}s] faults stop; settling")
        for _, _, action in sorted(self.pending, key=lambda p: p[0]):
            with contextlib.suppress(Exception):
                action()
        self.pending.clear()
        deadline = self.now() + self.settle_s
        while self.now() < deadline:
            self.poll()
            if not self.active():
                break
            time.sleep(1.0)
        self.poll(final=True)
        now = self.now()
        findings = []
        for job in self.jobs_seen:
            findings += inv.ended_with_reason(job)
            findings += self.restart_events(job)
        for v in self.monitor.observe(
            findings, now, {"ended_with_reason", "restart_reasons_name_the_rank"}
        ):
            self.log(f"[{now:7.1f}s] VIOLATION {v.check} {v.job}: {v.detail}")
        for job in self.jobs_seen:
            if inv._name(job) not in self.deleted.values():
                self.delete_job(inv._name(job))
        # The garbage collector's turn: every child of a deleted job must go.
        deadline = self.now() + inv.GRACE_S["no_orphans_after_delete"] + 5
        while self.now() < deadline:
            self.poll()
            if set(self.deleted) <= set(self.gc_seconds):
                break
            time.sleep(1.0)

    def restart_events(self, job: dict[str, Any]) -> list[inv.Finding]:
        name = inv._name(job)
        try:
            events = [
                self.cp.api.sanitize_for_serialization(e)
                for e in self.core.list_namespaced_event(
                    self.ns, field_selector=f"involvedObject.name={name}"
                ).items
            ]
        except client.ApiException:
            return []
        return inv.restart_reasons_name_the_rank(job, events)

    def report(self, result: SoakResult) -> list[str]:
        lines = [result.summary()]
        for v in result.violations:
            lines.append(f"  {v.check} job {v.job} at {v.time:.1f}s: {v.detail}")
            around = [
                f"    {t:7.1f}s {job}: {text}"
                for t, job, text in self.timeline
                if (abs(t - v.time) <= 30 and job in (v.job, "*"))
                or (abs(t - v.time) <= 30 and "FAULT" in text)
            ]
            lines += around[-25:]
        return lines


def run_soak(
    seconds: float, seed: int, work_dir: Path, **options: Any
) -> tuple[SoakResult, list[str]]:
    """Run the soak for `seconds` (then let the jobs settle); the result and the report lines
    (the summary first). The cluster's state, the pods' and the operator's logs stay in
    `work_dir`."""
    soak = Soak(seconds, seed, work_dir, **options)  # options: Soak's keyword arguments
    try:
        soak.start()
        result = soak.run()
    finally:
        with contextlib.suppress(Exception):
            soak.close()
    lines = soak.report(result)
    (work_dir / "result.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "seconds": seconds,
                "jobs": result.jobs,
                "faults": len(result.faults),
                "violations": [v.__dict__ for v in result.violations],
                "outcomes": dict(result.outcomes),
                "fault_classes": result.fault_table(),
                "gc_seconds": sorted(round(v, 1) for v in soak.gc_seconds.values()),
            },
            indent=2,
        )
    )
    with (work_dir / "timeline.txt").open("w") as f:
        for t, job, text in soak.timeline:
            f.write(f"{t:8.1f} {job}: {text}\n")
    return result, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="fault-injection soak of the operator (docs/reliability.md)"
    )
    p.add_argument("--seconds", type=float, default=1800, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-active", type=int, default=4, help="jobs running at once")
    p.add_argument("--fault-interval", type=float, default=4.0, help="mean seconds between faults")
    p.add_argument(
        "--work-dir", type=Path, help="state and logs (default: a new temporary directory)"
    )
    args = p.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="shufflenet-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    # The simulated kubelet's and the client's complaints while the API server restarts are
    # expected: to a file, not the summary.
    logging.basicConfig(level=logging.WARNING, filename=work / "driver.log")
    result, lines = run_soak(
        args.seconds,
        args.seed,
        work,
        max_active=args.max_active,
        fault_interval=args.fault_interval,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print("\n".join(lines))
    print(json.dumps(result.fault_table()), file=sys.stderr)
    print(f"soak: logs and state in {work}", file=sys.stderr)
    if not result.violations and args.work_dir is None:
        shutil.rmtree(work / "containers", ignore_errors=True)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
