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

import hashlib
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
    copy_json,
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
RECREATE = "recreate"  # only with --recreate-services / --recreate-networks
REMOVE = "remove"  # pruning: owned, no longer desired, every guard agrees
CONFLICT = "conflict"  # an object swarmkeeper does not own is in the way
BLOCKED = "blocked"  # a difference this pass cannot fix
HELD = "held"  # a change deliberately not made: a prune guard, a failed spec
RECORD_FAILURE = "record-failure"  # label a service whose update the engine undid
WAITING = "waiting"  # not possible until the engine finishes removing a network

# On a service: the hash of the desired spec whose update the engine rolled
# back or paused, and when (seconds since the epoch). Kept on the service so
# that another manager's instance sees it after a failover.
FAILED_SPEC_LABEL = "swarmkeeper.failed-spec"
FAILED_AT_LABEL = "swarmkeeper.failed-at"

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
        return self.action in (CREATE, UPDATE, ADOPT, RECREATE, REMOVE, RECORD_FAILURE)


@dataclass(frozen=True)
class PlanOptions:
    """What an operator allows beyond in-place convergence."""

    recreate_services: bool = False
    recreate_networks: bool = False
    allow_mass_prune: bool = False
    # Seconds a spec the engine rolled back is held before it is tried again.
    failed_spec_backoff: float = 600.0
    now: float = 0.0  # seconds since the epoch; the caller's clock


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()
    # Kinds whose pruning a guard refused in this plan, and how many objects.
    prune_refused: dict[str, int] = field(default_factory=dict)

    @property
    def in_sync(self) -> bool:
        """True when the swarm already matches: nothing to do, nothing in the way."""
        return not self.changes

    @property
    def waiting(self) -> bool:
        """Some change waits for the engine, not for a person: look again soon."""
        return any(change.action == WAITING for change in self.changes)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        return counts


def managed_service_spec(service: DesiredService) -> JSONObject:
    """The desired spec as swarmkeeper writes it: with its ownership label.

    Shallow: the nested parts are the desired state's own, so whoever
    changes them (update_body) copies first.
    """
    return {
        **service.spec,
        "Labels": {**service.spec.get("Labels", {}), MANAGED_LABEL: "true"},
    }


def make_plan(
    desired: DesiredState, live: LiveState, options: PlanOptions | None = None
) -> Plan:
    """Everything that differs, in the order it would be applied."""
    from swarmkeeper.pruning import decide_pruning

    options = options or PlanOptions()
    changes: list[Change] = []
    notes: list[str] = []

    changes.extend(_plan_networks(desired, live, options))
    changes.extend(_plan_blobs(desired, live, "config"))
    changes.extend(_plan_blobs(desired, live, "secret"))
    node_changes, node_notes = _plan_nodes(desired, live)
    changes.extend(node_changes)
    notes.extend(node_notes)
    changes.extend(_plan_services(desired, live, options))

    refused: dict[str, int] = {}
    for decision in decide_pruning(
        desired, live, allow_mass_prune=options.allow_mass_prune
    ):
        if decision.refused:
            refused[decision.kind] = len(decision.candidates)
        for removal in decision.candidates:
            changes.append(
                Change(
                    removal.kind,
                    removal.name,
                    HELD if decision.refused else REMOVE,
                    reason=decision.refused
                    or "owned by swarmkeeper and no longer desired",
                    live=removal.live,
                )
            )
    changes = [_suspended(change, desired) or change for change in changes]
    if live.leaving_networks:
        changes = [_waiting_for_network(change, live) or change for change in changes]
    return Plan(changes=tuple(changes), notes=tuple(notes), prune_refused=refused)


def _stack_of(change: Change) -> str | None:
    """The stack an object belongs to, from the desired or the live side."""
    stack = getattr(change.desired, "stack", None)
    if stack:
        return str(stack)
    live = change.live or {}
    labels = (live.get("Spec") or {}).get("Labels") or live.get("Labels") or {}
    return labels.get(STACK_NAMESPACE_LABEL)


def _suspended(change: Change, desired: DesiredState) -> Change | None:
    """The change held instead, when policy.yml suspends its stack or service."""
    if not change.writes or not desired.policy.suspend:
        return None
    stack = _stack_of(change)
    for entry in desired.policy.suspend:
        entry_stack, _, service = entry.partition("/")
        if stack != entry_stack:
            continue
        if not service or (
            change.kind == "service" and change.name == f"{stack}_{service}"
        ):
            return Change(
                change.kind,
                change.name,
                HELD,
                fields=change.fields,
                reason=f"suspended in policy.yml ({entry}): reported, not changed",
                live=change.live,
            )
    return None


# ----------------------------------------------------------------- networks --


def _services_using(live: LiveState, network: JSONObject) -> list[str]:
    network_id = network.get("Id")
    users = []
    for name, service in live.services.items():
        spec = service["Spec"]
        attachments = (spec.get("TaskTemplate") or {}).get("Networks") or []
        if any(
            a.get("Target") in (network_id, network.get("Name")) for a in attachments
        ):
            users.append(name)
    return sorted(users)


def _ingress_publishers(live: LiveState) -> list[str]:
    """Services publishing a port through the routing mesh (they need ingress)."""
    publishers = []
    for name, service in live.services.items():
        ports = (service["Spec"].get("EndpointSpec") or {}).get("Ports") or []
        if any((p.get("PublishMode") or "ingress") == "ingress" for p in ports):
            publishers.append(name)
    return sorted(publishers)


def _plan_ingress(
    network: DesiredNetwork, live: LiveState, options: PlanOptions
) -> Change:
    """Replacing the swarm's ingress network: only when nothing publishes through it."""
    current_name = live.ingress_network
    current = live.networks.get(current_name) if current_name else None
    publishers = _ingress_publishers(live)
    what = f"the swarm's ingress network is {current_name or 'missing'}"
    if publishers:
        shown = ", ".join(publishers[:5]) + (" ..." if len(publishers) > 5 else "")
        reason = (
            f"{what}; replacing it needs every service publishing ports in ingress "
            f"mode removed first, and these do: {shown}"
        )
        return Change(
            "network",
            network.name,
            BLOCKED,
            reason=reason,
            desired=network,
            live=current,
        )
    if not options.recreate_networks:
        reason = f"{what}; apply --recreate-networks replaces it with {network.name}"
        return Change(
            "network",
            network.name,
            BLOCKED,
            reason=reason,
            desired=network,
            live=current,
        )
    reason = f"{what}; it is removed and {network.name} created as the ingress network"
    return Change(
        "network", network.name, RECREATE, reason=reason, desired=network, live=current
    )


_LEAVING = (
    "removed from the swarm, but this node lists it until its last task "
    "container on it stops; it is created once the engine has let go of it"
)


def _waiting_for_network(change: Change, live: LiveState) -> Change | None:
    """A service write held back because a network it joins is still leaving."""
    if change.kind != "service" or not change.writes or change.desired is None:
        return None
    attachments = change.desired.spec.get("TaskTemplate", {}).get("Networks") or []
    for attachment in attachments:
        target = attachment.get("Target")
        if target in live.leaving_networks and target not in live.networks:
            return Change(
                change.kind,
                change.name,
                WAITING,
                fields=change.fields,
                reason=f"joins network {target!r}, which the engine is still "
                "removing; written once it is gone",
                desired=change.desired,
                live=change.live,
            )
    return None


def _plan_networks(
    desired: DesiredState, live: LiveState, options: PlanOptions
) -> list[Change]:
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
            changes.append(_plan_ingress(network, live, options))
            continue
        if current is None and name in live.leaving_networks:
            changes.append(
                Change(
                    "network",
                    name,
                    WAITING,
                    reason=_LEAVING,
                    desired=network,
                    live=live.leaving_networks[name],
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
        if not differences:
            continue
        users = _services_using(live, current)
        if options.recreate_networks and not users:
            action, reason = RECREATE, "it is removed and created again"
        elif users:
            action = BLOCKED
            reason = (
                "networks cannot be changed in place, and re-creating this one needs "
                f"these services detached first: {', '.join(users)}"
            )
        else:
            action = BLOCKED
            reason = (
                "networks cannot be changed in place; apply --recreate-networks "
                "re-creates it (no service uses it)"
            )
        changes.append(
            Change(
                "network",
                name,
                action,
                fields=differences,
                reason=reason,
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


def spec_hash(spec: JSONObject) -> str:
    """A short hash of a service's canonical desired spec, for failure records."""
    canonical = canonical_service(spec, network_names={})
    canonical["Labels"] = {
        k: v for k, v in canonical["Labels"].items() if not k.startswith("swarmkeeper.")
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def update_state(service: JSONObject) -> str | None:
    """The engine's state of the service's last update (``updating``, ``paused``...)."""
    state = (service.get("UpdateStatus") or {}).get("State")
    return str(state) if state else None


# The engine is still acting, or stopped half-way and waits for a person: any
# write now would interrupt it or resume it, so swarmkeeper only reports.
_HANDS_OFF_STATES = ("rollback_started", "rollback_paused", "paused")


def _held_by_failure(
    spec: JSONObject, live_spec: JSONObject, options: PlanOptions
) -> str | None:
    """Why this desired spec must not be sent again yet, if it failed before."""
    labels = live_spec.get("Labels") or {}
    if labels.get(FAILED_SPEC_LABEL) != spec_hash(spec):
        return None
    try:
        failed_at = float(labels.get(FAILED_AT_LABEL, "0"))
    except ValueError:
        failed_at = 0.0
    retry_at = failed_at + options.failed_spec_backoff
    if options.now >= retry_at:
        return None
    return (
        "the engine rolled back or paused the update to this spec; it is held "
        f"until the desired state changes or {int(retry_at - options.now)} s pass"
    )


def _plan_services(
    desired: DesiredState, live: LiveState, options: PlanOptions
) -> list[Change]:
    recreate_services = options.recreate_services
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
        # The failure record is swarmkeeper's own bookkeeping, not drift.
        for side in (have, want):
            side["Labels"].pop(FAILED_SPEC_LABEL, None)
            side["Labels"].pop(FAILED_AT_LABEL, None)
        # Equal canonical forms have no differing leaf; most services of a
        # pass are in sync, and == answers that in C, where walking every
        # leaf was a third of a pass's CPU time.
        if have == want:
            continue
        fields = tuple(field_changes(have, want))

        if not fields:
            continue
        state = update_state(current) if owned else None
        if state in _HANDS_OFF_STATES:
            changes.append(
                Change(
                    "service",
                    name,
                    HELD,
                    fields=fields,
                    reason=f"the engine reports the update as {state}; swarmkeeper "
                    "writes nothing until it settles (a person may resume or roll "
                    "it back with docker service update)",
                    live=current,
                )
            )
            continue
        if (
            state == "rollback_completed"
            and fields
            and labels.get(FAILED_SPEC_LABEL) != spec_hash(spec)
        ):
            # The engine rolled the spec back, labels included, so only a new
            # label on the service can remember which spec failed.
            changes.append(
                Change(
                    "service",
                    name,
                    RECORD_FAILURE,
                    reason="the engine rolled back the update to the desired spec; "
                    "it is recorded as failed and held",
                    desired=service,
                    live=current,
                )
            )
            continue
        held = _held_by_failure(spec, live_spec, options) if owned else None
        if held:
            changes.append(
                Change("service", name, HELD, fields=fields, reason=held, live=current)
            )
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
    spec: JSONObject = copy_json(managed_service_spec(service))
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
    REMOVE: "-",
    HELD: "=",
    RECORD_FAILURE: "!",
    CREATE: "+",
    UPDATE: "~",
    ADOPT: "~",
    RECREATE: "-/+",
    CONFLICT: "!",
    BLOCKED: "!",
    WAITING: ".",
}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, sort_keys=True)


def render_text(plan: Plan, *, revision: str | None = None) -> str:
    """The plan for people: one block per object, old and new of each field."""
    lines = []
    if revision:
        # A git commit is shown by its first 12 hex digits, as git does
        # with --abbrev=12; --json has it whole.
        short = revision[:12] if len(revision) == 40 else revision
        lines.append(f"Desired state at revision {short}")
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
