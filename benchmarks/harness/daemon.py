"""Cases 4 and 5: the running daemon's drift latency, resync cost, idle cost.

The daemon runs as a real process (``tests/daemon_process.py``: JSON logs
to a file, /status and /metrics on a free loopback port), on the frozen code
under test. Everything is observed from outside: the engine through the
Docker SDK, the pass's own numbers from its ``reconcile.finished`` log lines,
memory and CPU from /proc.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import docker

from harness.machine import REPO
from harness.stats import summarize
from harness.swarm import Swarm
from harness.tools import Tools

sys.path.insert(0, str(REPO / "tests"))

from daemon_process import DaemonProcess

DRIFT_ENV = "DRIFTED_BY_BENCHMARK=1"
CORRECTION_TIMEOUT = 30.0
QUIET_RESYNC_INTERVAL = 300.0  # while drifting: only events explain a pass


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all threads."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inflict(client: Any, service_id: str, kind: str) -> None:
    """One drift through the engine API, as an operator's hand would make it."""
    for attempt in range(10):
        current = client.inspect_service(service_id)
        spec = copy.deepcopy(current["Spec"])
        if kind == "replicas":
            spec["Mode"] = {"Replicated": {"Replicas": 1}}
        else:
            container = spec["TaskTemplate"]["ContainerSpec"]
            container["Env"] = [*container.get("Env", []), DRIFT_ENV]
        try:
            client.update_service(
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
            # The daemon (or the engine) wrote in between: read and try again.
            if "out of sequence" in str(error) and attempt < 9:
                continue
            raise
        return


def is_corrected(spec: dict[str, Any], kind: str) -> bool:
    if kind == "replicas":
        return bool(spec["Mode"].get("Replicated", {}).get("Replicas") == 0)
    return DRIFT_ENV not in spec["TaskTemplate"]["ContainerSpec"].get("Env", [])


class DaemonBench:
    """One size: a daemon on the converged stack, drifts, idle, resyncs."""

    def __init__(
        self,
        swarm: Swarm,
        tools: Tools,
        *,
        state_dir: Path,
        stack: str,
        count: int,
        workdir: Path,
    ) -> None:
        self.swarm = swarm
        self.tools = tools
        self.state_dir = state_dir
        self.stack = stack
        self.count = count
        self.workdir = workdir
        self.started: list[DaemonProcess] = []

    def start(self, resync_interval: float) -> DaemonProcess:
        daemon = DaemonProcess(
            self.state_dir,
            self.workdir / f"daemon{len(self.started)}",
            env={"PYTHONPATH": self.tools.env["PYTHONPATH"]},
            resync_interval=resync_interval,
        )
        self.started.append(daemon)
        daemon.start()
        daemon.wait_ready(timeout=60)
        self._wait_converged(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.close()

    def _wait_converged(self, daemon: DaemonProcess) -> None:
        def in_sync() -> bool:
            document = daemon.status()
            if document.get("last_pass") is None:
                return False
            ours = [o for o in document["objects"] if o.get("stack") == self.stack]
            return len(ours) == self.count and all(
                o["sync"] == "in-sync" for o in document["objects"]
            )

        daemon.wait_for(in_sync, timeout=300, what="the stack in sync", interval=0.2)
        self.swarm.wait_settled(self.stack, expect_services=self.count)

    # -- case 4 ---------------------------------------------------------------

    def drift_latency(
        self, drifts: int, poll: float, rng: random.Random
    ) -> dict[str, Any]:
        """``drifts`` drifts one after the other; latency of each correction.

        Services are drawn at random without replacement. A daemon holds an
        object whose same field it corrected three times within 60 s (a
        fight), so with fewer services than drifts the daemon is restarted
        after every round of N drifts: it forgets what it corrected, and
        each measured drift is a plain correction, never a hold.
        """
        ids = {s["Spec"]["Name"]: s["ID"] for s in self.swarm.services(self.stack)}
        names = sorted(ids)
        daemon = self.start(QUIET_RESYNC_INTERVAL)
        records: list[dict[str, Any]] = []
        order: list[str] = []
        for number in range(drifts):
            if not order:
                if number:
                    daemon.close()
                    daemon = self.start(QUIET_RESYNC_INTERVAL)
                order = rng.sample(names, len(names))
            name = order.pop()
            kind = "replicas" if number % 2 == 0 else "env"
            records.append(
                self._one_drift(daemon, ids[name], kind, poll) | {"kind": kind}
            )
        latencies = [r["seconds"] for r in records if r["seconds"] is not None]
        memory = proc_memory_kib(daemon.pid)
        daemon.close()
        return {
            "drifts": len(records),
            "latency": summarize(latencies),
            "uncorrected": sum(1 for r in records if r["seconds"] is None),
            "correcting_pass_ms": summarize(
                r["pass_ms"] for r in records if r.get("pass_ms") is not None
            ),
            "by_kind": {
                kind: summarize(
                    r["seconds"]
                    for r in records
                    if r["kind"] == kind and r["seconds"] is not None
                )
                for kind in ("replicas", "env")
            },
            "daemon_restarts": len(self.started) - 1,
            "memory_kib_after": memory,
            "poll_seconds": poll,
            "records": records,
        }

    def _one_drift(
        self, daemon: DaemonProcess, service_id: str, kind: str, poll: float
    ) -> dict[str, Any]:
        passes_before = len(daemon.passes())
        inflict(self.swarm.client, service_id, kind)
        # From the engine accepting the drift to the engine holding the
        # corrected spec again, read through the SDK every ``poll`` s.
        started = time.perf_counter()
        seconds: float | None = None
        while seconds is None:
            spec = self.swarm.client.inspect_service(service_id)["Spec"]
            elapsed = time.perf_counter() - started
            if is_corrected(spec, kind):
                seconds = elapsed
            elif elapsed > CORRECTION_TIMEOUT:
                break
            else:
                time.sleep(poll)
        # The next drift waits for the echo: the pass that sees the daemon's
        # own write come back and finds nothing to do.
        with contextlib.suppress(AssertionError):  # no echo: go on all the same
            daemon.wait_for(
                lambda: _echo_seen(daemon.passes()[passes_before:]),
                timeout=20,
                what="the correction's echo",
            )
        writer = next(
            (p for p in daemon.passes()[passes_before:] if p.get("writes")), None
        )
        return {
            "seconds": seconds,
            "pass_ms": writer.get("duration_ms") if writer else None,
            "trigger": writer.get("trigger") if writer else None,
        }

    # -- case 5 ---------------------------------------------------------------

    def idle_and_resync(
        self, *, idle_seconds: float, resync_interval: float, passes: int
    ) -> dict[str, Any]:
        """CPU over a quiet stretch, then the cost of timer-only full passes."""
        daemon = self.start(resync_interval)
        resyncs = self._resync_passes(daemon, passes, resync_interval)
        memory_after_resyncs = proc_memory_kib(daemon.pid)
        daemon.close()

        daemon = self.start(QUIET_RESYNC_INTERVAL)
        self.swarm.wait_settled(self.stack, expect_services=self.count)
        cpu_before = proc_cpu_seconds(daemon.pid)
        passes_before = len(daemon.passes())
        started = time.monotonic()
        time.sleep(idle_seconds)
        elapsed = time.monotonic() - started
        cpu = proc_cpu_seconds(daemon.pid) - cpu_before
        idle = {
            "seconds": round(elapsed, 2),
            "cpu_seconds": round(cpu, 4),
            "cpu_seconds_per_minute": round(cpu * 60 / elapsed, 4),
            "passes": len(daemon.passes()) - passes_before,
            "memory_kib": proc_memory_kib(daemon.pid),
        }
        daemon.close()
        return {
            "resync": resyncs,
            "memory_kib_after_resyncs": memory_after_resyncs,
            "idle": idle,
        }

    def _resync_passes(
        self, daemon: DaemonProcess, wanted: int, interval: float
    ) -> dict[str, Any]:
        """Passes the timer alone triggered, with nothing to write."""

        def timer_passes() -> list[dict[str, Any]]:
            return [
                p
                for p in daemon.passes()
                if str(p.get("trigger")) == "resync" and not p.get("writes")
            ]

        daemon.wait_for(
            lambda: len(timer_passes()) >= wanted,
            timeout=interval * wanted * 3 + 60,
            what=f"{wanted} resync passes",
            interval=0.5,
        )
        timed = timer_passes()[:wanted]
        return {
            "interval_seconds": interval,
            "wall": summarize(float(p["duration_ms"]) / 1000 for p in timed),
            "cpu": summarize(float(p["cpu_ms"]) / 1000 for p in timed),
        }


def _echo_seen(passes: list[dict[str, Any]]) -> bool:
    """A pass wrote, and a later one found nothing to do."""
    wrote = [i for i, p in enumerate(passes) if p.get("writes")]
    return bool(wrote) and any(not p.get("writes") for p in passes[wrote[0] + 1 :])
