"""``swarmkeeper run`` as a process against the real swarm.

Each test starts the daemon (``tests/daemon_process.py``) on a small desired
state of its own in tmp_path, whose objects carry the test's prefix, and
inflicts drift through the Docker SDK, an independent client. The resync
interval is 300 s unless a test says otherwise, so what the daemon corrects
within seconds it corrected because of the engine's events.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from docker.types import EndpointSpec

from conftest import SwarmTestBed
from daemon_process import (
    DaemonFactory,
    DaemonProcess,
    daemons_fixture,  # noqa: F401 - the ``daemons`` fixture
    metric_key,
)

pytestmark = pytest.mark.engine

CORRECTION_LIMIT = 10.0  # seconds within which each drift must be corrected
ACTIONS = "swarmkeeper_actions_total"
VALID = "swarmkeeper_desired_state_valid"


# --------------------------------------------------------------- the state --


def service_block(image: str, name: str, *, replicas: int = 0, extra: str = "") -> str:
    return (
        f"  {name}:\n"
        f"    image: {image}\n"
        "    command: [sleep, '3600']\n"
        "    stop_grace_period: 1s\n"
        f"    deploy: {{replicas: {replicas}}}\n"
        f"{extra}"
    )


def stack_text(image: str, services: Mapping[str, int], tail: str = "") -> str:
    """A compose file of sleeping services from the test image, name -> replicas."""
    blocks = [service_block(image, name, replicas=n) for name, n in services.items()]
    return "services:\n" + "".join(blocks) + tail


def write_state(
    root: Path,
    *,
    prefix: str,
    stack: str,
    networks: Sequence[str] = (),
    hostname: str | None = None,
    node_labels: Mapping[str, str] | None = None,
    policy: str | None = None,
) -> Path:
    """A desired-state folder: ``stacks/<prefix>.yml`` and the optional files."""
    (root / "stacks").mkdir(parents=True, exist_ok=True)
    (root / "stacks" / f"{prefix}.yml").write_text(stack)
    if networks:
        body = "".join(f"  {name}:\n    driver: overlay\n" for name in networks)
        (root / "networks.yml").write_text("networks:\n" + body)
    if hostname is not None and node_labels is not None:
        labels = "".join(f'      {k}: "{v}"\n' for k, v in node_labels.items())
        (root / "nodes.yml").write_text(f"nodes:\n  {hostname}:\n    labels:\n{labels}")
    if policy is not None:
        (root / "policy.yml").write_text(policy)
    return root


# ---------------------------------------------------- reading the engine --


def service_spec(client: Any, name: str) -> dict[str, Any] | None:
    try:
        spec: dict[str, Any] = client.api.inspect_service(name)["Spec"]
    except docker.errors.NotFound:
        return None
    return spec


def container_spec(client: Any, name: str) -> dict[str, Any]:
    spec = service_spec(client, name) or {}
    found: dict[str, Any] = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    return found


def replicas(client: Any, name: str) -> int | None:
    spec = service_spec(client, name)
    if spec is None:
        return None
    value = spec.get("Mode", {}).get("Replicated", {}).get("Replicas")
    return None if value is None else int(value)


def network_exists(client: Any, name: str) -> bool:
    return any(n["Name"] == name for n in client.api.networks(names=[name]))


def node_of(client: Any, hostname: str) -> Any:
    for node in client.nodes.list():
        if node.attrs["Description"]["Hostname"] == hostname:
            return node
    raise AssertionError(f"no node with hostname {hostname}")


def node_labels(client: Any, hostname: str) -> dict[str, str]:
    labels: dict[str, str] = node_of(client, hostname).attrs["Spec"].get("Labels") or {}
    return labels


def running_task_ids(swarm: SwarmTestBed, service: str) -> set[str]:
    return {task["ID"] for task in swarm.running_tasks(service)}


# ----------------------------------------------------- writing as a person --


def retried(write: Callable[[], Any], attempts: int = 10) -> Any:
    """One SDK write, retried when the daemon wrote the object in between."""
    for attempt in range(attempts):
        try:
            return write()
        except docker.errors.APIError as error:
            if "out of sequence" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05)
    return None


def update_service(client: Any, name: str, **changes: Any) -> None:
    retried(lambda: client.services.get(name).update(**changes))


def scale_service(client: Any, name: str, count: int) -> None:
    retried(lambda: client.services.get(name).scale(count))


def change_node_labels(
    client: Any, hostname: str, change: Callable[[dict[str, str]], object]
) -> None:
    def write() -> None:
        node = node_of(client, hostname)
        spec = dict(node.attrs["Spec"])
        labels = dict(spec.get("Labels") or {})
        change(labels)
        spec["Labels"] = labels
        node.update(spec)

    retried(write)


# --------------------------------------------------- reading the daemon --


def ours_in_sync(daemon: DaemonProcess, prefix: str, hostname: str | None) -> bool:
    """The daemon's last pass found every object of this test as desired."""
    document = daemon.status()
    if document.get("last_pass") is None:
        return False
    for item in document.get("objects", []):
        mine = str(item.get("name", "")).startswith(prefix) or (
            item.get("kind") == "node" and item.get("name") == hostname
        )
        if mine and item.get("sync") != "in-sync":
            return False
    return True


def wait_converged(
    daemon: DaemonProcess,
    prefix: str,
    *,
    hostname: str | None = None,
    ready: Callable[[], bool] = lambda: True,
    timeout: float = 60.0,
) -> None:
    daemon.wait_for(
        lambda: ready() and ours_in_sync(daemon, prefix, hostname),
        timeout=timeout,
        what="the daemon to converge this test's objects",
        interval=0.1,
    )


def pass_after(daemon: DaemonProcess, event: str) -> dict[str, Any] | None:
    """The first ``reconcile.finished`` logged after the last ``event`` line."""
    records = daemon.logs()
    last = max(
        (i for i, r in enumerate(records) if r.get("event") == event), default=None
    )
    if last is None:
        return None
    return next(
        (r for r in records[last:] if r.get("event") == "reconcile.finished"), None
    )


def action_count(daemon: DaemonProcess, kind: str, action: str, result: str) -> float:
    return daemon.metric(ACTIONS, kind=kind, action=action, result=result)


def swarmkeeper_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("SWARMKEEPER_")
    }
    environment["SWARMKEEPER_CONFIG"] = os.devnull
    return subprocess.run(
        [sys.executable, "-m", "swarmkeeper", *arguments, "--log-format", "json"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


class Sampler:
    """Reads one value every ``interval`` seconds in a thread, with the time."""

    def __init__(self, read: Callable[[], float], interval: float = 0.1) -> None:
        self.samples: list[tuple[float, float]] = []
        self._read = read
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._read()))
            self._stop.wait(self._interval)

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


# ------------------------------------------------------------------ drift --


def test_every_kind_of_drift_is_corrected_by_its_event(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    client, p = swarm.client, swarm.prefix
    hostname = client.info()["Name"]
    net = f"{p}-net"
    zone, tier = f"{p}.zone", f"{p}.tier"
    # One service per spec drift: each object is corrected once, so the
    # fight detector (several corrections of one object) stays out of it.
    shorts = ("replicas", "env", "image", "constraint", "port", "mount", "removed")
    state = write_state(
        tmp_path / "state",
        prefix=p,
        stack=stack_text(swarm.image, dict.fromkeys(shorts, 0)),
        networks=[net],
        hostname=hostname,
        node_labels={zone: "a", tier: "one"},
    )
    daemon = daemons(state)
    wait_converged(
        daemon, p, hostname=hostname, ready=lambda: network_exists(client, net)
    )
    svc = {short: f"{p}_{short}" for short in shorts}
    converged = {name: service_spec(client, name) for name in svc.values()}
    passes_before = len(daemon.passes())
    free = 20000 + secrets.randbelow(9000)

    def spec_of(short: str) -> dict[str, Any]:
        return service_spec(client, svc[short]) or {}

    def service_is_back() -> bool:
        spec = service_spec(client, svc["removed"])
        return spec is not None and spec["Labels"].get("swarmkeeper.managed") == "true"

    drifts: list[tuple[str, Callable[[], None], Callable[[], bool]]] = [
        (
            "scale a service",
            lambda: scale_service(client, svc["replicas"], 2),
            lambda: replicas(client, svc["replicas"]) == 0,
        ),
        (
            "add an environment variable",
            lambda: update_service(client, svc["env"], env=["SKT_DRIFT=1"]),
            lambda: not container_spec(client, svc["env"]).get("Env"),
        ),
        (
            "change the image",
            lambda: update_service(client, svc["image"], image=f"{swarm.image}-x"),
            lambda: container_spec(client, svc["image"]).get("Image") == swarm.image,
        ),
        (
            "add a constraint",
            lambda: update_service(
                client, svc["constraint"], constraints=["node.role==manager"]
            ),
            lambda: (
                not spec_of("constraint")["TaskTemplate"]
                .get("Placement", {})
                .get("Constraints")
            ),
        ),
        (
            "publish a port",
            lambda: update_service(
                client, svc["port"], endpoint_spec=EndpointSpec(ports={free: 80})
            ),
            lambda: not spec_of("port").get("EndpointSpec", {}).get("Ports"),
        ),
        (
            "add a mount",
            lambda: update_service(client, svc["mount"], mounts=["/tmp:/mnt/x:ro"]),
            lambda: not container_spec(client, svc["mount"]).get("Mounts"),
        ),
        (
            "remove a service",
            lambda: client.services.get(svc["removed"]).remove(),
            service_is_back,
        ),
        (
            "remove a network of networks.yml",
            lambda: client.networks.get(net).remove(),
            lambda: network_exists(client, net),
        ),
        (
            "remove a node label",
            lambda: change_node_labels(client, hostname, lambda ls: ls.pop(zone)),
            lambda: node_labels(client, hostname).get(zone) == "a",
        ),
        (
            "change a node label",
            lambda: change_node_labels(
                client, hostname, lambda ls: ls.__setitem__(tier, "two")
            ),
            lambda: node_labels(client, hostname).get(tier) == "one",
        ),
    ]

    timings: dict[str, float] = {}
    for what, inflict, corrected in drifts:
        inflict()
        started = time.monotonic()
        daemon.wait_for(
            corrected,
            timeout=CORRECTION_LIMIT,
            what=f"the daemon to correct drift '{what}'",
            interval=0.02,
        )
        timings[what] = round(time.monotonic() - started, 3)
    print("correction times (s):", timings)

    # The engine holds the desired specs again, as the daemon first wrote
    # them (ForceUpdate, which an SDK write adds, is kept by design).
    for name, before in converged.items():
        after = service_spec(client, name)
        assert before is not None
        assert after is not None, name
        for spec in (before, after):
            spec["TaskTemplate"].pop("ForceUpdate", None)
        assert after == before, name
    labels = node_labels(client, hostname)
    assert (labels.get(zone), labels.get(tier)) == ("a", "one")

    # Only events explain it: every pass that wrote was triggered by events,
    # and the timer never fired.
    writing = [x for x in daemon.passes()[passes_before:] if x.get("writes")]
    assert len(writing) >= len(drifts)
    for record in writing:
        reasons = str(record["trigger"]).split(",")
        assert all(reason.endswith("-event") for reason in reasons), record
    assert not daemon.passes("resync")


def test_a_held_object_is_corrected_when_its_hold_ends(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    """After a fight the object is held for a while, then corrected: the end of
    the hold must wake the daemon, not wait for the next event or resync."""
    client, p = swarm.client, swarm.prefix
    web = f"{p}_web"
    state = write_state(
        tmp_path / "state", prefix=p, stack=stack_text(swarm.image, {"web": 0})
    )
    daemon = daemons(state)
    wait_converged(daemon, p, ready=lambda: replicas(client, web) == 0)

    # Drift and corrections until the daemon calls it a fight and holds it.
    for count in range(1, 6):
        scale_service(client, web, count)
        daemon.wait_for(
            lambda: replicas(client, web) == 0,
            timeout=CORRECTION_LIMIT,
            what="a correction before the fight",
        )
        if daemon.log_events("fight.detected"):
            break
    (fight,) = daemon.log_events("fight.detected")
    held_for = float(fight["held_seconds"])
    assert 0 < held_for <= 60

    # Drift once more, with no event or timer to follow: held, then corrected.
    scale_service(client, web, 3)
    drifted_at = time.monotonic()
    daemon.wait_for(
        lambda: any(
            o["name"] == web and o["sync"] == "held" for o in daemon.status()["objects"]
        ),
        timeout=10,
        what="the service to be reported as held",
    )
    assert replicas(client, web) == 3
    daemon.wait_for(
        lambda: replicas(client, web) == 0,
        timeout=held_for + CORRECTION_LIMIT,
        what=f"the correction once the {held_for:g} s hold is over",
        interval=0.1,
    )
    print(f"held {held_for:g} s; corrected {time.monotonic() - drifted_at:.1f} s after")
    assert not daemon.passes("resync")


# -------------------------------------------------------- a broken file --


def test_a_broken_file_keeps_everything_and_removes_nothing(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    client, p = swarm.client, swarm.prefix
    services = {"run": 1, "a": 0, "b": 0, "c": 0}
    good = stack_text(swarm.image, services)
    # prune_cap 2: removing b and c is within the cap, so only the file being
    # broken can be what keeps them (the control at the end proves it).
    state = write_state(
        tmp_path / "state", prefix=p, stack=good, policy="prune_cap: 2\n"
    )
    stack_file = state / "stacks" / f"{p}.yml"
    run = f"{p}_run"
    daemon = daemons(state)
    wait_converged(
        daemon,
        p,
        ready=lambda: replicas(client, run) == 1 and len(swarm.running_tasks(run)) == 1,
    )
    tasks = running_task_ids(swarm, run)
    everything = {f"{p}_{name}" for name in services}

    def ours() -> set[str]:
        return {s.name for s in client.services.list() if s.name.startswith(p)}

    def valid() -> float:
        return daemon.metric(VALID)

    assert ours() == everything
    assert valid() == 1

    # A syntax error: the last good state stays in use.
    stack_file.write_text(good + "  broken: [\n")
    daemon.wait_for(lambda: valid() == 0, timeout=10, what="desired_state_valid 0")
    with Sampler(valid).running() as sampler:
        invalid_loads = len(daemon.log_events("desired_state.invalid"))
        assert invalid_loads >= 1

        # Half the services deleted and the syntax broken: nothing goes.
        half = stack_text(swarm.image, {"run": 1, "a": 0}, tail="  broken: [\n")
        stack_file.write_text(half)
        daemon.wait_for(
            lambda: len(daemon.log_events("desired_state.invalid")) > invalid_loads,
            timeout=10,
            what="the daemon to read the second broken edit",
        )
        daemon.wait_for(
            lambda: pass_after(daemon, "desired_state.invalid"),
            timeout=10,
            what="a pass after the broken edit",
        )
        # It still enforces the last good state: an event-driven correction.
        scale_service(client, f"{p}_a", 1)
        daemon.wait_for(
            lambda: replicas(client, f"{p}_a") == 0,
            timeout=CORRECTION_LIMIT,
            what="a correction while the file is broken",
        )
        assert ours() == everything
        assert running_task_ids(swarm, run) == tasks
        fixed_at = time.monotonic()
        stack_file.write_text(good)
    daemon.wait_for(
        lambda: valid() == 1, timeout=10, what="desired_state_valid 1 again"
    )

    after_first_zero = [
        value for _, value in sampler.samples if _ < fixed_at and value == 0
    ]
    assert after_first_zero, "no sample taken while the file was broken"
    assert all(value == 0 for at, value in sampler.samples if at < fixed_at), (
        "desired_state_valid was not 0 all the time the file was broken"
    )
    assert ours() == everything
    assert running_task_ids(swarm, run) == tasks
    assert action_count(daemon, "service", "remove", "success") == 0
    assert action_count(daemon, "service", "update", "success") == 1  # the scale

    # Control: the same deletion in a valid file does remove b and c.
    stack_file.write_text(stack_text(swarm.image, {"run": 1, "a": 0}))
    daemon.wait_for(
        lambda: ours() == {run, f"{p}_a"},
        timeout=CORRECTION_LIMIT,
        what="a valid deletion to prune b and c",
    )
    assert running_task_ids(swarm, run) == tasks


def test_held_service_removals_keep_the_networks_those_services_use(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    """Three of four services leave the file with their network: the cap holds
    the services, so their network is still in use and must not be removed."""
    client, p = swarm.client, swarm.prefix
    on_extra = "    networks: [extra]\n"
    stack = (
        "services:\n"
        + service_block(swarm.image, "keep")
        + "".join(service_block(swarm.image, n, extra=on_extra) for n in "bcd")
        + "networks:\n  extra: {}\n"
    )
    state = write_state(tmp_path / "state", prefix=p, stack=stack)
    daemon = daemons(state)
    wait_converged(daemon, p, ready=lambda: network_exists(client, f"{p}_extra"))

    loads = len(daemon.log_events("desired_state.loaded"))
    (state / "stacks" / f"{p}.yml").write_text(stack_text(swarm.image, {"keep": 0}))
    daemon.wait_for(
        lambda: (
            len(daemon.log_events("desired_state.loaded")) > loads
            and pass_after(daemon, "desired_state.loaded")
        ),
        timeout=10,
        what="a pass on the edited file",
    )
    last = pass_after(daemon, "desired_state.loaded")
    assert last is not None
    held = {
        o["name"]
        for o in daemon.status()["objects"]
        if o["kind"] == "service" and o["sync"] == "held" and o["name"].startswith(p)
    }
    assert held == {f"{p}_b", f"{p}_c", f"{p}_d"}
    assert network_exists(client, f"{p}_extra")
    assert not daemon.log_events("network.remove.failed"), (
        "the daemon tried to remove a network that services it keeps still use"
    )
    assert action_count(daemon, "network", "remove", "failure") == 0
    assert last["outcome"] == "success", last


def test_a_resync_picks_up_a_switched_symlink(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    """Deploy tools (git-sync, release folders) switch a symlink atomically: the
    file watcher, bound to the old folder, cannot see it, so the resync must
    read the desired state again rather than only the swarm."""
    client, p = swarm.client, swarm.prefix
    resync = 3.0
    first = write_state(
        tmp_path / "r1", prefix=p, stack=stack_text(swarm.image, {"web": 0})
    )
    second = write_state(
        tmp_path / "r2", prefix=p, stack=stack_text(swarm.image, {"web": 0, "api": 0})
    )
    current = tmp_path / "current"
    current.symlink_to(first)
    daemon = daemons(current, resync_interval=resync)
    wait_converged(daemon, p, ready=lambda: replicas(client, f"{p}_web") == 0)

    (tmp_path / "current.new").symlink_to(second)
    (tmp_path / "current.new").replace(current)  # rename(2): atomic, as deploys do
    switched = time.monotonic()
    daemon.wait_for(
        lambda: replicas(client, f"{p}_api") == 0,
        timeout=resync + CORRECTION_LIMIT,
        what=f"the service of the new folder, within a {resync:g} s resync",
        interval=0.1,
    )
    print(f"picked up {time.monotonic() - switched:.1f} s after the switch")


# ------------------------------------------------------------------ fights --

FIGHT_SECONDS = 60.0
FIGHT_WRITE_BOUND = 20  # an unbounded corrector would make about 60


@pytest.mark.timeout(FIGHT_SECONDS + 180)  # the fight itself takes a minute
def test_a_second_actor_flipping_replicas_gets_a_bounded_fight(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    client, p = swarm.client, swarm.prefix
    web = f"{p}_web"
    state = write_state(
        tmp_path / "state", prefix=p, stack=stack_text(swarm.image, {"web": 1})
    )
    daemon = daemons(state)
    wait_converged(daemon, p, ready=lambda: replicas(client, web) == 1)
    updates_before = action_count(daemon, "service", "update", "success")

    # The other actor: every second, flip the replicas between 1 and 2.
    flips = 0
    started = time.monotonic()
    tick = started
    while tick < started + FIGHT_SECONDS:
        now = replicas(client, web)
        scale_service(client, web, 2 if now == 1 else 1)
        flips += 1
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))

    updates = action_count(daemon, "service", "update", "success") - updates_before
    fights = daemon.metric("swarmkeeper_fights_total", kind="service")
    detected = daemon.log_events("fight.detected")
    holds = [float(record["held_seconds"]) for record in detected]
    print(
        f"actor flips {flips}, swarmkeeper updates {updates:g}, fights {fights:g}, "
        f"holds (s) {holds}"
    )
    assert flips >= 55
    assert fights >= 1
    assert detected
    assert detected[0]["kind"] == "service"
    assert detected[0]["object"] == web
    # The other actor never stopped, so each further fight holds longer
    # (with holds that reset, the writes grow towards the bound below).
    assert all(later > earlier for earlier, later in itertools.pairwise(holds)), (
        f"the hold did not grow from one fight to the next: {holds}"
    )
    assert updates <= FIGHT_WRITE_BOUND, (
        f"swarmkeeper wrote {updates:g} times in a {FIGHT_SECONDS:g} s fight"
    )
    assert updates >= 3  # it did correct, before it backed off


# ------------------------------------------------------------------ probes --


def test_probes_with_an_engine_and_a_loaded_state(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    p = swarm.prefix
    state = write_state(
        tmp_path / "state", prefix=p, stack=stack_text(swarm.image, {"web": 0})
    )
    daemon = daemons(state)
    assert daemon.http_get("/healthz")[0] == 200
    daemon.wait_for(
        lambda: daemon.http_get("/readyz")[0] == 200,
        timeout=10,
        what="/readyz 200",
    )
    assert daemon.metric("swarmkeeper_engine_connected") == 1
    assert daemon.metric("swarmkeeper_leader") == 1


def test_task_health_is_seen_between_passes(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    # A task starting makes no event the daemon watches (the engine has no
    # task events): with resyncs 300 s apart, only the health poll can see
    # the new service's task running.
    p = swarm.prefix
    state = write_state(
        tmp_path / "state", prefix=p, stack=stack_text(swarm.image, {"web": 1})
    )
    daemon = daemons(state, resync_interval=300)
    web = swarm.name("web")
    daemon.wait_for(
        lambda: len(swarm.running_tasks(web)) == 1, timeout=60, what="a running task"
    )

    def web_status() -> dict[str, Any]:
        objects = daemon.status()["objects"]
        return next(o for o in objects if o["kind"] == "service" and o["name"] == web)

    daemon.wait_for(
        lambda: web_status()["health"] == "healthy",
        timeout=20,
        what="the service healthy in /status",
    )
    assert web_status()["running"] == 1
    unhealthy = metric_key("swarmkeeper_stack_unhealthy_services", stack=p)
    assert daemon.metrics()[unhealthy] == 0


def test_without_an_engine_it_stays_up_ready_but_not_ready(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    state = write_state(
        tmp_path / "state",
        prefix="sktnoengine",
        stack=stack_text("swarmkeeper-test/busybox:latest", {"web": 0}),
    )
    daemon = daemons(state, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    # READY=1 came (daemons() waited for it) without an engine: the first
    # pass finished by finding the engine unreachable, and that counts.
    snapshot = daemon.ready_snapshot
    assert snapshot is not None
    assert "reconcile.finished" in snapshot.log_events
    ready = daemon.notify.with_key("READY", "1")
    assert "engine unreachable" in (ready[0].get("STATUS") or "")
    assert daemon.http_get("/healthz")[0] == 200
    daemon.wait_for(
        lambda: len(daemon.log_events("engine.unreachable")) >= 3,
        timeout=20,
        what="three engine retries",
    )
    assert daemon.running()
    assert daemon.metric("swarmkeeper_engine_connected") == 0
    code, body = daemon.http_get("/readyz")
    assert code == 503, body
    assert "engine" in body
    assert daemon.http_get("/healthz")[0] == 200
    assert daemon.metric("swarmkeeper_reconcile_total", result="failure") >= 1
    statuses = [m.get("STATUS") or "" for m in daemon.notify.with_key("STATUS")]
    assert any("engine unreachable" in s for s in statuses), statuses
    code, took = daemon.stop(signal.SIGTERM)
    assert (code, took < 10) == (0, True)


# ------------------------------------------------------------------ notify --


def test_the_notify_protocol(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    p = swarm.prefix
    state = write_state(
        tmp_path / "state", prefix=p, stack=stack_text(swarm.image, {"web": 0})
    )
    daemon = daemons(state, watchdog_usec=1_000_000)

    # READY=1 once the HTTP server answers, the desired state has loaded and
    # the first reconcile pass has finished (it created the service).
    snapshot = daemon.ready_snapshot
    assert snapshot is not None
    assert snapshot.healthz_status == 200
    assert "http.listening" in snapshot.log_events
    assert "desired_state.loaded" in snapshot.log_events
    assert "reconcile.finished" in snapshot.log_events
    ready = daemon.notify.with_key("READY", "1")
    assert len(ready) == 1
    assert (ready[0].get("STATUS") or "").startswith("success; leader; revision dir-")
    assert swarm.client.services.get(f"{p}_web")

    # WATCHDOG=1 about every 0.5 s (half of WATCHDOG_USEC).
    def watchdogs() -> list[float]:
        return [
            m.at for m in daemon.notify.with_key("WATCHDOG", "1") if m.at >= ready[0].at
        ]

    daemon.wait_for(lambda: len(watchdogs()) >= 9, timeout=15, what="nine WATCHDOG=1")
    times = watchdogs()
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    print("watchdog gaps (s):", [round(g, 3) for g in gaps])
    assert 0.4 <= gaps[len(gaps) // 2] <= 0.65
    assert max(gaps) < 1.0  # always within WATCHDOG_USEC
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 1.5 <= rate <= 2.5

    # STATUS= after a pass: outcome, role, revision.
    daemon.wait_for(
        lambda: any(
            (m.get("STATUS") or "").startswith("success; leader; revision dir-")
            for m in daemon.notify.with_key("STATUS")
        ),
        timeout=10,
        what="a STATUS= line after a pass",
    )

    # SIGHUP reloads the desired state.
    loads = len(daemon.log_events("desired_state.loaded"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(
        lambda: len(daemon.log_events("desired_state.loaded")) > loads,
        timeout=10,
        what="desired_state.loaded after SIGHUP",
    )
    assert daemon.running()

    # SIGTERM: STOPPING=1, then exit 0 within 10 s.
    code, took = daemon.stop(signal.SIGTERM)
    print(f"SIGTERM: exit {code} in {took:.2f} s")
    assert code == 0
    assert took < 10
    stopping = daemon.notify.with_key("STOPPING", "1")
    assert len(stopping) == 1
    assert stopping[0].at > ready[0].at
    assert daemon.log_events("daemon.stopped")

    # SIGINT likewise.
    second = daemons(state, watchdog_usec=1_000_000)
    code, took = second.stop(signal.SIGINT)
    print(f"SIGINT: exit {code} in {took:.2f} s")
    assert code == 0
    assert took < 10
    assert len(second.notify.with_key("STOPPING", "1")) == 1


# ----------------------------------------------------------------- observe --


def test_observe_mode_reports_drift_and_status_tells(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    client, p = swarm.client, swarm.prefix
    web = f"{p}_web"
    state = write_state(
        tmp_path / "state", prefix=p, stack=stack_text(swarm.image, {"web": 0})
    )
    applied = swarmkeeper_cli("apply", "--state-dir", str(state))
    assert applied.returncode == 0, applied.stdout + applied.stderr

    daemon = daemons(state, args=["--mode", "observe"])
    wait_converged(daemon, p)

    def status_cli(address: str) -> subprocess.CompletedProcess[str]:
        return swarmkeeper_cli("status", "--metrics-addr", address)

    in_sync = status_cli(daemon.metrics_addr)
    assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr
    assert "mode observe" in in_sync.stdout
    row = next(line for line in in_sync.stdout.splitlines() if web in line)
    assert row.split()[:4] == ["service", web, "in-sync", "healthy"]

    update_service(client, web, env=["SKT_OBSERVED=1"])
    daemon.wait_for(
        lambda: daemon.metric("swarmkeeper_drift_resources", kind="service") >= 1,
        timeout=10,
        what="drift_resources{kind=service} >= 1",
    )
    objects = {o["name"]: o for o in daemon.status()["objects"]}
    assert objects[web]["sync"] == "update"
    assert daemon.status()["mode"] == "observe"
    drifted = status_cli(daemon.metrics_addr)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    row = next(line for line in drifted.stdout.splitlines() if web in line)
    assert row.split()[:3] == ["service", web, "update"]

    # Not corrected: another pass (an event) later, the drift is still there.
    passes = len(daemon.passes())
    scale_service(client, web, 0)  # a no-op write: only an event
    daemon.wait_for(
        lambda: len(daemon.passes()) > passes, timeout=10, what="another pass"
    )
    assert container_spec(client, web).get("Env") == ["SKT_OBSERVED=1"]
    assert daemon.metric("swarmkeeper_drift_resources", kind="service") >= 1
    writes = sum(
        value for (name, labels), value in daemon.metrics().items() if name == ACTIONS
    )
    assert writes == 0

    # Put right by hand: in sync again, exit 0.
    update_service(client, web, env=[])
    daemon.wait_for(
        lambda: daemon.metric("swarmkeeper_drift_resources", kind="service") == 0,
        timeout=10,
        what="drift_resources{kind=service} back to 0",
    )
    assert status_cli(daemon.metrics_addr).returncode == 0

    address = daemon.metrics_addr
    assert daemon.stop()[0] == 0
    gone = status_cli(address)
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "no daemon answers" in gone.stderr


# ----------------------------------------------------------------- metrics --

KINDS = ("service", "network", "config", "secret", "node")
ACTION_NAMES = ("create", "update", "adopt", "recreate", "remove", "record-failure")
EVENT_TYPES = ("service", "network", "node", "config", "secret")
FAMILIES = {
    "swarmkeeper_build_info": "gauge",
    "swarmkeeper_leader": "gauge",
    "swarmkeeper_engine_connected": "gauge",
    "swarmkeeper_swarm_quorum": "gauge",
    "swarmkeeper_reconcile": "counter",
    "swarmkeeper_reconcile_duration_seconds": "histogram",
    "swarmkeeper_reconcile_cpu_seconds": "histogram",
    "swarmkeeper_last_reconcile_success_timestamp_seconds": "gauge",
    "swarmkeeper_drift_resources": "gauge",
    "swarmkeeper_managed_resources": "gauge",
    "swarmkeeper_actions": "counter",
    "swarmkeeper_docker_events": "counter",
    "swarmkeeper_desired_state_valid": "gauge",
    "swarmkeeper_desired_state_info": "gauge",
    "swarmkeeper_fights": "counter",
    "swarmkeeper_prune_refused": "counter",
    "swarmkeeper_stack_drifted_services": "gauge",
    "swarmkeeper_stack_unhealthy_services": "gauge",
}


def zero_series() -> list[tuple[str, dict[str, str]]]:
    """Every series of the contract that must exist, at 0, before anything happens."""
    series: list[tuple[str, dict[str, str]]] = [
        ("swarmkeeper_reconcile_total", {"result": r})
        for r in ("success", "failure", "partial")
    ]
    for kind in KINDS:
        series += [
            ("swarmkeeper_drift_resources", {"kind": kind}),
            ("swarmkeeper_managed_resources", {"kind": kind}),
            ("swarmkeeper_fights_total", {"kind": kind}),
            ("swarmkeeper_prune_refused_total", {"kind": kind}),
        ]
        series += [
            (ACTIONS, {"kind": kind, "action": action, "result": result})
            for action in ACTION_NAMES
            for result in ("success", "failure")
        ]
    series += [("swarmkeeper_docker_events_total", {"type": t}) for t in EVENT_TYPES]
    return series


def assert_cpu_time_reported(daemon: DaemonProcess, status: dict[str, Any]) -> None:
    """Each pass's CPU time: in /status's last_pass and one histogram sample."""
    last_pass = status["last_pass"]
    assert 0 < last_pass["cpu_seconds"] <= last_pass["duration_seconds"] + 0.001
    scraped = daemon.metrics()
    assert (
        scraped[metric_key("swarmkeeper_reconcile_cpu_seconds_count")]
        == scraped[metric_key("swarmkeeper_reconcile_duration_seconds_count")]
        > 0
    )


def test_metrics_contract_logs_and_no_secret_in_them(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    import swarmkeeper

    client, p = swarm.client, swarm.prefix
    secret_value = "sk-" + secrets.token_hex(16)
    stack = stack_text(swarm.image, {"web": 0}).replace(
        "    deploy:", "    secrets: [token]\n    deploy:"
    ) + ("secrets:\n  token:\n    file: ./token.txt\n")
    state = write_state(tmp_path / "state", prefix=p, stack=stack)
    (state / "stacks" / "token.txt").write_text(secret_value)

    daemon = daemons(state, args=["--log-level", "debug"], wait_ready=False)
    first = daemon.wait_for(
        lambda: daemon.http_get("/metrics")[0] == 200 and daemon.metrics_text(),
        timeout=30,
        what="the first scrape",
        interval=0.01,
    )
    families = {f.name: f.type for f in text_string_to_metric_families(first)}
    missing = {
        name: kind for name, kind in FAMILIES.items() if families.get(name) != kind
    }
    assert not missing, f"absent or mistyped in the first scrape: {missing}"
    samples = daemon.metrics()
    absent = [
        (name, labels)
        for name, labels in zero_series()
        if metric_key(name, **labels) not in samples
    ]
    assert not absent, f"series absent from the first scrape: {absent}"
    passes_seen = sum(
        samples[metric_key("swarmkeeper_reconcile_total", result=r)]
        for r in ("success", "failure", "partial")
    )
    # Before the first pass every series is 0; after it (a fast machine can
    # pass once before the first scrape answers) those a clean first pass
    # cannot touch still are.
    untouched = [
        (name, labels)
        for name, labels in zero_series()
        if passes_seen == 0
        or (
            name in ("swarmkeeper_fights_total", "swarmkeeper_prune_refused_total")
            or labels.get("result") in ("failure", "partial")
        )
    ]
    nonzero = [(n, ls) for n, ls in untouched if samples[metric_key(n, **ls)] != 0]
    assert not nonzero, f"not 0 in the first scrape: {nonzero}"
    assert samples[
        metric_key("swarmkeeper_build_info", version=swarmkeeper.__version__)
    ]
    for name in (
        "swarmkeeper_reconcile_duration_seconds_count",
        "swarmkeeper_reconcile_duration_seconds_sum",
        "swarmkeeper_reconcile_cpu_seconds_count",
        "swarmkeeper_reconcile_cpu_seconds_sum",
        "swarmkeeper_last_reconcile_success_timestamp_seconds",
        "swarmkeeper_leader",
        "swarmkeeper_engine_connected",
        "swarmkeeper_swarm_quorum",
        "swarmkeeper_desired_state_valid",
    ):
        assert metric_key(name) in samples, name

    daemon.wait_ready()
    wait_converged(daemon, p)
    samples = daemon.metrics()
    revision = daemon.status()["revision"]
    assert samples[metric_key("swarmkeeper_desired_state_info", revision=revision)] == 1
    assert metric_key("swarmkeeper_stack_drifted_services", stack=p) in samples
    assert metric_key("swarmkeeper_stack_unhealthy_services", stack=p) in samples
    assert samples[metric_key("swarmkeeper_desired_state_valid")] == 1
    assert samples[metric_key("swarmkeeper_last_reconcile_success_timestamp_seconds")]

    # Some activity to log: a drift corrected, a reload.
    update_service(client, f"{p}_web", env=["SKT_X=1"])
    daemon.wait_for(
        lambda: not container_spec(client, f"{p}_web").get("Env"),
        timeout=CORRECTION_LIMIT,
        what="the drift corrected",
    )
    loads = len(daemon.log_events("desired_state.loaded"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(
        lambda: len(daemon.log_events("desired_state.loaded")) > loads,
        timeout=10,
        what="the reload",
    )

    # One reconcile.finished line per pass, with its outcome, time and revision.
    def passes_agree() -> bool:
        total = sum(
            daemon.metric("swarmkeeper_reconcile_total", result=r)
            for r in ("success", "failure", "partial")
        )
        return total == len(daemon.passes()) > 0

    daemon.wait_for(passes_agree, timeout=10, what="one log line per pass")
    for record in daemon.passes():
        assert record["outcome"] in ("success", "failure", "partial")
        assert isinstance(record["duration_ms"], int | float)
        # CPU time of the loop thread, which cannot exceed its wall time
        # (rounding aside): a pass that reads the engine burns some CPU.
        assert 0 < record["cpu_ms"] <= record["duration_ms"] + 1
        assert record["revision"] == revision
        assert record["level"] == "info"

    status_body = daemon.http_get("/status")[1]
    assert_cpu_time_reported(daemon, json.loads(status_body))
    metrics_body = daemon.metrics_text()
    assert daemon.stop()[0] == 0
    everything = daemon.log_text() + status_body + metrics_body
    assert client.secrets.list(filters={"name": f"{p}_token"}), "secret not created"
    for form in (
        secret_value,
        base64.b64encode(secret_value.encode()).decode(),
        secret_value[4:20],
    ):
        assert form not in everything, f"the secret's value ({form!r}) was logged"
