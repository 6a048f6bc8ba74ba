"""The daemon's HTTP endpoints, on the metrics address (loopback by default).

* ``/metrics``: the Prometheus exposition.
* ``/healthz``: 200 while the reconcile loop is alive (it beats at least once
  a second), 503 when it has stalled.
* ``/readyz``: 200 when the engine answered the last pass and a desired
  state has loaded; 503 with the reasons otherwise (the engine away, or its
  swarm without a leader from this manager: cut off, quorum lost). A
  follower is ready: it reads, reports and stands by.
* ``/status``: every managed object's sync and health state, as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swarmkeeper.metrics import Metrics

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
