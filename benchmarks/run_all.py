#!/usr/bin/env python3
"""``make bench``: swarmkeeper against ``docker stack deploy``, every case.

Runs the cases of issue 10 against the local swarm (``DOCKER_HOST``, or the
default socket) at each size and writes ``docs/benchmarks.md``, the raw
numbers in ``benchmarks/results/bench.json`` and the profile summary in
``benchmarks/results/profile.md``. See benchmarks/README.md for the method.

It refuses a swarm that holds objects it did not make (``--allow-foreign``
overrides) and removes everything it made, also when a case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.daemon import DaemonBench
from harness.machine import REPO, describe_machine, describe_versions
from harness.profiling import profile_apply
from harness.report import render_profile, render_report
from harness.stats import summarize
from harness.swarm import Swarm, SwarmShared, changed
from harness.tools import PYTHON, SWARMKEEPER, Run, Tools
from harness.workload import (
    changed_service_name,
    compose_text,
    write_state_dir,
)

SK_PORTS, CLI_PORTS = 20000, 30000  # published ports: the two stacks never share one


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stack_names(size: int) -> tuple[str, str]:
    return f"skb{size}", f"skc{size}"


class SizeBench:
    """Cases 1 to 5 at one size; each cold deploy on a swarm without the other."""

    def __init__(
        self,
        size: int,
        *,
        swarm: Swarm,
        tools: Tools,
        workdir: Path,
        arguments: argparse.Namespace,
    ) -> None:
        self.size = size
        self.swarm = swarm
        self.tools = tools
        self.arguments = arguments
        self.stack, self.cli_stack = stack_names(size)
        self.state_dir = workdir / f"state-{size}"
        self.compose = write_state_dir(
            self.state_dir, self.stack, compose_text(size, published_from=SK_PORTS)
        )
        self.cli_compose = write_state_dir(
            workdir / f"cli-{size}",
            self.cli_stack,
            compose_text(size, published_from=CLI_PORTS),
        )
        self.workdir = workdir
        self.result: dict[str, Any] = {
            "services": size,
            "compose_kib": round(self.compose.stat().st_size / 1024, 1),
        }

    # -- the two tools, one run each -------------------------------------------

    def sk_run(self) -> tuple[Run, dict[str, int]]:
        before = self.swarm.versions(self.stack)
        run = self.tools.apply(self.state_dir)
        after = self.swarm.versions(self.stack)
        if run.returncode != 0:
            raise RuntimeError(
                f"swarmkeeper apply exited {run.returncode}: "
                f"{run.stdout[-1500:]}{run.stderr[-1500:]}"
            )
        return run, changed(before, after)

    def cli_run(self) -> tuple[Run, dict[str, int]]:
        before = self.swarm.versions(self.cli_stack)
        run = self.tools.deploy(self.cli_compose, self.cli_stack).check(
            "docker stack deploy"
        )
        after = self.swarm.versions(self.cli_stack)
        return run, changed(before, after)

    def measure(self, tool: str, runs: int, *, change: bool) -> dict[str, Any]:
        """Cases 2 (``change`` False) and 3: ``runs`` runs of one tool.

        Case 3 rewrites the file with a new value of one environment
        variable of one service before each run, so each run has exactly one
        service to change.
        """
        stack = self.stack if tool == "swarmkeeper" else self.cli_stack
        records = []
        for number in range(runs):
            if change:
                self._set_release(tool, number + 1 + (runs if tool == "cli" else 0))
            run, writes = self.sk_run() if tool == "swarmkeeper" else self.cli_run()
            records.append(run.brief() | {"writes": writes})
            self.swarm.wait_settled(stack, expect_services=self.size)
            log(
                f"  {tool} {'one-changed' if change else 'no-op'} "
                f"{run.seconds:.3f} s, {writes['total']} writes"
            )
        return {
            "seconds": summarize(r["seconds"] for r in records),
            "writes": [r["writes"]["total"] for r in records],
            "services_written": [r["writes"]["service"] for r in records],
            "runs": records,
        }

    def _set_release(self, tool: str, release: int) -> None:
        if tool == "swarmkeeper":
            text = compose_text(self.size, published_from=SK_PORTS, release=release)
            self.compose.write_text(text)
        else:
            text = compose_text(self.size, published_from=CLI_PORTS, release=release)
            self.cli_compose.write_text(text)

    def cold(self, tool: str) -> dict[str, Any]:
        """Case 1: a deploy on a swarm without the stack; the engine left to settle."""
        stack = self.stack if tool == "swarmkeeper" else self.cli_stack
        if self.swarm.versions(stack):
            raise RuntimeError(f"{stack} exists before its cold deploy")
        run, writes = self.sk_run() if tool == "swarmkeeper" else self.cli_run()
        settle = self.swarm.wait_settled(stack, expect_services=self.size)
        log(f"  {tool} cold {run.seconds:.3f} s, {writes['total']} writes")
        return run.brief() | {"writes": writes, "settled_after": round(settle, 2)}

    def remove(self, stack: str) -> None:
        seconds = self.swarm.remove_stack(stack)
        self.result.setdefault("removal_seconds", []).append(round(seconds, 2))

    # -- the cases in order ------------------------------------------------------

    def run(self, *, profile: bool, rng: random.Random) -> dict[str, Any]:
        a = self.arguments
        log(f"{self.size} services: case 1, {a.cold_runs} cold deploys per tool")
        cold: dict[str, list[dict[str, Any]]] = {"swarmkeeper": [], "cli": []}
        for _ in range(a.cold_runs - 1):
            cold["swarmkeeper"].append(self.cold("swarmkeeper"))
            self.remove(self.stack)
            cold["cli"].append(self.cold("cli"))
            self.remove(self.cli_stack)

        cold["cli"].append(self.cold("cli"))
        log(f"{self.size} services: cases 2 and 3 for the CLI")
        cli_noop = self.measure("cli", a.runs, change=False)
        cli_one = self.measure("cli", a.runs, change=True)
        self.remove(self.cli_stack)

        cold["swarmkeeper"].append(self.cold("swarmkeeper"))
        log(f"{self.size} services: cases 2 and 3 for swarmkeeper")
        sk_noop = self.measure("swarmkeeper", a.runs, change=False)
        sk_one = self.measure("swarmkeeper", a.runs, change=True)
        self.result["case1"] = {
            tool: {"seconds": summarize(r["seconds"] for r in runs), "runs": runs}
            for tool, runs in cold.items()
        }
        self.result["case2"] = {"swarmkeeper": sk_noop, "cli": cli_noop}
        self.result["case3"] = {
            "swarmkeeper": sk_one,
            "cli": cli_one,
            "changed_service": changed_service_name(self.stack),
        }
        self.result["breakdown"] = self.breakdown()

        if profile:
            self.result["profiles"] = self.profiles()

        daemon = DaemonBench(
            self.swarm,
            self.tools,
            state_dir=self.state_dir,
            stack=self.stack,
            count=self.size,
            workdir=self.workdir / f"daemons-{self.size}",
        )
        try:
            log(f"{self.size} services: case 4, {a.drifts} drifts")
            self.result["case4"] = daemon.drift_latency(a.drifts, a.poll_ms / 1000, rng)
            log(f"{self.size} services: case 5, resyncs and {a.idle_seconds:g} s idle")
            self.result["case5"] = daemon.idle_and_resync(
                idle_seconds=a.idle_seconds,
                resync_interval=a.resync_interval,
                passes=a.resync_passes,
            )
        finally:
            daemon.close()
        self.remove(self.stack)
        return self.result

    def breakdown(self) -> dict[str, Any]:
        """Start-up, imports and the in-process steps of a fresh apply."""
        env = dict(self.tools.env)
        env["PYTHONPATH"] += f":{REPO / 'benchmarks'}"
        process = subprocess.run(
            [str(PYTHON), "-m", "harness.breakdown", str(self.state_dir)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        found: dict[str, Any] = json.loads(process.stdout)
        return found

    def profiles(self) -> dict[str, Any]:
        """A no-op and a cold apply under the profiler (not timed cases)."""
        log(f"{self.size} services: profiling a no-op and a cold apply")
        found = {
            "case2": profile_apply(
                self.tools, self.state_dir, self.workdir / "noop.pyisession"
            )
        }
        self.remove(self.stack)
        found["case1"] = profile_apply(
            self.tools, self.state_dir, self.workdir / "cold.pyisession"
        )
        self.swarm.wait_settled(self.stack, expect_services=self.size)
        return found


def startup(tools: Tools, repeat: int = 7) -> dict[str, Any]:
    """What every Python command pays before its first real step."""

    def times(argv: list[str]) -> dict[str, float]:
        return summarize(
            tools.timed(argv).check(argv[-1]).seconds for _ in range(repeat)
        )

    return {
        "python": times([str(PYTHON), "-c", "pass"]),
        "version": times([str(SWARMKEEPER), "--version"]),
    }


COMMITTED_FAILOVER = REPO / "benchmarks" / "results" / "failover.json"


def committed_failover(reason: str) -> dict[str, Any]:
    """The failover results committed by issue 9, labelled as an earlier run.

    Used when this run does not measure failover itself (``--no-failover``,
    not root, or the script failed): the report then shows the committed
    numbers with their date and says why they are not from this run.
    """
    if not COMMITTED_FAILOVER.exists():
        return {"missing": f"{reason}; no {COMMITTED_FAILOVER.name} committed"}
    found: dict[str, Any] = json.loads(COMMITTED_FAILOVER.read_text())
    return found | {"source": "committed", "not_run_because": reason}


def failover(workdir: Path, runs: int, nodes: str) -> dict[str, Any]:
    """benchmarks/failover.py (issue 9) on three private engines of its own.

    It needs root (private engines live in network namespaces) and never
    touches the engine the other cases use. Its Markdown goes to the
    temporary folder: benchmarks/results/failover.md stays issue 9's record.
    """
    script = REPO / "benchmarks" / "failover.py"
    if not script.exists():
        return committed_failover("benchmarks/failover.py missing")
    if os.geteuid() != 0:
        return committed_failover("not run as root (private engines need root)")
    output = workdir / "failover.json"
    argv = [str(PYTHON), str(script), "--runs", str(runs), "--json", str(output)]
    argv += ["--output", str(workdir / "failover.md")]
    if nodes:
        argv += ["--nodes", nodes]
    log(f"failover: benchmarks/failover.py --runs {runs}")
    started = time.monotonic()
    process = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = round(time.monotonic() - started, 1)
    if process.returncode != 0 or not output.exists():
        log(f"failover failed after {wall} s: {process.stderr[-600:]}")
        return committed_failover(
            f"benchmarks/failover.py exited {process.returncode} after {wall} s: "
            + (process.stderr or process.stdout)[-400:].strip()
        )
    log(f"failover: done in {wall} s")
    found: dict[str, Any] = json.loads(output.read_text())
    return found | {"source": "this run", "wall_seconds": wall}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sizes", default="10,100,1000", help="service counts (default 10,100,1000)")
    add("--cold-runs", type=int, default=3, help="cold deploys per tool and size")
    add("--runs", type=int, default=5, help="runs per tool and size, cases 2 and 3")
    add("--drifts", type=int, default=100, help="drifts per size, case 4")
    add("--poll-ms", type=float, default=10.0, help="engine read interval, case 4")
    add("--idle-seconds", type=float, default=30.0, help="idle window, case 5")
    add("--resync-interval", type=float, default=3.0, help="case 5's timer")
    add("--resync-passes", type=int, default=5, help="timer passes timed, case 5")
    add("--no-profile", action="store_true", help="skip the profile")
    add(
        "--no-failover",
        action="store_true",
        help="do not run benchmarks/failover.py; report the committed results",
    )
    add("--failover-runs", type=int, default=5, help="failovers, failover.py --runs")
    add(
        "--failover-nodes",
        default="",
        help="three private engine names for failover.py (default: its own "
        "choice, SWARMKEEPER_TEST_ENGINES or random)",
    )
    add(
        "--allow-foreign",
        action="store_true",
        help="run although the swarm holds objects the benchmark did not make",
    )
    add("--seed", type=int, default=None, help="seed of the drift order")
    add("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    add("--json", type=Path, default=REPO / "benchmarks" / "results" / "bench.json")
    add(
        "--profile-output",
        type=Path,
        default=REPO / "benchmarks" / "results" / "profile.md",
    )
    add(
        "--report-from",
        type=Path,
        default=None,
        help="render the report again from a JSON file; no engine needed",
    )
    return parser.parse_args()  # fmt: skip


def write_reports(document: dict[str, Any], arguments: argparse.Namespace) -> None:
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(render_report(document))
    profile = render_profile(document)
    if profile:
        arguments.profile_output.parent.mkdir(parents=True, exist_ok=True)
        arguments.profile_output.write_text(profile)
    log(f"wrote {arguments.output}")


def main() -> int:
    arguments = parse_arguments()
    if arguments.report_from:
        write_reports(json.loads(arguments.report_from.read_text()), arguments)
        return 0

    sizes = [int(n) for n in arguments.sizes.split(",") if n.strip()]
    own = {name for size in sizes for name in stack_names(size)}
    swarm = Swarm()
    found = swarm.foreign(own)
    try:
        if not arguments.allow_foreign:
            swarm.require_alone(own)
    except SwarmShared as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    leftovers = [s for s in sorted(own) if swarm.versions(s)]
    if leftovers:
        # Only a run killed midway leaves these; they are the benchmark's own.
        log(f"removing what an interrupted run left: {', '.join(leftovers)}")
        for stack in leftovers:
            swarm.remove_stack(stack)

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="swarmkeeper-bench-"))
    seed = arguments.seed if arguments.seed is not None else random.randrange(2**32)
    document: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench" if len(sys.argv) == 1 else " ".join(sys.argv),
        "machine": describe_machine(),
        "foreign_objects": found,
        "settings": {
            k: v for k, v in vars(arguments).items() if not isinstance(v, Path)
        }
        | {"seed": seed},
        "sizes": [],
    }
    status = 0
    try:
        tools = Tools(workdir)
        document["versions"] = describe_versions(swarm.client.version(), tools.env)
        document["startup"] = startup(tools)
        rng = random.Random(seed)
        for size in sizes:
            bench = SizeBench(
                size, swarm=swarm, tools=tools, workdir=workdir, arguments=arguments
            )
            try:
                document["sizes"].append(
                    bench.run(
                        profile=not arguments.no_profile and size == max(sizes), rng=rng
                    )
                )
            except Exception as error:
                traceback.print_exc()
                status = 1
                document["sizes"].append(bench.result | {"error": repr(error)[:500]})
            finally:
                for stack in stack_names(size):
                    swarm.remove_stack(stack)
        document["failover"] = (
            committed_failover("skipped with --no-failover")
            if arguments.no_failover
            else failover(workdir, arguments.failover_runs, arguments.failover_nodes)
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    webhook = REPO / "benchmarks" / "results" / "git-webhook-latency.json"
    if webhook.exists():
        # Not re-measured here (it needs a git remote and its own daemon):
        # the report shows the committed numbers, labelled with their date.
        raw = json.loads(webhook.read_text())
        document["git_webhook"] = {k: v for k, v in raw.items() if k != "latency_ms"}
    document["machine"]["load_at_end"] = describe_machine()["load_at_start"]
    document["runtime_seconds"] = round(time.monotonic() - started, 1)
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(document, indent=1) + "\n")
    write_reports(document, arguments)
    return status


if __name__ == "__main__":
    sys.exit(main())
