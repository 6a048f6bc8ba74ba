"""The canonical diff: each source of false drift compares equal, real changes do not.

The shapes below are the ones different writers leave in the engine (see
``../shared/research/engine-spec-notes.md``): the CLI's empty objects,
``docker service create``'s explicit falses, the engine's filled defaults,
network IDs for names, pinned digests.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from swarmkeeper.desired import DesiredService, Location
from swarmkeeper.diffing import (
    FieldChange,
    canonical_service,
    field_changes,
    mask_environment,
    masked,
)
from swarmkeeper.planning import update_body

NETWORK_NAMES = {"n1id": "front"}


def base_spec() -> dict[str, Any]:
    return {
        "Name": "s_web",
        "Labels": {"com.docker.stack.namespace": "s"},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "nginx:1.25", "Env": ["B=2", "A=1"]},
            "Networks": [{"Target": "front", "Aliases": ["web"]}],
        },
        "Mode": {"Replicated": {"Replicas": 2}},
    }


def changes(live: dict[str, Any], desired: dict[str, Any]) -> list[FieldChange]:
    return list(
        field_changes(
            canonical_service(live, network_names=NETWORK_NAMES),
            canonical_service(desired, network_names={}),
        )
    )


def with_(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


EQUIVALENT_LIVE_SHAPES = [
    (
        "network by id",
        "TaskTemplate.Networks",
        [{"Target": "n1id", "Aliases": ["web"]}],
    ),
    ("env order", "TaskTemplate.ContainerSpec.Env", ["A=1", "B=2"]),
    (
        "pinned digest",
        "TaskTemplate.ContainerSpec.Image",
        "nginx:1.25@sha256:" + "a" * 64,
    ),
    ("isolation default", "TaskTemplate.ContainerSpec.Isolation", "default"),
    (
        "empty privileges",
        "TaskTemplate.ContainerSpec.Privileges",
        {"CredentialSpec": None, "SELinuxContext": None},
    ),
    ("explicit init false", "TaskTemplate.ContainerSpec.Init", False),
    (
        "stop grace default",
        "TaskTemplate.ContainerSpec.StopGracePeriod",
        10_000_000_000,
    ),
    ("empty dns", "TaskTemplate.ContainerSpec.DNSConfig", {}),
    ("empty resources", "TaskTemplate.Resources", {"Limits": {}, "Reservations": {}}),
    ("empty placement", "TaskTemplate.Placement", {}),
    (
        "platforms",
        "TaskTemplate.Placement",
        {"Platforms": [{"OS": "linux", "Architecture": "amd64"}]},
    ),
    ("force update", "TaskTemplate.ForceUpdate", 0),
    ("runtime", "TaskTemplate.Runtime", "container"),
    (
        "restart defaults",
        "TaskTemplate.RestartPolicy",
        {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0},
    ),
    (
        "update defaults",
        "UpdateConfig",
        {
            "Parallelism": 1,
            "FailureAction": "pause",
            "Monitor": 5_000_000_000,
            "MaxFailureRatio": 0,
            "Order": "stop-first",
        },
    ),
    ("endpoint vip", "EndpointSpec", {"Mode": "vip"}),
]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(path, value, id=name)
        for name, path, value in EQUIVALENT_LIVE_SHAPES
    ],
)
def test_engine_shapes_of_the_same_intent_are_no_drift(path: str, value: Any) -> None:
    desired = base_spec()
    live = with_(desired, path, value)

    assert changes(live, desired) == []


def test_aliases_compare_as_a_set() -> None:
    desired = with_(
        base_spec(),
        "TaskTemplate.Networks",
        [{"Target": "front", "Aliases": ["x", "web"]}],
    )
    live = with_(
        desired, "TaskTemplate.Networks", [{"Target": "n1id", "Aliases": ["web", "x"]}]
    )

    assert changes(live, desired) == []


def test_ports_with_defaults_left_out_compare_equal() -> None:
    desired = with_(
        base_spec(),
        "EndpointSpec",
        {
            "Mode": "",
            "Ports": [
                {
                    "Protocol": "",
                    "TargetPort": 80,
                    "PublishedPort": 8080,
                    "PublishMode": "",
                }
            ],
        },
    )
    live = with_(
        desired,
        "EndpointSpec",
        {
            "Mode": "vip",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 80,
                    "PublishedPort": 8080,
                    "PublishMode": "ingress",
                }
            ],
        },
    )

    assert changes(live, desired) == []


REAL_CHANGES = [
    ("replicas", "Mode", {"Replicated": {"Replicas": 3}}, "Mode.Replicated.Replicas"),
    (
        "image",
        "TaskTemplate.ContainerSpec.Image",
        "nginx:1.26",
        "TaskTemplate.ContainerSpec.Image",
    ),
    (
        "env",
        "TaskTemplate.ContainerSpec.Env",
        ["A=1", "B=2", "C=3"],
        "TaskTemplate.ContainerSpec.Env",
    ),
    (
        "network",
        "TaskTemplate.Networks",
        [{"Target": "back", "Aliases": ["web"]}],
        "TaskTemplate.Networks",
    ),
    ("label", "Labels", {"com.docker.stack.namespace": "s", "x": "1"}, "Labels.x"),
    (
        "parallelism 0 is not absent",
        "UpdateConfig",
        {"Parallelism": 0},
        "UpdateConfig.Parallelism",
    ),
    (
        "grace period",
        "TaskTemplate.ContainerSpec.StopGracePeriod",
        1_000_000_000,
        "TaskTemplate.ContainerSpec.StopGracePeriod",
    ),
    (
        "read only",
        "TaskTemplate.ContainerSpec.ReadOnly",
        True,
        "TaskTemplate.ContainerSpec.ReadOnly",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "reported"),
    [
        pytest.param(path, value, reported, id=name)
        for name, path, value, reported in REAL_CHANGES
    ],
)
def test_real_changes_are_reported_by_path(
    path: str, value: Any, reported: str
) -> None:
    desired = base_spec()
    live = with_(desired, path, value)

    assert reported in [change.path for change in changes(live, desired)]


def test_secret_looking_environment_values_are_masked() -> None:
    change = FieldChange(
        "TaskTemplate.ContainerSpec.Env",
        ["DB_PASSWORD=old", "MODE=a"],
        ["DB_PASSWORD=new", "MODE=b", "API_TOKEN=t", "KEYFILE"],
    )

    shown = masked(change)

    assert shown.old == ["DB_PASSWORD=******", "MODE=a"]
    assert shown.new == ["DB_PASSWORD=******", "MODE=b", "API_TOKEN=******", "KEYFILE"]
    assert mask_environment(None) is None


def test_update_body_keeps_what_is_derived_from_live() -> None:
    service = DesiredService("s_web", "s", base_spec(), Location("stacks/s.yml", 3))
    live = {
        "Spec": with_(
            with_(base_spec(), "TaskTemplate.ForceUpdate", 4),
            "TaskTemplate.ContainerSpec.Image",
            "nginx:1.25@sha256:" + "b" * 64,
        )
    }
    live["Spec"]["TaskTemplate"]["Placement"] = {"Platforms": [{"OS": "linux"}]}

    body = update_body(service, live)

    template = body["TaskTemplate"]
    assert template["ForceUpdate"] == 4
    assert template["ContainerSpec"]["Image"] == "nginx:1.25@sha256:" + "b" * 64
    assert template["Placement"]["Platforms"] == [{"OS": "linux"}]
    assert body["Labels"]["swarmkeeper.managed"] == "true"


def test_update_body_takes_the_desired_image_when_it_changed() -> None:
    service = DesiredService("s_web", "s", base_spec(), Location("stacks/s.yml", 3))
    live = {
        "Spec": with_(
            base_spec(),
            "TaskTemplate.ContainerSpec.Image",
            "nginx:1.24@sha256:" + "c" * 64,
        )
    }

    body = update_body(service, live)

    assert body["TaskTemplate"]["ContainerSpec"]["Image"] == "nginx:1.25"


def test_canonical_service_leaves_its_input_untouched_and_shares_nothing() -> None:
    # canonical_service copies the template with its own JSON copy (not
    # copy.deepcopy, for speed): the input must stay as it was, and two
    # canonical forms of one spec must not share a mutable part.
    spec: dict[str, Any] = {
        "Name": "web",
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "nginx:1.25@sha256:" + "a" * 64,
                "Env": ["B=2", "A=1"],
                "Labels": {"x": "1"},
            },
            "Placement": {"Constraints": ["node.role==worker", "node.role==worker"]},
            "Resources": {"Limits": {"MemoryBytes": 0, "NanoCPUs": 500000000}},
            "Networks": [{"Target": "n1", "Aliases": ["b", "a"]}],
        },
    }
    before = copy.deepcopy(spec)
    first = canonical_service(spec, network_names={"n1": "backend"})
    second = canonical_service(spec, network_names={"n1": "backend"})
    assert spec == before
    assert first == second
    first["TaskTemplate"]["ContainerSpec"]["Labels"]["x"] = "changed"
    first["TaskTemplate"]["Placement"]["Constraints"].append("node.labels.a==b")
    assert second["TaskTemplate"]["ContainerSpec"]["Labels"] == {"x": "1"}
    assert second["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==worker"]
    assert spec == before
