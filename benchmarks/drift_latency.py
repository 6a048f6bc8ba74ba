"""Benchmark: how fast a running daemon puts drift right, and what it costs idle.

For each N in --services this script:

1. writes a desired-state folder with one stack, ``stacks/drift<N>.yml``: N
   services of the local test image with ``replicas: 0`` (the engine stores
   them and schedules no task), an environment, labels and a command each,
   and ``policy.yml`` with ``prune: false`` (a safety net: nothing on the
   swarm is ever removed by the benchmark's daemon);
2. starts ``swarmkeeper run`` on it (``tests/daemon_process.py``, resync
   interval 300 s, so only the engine's events can explain a correction) and
   waits until the swarm holds the N services and the engine's follow-up
   writes have settled;
3. makes --drifts drifts, one after the other, through the Docker SDK (an
   independent client): alternately replicas 0 -> 3 and one added
   environment variable, each on a service drawn at random without
   replacement. For each it measures the time from the engine accepting the
   write (the update call returning) to the engine holding the corrected
   spec again, reading the spec every --poll-ms milliseconds, and records how
   the daemon corrected it (the trigger, duration and writes of the pass that
   did, the passes in between). The next drift starts once the daemon has
   seen its own correction come back (a pass that wrote nothing);
4. measures the daemon's resident memory (VmRSS and VmHWM from
   /proc/PID/status) and its CPU time over --idle-seconds with nothing
   happening (utime + stime from /proc/PID/stat), as CPU seconds per idle
   minute;
5. restarts the daemon with a 5 s resync interval and collects the
   ``duration_ms`` of --resync-passes ``reconcile.finished`` lines triggered
   by "resync" alone: the in-process cost of one full resync at N services;
6. writes a Markdown report and the raw numbers as JSON beside it, and
   removes everything it created, also when something failed.

The fight detector: the daemon holds an object it corrected three times
within 60 s (``reconciling.FIGHT_LIMIT``), and the service's creation counts
as one. With more drifts than services each service would be drifted again
and again, and the benchmark would measure holds, not latency; so after each
round of N drifts (every service drifted once) the daemon is restarted, which
forgets its fight history. With N >= --drifts that never happens.

The code under test is frozen at the start: src/ is copied into the
temporary folder and put first on the daemon's PYTHONPATH, so edits to src/
while the benchmark runs cannot change it halfway (``--source live`` uses
the editable install as it is).

Like ``apply_noop.py`` it must not run beside the test suite: a daemon acts
on the whole swarm. It waits (--wait-timeout) until no pytest process runs,
the swarm holds no ``swarmkeeper.managed`` object and no node carries a
``swarmkeeper.managed-labels`` record.

Run from the repository root:
    .venv/bin/python benchmarks/drift_latency.py --services 10,100 --drifts 100
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker  # the Docker SDK: an independent client that inflicts the drift

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemon_process import DaemonProcess  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "drift-latency.md"
TEST_IMAGE = "swarmkeeper-test/busybox:latest"
MANAGED = "swarmkeeper.managed"
MANAGED_NODE_LABELS = "swarmkeeper.managed-labels"
DRIFT_ENV = "DRIFT_BENCH"

TARGET_AT = 100
TARGET_MEDIAN_MS = 150.0
TARGET_P99_MS = 500.0

SETTLE_QUIET = 2.0
CORRECTION_TIMEOUT = 30.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "count": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


# ------------------------------------------------------------------ safety --


def foreign_activity(client: Any, own_prefixes: tuple[str, ...]) -> list[str]:
    """What would make a benchmark daemon act on someone else's objects."""
    found: list[str] = []
    result = subprocess.run(
        ["pgrep", "-f", "bin/pytest"], capture_output=True, text=True, check=False
    )
    if result.stdout.strip():
        found.append("a pytest process is running")
    managed = {"label": f"{MANAGED}=true"}
    names = [s["Spec"]["Name"] for s in client.api.services(filters=managed)]
    names += [n["Name"] for n in client.api.networks(filters=managed)]
    names += [c["Spec"]["Name"] for c in client.api.configs(filters=managed)]
    names += [s["Spec"]["Name"] for s in client.api.secrets(filters=managed)]
    found += [f"owned object {n}" for n in names if not n.startswith(own_prefixes)]
    found += [
        f"node {n['Description']['Hostname']} has managed labels"
        for n in client.api.nodes()
        if MANAGED_NODE_LABELS in (n["Spec"].get("Labels") or {})
    ]
    return found


def wait_for_quiet_swarm(
    client: Any, prefixes: tuple[str, ...], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    said = False
    while found := foreign_activity(client, prefixes):
        if time.monotonic() > deadline:
            raise SystemExit(
                "the swarm is busy (" + "; ".join(found[:5]) + "): a daemon acts on "
                "the whole swarm, so the benchmark does not run beside tests"
            )
        if not said:
            log("waiting for a quiet swarm: " + "; ".join(found[:3]))
            said = True
        time.sleep(2)


# ------------------------------------------------------------ the swarm --


def stack_text(count: int, image: str) -> str:
    lines = ["services:"]
    for index in range(count):
        lines += [
            f"  s{index:04d}:",
            f"    image: {image}",
            "    command: [sleep, '3600']",
            "    stop_grace_period: 1s",
            "    environment:",
            f"      ROLE: worker-{index % 7}",
            "      LOG_LEVEL: info",
            "    labels:",
            f"      bench.index: '{index}'",
            "    deploy:",
            "      replicas: 0",
            "      labels:",
            "        bench.tier: back",
        ]
    return "\n".join(lines) + "\n"


def write_state(root: Path, stack: str, count: int, image: str) -> Path:
    (root / "stacks").mkdir(parents=True, exist_ok=True)
    (root / "stacks" / f"{stack}.yml").write_text(stack_text(count, image))
    (root / "policy.yml").write_text("prune: false\n")
    return root


def stack_services(client: Any, stack: str) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = client.api.services(
        filters={"label": f"com.docker.stack.namespace={stack}"}
    )
    return services


def wait_settled(client: Any, stack: str, count: int) -> None:
    """Until the stack has ``count`` services whose versions stay put for a while."""

    def versions() -> dict[str, int]:
        return {s["ID"]: s["Version"]["Index"] for s in stack_services(client, stack)}

    deadline = time.monotonic() + 120
    current, since = versions(), time.monotonic()
    while len(current) != count or time.monotonic() - since < SETTLE_QUIET:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stack}: did not settle ({len(current)}/{count})")
        time.sleep(0.2)
        latest = versions()
        if latest != current:
            current, since = latest, time.monotonic()


def remove_stack(client: Any, stack: str) -> None:
    for service in stack_services(client, stack):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_service(service["ID"])
    deadline = time.monotonic() + 60
    while True:
        left = [n for n in client.api.networks() if n["Name"].startswith(f"{stack}_")]
        if not left:
            return
        for network in left:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_network(network["Id"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stack}: networks left: {[n['Name'] for n in left]}")
        time.sleep(0.5)


# -------------------------------------------------------------- the drift --


def inflict(client: Any, service_id: str, kind: str) -> dict[str, Any]:
    """One drift, written as the engine API takes it; returns the spec before."""
    for attempt in range(10):
        current = client.api.inspect_service(service_id)
        before: dict[str, Any] = copy.deepcopy(current["Spec"])
        spec = current["Spec"]
        if kind == "replicas":
            spec["Mode"] = {"Replicated": {"Replicas": 3}}
        else:
            container = spec["TaskTemplate"]["ContainerSpec"]
            container["Env"] = [*container.get("Env", []), f"{DRIFT_ENV}=1"]
        try:
            client.api.update_service(
                service_id,
                current["Version"]["Index"],
                task_template=spec["TaskTemplate"],
                name=spec["Name"],
                labels=spec.get("Labels"),
                mode=spec["Mode"],
                update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"),
                endpoint_spec=spec.get("EndpointSpec"),
            )
        except docker.errors.APIError as error:
            if "out of sequence" in str(error) and attempt < 9:
                continue
            raise
        return before
    raise RuntimeError("unreachable")


def corrected(spec: dict[str, Any], kind: str) -> bool:
    if kind == "replicas":
        return bool(spec["Mode"].get("Replicated", {}).get("Replicas") == 0)
    env = spec["TaskTemplate"]["ContainerSpec"].get("Env", [])
    return f"{DRIFT_ENV}=1" not in env


def poll_corrected(
    client: Any, service_id: str, kind: str, poll: float, timeout: float
) -> tuple[float | None, int]:
    """Seconds until corrected (None after ``timeout``), and the reads made."""
    started = time.perf_counter()
    reads = 0
    while True:
        spec = client.api.inspect_service(service_id)["Spec"]
        reads += 1
        now = time.perf_counter()
        if corrected(spec, kind):
            return now - started, reads
        if now - started > timeout:
            return None, reads
        time.sleep(poll)


def proc_status(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])  # kB
    return found


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------- one size --


def converge(daemon: DaemonProcess, client: Any, stack: str, count: int) -> None:
    def in_sync() -> bool:
        document = daemon.status()
        if document.get("last_pass") is None:
            return False
        ours = [o for o in document["objects"] if o["name"].startswith(stack)]
        return sum(1 for o in ours if o["kind"] == "service") == count and all(
            o["sync"] == "in-sync" for o in ours
        )

    daemon.wait_for(in_sync, timeout=300, what=f"{stack} converged", interval=0.2)
    wait_settled(client, stack, count)


def echo_seen(daemon: DaemonProcess, start: int) -> bool:
    """Since pass ``start``, a pass wrote and a later one found nothing to do."""
    later = daemon.passes()[start:]
    wrote = [i for i, p in enumerate(later) if p.get("writes")]
    return bool(wrote) and any(not p.get("writes") for p in later[wrote[0] + 1 :])


class SizeRun:
    """Everything measured at one number of services."""

    def __init__(
        self,
        client: Any,
        count: int,
        arguments: argparse.Namespace,
        folder: Path,
        env: dict[str, str],
    ) -> None:
        self.client = client
        self.count = count
        self.arguments = arguments
        self.stack = f"drift{count}"
        self.folder = folder / self.stack
        self.env = env
        self.state = write_state(self.folder / "state", self.stack, count, TEST_IMAGE)
        self.daemons: list[DaemonProcess] = []
        self.result: dict[str, Any] = {"services": count, "stack": self.stack}

    def start_daemon(self, resync: float) -> DaemonProcess:
        work = self.folder / f"daemon{len(self.daemons)}"
        daemon = DaemonProcess(self.state, work, env=self.env, resync_interval=resync)
        self.daemons.append(daemon)
        daemon.start()
        daemon.wait_ready(timeout=60)
        converge(daemon, self.client, self.stack, self.count)
        return daemon

    def run(self, rng: random.Random) -> dict[str, Any]:
        remove_stack(self.client, self.stack)
        try:
            log(f"{self.stack}: starting the daemon, converging {self.count} services")
            started = time.perf_counter()
            daemon = self.start_daemon(300)
            self.result["converge_seconds"] = round(time.perf_counter() - started, 2)
            daemon = self.drifts(daemon, rng)
            self.idle(daemon)
            daemon.stop()
            daemon.close()
            self.resync()
        finally:
            for daemon in self.daemons:
                daemon.close()
            if not self.arguments.keep:
                remove_stack(self.client, self.stack)
        return self.result

    def drifts(self, daemon: DaemonProcess, rng: random.Random) -> DaemonProcess:
        ids = {
            s["Spec"]["Name"]: s["ID"] for s in stack_services(self.client, self.stack)
        }
        names = sorted(ids)
        drifts: list[dict[str, Any]] = []
        order: list[str] = []
        for number in range(self.arguments.drifts):
            if not order:
                if number:  # a new round: a fresh daemon forgets past corrections
                    log(f"{self.stack}: round done, restarting the daemon")
                    daemon.stop()
                    daemon.close()
                    daemon = self.start_daemon(300)
                order = rng.sample(names, len(names))
            name = order.pop()
            kind = "replicas" if number % 2 == 0 else "env"
            drifts.append(self.one_drift(daemon, name, ids[name], kind))
        latencies = [d["latency_ms"] for d in drifts if d["latency_ms"] is not None]
        self.result["drifts"] = drifts
        self.result["latency_ms"] = summary(latencies)
        self.result["uncorrected"] = sum(1 for d in drifts if d["latency_ms"] is None)
        self.result["by_kind"] = {
            kind: summary(
                [
                    d["latency_ms"]
                    for d in drifts
                    if d["kind"] == kind and d["latency_ms"] is not None
                ]
            )
            for kind in ("replicas", "env")
        }
        self.result["pass_ms"] = summary(
            [d["pass_duration_ms"] for d in drifts if "pass_duration_ms" in d]
        )
        triggers: dict[str, int] = {}
        for drift in drifts:
            key = str(drift.get("pass_trigger"))
            triggers[key] = triggers.get(key, 0) + 1
        self.result["triggers"] = triggers
        self.result["restarts"] = len(self.daemons) - 1
        self.result["fights"] = sum(
            len(d.log_events("fight.detected")) for d in self.daemons
        )
        log(f"{self.stack}: latency {self.result['latency_ms']}")
        return daemon

    def one_drift(
        self, daemon: DaemonProcess, name: str, service_id: str, kind: str
    ) -> dict[str, Any]:
        before = len(daemon.passes())
        inflict(self.client, service_id, kind)
        latency, reads = poll_corrected(
            self.client,
            service_id,
            kind,
            self.arguments.poll_ms / 1000,
            CORRECTION_TIMEOUT,
        )
        record: dict[str, Any] = {
            "service": name,
            "kind": kind,
            "latency_ms": None if latency is None else round(latency * 1000, 2),
            "reads": reads,
        }
        if latency is None:
            log(f"{self.stack}: the drift of {name} was not corrected in time")
        # How it was corrected; and the next drift waits for the echo (the
        # pass that sees the daemon's own write come back and does nothing).
        try:
            daemon.wait_for(
                lambda: echo_seen(daemon, before),
                timeout=10,
                what="the correction's echo",
            )
        except AssertionError as error:
            record["note"] = str(error).splitlines()[0]
        later = daemon.passes()[before:]
        writer = next((p for p in later if p.get("writes")), None)
        if writer is not None:
            record["pass_trigger"] = writer.get("trigger")
            record["pass_duration_ms"] = writer.get("duration_ms")
            record["pass_writes"] = writer.get("writes")
            record["passes_before_fix"] = later.index(writer)
        return record

    def idle(self, daemon: DaemonProcess) -> None:
        """Memory, and CPU time over a stretch with nothing happening."""
        wait_settled(self.client, self.stack, self.count)
        self.result["memory_kb"] = proc_status(daemon.pid)
        cpu_before = cpu_seconds(daemon.pid)
        passes_before = len(daemon.passes())
        log(f"{self.stack}: idle for {self.arguments.idle_seconds:g} s")
        started = time.monotonic()
        time.sleep(self.arguments.idle_seconds)
        idle = time.monotonic() - started
        cpu = cpu_seconds(daemon.pid) - cpu_before
        self.result["memory_after_idle_kb"] = proc_status(daemon.pid)
        self.result["idle"] = {
            "seconds": round(idle, 2),
            "cpu_seconds": round(cpu, 4),
            "cpu_seconds_per_minute": round(cpu * 60 / idle, 4),
            "passes": len(daemon.passes()) - passes_before,
        }

    def resync(self) -> None:
        """The in-process time of full resyncs: passes the timer alone triggered."""
        wanted = self.arguments.resync_passes
        log(f"{self.stack}: resync every 5 s, {wanted} passes")
        daemon = self.start_daemon(5)

        def timer_passes() -> list[dict[str, Any]]:
            return [p for p in daemon.passes() if str(p.get("trigger")) == "resync"]

        daemon.wait_for(
            lambda: len(timer_passes()) >= wanted,
            timeout=5 * wanted + 30,
            what="resync passes",
            interval=0.5,
        )
        timed = timer_passes()[:wanted]
        self.result["resync_ms"] = summary([float(p["duration_ms"]) for p in timed])
        self.result["resync_writes"] = sum(int(p.get("writes") or 0) for p in timed)
        daemon.stop()


# ---------------------------------------------------------------- report --


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(document: dict[str, Any]) -> str:
    lines = [
        "# Drift correction latency of `swarmkeeper run`",
        "",
        f"Measured {document['finished_at']} on {document['machine']}; "
        f"code under test: {document['source']}.",
        "",
        *(
            [
                "**The swarm was busy when this run started** ("
                + "; ".join(document["busy_at_start"][:3])
                + "): other work shared the engine and the CPUs.",
                "",
            ]
            if document.get("busy_at_start")
            else []
        ),
        "Each drift is one write through the Docker SDK to a service of a "
        "converged stack (replicas 0 -> 3, or one added environment variable, "
        "alternately, on services drawn at random without replacement); latency "
        "is from the engine accepting the write to the engine holding the "
        f"corrected spec again, read every {document['poll_ms']:g} ms through "
        "the SDK. The daemon's resync interval is 300 s: events alone drive it.",
        "",
        "| services | drifts | median ms | p90 ms | p99 ms | max ms | "
        "uncorrected | daemon restarts | fights |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in document["sizes"]:
        lat = size.get("latency_ms") or {}
        lines.append(
            f"| {size['services']} | {len(size.get('drifts', []))} | "
            f"{fmt(lat.get('median'))} | {fmt(lat.get('p90'))} | "
            f"{fmt(lat.get('p99'))} | {fmt(lat.get('max'))} | "
            f"{size.get('uncorrected', 'n/a')} | {size.get('restarts', 0)} | "
            f"{size.get('fights', 0)} |"
        )
    lines += ["", "## Targets", ""]
    target = next((s for s in document["sizes"] if s["services"] == TARGET_AT), None)
    if target and target.get("latency_ms"):
        lat = target["latency_ms"]
        lines += [
            f"- median under {TARGET_MEDIAN_MS:g} ms at {TARGET_AT} services: "
            f"{fmt(lat['median'])} ms, {verdict(lat['median'] < TARGET_MEDIAN_MS)}",
            f"- p99 under {TARGET_P99_MS:g} ms at {TARGET_AT} services: "
            f"{fmt(lat['p99'])} ms, {verdict(lat['p99'] < TARGET_P99_MS)}",
        ]
    else:
        lines.append(f"- not measured at {TARGET_AT} services in this run")

    lines += [
        "",
        "## How the drifts were corrected",
        "",
        "| services | kind | median ms | p99 ms | correcting pass: median ms "
        "(in-process) | triggers |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for size in document["sizes"]:
        for kind, lat in size.get("by_kind", {}).items():
            counted: dict[str, int] = {}
            for drift in size.get("drifts", []):
                if drift["kind"] == kind:
                    key = str(drift.get("pass_trigger"))
                    counted[key] = counted.get(key, 0) + 1
            triggers = ", ".join(f"`{k}` x{v}" for k, v in sorted(counted.items()))
            pass_ms = summary(
                [
                    float(d["pass_duration_ms"])
                    for d in size.get("drifts", [])
                    if d["kind"] == kind and "pass_duration_ms" in d
                ]
            )
            lines.append(
                f"| {size['services']} | {kind} | {fmt(lat.get('median'))} | "
                f"{fmt(lat.get('p99'))} | {fmt(pass_ms.get('median'))} | {triggers} |"
            )
    lines += [
        "",
        "The correcting pass's own time (`reconcile.finished` `duration_ms`: "
        "read the live state, plan, write) is most of the latency; the rest is "
        "the event reaching the daemon, the 20 ms coalescing pause, and the "
        "poll interval.",
        "",
        "## Cost at rest",
        "",
        "| services | VmRSS MiB | VmHWM MiB | CPU s per idle minute | passes while "
        "idle | full resync median ms | max ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in document["sizes"]:
        memory = size.get("memory_kb", {})
        idle = size.get("idle", {})
        resync = size.get("resync_ms") or {}
        lines.append(
            f"| {size['services']} | {fmt(memory.get('VmRSS', 0) / 1024)} | "
            f"{fmt(memory.get('VmHWM', 0) / 1024)} | "
            f"{fmt(idle.get('cpu_seconds_per_minute'), 3)} | {idle.get('passes')} | "
            f"{fmt(resync.get('median'))} | {fmt(resync.get('max'))} |"
        )
    lines += [
        "",
        "Memory is read from /proc/PID/status after the drifts; CPU is utime + "
        f"stime from /proc/PID/stat over {document['idle_seconds']:g} s with "
        "nothing happening (the loop's 1 s heartbeat and the 5 s leadership "
        "poll run). A full resync is a pass triggered by the timer alone "
        "(resync interval 5 s), with nothing to write: its `duration_ms` from "
        "the log.",
        "",
        "Raw numbers: the JSON file beside this one.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------- main --


def freeze_source(mode: str, folder: Path) -> tuple[dict[str, str], str]:
    """The daemon's environment and a description of the code it runs."""
    if mode != "worktree":
        return {}, "the editable install (src/ as it was at each moment)"
    shutil.copytree(REPO / "src", folder / "src")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    source = f"src/ at git {head}" + (
        f" with uncommitted changes to {', '.join(changed)}" if changed else ""
    )
    return {"PYTHONPATH": str(folder / "src")}, source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="100", help="sizes, e.g. 10,100")
    parser.add_argument("--drifts", type=int, default=100)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--resync-passes", type=int, default=6)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--source", choices=("worktree", "live"), default="worktree")
    parser.add_argument("--wait-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="leave the stacks")
    parser.add_argument("--cleanup-only", action="store_true")
    parser.add_argument(
        "--ignore-busy",
        action="store_true",
        help="run even when the swarm is not quiet (the report says so)",
    )
    arguments = parser.parse_args()
    sizes = [int(n) for n in arguments.services.split(",") if n]

    client = docker.from_env(timeout=120)
    prefixes = tuple(f"drift{n}" for n in sizes)
    if arguments.cleanup_only:
        for n in sizes:
            remove_stack(client, f"drift{n}")
        return 0
    client.images.get(TEST_IMAGE)  # fails loudly when the test image is missing
    busy = foreign_activity(client, prefixes)
    if not arguments.ignore_busy:
        wait_for_quiet_swarm(client, prefixes, arguments.wait_timeout)
        busy = []

    folder = Path(tempfile.mkdtemp(prefix="drift-latency-"))
    env, source = freeze_source(arguments.source, folder)
    seed = arguments.seed if arguments.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    document: dict[str, Any] = {
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, Docker "
        f"{client.version().get('Version')}",
        "source": source,
        "seed": seed,
        "poll_ms": arguments.poll_ms,
        "idle_seconds": arguments.idle_seconds,
        "sizes": [],
        "busy_at_start": busy,
    }
    status = 0
    try:
        for count in sizes:
            try:
                run = SizeRun(client, count, arguments, folder, env)
                document["sizes"].append(run.run(rng))
            except Exception:
                traceback.print_exc()
                status = 1
                document["sizes"].append({"services": count, "error": "see log"})
    finally:
        if not arguments.keep:
            shutil.rmtree(folder, ignore_errors=True)
    document["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(report(document))
    arguments.output.with_suffix(".json").write_text(json.dumps(document, indent=1))
    log(f"wrote {arguments.output} and its JSON")
    return status


if __name__ == "__main__":
    sys.exit(main())
