"""Several managers, one swarmkeeper on each, one writer: failover on a real swarm.

Three private engines (``PrivateCluster``: each a dockerd in its own network
namespace, joined as managers of one swarm) and one ``swarmkeeper run`` per
manager, each talking to its own node's engine with its own desired-state
copy and metrics port. The tests share the cluster and the daemons, and run
in order, each starting from where the previous one left the swarm:

1. exactly one instance reports leader and only it writes;
2. the leader's engine stops: a new leader is elected and its instance
   corrects a drift made after the election within 5 s of it;
3. the old leader's engine starts again: it rejoins as a follower and its
   instance writes nothing;
4. the leader is cut off from the others: its instance says so (/readyz,
   metrics, log), a write it attempts fails and is counted, and it does not
   retry in a tight loop; after healing everything recovers.

Writes are counted per instance from ``swarmkeeper_actions_total`` (every
attempted write of an object, by result). Drift is made through an engine
with the Docker SDK, an independent client. The service has no replicas, so
no image is needed and no task churns. Waits are on conditions, with
deadlines sized for this engine's elections (10 to 30 s) and the leaderless
spell after a partition heals (about 35 s).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

import private_engine as engines
from daemon_process import DaemonProcess, wait_until
from private_engine import PrivateCluster, PrivateEngine

pytestmark = pytest.mark.engine

STACK = "fo"
SERVICE = f"{STACK}_web"
ELECTION_LIMIT = 60.0  # the engine's own election: 10 to 30 s seen here
TAKEOVER_LIMIT = 5.0  # the bound: a drift corrected within 5 s of the election
RECOVERY_LIMIT = 150.0  # a healed partition can leave the swarm leaderless ~35 s
ACTIONS = "swarmkeeper_actions_total"


def write_state(folder: Path, mode: str) -> Path:
    """A desired state of one service without replicas, its env ``MODE=mode``."""
    (folder / "stacks").mkdir(parents=True, exist_ok=True)
    (folder / "stacks" / f"{STACK}.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: swarmkeeper-test/busybox:latest\n"
        "    command: [sleep, '3600']\n"
        f"    environment: {{MODE: {mode}}}\n"
        "    deploy: {replicas: 0}\n"
    )
    return folder


@dataclass
class Instance:
    """One manager of the cluster and the swarmkeeper that runs beside it."""

    node: PrivateEngine
    daemon: DaemonProcess
    state_dir: Path
    cut: bool = False
    stopped: bool = False

    def writes(self, result: str | None = None) -> float:
        """Writes this instance attempted (of ``result``, if given), from its metrics."""
        return sum(
            value
            for (name, labels), value in self.daemon.metrics().items()
            if name == ACTIONS and (result is None or ("result", result) in labels)
        )

    def metric(self, name: str) -> float:
        return self.daemon.metric(name)


@dataclass
class Bed:
    cluster: PrivateCluster
    instances: list[Instance]
    timings: dict[str, float] = field(default_factory=dict)

    def on(self, node: PrivateEngine) -> Instance:
        return next(i for i in self.instances if i.node is node)

    def reachable(self) -> list[PrivateEngine]:
        return [i.node for i in self.instances if not (i.cut or i.stopped)]

    def leader(self, timeout: float = ELECTION_LIMIT) -> Instance:
        """The instance on the one leader among the nodes not cut off or stopped."""
        node = self.cluster.wait_for_leader(among=self.reachable(), timeout=timeout)
        return self.on(node)

    def client(self, instance: Instance) -> Any:
        return instance.node.client(timeout=30)


def service_env(client: Any) -> list[str] | None:
    try:
        spec = client.api.inspect_service(SERVICE)["Spec"]
    except docker.errors.NotFound:
        return None
    env: list[str] = spec["TaskTemplate"]["ContainerSpec"].get("Env") or []
    return env


def make_drift(client: Any, value: str) -> None:
    """Set the service's env to ``MODE=value`` through ``client``'s engine.

    Retried: right after an election the new leader may still refuse writes
    for a moment, and a daemon's own write may race ours.
    """

    def attempt() -> bool:
        try:
            client.services.get(SERVICE).update(env=[f"MODE={value}"])
        except docker.errors.APIError:
            return False
        return True

    wait_until(attempt, timeout=30, what="the drift written", interval=0.1)


def one_reports_leader(bed: Bed, expected: Instance) -> bool:
    """Exactly ``expected`` reports swarmkeeper_leader 1 among the reachable ones."""
    values = {
        id(i): i.metric("swarmkeeper_leader")
        for i in bed.instances
        if not (i.cut or i.stopped)
    }
    return values[id(expected)] == 1 and sum(values.values()) == 1


def reports_no_quorum(instance: Instance) -> bool:
    """The instance says its swarm is unavailable, staying healthy while it waits.

    Its write may hang in the engine meanwhile: /healthz must stay 200.
    """
    assert instance.daemon.http_get("/healthz")[0] == 200, instance.daemon.log_tail()
    return (
        instance.daemon.http_get("/readyz")[0] == 503
        and instance.metric("swarmkeeper_swarm_quorum") == 0
        and instance.metric("swarmkeeper_leader") == 0
    )


def ready_with_quorum(instance: Instance) -> bool:
    return (
        instance.metric("swarmkeeper_swarm_quorum") == 1
        and instance.daemon.http_get("/readyz")[0] == 200
    )


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    engines.require_private_engines()
    work = tmp_path_factory.mktemp("failover")
    cluster = PrivateCluster(engines.node_names(3))
    instances: list[Instance] = []
    started = time.monotonic()
    try:
        cluster.up()
        for index, node in enumerate(cluster.nodes):
            state_dir = write_state(work / f"state{index}", "a")
            daemon = DaemonProcess(
                state_dir,
                work / f"daemon{index}",
                env={"DOCKER_HOST": node.docker_host},
            )
            instances.append(Instance(node, daemon.start(), state_dir))
        for instance in instances:
            instance.daemon.wait_ready()
        bed = Bed(cluster, instances)
        bed.timings["setup"] = time.monotonic() - started
        yield bed

        # Nothing crashed, all the way through, and each stops cleanly.
        for instance in instances:
            assert instance.daemon.running(), instance.daemon.log_tail()
            code, _ = instance.daemon.stop()
            assert code == 0, instance.daemon.log_tail()
        print("failover timings (s):", {k: round(v, 2) for k, v in bed.timings.items()})
    finally:
        for instance in instances:
            instance.daemon.close()
            print(f"--- daemon on {instance.node.name} ---")
            print(instance.daemon.log_tail(40))
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(240)
def test_one_instance_leads_and_only_it_writes(bed: Bed) -> None:
    leader = bed.leader()
    followers = [i for i in bed.instances if i is not leader]
    client = bed.client(followers[0])  # any manager takes writes for the swarm

    leader.daemon.wait_for(
        lambda: service_env(client) == ["MODE=a"],
        timeout=60,
        what="the service created by the leader's instance",
    )
    wait_until(
        lambda: one_reports_leader(bed, leader),
        timeout=10,
        what="exactly the leader's instance reporting swarmkeeper_leader 1",
    )
    writes_before = leader.writes("success")
    assert writes_before >= 1

    # Drift through a follower's engine: only the leader's instance corrects it.
    make_drift(client, "drifted")
    leader.daemon.wait_for(
        lambda: service_env(client) == ["MODE=a"],
        timeout=30,
        what="the drift corrected",
    )
    assert leader.writes("success") > writes_before
    assert leader.writes("failure") == 0
    for follower in followers:
        assert follower.writes() == 0, follower.daemon.log_tail()
        assert follower.metric("swarmkeeper_leader") == 0
        assert follower.metric("swarmkeeper_engine_connected") == 1
        assert follower.metric("swarmkeeper_swarm_quorum") == 1
        assert follower.daemon.http_get("/readyz")[0] == 200
        # Followers still see the swarm: they report, they do not write.
        assert follower.daemon.status()["leader"] is False
    assert leader.daemon.status()["leader"] is True


@pytest.mark.timeout(240)
def test_stopping_the_leaders_engine_moves_the_writer(bed: Bed) -> None:
    old = bed.leader()
    old_writes = old.writes()

    stopped_at = time.monotonic()
    old.node.stop(timeout=10)
    old.stopped = True
    new = bed.leader(timeout=ELECTION_LIMIT)
    elected_at = time.monotonic()  # the moment the new leader is observed
    bed.timings["election"] = elected_at - stopped_at

    client = bed.client(new)
    make_drift(client, "after-failover")
    new.daemon.wait_for(
        lambda: service_env(client) == ["MODE=a"],
        timeout=60,
        what="the drift made after the failover corrected",
        interval=0.02,
    )
    corrected_at = time.monotonic()
    bed.timings["takeover"] = corrected_at - elected_at
    assert corrected_at - elected_at <= TAKEOVER_LIMIT, (
        f"corrected {corrected_at - elected_at:.1f} s after the election was "
        f"observed\n{new.daemon.log_tail()}"
    )

    wait_until(
        lambda: one_reports_leader(bed, new),
        timeout=10,
        what="only the new leader's instance reporting swarmkeeper_leader 1",
    )
    assert new.writes("success") >= 1
    other = next(i for i in bed.instances if i not in (old, new))
    assert other.writes() == 0
    # The old leader's instance lives on without its engine, and says so.
    old.daemon.wait_for(
        lambda: old.metric("swarmkeeper_engine_connected") == 0,
        timeout=30,
        what="the stopped engine reported",
    )
    assert old.metric("swarmkeeper_leader") == 0
    assert old.writes() == old_writes
    assert old.daemon.http_get("/readyz")[0] == 503
    assert old.daemon.http_get("/healthz")[0] == 200
    assert all(i.daemon.running() for i in bed.instances)


@pytest.mark.timeout(240)
def test_the_old_leader_rejoins_as_a_follower_and_does_not_write(bed: Bed) -> None:
    old = next(i for i in bed.instances if i.stopped)
    old_writes = old.writes()

    old.node.start()
    old.stopped = False
    old.daemon.wait_for(
        lambda: (
            old.metric("swarmkeeper_engine_connected") == 1 and ready_with_quorum(old)
        ),
        timeout=90,
        what="the old leader's instance connected again",
    )
    leader = bed.leader()
    assert leader is not old, "the restarted node took the leadership back"

    client = bed.client(old)
    make_drift(client, "after-rejoin")
    leader.daemon.wait_for(
        lambda: service_env(client) == ["MODE=a"],
        timeout=30,
        what="the drift corrected by the leader's instance",
    )
    wait_until(
        lambda: one_reports_leader(bed, leader),
        timeout=10,
        what="only the leader's instance reporting swarmkeeper_leader 1",
    )
    assert old.writes() == old_writes
    assert old.metric("swarmkeeper_leader") == 0


@pytest.mark.timeout(300)
def test_a_cut_off_leader_stops_writing_says_so_and_recovers(bed: Bed) -> None:
    cut = bed.leader()
    succeeded = cut.writes("success")

    # Cut the leader off, and at once give its instance something to write
    # (its own copy of the desired state changes): its engine still calls
    # itself leader for a while, so the instance tries, and Raft refuses.
    cut.node.cut()
    cut.cut = True
    cut_at = time.monotonic()
    write_state(cut.state_dir, "only-on-the-cut-off-side")

    cut.daemon.wait_for(
        lambda: reports_no_quorum(cut),
        timeout=ELECTION_LIMIT,
        what="the cut-off instance reporting that its swarm has no quorum",
        interval=0.5,
    )
    _, body = cut.daemon.http_get("/readyz")
    assert "no leader or quorum" in body, body
    assert cut.daemon.log_events("swarm.quorum_lost")
    assert cut.daemon.http_get("/healthz")[0] == 200
    bed.timings["cut_reported"] = time.monotonic() - cut_at

    # The write it attempted failed and was counted; it made no other.
    cut.daemon.wait_for(
        lambda: cut.writes("failure") >= 1,
        timeout=ELECTION_LIMIT,
        what="the cut-off instance's write attempt failing",
        interval=0.5,
    )
    assert cut.writes("success") == succeeded
    assert [r for r in cut.daemon.logs() if r.get("event") == "service.update.failed"]

    # The rest of the swarm elects a leader, which never saw that change.
    new = bed.leader()
    assert new is not cut
    client = bed.client(new)
    assert service_env(client) == ["MODE=a"]

    # Over a window, attempts stay few: back-off, not a tight loop. The
    # instance keeps polling and healthy meanwhile.
    attempts = cut.writes("failure")
    window_end = time.monotonic() + 15
    while time.monotonic() < window_end:
        assert cut.daemon.http_get("/healthz")[0] == 200
        time.sleep(1)
    assert cut.writes("failure") - attempts <= 2
    assert cut.writes("failure") <= 4
    assert cut.writes("success") == succeeded

    # Back to the shared desired state, then heal: everything recovers.
    write_state(cut.state_dir, "a")
    cut.node.heal()
    cut.cut = False
    healed_at = time.monotonic()
    leader = bed.leader(timeout=RECOVERY_LIMIT)
    for instance in bed.instances:
        instance.daemon.wait_for(
            lambda: ready_with_quorum(instance),  # noqa: B023 - waited on here
            timeout=RECOVERY_LIMIT,
            what=f"the instance on {instance.node.name} ready again",
            interval=0.5,
        )
    leader = bed.leader(timeout=RECOVERY_LIMIT)
    wait_until(
        lambda: one_reports_leader(bed, leader),
        timeout=30,
        what="exactly one instance reporting leader after healing",
    )
    bed.timings["recovered_after_heal"] = time.monotonic() - healed_at
    assert service_env(bed.client(leader)) == ["MODE=a"]
    assert cut.daemon.log_events("swarm.quorum_regained")
    assert all(i.daemon.running() for i in bed.instances)
