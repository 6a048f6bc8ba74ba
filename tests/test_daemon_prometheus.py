"""A real Prometheus scrapes a real daemon; promtool lints its exposition.

Prometheus is Debian's package (2.42), installed by ``scripts/test-deps.sh``.
Without its binaries the test is skipped, unless ``SWARMKEEPER_REQUIRE_ENGINE=1``
(CI), where that fails it: the suite promises this check there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmTestBed
from daemon_process import (
    DaemonFactory,
    daemons_fixture,  # noqa: F401 - the ``daemons`` fixture
    free_port,
    wait_until,
)

pytestmark = pytest.mark.engine

REQUIRE = os.environ.get("SWARMKEEPER_REQUIRE_ENGINE") == "1"
# Debian puts both in /usr/bin; look in sbin too for a minimal PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
FIRST_SAMPLE_TIMEOUT = 15.0  # measured about 6 s (a fixed 5 s reload tick)


def tool(name: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        message = f"{name} is not installed; run scripts/test-deps.sh"
        if REQUIRE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


class Prometheus:
    """One Prometheus server on loopback, with its own storage, for one test."""

    def __init__(
        self,
        work_dir: Path,
        target: str,
        scrape_interval: str = "1s",
        config_text: str | None = None,
    ):
        """``config_text``, when given, replaces the one-job configuration."""
        self.binary = tool("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config = work_dir / "prometheus.yml"
        self.config.write_text(
            config_text
            or "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: swarmkeeper\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = work_dir / "prometheus.log"
        self.command = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: self.get("/-/ready")[0] == 200 or self._exited(),
            timeout=30,
            what="Prometheus to be ready",
        )
        assert not self._exited(), f"Prometheus exited:\n{self.log.read_text()}"

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()
        except (urllib.error.URLError, OSError):
            return 0, ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        code, body = self.get(
            "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        )
        assert code == 200, body
        document = json.loads(body)
        assert document["status"] == "success", document
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest.fixture
def prometheus_for() -> Iterator[list[Prometheus]]:
    started: list[Prometheus] = []
    yield started
    for server in started:
        server.stop()


def test_prometheus_scrapes_the_daemon_and_promtool_accepts_it(
    swarm: SwarmTestBed,
    daemons: DaemonFactory,
    prometheus_for: list[Prometheus],
    tmp_path: Path,
) -> None:
    promtool = tool("promtool")
    tool("prometheus")
    p = swarm.prefix
    state = tmp_path / "state"
    (state / "stacks").mkdir(parents=True)
    (state / "stacks" / f"{p}.yml").write_text(
        "services:\n"
        "  web:\n"
        f"    image: {swarm.image}\n"
        "    command: [sleep, '3600']\n"
        "    deploy: {replicas: 0}\n"
    )
    daemon = daemons(state)

    # promtool's linter reads the exposition on standard input.
    exposition = daemon.metrics_text()
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    server = Prometheus(tmp_path / "prometheus", daemon.metrics_addr)
    prometheus_for.append(server)
    server.start()
    result = wait_until(
        lambda: server.query("swarmkeeper_reconcile_total"),
        timeout=FIRST_SAMPLE_TIMEOUT,
        what="swarmkeeper_reconcile_total in Prometheus",
        interval=0.2,
    )
    by_result = {series["metric"]["result"]: series for series in result}
    assert set(by_result) == {"success", "failure", "partial"}
    assert all(s["metric"]["job"] == "swarmkeeper" for s in result)
    assert float(by_result["success"]["value"][1]) >= 1
    up = server.query('up{job="swarmkeeper"}')
    assert [float(s["value"][1]) for s in up] == [1.0]

    assert server.stop() == 0
