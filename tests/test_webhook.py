"""The git webhook: only a correctly signed call asks for a fetch.

The signature check is pure (a table of headers); the endpoint is served by
aiohttp's test server and called over real HTTP on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from swarmkeeper.metrics import Metrics
from swarmkeeper.serving import (
    WEBHOOK_MAX_BODY,
    make_webhook_app,
    webhook_authorized,
)

SECRET = b"It's a Secret to Everybody"
BODY = b'{"ref": "refs/heads/main"}'
SIGNATURE = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"X-Hub-Signature-256": f"sha256={SIGNATURE}"}, True),
        ({"X-Hub-Signature-256": f"sha256={SIGNATURE.upper()}"}, True),
        ({"X-Hub-Signature-256": f"sha1={SIGNATURE}"}, False),
        ({"X-Hub-Signature-256": f"sha256={SIGNATURE[:-1]}0"}, False),
        ({"X-Hub-Signature-256": SIGNATURE}, False),
        ({"X-Gitea-Signature": SIGNATURE}, True),
        ({"X-Gitea-Signature": "0" * 64}, False),
        ({"X-Gitlab-Token": SECRET.decode()}, True),
        ({"X-Gitlab-Token": "guess"}, False),
        ({"X-Gitlab-Token": SIGNATURE}, False),
        # A wrong header of one kind is not rescued by a right one of another.
        (
            {"X-Hub-Signature-256": "sha256=00", "X-Gitlab-Token": SECRET.decode()},
            False,
        ),
        ({}, False),
    ],
)
def test_signatures_and_tokens(headers: dict[str, str], accepted: bool) -> None:
    assert webhook_authorized(SECRET, BODY, headers) is accepted


def test_the_signature_covers_the_body() -> None:
    headers = {"X-Hub-Signature-256": f"sha256={SIGNATURE}"}

    assert not webhook_authorized(SECRET, BODY + b" ", headers)
    assert not webhook_authorized(b"another secret", BODY, headers)


class Hooks:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
async def served() -> AsyncIterator[
    tuple[TestClient[web.Request, web.Application], Hooks, Metrics]
]:
    hooks, metrics = Hooks(), Metrics()
    metrics.enable_git()
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(make_webhook_app(SECRET, hooks, metrics))
    )
    await client.start_server()
    try:
        yield client, hooks, metrics
    finally:
        await client.close()


def count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "swarmkeeper_git_webhook_requests_total", {"result": result}
    )
    return value or 0.0


async def test_a_signed_call_asks_for_a_fetch(
    served: tuple[TestClient[web.Request, web.Application], Hooks, Metrics],
) -> None:
    client, hooks, metrics = served

    reply = await client.post(
        "/hooks/git", data=BODY, headers={"X-Hub-Signature-256": f"sha256={SIGNATURE}"}
    )

    assert reply.status == 202
    assert hooks.calls == 1
    assert count(metrics, "accepted") == 1


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/hooks/git", {}, 401),
        ("POST", "/hooks/git", {"X-Gitea-Signature": "0" * 64}, 401),
        ("GET", "/hooks/git", {}, 405),
        ("PUT", "/hooks/git", {"X-Gitea-Signature": SIGNATURE}, 405),
        ("POST", "/hooks/other", {"X-Gitea-Signature": SIGNATURE}, 404),
        ("GET", "/metrics", {}, 404),
    ],
)
async def test_anything_else_is_refused_and_asks_for_nothing(
    served: tuple[TestClient[web.Request, web.Application], Hooks, Metrics],
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    client, hooks, _ = served

    reply = await client.request(method, path, data=BODY, headers=headers)

    assert reply.status == status
    assert hooks.calls == 0


async def test_a_body_over_the_cap_is_refused_unread(
    served: tuple[TestClient[web.Request, web.Application], Hooks, Metrics],
) -> None:
    client, hooks, metrics = served
    body = b"x" * (WEBHOOK_MAX_BODY + 1)
    signature = hmac.new(SECRET, body, hashlib.sha256).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        # Sent chunked, without Content-Length: the cap holds while reading.
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    announced = await client.post(
        "/hooks/git", data=io.BytesIO(body), headers={"X-Gitea-Signature": signature}
    )
    reply = await client.post(
        "/hooks/git", data=chunks(), headers={"X-Gitea-Signature": signature}
    )

    assert announced.status == 413
    assert reply.status == 413
    assert hooks.calls == 0
    assert count(metrics, "too-large") == 2
