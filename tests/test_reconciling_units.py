"""Pure parts of the daemon: the fight tracker, the notify protocol, the revision."""

from __future__ import annotations

import socket
from pathlib import Path

from swarmkeeper.notify import Notifier
from swarmkeeper.reconciling import FIGHT_LIMIT, FightTracker
from swarmkeeper.revisions import state_revision


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_contested_object_is_held_with_a_doubling_back_off() -> None:
    clock = Clock()
    tracker = FightTracker(clock)

    fights = [tracker.corrected("service", "s_web") for _ in range(FIGHT_LIMIT)]
    assert fights == [False] * (FIGHT_LIMIT - 1) + [True]
    assert tracker.held("service", "s_web") == 5.0
    assert tracker.held("service", "other") == 0.0

    clock.now += 5.0
    assert tracker.held("service", "s_web") == 0.0
    for _ in range(FIGHT_LIMIT):
        fought = tracker.corrected("service", "s_web")
    assert fought
    assert tracker.held("service", "s_web") == 10.0


def test_corrections_spread_out_are_not_a_fight() -> None:
    clock = Clock()
    tracker = FightTracker(clock)

    for _ in range(10):
        assert not tracker.corrected("node", "n1")
        clock.now += 31.0  # two within any 60 s window at most

    assert tracker.held("node", "n1") == 0.0


def test_notify_messages_reach_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})

        notifier.ready("up")
        notifier.watchdog()
        notifier.stopping()

        messages = [server.recv(4096).decode() for _ in range(3)]
    assert messages == [
        "READY=1\nSTATUS=up",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]
    assert notifier.watchdog_interval == 1.0


def test_notify_without_systemd_does_nothing() -> None:
    notifier = Notifier({})

    notifier.ready("up")  # no socket: nothing to send, nothing raised
    assert notifier.watchdog_interval is None


def test_revision_follows_content_not_time(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "a.yml").write_text("services: {}\n")
    first = state_revision(tmp_path)

    (tmp_path / "stacks" / "a.yml").write_text("services: {}\n")
    assert state_revision(tmp_path) == first

    (tmp_path / "stacks" / "a.yml").write_text("services: {a: {image: x}}\n")
    assert state_revision(tmp_path) != first
    assert first.startswith("dir-")


def test_unrelated_drifts_of_one_object_are_not_a_fight() -> None:
    tracker = FightTracker(Clock())

    results = [
        tracker.corrected("service", "s_web", ["created"]),
        tracker.corrected("service", "s_web", ["Mode.Replicated.Replicas"]),
        tracker.corrected("service", "s_web", ["TaskTemplate.ContainerSpec.Env"]),
    ]

    assert results == [False, False, False]
    assert tracker.held("service", "s_web") == 0.0
    assert tracker.corrected("service", "s_web", ["Mode.Replicated.Replicas"]) is False
    assert tracker.corrected("service", "s_web", ["Mode.Replicated.Replicas"]) is True
