"""The daemon's HTTP endpoints, on the metrics address (loopback by default).

* ``/metrics``: the Prometheus exposition.
* ``/healthz``: 200 while the reconcile loop is alive (it beats at least once
  a second), 503 when it has stalled.
* ``/readyz``: 200 when the engine answered the last pass and a desired
  state has loaded; 503 with the reasons otherwise (the engine away, or its
  swarm without a leader from this manager: cut off, quorum lost). A
  follower is ready: it reads, reports and stands by.
* ``/status``: every managed object's sync and health state, as JSON.

The webhook (``POST /hooks/git``) is a separate application on its own
address (``webhook_addr``), so that the metrics address can stay on loopback
while a git host reaches the webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swarmkeeper.logs import get_logger
from swarmkeeper.metrics import Metrics

log = get_logger("swarmkeeper.serving")

# The loop beats every second; this much silence means it is stuck.
STALL_SECONDS = 15.0


class Probes:
    """What the endpoints report, updated by the daemon as it runs."""

    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self.engine_connected = False
        # Why this manager's swarm does not answer (cut off, no quorum), if so.
        self.swarm_problem: str | None = None
        self.desired_loaded = False
        self.desired_valid = False
        self.status: Callable[[], dict[str, Any]] = dict

    def beat(self) -> None:
        self.heartbeat = time.monotonic()


def make_app(metrics: Metrics, probes: Probes) -> web.Application:
    async def serve_metrics(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        silent = time.monotonic() - probes.heartbeat
        if silent > STALL_SECONDS:
            return web.json_response(
                {"ok": False, "reason": f"the loop has been silent for {silent:.0f} s"},
                status=503,
            )
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        reasons = []
        if probes.swarm_problem:
            reasons.append(
                "the swarm has no leader or quorum from this manager: "
                + probes.swarm_problem
            )
        if not probes.engine_connected and not probes.swarm_problem:
            reasons.append("the engine did not answer the last pass")
        if not probes.desired_loaded:
            reasons.append("no desired state has loaded")
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons}, status=503)
        return web.json_response(
            {"ready": True, "desired_state_valid": probes.desired_valid}
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response(probes.status())

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app


# ---------------------------------------------------------------- the webhook --

WEBHOOK_PATH = "/hooks/git"
WEBHOOK_MAX_BODY = 1024 * 1024  # bytes; pushes of big repositories stay far below


def webhook_authorized(secret: bytes, body: bytes, headers: Mapping[str, str]) -> bool:
    """True when the call carries a valid signature of ``body`` or the token.

    GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``;
    Gitea: ``X-Gitea-Signature: <hex HMAC-SHA256>``; GitLab:
    ``X-Gitlab-Token: <the secret itself>``. Every comparison takes constant
    time; a header that is present but wrong is a refusal, not a fallthrough
    to the next kind.
    """
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    github = headers.get("X-Hub-Signature-256")
    if github is not None:
        scheme, _, signature = github.partition("=")
        return scheme == "sha256" and hmac.compare_digest(
            signature.strip().lower().encode(), expected
        )
    gitea = headers.get("X-Gitea-Signature")
    if gitea is not None:
        return hmac.compare_digest(gitea.strip().lower().encode(), expected)
    gitlab = headers.get("X-Gitlab-Token")
    if gitlab is not None:
        return hmac.compare_digest(gitlab.encode(), secret)
    return False


def make_webhook_app(
    secret: bytes, on_hook: Callable[[], None], metrics: Metrics
) -> web.Application:
    """``POST /hooks/git`` only: a valid call asks for an early fetch, nothing more.

    The body is read (at most WEBHOOK_MAX_BODY bytes) only to check its
    signature; what it says is never used: the fetch finds out what changed.
    """

    async def hook(request: web.Request) -> web.Response:
        peer = request.remote
        if (request.content_length or 0) > WEBHOOK_MAX_BODY:
            return _too_large(metrics, peer)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(metrics, peer)
        if not webhook_authorized(secret, body, request.headers):
            metrics.webhook_requests.labels(result="unauthorized").inc()
            log.warning("webhook.refused", peer=peer, reason="no valid signature")
            return web.json_response({"accepted": False}, status=401)
        metrics.webhook_requests.labels(result="accepted").inc()
        log.info("webhook.accepted", peer=peer, bytes=len(body))
        on_hook()
        return web.json_response({"accepted": True}, status=202)

    app = web.Application(client_max_size=WEBHOOK_MAX_BODY)
    app.router.add_post(WEBHOOK_PATH, hook)
    return app


def _too_large(metrics: Metrics, peer: str | None) -> web.Response:
    metrics.webhook_requests.labels(result="too-large").inc()
    log.warning("webhook.refused", peer=peer, reason="body too large")
    return web.json_response({"accepted": False}, status=413)
