"""The live state: what the swarm holds now, read in one list call per kind.

Objects stay as the engine sends them (JSON mappings); this module only
indexes them by name and says which ones swarmkeeper owns. Reading is five
list calls and one ``/info``, run concurrently, whatever the number of
objects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmkeeper.engine import Engine

JSONObject = dict[str, Any]

# Set on services, configs, secrets and networks that swarmkeeper created or
# adopted, in the object's own labels (never in container labels, whose
# change would restart tasks).
MANAGED_LABEL = "swarmkeeper.managed"
# On a node: the comma-separated label keys swarmkeeper manages there, so
# that another manager's instance knows them after a failover.
MANAGED_NODE_LABELS = "swarmkeeper.managed-labels"


def is_owned(labels: dict[str, str] | None) -> bool:
    return (labels or {}).get(MANAGED_LABEL) == "true"


@dataclass(frozen=True)
class LiveState:
    """One consistent-enough read of the swarm, indexed for the diff."""

    node_id: str
    is_leader: bool
    services: dict[str, JSONObject] = field(default_factory=dict)  # by name
    networks: dict[str, JSONObject] = field(default_factory=dict)  # by name
    configs: dict[str, JSONObject] = field(default_factory=dict)  # by name
    secrets: dict[str, JSONObject] = field(default_factory=dict)  # by name
    nodes: list[JSONObject] = field(default_factory=list)
    # Network names whose name more than one network carries (possible for
    # local-scope networks); a desired network with such a name is ambiguous.
    duplicate_network_names: frozenset[str] = frozenset()

    @property
    def network_names_by_id(self) -> dict[str, str]:
        return {network["Id"]: name for name, network in self.networks.items()}

    @property
    def ingress_network(self) -> str | None:
        for name, network in self.networks.items():
            if network.get("Ingress"):
                return name
        return None

    def nodes_by_hostname(self) -> dict[str, list[JSONObject]]:
        nodes: dict[str, list[JSONObject]] = {}
        for node in self.nodes:
            hostname = node.get("Description", {}).get("Hostname", "")
            nodes.setdefault(hostname, []).append(node)
        return nodes


async def read_live_state(engine: Engine) -> LiveState:
    """Read everything the diff needs, concurrently."""
    from swarmkeeper.engine import EngineError

    try:
        async with asyncio.TaskGroup() as group:
            info = group.create_task(engine.info())
            services = group.create_task(engine.list_services())
            networks = group.create_task(engine.list_networks())
            configs = group.create_task(engine.list_configs())
            secrets = group.create_task(engine.list_secrets())
            nodes = group.create_task(engine.list_nodes())
    except* EngineError as failures:
        # Six reads failing for one reason (the engine is away) are one
        # problem to report, not a group of six.
        raise failures.exceptions[0] from None

    swarm = info.result().get("Swarm") or {}
    node_id = str(swarm.get("NodeID") or "")
    node_list = nodes.result()
    is_leader = any(
        node.get("ID") == node_id and (node.get("ManagerStatus") or {}).get("Leader")
        for node in node_list
    )

    # Only swarm-scope networks can carry services; local ones (bridge, host)
    # share names across nodes and are not swarmkeeper's business.
    by_name: dict[str, JSONObject] = {}
    duplicates: set[str] = set()
    for network in networks.result():
        if network.get("Scope") != "swarm":
            continue
        name = network["Name"]
        if name in by_name:
            duplicates.add(name)
        by_name[name] = network

    return LiveState(
        node_id=node_id,
        is_leader=bool(is_leader),
        services={s["Spec"]["Name"]: s for s in services.result()},
        networks=by_name,
        configs={c["Spec"]["Name"]: c for c in configs.result()},
        secrets={s["Spec"]["Name"]: s for s in secrets.result()},
        nodes=node_list,
        duplicate_network_names=frozenset(duplicates),
    )
