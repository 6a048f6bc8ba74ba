"""Benchmark: `swarmkeeper apply` with nothing to do, against the Docker CLI.

For each N in --services this script:

1. writes a desired-state folder with one stack, ``stacks/bench<N>.yml``
   (N services, ``replicas: 0``, one overlay network, two configs), and the
   same compose file for the CLI under stack name ``cli<N>`` (published ports
   offset by +10000 so the two stacks never share a port);
2. deploys both once (cold): ``swarmkeeper apply`` and
   ``docker stack deploy --resolve-image never -d``, then waits until the
   engine's own follow-up writes settle (every service's Version.Index
   unchanged for 2 s);
3. measures, --runs times, alternating: a no-op ``swarmkeeper apply`` and a
   "nothing changed" ``docker stack deploy`` of the same file: wall time of
   the whole process, and the objects whose Version.Index changed (read
   through the Docker SDK, an independent client, before and after);
4. measures the in-process cost of the steps inside apply (load the desired
   state, read the live state, plan), the start-up cost (``--version``,
   ``-X importtime``, the imports apply needs) and, unless --no-profile,
   profiles one no-op apply at the largest N with pyinstrument;
5. writes a Markdown report and the raw numbers as JSON beside it;
6. removes everything it created (unless --keep), even on failure.

Run from the repository root:
    .venv/bin/python benchmarks/apply_noop.py --services 100,1000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker  # the Docker SDK: an independent client for counting writes

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SWARMKEEPER = VENV_BIN / "swarmkeeper"
PYTHON = Path(sys.executable)
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "apply-noop.md"

SETTLE_QUIET = 2.0  # seconds every Version.Index must stay unchanged
SETTLE_TIMEOUT = 120.0
PORT_EVERY = 25  # one service in PORT_EVERY publishes a port
CLI_PORT_OFFSET = 10000

# Targets the report checks the numbers against.
TARGET_WRITES = 0
TARGET_RATIO_AT = 1000
TARGET_RATIO = 0.5
TARGET_VERSION_MS = 150.0


# ------------------------------------------------------------------ helpers --


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# Where the swarmkeeper under test is imported from (see --source); None: the
# venv's editable install, i.e. src/ as it is at each moment.
SOURCE_PATH: Path | None = None


def clean_env() -> dict[str, str]:
    """The process environment without swarmkeeper's own settings.

    So that neither a stray SWARMKEEPER_* variable nor a DOCKER_HOST aimed
    elsewhere changes what is measured: both tools use the local socket.
    PYTHONPATH points at the frozen copy of the source when there is one
    (it comes before the editable install's .pth entry on sys.path).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SWARMKEEPER_")
        and k not in ("DOCKER_HOST", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    if SOURCE_PATH is not None:
        env["PYTHONPATH"] = str(SOURCE_PATH)
    return env


def tree_digest(folder: Path) -> str:
    """SHA-256 over the .py files of a folder: says whether src/ moved."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
    ).stdout.strip()


def prepare_source(mode: str, workdir: Path) -> dict[str, Any]:
    """Freeze the code under test, so that edits to src/ during a run (another
    session at work) cannot change it halfway; record exactly what it is."""
    global SOURCE_PATH
    info: dict[str, Any] = {
        "mode": mode,
        "head": git("rev-parse", "--short", "HEAD"),
        "uncommitted_in_src": git("status", "--porcelain", "--", "src").splitlines(),
        "src_digest_at_start": tree_digest(REPO / "src"),
    }
    if mode == "live":
        info["path"] = str(REPO / "src")
        return info
    dest = workdir / "source"
    dest.mkdir()
    if mode == "head":
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "HEAD", "src"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        info["uncommitted_in_src_ignored"] = True
    else:
        shutil.copytree(
            REPO / "src",
            dest / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    SOURCE_PATH = dest / "src"
    # Compile now, so no measured run pays for writing .pyc files.
    subprocess.run(
        [str(PYTHON), "-m", "compileall", "-q", str(SOURCE_PATH)], check=True
    )
    sys.path.insert(0, str(SOURCE_PATH))
    info["path"] = str(SOURCE_PATH)
    info["digest"] = tree_digest(SOURCE_PATH)
    return info


def timed_run(argv: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a process to completion; wall time of the whole process."""
    start = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env or clean_env(), check=False
    )
    wall = time.perf_counter() - start
    return {
        "argv": argv,
        "seconds": wall,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def summary(values: Iterable[float]) -> dict[str, float]:
    items = list(values)
    if not items:
        return {}
    return {
        "median": statistics.median(items),
        "min": min(items),
        "max": max(items),
        "n": len(items),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def fmt_summary(s: dict[str, float]) -> str:
    if not s:
        return "n/a"
    return f"{ms(s['median'])} ({ms(s['min'])} – {ms(s['max'])})"


# --------------------------------------------------------- compose generator --


def port_base(position: int) -> int:
    """Published ports for the N at ``position`` in --services: never shared."""
    return 15000 + 1500 * position


def compose_text(n: int, *, port_offset: int, position: int) -> str:
    """N realistic services, replicas 0, one overlay network, two configs.

    Shared blocks are YAML anchors, as hand-written stacks of this size use
    them; that also keeps 1,000 services under swarmkeeper's 1 MiB limit on
    one desired-state file (written out in full, about 1.2 KB a service, they
    would not fit).
    """
    lines = [
        "# Generated by benchmarks/apply_noop.py: do not edit.",
        'version: "3.8"',
        "",
        "x-common-env: &common-env",
        "  TZ: Europe/Copenhagen",
        "  LOG_FORMAT: json",
        "  REGION: ${BENCH_REGION:-eu-north-1}",
        "x-logging: &logging",
        "  driver: json-file",
        "  options:",
        '    max-size: "10m"',
        '    max-file: "3"',
        "x-healthcheck: &healthcheck",
        '  test: ["CMD", "wget", "-q", "-O-", "http://localhost:8080/health"]',
        "  interval: 30s",
        "  timeout: 5s",
        "  retries: 3",
        "  start_period: 10s",
        "x-deploy: &deploy",
        "  mode: replicated",
        "  replicas: 0",
        "  restart_policy:",
        "    condition: on-failure",
        "    delay: 5s",
        "    max_attempts: 3",
        "  update_config:",
        "    parallelism: 2",
        "    delay: 10s",
        "    order: start-first",
        "    failure_action: rollback",
    ]
    for size in range(4):
        lines += [
            f"x-resources-{size}: &resources-{size}",
            "  limits:",
            f"    cpus: '{0.25 * (1 + size):.2f}'",
            f"    memory: {128 * (1 + size)}M",
            "  reservations:",
            f"    memory: {32 * (1 + size)}M",
        ]
    lines += ["", "services:"]
    tiers = ("web", "api", "worker", "cache", "batch")
    zones = ("a", "b", "c")
    for i in range(n):
        name = f"svc{i:04d}"
        tier = tiers[i % len(tiers)]
        lines += [
            f"  {name}:",
            f"    image: registry.bench.invalid/shop/{tier}-{i % 40:02d}:"
            f"{1 + i % 5}.{i % 10}.{i % 3}",
            "    environment:",
            "      <<: *common-env",
            f"      SERVICE_NAME: {name}",
            f'      WORKERS: "{1 + i % 8}"',
            f"      UPSTREAM_URL: http://svc{(i + 1) % n:04d}:8080/",
            "    labels:",
            f"      com.example.tier: {tier}",
            "    networks: [backend]",
            "    logging: *logging",
        ]
        if i % 4 == 0:
            lines.append(f'    command: ["serve", "--port", "8080", "--id", "{i}"]')
        if i % 5 == 1:
            lines.append("    healthcheck: *healthcheck")
        if i % 7 == 2:
            lines.append("    stop_grace_period: 15s")
        if i % PORT_EVERY == 0:
            published = port_base(position) + port_offset + i
            lines += ["    ports:", f'      - "{published}:8080"']
        if i % 10 == 3:
            lines += [
                "    configs:",
                "      - source: app_conf",
                "        target: /etc/app/app.conf",
                "        mode: 0444",
            ]
        if i % 10 == 7:
            lines += [
                "    configs:",
                "      - source: nginx_conf",
                "        target: /etc/nginx/conf.d/default.conf",
            ]
        lines += [
            "    deploy:",
            "      <<: *deploy",
            "      labels:",
            f"        com.example.owner: team-{i % 12}",
            f"      resources: *resources-{i % 4}",
            "      placement:",
            "        constraints:",
            "          - node.platform.os == linux",
            f"          - node.labels.zone != {zones[i % 3]}",
        ]
        if i % 3 == 0:
            lines += ["        preferences:", "          - spread: node.labels.zone"]
    lines += [
        "",
        "networks:",
        "  backend:",
        "    driver: overlay",
        "    attachable: true",
        "    labels:",
        "      com.example.purpose: benchmark",
        "",
        "configs:",
        "  app_conf:",
        "    file: ../configs/app.conf",
        "  nginx_conf:",
        "    file: ../configs/nginx.conf",
        "",
    ]
    return "\n".join(lines)


def write_state_dir(root: Path, stack: str, text: str) -> Path:
    """``root/stacks/<stack>.yml`` and ``root/configs/*``; returns the file."""
    (root / "stacks").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "configs" / "app.conf").write_text(
        "[server]\nport = 8080\nworkers = 4\n[log]\nformat = json\n"
    )
    (root / "configs" / "nginx.conf").write_text(
        "server {\n  listen 80;\n  location / { proxy_pass http://127.0.0.1:8080; }\n}\n"
    )
    # A safety net, not part of what is measured: should another swarmkeeper
    # user's objects appear on the engine mid-run, this apply must not remove
    # them (with no such objects, pruning has nothing to decide either way).
    (root / "policy.yml").write_text("prune: false\n")
    path = root / "stacks" / f"{stack}.yml"
    path.write_text(text)
    return path


# -------------------------------------------------------- engine inspection --


class EngineShared(RuntimeError):
    """Another swarmkeeper user (a test run, say) holds objects on the engine."""


class EngineBusy(RuntimeError):
    """The engine stayed shared for longer than --wait-timeout: give up."""


def running_pytest() -> list[str]:
    """pytest processes on this machine (read from /proc; nothing is signalled).

    With BENCH_ENGINE_IS_PRIVATE=1 (DOCKER_HOST names an engine of the
    benchmark's own, such as one from scripts/engine-node.sh) tests elsewhere
    cannot interfere, and this returns nothing.
    """
    if os.environ.get("BENCH_ENGINE_IS_PRIVATE") == "1":
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if re.search(r"(^|[/ ])(py\.test|pytest)( |$)", text):
            found.append(f"pytest running (pid {entry.name}: {text[:100]})")
    return found


class Swarm:
    """What the Docker SDK sees of the benchmark's stacks."""

    def __init__(self) -> None:
        self.client = docker.APIClient(
            base_url="unix:///var/run/docker.sock", version="auto", timeout=120
        )

    def services(self, stack: str) -> list[dict[str, Any]]:
        prefix = f"{stack}_"
        return [
            s for s in self.client.services() if s["Spec"]["Name"].startswith(prefix)
        ]

    def networks(self, stack: str) -> list[dict[str, Any]]:
        prefix = f"{stack}_"
        return [
            n
            for n in self.client.networks()
            if n["Name"].startswith(prefix) and n.get("Scope") == "swarm"
        ]

    def configs(self, stack: str) -> list[dict[str, Any]]:
        prefix = f"{stack}_"
        return [
            c for c in self.client.configs() if c["Spec"]["Name"].startswith(prefix)
        ]

    def snapshot(self, stack: str) -> dict[str, Any]:
        """Every object's version: services and configs by Version.Index.

        Networks carry no Version in the engine API; a rewrite of one is a
        remove and create, so its ID and creation time stand in for it.
        """
        versions: dict[str, Any] = {}
        for s in self.services(stack):
            versions[f"service/{s['Spec']['Name']}"] = s["Version"]["Index"]
        for c in self.configs(stack):
            versions[f"config/{c['Spec']['Name']}"] = c["Version"]["Index"]
        for n in self.networks(stack):
            versions[f"network/{n['Name']}"] = f"{n['Id']}@{n.get('Created')}"
        return versions

    def settle(self, stacks: list[str]) -> float:
        """Wait until every service's Version.Index has been still for 2 s."""
        start = time.perf_counter()
        last: dict[str, int] | None = None
        still_since = time.perf_counter()
        while True:
            current = {
                s["ID"]: s["Version"]["Index"]
                for stack in stacks
                for s in self.services(stack)
            }
            now = time.perf_counter()
            if current != last:
                last = current
                still_since = now
            elif now - still_since >= SETTLE_QUIET:
                return now - start
            if now - start > SETTLE_TIMEOUT:
                raise RuntimeError(f"the engine did not settle in {SETTLE_TIMEOUT}s")
            time.sleep(0.25)

    def foreign_users(self, own_stacks: list[str]) -> list[str]:
        """Signs that something else uses swarmkeeper on this engine.

        swarmkeeper treats the swarm as its own: an apply removes managed node
        labels it does not want and (with pruning) owned objects it does not
        want. So a benchmark apply would break a concurrent test run, and the
        test run's applies would touch the benchmark's objects. Returns what
        was found: objects labelled swarmkeeper.managed outside our stacks,
        a node label record, a running pytest.
        """
        found = []
        prefixes = tuple(f"{stack}_" for stack in own_stacks)
        managed = {"label": "swarmkeeper.managed=true"}
        for kind, items, key in (
            ("service", self.client.services(filters=managed), ("Spec", "Name")),
            ("config", self.client.configs(filters=managed), ("Spec", "Name")),
            ("secret", self.client.secrets(filters=managed), ("Spec", "Name")),
            ("network", self.client.networks(filters=managed), ("Name",)),
        ):
            for item in items:
                name = item
                for part in key:
                    name = name[part]
                if not str(name).startswith(prefixes):
                    found.append(f"{kind} {name}")
        for node in self.client.nodes():
            labels = node["Spec"].get("Labels") or {}
            if "swarmkeeper.managed-labels" in labels:
                found.append(
                    f"node {node['Description']['Hostname']} labels "
                    f"{labels['swarmkeeper.managed-labels']}"
                )
        found.extend(running_pytest())
        return found

    def check_alone(self, own_stacks: list[str]) -> None:
        """Raise EngineShared at once when someone else uses swarmkeeper here.

        Called while the benchmark's stacks exist: the polite answer to a
        test run that started meanwhile is to get out of its way (the caller
        removes the stacks and starts this size again later), not to wait
        beside it with 1,000 owned services it would try to prune.
        """
        found = self.foreign_users(own_stacks)
        if found:
            raise EngineShared("; ".join(found[:6]))

    def wait_until_alone(self, own_stacks: list[str], timeout: float) -> float:
        """Wait until no one else uses swarmkeeper on the engine; seconds waited."""
        start = time.monotonic()
        said = False
        while True:
            found = self.foreign_users(own_stacks)
            if not found:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise EngineBusy(
                    f"the engine is in use by something else that uses "
                    f"swarmkeeper ({'; '.join(found[:6])}); waited {timeout:.0f}s. "
                    "Run the benchmark when the test suite is not running."
                )
            if not said:
                log(
                    "waiting: the engine is shared with another swarmkeeper user: "
                    + "; ".join(found[:6])
                )
                said = True
            time.sleep(2)

    def exists(self, stack: str) -> bool:
        return bool(self.services(stack) or self.networks(stack) or self.configs(stack))

    def remove_stack(self, stack: str) -> None:
        """Services, then (once no service uses them) networks and configs."""
        for s in self.services(stack):
            try:
                self.client.remove_service(s["ID"])
            except docker.errors.NotFound:
                pass
        deadline = time.monotonic() + 120
        while self.services(stack) and time.monotonic() < deadline:
            time.sleep(0.5)
        for getter, remover, key in (
            (self.configs, self.client.remove_config, "ID"),
            (self.networks, self.client.remove_network, "Id"),
        ):
            while True:
                left = getter(stack)
                if not left:
                    break
                errors = []
                for item in left:
                    try:
                        remover(item[key])
                    except docker.errors.NotFound:
                        pass
                    except docker.errors.APIError as error:
                        errors.append(str(error))
                if errors and time.monotonic() > deadline:
                    raise RuntimeError(f"could not remove {stack}: {errors[0]}")
                if errors:
                    time.sleep(0.5)


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Objects created, removed or rewritten between two snapshots, by kind."""
    counts: dict[str, int] = {"service": 0, "config": 0, "network": 0}
    for key in set(before) | set(after):
        if before.get(key) != after.get(key):
            counts[key.split("/", 1)[0]] += 1
    counts["total"] = counts["service"] + counts["config"] + counts["network"]
    return counts


# ------------------------------------------------------------- measurements --


def swarmkeeper_apply(state_dir: Path) -> dict[str, Any]:
    return timed_run([str(SWARMKEEPER), "apply", "--state-dir", str(state_dir)])


def cli_deploy(compose: Path, stack: str) -> dict[str, Any]:
    return timed_run(
        [
            "docker",
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-d",
            "-c",
            str(compose),
            stack,
        ]
    )


def applied_line(stdout: str) -> str:
    for line in reversed(stdout.splitlines()):
        if line.startswith("Applied:"):
            return line
    return ""


def brief(run: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of one process run: no full outputs, tails only."""
    return {
        "seconds": run["seconds"],
        "returncode": run["returncode"],
        "stdout_tail": run["stdout"][-600:],
        "stderr_tail": run["stderr"][-1500:],
    }


def measure_startup(repeat: int) -> dict[str, Any]:
    """`swarmkeeper --version`, bare Python, and the imports apply needs."""
    results: dict[str, Any] = {}

    def times(argv: list[str], count: int) -> list[float]:
        values = []
        for _ in range(count):
            run = timed_run(argv)
            if run["returncode"] != 0:
                raise RuntimeError(f"{argv} failed: {run['stderr'][-500:]}")
            values.append(run["seconds"])
        return values

    version = timed_run([str(SWARMKEEPER), "--version"])
    results["version_output"] = version["stdout"].strip()
    results["version"] = summary(times([str(SWARMKEEPER), "--version"], repeat))
    results["python_bare"] = summary(times([str(PYTHON), "-c", "pass"], repeat))
    results["python_S_bare"] = summary(times([str(PYTHON), "-S", "-c", "pass"], repeat))
    apply_imports = (
        "import swarmkeeper.commands, swarmkeeper.applying, swarmkeeper.planning, "
        "swarmkeeper.loading.statedir, aiodocker"
    )
    results["apply_imports_statement"] = apply_imports
    results["apply_imports"] = summary(
        times([str(PYTHON), "-c", apply_imports], max(5, repeat // 2))
    )
    # The rest of what `apply` imports before it talks to the engine.
    full_imports = (
        apply_imports + ", swarmkeeper.settings, swarmkeeper.logs, swarmkeeper.live, "
        "swarmkeeper.engine"
    )
    results["apply_path_imports_statement"] = full_imports
    results["apply_path_imports"] = summary(
        times([str(PYTHON), "-c", full_imports], max(5, repeat // 2))
    )

    # -X importtime: which modules cost what (self and cumulative microseconds).
    results["importtime_version"] = importtime(
        [str(PYTHON), "-X", "importtime", "-m", "swarmkeeper", "--version"]
    )
    results["importtime_apply"] = importtime(
        [str(PYTHON), "-X", "importtime", "-c", full_imports]
    )
    return results


def importtime(argv: list[str]) -> dict[str, Any]:
    run = timed_run(argv)
    rows = []
    for line in run["stderr"].splitlines():
        match = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)", line)
        if match:
            self_us, cumulative_us, indent, name = match.groups()
            rows.append(
                {
                    "module": name,
                    "self_us": int(self_us),
                    "cumulative_us": int(cumulative_us),
                    "depth": (len(indent) - 1) // 2,
                }
            )
    top_level = [r for r in rows if r["depth"] == 0]
    packages: dict[str, int] = {}
    for r in rows:
        package = r["module"].split(".")[0]
        packages[package] = packages.get(package, 0) + r["self_us"]
    return {
        "wall_seconds": run["seconds"],
        "modules": len(rows),
        "total_us": sum(r["self_us"] for r in rows),
        "top_level_by_cumulative": sorted(
            top_level, key=lambda r: r["cumulative_us"], reverse=True
        )[:15],
        "by_self": sorted(rows, key=lambda r: r["self_us"], reverse=True)[:15],
        # Self times summed per top-level package: adds up without counting
        # a nested import twice.
        "by_package_self_us": dict(
            sorted(packages.items(), key=lambda kv: kv[1], reverse=True)
        ),
    }


def measure_in_process(state_dir: Path, runs: int) -> dict[str, Any]:
    """Load, read, plan, timed one by one in this process.

    The first run pays for whatever is computed once per process (schema
    compilation, lazy imports); that is what every `swarmkeeper apply`
    process pays, so it is reported apart from the later (warm) runs.
    """
    imports_start = time.perf_counter()
    from swarmkeeper.engine import Engine
    from swarmkeeper.live import read_live_state
    from swarmkeeper.loading.statedir import load_desired_state
    from swarmkeeper.planning import make_plan, render_text

    imports = time.perf_counter() - imports_start

    env = clean_env()
    rows = []
    for _ in range(runs):
        t0 = time.perf_counter()
        desired = load_desired_state(state_dir, environ=env)
        t1 = time.perf_counter()

        async def read() -> tuple[Any, float, float]:
            c0 = time.perf_counter()
            async with Engine.connect(None, call_timeout=60) as engine:
                r0 = time.perf_counter()
                live = await read_live_state(engine)
                r1 = time.perf_counter()
            return live, r1 - r0, r1 - c0

        a0 = time.perf_counter()
        live, read_seconds, connect_and_read = asyncio.run(read())
        a1 = time.perf_counter()
        p0 = time.perf_counter()
        plan = make_plan(desired, live)
        p1 = time.perf_counter()
        text = render_text(plan)
        p2 = time.perf_counter()
        rows.append(
            {
                "load": t1 - t0,
                "read": read_seconds,
                "connect_read_close": connect_and_read,
                "asyncio_run": a1 - a0,
                "plan": p1 - p0,
                "render": p2 - p1,
                "in_sync": plan.in_sync,
                "changes": len(plan.changes),
                "services_desired": len(desired.services()),
                "services_live": len(live.services),
                "plan_text_head": text[:400],
            }
        )
    first, warm = rows[0], rows[1:]
    keys = ("load", "read", "connect_read_close", "asyncio_run", "plan", "render")
    return {
        "imports_in_benchmark_process": imports,
        "runs": rows,
        "first": {k: first[k] for k in keys},
        "warm": {k: summary(r[k] for r in warm) for k in keys} if warm else {},
        "all_in_sync": all(r["in_sync"] for r in rows),
    }


def profile_apply(state_dir: Path, out_dir: Path) -> dict[str, Any]:
    """One no-op apply under pyinstrument (a benchmark-only tool)."""
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        log("pyinstrument is missing: installing it into this venv (benchmark only)")
        subprocess.run(
            [str(PYTHON), "-m", "pip", "install", "--quiet", "pyinstrument"],
            check=True,
        )
    import pyinstrument

    text_file = out_dir / "apply-noop-profile.txt"
    run = timed_run(
        [
            str(PYTHON),
            "-m",
            "pyinstrument",
            "--interval",
            "0.0005",
            "-r",
            "text",
            "-o",
            str(text_file),
            "-m",
            "swarmkeeper",
            "apply",
            "--state-dir",
            str(state_dir),
        ]
    )
    return {
        "pyinstrument_version": pyinstrument.__version__,
        "seconds": run["seconds"],
        "returncode": run["returncode"],
        "stderr_tail": run["stderr"][-800:],
        "file": str(text_file),
        "text": text_file.read_text() if text_file.exists() else "",
    }


# ------------------------------------------------------------------ context --


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                kib = int(line.split()[1])
                memory = f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory": memory,
        "cpu": cpu,
        "kernel": platform.release(),
        "os": _os_release(),
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return ""


def versions(swarm: Swarm) -> dict[str, Any]:
    engine = swarm.client.version()
    cli = subprocess.run(
        ["docker", "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    import aiodocker

    import swarmkeeper

    return {
        "engine": engine.get("Version"),
        "engine_api": engine.get("ApiVersion"),
        "cli": cli,
        "python": platform.python_version(),
        "swarmkeeper": swarmkeeper.__version__,
        "swarmkeeper_imported_from": str(Path(swarmkeeper.__file__).parent),
        "aiodocker": aiodocker.__version__,
        "docker_sdk": docker.__version__,
    }


# ------------------------------------------------------------------ one N --


def bench_one(
    n: int,
    position: int,
    runs: int,
    swarm: Swarm,
    workdir: Path,
    created: list[str],
    in_process_runs: int,
    wait_timeout: float,
) -> dict[str, Any]:
    stack, cli_stack = f"bench{n}", f"cli{n}"
    ours = [stack, cli_stack]
    for name in (stack, cli_stack):
        if swarm.exists(name):
            raise RuntimeError(
                f"objects named {name}_* already exist on the engine (left by a "
                f"--keep run?); remove them first: "
                f"{sys.argv[0]} --cleanup-only --services {n}"
            )

    state_dir = workdir / f"state-{n}"
    cli_dir = workdir / f"cli-{n}"
    compose = write_state_dir(
        state_dir, stack, compose_text(n, port_offset=0, position=position)
    )
    cli_compose = write_state_dir(
        cli_dir,
        cli_stack,
        compose_text(n, port_offset=CLI_PORT_OFFSET, position=position),
    )
    result: dict[str, Any] = {
        "services": n,
        "stack": stack,
        "cli_stack": cli_stack,
        "compose_bytes": compose.stat().st_size,
        "published_ports": len(range(0, n, PORT_EVERY)),
    }

    # Cold deploys.
    swarm.wait_until_alone(ours, wait_timeout)
    log(f"N={n}: cold swarmkeeper apply")
    created.append(stack)
    cold = swarmkeeper_apply(state_dir)
    result["cold_apply"] = brief(cold) | {"applied": applied_line(cold["stdout"])}
    if cold["returncode"] != 0:
        detail = (
            f"cold apply of {stack} exited {cold['returncode']}; stdout ends: "
            f"{cold['stdout'][-1200:]!r}; stderr ends: {cold['stderr'][-600:]!r}"
        )
        if cold["returncode"] != 1:
            raise RuntimeError(detail)
        result["cold_apply_problem"] = detail  # items left alone: go on
        log(detail)
    log(f"N={n}: cold apply {cold['seconds']:.2f}s; {applied_line(cold['stdout'])}")
    log(f"N={n}: cold docker stack deploy")
    created.append(cli_stack)
    cli_cold = cli_deploy(cli_compose, cli_stack)
    result["cold_cli"] = brief(cli_cold)
    if cli_cold["returncode"] != 0:
        raise RuntimeError(f"cold CLI deploy failed: {cli_cold['stderr'][-1500:]}")
    log(f"N={n}: cold CLI deploy {cli_cold['seconds']:.2f}s")
    result["settle_after_cold"] = swarm.settle([stack, cli_stack])
    swarm.check_alone(ours)
    log(f"N={n}: settled after {result['settle_after_cold']:.1f}s")

    counts = {
        "swarmkeeper": len(swarm.snapshot(stack)),
        "cli": len(swarm.snapshot(cli_stack)),
    }
    result["objects"] = counts
    expected = n + 2 + 1  # services, two configs, one network
    if counts["swarmkeeper"] != expected or counts["cli"] != expected:
        log(f"N={n}: warning: objects {counts}, expected {expected} each")

    # Measured runs, alternating.
    sk_runs, cli_runs, settles = [], [], []
    for run_number in range(runs):
        swarm.check_alone(ours)
        before = swarm.snapshot(stack)
        sk = swarmkeeper_apply(state_dir)
        after = swarm.snapshot(stack)
        diff = changed(before, after)
        sk_runs.append(
            brief(sk) | {"applied": applied_line(sk["stdout"]), "changed": diff}
        )
        log(
            f"N={n} run {run_number + 1}/{runs}: swarmkeeper {sk['seconds']:.3f}s "
            f"rc={sk['returncode']} changed={diff['total']} "
            f"({applied_line(sk['stdout'])})"
        )
        if sk["returncode"] != 0:
            log(f"  stderr: {sk['stderr'][-800:]}")
        # Anything swarmkeeper wrote would set the engine off; let it finish.
        if diff["total"]:
            settles.append({"after": "swarmkeeper", "seconds": swarm.settle([stack])})

        cli_before = swarm.snapshot(cli_stack)
        cli = cli_deploy(cli_compose, cli_stack)
        cli_after = swarm.snapshot(cli_stack)
        cli_diff = changed(cli_before, cli_after)
        cli_runs.append(brief(cli) | {"changed": cli_diff})
        log(
            f"N={n} run {run_number + 1}/{runs}: CLI {cli['seconds']:.3f}s "
            f"rc={cli['returncode']} changed={cli_diff['total']}"
        )
        settle = swarm.settle([stack, cli_stack])
        settles.append({"after": "cli", "seconds": settle})
        # Did the engine's follow-up to the CLI's writes touch swarmkeeper's stack?
        if swarm.snapshot(stack) != after:
            log(f"N={n}: note: swarmkeeper's stack changed while the CLI ran")

    result["swarmkeeper_runs"] = sk_runs
    result["cli_runs"] = cli_runs
    result["settles"] = settles
    result["swarmkeeper"] = summary(r["seconds"] for r in sk_runs)
    result["cli"] = summary(r["seconds"] for r in cli_runs)
    result["swarmkeeper_writes"] = [r["changed"]["total"] for r in sk_runs]
    result["swarmkeeper_reported_writes"] = [r["applied"] for r in sk_runs]
    result["cli_services_changed"] = [r["changed"]["service"] for r in cli_runs]
    result["ratio"] = result["swarmkeeper"]["median"] / result["cli"]["median"]

    log(f"N={n}: in-process load/read/plan ({in_process_runs} runs)")
    swarm.check_alone(ours)
    result["in_process"] = measure_in_process(state_dir, in_process_runs)
    return result


# ------------------------------------------------------------------ report --


def verdict(ok: bool | None) -> str:
    return {
        True: "**met**",
        False: "**not met**",
        None: "not measured (or not at every size)",
    }[ok]


def render_report(data: dict[str, Any]) -> str:
    m, v = data["machine"], data["versions"]
    per_n: list[dict[str, Any]] = data["per_n"]
    startup = data.get("startup", {})
    out: list[str] = []
    w = out.append

    w("# Benchmark: `swarmkeeper apply` with nothing to do\n")
    w(
        f"Generated by `benchmarks/apply_noop.py` on {data['finished_at']} "
        f"(command: `{data['command']}`; total runtime "
        f"{data['runtime_seconds']:.0f} s).\n"
    )

    # Targets first.
    w("## Targets\n")
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    all_writes = [x for r in per_n for x in r.get("swarmkeeper_writes", [])]
    writes_ok = (all(x == TARGET_WRITES for x in all_writes)) if all_writes else None
    if writes_ok and any("swarmkeeper_writes" not in r for r in per_n):
        writes_ok = None  # met where measured, but not measured everywhere
    per_run = "; ".join(
        f"N={r['services']}: {r.get('swarmkeeper_writes')}" for r in per_n
    )
    w(
        f"| a no-op apply makes {TARGET_WRITES} writes | {per_run} "
        f"(objects changed, per run) | {verdict(writes_ok)} |"
    )
    at = [r for r in per_n if r["services"] == TARGET_RATIO_AT and "ratio" in r]
    ratio_ok = (at[0]["ratio"] <= TARGET_RATIO) if at else None
    ratio_text = (
        f"{at[0]['ratio']:.2f} ({ms(at[0]['swarmkeeper']['median'])} vs "
        f"{ms(at[0]['cli']['median'])})"
        if at
        else "N=1000 not run"
    )
    w(
        f"| at {TARGET_RATIO_AT:,} services, apply takes at most "
        f"{TARGET_RATIO:g}× the CLI's time | {ratio_text} | {verdict(ratio_ok)} |"
    )
    version = startup.get("version")
    version_ok = (version["median"] * 1000 < TARGET_VERSION_MS) if version else None
    w(
        f"| `swarmkeeper --version` under {TARGET_VERSION_MS:.0f} ms (median of "
        f"{version['n'] if version else '?'}) | "
        f"{fmt_summary(version) if version else 'n/a'} | {verdict(version_ok)} |"
    )
    w("")

    # Main table.
    w("## Results\n")
    w(
        "Wall time of the whole process: median (min – max) over the measured runs. "
        "Writes: objects of the stack (services, configs, the network) whose "
        "`Version.Index` (for the network: ID and creation time) differed after "
        "the run, read through the Docker SDK.\n"
    )
    w(
        "| services | runs | `swarmkeeper apply` (no-op) | swarmkeeper writes | "
        "`docker stack deploy` (nothing changed) | CLI writes | "
        "ratio swarmkeeper/CLI |"
    )
    w("| ---: | ---: | --- | --- | --- | --- | ---: |")
    for r in per_n:
        if "swarmkeeper" not in r:
            w(f"| {r['services']:,} | – | failed: {r.get('error', '?')} | | | | |")
            continue
        cli_configs = [x["changed"]["config"] for x in r["cli_runs"]]
        w(
            f"| {r['services']:,} | {r['swarmkeeper']['n']} | "
            f"{fmt_summary(r['swarmkeeper'])} | {_list(r['swarmkeeper_writes'])} | "
            f"{fmt_summary(r['cli'])} | services: "
            f"{_list(r['cli_services_changed'])} of {r['services']:,}; configs: "
            f"{_list(cli_configs)} of 2 | {r['ratio']:.2f} |"
        )
    w("")
    w("Cold deploys (once each, for context; not a target):\n")
    w(
        "| services | compose file | cold `swarmkeeper apply` | what it reported | "
        "cold `docker stack deploy` | engine settled after |"
    )
    w("| ---: | ---: | --- | --- | --- | --- |")
    for r in per_n:
        if "cold_apply" in r and "cold_cli" in r:
            w(
                f"| {r['services']:,} | {r['compose_bytes'] / 1024:,.0f} KiB | "
                f"{ms(r['cold_apply']['seconds'])} | "
                f"{r['cold_apply'].get('applied', '')} | {ms(r['cold_cli']['seconds'])} | "
                f"{r.get('settle_after_cold', 0):.1f} s |"
            )
    w("")

    # Where the time goes.
    w("## Where the time goes\n")
    if startup:
        w("Start-up (whole process, median of repeated runs):\n")
        w("| what | time |")
        w("| --- | --- |")
        w(
            f"| `python -S -c pass` (interpreter, no site) | {fmt_summary(startup['python_S_bare'])} |"
        )
        w(
            f"| `python -c pass` (interpreter + site, venv) | {fmt_summary(startup['python_bare'])} |"
        )
        w(f"| `swarmkeeper --version` | {fmt_summary(startup['version'])} |")
        w(
            f"| `python -c '{startup['apply_imports_statement']}'` | "
            f"{fmt_summary(startup['apply_imports'])} |"
        )
        w(
            "| the same plus `swarmkeeper.settings, .logs, .live, .engine` "
            f"(everything apply imports) | {fmt_summary(startup['apply_path_imports'])} |"
        )
        w("")
        it = startup["importtime_apply"]
        w(
            f"`-X importtime` of everything apply imports: {it['modules']} modules, "
            f"{it['total_us'] / 1000:.0f} ms of import time in all (under "
            "`-X importtime`, which itself slows imports a little). By package "
            "(self time summed, so nothing is counted twice):\n"
        )
        w("| package | import time |")
        w("| --- | ---: |")
        for package, micros in list(it["by_package_self_us"].items())[:12]:
            w(f"| `{package}` | {micros / 1000:.1f} ms |")
        w("")
        w(
            "Heaviest single modules (self time): "
            + ", ".join(
                f"`{row['module']}` {row['self_us'] / 1000:.1f} ms"
                for row in it["by_self"][:8]
            )
            + ".\n"
        )
        iv = startup["importtime_version"]
        w(
            f"`python -X importtime -m swarmkeeper --version`: {iv['modules']} modules, "
            f"{iv['total_us'] / 1000:.1f} ms of import time; heaviest: "
            + ", ".join(
                f"`{row['module']}` {row['cumulative_us'] / 1000:.1f} ms"
                for row in iv["top_level_by_cumulative"][:5]
            )
            + ".\n"
        )

    w(
        "In-process cost of the steps inside a no-op apply (first run in a fresh "
        "process, as every `swarmkeeper apply` pays it; then the median of the "
        "later, warm runs):\n"
    )
    w(
        "| services | load desired state | read live state | plan | render plan | "
        "sum of steps | apply wall (median) | rest: start-up, imports, connection, exit |"
    )
    w("| ---: | --- | --- | --- | --- | --- | --- | --- |")
    for r in per_n:
        ip = r.get("in_process")
        if not ip:
            continue
        first, warm = ip["first"], ip["warm"]

        def cell(key: str, first: Any = first, warm: Any = warm) -> str:
            text = ms(first[key])
            if warm:
                text += f" / {ms(warm[key]['median'])}"
            return text

        steps = first["load"] + first["read"] + first["plan"] + first["render"]
        wall = r["swarmkeeper"]["median"]
        w(
            f"| {r['services']:,} | {cell('load')} | {cell('read')} | {cell('plan')} | "
            f"{cell('render')} | {ms(steps)} | {ms(wall)} | {ms(max(0.0, wall - steps))} |"
        )
    w("")
    w(
        'Each cell: first run / warm median. "read" is the six concurrent list '
        "calls of `read_live_state` on an open connection; the connection itself "
        "and `asyncio.run` are in the raw JSON (`connect_read_close`, `asyncio_run`).\n"
    )

    measured = [r for r in per_n if r.get("in_process") and "swarmkeeper" in r]
    if measured and startup:
        r = measured[-1]
        first = r["in_process"]["first"]
        wall = r["swarmkeeper"]["median"]
        imports = startup["apply_path_imports"]["median"]
        parts = [
            ("interpreter start-up and imports (`python -c 'import ...'`)", imports),
            ("load the desired state (first run)", first["load"]),
            ("read the live state (first run)", first["read"]),
            ("plan (first run)", first["plan"]),
        ]
        rest = wall - sum(seconds for _, seconds in parts)
        parts.append(
            ("the rest: connection, asyncio, apply_plan, output, exit", rest)
        )
        w(f"Split of the median no-op apply at {r['services']:,} services "
          f"({ms(wall)}), from the measurements above:\n")
        w("| part | time | share |")
        w("| --- | ---: | ---: |")
        for label, seconds in parts:
            w(f"| {label} | {ms(seconds)} | {100 * seconds / wall:.0f}% |")
        w("")

    prof = data.get("profile")
    if prof and prof.get("text"):
        w(f"## Profile of one no-op apply at {prof['services']:,} services\n")
        w(
            f"`python -m pyinstrument -m swarmkeeper apply` (pyinstrument "
            f"{prof['pyinstrument_version']}, a benchmark-only tool installed into the "
            "venv for this; not a dependency of swarmkeeper). Wall time under the "
            f"profiler: {ms(prof['seconds'])} (the profiler's hook slows call-heavy "
            "code such as `deepcopy` more than the rest: read the shares, not the "
            "seconds). Frames of at least 3% of the total (full tree in "
            "`apply-noop-profile.txt`):\n"
        )
        w("```")
        w("\n".join(_profile_top(prof["text"], 90)))
        w("```\n")

    problems = data.get("problems") or []
    interruptions = data.get("interruptions") or []
    if interruptions:
        w("## Interruptions\n")
        w(
            "Another swarmkeeper user (the test suite) appeared on the engine "
            "mid-measurement; the script removed its stacks, waited, and measured "
            "that size again from scratch. Only the complete attempts are reported.\n"
        )
        for item in interruptions:
            w(f"- N={item['services']}, attempt {item['attempt']}: {item['found']}")
        w("")
    w("## Problems seen\n")
    if problems:
        for p in problems:
            w(f"- {p}")
    else:
        w("- none: every apply exited 0 and the benchmark ran to the end.")
    w("")

    w("## Machine and versions\n")
    w(
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, "
        f"kernel {m['kernel']}, {m['os']}"
    )
    w(f"- Docker engine {v['engine']} (API {v['engine_api']}), Docker CLI {v['cli']}")
    src = data.get("source", {})
    w(
        f"- Python {v['python']}, swarmkeeper {v['swarmkeeper']}, "
        f"aiodocker {v['aiodocker']}, Docker SDK {v['docker_sdk']}"
    )
    w(f"- code under test: {_describe_source(src)}")
    w("")

    w("## Method\n")
    w(
        "- For each N, a compose file with N services is generated (`replicas: 0`, "
        "so the engine schedules no tasks; images under `registry.bench.invalid`, "
        "which do not exist and are never resolved). Each service has environment "
        "variables (a YAML anchor and a `${VAR:-default}` among them), container "
        "and service labels, two placement constraints, limits and reservations, "
        "restart and update policies, a logging driver, and one overlay network "
        "declared in the file; a quarter have a `command`, a fifth a healthcheck, "
        f"one in {PORT_EVERY} publishes a port, one in five uses one of the two "
        "configs the file declares."
    )
    w(
        "- swarmkeeper's copy lives in a fresh desired-state folder as "
        "`stacks/bench<N>.yml` (config files under `configs/`). The CLI's copy is "
        f"the same file with published ports +{CLI_PORT_OFFSET}, deployed as "
        "stack `cli<N>`."
    )
    w(
        "- Both are deployed once (cold), then the script waits until every "
        f"service's `Version.Index` has been unchanged for {SETTLE_QUIET:g} s (the "
        "engine's allocator writes endpoints after a create)."
    )
    w(
        "- Then, alternating, each run: `swarmkeeper apply --state-dir DIR` "
        "(nothing to do) and `docker stack deploy --resolve-image never -d -c FILE "
        "cli<N>` (nothing changed), each timed with `time.perf_counter` around "
        "`subprocess.run`, the versions of the stack's objects read through the "
        "Docker SDK before and after. After each CLI run the script waits for the "
        "engine to settle again, so the next swarmkeeper run does not compete with "
        "the engine's follow-up work."
    )
    w(
        "- In-process: `load_desired_state`, `Engine.connect` + `read_live_state`, "
        "`make_plan` and `render_text`, each timed with `perf_counter`, in the "
        "benchmark's own process (imports already paid)."
    )
    w(
        "- Start-up: `swarmkeeper --version` and `python -c pass` "
        f"{data['version_repeat']} times each; the imports apply needs, timed as "
        "`python -c 'import ...'`; `-X importtime` once."
    )
    w("- Everything the script created is removed at the end (unless `--keep`).")
    w("")
    return "\n".join(out)


def _describe_source(src: dict[str, Any]) -> str:
    head = src.get("head", "?")
    dirty = src.get("uncommitted_in_src") or []
    if src.get("mode") == "head":
        text = f"git HEAD {head} (`--source head`: committed src/ only"
        if dirty:
            text += f"; {len(dirty)} uncommitted change(s) in src/ not measured"
        return text + ")"
    if src.get("mode") == "worktree":
        text = (
            f"a copy of src/ taken at start (`--source worktree`), on git HEAD {head}"
        )
    else:
        text = (
            f"src/ through the editable install (`--source live`), on git HEAD {head}"
        )
    if dirty:
        text += " plus uncommitted changes: " + ", ".join(
            f"`{line.strip()}`" for line in dirty
        )
    else:
        text += ", no uncommitted changes"
    if src.get("note"):
        text += f". Note: {src['note']}"
    return text


def _list(values: list[Any]) -> str:
    if values and all(v == values[0] for v in values):
        return f"{values[0]} (each run)"
    return ", ".join(str(v) for v in values)


def _profile_top(text: str, limit: int, *, share: float = 0.03) -> list[str]:
    """The profile tree cut down to frames worth reading.

    Keeps frames that took at least ``share`` of the root's time, drops
    pyinstrument's "[N frames hidden]" lines and its banner; the full tree
    stays in the text file.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    timed = re.compile(r"^([\s│├└─]*)(\d+\.\d+)\s")
    root = None
    kept = []
    for line in lines:
        match = timed.match(line)
        if not match:
            continue
        seconds = float(match.group(2))
        if root is None:
            root = seconds
        if seconds >= share * root:
            kept.append(line)
    return kept[:limit]


# -------------------------------------------------------------------- main --


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="100,1000", help="comma-separated N")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per tool")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--keep", action="store_true", help="do not clean up")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the pyinstrument profile"
    )
    parser.add_argument("--version-repeat", type=int, default=20)
    parser.add_argument("--in-process-runs", type=int, default=5)
    parser.add_argument(
        "--source",
        choices=("worktree", "head", "live"),
        default="worktree",
        help="code under test: a copy of src/ taken at start (default), git "
        "HEAD's src/, or the editable install as it is at each moment",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=600,
        help="seconds to wait for other swarmkeeper users (a test run) to leave "
        "the engine before giving up",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="times to start a size again after another swarmkeeper user "
        "(a test run) appeared on the engine mid-measurement",
    )
    parser.add_argument(
        "--cleanup-only",
        action="store_true",
        help="remove bench<N>/cli<N> objects left by a --keep run, then exit",
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="only render the Markdown report again from a raw JSON file",
    )
    args = parser.parse_args(argv)
    # Clean up on SIGTERM and SIGINT too, even when started in the background
    # by a shell that set SIGINT to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report_from:
        data = json.loads(args.report_from.read_text())
        profile_file = args.report_from.parent / "apply-noop-profile.txt"
        if data.get("profile") and profile_file.exists():
            data["profile"]["text"] = profile_file.read_text()
        args.output.write_text(render_report(data))
        log(f"report: {args.output}")
        return 0
    sizes = [int(x) for x in args.services.split(",") if x.strip()]

    if not SWARMKEEPER.exists():
        print(
            f"no swarmkeeper at {SWARMKEEPER}: run with the venv's python",
            file=sys.stderr,
        )
        return 2
    swarm = Swarm()
    if args.cleanup_only:
        for n in sizes:
            for stack in (f"bench{n}", f"cli{n}"):
                log(f"removing {stack}_*")
                swarm.remove_stack(stack)
        return 0

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="swarmkeeper-bench-"))
    source = prepare_source(args.source, workdir)
    data: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "source": source,
        "versions": versions(swarm),
        "version_repeat": args.version_repeat,
        "targets": {
            "writes": TARGET_WRITES,
            "ratio_at": TARGET_RATIO_AT,
            "ratio": TARGET_RATIO,
            "version_ms": TARGET_VERSION_MS,
        },
        "per_n": [],
        "problems": [],
        "interruptions": [],
    }
    created: list[str] = []
    status = 0
    try:
        try:
            swarm.wait_until_alone([], args.wait_timeout)  # a quiet machine, too
        except EngineBusy as error:
            data["problems"].append(str(error))
            log(str(error))
            return 1
        log("start-up measurements")
        data["startup"] = measure_startup(args.version_repeat)
        for position, n in enumerate(sizes):
            result = None
            for attempt in range(1, args.retries + 2):
                try:
                    result = bench_one(
                        n,
                        position,
                        args.runs,
                        swarm,
                        workdir,
                        created,
                        args.in_process_runs,
                        args.wait_timeout,
                    )
                    break
                except EngineShared as error:
                    # Someone else started using swarmkeeper on this engine:
                    # get out of the way, wait, start this size again.
                    log(f"N={n}: another swarmkeeper user appeared ({error})")
                    data["interruptions"].append(
                        {"services": n, "attempt": attempt, "found": str(error)}
                    )
                    for stack in (f"bench{n}", f"cli{n}"):
                        swarm.remove_stack(stack)
                        if stack in created:
                            created.remove(stack)
                    shutil.rmtree(workdir / f"state-{n}", ignore_errors=True)
                    shutil.rmtree(workdir / f"cli-{n}", ignore_errors=True)
                    if attempt > args.retries:
                        status = 1
                        data["problems"].append(
                            f"N={n}: gave up after {attempt} attempts: the engine "
                            f"kept being used by another swarmkeeper user ({error})"
                        )
                        data["per_n"].append({"services": n, "error": str(error)})
                    else:
                        log(f"N={n}: removed our stacks; starting again when alone")
                except Exception as error:  # report what happened, keep going
                    status = 1
                    data["problems"].append(f"N={n}: {type(error).__name__}: {error}")
                    data["per_n"].append({"services": n, "error": str(error)})
                    log(f"N={n} failed: {error}\n{traceback.format_exc()}")
                    break
            if result is None:
                continue
            data["per_n"].append(result)
            _collect_problems(result, data["problems"])
            if position == len(sizes) - 1 and not args.no_profile:
                log(f"N={n}: profiling one no-op apply with pyinstrument")
                args.output.parent.mkdir(parents=True, exist_ok=True)
                try:
                    swarm.check_alone([f"bench{n}", f"cli{n}"])
                    data["profile"] = profile_apply(
                        workdir / f"state-{n}", args.output.parent
                    ) | {"services": n}
                except Exception as error:
                    data["problems"].append(f"profiling failed: {error}")
            if not args.keep:
                # Free the engine before the next, larger N.
                for stack in (f"bench{n}", f"cli{n}"):
                    swarm.remove_stack(stack)
                    created.remove(stack)
    finally:
        if not args.keep:
            for stack in list(created):
                try:
                    log(f"clean-up: removing {stack}_*")
                    swarm.remove_stack(stack)
                except Exception as error:
                    log(f"clean-up of {stack} failed: {error}")
                    data["problems"].append(f"clean-up of {stack} failed: {error}")
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"--keep: stacks {created} and {workdir} left in place")
        source["src_digest_at_end"] = tree_digest(REPO / "src")
        if source["src_digest_at_end"] != source["src_digest_at_start"]:
            note = "src/ changed while the benchmark ran"
            if args.source == "live":
                data["problems"].append(
                    note + " (--source live: results may mix versions)"
                )
            else:
                source["note"] = note + "; the frozen copy was measured"
        data["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        data["runtime_seconds"] = time.perf_counter() - started
        args.output.parent.mkdir(parents=True, exist_ok=True)
        raw = args.output.with_suffix(".json")
        if any("swarmkeeper" in r for r in data["per_n"]):
            raw.write_text(json.dumps(data, indent=2, default=str) + "\n")
            args.output.write_text(render_report(data))
            log(f"report: {args.output}; raw numbers: {raw}")
        else:  # no size measured: keep the last report, say why
            log(
                "no size was measured; the last report is left as it was. "
                f"Problems: {data['problems']}"
            )
    return status


def _collect_problems(result: dict[str, Any], problems: list[str]) -> None:
    n = result["services"]
    for i, r in enumerate(result["swarmkeeper_runs"], 1):
        if r["returncode"] != 0:
            problems.append(
                f"N={n} run {i}: `swarmkeeper apply` exited {r['returncode']}: "
                f"{r['stderr_tail'].strip()[-400:]!r}"
            )
        if r["changed"]["total"]:
            problems.append(
                f"N={n} run {i}: the no-op apply changed {r['changed']} "
                f"({r['applied']})"
            )
    for i, r in enumerate(result["cli_runs"], 1):
        if r["returncode"] != 0:
            problems.append(
                f"N={n} run {i}: `docker stack deploy` exited {r['returncode']}: "
                f"{r['stderr_tail'].strip()[-400:]!r}"
            )
    if result["cold_apply"]["stderr_tail"].strip():
        lines = result["cold_apply"]["stderr_tail"].strip().splitlines()
        warnings = [line for line in lines if "warning" in line.lower()]
        if warnings:
            problems.append(
                f"N={n}: the cold apply printed warnings, e.g. {warnings[0][:300]!r}"
            )
    if not result["in_process"]["all_in_sync"]:
        problems.append(f"N={n}: make_plan did not find the stack in sync in-process")


if __name__ == "__main__":
    sys.exit(main())
