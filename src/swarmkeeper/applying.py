"""Carrying out a plan: the writes, in order, each checked against its version.

Phases run one after the other, since each needs the previous: networks,
then configs and secrets, then node labels, then services. Within a phase
independent objects are written concurrently, at most ``concurrency`` at a
time.

Every update carries the version it was computed from. When the engine
answers "update out of sequence" (someone else wrote in between: a person,
the allocator, the updater), the object is read again, the difference
recomputed, and the write retried with jittered back-off; if the difference
is gone, nothing is written.

The daemon passes ``may_write``, asked before every write: once it says no
(this instance is no longer on the swarm's leader), the writes not yet made
are skipped, not attempted.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from swarmkeeper.desired import (
    DesiredBlob,
    DesiredNetwork,
    DesiredService,
    DesiredState,
)
from swarmkeeper.diffing import (
    REVISION_LABEL,
    canonical_service,
    copy_json,
    field_changes,
)
from swarmkeeper.engine import Engine, EngineError, OutOfSequence, SwarmUnavailable
from swarmkeeper.live import MANAGED_LABEL, LiveState
from swarmkeeper.logs import get_logger
from swarmkeeper.planning import (
    ADOPT,
    CREATE,
    FAILED_AT_LABEL,
    FAILED_SPEC_LABEL,
    RECORD_FAILURE,
    RECREATE,
    REMOVE,
    UPDATE,
    Change,
    Plan,
    managed_service_spec,
    node_labels_after,
    spec_hash,
    update_body,
)

JSONObject = dict[str, Any]

log = get_logger("swarmkeeper.applying")

MAX_ATTEMPTS = 5
BASE_DELAY = 0.05


@dataclass
class ApplyResult:
    """What apply did: writes made and failures, each failure with its reason."""

    writes: int = 0
    failures: list[tuple[Change, str]] = field(default_factory=list)
    # (kind, name) of the changes not attempted because may_write said no.
    skipped: set[tuple[str, str]] = field(default_factory=set)
    # A write was refused because the swarm has no leader from this node.
    swarm_unavailable: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures


class _References:
    """Names to IDs for networks, configs and secrets, as services need them."""

    def __init__(self, live: LiveState) -> None:
        self.networks = {name: n["Id"] for name, n in live.networks.items()}
        self.configs = {name: c["ID"] for name, c in live.configs.items()}
        self.secrets = {name: s["ID"] for name, s in live.secrets.items()}

    def resolve(self, spec: JSONObject) -> JSONObject:
        """A copy of ``spec`` with every name the engine needs as an ID replaced."""
        spec = copy_json(spec)
        template = spec["TaskTemplate"]
        for attachment in template.get("Networks") or []:
            name = attachment["Target"]
            if name not in self.networks:
                raise LookupError(f"network {name!r} does not exist")
            attachment["Target"] = self.networks[name]
        container = template["ContainerSpec"]
        for reference in container.get("Configs") or []:
            reference["ConfigID"] = self._lookup(
                self.configs, "config", reference["ConfigName"]
            )
        for reference in container.get("Secrets") or []:
            reference["SecretID"] = self._lookup(
                self.secrets, "secret", reference["SecretName"]
            )
        return spec

    @staticmethod
    def _lookup(ids: dict[str, str], kind: str, name: str) -> str:
        if name not in ids:
            raise LookupError(f"{kind} {name!r} does not exist")
        return ids[name]


async def apply_plan(
    engine: Engine,
    plan: Plan,
    desired: DesiredState,
    live: LiveState,
    *,
    concurrency: int = 8,
    may_write: Callable[[], bool] | None = None,
    revision: str | None = None,
) -> ApplyResult:
    """Make every write the plan calls for; failures are collected, not raised.

    ``revision`` goes into the label ``swarmkeeper.revision`` of each service
    this creates, updates, recreates or adopts, and of no other.
    """
    result = ApplyResult()
    references = _References(live)
    limit = asyncio.Semaphore(concurrency)

    async def run(change: Change, write: Callable[[], Awaitable[int]]) -> None:
        async with limit:
            if may_write is not None and not may_write():
                if not result.skipped:
                    log.warning("write.skipped", reason="leadership lost")
                result.skipped.add((change.kind, change.name))
                return
            try:
                # Awaited first, then added: `+=` would read the total before
                # the await and lose the other tasks' writes.
                made = await write()
                result.writes += made
            except (EngineError, LookupError) as error:
                result.failures.append((change, str(error)))
                if isinstance(error, SwarmUnavailable):
                    result.swarm_unavailable = True
                log.error(
                    f"{change.kind}.{change.action}.failed",
                    object=change.name,
                    error=str(error),
                )

    # Creations and updates first, in dependency order; removals last and in
    # the opposite order (services free the configs and networks they used).
    creating = [c for c in plan.changes if c.writes and c.action != REMOVE]
    removing = [c for c in plan.changes if c.action == REMOVE]
    phases: list[list[Change]] = [
        [c for c in creating if c.kind == "network"],
        [c for c in creating if c.kind in ("config", "secret")],
        [c for c in creating if c.kind == "node"],
        [c for c in creating if c.kind == "service"],
        [c for c in removing if c.kind == "service"],
        [c for c in removing if c.kind in ("config", "secret")],
        [c for c in removing if c.kind == "network"],
    ]
    for todo in phases:
        async with asyncio.TaskGroup() as group:
            for change in todo:
                write = _writer(engine, change, desired, references, revision)
                group.create_task(run(change, write))
    return result


def _writer(
    engine: Engine,
    change: Change,
    desired: DesiredState,
    references: _References,
    revision: str | None,
) -> Callable[[], Awaitable[int]]:
    if change.action == REMOVE:
        return lambda: _remove(engine, change)
    if change.action == RECORD_FAILURE:
        return lambda: _record_failure(engine, change)
    if change.kind == "network" and change.action == RECREATE:
        return lambda: _recreate_network(engine, change, references)
    if change.kind == "network":
        return lambda: _create_network(engine, change, references)
    if change.kind in ("config", "secret"):
        return lambda: _create_blob(engine, change, references)
    if change.kind == "node":
        return lambda: _update_node(engine, change, desired)
    return lambda: _write_service(engine, change, references, revision)


async def _create_network(
    engine: Engine, change: Change, references: _References
) -> int:
    network: DesiredNetwork = change.desired
    body = copy.deepcopy(network.create)
    body["Labels"] = {**body.get("Labels", {}), MANAGED_LABEL: "true"}
    network_id = await engine.create_network(network.name, body)
    references.networks[network.name] = network_id
    log.info("network.created", network=network.name, id=network_id)
    return 1


async def _recreate_network(
    engine: Engine, change: Change, references: _References
) -> int:
    """Remove the live network (the old ingress, or a changed one), then create."""
    if change.live is not None:
        await engine.remove_network(change.live["Id"])
        log.info(
            "network.removed", network=change.live.get("Name"), reason=change.reason
        )
        # The engine frees a removed network's resources in the background;
        # creating the new one (an ingress network above all) can race it.
        await _wait_until_gone(engine, change.live["Id"])
    return 1 + await _create_network(engine, change, references)


NETWORK_REMOVAL_WAIT = 30.0  # seconds


async def _wait_until_gone(engine: Engine, network_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NETWORK_REMOVAL_WAIT
    while loop.time() < deadline:
        if not any(n.get("Id") == network_id for n in await engine.list_networks()):
            return
        await asyncio.sleep(0.2)
    raise EngineError(
        f"network {network_id} still exists {NETWORK_REMOVAL_WAIT:g}s after removal"
    )


async def _remove(engine: Engine, change: Change) -> int:
    live: JSONObject = change.live or {}
    if change.kind == "service":
        await engine.remove_service(live["ID"])
    elif change.kind == "config":
        await engine.remove_config(live["ID"])
    elif change.kind == "secret":
        await engine.remove_secret(live["ID"])
    else:
        await engine.remove_network(live["Id"])
    log.info(f"{change.kind}.removed", name=change.name, reason=change.reason)
    return 1


async def _record_failure(engine: Engine, change: Change) -> int:
    """Label a rolled-back service with the failed spec's hash (no task restart)."""
    live: JSONObject = change.live or {}
    service: DesiredService = change.desired
    spec = copy.deepcopy(live["Spec"])
    spec["Labels"] = {
        **(spec.get("Labels") or {}),
        FAILED_SPEC_LABEL: spec_hash(managed_service_spec(service)),
        FAILED_AT_LABEL: str(int(time.time())),
    }
    await engine.update_service(live["ID"], version=live["Version"]["Index"], spec=spec)
    log.warning(
        "service.update.rolled_back",
        service=change.name,
        failed_spec=spec["Labels"][FAILED_SPEC_LABEL],
    )
    return 1


async def _create_blob(engine: Engine, change: Change, references: _References) -> int:
    blob: DesiredBlob = change.desired
    labels = {**blob.labels, MANAGED_LABEL: "true"}
    if blob.kind == "config":
        blob_id = await engine.create_config(
            blob.name, data=blob.data, labels=labels, templating=blob.templating
        )
        references.configs[blob.name] = blob_id
    else:
        blob_id = await engine.create_secret(
            blob.name, data=blob.data, labels=labels, templating=blob.templating
        )
        references.secrets[blob.name] = blob_id
    # The digest prefix identifies the content without revealing it.
    log.info(f"{blob.kind}.created", name=blob.name, sha256=blob.digest[:10])
    return 1


async def _update_node(engine: Engine, change: Change, desired: DesiredState) -> int:
    node: JSONObject = change.live or {}
    for attempt in range(MAX_ATTEMPTS):
        labels = node_labels_after(desired, node)
        if labels == (node["Spec"].get("Labels") or {}):
            return 0
        spec = copy.deepcopy(node["Spec"])
        spec["Labels"] = labels
        try:
            await engine.update_node(
                node["ID"], version=node["Version"]["Index"], spec=spec
            )
        except OutOfSequence:
            await _back_off(attempt, change)
            node = await engine.inspect_node(node["ID"])
            continue
        log.info(
            "node.labels.updated",
            node=change.name,
            changed=[f.path for f in change.fields],
        )
        return 1
    raise EngineError(
        f"node {change.name}: still out of sequence after {MAX_ATTEMPTS} tries"
    )


def _labelled(spec: JSONObject, revision: str | None) -> JSONObject:
    """The spec with the revision label (``spec`` is a copy the caller owns)."""
    if revision:
        spec["Labels"] = {**(spec.get("Labels") or {}), REVISION_LABEL: revision}
    return spec


async def _write_service(
    engine: Engine, change: Change, references: _References, revision: str | None
) -> int:
    service: DesiredService = change.desired
    if change.action == CREATE:
        service_id = await engine.create_service(
            _labelled(references.resolve(managed_service_spec(service)), revision)
        )
        log.info("service.created", service=service.name, id=service_id)
        return 1

    live: JSONObject = change.live or {}
    if change.action == RECREATE:
        await engine.remove_service(live["ID"])
        service_id = await engine.create_service(
            _labelled(references.resolve(managed_service_spec(service)), revision)
        )
        log.info("service.recreated", service=service.name, id=service_id)
        return 2

    assert change.action in (UPDATE, ADOPT)
    for attempt in range(MAX_ATTEMPTS):
        body = _labelled(references.resolve(update_body(service, live)), revision)
        try:
            await engine.update_service(
                live["ID"], version=live["Version"]["Index"], spec=body
            )
        except OutOfSequence:
            await _back_off(attempt, change)
            live = await engine.inspect_service(live["ID"])
            if not _still_differs(service, live, references):
                return 0
            continue
        log.info(
            "service.adopted" if change.action == ADOPT else "service.updated",
            service=service.name,
            changed=[f.path for f in change.fields],
        )
        return 1
    raise EngineError(
        f"service {service.name}: still out of sequence after {MAX_ATTEMPTS} tries"
    )


def _still_differs(
    service: DesiredService, live: JSONObject, references: _References
) -> bool:
    names = {network_id: name for name, network_id in references.networks.items()}
    have = canonical_service(live["Spec"], network_names=names)
    want = canonical_service(managed_service_spec(service), network_names={})
    return any(True for _ in field_changes(have, want))


async def _back_off(attempt: int, change: Change) -> None:
    delay = BASE_DELAY * (2**attempt) * (0.5 + random.random())  # jitter, not crypto
    log.warning(
        "write.out_of_sequence",
        kind=change.kind,
        object=change.name,
        retry_in=round(delay, 3),
    )
    await asyncio.sleep(delay)
