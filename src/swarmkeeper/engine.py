"""The engine adapter: the only module that talks to Docker.

It owns the facts about aiodocker that the rest of swarmkeeper should not
have to know: every failure arrives as one ``DockerError`` carrying an HTTP
status (900 when the engine cannot be reached at all), calls have no deadline
unless given one, and the API version must be the engine's own maximum, since
a lower one makes the engine drop newer fields from specs without a word.

Callers see exceptions named after the condition (:class:`NotFound`,
:class:`OutOfSequence`, :class:`EngineUnreachable`, ...) and plain JSON
mappings as the engine sends them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp

JSONObject = dict[str, Any]


class EngineError(Exception):
    """A Docker engine call failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EngineUnreachable(EngineError):
    """The engine did not answer: socket missing, connection refused or dropped."""


class EngineTimeout(EngineUnreachable):
    """The engine did not answer within the configured time."""


class NotFound(EngineError):
    """The object does not exist (any more)."""


class Conflict(EngineError):
    """The engine refused a write that clashes with an existing object."""


class OutOfSequence(Conflict):
    """A write carried a stale version: re-read the object and try again."""


class SwarmUnavailable(EngineError):
    """The node is not a swarm manager, or the swarm has no quorum or leader.

    The engine itself answers: it is its swarm that cannot, from this node
    (a manager cut off from the others, or one of too few left).
    """


# How the engine (20.10 to 28) says that its manager cannot reach a swarm
# leader. It answers these with status 500 ("rpc error: code = ..."), so the
# text is all there is to tell them from other server errors. Seen on a
# manager cut off from the others: a write it accepted while still believing
# itself leader fails with "lost leader status" when Raft gives up on it
# (after 12 to 18 s); a read forwarded to a leader that is gone fails after
# 20 s with "DeadlineExceeded"; once the manager knows it has no leader,
# every swarm call fails at once with "does not have a leader".
NO_LEADER_MARKERS = (
    "does not have a leader",
    "lost leader status",
    "raft: failed to process the request",
    "rpc error: code = deadlineexceeded",
    "this node is not a swarm manager",
)


class RequestRejected(EngineError):
    """Any other refusal: the message is the engine's own."""


def _classify(error: aiodocker.DockerError, what: str) -> EngineError:
    message = f"{what}: {error.message}"
    status = error.status
    text = str(error.message).lower()

    if status == 900:
        return EngineUnreachable(message, status=status)
    if status == 404:
        return NotFound(message, status=status)
    if "update out of sequence" in text:
        return OutOfSequence(message, status=status)
    if status == 409:
        return Conflict(message, status=status)
    if status == 503 or any(marker in text for marker in NO_LEADER_MARKERS):
        return SwarmUnavailable(message, status=status)
    return RequestRejected(message, status=status)


class Engine:
    """An open connection to one Docker engine, with a deadline on every call."""

    def __init__(self, docker: aiodocker.Docker, *, call_timeout: float) -> None:
        self._docker = docker
        self._timeout = call_timeout
        # Start times of the calls waiting for an answer, so the daemon can
        # tell a pass that waits on a slow engine (within the deadline) from
        # one that is stuck.
        self._in_flight: dict[int, float] = {}
        self._next_call = 0
        # One question for the engine's API version, however many first
        # calls wait on it (see _settle_api_version).
        self._version_lock = asyncio.Lock()

    @property
    def call_timeout(self) -> float:
        return self._timeout

    def oldest_call_age(self) -> float:
        """Seconds the oldest unanswered call has waited; 0 when none waits."""
        if not self._in_flight:
            return 0.0
        return time.monotonic() - min(self._in_flight.values())

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str | None = None, *, call_timeout: float = 30.0
    ) -> AsyncIterator[Engine]:
        """Open a connection; ``url`` None means DOCKER_HOST, then the local socket.

        Nothing is sent until the first call, so an engine that is down is
        reported by that call, not here.
        """
        try:
            docker = aiodocker.Docker(url=url)
        except ValueError as error:
            raise EngineUnreachable(f"no Docker engine address: {error}") from error
        try:
            yield cls(docker, call_timeout=call_timeout)
        finally:
            await docker.close()

    async def _call(self, what: str, request: Awaitable[Any]) -> Any:
        call = self._next_call
        self._next_call += 1
        self._in_flight[call] = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    await self._settle_api_version()
                except BaseException:
                    if inspect.iscoroutine(request):
                        request.close()  # never sent: no "never awaited" warning
                    raise
                return await request
        except aiodocker.DockerError as error:
            raise _classify(error, what) from error
        except TimeoutError as error:
            raise EngineTimeout(
                f"{what}: no answer within {self._timeout:g}s"
            ) from error
        except aiohttp.ClientError as error:
            raise EngineUnreachable(f"{what}: {error}") from error
        finally:
            del self._in_flight[call]

    async def _settle_api_version(self) -> None:
        """Learn the engine's API version once, before the first real call.

        aiodocker asks for it (``GET /version``) in every call made while
        it does not know it yet, so the concurrent first reads of a pass
        asked six times: a no-op apply made 12 requests, not 7. The first
        caller asks; the others wait for its answer.
        """
        if self._docker.api_version != "auto":
            return
        async with self._version_lock:
            await self._docker._check_version()

    @property
    def api_version(self) -> str:
        """The API version in use, ``v1.41`` say; ``auto`` before the first call."""
        return str(self._docker.api_version)

    async def version(self) -> JSONObject:
        """The engine's version document (``Version``, ``ApiVersion``, ...)."""
        result: JSONObject = await self._call("version", self._docker.version())
        return result

    async def info(self) -> JSONObject:
        """System information, including this node's ``Swarm`` section."""
        result: JSONObject = await self._call("info", self._docker.system.info())
        return result

    async def _request(
        self,
        what: str,
        path: str,
        *,
        method: str = "GET",
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One raw API call through aiodocker's session, with the adapter's rules.

        aiodocker's wrappers cannot send a full service spec, a node spec or a
        version-checked update; this sends exactly the JSON given.
        """
        return await self._call(
            what,
            self._docker._query_json(path, method, params=params, data=body),
        )

    # -- reads: one list call per kind -----------------------------------

    async def list_services(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._request("list services", "services")
        return result

    async def list_networks(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._request("list networks", "networks")
        return result

    async def list_nodes(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._request("list nodes", "nodes")
        return result

    async def list_configs(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._request("list configs", "configs")
        return result

    async def list_secrets(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._request("list secrets", "secrets")
        return result

    async def list_tasks(self, *, desired_state: str | None = None) -> list[JSONObject]:
        """Tasks of every service; ``desired_state="running"`` for the live ones."""
        params = None
        if desired_state:
            params = {"filters": {"desired-state": [desired_state]}}
        result: list[JSONObject] = await self._request(
            "list tasks", "tasks", params=params
        )
        return result

    @asynccontextmanager
    async def event_stream(
        self, *, types: tuple[str, ...]
    ) -> AsyncIterator[AsyncIterator[JSONObject]]:
        """The engine's swarm events of ``types``, one decoded event at a time.

        Connecting has the usual deadline; reading has none, since a quiet
        swarm sends nothing for hours. The iterator ends when the engine
        closes the stream (a restart, a lost leadership): the caller
        reconnects and resyncs, as events may have been missed. aiodocker's
        own subscriber is not used: its queues are unbounded and it ends
        without saying why.
        """
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._timeout,
            sock_connect=self._timeout,
            sock_read=None,
        )
        params = {"filters": {"type": list(types), "scope": ["swarm"]}}
        try:
            context = self._docker._query("events", params=params, timeout=timeout)
            async with asyncio.timeout(self._timeout):
                response = await context.__aenter__()
        except aiodocker.DockerError as error:
            raise _classify(error, "watch events") from error
        except TimeoutError as error:
            raise EngineTimeout(
                f"watch events: no answer within {self._timeout:g}s"
            ) from error
        except aiohttp.ClientError as error:
            raise EngineUnreachable(f"watch events: {error}") from error

        async def decoded() -> AsyncIterator[JSONObject]:
            try:
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
            except (aiohttp.ClientError, ValueError) as error:
                raise EngineUnreachable(f"event stream broke: {error}") from error

        try:
            yield decoded()
        finally:
            await context.__aexit__(None, None, None)

    async def inspect_service(self, service_id: str) -> JSONObject:
        result: JSONObject = await self._request(
            f"inspect service {service_id}", f"services/{service_id}"
        )
        return result

    async def inspect_node(self, node_id: str) -> JSONObject:
        result: JSONObject = await self._request(
            f"inspect node {node_id}", f"nodes/{node_id}"
        )
        return result

    # -- writes -----------------------------------------------------------

    async def create_service(self, spec: JSONObject) -> str:
        """Create a service from a full spec; returns its ID."""
        name = spec.get("Name", "?")
        result = await self._request(
            f"create service {name}", "services/create", method="POST", body=spec
        )
        return str(result["ID"])

    async def update_service(
        self, service_id: str, *, version: int, spec: JSONObject
    ) -> None:
        """Replace a service's whole spec, if it is still at ``version``.

        A stale version raises OutOfSequence: re-read and decide again.
        """
        await self._request(
            f"update service {spec.get('Name', service_id)}",
            f"services/{service_id}/update",
            method="POST",
            params={"version": version},
            body=spec,
        )

    async def remove_service(self, service_id: str) -> None:
        await self._request(
            f"remove service {service_id}", f"services/{service_id}", method="DELETE"
        )

    async def create_network(self, name: str, body: JSONObject) -> str:
        result = await self._request(
            f"create network {name}",
            "networks/create",
            method="POST",
            body={"Name": name, "CheckDuplicate": True, **body},
        )
        return str(result["Id"])

    async def remove_network(self, network_id: str) -> None:
        await self._request(
            f"remove network {network_id}", f"networks/{network_id}", method="DELETE"
        )

    async def create_config(
        self,
        name: str,
        *,
        data: bytes,
        labels: dict[str, str],
        templating: JSONObject | None = None,
    ) -> str:
        return await self._create_blob("configs", name, data, labels, templating)

    async def create_secret(
        self,
        name: str,
        *,
        data: bytes,
        labels: dict[str, str],
        templating: JSONObject | None = None,
    ) -> str:
        return await self._create_blob("secrets", name, data, labels, templating)

    async def _create_blob(
        self,
        kind: str,
        name: str,
        data: bytes,
        labels: dict[str, str],
        templating: JSONObject | None,
    ) -> str:
        import base64

        body: JSONObject = {
            "Name": name,
            "Labels": labels,
            "Data": base64.b64encode(data).decode("ascii"),
        }
        if templating:
            body["Templating"] = templating
        # The "what" names the object, never its data.
        result = await self._request(
            f"create {kind[:-1]} {name}", f"{kind}/create", method="POST", body=body
        )
        return str(result["ID"])

    async def remove_config(self, config_id: str) -> None:
        await self._request(
            f"remove config {config_id}", f"configs/{config_id}", method="DELETE"
        )

    async def remove_secret(self, secret_id: str) -> None:
        await self._request(
            f"remove secret {secret_id}", f"secrets/{secret_id}", method="DELETE"
        )

    async def update_node(
        self, node_id: str, *, version: int, spec: JSONObject
    ) -> None:
        """Replace a node's whole spec (labels, role, availability) at ``version``."""
        await self._request(
            f"update node {node_id}",
            f"nodes/{node_id}/update",
            method="POST",
            params={"version": version},
            body=spec,
        )
