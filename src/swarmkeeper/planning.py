"""The plan: desired against live, one entry per object that differs.

:func:`make_plan` is pure. It decides, for each network, config, secret,
node and service, whether to create it, update it in place, adopt it (a
stack service made by ``docker stack deploy``), or leave it alone and say
why (a conflict with an object swarmkeeper does not own, or a change that
needs something this pass will not do). The applier carries the plan out;
``swarmkeeper plan`` shows it.

Nothing is ever removed here: pruning objects that left the desired state
is a separate decision with its own guards.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from swarmkeeper.desired import (
    STACK_NAMESPACE_LABEL,
    DesiredBlob,
    DesiredNetwork,
    DesiredService,
    DesiredState,
)
from swarmkeeper.diffing import (
    FieldChange,
    canonical_service,
    field_changes,
    masked,
    strip_digest,
)
from swarmkeeper.live import (
    MANAGED_LABEL,
    MANAGED_NODE_LABELS,
    LiveState,
    is_owned,
)

JSONObject = dict[str, Any]

CREATE = "create"
UPDATE = "update"
ADOPT = "adopt"
RECREATE = "recreate"  # only with --recreate-services
CONFLICT = "conflict"  # an object swarmkeeper does not own is in the way
BLOCKED = "blocked"  # a difference this pass cannot or will not fix

# The order apply works in: what services need exists before them.
KIND_ORDER = ("network", "config", "secret", "node", "service")

# Network properties the engine cannot change after creation.
_NETWORK_PROPERTIES = ("Driver", "Internal", "Attachable", "Ingress", "EnableIPv6")
_ALLOCATED_OPTIONS = ("com.docker.network.driver.overlay.vxlanid_list",)


@dataclass(frozen=True)
class Change:
    """One object that differs, what to do about it, and what was found."""

    kind: str
    name: str
    action: str
    fields: tuple[FieldChange, ...] = ()
    reason: str = ""
    desired: Any = field(default=None, compare=False, repr=False)
    live: JSONObject | None = field(default=None, compare=False, repr=False)

    @property
    def writes(self) -> bool:
        return self.action in (CREATE, UPDATE, ADOPT, RECREATE)


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        """True when the swarm already matches: nothing to do, nothing in the way."""
        return not self.changes

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        return counts


def managed_service_spec(service: DesiredService) -> JSONObject:
    """The desired spec as swarmkeeper writes it: with its ownership label."""
    spec = copy.deepcopy(service.spec)
    spec["Labels"] = {**spec.get("Labels", {}), MANAGED_LABEL: "true"}
    return spec


def make_plan(
    desired: DesiredState, live: LiveState, *, recreate_services: bool = False
) -> Plan:
    """Everything that differs, in the order it would be applied."""
    changes: list[Change] = []
    notes: list[str] = []

    changes.extend(_plan_networks(desired, live))
    changes.extend(_plan_blobs(desired, live, "config"))
    changes.extend(_plan_blobs(desired, live, "secret"))
    node_changes, node_notes = _plan_nodes(desired, live)
    changes.extend(node_changes)
    notes.extend(node_notes)
    changes.extend(_plan_services(desired, live, recreate_services=recreate_services))

    return Plan(changes=tuple(changes), notes=tuple(notes))


# ----------------------------------------------------------------- networks --


def _plan_networks(desired: DesiredState, live: LiveState) -> list[Change]:
    wanted: dict[str, DesiredNetwork] = dict(desired.networks)
    for stack in desired.stacks.values():
        wanted.update(stack.networks)

    changes = []
    for stack in desired.stacks.values():
        for name in sorted(stack.external_networks):
            if name not in live.networks and name not in wanted:
                changes.append(
                    Change(
                        "network",
                        name,
                        BLOCKED,
                        reason=f"stack {stack.name!r} uses this external network, "
                        "which does not exist",
                    )
                )

    for name, network in sorted(wanted.items()):
        current = live.networks.get(name)
        is_ingress = bool(network.create.get("Ingress"))

        if is_ingress and live.ingress_network != name:
            changes.append(
                Change(
                    "network",
                    name,
                    BLOCKED,
                    reason=(
                        f"replacing the swarm's ingress network "
                        f"({live.ingress_network or 'none'}) is not done by apply yet"
                    ),
                    desired=network,
                )
            )
            continue
        if current is None:
            changes.append(Change("network", name, CREATE, desired=network))
            continue
        if name in live.duplicate_network_names:
            changes.append(
                Change(
                    "network", name, CONFLICT, reason="several networks carry this name"
                )
            )
            continue

        labels = current.get("Labels") or {}
        if (
            network.stack is not None
            and labels.get(STACK_NAMESPACE_LABEL) != network.stack
            and not is_owned(labels)
        ):
            changes.append(
                Change(
                    "network",
                    name,
                    CONFLICT,
                    reason="a network of this name exists and belongs to no "
                    f"stack {network.stack!r}; swarmkeeper leaves it alone",
                    live=current,
                )
            )
            continue

        differences = tuple(network_differences(network.create, current))
        if differences:
            changes.append(
                Change(
                    "network",
                    name,
                    BLOCKED,
                    fields=differences,
                    reason="networks cannot be changed in place; re-creating "
                    "one needs every service detached first",
                    desired=network,
                    live=current,
                )
            )
    return changes


def network_differences(create: JSONObject, live: JSONObject) -> list[FieldChange]:
    """Immutable properties that differ. Only what the desired state sets counts."""
    changes = []
    for key in _NETWORK_PROPERTIES:
        wanted = create.get(key, False if key != "Driver" else "overlay")
        have = live.get(key, False if key != "Driver" else "")
        if wanted != have:
            changes.append(FieldChange(key, have, wanted))

    wanted_options = create.get("Options") or {}
    have_options = {
        k: v
        for k, v in (live.get("Options") or {}).items()
        if k not in _ALLOCATED_OPTIONS
    }
    if wanted_options != have_options:
        changes.append(FieldChange("Options", have_options, wanted_options))

    wanted_labels = dict(create.get("Labels") or {})
    have_labels = {
        k: v
        for k, v in (live.get("Labels") or {}).items()
        if not k.startswith("swarmkeeper.")
    }
    if wanted_labels != have_labels:
        changes.append(FieldChange("Labels", have_labels, wanted_labels))

    wanted_subnets = sorted(
        c.get("Subnet")
        for c in (create.get("IPAM") or {}).get("Config") or []
        if c.get("Subnet")
    )
    if wanted_subnets:
        have_subnets = sorted(
            c.get("Subnet")
            for c in (live.get("IPAM") or {}).get("Config") or []
            if c.get("Subnet")
        )
        if wanted_subnets != have_subnets:
            changes.append(
                FieldChange("IPAM.Config.Subnet", have_subnets, wanted_subnets)
            )
    return changes


# -------------------------------------------------------- configs, secrets --


def _plan_blobs(desired: DesiredState, live: LiveState, kind: str) -> list[Change]:
    existing = live.configs if kind == "config" else live.secrets
    changes = []
    for stack in desired.stacks.values():
        blobs: dict[str, DesiredBlob] = (
            stack.configs if kind == "config" else stack.secrets
        )
        externals = (
            stack.external_configs if kind == "config" else stack.external_secrets
        )
        for name, blob in sorted(blobs.items()):
            current = existing.get(name)
            if current is None:
                changes.append(Change(kind, name, CREATE, desired=blob))
            elif not is_owned(current["Spec"].get("Labels")):
                changes.append(
                    Change(
                        kind,
                        name,
                        CONFLICT,
                        reason=f"a {kind} of this name exists that swarmkeeper "
                        "did not create; it is left alone",
                        live=current,
                    )
                )
        for name in sorted(externals):
            if name not in existing:
                changes.append(
                    Change(
                        kind,
                        name,
                        BLOCKED,
                        reason=f"stack {stack.name!r} uses this external {kind}, "
                        "which does not exist",
                    )
                )
    return changes


# -------------------------------------------------------------------- nodes --


def desired_node_labels(desired: DesiredState, hostname: str) -> dict[str, str] | None:
    """The labels ``nodes.yml`` gives a host: ``"*"`` merged under its own entry."""
    everyone = desired.node_labels.get("*")
    own = desired.node_labels.get(hostname)
    if everyone is None and own is None:
        return None
    return {**(everyone or {}), **(own or {})}


def node_labels_after(desired: DesiredState, node: JSONObject) -> dict[str, str]:
    """A node's whole label set once swarmkeeper's keys are as desired.

    Keys swarmkeeper managed before and no longer wants are removed; keys it
    never managed stay as they are; the record of managed keys is updated.
    """
    labels = dict(node["Spec"].get("Labels") or {})
    hostname = node.get("Description", {}).get("Hostname", "")
    managed_before = set(filter(None, labels.get(MANAGED_NODE_LABELS, "").split(",")))
    wanted = desired_node_labels(desired, hostname) or {}

    result = {k: v for k, v in labels.items() if k not in managed_before}
    result.update(wanted)
    result.pop(MANAGED_NODE_LABELS, None)
    if wanted:
        result[MANAGED_NODE_LABELS] = ",".join(sorted(wanted))
    return result


def _plan_nodes(
    desired: DesiredState, live: LiveState
) -> tuple[list[Change], list[str]]:
    changes: list[Change] = []
    notes: list[str] = []
    by_hostname = live.nodes_by_hostname()

    for hostname in sorted(h for h in desired.node_labels if h != "*"):
        found = by_hostname.get(hostname, [])
        if not found:
            notes.append(
                f"nodes.yml names host {hostname!r}, which is not in the swarm"
            )
        elif len(found) > 1:
            changes.append(
                Change(
                    "node",
                    hostname,
                    BLOCKED,
                    reason=f"{len(found)} nodes share this hostname; labels are not "
                    "applied to any of them",
                )
            )

    for hostname, nodes in sorted(by_hostname.items()):
        if len(nodes) != 1:
            continue
        node = nodes[0]
        labels = dict(node["Spec"].get("Labels") or {})
        new_labels = node_labels_after(desired, node)
        if new_labels != labels:
            fields = tuple(
                FieldChange(f"Labels.{key}", labels.get(key), new_labels.get(key))
                for key in sorted(set(labels) | set(new_labels))
                if labels.get(key) != new_labels.get(key)
            )
            changes.append(
                Change(
                    "node",
                    hostname,
                    UPDATE,
                    fields=fields,
                    desired=new_labels,
                    live=node,
                )
            )
    return changes, notes


# ----------------------------------------------------------------- services --


def _plan_services(
    desired: DesiredState, live: LiveState, *, recreate_services: bool
) -> list[Change]:
    network_names = live.network_names_by_id
    changes = []
    for name, service in sorted(desired.services().items()):
        spec = managed_service_spec(service)
        current = live.services.get(name)
        if current is None:
            changes.append(Change("service", name, CREATE, desired=service))
            continue

        live_spec = current["Spec"]
        labels = live_spec.get("Labels") or {}
        owned = is_owned(labels)
        same_stack = labels.get(STACK_NAMESPACE_LABEL) == service.stack
        if not owned and not same_stack:
            changes.append(
                Change(
                    "service",
                    name,
                    CONFLICT,
                    reason="a service of this name exists that is neither managed "
                    f"by swarmkeeper nor part of stack {service.stack!r}; "
                    "it is left alone",
                    live=current,
                )
            )
            continue

        have = canonical_service(live_spec, network_names=network_names)
        want = canonical_service(spec, network_names={})
        fields = tuple(field_changes(have, want))
        if not fields:
            continue

        action = UPDATE if owned else ADOPT
        reason = (
            "" if owned else "made by docker stack deploy; swarmkeeper takes it over"
        )
        moves = [
            f.path.rsplit(".", 1)[-1].lower()
            for f in fields
            if f.path.endswith(("ContainerSpec.Configs", "ContainerSpec.Secrets"))
        ]
        if not owned and moves:
            reason += (
                f"; its {' and '.join(moves)} move to content-addressed names, "
                "which restarts its tasks once"
            )
        if set(have["Mode"]) != set(want["Mode"]):
            action = RECREATE
            reason = "the engine cannot change a service's mode in place; " + (
                "it will be removed and created again"
                if recreate_services
                else "apply --recreate-services removes and creates it again"
            )
            if not recreate_services:
                changes.append(
                    Change(
                        "service",
                        name,
                        BLOCKED,
                        fields=fields,
                        reason=reason,
                        desired=service,
                        live=current,
                    )
                )
                continue
        changes.append(
            Change(
                "service",
                name,
                action,
                fields=fields,
                reason=reason,
                desired=service,
                live=current,
            )
        )
    return changes


def update_body(service: DesiredService, live: JSONObject) -> JSONObject:
    """The spec to send for an in-place update of ``live`` to ``service``.

    Names are still names (the applier resolves IDs). From the live spec it
    keeps what is derived rather than desired: ``ForceUpdate`` (bumping it
    would restart tasks), a pinned image digest for the same image, and the
    platforms that digest resolution added.
    """
    spec = managed_service_spec(service)
    live_spec = live["Spec"]
    live_template = live_spec.get("TaskTemplate") or {}
    template = spec["TaskTemplate"]
    if "ForceUpdate" in live_template:
        template["ForceUpdate"] = live_template["ForceUpdate"]

    live_image = (live_template.get("ContainerSpec") or {}).get("Image", "")
    if (
        "@" in live_image
        and strip_digest(live_image) == template["ContainerSpec"]["Image"]
    ):
        template["ContainerSpec"]["Image"] = live_image
        platforms = (live_template.get("Placement") or {}).get("Platforms")
        if platforms:
            template.setdefault("Placement", {})["Platforms"] = platforms
    return spec


# -------------------------------------------------------------- rendering --

_SYMBOLS = {
    CREATE: "+",
    UPDATE: "~",
    ADOPT: "~",
    RECREATE: "-/+",
    CONFLICT: "!",
    BLOCKED: "!",
}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, sort_keys=True)


def render_text(plan: Plan, *, revision: str | None = None) -> str:
    """The plan for people: one block per object, old and new of each field."""
    lines = []
    if revision:
        lines.append(f"Desired state at revision {revision}")
    for change in plan.changes:
        header = (
            f"{_SYMBOLS[change.action]} {change.kind} {change.name} ({change.action})"
        )
        if change.reason:
            header += f": {change.reason}"
        lines.append(header)
        for field_change in change.fields:
            shown = masked(field_change)
            lines.append(f"    {shown.path}: {_show(shown.old)} -> {_show(shown.new)}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    if plan.in_sync:
        lines.append("The swarm matches the desired state.")
    else:
        summary = ", ".join(
            f"{count} {action}" for action, count in sorted(plan.counts().items())
        )
        lines.append(f"Plan: {summary}.")
    return "\n".join(lines) + "\n"


def render_json(plan: Plan, *, revision: str | None = None) -> str:
    """The same plan for machines."""
    document = {
        "revision": revision,
        "in_sync": plan.in_sync,
        "counts": plan.counts(),
        "changes": [
            {
                "kind": change.kind,
                "name": change.name,
                "action": change.action,
                "reason": change.reason,
                "fields": [
                    {"path": shown.path, "old": shown.old, "new": shown.new}
                    for shown in map(masked, change.fields)
                ],
            }
            for change in plan.changes
        ],
        "notes": list(plan.notes),
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"
