"""Benchmark: from a webhook call to the change in the swarm, with git.

The script makes a bare repository on disk and a working clone, commits a
stack of --services services (``replicas: 0``, so the engine schedules no
task) and starts ``swarmkeeper run`` following it by ``file://`` URL with a
300 s fetch interval and the webhook on loopback, so only the webhook can
explain a fetch. Then, --rounds times: commit a change of one service's
environment (a new value each round), push, call ``POST /hooks/git`` with a
GitHub-style signature, and poll the service's spec through the Docker SDK
(an independent client) every --poll-ms until it holds the new value. The
latency is from the webhook call to that moment. The next round starts once
the daemon has deployed the commit and passed once more with nothing to do.

It writes a Markdown report and the raw numbers as JSON, and removes what it
created. Like the other benchmarks it must not run beside the test suite: a
daemon acts on the whole swarm.

Run from the repository root, with DOCKER_HOST naming the engine:
    .venv/bin/python benchmarks/git_webhook_latency.py --rounds 20
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemon_process import DaemonProcess, free_port  # noqa: E402
from gitrepo import GitRemote  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "git-webhook-latency.md"
IMAGE = "swarmkeeper-test/busybox:latest"


def stack_text(prefix: str, count: int, value: int) -> str:
    blocks = []
    for index in range(count):
        env = f"    environment: {{ROUND: '{value}'}}\n" if index == 0 else ""
        blocks.append(
            f"  s{index}:\n    image: {IMAGE}\n    command: [sleep, '3600']\n"
            f"{env}    deploy: {{replicas: 0}}\n"
        )
    return "services:\n" + "".join(blocks)


def env_of(client: Any, name: str) -> list[str]:
    spec = client.api.inspect_service(name)["Spec"]
    return list(spec["TaskTemplate"]["ContainerSpec"].get("Env") or [])


def post_hook(address: str, secret: bytes) -> int:
    body = b'{"ref": "refs/heads/main"}'
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://{address}/hooks/git",
        data=body,
        headers={"X-Hub-Signature-256": f"sha256={signature}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return int(reply.status)


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args()

    client = docker.from_env(timeout=60)
    prefix = "gwh" + secrets.token_hex(3)
    secret = secrets.token_hex(16).encode()
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="skgit") as folder:
        root = Path(folder)
        remote = GitRemote(root / "repo")
        remote.commit(
            {f"stacks/{prefix}.yml": stack_text(prefix, arguments.services, 0)}
        )
        hook = f"127.0.0.1:{free_port()}"
        daemon = DaemonProcess(
            None,
            root / "daemon",
            env={
                "SWARMKEEPER_GIT_URL": remote.url,
                "SWARMKEEPER_CACHE_DIR": str(root / "cache"),
                "SWARMKEEPER_GIT_INTERVAL": "300",
                "SWARMKEEPER_WEBHOOK_ADDR": hook,
                "SWARMKEEPER_GIT_WEBHOOK_SECRET": secret.decode(),
            },
        )
        try:
            daemon.start().wait_ready()
            target = f"{prefix}_s0"
            wait(
                lambda: (
                    len(client.services.list(filters={"name": prefix}))
                    == arguments.services
                ),
                120,
                "the first deploy",
            )
            for value in range(1, arguments.rounds + 1):
                sha = remote.commit(
                    {
                        f"stacks/{prefix}.yml": stack_text(
                            prefix, arguments.services, value
                        )
                    }
                )
                called = time.monotonic()
                assert post_hook(hook, secret) == 202
                wanted = f"ROUND={value}"
                while wanted not in env_of(client, target):
                    if time.monotonic() - called > 60:
                        raise TimeoutError(f"round {value}")
                    time.sleep(arguments.poll_ms / 1000)
                latencies.append(time.monotonic() - called)
                passes = len(daemon.passes())
                wait(
                    lambda sha=sha, passes=passes: (
                        (daemon.status().get("git") or {}).get("revision") == sha
                        and len(daemon.passes()) > passes
                    ),
                    30,
                    "the daemon to settle",
                )
        finally:
            daemon.close()
            for service in client.services.list(filters={"name": prefix}):
                service.remove()
            for network in client.networks.list(names=[f"{prefix}_default"]):
                network.remove()

    milliseconds = sorted(x * 1000 for x in latencies)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "engine": client.version().get("Version"),
        "services": arguments.services,
        "rounds": arguments.rounds,
        "latency_ms": milliseconds,
        "median_ms": statistics.median(milliseconds),
        "p95_ms": milliseconds[max(0, int(len(milliseconds) * 0.95) - 1)],
        "max_ms": milliseconds[-1],
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.with_suffix(".json").write_text(json.dumps(document, indent=2))
    arguments.output.write_text(
        "# Webhook to swarm latency with git\n\n"
        f"{document['when']}, engine {document['engine']}, {arguments.services} "
        f"services, {arguments.rounds} rounds, `file://` repository, one "
        "service's environment changed per commit. Time from the webhook call "
        "to the engine holding the new spec (polled every "
        f"{arguments.poll_ms:g} ms).\n\n"
        f"| median | p95 | max | target |\n| --- | --- | --- | --- |\n"
        f"| {document['median_ms']:.0f} ms | {document['p95_ms']:.0f} ms | "
        f"{document['max_ms']:.0f} ms | under 1,000 ms |\n"
    )
    print(arguments.output.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
