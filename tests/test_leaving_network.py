"""A network removed by hand that the engine has not finished removing.

The engine keeps a removed overlay network on a node until the last task
container attached to it there has stopped. Meanwhile ``GET /networks``
still lists it, a service naming it is refused and a new network of its
name too. swarmkeeper tells such an entry from the swarm's own networks
(``swarmkeeper.live.split_leaving_networks``) and waits instead of failing.

The engine tests make that window long on purpose: the holder service's
task runs ``sleep`` as process 1, which ignores SIGTERM, with a stop grace
period of LINGER, so its container (and with it the network) stays for
LINGER seconds after the service is removed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from conftest import SwarmTestBed
from daemon_process import (
    DaemonFactory,
    daemons_fixture,  # noqa: F401 - the ``daemons`` fixture
    metric_key,
)
from swarmkeeper.live import split_leaving_networks
from swarmkeeper.planning import WAITING
from test_daemon import ACTIONS, service_spec, swarmkeeper_cli, write_state

LINGER = 20  # seconds the removed network stays listed on this node

# -------------------------------------------------- telling the entries apart --


def entry(name: str, *, local: bool) -> dict[str, Any]:
    """A swarm-scope network as ``GET /networks`` lists it on a manager."""
    network: dict[str, Any] = {"Name": name, "Id": f"id-{name}", "Scope": "swarm"}
    if local:
        network["Peers"] = [{"Name": "node-a", "IP": "10.0.0.2"}]
    return network


def test_entries_with_peers_are_leaving_when_the_swarm_answered() -> None:
    listed = [entry("ingress", local=False), entry("web", local=True)]
    stored, leaving = split_leaving_networks(listed)
    assert [n["Name"] for n in stored] == ["ingress"]
    assert [n["Name"] for n in leaving] == ["web"]


def test_without_any_entry_of_the_swarm_nothing_is_taken_for_gone() -> None:
    # A manager without quorum lists only its own copies, all with Peers.
    listed = [entry("ingress", local=True), entry("web", local=True)]
    stored, leaving = split_leaving_networks(listed)
    assert stored == listed
    assert leaving == []


# ----------------------------------------------------------- the real engine --


def holder_state(root: Path, swarm: SwarmTestBed) -> tuple[Path, str, str]:
    """A network in networks.yml and one running service of a stack joining it."""
    p = swarm.prefix
    network = f"{p}-held"
    stack = (
        "services:\n"
        "  holder:\n"
        f"    image: {swarm.image}\n"
        "    command: [sleep, '3600']\n"
        f"    stop_grace_period: {LINGER}s\n"
        "    deploy: {replicas: 1}\n"
        f"    networks: [{network}]\n"
        f"networks:\n  {network}:\n    external: true\n"
    )
    state = write_state(root, prefix=p, stack=stack, networks=[network])
    return state, network, swarm.name("holder")


def listed(swarm: SwarmTestBed, name: str) -> list[dict[str, Any]]:
    return [n for n in swarm.client.api.networks(names=[name]) if n["Name"] == name]


def remove_by_hand(swarm: SwarmTestBed, service: str, network: str) -> None:
    """What a person does: the service, then its network, as soon as allowed."""
    swarm.client.services.get(service).remove()
    deadline = time.monotonic() + 30
    while True:
        # The engine refuses while the service's tasks still hold the network
        # in the swarm's books; it accepts within a moment.
        try:
            swarm.client.networks.get(network, scope="swarm").remove()
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g}s for {what}")
        time.sleep(0.2)


def plan_json(state: Path) -> tuple[int, dict[str, Any]]:
    result = swarmkeeper_cli("plan", "--json", "--state-dir", str(state))
    return result.returncode, json.loads(result.stdout)


@pytest.mark.engine
def test_plan_and_apply_wait_for_the_engine_to_let_go(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    state, network, holder = holder_state(tmp_path / "state", swarm)
    applied = swarmkeeper_cli("apply", "--state-dir", str(state))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    wait_for(
        lambda: len(swarm.running_tasks(holder)) == 1, timeout=60, what="the holder"
    )

    remove_by_hand(swarm, holder, network)
    # The engine behaviour this is about: gone from the swarm, still listed.
    entries = listed(swarm, network)
    assert entries, "the engine no longer lists the removed network"
    assert all("Peers" in n for n in entries), entries

    status, document = plan_json(state)
    assert status == 1
    assert [(c["kind"], c["name"], c["action"]) for c in document["changes"]] == [
        ("network", network, WAITING),
        ("service", holder, WAITING),
    ]

    # apply writes nothing, fails nothing, and says to come back.
    waited = swarmkeeper_cli("apply", "--state-dir", str(state))
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert "0 writes, 0 failed, 2 left alone" in waited.stdout
    assert "failed" not in waited.stderr

    wait_for(
        lambda: not listed(swarm, network),
        timeout=LINGER + 30,
        what="the engine to let go of the network",
    )
    status, document = plan_json(state)
    assert status == 1
    assert [(c["name"], c["action"]) for c in document["changes"]] == [
        (network, "create"),
        (holder, "create"),
    ]
    applied = swarmkeeper_cli("apply", "--state-dir", str(state))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert [n.get("Peers") for n in listed(swarm, network)] == [None]
    assert service_spec(swarm.client, holder) is not None


@pytest.mark.engine
def test_the_daemon_converges_once_the_engine_lets_go(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    state, network, holder = holder_state(tmp_path / "state", swarm)
    first = daemons(state, resync_interval=300)
    wait_for(
        lambda: len(swarm.running_tasks(holder)) == 1, timeout=60, what="the holder"
    )
    first_id = swarm.client.services.get(holder).id
    # A running daemon would re-create the service before its network could
    # be removed: the removal happens while none runs, and the next daemon
    # starts inside the window where the engine still lists the network.
    first.stop()
    remove_by_hand(swarm, holder, network)
    assert listed(swarm, network), "the engine no longer lists the removed network"

    removed_at = time.monotonic()
    daemon = daemons(state, resync_interval=300)
    assert daemon.status()["objects"], "no status after the first pass"
    daemon.wait_for(
        lambda: (
            service_spec(swarm.client, holder) is not None
            and swarm.client.services.get(holder).id != first_id
        ),
        timeout=LINGER + 60,
        what="the daemon to create the network and the service again",
    )
    print(f"back {time.monotonic() - removed_at:.1f} s after the removal")

    # It waited for the engine; it did not try, fail and retry.
    waiting = [r for r in daemon.logs() if r.get("event") == "reconcile.finished"]
    assert len(waiting) >= 2, "the network came back without a pass looking again"
    samples = daemon.metrics()
    for kind in ("network", "service"):
        created = metric_key(ACTIONS, kind=kind, action="create", result="success")
        failed = metric_key(ACTIONS, kind=kind, action="create", result="failure")
        assert samples.get(created) == 1, kind
        assert samples.get(failed, 0) == 0, kind
    assert not [r for r in daemon.logs() if r.get("event") == "reconcile.retrying"]
    assert [n.get("Peers") for n in listed(swarm, network)] == [None]
