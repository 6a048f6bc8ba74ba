"""The test bed itself: what a test makes on the swarm is gone after it."""

from __future__ import annotations

from typing import Any

import pytest

import conftest

pytestmark = pytest.mark.engine


def test_cleanup_removes_every_kind_and_restores_node_labels(
    docker_client: Any, test_image: str
) -> None:
    bed = conftest.SwarmTestBed(
        client=docker_client, prefix="skt0c1ea2", image=test_image
    )
    node = docker_client.nodes.list()[0]
    labels_before = dict(node.attrs["Spec"].get("Labels") or {})

    network = docker_client.networks.create(bed.name("net"), driver="overlay")
    bed.create_service("svc", networks=[network.id])
    docker_client.configs.create(name=bed.name("conf"), data=b"x")
    docker_client.secrets.create(name=bed.name("sec"), data=b"y")
    spec = dict(node.attrs["Spec"])
    spec["Labels"] = {**labels_before, bed.name("label"): "true"}
    node.update(spec)

    conftest._remove_objects(docker_client, lambda name: name.startswith(bed.prefix))
    conftest._restore_node_labels(docker_client, {node.id: labels_before})

    def left(collection: Any) -> list[str]:
        return [
            item.name for item in collection.list() if item.name.startswith(bed.prefix)
        ]

    assert left(docker_client.services) == []
    assert left(docker_client.networks) == []
    assert left(docker_client.configs) == []
    assert left(docker_client.secrets) == []
    node.reload()
    assert dict(node.attrs["Spec"].get("Labels") or {}) == labels_before
