"""Benchmark: failover of swarmkeeper across three managers.

On a fresh three-manager swarm of private engines (``scripts/engine-node.sh
cluster``, each engine in its own network namespace; the shared engine is
never touched) with one ``swarmkeeper run`` per manager, each talking to its
own node's engine, this script runs --runs failovers. Each one:

1. finds the leader (the node whose own engine says ``ManagerStatus.Leader``)
   and stops its engine (SIGTERM, as a host shutting down would);
2. polls the two other engines every 50 ms until exactly one of them says it
   leads: **election** is the time from the stop command to that moment;
3. at once makes a drift through the new leader's engine (the service's
   environment changed with the Docker SDK) and polls every 20 ms for the
   spec to be corrected and for the new leader's instance to report
   ``swarmkeeper_leader 1``: **takeover** is the time from the new leader
   being observed to the drift being corrected, **leader reported** the time
   to the metric saying 1;
4. checks that no other instance wrote anything (``swarmkeeper_actions_total``
   unchanged on the old leader's and the third instance);
5. starts the stopped engine again and waits until it is back as a manager,
   every instance is ready, and exactly one reports leader (**rejoin**).

It writes a Markdown report (default ``benchmarks/results/failover.md``) and,
with ``--json PATH``, the raw samples with their median, min and max, for the
benchmark report. Everything it made is torn down at the end, also after a
failure.

Run from the repository root, as root:
    .venv/bin/python benchmarks/failover.py --json benchmarks/results/failover.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemon_process import DaemonProcess  # noqa: E402
from private_engine import (  # noqa: E402
    PrivateCluster,
    PrivateEngine,
    claims_leadership,
    node_names,
)

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "failover.md"
STACK = "fobench"
SERVICE = f"{STACK}_web"
ELECTION_TIMEOUT = 90.0
TAKEOVER_TIMEOUT = 60.0
REJOIN_TIMEOUT = 180.0
TAKEOVER_TARGET = 5.0  # seconds, from the issue
METRICS = ("election_s", "takeover_s", "drift_to_correction_s", "leader_reported_s")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait(condition: Any, *, timeout: float, what: str, interval: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def write_state(folder: Path, mode: str) -> Path:
    (folder / "stacks").mkdir(parents=True, exist_ok=True)
    (folder / "stacks" / f"{STACK}.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: swarmkeeper-test/busybox:latest\n"
        "    command: [sleep, '3600']\n"
        f"    environment: {{MODE: {mode}}}\n"
        "    deploy: {replicas: 0}\n"
    )
    return folder


def service_env(client: Any) -> list[str] | None:
    try:
        spec = client.api.inspect_service(SERVICE)["Spec"]
    except (docker.errors.APIError, OSError):
        return None
    env: list[str] = spec["TaskTemplate"]["ContainerSpec"].get("Env") or []
    return env


def make_drift(client: Any, value: str) -> float:
    """Write the drift (retried while the new leader settles); when it was accepted."""

    def attempt() -> float | None:
        try:
            client.services.get(SERVICE).update(env=[f"MODE={value}"])
        except (docker.errors.APIError, OSError):
            return None
        return time.monotonic()

    accepted: float = wait(attempt, timeout=30, what="the drift written", interval=0.05)
    return accepted


def only_leader(nodes: list[PrivateEngine]) -> PrivateEngine | None:
    """The node of ``nodes`` that says it leads, when exactly one does."""
    found = [node for node in nodes if claims_leadership(node, timeout=5)]
    return found[0] if len(found) == 1 else None


def writes(daemon: DaemonProcess) -> float:
    try:
        samples = daemon.metrics()
    except (AssertionError, OSError):
        return float("nan")
    return sum(v for (n, _), v in samples.items() if n == "swarmkeeper_actions_total")


def metric(daemon: DaemonProcess, name: str) -> float | None:
    try:
        return daemon.metric(name)
    except (AssertionError, KeyError, OSError):
        return None


def correcting_trigger(daemon: DaemonProcess, after_wall: float) -> str | None:
    """The trigger of the first pass that wrote after the wall-clock time given."""
    for record in daemon.passes():
        stamp = datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
        if stamp.timestamp() >= after_wall and record.get("writes"):
            return str(record.get("trigger"))
    return None


class Bench:
    def __init__(self, names: list[str], work: Path) -> None:
        self.cluster = PrivateCluster(names)
        self.work = work
        self.daemons: dict[str, DaemonProcess] = {}

    def up(self) -> None:
        started = time.monotonic()
        self.cluster.up()
        log(f"cluster up in {time.monotonic() - started:.1f} s")
        for index, node in enumerate(self.cluster.nodes):
            state = write_state(self.work / f"state{index}", "a")
            daemon = DaemonProcess(
                state,
                self.work / f"daemon{index}",
                env={"DOCKER_HOST": node.docker_host},
            )
            self.daemons[node.name] = daemon.start()
        for daemon in self.daemons.values():
            daemon.wait_ready()
        leader = self.leader(self.cluster.nodes)
        client = leader.client(timeout=30)
        wait(
            lambda: service_env(client) == ["MODE=a"],
            timeout=60,
            what="the service created",
            interval=0.1,
        )
        self.settled()

    def down(self) -> None:
        for daemon in self.daemons.values():
            daemon.close()
        self.cluster.down()

    def leader(self, among: list[PrivateEngine]) -> PrivateEngine:
        return self.cluster.wait_for_leader(among=among, timeout=ELECTION_TIMEOUT)

    def settled(self) -> None:
        """Every instance ready, exactly one of them reporting leader."""

        def ok() -> bool:
            for daemon in self.daemons.values():
                if not daemon.running():
                    raise RuntimeError(f"a daemon exited:\n{daemon.log_tail()}")
                if daemon.http_get("/readyz", timeout=2)[0] != 200:
                    return False
            leaders = [metric(d, "swarmkeeper_leader") for d in self.daemons.values()]
            return leaders.count(1.0) == 1 and leaders.count(0.0) == 2

        wait(ok, timeout=REJOIN_TIMEOUT, what="a settled cluster", interval=0.2)

    def failover(self, run: int) -> dict[str, Any]:
        nodes = self.cluster.nodes
        old = self.leader(nodes)
        others = [n for n in nodes if n is not old]
        before = {name: writes(d) for name, d in self.daemons.items()}

        # 1-2: stop the leader's engine; the others elect one of themselves.
        stopped_at = time.monotonic()
        old.stop(timeout=10)
        new: PrivateEngine = wait(
            lambda: only_leader(others),
            timeout=ELECTION_TIMEOUT,
            what="a new leader",
            interval=0.05,
        )
        elected_at = time.monotonic()

        # 3: a drift made right after the election, through the new leader.
        client = new.client(timeout=30)
        drift_wall = time.time()
        accepted_at = make_drift(client, f"drift{run}")
        new_daemon = self.daemons[new.name]
        corrected_at: float | None = None
        reported_at: float | None = None
        deadline = time.monotonic() + TAKEOVER_TIMEOUT
        while corrected_at is None or reported_at is None:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(
                    f"run {run}: no takeover within {TAKEOVER_TIMEOUT} s"
                )
            if corrected_at is None and service_env(client) == ["MODE=a"]:
                corrected_at = now
            if reported_at is None and metric(new_daemon, "swarmkeeper_leader") == 1:
                reported_at = now
            time.sleep(0.02)

        # 4: only the new leader's instance wrote.
        after = {name: writes(d) for name, d in self.daemons.items()}
        foreign = {
            name: after[name] - before[name]
            for name in after
            if name != new.name and after[name] != before[name]
        }

        # 5: the old leader back, as a follower.
        restart_at = time.monotonic()
        old.start()
        self.settled()
        rejoined_at = time.monotonic()
        sample = {
            "run": run,
            "old_leader": old.name,
            "new_leader": new.name,
            "election_s": round(elected_at - stopped_at, 3),
            "takeover_s": round(corrected_at - elected_at, 3),
            "drift_to_correction_s": round(corrected_at - accepted_at, 3),
            "leader_reported_s": round(max(0.0, reported_at - elected_at), 3),
            "drift_accepted_after_s": round(accepted_at - elected_at, 3),
            "correcting_trigger": correcting_trigger(new_daemon, drift_wall),
            "writes_by_others": foreign,
            "rejoin_s": round(rejoined_at - restart_at, 3),
            "old_leader_leads_again": claims_leadership(old),
        }
        log(
            f"run {run}: {old.name} -> {new.name}: election {sample['election_s']} s, "
            f"takeover {sample['takeover_s']} s, leader reported "
            f"{sample['leader_reported_s']} s, rejoin {sample['rejoin_s']} s"
        )
        return sample


def stats(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def code_under_test() -> str:
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
    ).stdout.strip()
    return f"src/ at git {head or 'unknown'}" + (
        " with uncommitted changes" if dirty else ""
    )


def engine_version(node: PrivateEngine) -> str:
    try:
        return str(node.info().get("ServerVersion", "?"))
    except (docker.errors.DockerException, OSError):
        return "?"


def render(document: dict[str, Any]) -> str:
    summary = document["summary"]
    lines = [
        "# Failover of swarmkeeper across three managers",
        "",
        f"Measured {document['measured_at']} on {document['machine']}; "
        f"code under test: {document['code']}.",
        "",
        "A three-manager swarm of private engines on one machine (each in its own "
        "network namespace), one `swarmkeeper run` per manager on its own node's "
        f"engine. {document['runs']} failovers: the leader's engine is stopped "
        "(SIGTERM); the other two engines are polled every 50 ms until exactly one "
        "says it leads; at once a drift is written through it (the service's "
        "environment), and the spec and the new instance's `swarmkeeper_leader` "
        "are polled every 20 ms. Then the old engine is started again and the "
        "cluster allowed to settle before the next run.",
        "",
        "| run | old -> new leader | election s | takeover s | leader reported s "
        "| drift accepted after s | correcting pass | writes by others | rejoin s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for s in document["samples"]:
        lines.append(
            f"| {s['run']} | {s['old_leader']} -> {s['new_leader']} | "
            f"{s['election_s']:.2f} | {s['takeover_s']:.2f} | "
            f"{s['leader_reported_s']:.2f} | {s['drift_accepted_after_s']:.2f} | "
            f"`{s['correcting_trigger']}` | {s['writes_by_others'] or 'none'} | "
            f"{s['rejoin_s']:.1f} |"
        )
    lines += [
        "",
        "| measure | median s | min s | max s |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = {
        "election_s": "election (leader stopped -> new leader observed)",
        "takeover_s": "takeover (new leader observed -> drift corrected)",
        "drift_to_correction_s": "drift accepted -> corrected",
        "leader_reported_s": "new leader observed -> its instance reports leader 1",
    }
    for key, label in names.items():
        row = summary[key]
        lines.append(
            f"| {label} | {row['median']:.2f} | {row['min']:.2f} | {row['max']:.2f} |"
        )
    worst = summary["takeover_s"]["max"]
    lines += [
        "",
        "## Target",
        "",
        f"- a drift made after the failover corrected within {TAKEOVER_TARGET:g} s "
        f"of the election: worst {worst:.2f} s, "
        + ("met" if worst <= TAKEOVER_TARGET else "not met"),
        "",
        "The election is the engine's own Raft election and cannot be tuned in "
        "this engine version. The takeover is bounded by swarmkeeper's leadership "
        "poll (every 2 s) or, sooner, by the drift's own event reaching the new "
        "leader's instance, plus one pass. The drift is written as soon as the "
        'new leader accepts writes ("drift accepted after").',
        "",
        "Raw samples: "
        + (document.get("json") or "run with `--json PATH` to keep them")
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--nodes",
        default="",
        help="three node names, comma-separated (default: random pe... names, or "
        "SWARMKEEPER_TEST_ENGINES)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--json", type=Path, default=None, dest="json_path")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("private engines need root")
    names = [n for n in args.nodes.split(",") if n] or node_names(3)
    if len(names) != 3:
        parser.error("--nodes takes three names")

    work = Path(tempfile.mkdtemp(prefix="skfailover-"))
    bench = Bench(names, work)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        bench.up()
        version = engine_version(bench.cluster.nodes[0])
        for run in range(1, args.runs + 1):
            samples.append(bench.failover(run))
    finally:
        bench.down()
        shutil.rmtree(work, ignore_errors=True)

    document: dict[str, Any] = {
        "benchmark": "failover",
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, Docker {version}",
        "code": code_under_test(),
        "runs": args.runs,
        "duration_s": round(time.monotonic() - started, 1),
        "takeover_target_s": TAKEOVER_TARGET,
        "samples": samples,
        "summary": {key: stats([s[key] for s in samples]) for key in METRICS},
    }
    if args.json_path:
        document["json"] = f"`{args.json_path.name}`"
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(document, indent=2) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(document))
    log(f"report: {args.output} ({document['duration_s']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
