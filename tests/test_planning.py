"""Planning decisions on given live states (pure; the engine-backed proofs are in test_plan_apply)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swarmkeeper.desired import DesiredState
from swarmkeeper.live import LiveState
from swarmkeeper.loading.statedir import load_desired_state
from swarmkeeper.planning import (
    ADOPT,
    BLOCKED,
    CONFLICT,
    CREATE,
    UPDATE,
    make_plan,
    node_labels_after,
    render_text,
)


def state(tmp_path: Path, files: dict[str, str]) -> DesiredState:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_desired_state(tmp_path, environ={})


def node(hostname: str, labels: dict[str, str], node_id: str = "n1") -> dict[str, Any]:
    return {
        "ID": node_id,
        "Version": {"Index": 10},
        "Description": {"Hostname": hostname},
        "Spec": {"Labels": labels, "Role": "manager", "Availability": "active"},
    }


def live(**parts: Any) -> LiveState:
    return LiveState(node_id="n1", is_leader=True, **parts)


def test_node_labels_keep_foreign_keys_and_drop_formerly_managed_ones(
    tmp_path: Path,
) -> None:
    desired = state(
        tmp_path,
        {
            "nodes.yml": "nodes:\n  '*':\n    labels: {zone: a}\n  h1:\n    labels: {ssd: 'true'}\n"
        },
    )
    current = node(
        "h1", {"owner": "ops", "old": "x", "swarmkeeper.managed-labels": "old,zone"}
    )

    assert node_labels_after(desired, current) == {
        "owner": "ops",
        "zone": "a",
        "ssd": "true",
        "swarmkeeper.managed-labels": "ssd,zone",
    }


def test_unknown_and_shared_hostnames_are_reported_not_guessed(tmp_path: Path) -> None:
    desired = state(
        tmp_path,
        {
            "nodes.yml": "nodes:\n  gone:\n    labels: {a: b}\n  twin:\n    labels: {a: b}\n"
        },
    )
    current = live(nodes=[node("twin", {}, "n1"), node("twin", {}, "n2")])

    plan = make_plan(desired, current)

    assert plan.notes == ("nodes.yml names host 'gone', which is not in the swarm",)
    assert [(c.kind, c.name, c.action) for c in plan.changes] == [
        ("node", "twin", BLOCKED)
    ]


def test_service_of_another_owner_is_a_conflict_and_same_stack_is_adopted(
    tmp_path: Path,
) -> None:
    desired = state(
        tmp_path,
        {"stacks/s.yml": "services:\n  a:\n    image: x:1\n  b:\n    image: x:1\n"},
    )
    spec: dict[str, Any] = {"TaskTemplate": {"ContainerSpec": {"Image": "x:1"}}}
    current = live(
        services={
            "s_a": {
                "ID": "1",
                "Spec": {**spec, "Name": "s_a", "Labels": {"by": "hand"}},
            },
            "s_b": {
                "ID": "2",
                "Spec": {
                    **spec,
                    "Name": "s_b",
                    "Labels": {"com.docker.stack.namespace": "s"},
                },
            },
        },
        networks={
            "s_default": {
                "Id": "d",
                "Name": "s_default",
                "Driver": "overlay",
                "Labels": {"com.docker.stack.namespace": "s"},
                "Scope": "swarm",
            }
        },
    )

    actions = {c.name: c.action for c in make_plan(desired, current).changes}

    assert actions["s_a"] == CONFLICT
    assert actions["s_b"] == ADOPT


def test_missing_external_network_and_foreign_ingress_are_blocked(
    tmp_path: Path,
) -> None:
    desired = state(
        tmp_path,
        {
            "stacks/s.yml": "services:\n  a:\n    image: x:1\n    networks: [ext]\nnetworks:\n  ext:\n    external: true\n",
            "networks.yml": "networks:\n  mesh:\n    ingress: true\n",
        },
    )
    current = live(
        networks={
            "ingress": {"Id": "i", "Name": "ingress", "Ingress": True, "Scope": "swarm"}
        }
    )

    plan = make_plan(desired, current)

    blocked = {c.name: c.reason for c in plan.changes if c.action == BLOCKED}
    assert "ext" in blocked
    assert "does not exist" in blocked["ext"]
    assert "ingress network" in blocked["mesh"]
    assert {c.name: c.action for c in plan.changes}["s_a"] == CREATE


def test_text_plan_shows_old_and_new_and_masks_secrets(tmp_path: Path) -> None:
    desired = state(
        tmp_path,
        {
            "stacks/s.yml": "services:\n  a:\n    image: x:1\n    environment: [DB_PASSWORD=new-pw]\n"
        },
    )
    current = live(
        services={
            "s_a": {
                "ID": "1",
                "Spec": {
                    "Name": "s_a",
                    "Labels": {
                        "com.docker.stack.namespace": "s",
                        "com.docker.stack.image": "x:1",
                        "swarmkeeper.managed": "true",
                    },
                    "TaskTemplate": {
                        "ContainerSpec": {"Image": "x:1", "Env": ["DB_PASSWORD=old-pw"]}
                    },
                },
            }
        }
    )

    plan = make_plan(desired, current)
    text = render_text(plan)

    assert {c.name: c.action for c in plan.changes}["s_a"] == UPDATE
    assert "TaskTemplate.ContainerSpec.Env" in text
    assert "DB_PASSWORD=******" in text
    assert "old-pw" not in text
    assert "new-pw" not in text


def test_suspended_stack_and_service_are_reported_not_changed(tmp_path: Path) -> None:
    desired = state(
        tmp_path,
        {
            "stacks/s.yml": "services:\n  a:\n    image: x:1\n  b:\n    image: x:1\n",
            "stacks/t.yml": "services:\n  c:\n    image: x:1\n",
            "policy.yml": "suspend: [s/a, t]\n",
        },
    )

    plan = make_plan(desired, live())

    actions = {c.name: (c.action, c.reason) for c in plan.changes}
    assert actions["s_a"][0] == "held"
    assert "suspended in policy.yml (s/a)" in actions["s_a"][1]
    assert actions["s_b"][0] == CREATE
    assert actions["t_c"][0] == "held"
    assert actions["t_default"][0] == "held"


def test_a_network_of_services_held_back_by_a_guard_is_not_pruned(
    tmp_path: Path,
) -> None:
    desired = state(tmp_path, {"stacks/keep.yml": "services:\n  a:\n    image: x:1\n"})
    owned = {"swarmkeeper.managed": "true", "com.docker.stack.namespace": "old"}
    services = {
        f"old_s{i}": {
            "ID": f"id{i}",
            "Spec": {
                "Name": f"old_s{i}",
                "Labels": owned,
                "TaskTemplate": {
                    "ContainerSpec": {"Image": "x:1"},
                    "Networks": [{"Target": "net1"}],
                },
            },
        }
        for i in range(4)
    }
    network = {
        "Id": "net1",
        "Name": "old_default",
        "Labels": owned,
        "Scope": "swarm",
        "Driver": "overlay",
    }

    plan = make_plan(
        desired, live(services=services, networks={"old_default": network})
    )

    actions = {c.name: c.action for c in plan.changes}
    assert {actions[f"old_s{i}"] for i in range(4)} == {"held"}  # 4 > cap of 1
    assert "old_default" not in actions  # still in use by the held services
