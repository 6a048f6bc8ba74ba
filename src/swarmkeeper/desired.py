"""The desired state: what the swarm should hold, as loaded from the state directory.

These are plain values with no I/O. Specs are engine-shaped JSON (the bodies
the Docker API takes), with one difference: objects refer to each other by
name, not by ID. A service's ``TaskTemplate.Networks[].Target`` is a network
name, and its ``ContainerSpec.Configs[]``/``Secrets[]`` carry ``ConfigName``/
``SecretName`` without an ID. Whoever writes to the engine resolves names to
IDs at that moment, as ``docker stack deploy`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSONObject = dict[str, Any]

# Labels that `docker stack deploy` sets, and that swarmkeeper sets the same
# way so `docker stack ls/ps/services` keep working on what it deploys.
STACK_NAMESPACE_LABEL = "com.docker.stack.namespace"
STACK_IMAGE_LABEL = "com.docker.stack.image"


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file relative to the state directory, and a line."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in the desired state, located."""

    location: Location
    field: str
    message: str

    def __str__(self) -> str:
        where = str(self.location)
        return (
            f"{where}: {self.field}: {self.message}"
            if self.field
            else f"{where}: {self.message}"
        )


@dataclass(frozen=True)
class DesiredService:
    """One swarm service: its full name, its stack and its ServiceSpec."""

    name: str
    stack: str
    spec: JSONObject
    source: Location


@dataclass(frozen=True)
class DesiredNetwork:
    """A network to create: the body of ``POST /networks/create`` without its name.

    ``stack`` is None for cluster networks from ``networks.yml``.
    """

    name: str
    stack: str | None
    create: JSONObject
    source: Location


@dataclass(frozen=True, repr=False)
class DesiredBlob:
    """A config or secret: a content-addressed name, its labels and its data.

    ``data`` is kept out of ``repr`` so a secret never reaches a log by accident.
    ``digest`` is the SHA-256 of ``data`` in hex; the name carries its first
    ten digits.
    """

    kind: str  # "config" or "secret"
    name: str
    stack: str
    labels: dict[str, str]
    data: bytes
    digest: str
    source: Location
    templating: JSONObject | None = None

    def __repr__(self) -> str:
        return f"DesiredBlob({self.kind} {self.name!r}, sha256={self.digest[:10]})"


@dataclass(frozen=True)
class Stack:
    """What one compose file becomes."""

    name: str
    source: Location
    services: dict[str, DesiredService] = field(default_factory=dict)
    networks: dict[str, DesiredNetwork] = field(default_factory=dict)
    configs: dict[str, DesiredBlob] = field(default_factory=dict)
    secrets: dict[str, DesiredBlob] = field(default_factory=dict)
    # Objects the stack uses but does not create: they must exist already.
    external_networks: frozenset[str] = frozenset()
    external_configs: frozenset[str] = frozenset()
    external_secrets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    """``policy.yml``: what swarmkeeper may run and remove."""

    allowed_images: tuple[str, ...] | None = None  # None: every image is allowed
    prune: bool = True
    # The most owned objects of one kind that one pass may remove; None means
    # the default (a quarter of the owned objects of the kind, at least one).
    prune_cap: int | None = None
    suspend: tuple[str, ...] = ()  # "stack" or "stack/service"


@dataclass(frozen=True)
class DesiredState:
    """The whole state directory, loaded and converted."""

    root: Path
    stacks: dict[str, Stack] = field(default_factory=dict)
    networks: dict[str, DesiredNetwork] = field(default_factory=dict)
    ingress_network: str | None = None
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    warnings: tuple[Problem, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.stacks or self.networks or self.node_labels)

    def services(self) -> dict[str, DesiredService]:
        """Every service of every stack, by full name."""
        return {
            name: service
            for stack in self.stacks.values()
            for name, service in stack.services.items()
        }
