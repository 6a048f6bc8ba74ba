"""Pure parts of leadership: who may write, and how the engine's refusals read.

The documents below are shaped as this machine's engine sends them (seen on
the three-manager bed of ``test_failover.py``); the failover itself is
tested there, on real engines.
"""

from __future__ import annotations

from typing import Any

import aiodocker
import pytest

from swarmkeeper.engine import (
    EngineUnreachable,
    OutOfSequence,
    RequestRejected,
    SwarmUnavailable,
    _classify,
)
from swarmkeeper.live import NOT_A_MANAGER, leadership_from

NO_LEADER = (
    "rpc error: code = Unknown desc = The swarm does not have a leader. It's "
    "possible that too few managers are online. Make sure more than half of "
    "the managers are online."
)


def info(node_id: str = "n1", *, error: str = "", manager: bool = True) -> Any:
    return {
        "Swarm": {
            "NodeID": node_id,
            "LocalNodeState": "active",
            "ControlAvailable": manager,
            "Error": error,
        }
    }


def node(node_id: str, *, leader: bool = False, reachable: bool = True) -> Any:
    status: dict[str, Any] = {
        "Reachability": "reachable" if reachable else "unreachable"
    }
    if leader:
        status["Leader"] = True
    return {"ID": node_id, "ManagerStatus": status}


def worker(node_id: str) -> Any:
    return {"ID": node_id}


class TestLeadershipFrom:
    def test_the_leader_with_its_managers_reachable_may_write(self) -> None:
        nodes = [node("n1", leader=True), node("n2"), node("n3"), worker("w1")]

        leadership = leadership_from(info("n1"), nodes)

        assert (leadership.leader, leadership.quorum, leadership.may_write) == (
            True,
            True,
            True,
        )
        assert leadership.problem is None

    def test_a_follower_has_quorum_but_may_not_write(self) -> None:
        nodes = [node("n1", leader=True), node("n2"), node("n3")]

        leadership = leadership_from(info("n2"), nodes)

        assert (leadership.leader, leadership.quorum, leadership.may_write) == (
            False,
            True,
            False,
        )

    def test_a_leader_seeing_no_majority_may_not_write(self) -> None:
        # A cut-off leader: its engine still says Leader, but it sees the
        # other managers unreachable.
        nodes = [
            node("n1", leader=True),
            node("n2", reachable=False),
            node("n3", reachable=False),
        ]

        leadership = leadership_from(info("n1"), nodes)

        assert leadership.leader is True
        assert leadership.quorum is False
        assert leadership.may_write is False
        assert leadership.problem == "only 1 of 3 managers are reachable"

    def test_one_manager_down_of_three_keeps_the_quorum(self) -> None:
        nodes = [node("n1", leader=True), node("n2"), node("n3", reachable=False)]

        assert leadership_from(info("n1"), nodes).may_write is True

    def test_half_of_the_managers_is_no_majority(self) -> None:
        nodes = [node("n1", leader=True), node("n2", reachable=False)]

        assert leadership_from(info("n1"), nodes).quorum is False

    def test_the_swarm_error_in_info_means_no_leader(self) -> None:
        nodes = [node("n1", leader=True), node("n2"), node("n3")]

        leadership = leadership_from(info("n1", error=NO_LEADER), nodes)

        assert leadership.may_write is False
        assert leadership.quorum is False
        assert leadership.problem == NO_LEADER

    @pytest.mark.parametrize(
        "document",
        [
            info(manager=False),
            {"Swarm": {"NodeID": "", "LocalNodeState": "inactive"}},
            {"Swarm": {"NodeID": "n1", "LocalNodeState": "pending"}},
            {},
        ],
        ids=["worker", "no-swarm", "pending", "empty"],
    )
    def test_no_manager_no_writes(self, document: Any) -> None:
        leadership = leadership_from(document, [node("n1", leader=True)])

        assert leadership.may_write is False
        assert leadership.problem == NOT_A_MANAGER


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "message", "expected"),
        [
            (500, NO_LEADER, SwarmUnavailable),
            (
                500,
                "rpc error: code = Unknown desc = raft: failed to process the "
                "request: node lost leader status",
                SwarmUnavailable,
            ),
            (
                500,
                "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
                SwarmUnavailable,
            ),
            (
                503,
                'This node is not a swarm manager. Use "docker swarm init"',
                SwarmUnavailable,
            ),
            (
                500,
                "rpc error: code = Unknown desc = update out of sequence",
                OutOfSequence,
            ),
            (400, "invalid JSON", RequestRejected),
            (500, "something else broke", RequestRejected),
            (900, "Cannot connect to Docker", EngineUnreachable),
        ],
        ids=[
            "no-leader",
            "lost-leader",
            "deadline",
            "not-manager",
            "sequence",
            "bad",
            "other",
            "unreachable",
        ],
    )
    def test_the_engines_refusals_are_named_after_their_condition(
        self, status: int, message: str, expected: type[Exception]
    ) -> None:
        error = aiodocker.DockerError(status, message)

        classified = _classify(error, "update service x")

        assert type(classified) is expected
        assert classified.status == status
        assert str(classified) == f"update service x: {message}"
