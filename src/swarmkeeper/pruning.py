"""Pruning: removing what swarmkeeper owns and no longer wants, behind hard guards.

Only objects carrying ``swarmkeeper.managed=true`` are ever candidates.
A candidate is removed only when every guard agrees, and the guards are hard
stops, not quotas: when one trips for a kind, nothing of that kind is
removed in that pass, and the plan says why.

1. ``prune: false`` in ``policy.yml``: nothing is removed.
2. The desired set of a kind is empty while swarmkeeper owns objects of that
   kind: an emptied ``stacks/`` folder or a broken checkout looks exactly like
   this, so nothing of the kind is removed.
3. A pass would remove more objects of a kind than the cap (``prune_cap``, by
   default a quarter of the owned objects of the kind and at least one):
   nothing of the kind is removed until ``apply --allow-mass-prune`` or a
   higher cap.

(A desired state that fails to load never reaches planning at all.)

Configs and secrets also keep what a rollback needs: a version still named by
a service's current or previous spec stays, and of each name (the part before
the content hash) the two newest versions stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from swarmkeeper.desired import DesiredState
from swarmkeeper.live import LiveState, is_owned

JSONObject = dict[str, Any]

# Versions of one config or secret kept for rollbacks: the current and the
# previous one.
KEEP_VERSIONS = 2
_HASHED_NAME = re.compile(r"^(?P<base>.+)-[0-9a-f]{10}$")

KINDS = ("service", "config", "secret", "network")


@dataclass(frozen=True)
class Removal:
    kind: str
    name: str
    live: JSONObject


@dataclass(frozen=True)
class PruneDecision:
    """For one kind: what would be removed, and the guard that holds it back."""

    kind: str
    candidates: tuple[Removal, ...]
    refused: str | None = None  # the reason nothing is removed, if a guard tripped

    @property
    def removals(self) -> tuple[Removal, ...]:
        return () if self.refused else self.candidates


def default_cap(owned: int) -> int:
    return max(1, owned // 4)


def decide_pruning(
    desired: DesiredState, live: LiveState, *, allow_mass_prune: bool
) -> list[PruneDecision]:
    """One decision per kind with candidates, guards applied."""
    policy = desired.policy
    wanted = _desired_names(desired)
    decisions = []

    owned_services = {
        n: s for n, s in live.services.items() if is_owned(s["Spec"].get("Labels"))
    }
    service_candidates = [n for n in owned_services if n not in wanted["service"]]
    # Services whose removal a guard holds back still use their networks.
    removed_services: set[str] = set()

    for kind in KINDS:
        owned = _owned(live, kind)
        if kind == "service":
            names = service_candidates
        elif kind == "network":
            staying = [s for n, s in live.services.items() if n not in removed_services]
            in_use = _networks_in_use(staying, live)
            names = [n for n in owned if n not in wanted[kind] and n not in in_use]
        else:
            names = _blob_candidates(kind, owned, wanted[kind], live)
        if not names:
            continue

        candidates = tuple(Removal(kind, name, owned[name]) for name in sorted(names))
        cap = (
            policy.prune_cap
            if policy.prune_cap is not None
            else default_cap(len(owned))
        )
        refused = None
        if not policy.prune:
            refused = "pruning is off (policy.yml prune: false)"
        elif not wanted[kind]:
            refused = (
                f"the desired state has no {kind}s at all while swarmkeeper owns "
                f"{len(owned)}; an emptied or broken desired state looks like this, "
                "so nothing is removed (apply --allow-mass-prune to remove them)"
            )
        elif len(candidates) > cap:
            refused = (
                f"{len(candidates)} {kind}s would be removed, more than the cap of "
                f"{cap} (of {len(owned)} owned); nothing is removed until "
                "apply --allow-mass-prune or a higher policy.yml prune_cap"
            )
        if refused and allow_mass_prune and policy.prune:
            refused = None
        if kind == "service" and not refused:
            removed_services = set(names)
        decisions.append(PruneDecision(kind, candidates, refused))
    return decisions


def _desired_names(desired: DesiredState) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {kind: set() for kind in KINDS}
    names["network"].update(desired.networks)
    for stack in desired.stacks.values():
        names["service"].update(stack.services)
        names["network"].update(stack.networks)
        names["network"].update(stack.external_networks)
        names["config"].update(stack.configs)
        names["config"].update(stack.external_configs)
        names["secret"].update(stack.secrets)
        names["secret"].update(stack.external_secrets)
    return names


def _owned(live: LiveState, kind: str) -> dict[str, JSONObject]:
    if kind == "service":
        objects = live.services
    elif kind == "network":
        return {n: o for n, o in live.networks.items() if is_owned(o.get("Labels"))}
    else:
        objects = live.configs if kind == "config" else live.secrets
    return {n: o for n, o in objects.items() if is_owned(o["Spec"].get("Labels"))}


def _networks_in_use(services: list[JSONObject], live: LiveState) -> set[str]:
    names = live.network_names_by_id
    used = set()
    for service in services:
        spec = service["Spec"]
        attachments = (
            (spec.get("TaskTemplate") or {}).get("Networks")
            or spec.get("Networks")
            or []
        )
        for attachment in attachments:
            target = attachment.get("Target", "")
            used.add(names.get(target, target))
    return used


def _blob_candidates(
    kind: str, owned: dict[str, JSONObject], wanted: set[str], live: LiveState
) -> list[str]:
    """Owned versions nobody needs: not desired, not referenced, not the newest."""
    referenced = _referenced(kind, live)
    versions: dict[str, list[tuple[str, str]]] = {}
    for name, item in owned.items():
        match = _HASHED_NAME.match(name)
        base = match["base"] if match else name
        versions.setdefault(base, []).append((str(item.get("CreatedAt", "")), name))

    candidates = []
    for base_versions in versions.values():
        still_desired = any(name in wanted for _, name in base_versions)
        newest_first = [name for _, name in sorted(base_versions, reverse=True)]
        # Rollback needs the previous version of a config that is still in use.
        kept = set(newest_first[:KEEP_VERSIONS]) if still_desired else set()
        for name in newest_first:
            item_id = owned[name].get("ID")
            if (
                name in wanted
                or name in kept
                or name in referenced
                or item_id in referenced
            ):
                continue
            candidates.append(name)
    return candidates


def _referenced(kind: str, live: LiveState) -> set[str]:
    """Names and IDs of configs (or secrets) in any service's spec or previous spec."""
    key, name_key, id_key = (
        ("Configs", "ConfigName", "ConfigID")
        if kind == "config"
        else ("Secrets", "SecretName", "SecretID")
    )
    found: set[str] = set()
    for service in live.services.values():
        for spec in (service.get("Spec"), service.get("PreviousSpec")):
            container = ((spec or {}).get("TaskTemplate") or {}).get(
                "ContainerSpec"
            ) or {}
            for reference in container.get(key) or []:
                found.add(str(reference.get(name_key, "")))
                found.add(str(reference.get(id_key, "")))
    return found
