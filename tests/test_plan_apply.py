"""``swarmkeeper plan`` and ``apply`` as real processes, against the real engine.

Each test copies the seed's desired state (``desired-state/``) renamed to the
test's prefix, runs swarmkeeper as an operator would, and reads the outcome
through the Docker SDK only: what the engine holds, its version indexes and
its task IDs. Drift is made with the ``docker`` CLI, as a person makes it.
Which API calls swarmkeeper made is never asserted; what the engine holds is.

Networks have no version in the API (they cannot be updated, only removed and
created again), so a network's ID and creation time stand in for its version.

``apply`` works on the whole swarm, not on one prefix: these tests wait for a
swarm on which swarmkeeper owns nothing but the test's own objects (another
run's owned objects would be pruned, or held with exit status 1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SwarmTestBed

pytestmark = pytest.mark.engine

SEED = Path(__file__).parent.parent / "desired-state"
SEED_STACK = "t8g1"
DOCKER = shutil.which("docker", path="/usr/local/bin") or "docker"
MANAGED = "swarmkeeper.managed"
MANAGED_NODE_LABELS = "swarmkeeper.managed-labels"
NAMESPACE = "com.docker.stack.namespace"
ROLES = ("registry", "proxy", "hugo")  # the seed's node labels, one per service
# Answers of the engine a person meets with "try again in a moment".
RETRY_WHEN = ("update out of sequence", "is in use by", "has active endpoints")

Snapshot = dict[str, dict[str, Any]]


# -- running swarmkeeper --------------------------------------------------------


def run_swarmkeeper(
    command: str,
    state_dir: Path,
    *arguments: str,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One ``swarmkeeper`` process, with no ``SWARMKEEPER_*`` setting inherited.

    ``base_env`` replaces the inherited environment entirely (compose files
    interpolate from it); ``env`` is added on top.
    """
    source = os.environ if base_env is None else base_env
    environment = {k: v for k, v in source.items() if not k.startswith("SWARMKEEPER_")}
    environment["SWARMKEEPER_CONFIG"] = os.devnull
    environment.update(env or {})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmkeeper",
            command,
            "--state-dir",
            str(state_dir),
            "--log-format",
            "json",
            *arguments,
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=state_dir.parent,
        timeout=120,
        check=False,
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit status {result.returncode}\n--- stdout:\n{result.stdout}"
        f"--- stderr:\n{result.stderr}"
    )


def expect_status(
    result: subprocess.CompletedProcess[str], status: int
) -> subprocess.CompletedProcess[str]:
    assert result.returncode == status, shown(result)
    assert "Traceback" not in result.stderr, shown(result)
    return result


def plan_document(state_dir: Path, **options: Any) -> dict[str, Any]:
    result = run_swarmkeeper("plan", state_dir, "--json", **options)
    assert result.returncode in (0, 1), shown(result)
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["in_sync"] == (result.returncode == 0), shown(result)
    return document


def writes_reported(result: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"^Applied: (\d+) writes?,", result.stdout, re.MULTILINE)
    assert found, f"apply did not say how many writes it made:\n{shown(result)}"
    return int(found.group(1))


def docker_cli(*arguments: str) -> None:
    """The docker CLI, as a person at a manager types it.

    Like a person, it tries again when the engine wrote in between its read
    and its write (the allocator does, right after a service changes), or
    when a network is still in use by the tasks of a service just removed.
    """
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(
            [DOCKER, *arguments],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        busy = any(text in result.stderr for text in RETRY_WHEN)
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result.returncode == 0, f"docker {' '.join(arguments)}:\n{result.stderr}"


# -- reading the engine ---------------------------------------------------------


def snapshot(client: Any, prefix: str) -> Snapshot:
    """Versions of everything the test owns, and every node's spec."""
    api = client.api
    return {
        "services": {
            s["Spec"]["Name"]: s["Version"]["Index"]
            for s in api.services()
            if s["Spec"]["Name"].startswith(prefix)
        },
        "networks": {
            n["Name"]: (n["Id"], n["Created"], n.get("Labels"))
            for n in api.networks()
            if n["Name"].startswith(prefix)
        },
        "configs": {
            c["Spec"]["Name"]: c["Version"]["Index"]
            for c in api.configs()
            if c["Spec"]["Name"].startswith(prefix)
        },
        "secrets": {
            s["Spec"]["Name"]: s["Version"]["Index"]
            for s in api.secrets()
            if s["Spec"]["Name"].startswith(prefix)
        },
        # A node's version moves with the engine's own writes (network
        # attachments change while the seed's unrunnable tasks are retried),
        # so nodes are compared by their spec; swarmkeeper only writes specs.
        "nodes": {n["ID"]: n["Spec"] for n in api.nodes()},
    }


def wait_until_stable(
    swarm: SwarmTestBed, *, quiet: float = 1.0, timeout: float = 60.0
) -> Snapshot:
    """A snapshot that stayed the same for ``quiet`` seconds.

    The engine writes on its own after a change (the allocator fills in
    endpoints, the updater records progress); a comparison of versions must
    start after those writes.
    """
    deadline = time.monotonic() + timeout
    current = snapshot(swarm.client, swarm.prefix)
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            pytest.fail(f"the engine kept writing for {timeout:g}s: {current}")
        time.sleep(0.2)
        latest = snapshot(swarm.client, swarm.prefix)
        if latest != current:
            current, since = latest, time.monotonic()
    return current


def wait_for_engine(
    condition: Callable[[], bool], *, what: str, timeout: float = 60.0
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g}s for {what}")
        time.sleep(0.2)


def foreign_owned(client: Any, prefix: str) -> list[str]:
    """What swarmkeeper owns on the swarm that this test did not make.

    ``apply`` works on the whole swarm: an owned object it does not find in the
    test's desired state is a candidate for removal (and a prune guard holding
    it back makes the exit status 1). So these tests need a swarm where
    swarmkeeper owns nothing but theirs, and must not remove anyone else's.
    """
    api = client.api
    managed = {"label": f"{MANAGED}=true"}
    found = [f"service {s['Spec']['Name']}" for s in api.services(filters=managed)] + [
        f"network {n['Name']}" for n in api.networks(filters=managed)
    ]
    found += [f"config {c['Spec']['Name']}" for c in api.configs(filters=managed)]
    found += [f"secret {s['Spec']['Name']}" for s in api.secrets(filters=managed)]
    found = [item for item in found if not item.split(" ", 1)[1].startswith(prefix)]
    found += [
        f"node {n['Description']['Hostname']} (labels managed elsewhere)"
        for n in api.nodes()
        if MANAGED_NODE_LABELS in (n["Spec"].get("Labels") or {})
    ]
    return found


def require_swarm_to_ourselves(swarm: SwarmTestBed, timeout: float = 60.0) -> None:
    """Wait until swarmkeeper owns nothing on the swarm; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while found := foreign_owned(swarm.client, swarm.prefix):
        if time.monotonic() > deadline:
            listed = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
            pytest.fail(
                f"the swarm holds objects swarmkeeper owns that this test did not "
                f"make ({listed}); apply is swarm-wide and would take them into "
                "account (or remove them): run these tests on a swarm of their own",
                pytrace=False,
            )
        time.sleep(1)


@pytest.fixture(autouse=True)
def _swarm_to_ourselves(request: pytest.FixtureRequest) -> None:
    if "swarm" in request.fixturenames:
        require_swarm_to_ourselves(request.getfixturevalue("swarm"))


def service_spec(client: Any, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = client.api.inspect_service(name)["Spec"]
    return spec


def container_spec(client: Any, name: str) -> dict[str, Any]:
    container: dict[str, Any] = service_spec(client, name)["TaskTemplate"][
        "ContainerSpec"
    ]
    return container


def node_labels(client: Any, hostname: str) -> dict[str, str]:
    for node in client.api.nodes():
        if node["Description"]["Hostname"] == hostname:
            return dict(node["Spec"].get("Labels") or {})
    raise AssertionError(f"no node {hostname!r} in the swarm")


def service_exists(client: Any, name: str) -> bool:
    return any(s["Spec"]["Name"] == name for s in client.api.services())


def network_exists(client: Any, name: str) -> bool:
    return any(n["Name"] == name for n in client.api.networks(names=[name]))


# -- the seed's desired state, renamed for one test -----------------------------


@dataclass(frozen=True)
class Seed:
    """``desired-state/`` copied for one test: objects named with its prefix."""

    state_dir: Path
    prefix: str
    hostname: str  # the local node
    absent_host: str  # named in nodes.yml, not in the swarm

    @property
    def stack_file(self) -> Path:
        return self.state_dir / "stacks" / f"{self.prefix}.yml"

    @property
    def nodes_file(self) -> Path:
        return self.state_dir / "nodes.yml"

    def service(self, short: str) -> str:
        return f"{self.prefix}_{short}"

    @property
    def services(self) -> list[str]:
        return [self.service(role) for role in ROLES]

    def network(self, short: str) -> str:
        return f"{self.prefix}-{short}-overlay"

    @property
    def networks(self) -> list[str]:
        return [self.network("registry"), self.network("squid")]

    def names(self) -> dict[str, str]:
        """Names to fill the drift templates with."""
        return {
            **{role: self.service(role) for role in ROLES},
            **{f"{role}_label": self.label(role) for role in ROLES},
            "registry_network": self.network("registry"),
            "node": self.hostname,
        }

    def label(self, role: str) -> str:
        """The node label key a placement constraint needs, unique to the test."""
        return f"{self.prefix}-{role}"

    def write_nodes(self, labels: Mapping[str, str]) -> None:
        lines = ["nodes:", f"  {self.hostname}:", "    labels:"]
        lines += [f"      {key}: {value}" for key, value in labels.items()]
        lines += [f"  {self.absent_host}:", "    labels:"]
        lines += [f"      {self.label('proxy')}: true"]
        self.nodes_file.write_text("\n".join(lines) + "\n")


def copy_seed(tmp_path: Path, prefix: str, hostname: str) -> Seed:
    """The seed as ``<tmp>/state``, renamed so the ``swarm`` fixture cleans it up.

    The custom ingress network is left out (replacing the swarm's ingress
    network is a later issue), and node labels go to the local node under
    keys unique to the test, with the constraints rewritten to match.

    The seed's images are not on the test bed (no registry), so its tasks
    fail. A rolling update whose new task fails is paused by the engine
    (``failure_action: pause``, the default), and a paused service is left to
    a person by design; the copy says ``failure_action: continue`` so that a
    person's change and apply's correction both go through here as they would
    on a cluster whose images run.
    """
    state_dir = tmp_path / "state"
    (state_dir / "stacks").mkdir(parents=True)
    seed = Seed(state_dir, prefix, hostname, absent_host=f"{prefix}-absent-vm")
    shutil.copy(SEED / "policy.yml", state_dir / "policy.yml")

    networks = yaml.safe_load((SEED / "networks.yml").read_text())["networks"]
    ingress = [name for name, network in networks.items() if network.get("ingress")]
    assert ingress == [f"{SEED_STACK}-ingress"], "the seed changed: review this test"
    renamed = {
        name.replace(f"{SEED_STACK}-", f"{prefix}-"): network
        for name, network in networks.items()
        if name not in ingress
    }
    assert sorted(renamed) == sorted(seed.networks)
    with (state_dir / "networks.yml").open("w") as out:
        yaml.safe_dump({"networks": renamed}, out)

    text = (SEED / "stacks" / f"{SEED_STACK}.yml").read_text()
    compose = yaml.safe_load(text.replace(f"{SEED_STACK}-", f"{prefix}-"))
    assert sorted(compose["services"]) == sorted(ROLES), "the seed changed"
    for role, service in compose["services"].items():
        deploy = service["deploy"]
        constraint = f"node.labels.{role}==true"
        assert deploy["placement"]["constraints"] == [constraint], "the seed changed"
        deploy["placement"]["constraints"] = [f"node.labels.{seed.label(role)}==true"]
        deploy["update_config"] = {"failure_action": "continue"}
    with seed.stack_file.open("w") as out:
        yaml.safe_dump(compose, out)

    seed.write_nodes({seed.label(role): "true" for role in ROLES})
    return seed


@pytest.fixture
def seed(swarm: SwarmTestBed, tmp_path: Path) -> Seed:
    return copy_seed(tmp_path, swarm.prefix, swarm.client.info()["Name"])


@pytest.fixture
def applied(seed: Seed, swarm: SwarmTestBed) -> Seed:
    """The seed applied once, the engine's own writes settled."""
    expect_status(run_swarmkeeper("apply", seed.state_dir), 0)
    wait_until_stable(swarm, quiet=0.3)
    return seed


def edit_stack(seed: Seed, edit: Callable[[dict[str, Any]], None]) -> None:
    document = yaml.safe_load(seed.stack_file.read_text())
    edit(document)
    with seed.stack_file.open("w") as out:
        yaml.safe_dump(document, out)


# -- 1. from nothing, then nothing to do ----------------------------------------


def test_apply_builds_the_seed_and_a_second_apply_writes_nothing(
    seed: Seed, swarm: SwarmTestBed
) -> None:
    client = swarm.client
    before = snapshot(client, swarm.prefix)
    assert before["services"] == {}
    assert before["networks"] == {}

    first = expect_status(run_swarmkeeper("apply", seed.state_dir), 0)
    assert writes_reported(first) == 6, shown(first)  # 2 networks, 1 node, 3 services

    for name in seed.networks:
        network = client.api.inspect_network(name, scope="swarm")
        assert network["Driver"] == "overlay"
        assert network["Attachable"] is True
        assert network["Labels"].get(MANAGED) == "true"
    labels = node_labels(client, seed.hostname)
    for role in ROLES:
        assert labels.get(seed.label(role)) == "true", labels

    network_ids = {
        name: client.api.inspect_network(name, scope="swarm")["Id"]
        for name in seed.networks
    }
    expected = {
        "registry": ("registry:2", "registry", 5000, 5000),
        "proxy": ("ubuntu/squid:latest", "squid", 8888, 3128),
        "hugo": ("klakegg/hugo:ubuntu", "squid", 1313, 1313),
    }
    for role, (image, network, published, target) in expected.items():
        spec = service_spec(client, seed.service(role))
        assert spec["Labels"][NAMESPACE] == swarm.prefix
        assert spec["Labels"][MANAGED] == "true"
        template = spec["TaskTemplate"]
        assert template["ContainerSpec"]["Image"] == image
        assert template["Placement"]["Constraints"] == [
            f"node.labels.{seed.label(role)}==true"
        ]
        assert [n["Target"] for n in template["Networks"]] == [
            network_ids[seed.network(network)]
        ]
        assert [
            (p["PublishedPort"], p["TargetPort"]) for p in spec["EndpointSpec"]["Ports"]
        ] == [(published, target)]
        assert spec["Mode"] == {"Replicated": {"Replicas": 1}}

    plan = expect_status(run_swarmkeeper("plan", seed.state_dir), 0)
    assert "The swarm matches the desired state." in plan.stdout
    assert f"{seed.absent_host!r}, which is not in the swarm" in plan.stdout

    stable = wait_until_stable(swarm)
    again = expect_status(run_swarmkeeper("apply", seed.state_dir), 0)
    assert writes_reported(again) == 0, shown(again)
    assert snapshot(client, swarm.prefix) == stable


# -- 2. drift, shown by plan and undone by apply --------------------------------


@dataclass(frozen=True)
class Drift:
    """What a person does, what plan must say about it, and what apply restores.

    Commands, subject and path are templates over :meth:`Seed.names`.
    """

    id: str
    commands: tuple[tuple[str, ...], ...]  # docker CLI commands, one after another
    kind: str
    subject: str  # the object's name in the plan
    action: str
    path: str | None  # the one field that differs
    restored: Callable[[Any, Seed], bool]  # the engine holds the desired value
    # Other changes the person's commands call for: (kind, subject, action).
    also: tuple[tuple[str, str, str], ...] = ()
    # The engine has finished what the commands started. A removed overlay
    # network stays listed on a node until its last task container there has
    # stopped (up to the stop grace period), so plan may only be asked after.
    settled: Callable[[Any, Seed], bool] | None = None


def _mode(client: Any, seed: Seed) -> bool:
    spec = service_spec(client, seed.service("registry"))
    return bool(spec["Mode"] == {"Replicated": {"Replicas": 1}})


def _environment(client: Any, seed: Seed) -> bool:
    env = container_spec(client, seed.service("proxy"))["Env"]
    return bool(env == ["TZ=Europe/Copenhagen"])


def _image(client: Any, seed: Seed) -> bool:
    return bool(
        container_spec(client, seed.service("registry"))["Image"] == "registry:2"
    )


def _constraints(client: Any, seed: Seed) -> bool:
    placement = service_spec(client, seed.service("hugo"))["TaskTemplate"]["Placement"]
    return bool(placement["Constraints"] == [f"node.labels.{seed.label('hugo')}==true"])


def _ports(client: Any, seed: Seed) -> bool:
    ports = service_spec(client, seed.service("hugo"))["EndpointSpec"]["Ports"]
    return [(p.get("PublishedPort"), p["TargetPort"]) for p in ports] == [(1313, 1313)]


def _mounts(client: Any, seed: Seed) -> bool:
    mounts = container_spec(client, seed.service("hugo"))["Mounts"]
    return [m["Target"] for m in mounts] == ["/src"]


def _owned_service(client: Any, name: str) -> bool:
    if not service_exists(client, name):
        return False
    return bool(service_spec(client, name)["Labels"].get(MANAGED) == "true")


def _proxy_service(client: Any, seed: Seed) -> bool:
    return _owned_service(client, seed.service("proxy"))


def _registry_network(client: Any, seed: Seed) -> bool:
    return network_exists(client, seed.network("registry")) and _owned_service(
        client, seed.service("registry")
    )


def _node_label(role: str) -> Callable[[Any, Seed], bool]:
    def restored(client: Any, seed: Seed) -> bool:
        return node_labels(client, seed.hostname).get(seed.label(role)) == "true"

    return restored


DRIFTS = [
    Drift(
        "scale",
        (("service", "scale", "-d", "{registry}=3"),),
        "service",
        "{registry}",
        "update",
        "Mode.Replicated.Replicas",
        _mode,
    ),
    Drift(
        "environment",
        (("service", "update", "-d", "--env-add", "DRIFT=1", "{proxy}"),),
        "service",
        "{proxy}",
        "update",
        "TaskTemplate.ContainerSpec.Env",
        _environment,
    ),
    Drift(
        "image",
        (
            (
                "service",
                "update",
                "-d",
                "--no-resolve-image",
                "--image",
                "registry:2.8",
                "{registry}",
            ),
        ),
        "service",
        "{registry}",
        "update",
        "TaskTemplate.ContainerSpec.Image",
        _image,
    ),
    Drift(
        "constraint",
        (
            (
                "service",
                "update",
                "-d",
                "--constraint-add",
                "node.role==manager",
                "{hugo}",
            ),
        ),
        "service",
        "{hugo}",
        "update",
        "TaskTemplate.Placement.Constraints",
        _constraints,
    ),
    Drift(
        "port",
        (("service", "update", "-d", "--publish-add", "19313:80", "{hugo}"),),
        "service",
        "{hugo}",
        "update",
        "EndpointSpec.Ports",
        _ports,
    ),
    Drift(
        "mount",
        (
            (
                "service",
                "update",
                "-d",
                "--mount-add",
                "type=tmpfs,target=/drift",
                "{hugo}",
            ),
        ),
        "service",
        "{hugo}",
        "update",
        "TaskTemplate.ContainerSpec.Mounts",
        _mounts,
    ),
    Drift(
        "service-removed",
        (("service", "rm", "{proxy}"),),
        "service",
        "{proxy}",
        "create",
        None,
        _proxy_service,
    ),
    Drift(
        # A network in use cannot be removed: its only service goes first.
        "network-removed",
        (("service", "rm", "{registry}"), ("network", "rm", "{registry_network}")),
        "network",
        "{registry_network}",
        "create",
        None,
        _registry_network,
        also=(("service", "{registry}", "create"),),
        settled=lambda client, seed: (
            not network_exists(client, seed.network("registry"))
        ),
    ),
    Drift(
        "node-label-removed",
        (("node", "update", "--label-rm", "{hugo_label}", "{node}"),),
        "node",
        "{node}",
        "update",
        "Labels.{hugo_label}",
        _node_label("hugo"),
    ),
    Drift(
        "node-label-changed",
        (("node", "update", "--label-add", "{proxy_label}=false", "{node}"),),
        "node",
        "{node}",
        "update",
        "Labels.{proxy_label}",
        _node_label("proxy"),
    ),
]


@pytest.mark.parametrize("drift", DRIFTS, ids=[d.id for d in DRIFTS])
def test_plan_shows_drift_and_apply_undoes_it(
    drift: Drift, applied: Seed, swarm: SwarmTestBed
) -> None:
    seed = applied
    names = seed.names()
    for command in drift.commands:
        docker_cli(*(argument.format(**names) for argument in command))
    settled = drift.settled
    if settled is not None:
        wait_for_engine(
            lambda: settled(swarm.client, seed),
            what=f"the engine to finish drift '{drift.id}'",
        )
    assert not drift.restored(swarm.client, seed), "the drift did not take"

    text = expect_status(run_swarmkeeper("plan", seed.state_dir), 1)
    document = plan_document(seed.state_dir)
    expected = [
        (kind, name.format(**names), action)
        for kind, name, action in (
            (drift.kind, drift.subject, drift.action),
            *drift.also,
        )
    ]
    assert [
        (c["kind"], c["name"], c["action"]) for c in document["changes"]
    ] == expected, text.stdout
    for kind, name, action in expected:
        assert f"{kind} {name} ({action})" in text.stdout
    if drift.path is not None:
        path = drift.path.format(**names)
        change = document["changes"][0]
        assert [f["path"] for f in change["fields"]] == [path], text.stdout
        assert f"    {path}: " in text.stdout, text.stdout

    expect_status(run_swarmkeeper("apply", seed.state_dir), 0)
    assert drift.restored(swarm.client, seed)
    expect_status(run_swarmkeeper("plan", seed.state_dir), 0)


# -- 3. what swarmkeeper does not own stays as it is ----------------------------


def test_objects_made_by_hand_survive_applies(seed: Seed, swarm: SwarmTestBed) -> None:
    client = swarm.client
    by_hand = swarm.name("by-hand")
    swarm.create_service("by-hand")
    # A leftover of the same stack: stack-labelled, but never swarmkeeper's.
    swarm.create_service("leftover", labels={NAMESPACE: swarm.prefix})
    client.api.create_network(
        f"{swarm.prefix}-by-hand", driver="overlay", labels={"owner": "a person"}
    )
    client.api.create_config(f"{swarm.prefix}-by-hand", b"made by hand\n")
    node = client.nodes.get(client.info()["Swarm"]["NodeID"])
    spec = node.attrs["Spec"]
    hand_label = f"{swarm.prefix}-by-hand"
    node.update({**spec, "Labels": {**(spec.get("Labels") or {}), hand_label: "yes"}})
    hand_made = wait_until_stable(swarm)

    expect_status(run_swarmkeeper("apply", seed.state_dir), 0)
    first = wait_until_stable(swarm)  # the seed's node labels are set now
    for _ in range(2):
        expect_status(run_swarmkeeper("apply", seed.state_dir), 0)

    after = wait_until_stable(swarm)
    for kind in ("services", "networks", "configs"):
        for name, version in hand_made[kind].items():
            assert after[kind].get(name) == version, f"{kind} {name} was touched"
    assert after["nodes"] == first["nodes"]
    assert node_labels(client, seed.hostname)[hand_label] == "yes"
    assert MANAGED not in service_spec(client, by_hand).get("Labels", {})
    assert service_spec(client, swarm.name("leftover"))["Labels"] == {
        NAMESPACE: swarm.prefix
    }
    network = client.api.inspect_network(f"{swarm.prefix}-by-hand", scope="swarm")
    assert network["Labels"] == {"owner": "a person"}


# -- 4. a service in the way is a conflict, left alone --------------------------


def test_a_service_swarmkeeper_does_not_own_is_a_conflict(
    seed: Seed, swarm: SwarmTestBed
) -> None:
    in_the_way = seed.service("proxy")
    swarm.create_service("proxy", labels={"owner": "a person"})
    before = wait_until_stable(swarm)["services"][in_the_way]
    spec_before = service_spec(swarm.client, in_the_way)

    plan = expect_status(run_swarmkeeper("plan", seed.state_dir), 1)
    assert f"! service {in_the_way} (conflict)" in plan.stdout
    document = plan_document(seed.state_dir)
    conflicts = [c for c in document["changes"] if c["action"] == "conflict"]
    assert [(c["kind"], c["name"]) for c in conflicts] == [("service", in_the_way)]

    result = expect_status(run_swarmkeeper("apply", seed.state_dir), 1)
    assert "1 left alone" in result.stdout
    after = wait_until_stable(swarm)
    assert after["services"][in_the_way] == before
    assert service_spec(swarm.client, in_the_way) == spec_before
    # The rest was applied all the same.
    for name in (seed.service("registry"), seed.service("hugo")):
        assert service_spec(swarm.client, name)["Labels"][MANAGED] == "true"


# -- 5. plan --json, and secret-looking values masked ---------------------------


def test_plan_json_and_secret_values_masked(applied: Seed, swarm: SwarmTestBed) -> None:
    seed = applied
    desired_values = {
        f"REGISTRY_{word}": f"desired-{word.lower()}-{secrets.token_hex(8)}"
        for word in ("PASSWORD", "TOKEN", "KEY", "SECRET")
    }

    def add_environment(document: dict[str, Any]) -> None:
        document["services"]["registry"]["environment"] += [
            f"{k}={v}" for k, v in desired_values.items()
        ]

    edit_stack(seed, add_environment)
    live_value = f"live-{secrets.token_hex(8)}"
    docker_cli(
        "service",
        "update",
        "-d",
        "--env-add",
        f"DB_PASSWORD={live_value}",
        seed.service("registry"),
    )
    every_value = [*desired_values.values(), live_value]

    outputs = []
    text = expect_status(
        run_swarmkeeper("plan", seed.state_dir, "--log-level", "debug"), 1
    )
    outputs.append(text)
    as_json = run_swarmkeeper("plan", seed.state_dir, "--json", "--log-level", "debug")
    outputs.append(expect_status(as_json, 1))

    document = json.loads(as_json.stdout)
    assert document["in_sync"] is False
    assert document["counts"] == {"update": 1}
    [change] = document["changes"]
    assert change["kind"] == "service"
    assert change["name"] == seed.service("registry")
    assert change["action"] == "update"
    [env] = change["fields"]
    assert env["path"] == "TaskTemplate.ContainerSpec.Env"
    assert sorted(env["old"]) == sorted(
        ["DB_PASSWORD=******", "REGISTRY_HTTP_ADDR=0.0.0.0:5000"]
    )
    assert sorted(env["new"]) == sorted(
        ["REGISTRY_HTTP_ADDR=0.0.0.0:5000"] + [f"{k}=******" for k in desired_values]
    )
    for key in desired_values:
        assert f"{key}=******" in text.stdout
    assert "DB_PASSWORD=******" in text.stdout

    outputs.append(
        expect_status(
            run_swarmkeeper("apply", seed.state_dir, "--log-level", "debug"), 0
        )
    )
    env_after = container_spec(swarm.client, seed.service("registry"))["Env"]
    assert sorted(env_after) == sorted(
        ["REGISTRY_HTTP_ADDR=0.0.0.0:5000"]
        + [f"{k}={v}" for k, v in desired_values.items()]
    )
    for result in outputs:
        for value in every_value:
            assert value not in result.stdout + result.stderr, shown(result)


def test_plan_json_lists_every_change_of_a_fresh_swarm(
    seed: Seed, swarm: SwarmTestBed
) -> None:
    document = plan_document(seed.state_dir)
    assert document["in_sync"] is False
    assert document["counts"] == {"create": 5, "update": 1}
    changes = {(c["kind"], c["name"]): c for c in document["changes"]}
    assert set(changes) == {
        *(("network", name) for name in seed.networks),
        ("node", seed.hostname),
        *(("service", name) for name in seed.services),
    }
    for change in document["changes"]:
        assert set(change) >= {"kind", "name", "action", "fields", "reason"}
    node = changes["node", seed.hostname]
    assert {f["path"]: f["new"] for f in node["fields"]} == {
        **{f"Labels.{seed.label(role)}": "true" for role in ROLES},
        f"Labels.{MANAGED_NODE_LABELS}": ",".join(
            sorted(seed.label(role) for role in ROLES)
        ),
    }
    assert any(seed.absent_host in note for note in document["notes"])


# -- 6. a desired state that does not load writes nothing -----------------------


BREAKAGES = {
    "stack-yaml": ("stacks/PREFIX.yml", "services:\n  registry: [unclosed\n"),
    "nodes-duplicate-key": ("nodes.yml", "nodes:\n  a: {}\n  a: {}\n"),
    "networks-unknown-field": (
        "networks.yml",
        "networks:\n  PREFIX-x:\n    drivr: overlay\n",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_desired_state_that_does_not_load_writes_nothing(
    breakage: str, applied: Seed, swarm: SwarmTestBed
) -> None:
    seed = applied
    # Drift apply would correct, were the desired state readable.
    docker_cli("service", "scale", "-d", f"{seed.service('registry')}=2")
    docker_cli("node", "update", "--label-rm", seed.label("hugo"), seed.hostname)
    relative, content = BREAKAGES[breakage]
    (seed.state_dir / relative.replace("PREFIX", seed.prefix)).write_text(
        content.replace("PREFIX", seed.prefix)
    )
    before = wait_until_stable(swarm)

    applied_result = expect_status(run_swarmkeeper("apply", seed.state_dir), 2)
    assert "nothing was changed" in applied_result.stderr
    assert snapshot(swarm.client, swarm.prefix) == before
    planned = expect_status(run_swarmkeeper("plan", seed.state_dir), 2)
    assert planned.stdout == ""
    assert snapshot(swarm.client, swarm.prefix) == before


# -- 7. node labels: swarmkeeper's keys follow nodes.yml, others stay -----------


def test_a_label_key_removed_from_nodes_yml_is_removed_from_the_node(
    applied: Seed, swarm: SwarmTestBed
) -> None:
    seed = applied
    someone_elses = f"{seed.prefix}-someone-else"
    docker_cli("node", "update", "--label-add", f"{someone_elses}=kept", seed.hostname)
    seed.write_nodes({seed.label(role): "true" for role in ("registry", "proxy")})

    plan = plan_document(seed.state_dir)
    [change] = plan["changes"]
    assert (change["kind"], change["name"], change["action"]) == (
        "node",
        seed.hostname,
        "update",
    )
    assert {f["path"]: (f["old"], f["new"]) for f in change["fields"]} == {
        f"Labels.{seed.label('hugo')}": ("true", None),
        f"Labels.{MANAGED_NODE_LABELS}": (
            ",".join(sorted(seed.label(r) for r in ROLES)),
            ",".join(sorted(seed.label(r) for r in ("registry", "proxy"))),
        ),
    }

    expect_status(run_swarmkeeper("apply", seed.state_dir), 0)
    labels = node_labels(swarm.client, seed.hostname)
    assert seed.label("hugo") not in labels
    assert labels[seed.label("registry")] == "true"
    assert labels[seed.label("proxy")] == "true"
    assert labels[someone_elses] == "kept"
    expect_status(run_swarmkeeper("plan", seed.state_dir), 0)


# -- 8. no engine ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_an_unreachable_engine_is_one_line_and_status_2(
    command: str, tmp_path: Path
) -> None:
    seed = copy_seed(tmp_path, "skt000000", "vm")
    socket = "unix:///nonexistent.sock"

    result = run_swarmkeeper(command, seed.state_dir, env={"DOCKER_HOST": socket})

    assert result.returncode == 2, shown(result)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown(result)
    assert lines[0].startswith("swarmkeeper: "), shown(result)
    assert "nonexistent.sock" in lines[0], shown(result)
    assert "internal error" not in lines[0], shown(result)
    assert result.stdout == ""


# -- 9. a paused rollout of the desired spec is not a pending change ------------


def test_a_paused_update_of_the_desired_spec_is_in_sync(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    """The engine paused the rollout of exactly the desired spec: nothing to do.

    swarmkeeper writes nothing to a service whose update is paused (a person
    resumes or rolls it back). But when the spec already is the desired one,
    no change is pending, so plan exits 0 and apply writes nothing.
    """
    state_dir = tmp_path / "state"
    (state_dir / "stacks").mkdir(parents=True)
    stack_file = state_dir / "stacks" / f"{swarm.prefix}.yml"
    template = (
        "services:\n  web:\n    image: {image}\n    command: {command}\n"
        "    stop_grace_period: 1s\n    deploy: {{replicas: 1}}\n"
    )
    stack_file.write_text(
        template.format(image=swarm.image, command='["sleep", "3600"]')
    )
    expect_status(run_swarmkeeper("apply", state_dir), 0)
    name = swarm.name("web")
    swarm.wait_for(lambda: len(swarm.running_tasks(name)) == 1, what="a running task")

    # A command that fails at once: the engine pauses the rolling update.
    stack_file.write_text(template.format(image=swarm.image, command='["false"]'))
    expect_status(run_swarmkeeper("apply", state_dir), 0)

    def update_state() -> str:
        status = swarm.client.api.inspect_service(name).get("UpdateStatus") or {}
        return str(status.get("State", ""))

    swarm.wait_for(lambda: update_state() == "paused", what="the update paused")
    assert container_spec(swarm.client, name)["Args"] == ["false"]
    stable = wait_until_stable(swarm)

    plan = run_swarmkeeper("plan", state_dir, "--json")
    assert plan.returncode == 0, shown(plan)
    assert json.loads(plan.stdout)["changes"] == []
    again = expect_status(run_swarmkeeper("apply", state_dir), 0)
    assert writes_reported(again) == 0
    assert snapshot(swarm.client, swarm.prefix) == stable
