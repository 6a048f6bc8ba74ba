"""Private engines (scripts/engine-node.sh, tests/private_engine.py) on the real machine.

Each test gets a dockerd of its own in its own network namespace; the shared
engine on /var/run/docker.sock (``docker_client``) must keep working through
all of it and is only read from (the test image is saved from it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker.errors
import pytest

import private_engine as engines
from private_engine import PrivateEngine, wait_for

pytestmark = pytest.mark.engine

# The fixture, made visible to this module's tests.
private_engine = engines.private_engine


@pytest.fixture(scope="session", autouse=True)
def _private_engines_possible() -> None:
    """Skip for want of root or tools before the shared engine's fixtures run.

    Session scope and autouse put it ahead of ``docker_client``, which fails
    outright where SWARMKEEPER_REQUIRE_ENGINE=1.
    """
    engines.require_private_engines()


ONE_SECOND = 1_000_000_000


def _run_service(engine: PrivateEngine, source: Any, image: str) -> Any:
    """Import the test image into ``engine`` and run one task of it to Running."""
    engine.import_image(image, source)
    client = engine.client()
    service = client.services.create(
        image, name="runner", command=["sleep", "3600"], stop_grace_period=ONE_SECOND
    )
    wait_for(
        lambda: _running_tasks(client, "runner") == 1,
        timeout=60,
        what="one running task of the service",
    )
    return service


def _running_tasks(client: Any, service_name: str) -> int:
    tasks = client.services.get(service_name).tasks()
    return sum(1 for task in tasks if task["Status"]["State"] == "running")


def _mount_points() -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]


def _netns_names() -> list[str]:
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def _running_in_cgroup(pid: int, cgroup_suffix: str) -> bool:
    """``pid`` runs and is still in the node's cgroup (a reused pid is not).

    A zombie is dead: it only waits for PID 1 to reap it.
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"} and cgroup_suffix in cgroups


def test_answers_on_its_own_socket_as_leader_of_its_own_swarm(
    private_engine: PrivateEngine, docker_client: Any
) -> None:
    assert private_engine.docker_host == f"unix://{private_engine.socket_path}"
    assert private_engine.socket_path.is_socket()
    assert private_engine.answers()

    info = private_engine.client().info()
    main = docker_client.info()

    assert info["Swarm"]["LocalNodeState"] == "active"
    assert info["Swarm"]["ControlAvailable"] is True
    assert private_engine.is_leader()
    assert info["Name"] == private_engine.name
    assert info["Swarm"]["NodeAddr"] == private_engine.address
    assert private_engine.address != "127.0.0.1"
    # Not the shared engine: another engine, another swarm, another data root.
    assert info["ID"] != main["ID"]
    assert info["Swarm"]["NodeID"] != main["Swarm"]["NodeID"]
    assert info["Swarm"]["Cluster"]["ID"] != main["Swarm"]["Cluster"]["ID"]
    assert info["DockerRootDir"] != main["DockerRootDir"]
    assert info["Swarm"]["Nodes"] == 1


def test_imported_test_image_runs_a_service_inside_the_private_engine(
    private_engine: PrivateEngine, docker_client: Any, test_image: str
) -> None:
    client = private_engine.client()
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(test_image)

    service = _run_service(private_engine, docker_client, test_image)

    (container,) = client.containers.list(
        filters={"label": f"com.docker.swarm.service.id={service.id}"}
    )
    assert container.attrs["State"]["Pid"] in private_engine.processes()
    assert not docker_client.containers.list(
        all=True, filters={"label": f"com.docker.swarm.service.id={service.id}"}
    )
    assert service.id not in {s.id for s in docker_client.services.list()}


def test_stop_silences_it_and_start_brings_back_the_same_node(
    private_engine: PrivateEngine, docker_client: Any, test_image: str
) -> None:
    _run_service(private_engine, docker_client, test_image)
    client = private_engine.client()  # kept across the restart
    node_id = private_engine.node_id()
    cluster_id = private_engine.info()["Swarm"]["Cluster"]["ID"]
    main_node_id = docker_client.info()["Swarm"]["NodeID"]

    private_engine.stop()

    assert not private_engine.answers()
    assert private_engine.status()["engine"] == "stopped"
    assert private_engine.processes() == []
    # The shared engine never noticed.
    assert docker_client.ping()
    assert docker_client.info()["Swarm"]["NodeID"] == main_node_id
    docker_client.services.list()

    private_engine.start()

    info = private_engine.info()
    assert info["Swarm"]["NodeID"] == node_id
    assert info["Swarm"]["Cluster"]["ID"] == cluster_id
    assert private_engine.is_leader()
    assert [service.name for service in client.services.list()] == ["runner"]
    wait_for(
        lambda: _running_tasks(client, "runner") == 1,
        timeout=60,
        what="the service to run again after the restart",
    )


def test_a_crashed_engine_starts_again_as_the_same_node(
    private_engine: PrivateEngine,
) -> None:
    node_id = private_engine.node_id()

    private_engine.stop(timeout=0)  # SIGKILL at once: its containerd is killed too

    assert private_engine.processes() == []
    private_engine.start()
    assert private_engine.node_id() == node_id
    assert private_engine.is_leader()


def test_start_after_dockerd_alone_was_killed(
    private_engine: PrivateEngine, docker_client: Any, test_image: str
) -> None:
    # A crash of dockerd alone leaves its task's shim and container running
    # (containerd dies with dockerd). start must clear them out, not trust them.
    _run_service(private_engine, docker_client, test_image)
    client = private_engine.client()
    node_id = private_engine.node_id()
    dockerd = int(private_engine.status()["pid"])
    os.kill(dockerd, signal.SIGKILL)
    wait_for(
        lambda: dockerd not in private_engine.processes(),
        timeout=10,
        what="dockerd to die",
    )
    leftovers = private_engine.processes()
    assert leftovers  # the shim and the task's sleep live on
    assert private_engine.status()["engine"] == "not-answering"

    private_engine.start()

    assert not set(leftovers) & set(private_engine.processes())
    assert private_engine.node_id() == node_id
    assert private_engine.is_leader()
    wait_for(
        lambda: _running_tasks(client, "runner") == 1,
        timeout=60,
        what="the service to run again",
    )


def test_down_leaves_nothing_behind(
    private_engine: PrivateEngine, docker_client: Any, test_image: str
) -> None:
    _run_service(private_engine, docker_client, test_image)
    status = private_engine.status()
    pids = private_engine.processes()
    assert len(pids) >= 4  # dockerd, containerd, a shim, the task's sleep
    cgroup_suffix = f"/skeng/{private_engine.name}/"
    run_dir, state_dir = Path(status["run_dir"]), Path(status["state_dir"])
    assert any(
        point.startswith(f"/run/netns/{status['netns']}") for point in _mount_points()
    )

    private_engine.down()

    assert private_engine.status()["exists"] == "no"
    assert not [pid for pid in pids if _running_in_cgroup(pid, cgroup_suffix)]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/skeng/{private_engine.name}"))
    assert not Path(status["cgroup"]).exists()
    assert status["netns"] not in _netns_names()
    leftovers = [
        point
        for point in _mount_points()
        if private_engine.name in point
        or point.startswith((str(run_dir), str(state_dir)))
    ]
    assert not leftovers
    assert not run_dir.exists()
    assert not state_dir.exists()
    assert not private_engine.socket_path.exists()
    assert not private_engine.answers()
    # The shared engine is untouched.
    assert docker_client.ping()

    private_engine.down()  # again: nothing to do, no error


def test_fixture_tears_down_after_a_failing_test(tmp_path: Path) -> None:
    name_file = tmp_path / "engine-name"
    test_file = tmp_path / "test_fails_on_purpose.py"
    test_file.write_text(
        "import os\n"
        "from pathlib import Path\n"
        "import private_engine as engines\n"
        "from private_engine import PrivateEngine\n"
        "private_engine = engines.private_engine\n"
        "def test_fails(private_engine: PrivateEngine) -> None:\n"
        "    Path(os.environ['ENGINE_NAME_FILE']).write_text(private_engine.name)\n"
        "    assert private_engine.answers()\n"
        "    raise AssertionError('failing on purpose')\n"
    )
    tests_dir = Path(__file__).parent
    environment = {
        **os.environ,
        "ENGINE_NAME_FILE": str(name_file),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tests_dir), os.environ.get("PYTHONPATH")])
        ),
    }

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "failing on purpose" in result.stdout
    name = name_file.read_text()
    status = PrivateEngine(name).status()
    assert status["exists"] == "no"
    assert status["netns"] not in _netns_names()
    assert not Path(status["state_dir"]).exists()


def test_an_engine_that_cannot_start_fails_up_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "dockerd"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'failed to start daemon: simulated breakage' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    engine = PrivateEngine(environment=environment)
    try:
        with pytest.raises(engines.EngineNodeError, match="simulated breakage"):
            engine.up()
        assert engine.processes() == []
    finally:
        engine.down()
    assert engine.status()["exists"] == "no"


def test_three_private_engines_make_one_swarm_of_managers() -> None:
    nodes = [PrivateEngine() for _ in range(3)]
    try:
        # Concurrently: the script locks only around the shared structure.
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(lambda n: n[1].up(swarm=n[0] == 0), enumerate(nodes)))
        first, *others = nodes
        for node in others:
            node.join(first)

        infos = [node.info()["Swarm"] for node in nodes]
        assert len({info["Cluster"]["ID"] for info in infos}) == 1
        assert len({info["NodeID"] for info in infos}) == 3
        assert len({node.address for node in nodes}) == 3
        listed = first.client().nodes.list()
        assert sorted(n.attrs["Description"]["Hostname"] for n in listed) == sorted(
            node.name for node in nodes
        )
        assert [node.is_leader() for node in nodes] == [True, False, False]

        # Cutting a node off the hub: it reaches no other node, until healed.
        cut = others[1]
        assert cut.can_reach(first.address)
        cut.cut()
        assert not cut.can_reach(first.address)
        assert not first.can_reach(cut.address)
        assert others[0].can_reach(first.address)
        cut.heal()
        assert cut.can_reach(first.address)
    finally:
        for node in nodes:
            node.down()
    assert not {f"skeng-{node.name}" for node in nodes} & set(_netns_names())
