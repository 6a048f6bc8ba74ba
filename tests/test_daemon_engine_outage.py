"""The daemon outlives its engine: stopped and started again under it.

The engine is a private one (its own dockerd, socket, data and swarm, see
``private_engine.py``), so stopping it leaves the rest of the suite's engine
alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import private_engine as engines
from daemon_process import (
    DaemonFactory,
    daemons_fixture,  # noqa: F401 - the ``daemons`` fixture
)

pytestmark = pytest.mark.engine

private_engine = engines.private_engine

IMAGE = "swarmkeeper-test/busybox:latest"


def desired_state(folder: Path, replicas: int) -> Path:
    (folder / "stacks").mkdir(parents=True, exist_ok=True)
    (folder / "stacks" / "app.yml").write_text(
        "services:\n"
        "  web:\n"
        f"    image: {IMAGE}\n"
        "    command: [sleep, '3600']\n"
        "    stop_grace_period: 1s\n"
        f"    deploy: {{replicas: {replicas}}}\n"
    )
    return folder


def replicas(client: Any) -> int | None:
    for service in client.services.list():
        if service.name == "app_web":
            value: int = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
            return value
    return None


def test_engine_stop_and_start_under_a_running_daemon(
    private_engine: engines.PrivateEngine,
    daemons: DaemonFactory,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    private_engine.import_image(IMAGE, docker_client)
    state = desired_state(tmp_path / "state", replicas=1)
    daemon = daemons(state, env={"DOCKER_HOST": private_engine.docker_host})
    client = private_engine.client()

    daemon.wait_for(
        lambda: replicas(client) == 1, timeout=60, what="the service created"
    )
    assert daemon.metric("swarmkeeper_engine_connected") == 1
    assert daemon.http_get("/readyz")[0] == 200

    # The engine goes away: the daemon stays, and says so.
    private_engine.stop()
    daemon.wait_for(
        lambda: daemon.metric("swarmkeeper_engine_connected") == 0,
        timeout=60,
        what="the outage reported",
    )
    assert daemon.http_get("/readyz")[0] == 503
    assert daemon.http_get("/healthz")[0] == 200

    # While it is away the desired state changes; it is converged on return.
    desired_state(state, replicas=2)
    private_engine.start()
    client = private_engine.client()
    daemon.wait_for(
        lambda: replicas(client) == 2, timeout=90, what="converged after return"
    )
    daemon.wait_for(
        lambda: daemon.metric("swarmkeeper_engine_connected") == 1,
        timeout=30,
        what="reconnected",
    )
    assert daemon.http_get("/readyz")[0] == 200
    assert daemon.running()
    assert daemon.log_events("engine.events.reconnecting") or daemon.log_events(
        "engine.events.ended"
    )
