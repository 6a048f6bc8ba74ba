"""Shared fixtures: a real engine in swarm mode, and per-test clean-up.

Tests that touch Docker use the ``swarm`` fixture. It hands out a name prefix
unique to the test (``skt`` and six hex digits, a valid stack name too) and,
when the test ends, removes every service, network, config and secret whose
name starts with it and puts every node's labels back as they were.

The Docker SDK is used here on purpose: it is an independent client, so a
test that inflicts drift or reads an outcome does not go through the code it
is checking.

Without an engine these tests are skipped, unless ``SWARMKEEPER_REQUIRE_ENGINE=1``
(CI sets it), where a missing engine fails them.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import pytest

TEST_IMAGE = "swarmkeeper-test/busybox:latest"
PREFIX_PATTERN = re.compile(r"^skt[0-9a-f]{6}")

REQUIRE_ENGINE = os.environ.get("SWARMKEEPER_REQUIRE_ENGINE") == "1"


def _unavailable(reason: str) -> None:
    message = f"{reason}; start one with: scripts/local-swarm.sh up"
    if REQUIRE_ENGINE:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _restore_garbage_collection() -> Iterator[None]:
    """Undo what ``plan``/``apply`` do to the collector when a test runs them in-process.

    Those commands switch the cycle collector off and freeze the heap, as a
    short-lived process may; the test process lives on and must collect.
    """
    yield
    gc.unfreeze()
    gc.enable()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client for an engine that is a swarm manager."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as error:
        _unavailable(f"no Docker engine reachable ({error})")

    swarm = client.info().get("Swarm", {})
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        client.close()
        _unavailable("the Docker engine is not a swarm manager")

    stale = _stale_prefixes(client)
    _remove_objects(client, lambda name: name[:9] in stale)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: Any) -> str:
    """The locally built busybox image that really runs (no registry needed)."""
    try:
        docker_client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        _unavailable(f"the test image {TEST_IMAGE} is missing")
    return TEST_IMAGE


@dataclass
class SwarmTestBed:
    """What a test needs to work on the real swarm without disturbing others."""

    client: Any
    prefix: str
    image: str
    _node_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def name(self, suffix: str) -> str:
        """An object name owned by this test, such as ``skt1a2b3c_web``."""
        return f"{self.prefix}_{suffix}"

    def create_service(self, suffix: str, **options: Any) -> Any:
        """A service that starts fast and stops fast, from the local image."""
        options.setdefault("command", ["sleep", "3600"])
        options.setdefault("stop_grace_period", 1_000_000_000)
        return self.client.services.create(
            self.image, name=self.name(suffix), **options
        )

    def wait_for(
        self, condition: Callable[[], bool], *, timeout: float = 60.0, what: str = ""
    ) -> None:
        """Poll ``condition`` until it holds; fail the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout:g}s waiting for {what or condition}"
                )
            time.sleep(0.2)

    def running_tasks(self, service_name: str) -> list[dict[str, Any]]:
        """Tasks of the service whose state is really ``running``."""
        service = self.client.services.get(service_name)
        return [
            task for task in service.tasks() if task["Status"]["State"] == "running"
        ]


@pytest.fixture
def swarm(docker_client: Any, test_image: str) -> Iterator[SwarmTestBed]:
    """A per-test prefix on the real swarm, cleaned up afterwards."""
    prefix = "skt" + secrets.token_hex(3)
    bed = SwarmTestBed(client=docker_client, prefix=prefix, image=test_image)
    bed._node_labels = {
        node.id: dict(node.attrs["Spec"].get("Labels") or {})
        for node in docker_client.nodes.list()
    }

    yield bed

    _remove_objects(docker_client, lambda name: name.startswith(prefix))
    _restore_node_labels(docker_client, bed._node_labels)


# A test's objects older than this were left by a run that died; younger ones
# may belong to a test session running right now beside this one.
STALE_AFTER_SECONDS = 20 * 60


def _stale_prefixes(client: Any) -> set[str]:
    """Test prefixes whose newest object is older than STALE_AFTER_SECONDS."""
    newest: dict[str, datetime] = {}
    objects = [
        *((s.name, s.attrs.get("CreatedAt")) for s in client.services.list()),
        *((c.name, c.attrs.get("CreatedAt")) for c in client.configs.list()),
        *((c.name, c.attrs.get("CreatedAt")) for c in client.secrets.list()),
        *((n.name, n.attrs.get("Created")) for n in client.networks.list()),
    ]
    for name, created in objects:
        if not PREFIX_PATTERN.match(name) or not created:
            continue
        when = datetime.fromisoformat(str(created)[:26].rstrip("Z") + "+00:00")
        prefix = name[:9]
        newest[prefix] = max(newest.get(prefix, when), when)
    cutoff = datetime.now(UTC) - timedelta(seconds=STALE_AFTER_SECONDS)
    return {prefix for prefix, when in newest.items() if when < cutoff}


def _remove_objects(client: Any, owned: Callable[[str], bool]) -> None:
    """Remove services first: networks stay busy while their tasks wind down."""
    for service in client.services.list():
        if owned(service.name):
            _ignore_missing(service.remove)

    for collection in (client.configs, client.secrets):
        for item in collection.list():
            if owned(item.name):
                _ignore_missing(item.remove)

    networks = [n for n in client.networks.list() if owned(n.name)]
    deadline = time.monotonic() + 30
    while networks:
        still_busy = []
        for network in networks:
            try:
                network.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                still_busy.append(network)
        networks = still_busy
        if networks and time.monotonic() > deadline:
            names = ", ".join(n.name for n in networks)
            raise RuntimeError(f"test networks still in use after 30s: {names}")
        if networks:
            time.sleep(0.5)


def _restore_node_labels(
    client: Any, labels_by_node: dict[str, dict[str, str]]
) -> None:
    """Put every node's labels back; node versions move all the time, so retry."""
    for node in client.nodes.list():
        before = labels_by_node.get(node.id)
        if before is None:
            continue
        for _ in range(20):
            node.reload()
            spec = dict(node.attrs["Spec"])
            if dict(spec.get("Labels") or {}) == before:
                break
            spec["Labels"] = before
            try:
                node.update(spec)
            except docker.errors.APIError as error:
                if "out of sequence" not in str(error):
                    raise
                time.sleep(0.1)  # the engine wrote the node meanwhile: read again
                continue
            break
        else:
            raise RuntimeError(f"node {node.id}: labels not restored after 20 tries")


def _ignore_missing(remove: Callable[[], Any]) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        remove()
