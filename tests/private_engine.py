"""Private Docker engines for tests: ``PrivateEngine`` and the ``private_engine`` fixture.

A private engine is a second (third...) ``dockerd`` with its own socket, data
root and exec root, in a network namespace of its own with its own address,
made by ``scripts/engine-node.sh`` (root only). It is a swarm of its own,
never the shared engine on /var/run/docker.sock, so a test may stop it, start
it again (its swarm state on disk survives: it comes back as the same node of
the same swarm) and finally tear it down, leaving nothing behind.

Use the fixture::

    import private_engine as engines
    from private_engine import PrivateEngine

    private_engine = engines.private_engine  # the fixture, for this module

    def test_something(private_engine: PrivateEngine) -> None:
        client = private_engine.client()
        ...

or the class directly, as a context manager, for several engines::

    with PrivateEngine("node1") as engine:
        engine.up()
        ...

or ``PrivateCluster`` for one swarm of several managers, each an engine of
its own (``scripts/engine-node.sh cluster``)::

    with PrivateCluster(node_names(3)) as cluster:
        cluster.up()
        leader = cluster.wait_for_leader(timeout=60)

Waits poll a condition until a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "engine-node.sh"
TOOLS = (
    "dockerd",
    "containerd",
    "runc",
    "docker",
    "ip",
    "nsenter",
    "unshare",
    "setsid",
    "flock",
    "mount",
    "timeout",
)
REQUIRE_ENGINE = os.environ.get("SWARMKEEPER_REQUIRE_ENGINE") == "1"

# Unix socket paths longer than this cannot be bound (sun_path is 108 bytes).
MAX_SOCKET_PATH = 107


class EngineNodeError(RuntimeError):
    """The node script failed, or a private engine missed a deadline."""


def missing_tools() -> list[str]:
    """Programs the node script needs that are not on PATH."""
    path = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    )
    return [tool for tool in TOOLS if shutil.which(tool, path=path) is None]


def require_private_engines() -> None:
    """Skip when not root; skip (or fail where engines are required) without tools."""
    if os.geteuid() != 0:
        pytest.skip("private engines need root (network namespaces, cgroups)")
    missing = missing_tools()
    if missing:
        message = f"private engines need {', '.join(missing)} (apt-get install docker.io iproute2 util-linux)"
        if REQUIRE_ENGINE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; raise ``EngineNodeError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise EngineNodeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class PrivateEngine:
    """One node made by ``scripts/engine-node.sh``: a dockerd of its own."""

    def __init__(
        self,
        name: str | None = None,
        *,
        script: Path = SCRIPT,
        command_timeout: float = 180.0,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name or node_names(1)[0]
        self.script = script
        self.command_timeout = command_timeout
        # For the script (and the dockerd it starts): PATH, SKENG_* settings.
        self.environment = dict(os.environ if environment is None else environment)
        self._clients: list[Any] = []
        self._cgroup: Path | None = None
        self.socket_path = Path(self._run("socket", self.name).strip())
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise EngineNodeError(f"socket path too long: {self.socket_path}")

    def __repr__(self) -> str:
        return f"PrivateEngine({self.name!r}, {self.docker_host})"

    def __enter__(self) -> PrivateEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    # ------------------------------------------------------------ lifecycle --

    @property
    def docker_host(self) -> str:
        """``unix:///run/skeng/NAME/docker.sock``: for DOCKER_HOST or ``-H``."""
        return f"unix://{self.socket_path}"

    def up(self, *, swarm: bool = True, heartbeat: str | None = None) -> None:
        """Create the node and start its engine; a single-node swarm manager unless ``swarm=False``."""
        args = ["up", self.name]
        if not swarm:
            args.append("--no-swarm")
        if heartbeat:
            args += ["--heartbeat", heartbeat]
        self._run(*args)
        self._wait(self.answers, timeout=30, what="its engine to answer")
        if swarm:
            self.wait_for_manager()

    def stop(self, *, timeout: int = 30) -> None:
        """Stop the engine (SIGTERM, SIGKILL after ``timeout`` s; 0 = crash); data stays.

        Everything in the node's cgroup goes too (containerd, shims, tasks).
        Clients from ``client()`` stay usable: they reconnect after ``start()``.
        """
        self._run("stop", self.name, "--timeout", str(timeout))
        self._wait(
            lambda: not self.answers(), timeout=10, what="its socket to go quiet"
        )

    def start(self) -> None:
        """Start the stopped engine on the same data; waits for it to manage its swarm again."""
        self._run("start", self.name)
        self._wait(self.answers, timeout=30, what="its engine to answer")
        if self.info()["Swarm"].get("LocalNodeState") == "active":
            self.wait_for_manager()

    def down(self) -> None:
        """Kill everything of the node and remove it. Safe to call again."""
        self._close_clients()
        self._run("down", self.name)

    # ------------------------------------------------------ several managers --

    def join(self, manager: PrivateEngine) -> None:
        """Make this engine (``up(swarm=False)``) a manager of ``manager``'s swarm."""
        self._run("join", self.name, manager.name)
        self.wait_for_manager()

    def cut(self) -> None:
        """Take this node's link to the hub down: it can reach no other node."""
        self._run("cut", self.name)

    def heal(self) -> None:
        """Put this node's link to the hub back up."""
        self._run("heal", self.name)

    def run_in_netns(
        self, *command: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the node's network namespace (node addresses are
        reachable only from there)."""
        return subprocess.run(
            [str(self.script), "exec", self.name, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=self.environment,
        )

    def can_reach(self, address: str, port: int = 2377, *, timeout: int = 2) -> bool:
        """A TCP connection from this node to ``address:port`` succeeds."""
        probe = f"</dev/tcp/{address}/{port}"
        result = self.run_in_netns("timeout", str(timeout), "bash", "-c", probe)
        return result.returncode == 0

    # ---------------------------------------------------------------- state --

    def status(self) -> dict[str, str]:
        """The script's ``status`` as a dict (``exists``, ``engine``, ``pid``, ``address``...)."""
        result = self._run("status", self.name, ok_codes=(0, 3, 4))
        pairs = (line.partition("=") for line in result.splitlines() if "=" in line)
        return {key: value for key, _, value in pairs}

    @property
    def address(self) -> str:
        """The node's address on the hub bridge (reachable only from other nodes)."""
        return self._run("address", self.name).strip()

    def answers(self, timeout: float = 3.0) -> bool:
        """The engine answers ``GET /_ping`` on its socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = sock.recv(256)
        except OSError:
            return False
        return reply.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]

    def client(self, *, timeout: int = 60) -> Any:
        """A Docker SDK client for this engine; closed by ``stop()`` and ``down()``."""
        client = docker.DockerClient(base_url=self.docker_host, timeout=timeout)
        self._clients.append(client)
        return client

    def info(self) -> dict[str, Any]:
        client = docker.DockerClient(base_url=self.docker_host, timeout=30)
        try:
            info: dict[str, Any] = client.info()
        finally:
            client.close()
        return info

    def node_id(self) -> str:
        return str(self.info()["Swarm"]["NodeID"])

    def is_manager(self) -> bool:
        swarm = self.info()["Swarm"]
        return swarm.get("LocalNodeState") == "active" and bool(
            swarm.get("ControlAvailable")
        )

    def is_leader(self) -> bool:
        client = docker.DockerClient(base_url=self.docker_host, timeout=30)
        try:
            node = client.nodes.get(self.node_id())
            return bool(node.attrs.get("ManagerStatus", {}).get("Leader"))
        except docker.errors.APIError:
            return False  # no leader yet: the manager cannot answer node calls
        finally:
            client.close()

    def wait_for_manager(self, *, timeout: float = 60) -> None:
        """Until this node is an active swarm manager and its swarm has a leader."""
        self._wait(
            lambda: self.answers() and self.is_manager() and self._swarm_has_leader(),
            timeout=timeout,
            what="it to be a swarm manager with a leader",
        )

    def cgroup(self) -> Path:
        """The cgroup that holds all of the node's processes (engine and containers)."""
        if self._cgroup is None:
            self._cgroup = Path(self.status()["cgroup"])
        return self._cgroup

    def processes(self) -> list[int]:
        """Every process in the node's cgroup tree."""
        pids: list[int] = []
        for procs in self.cgroup().rglob("cgroup.procs"):
            try:
                pids += (int(pid) for pid in procs.read_text().split())
            except OSError:
                continue  # a container's cgroup removed as we read
        return sorted(pids)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the engine's log, for failure messages."""
        path = Path(self.status().get("log", ""))
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --------------------------------------------------------------- images --

    def import_image(self, image: str, source: Any) -> None:
        """Copy ``image`` from the engine of the SDK client ``source`` (no registry here)."""
        data = b"".join(source.images.get(image).save(named=True))
        client = docker.DockerClient(base_url=self.docker_host, timeout=120)
        try:
            client.images.load(data)
            client.images.get(image)
        finally:
            client.close()

    # ------------------------------------------------------------- internals --

    def _swarm_has_leader(self) -> bool:
        client = docker.DockerClient(base_url=self.docker_host, timeout=30)
        try:
            nodes = client.nodes.list()
        except docker.errors.APIError:
            return False
        finally:
            client.close()
        return any(
            (node.attrs.get("ManagerStatus") or {}).get("Leader") for node in nodes
        )

    def _wait(
        self, condition: Callable[[], bool], *, timeout: float, what: str
    ) -> None:
        """``wait_for``, with the end of the engine's log in the error."""
        try:
            wait_for(condition, timeout=timeout, what=f"{what} ({self.name})")
        except EngineNodeError as error:
            raise EngineNodeError(
                f"{error}\nlast lines of the engine's log:\n{self.log_tail()}"
            ) from None

    def _close_clients(self) -> None:
        while self._clients:
            self._clients.pop().close()

    def _run(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> str:
        command = [str(self.script), *args]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.command_timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                env=self.environment,
            )
        except subprocess.TimeoutExpired as error:
            raise EngineNodeError(
                f"{' '.join(command)} did not finish within {self.command_timeout:g}s"
            ) from error
        if result.returncode not in ok_codes:
            raise EngineNodeError(
                f"{' '.join(command)} failed with exit code {result.returncode}:\n"
                f"{result.stderr.strip()}"
            )
        return result.stdout


# How many names SWARMKEEPER_TEST_ENGINES has handed out, to go round them.
_pinned_names_used = itertools.count()


def node_names(count: int) -> list[str]:
    """Names for ``count`` new nodes: random, or from SWARMKEEPER_TEST_ENGINES.

    SWARMKEEPER_TEST_ENGINES (comma-separated) pins the names, for a person
    allowed only some node names on a shared machine. They are handed out
    in turn, going round, so engines made one after another get different
    names while there are enough of them.
    """
    pinned = [n for n in os.environ.get("SWARMKEEPER_TEST_ENGINES", "").split(",") if n]
    if not pinned:
        return [f"pe{secrets.token_hex(3)}" for _ in range(count)]
    if len(pinned) < count:
        raise EngineNodeError(
            f"SWARMKEEPER_TEST_ENGINES names {len(pinned)} nodes, {count} needed"
        )
    return [pinned[next(_pinned_names_used) % len(pinned)] for _ in range(count)]


class PrivateCluster:
    """Several private engines joined as managers of one swarm.

    The first node makes the swarm, the others join it as managers; all of
    them are torn down by ``down()``, whatever state they are in (stopped,
    cut off). Leadership is read from each node's own engine, as
    swarmkeeper reads it: the node whose own ``ManagerStatus.Leader`` is set.
    """

    def __init__(self, names: list[str]) -> None:
        self.nodes = [PrivateEngine(name) for name in names]
        self.script = self.nodes[0].script
        self.environment = self.nodes[0].environment

    def __enter__(self) -> PrivateCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    def up(self, *, heartbeat: str | None = None) -> None:
        args = ["cluster", "up", *(node.name for node in self.nodes)]
        if heartbeat:
            args += ["--heartbeat", heartbeat]
        self.nodes[0]._run(*args)
        for node in self.nodes:
            node.wait_for_manager()

    def down(self) -> None:
        for node in self.nodes:
            node._close_clients()
        self.nodes[0]._run("cluster", "down", *(node.name for node in self.nodes))

    def leaders(self, among: list[PrivateEngine] | None = None) -> list[PrivateEngine]:
        """The nodes (of ``among``, default all) whose own engine says it leads."""
        return [node for node in among or self.nodes if claims_leadership(node)]

    def wait_for_leader(
        self, *, among: list[PrivateEngine] | None = None, timeout: float = 60
    ) -> PrivateEngine:
        """The one node of ``among`` that leads, once there is exactly one."""
        found: list[PrivateEngine] = []

        def one_leader() -> bool:
            found[:] = self.leaders(among)
            return len(found) == 1

        wait_for(one_leader, timeout=timeout, what="one leader", interval=0.1)
        return found[0]


def claims_leadership(node: PrivateEngine, *, timeout: int = 5) -> bool:
    """``node``'s own engine answers and says its node is the swarm's leader."""
    if not node.answers(timeout=1):
        return False
    client = docker.DockerClient(base_url=node.docker_host, timeout=timeout)
    try:
        node_id = client.info()["Swarm"].get("NodeID")
        if not node_id:
            return False
        manager = client.api.inspect_node(node_id).get("ManagerStatus") or {}
        return bool(manager.get("Leader"))
    except (docker.errors.APIError, docker.errors.DockerException, OSError):
        return False  # no leader yet, or no answer in time
    finally:
        client.close()


@pytest.fixture
def private_engine() -> Iterator[PrivateEngine]:
    """A private engine, up and a single-node swarm manager (and leader); torn down afterwards."""
    require_private_engines()
    engine = PrivateEngine()
    try:
        engine.up()
        yield engine
    finally:
        engine.down()
