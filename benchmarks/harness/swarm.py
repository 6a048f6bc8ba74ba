"""The swarm as the Docker SDK (an independent client) sees it.

Writes are counted here, not from swarmkeeper's own output: every service
and config carries ``Version.Index``, which the engine raises on each write.
Networks carry no version in the engine API; a network is never updated in
place (a change is a remove and a create), so its ID and creation time stand
in for one.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import docker

STACK_LABEL = "com.docker.stack.namespace"
MANAGED_NODE_LABELS = "swarmkeeper.managed-labels"

# The engine keeps writing to a service shortly after a deploy (its own
# follow-up updates); a stack counts as settled once no version moved for this
# long, so one measurement never pays for the engine's work left by the last.
SETTLE_QUIET = 2.0
SETTLE_TIMEOUT = 180.0
REMOVE_TIMEOUT = 300.0


class SwarmShared(RuntimeError):
    """The swarm holds objects the benchmark did not make."""


class Swarm:
    """Reads versions, waits for quiet, removes the benchmark's stacks."""

    def __init__(self) -> None:
        # DOCKER_HOST when set, the default socket otherwise: the same
        # engine the two commands measured talk to.
        self.client = docker.from_env(timeout=300).api

    def services(self, stack: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.client.services(
            filters={"label": f"{STACK_LABEL}={stack}"}
        )
        return found

    def _stack_objects(self, stack: str) -> dict[str, list[dict[str, Any]]]:
        label = {"label": f"{STACK_LABEL}={stack}"}
        return {
            "service": self.services(stack),
            "config": self.client.configs(filters=label),
            "network": [
                n
                for n in self.client.networks(filters=label)
                if n.get("Scope") == "swarm"
            ],
        }

    def versions(self, stack: str) -> dict[str, Any]:
        """Every object of the stack, by kind and name, with its version."""
        objects = self._stack_objects(stack)
        found: dict[str, Any] = {}
        for service in objects["service"]:
            found[f"service/{service['Spec']['Name']}"] = service["Version"]["Index"]
        for config in objects["config"]:
            found[f"config/{config['Spec']['Name']}"] = config["Version"]["Index"]
        for network in objects["network"]:
            found[f"network/{network['Name']}"] = (
                f"{network['Id']}@{network.get('Created')}"
            )
        return found

    def wait_settled(self, stack: str, *, expect_services: int | None = None) -> float:
        """Until the stack's versions stood still for SETTLE_QUIET; seconds taken."""
        started = time.monotonic()
        last: dict[str, Any] | None = None
        still_since = started
        while True:
            current = {s["ID"]: s["Version"]["Index"] for s in self.services(stack)}
            now = time.monotonic()
            if current != last:
                last, still_since = current, now
            elif now - still_since >= SETTLE_QUIET and (
                expect_services is None or len(current) == expect_services
            ):
                return now - started
            if now - started > SETTLE_TIMEOUT:
                raise RuntimeError(
                    f"{stack}: the engine did not settle in {SETTLE_TIMEOUT:g} s"
                )
            time.sleep(0.25)

    def foreign(self, own_stacks: set[str]) -> list[str]:
        """What the benchmark did not make: its applies and daemons would see it.

        swarmkeeper acts on the whole swarm (it prunes owned objects it does
        not want, strips node labels it once managed), so the benchmark runs
        only on a swarm that holds nothing but its own stacks.
        """

        def ours(labels: dict[str, str] | None) -> bool:
            return (labels or {}).get(STACK_LABEL) in own_stacks

        found = [
            f"service {s['Spec']['Name']}"
            for s in self.client.services()
            if not ours(s["Spec"].get("Labels"))
        ]
        found += [
            f"config {c['Spec']['Name']}"
            for c in self.client.configs()
            if not ours(c["Spec"].get("Labels"))
        ]
        found += [
            f"secret {s['Spec']['Name']}"
            for s in self.client.secrets()
            if not ours(s["Spec"].get("Labels"))
        ]
        found += [
            f"network {n['Name']}"
            for n in self.client.networks()
            if n.get("Scope") == "swarm"
            and not n.get("Ingress")
            and n["Name"] != "ingress"
            and not ours(n.get("Labels"))
        ]
        found += [
            f"node {n['Description']['Hostname']} (labels managed by swarmkeeper)"
            for n in self.client.nodes()
            if MANAGED_NODE_LABELS in (n["Spec"].get("Labels") or {})
        ]
        return found

    def require_alone(self, own_stacks: set[str]) -> None:
        found = self.foreign(own_stacks)
        if found:
            listed = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "")
            raise SwarmShared(
                f"the swarm holds {len(found)} objects the benchmark did not make "
                f"({listed}). swarmkeeper apply and run act on the whole swarm, "
                "so the benchmark would measure (and could change) them. Run it "
                "on a swarm of its own, or pass --allow-foreign to run anyway "
                "(its desired state has prune: false; the report will say so)."
            )

    def remove_stack(self, stack: str) -> float:
        """Services first, then (once no task holds them) configs and networks."""
        started = time.monotonic()
        for service in self.services(stack):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.remove_service(service["ID"])
        deadline = started + REMOVE_TIMEOUT
        while True:
            left = self._stack_objects(stack)
            if not any(left.values()):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                names = [k for k, v in left.items() if v]
                raise RuntimeError(f"{stack}: could not remove its {names}")
            if not left["service"]:
                for config in left["config"]:
                    with contextlib.suppress(docker.errors.APIError):
                        self.client.remove_config(config["ID"])
                for network in left["network"]:
                    with contextlib.suppress(docker.errors.APIError):
                        self.client.remove_network(network["Id"])
            time.sleep(0.3)


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Objects written (created, removed or updated) between two snapshots."""
    counts = {"service": 0, "config": 0, "network": 0}
    for key in before.keys() | after.keys():
        if before.get(key) != after.get(key):
            counts[key.split("/", 1)[0]] += 1
    counts["total"] = sum(counts.values())
    return counts
