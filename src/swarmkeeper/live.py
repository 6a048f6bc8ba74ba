"""The live state: what the swarm holds now, read in one list call per kind.

Objects stay as the engine sends them (JSON mappings); this module only
indexes them by name and says which ones swarmkeeper owns. Reading is five
list calls and one ``/info``, run concurrently, whatever the number of
objects.

It also says whether this instance may write: only while the node its engine
runs on is the swarm's leader (Raft elects it; swarmkeeper runs no election
of its own) and that node sees a majority of the managers reachable. The
second condition matters for a leader cut off from the others: its engine
keeps calling itself leader for several seconds after the rest of the swarm
has elected another, and its writes cannot commit.
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
class Leadership:
    """This node's standing in its swarm, as its own engine reports it."""

    node_id: str
    leader: bool  # its own node's ManagerStatus.Leader
    quorum: bool  # it reaches a leader and sees a majority of managers reachable
    problem: str | None = None  # why it may not write, when it may not

    @property
    def may_write(self) -> bool:
        return self.leader and self.quorum


NOT_A_MANAGER = "this engine is not a swarm manager"


def leadership_from(info: JSONObject, nodes: list[JSONObject]) -> Leadership:
    """Leadership from ``/info`` and the node list, read through this node's engine."""
    swarm = info.get("Swarm") or {}
    node_id = str(swarm.get("NodeID") or "")
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        return Leadership(node_id, leader=False, quorum=False, problem=NOT_A_MANAGER)
    if swarm.get("Error"):
        # A manager that has lost its leader says so here, and /info still
        # answers at once while its swarm calls fail.
        return Leadership(
            node_id, leader=False, quorum=False, problem=str(swarm["Error"])
        )
    return leadership_in(node_id, nodes)


def leadership_in(node_id: str, nodes: list[JSONObject]) -> Leadership:
    """Leadership of node ``node_id`` from a node list its manager answered."""
    own = next((node for node in nodes if node.get("ID") == node_id), {})
    leader = bool((own.get("ManagerStatus") or {}).get("Leader"))
    managers = [node["ManagerStatus"] for node in nodes if node.get("ManagerStatus")]
    reachable = sum(1 for m in managers if m.get("Reachability") == "reachable")
    if reachable * 2 <= len(managers):
        problem = f"only {reachable} of {len(managers)} managers are reachable"
        return Leadership(node_id, leader=leader, quorum=False, problem=problem)
    return Leadership(node_id, leader=leader, quorum=True)


async def read_leadership(engine: Engine) -> Leadership:
    """This node's leadership now: ``/info`` and the node list, concurrently.

    A swarm call refused for want of a leader is an answer (no quorum), not
    an error; an engine that does not answer raises ``EngineUnreachable``.
    """
    from swarmkeeper.engine import SwarmUnavailable

    info, nodes = await asyncio.gather(
        engine.info(), engine.list_nodes(), return_exceptions=True
    )
    if isinstance(info, BaseException):
        raise info
    if isinstance(nodes, SwarmUnavailable):
        swarm = info.get("Swarm") or {}
        return Leadership(
            str(swarm.get("NodeID") or ""),
            leader=False,
            quorum=False,
            problem=str(swarm.get("Error") or nodes),
        )
    if isinstance(nodes, BaseException):
        raise nodes
    return leadership_from(info, nodes)


def split_leaving_networks(
    swarm_networks: list[JSONObject],
) -> tuple[list[JSONObject], list[JSONObject]]:
    """The swarm's networks, and those removed from it that this node still lists.

    A manager answers ``GET /networks`` with the swarm's own networks followed
    by the node's local ones the swarm did not already name. A removed overlay
    network stays local until the last task container attached to it on this
    node has stopped (up to a stop grace period), so for that while it is
    listed though the swarm has it no more: a service cannot attach to it and
    the engine refuses a new network of its name. The two kinds of entry
    differ in one way: only the node's own carry ``Peers``.

    That difference is trusted only when the swarm answered at all, shown by
    at least one entry without ``Peers`` (usually the swarm's ingress
    network). Otherwise (a manager without quorum lists local entries only,
    and a future engine might add ``Peers`` everywhere) every entry counts as
    the swarm's, as before: a network is never taken for gone on a guess.
    """
    stored = [n for n in swarm_networks if "Peers" not in n]
    if not stored:
        return list(swarm_networks), []
    return stored, [n for n in swarm_networks if "Peers" in n]


@dataclass(frozen=True)
class LiveState:
    """One consistent-enough read of the swarm, indexed for the diff."""

    node_id: str
    is_leader: bool  # leader with a quorum in view: this instance may write
    services: dict[str, JSONObject] = field(default_factory=dict)  # by name
    networks: dict[str, JSONObject] = field(default_factory=dict)  # by name
    configs: dict[str, JSONObject] = field(default_factory=dict)  # by name
    secrets: dict[str, JSONObject] = field(default_factory=dict)  # by name
    nodes: list[JSONObject] = field(default_factory=list)
    # Network names whose name more than one network carries (possible for
    # local-scope networks); a desired network with such a name is ambiguous.
    duplicate_network_names: frozenset[str] = frozenset()
    # Networks already removed from the swarm that this node still lists, by
    # name: see split_leaving_networks. They cannot be used or re-created yet.
    leaving_networks: dict[str, JSONObject] = field(default_factory=dict)
    # The leadership read with this state; None only in hand-made states.
    leadership: Leadership | None = None

    @property
    def network_names_by_id(self) -> dict[str, str]:
        names = {n["Id"]: name for name, n in self.leaving_networks.items()}
        names.update((n["Id"], name) for name, n in self.networks.items())
        return names

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


async def read_live_state(engine: Engine, *, node_id: str | None = None) -> LiveState:
    """Read everything the diff needs, concurrently.

    ``node_id`` is this engine's swarm node when the caller already knows it
    (from an earlier ``/info``): then ``/info`` is not asked, since the node
    list alone says whether that node leads and sees a quorum, and ``/info``
    is the slowest of these reads (9 ms of a 100-service read's 23 on the
    test engine). A node list without that node (the engine left and joined
    a swarm again) sends the read back to ``/info``. A swarm without a
    leader fails the node list itself, so nothing is missed that a write
    depends on; writers ask ``/info`` again right before writing anyway.
    """
    from swarmkeeper.engine import EngineError

    try:
        async with asyncio.TaskGroup() as group:
            info = group.create_task(engine.info()) if not node_id else None
            services = group.create_task(engine.list_services())
            networks = group.create_task(engine.list_networks())
            configs = group.create_task(engine.list_configs())
            secrets = group.create_task(engine.list_secrets())
            nodes = group.create_task(engine.list_nodes())
    except* EngineError as failures:
        # Reads failing for one reason (the engine is away) are one
        # problem to report, not a group of them.
        raise failures.exceptions[0] from None

    node_list = nodes.result()
    if info is None and node_id and any(n.get("ID") == node_id for n in node_list):
        leadership = leadership_in(node_id, node_list)
    else:
        answer = info.result() if info is not None else await engine.info()
        leadership = leadership_from(answer, node_list)

    # Only swarm-scope networks can carry services; local ones (bridge, host)
    # share names across nodes and are not swarmkeeper's business.
    swarm_networks = [n for n in networks.result() if n.get("Scope") == "swarm"]
    stored, leaving = split_leaving_networks(swarm_networks)
    by_name: dict[str, JSONObject] = {}
    duplicates: set[str] = set()
    for network in stored:
        name = network["Name"]
        if name in by_name:
            duplicates.add(name)
        by_name[name] = network

    return LiveState(
        node_id=leadership.node_id,
        is_leader=leadership.may_write,
        services={s["Spec"]["Name"]: s for s in services.result()},
        networks=by_name,
        configs={c["Spec"]["Name"]: c for c in configs.result()},
        secrets={s["Spec"]["Name"]: s for s in secrets.result()},
        nodes=node_list,
        duplicate_network_names=frozenset(duplicates),
        leaving_networks={n["Name"]: n for n in leaving if n["Name"] not in by_name},
        leadership=leadership,
    )
