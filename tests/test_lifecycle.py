"""Pruning with guards, config and secret rotation, the ingress network, rollbacks.

Each test drives ``swarmkeeper apply`` as a process against the real swarm
and reads the outcome through the Docker SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from conftest import SwarmTestBed

pytestmark = pytest.mark.engine


def swarmkeeper(
    command: str, state: Path, *extra: str, check_status: int | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("SWARMKEEPER_")
    }
    environment["SWARMKEEPER_CONFIG"] = os.devnull
    result = subprocess.run(
        [sys.executable, "-m", "swarmkeeper", command, "--state-dir", str(state),
         "--log-format", "json", *extra],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )  # fmt: skip
    if check_status is not None:
        assert result.returncode == check_status, result.stdout + result.stderr
    return result


def service_stack(prefix: str, image: str, names: list[str], extra: str = "") -> str:
    """A compose file of small services from the runnable test image."""
    lines = ["services:"]
    for name in names:
        lines += [
            f"  {name}:",
            f"    image: {image}",
            "    command: [sleep, '3600']",
            "    stop_grace_period: 1s",
            "    deploy: {replicas: 0}",
        ]
    return "\n".join(lines) + "\n" + extra


def names_of(collection: Any, prefix: str) -> set[str]:
    return {item.name for item in collection.list() if item.name.startswith(prefix)}


# ----------------------------------------------------------------- pruning --


def test_removed_service_goes_and_mass_removals_are_held(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    p = swarm.prefix
    stacks = tmp_path / "state" / "stacks"
    stacks.mkdir(parents=True)
    for stack in ("a", "b", "c", "d"):
        (stacks / f"{p}{stack}.yml").write_text(
            service_stack(p, swarm.image, ["web", "api"])
        )
    swarmkeeper("apply", tmp_path / "state", check_status=0)
    everything = {f"{p}{s}_{n}" for s in "abcd" for n in ("web", "api")}
    assert names_of(swarm.client.services, p) == everything

    # One service of one stack leaves its file: it is removed.
    (stacks / f"{p}a.yml").write_text(service_stack(p, swarm.image, ["web"]))
    swarmkeeper("apply", tmp_path / "state", check_status=0)
    assert names_of(swarm.client.services, p) == everything - {f"{p}a_api"}

    # Three of four stacks leave: more than the cap, so nothing goes.
    for stack in ("b", "c", "d"):
        (stacks / f"{p}{stack}.yml").rename(tmp_path / f"{stack}.bak")
    plan = swarmkeeper("plan", tmp_path / "state", "--json", check_status=1)
    held = [c for c in json.loads(plan.stdout)["changes"] if c["action"] == "held"]
    assert {c["name"] for c in held} >= {
        f"{p}{s}_{n}" for s in "bcd" for n in ("web", "api")
    }
    assert "more than the cap" in held[0]["reason"]
    swarmkeeper("apply", tmp_path / "state", check_status=1)
    assert names_of(swarm.client.services, p) == everything - {f"{p}a_api"}

    # The operator confirms: then it happens.
    swarmkeeper("apply", tmp_path / "state", "--allow-mass-prune", check_status=0)
    assert names_of(swarm.client.services, p) == {f"{p}a_web"}


def test_empty_or_broken_desired_state_removes_nothing(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    p = swarm.prefix
    state = tmp_path / "state"
    (state / "stacks").mkdir(parents=True)
    compose = state / "stacks" / f"{p}.yml"
    compose.write_text(service_stack(p, swarm.image, ["web", "api"]))
    swarmkeeper("apply", state, check_status=0)
    before = {
        s.name: s.attrs["Version"]["Index"]
        for s in swarm.client.services.list()
        if s.name.startswith(p)
    }

    compose.write_text("services:\n  web: [\n")  # broken
    result = swarmkeeper("apply", state, check_status=2)
    assert "nothing was changed" in result.stderr

    compose.unlink()  # emptied stacks folder
    result = swarmkeeper("apply", state, check_status=1)
    assert "has no services at all" in result.stdout

    after = {
        s.name: s.attrs["Version"]["Index"]
        for s in swarm.client.services.list()
        if s.name.startswith(p)
    }
    assert after == before

    swarmkeeper("apply", state, "--allow-mass-prune", check_status=0)
    assert names_of(swarm.client.services, p) == set()


def test_unowned_objects_are_never_pruned(swarm: SwarmTestBed, tmp_path: Path) -> None:
    p = swarm.prefix
    state = tmp_path / "state"
    (state / "stacks").mkdir(parents=True)
    (state / "stacks" / f"{p}.yml").write_text(service_stack(p, swarm.image, ["web"]))
    by_hand = swarm.create_service("byhand", mode={"Replicated": {"Replicas": 0}})
    swarm.client.configs.create(name=swarm.name("handconf"), data=b"x")

    for _ in range(2):
        swarmkeeper("apply", state, "--allow-mass-prune", check_status=0)

    assert by_hand.name in names_of(swarm.client.services, p)
    assert swarm.name("handconf") in names_of(swarm.client.configs, p)


# ---------------------------------------------------------------- rotation --


@pytest.mark.parametrize("kind", ["configs", "secrets"])
def test_changed_file_rotates_and_the_old_version_goes_once_unreferenced(
    swarm: SwarmTestBed, tmp_path: Path, kind: str
) -> None:
    p = swarm.prefix
    folder = tmp_path / "state" / "stacks" / p
    folder.mkdir(parents=True)
    (folder / "compose.yml").write_text(
        f"services:\n  web:\n    image: {swarm.image}\n    deploy: {{replicas: 0}}\n"
        f"    {kind}: [app]\n{kind}:\n  app:\n    file: ./app.txt\n"
    )
    collection = swarm.client.configs if kind == "configs" else swarm.client.secrets
    key = "Configs" if kind == "configs" else "Secrets"
    name_key = "ConfigName" if kind == "configs" else "SecretName"

    def referenced() -> list[str]:
        spec = swarm.client.services.get(f"{p}_web").attrs["Spec"]
        return [r[name_key] for r in spec["TaskTemplate"]["ContainerSpec"].get(key, [])]

    versions = []
    for content in ("one", "two", "three", "four"):
        (folder / "app.txt").write_text(content)
        swarmkeeper("apply", tmp_path / "state", check_status=0)
        (current,) = referenced()
        versions.append(current)
    assert len(set(versions)) == 4
    assert all(v.startswith(f"{p}_app-") for v in versions)

    # A pass later (level-based), only what a rollback may need is left:
    # the current version and the one the previous spec names.
    swarmkeeper("apply", tmp_path / "state", check_status=0)
    assert names_of(collection, f"{p}_app-") == {versions[2], versions[3]}
    assert swarmkeeper("plan", tmp_path / "state").returncode == 0


# ----------------------------------------------------------------- ingress --


def test_custom_ingress_replaces_the_default_only_when_nothing_publishes(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    p = swarm.prefix
    state = tmp_path / "state"
    state.mkdir()
    (state / "networks.yml").write_text(
        f"networks:\n  {p}-ingress:\n    driver: overlay\n    ingress: true\n"
    )
    publisher = swarm.create_service(
        "web",
        mode={"Replicated": {"Replicas": 0}},
        endpoint_spec={"Ports": [{"TargetPort": 80, "PublishedPort": 29999}]},
    )
    try:
        refused = swarmkeeper("apply", state, "--recreate-networks", check_status=1)
        assert f"{publisher.name}" in refused.stdout
        assert "ingress mode" in refused.stdout
        assert swarm.client.networks.get("ingress").attrs["Ingress"] is True

        publisher.remove()
        swarm.wait_for(
            lambda: not names_of(swarm.client.services, p), what="publisher gone"
        )
        without_flag = swarmkeeper("plan", state, check_status=1)
        assert "--recreate-networks" in without_flag.stdout

        swarmkeeper("apply", state, "--recreate-networks", check_status=0)
        ingress = [n for n in swarm.client.networks.list() if n.attrs.get("Ingress")]
        assert [n.name for n in ingress] == [f"{p}-ingress"]
        assert swarmkeeper("plan", state).returncode == 0
    finally:
        _restore_default_ingress(swarm)


def _restore_default_ingress(swarm: SwarmTestBed) -> None:
    """Put the swarm's usual ingress network back for the tests that follow."""
    for network in swarm.client.networks.list():
        if network.attrs.get("Ingress") and network.name != "ingress":
            remove_it: Any = lambda n=network: _try_remove(n)  # noqa: E731
            swarm.wait_for(remove_it, what="custom ingress removed")
    try:
        swarm.client.networks.get("ingress")
    except docker.errors.NotFound:
        swarm.wait_for(_create_default_ingress(swarm), what="default ingress created")


def _try_remove(network: Any) -> bool:
    try:
        network.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True


def _create_default_ingress(swarm: SwarmTestBed) -> Any:
    def attempt() -> bool:
        try:
            swarm.client.networks.create("ingress", driver="overlay", ingress=True)
        except docker.errors.APIError:
            return False
        return True

    return attempt


# ---------------------------------------------------------------- rollback --


def test_rolled_back_update_is_reported_held_and_the_next_change_applies(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    p = swarm.prefix
    state = tmp_path / "state"
    (state / "stacks").mkdir(parents=True)
    compose = state / "stacks" / f"{p}.yml"
    template = (
        "services:\n  web:\n    image: {image}\n    command: [sleep, '3600']\n"
        "    stop_grace_period: 1s\n{env}"
        "    deploy:\n      replicas: 1\n"
        "      update_config: {{failure_action: rollback, monitor: 3s, parallelism: 1}}\n"
        "      rollback_config: {{monitor: 1s, parallelism: 1}}\n"
    )
    compose.write_text(template.format(image=swarm.image, env=""))
    swarmkeeper("apply", state, check_status=0)
    name = f"{p}_web"
    swarm.wait_for(
        lambda: len(swarm.running_tasks(name)) == 1, timeout=90, what="running"
    )

    # An image that cannot start: the engine rolls the update back.
    compose.write_text(template.format(image="swarmkeeper-test/absent:1", env=""))
    swarmkeeper("apply", state, check_status=0)

    def state_of() -> str:
        status = swarm.client.services.get(name).attrs.get("UpdateStatus") or {}
        return str(status.get("State", ""))

    swarm.wait_for(
        lambda: state_of() == "rollback_completed", timeout=120, what="rollback"
    )

    reported = swarmkeeper("plan", state, check_status=1)
    assert "record-failure" in reported.stdout
    swarmkeeper("apply", state, check_status=0)
    labels = swarm.client.services.get(name).attrs["Spec"]["Labels"]
    assert "swarmkeeper.failed-spec" in labels

    # Within the back-off the failed spec is not sent again.
    version = swarm.client.services.get(name).attrs["Version"]["Index"]
    for _ in range(2):
        held = swarmkeeper("apply", state, check_status=1)
        assert "held" in held.stdout
    service = swarm.client.services.get(name)
    assert service.attrs["Version"]["Index"] == version
    assert (
        service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == swarm.image
    )

    # The next desired change is applied normally.
    compose.write_text(
        template.format(image=swarm.image, env="    environment: [FIXED=1]\n")
    )
    swarmkeeper("apply", state, check_status=0)
    container = swarm.client.services.get(name).attrs["Spec"]["TaskTemplate"][
        "ContainerSpec"
    ]
    assert container["Env"] == ["FIXED=1"]
    assert (
        "swarmkeeper.failed-spec"
        not in swarm.client.services.get(name).attrs["Spec"]["Labels"]
    )
