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
    """The node is not a swarm manager, or the swarm has no quorum or leader."""


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
    if status == 503:
        return SwarmUnavailable(message, status=status)
    return RequestRejected(message, status=status)


class Engine:
    """An open connection to one Docker engine, with a deadline on every call."""

    def __init__(self, docker: aiodocker.Docker, *, call_timeout: float) -> None:
        self._docker = docker
        self._timeout = call_timeout

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
        try:
            async with asyncio.timeout(self._timeout):
                return await request
        except aiodocker.DockerError as error:
            raise _classify(error, what) from error
        except TimeoutError as error:
            raise EngineTimeout(
                f"{what}: no answer within {self._timeout:g}s"
            ) from error
        except aiohttp.ClientError as error:
            raise EngineUnreachable(f"{what}: {error}") from error

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

    async def list_services(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._call(
            "list services", self._docker.services.list()
        )
        return result

    async def list_networks(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._call(
            "list networks", self._docker.networks.list()
        )
        return result

    async def list_nodes(self) -> list[JSONObject]:
        result: list[JSONObject] = await self._call(
            "list nodes", self._docker.nodes.list()
        )
        return result
