"""The engine adapter against the real engine: reads, and failures by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmTestBed
from swarmkeeper.engine import Engine, EngineUnreachable
from swarmkeeper.live import read_live_state

pytestmark = pytest.mark.engine


async def test_service_created_by_hand_is_read_back(swarm: SwarmTestBed) -> None:
    swarm.create_service(
        "web",
        mode={"Replicated": {"Replicas": 2}},
        env=["GREETING=hello"],
        labels={"purpose": "read-back"},
    )

    async with Engine.connect() as engine:
        services = await engine.list_services()

    by_name = {service["Spec"]["Name"]: service for service in services}
    spec = by_name[swarm.name("web")]["Spec"]
    assert spec["Labels"] == {"purpose": "read-back"}
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Image"] == swarm.image
    assert container["Env"] == ["GREETING=hello"]
    assert container["Command"] == ["sleep", "3600"]


async def test_service_from_the_test_image_really_runs(swarm: SwarmTestBed) -> None:
    swarm.create_service("runner")

    swarm.wait_for(
        lambda: len(swarm.running_tasks(swarm.name("runner"))) == 1,
        what="one running task",
    )

    async with Engine.connect() as engine:
        names = {service["Spec"]["Name"] for service in await engine.list_services()}
    assert swarm.name("runner") in names


async def test_networks_and_nodes_are_listed(
    swarm: SwarmTestBed, docker_client: Any
) -> None:
    docker_client.networks.create(
        swarm.name("overlay"), driver="overlay", scope="swarm"
    )

    async with Engine.connect() as engine:
        networks = await engine.list_networks()
        nodes = await engine.list_nodes()
        info = await engine.info()
        version = await engine.version()

    overlay = {n["Name"]: n for n in networks}[swarm.name("overlay")]
    assert overlay["Driver"] == "overlay"
    assert overlay["Scope"] == "swarm"
    assert info["Swarm"]["NodeID"] in {node["ID"] for node in nodes}
    assert version["ApiVersion"]


async def test_adapter_speaks_the_engines_own_api_version(docker_client: Any) -> None:
    # A lower version would make the engine drop newer spec fields silently.
    async with Engine.connect() as engine:
        await engine.version()
        assert engine.api_version == "v" + docker_client.version()["ApiVersion"]


async def test_missing_socket_is_reported_as_unreachable(tmp_path: Path) -> None:
    async with Engine.connect(
        f"unix://{tmp_path}/no-engine.sock", call_timeout=5
    ) as engine:
        with pytest.raises(EngineUnreachable, match="list services"):
            await engine.list_services()


def count_requests(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests ``engine`` sends from now on, in order."""
    asked: list[str] = []
    docker = engine._docker
    query = docker._do_query

    async def counting(path: Any, method: str, **options: Any) -> Any:
        asked.append(str(path))
        return await query(path, method, **options)

    monkeypatch.setattr(docker, "_do_query", counting)
    return asked


async def test_concurrent_first_calls_ask_for_the_api_version_once(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiodocker asks GET /version in every call made before it knows the
    # version; the six concurrent reads of a pass asked six times.
    async with Engine.connect() as engine:
        asked = count_requests(engine, monkeypatch)
        live = await read_live_state(engine)
        assert engine.api_version == "v" + docker_client.version()["ApiVersion"]

    assert live.node_id
    assert asked.count("version") == 1
    assert sorted(asked) == [
        "configs", "info", "networks", "nodes", "secrets", "services", "version"
    ]  # fmt: skip


async def test_a_known_node_id_spares_the_info_call_and_reads_the_same_leadership(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Engine.connect() as engine:
        first = await read_live_state(engine)
        asked = count_requests(engine, monkeypatch)
        known = await read_live_state(engine, node_id=first.node_id)
        assert "info" not in asked

        # An ID the node list does not hold (the engine joined a swarm again
        # since it was read) is not trusted: /info is asked after all.
        asked.clear()
        stale = await read_live_state(engine, node_id="not-a-node-of-this-swarm")
        assert asked.count("info") == 1

    own_id = docker_client.info()["Swarm"]["NodeID"]
    for live in (first, known, stale):
        assert live.node_id == own_id
        assert live.leadership == first.leadership
        assert live.is_leader  # the suite's engine is a single-node swarm
