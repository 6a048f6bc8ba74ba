"""``swarmkeeper run`` as a real process, for tests and benchmarks.

:class:`DaemonProcess` starts the daemon with ``python -m swarmkeeper run``
on a free loopback port, with JSON logs to a file, a clean environment (no
``SWARMKEEPER_*`` variable of the caller leaks in, no config file is read)
and ``NOTIFY_SOCKET`` pointing at a datagram socket this helper binds and
reads itself, so the systemd notify protocol is observable without systemd.

It offers what a test asks a daemon: wait until it is ready, scrape and parse
its metrics, read ``/status`` and the other endpoints, read its logs, and
stop it with a signal, timing how long that takes.

The ``daemons`` fixture (import ``daemons_fixture`` into a test module) hands
each test a factory; every daemon it started is stopped when the test ends,
before the ``swarm`` fixture cleans up, so a daemon never re-creates what the
clean-up removes. On a failing test the daemon's last log lines appear in the
captured output of the teardown.

Waiting is always polling a condition against a generous deadline; nothing
here sleeps a fixed time to assert timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

# A metric sample: its name as exposed (``swarmkeeper_reconcile_total``) and
# its labels as sorted (name, value) pairs.
MetricKey = tuple[str, tuple[tuple[str, str], ...]]

DEFAULT_RESYNC_INTERVAL = 300.0  # only events (or a test's own trigger) explain a pass
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 80


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def metric_key(name: str, **labels: str) -> MetricKey:
    return name, tuple(sorted(labels.items()))


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """A Prometheus exposition as {(sample name, labels): value}."""
    samples: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[metric_key(sample.name, **sample.labels)] = float(sample.value)
    return samples


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> Any:
    """Poll ``condition`` until it returns something truthy; return that.

    Raises AssertionError (a test failure, with ``what``) after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Notification:
    """One datagram from the daemon: when it arrived and its ``KEY=VALUE`` lines."""

    at: float  # time.monotonic() at arrival
    lines: tuple[str, ...]

    def get(self, key: str) -> str | None:
        for line in self.lines:
            name, _, value = line.partition("=")
            if name == key:
                return value
        return None


class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's, read in a thread.

    The socket lives in a short temporary folder of its own: a socket path
    may be at most 107 bytes, and pytest's tmp_path can be longer.
    """

    def __init__(self, on_message: Callable[[Notification], None] | None = None):
        self._folder = tempfile.mkdtemp(prefix="sknotify-")
        self.path = os.path.join(self._folder, "notify.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.settimeout(0.1)
        self._lock = threading.Lock()
        self._messages: list[Notification] = []
        self._on_message = on_message
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._read, name="notify-listener", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            message = Notification(
                time.monotonic(), tuple(data.decode(errors="replace").splitlines())
            )
            if self._on_message is not None:
                self._on_message(message)
            with self._lock:
                self._messages.append(message)

    @property
    def messages(self) -> list[Notification]:
        with self._lock:
            return list(self._messages)

    def with_key(self, key: str, value: str | None = None) -> list[Notification]:
        """Messages carrying ``KEY=...`` (or exactly ``KEY=value``)."""
        return [
            m
            for m in self.messages
            if m.get(key) is not None and (value is None or m.get(key) == value)
        ]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._socket.close()
        shutil.rmtree(self._folder, ignore_errors=True)


@dataclass(frozen=True)
class ReadySnapshot:
    """What was true the moment READY=1 arrived, checked from the reader thread."""

    at: float
    healthz_status: int  # GET /healthz right then (0: no answer)
    log_events: tuple[str, ...]  # the ``event`` of every log line written so far


class DaemonProcess:
    """One ``swarmkeeper run`` process and the ways a test looks at it."""

    def __init__(
        self,
        state_dir: Path | None,
        work_dir: Path,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        resync_interval: float | None = DEFAULT_RESYNC_INTERVAL,
        watchdog_usec: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self.state_dir = state_dir
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_addr = f"127.0.0.1:{self.port}"
        self.base_url = f"http://{self.metrics_addr}"
        self.stdout_path = work_dir / "daemon.stdout"
        self.stderr_path = work_dir / "daemon.stderr"
        self.ready_snapshot: ReadySnapshot | None = None
        self.started_at = 0.0

        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("SWARMKEEPER_")
            and key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        environment["SWARMKEEPER_CONFIG"] = os.devnull
        if resync_interval is not None:
            environment["SWARMKEEPER_RESYNC_INTERVAL"] = f"{resync_interval:g}"
        if watchdog_usec is not None:
            environment["WATCHDOG_USEC"] = str(watchdog_usec)
        environment.update(env or {})

        self.notify = NotifyListener(on_message=self._on_notification)
        environment["NOTIFY_SOCKET"] = self.notify.path
        self.environment = environment
        # No state directory (None): the daemon follows git, whose settings
        # come in ``env``, and its state directory is the cache's stable path.
        where = ["--state-dir", str(state_dir)] if state_dir is not None else []
        self.command = [
            python, "-m", "swarmkeeper", "run",
            *where,
            "--metrics-addr", self.metrics_addr,
            "--log-format", "json",
            *args,
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    # -- life ------------------------------------------------------------------

    def start(self) -> DaemonProcess:
        with (
            self.stdout_path.open("wb") as stdout,
            self.stderr_path.open("wb") as stderr,
        ):
            self.started_at = time.monotonic()
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.environment,
                start_new_session=True,  # a Ctrl-C at the terminal is not for it
            )
        return self

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "the daemon was not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _on_notification(self, message: Notification) -> None:
        """In the reader thread: on READY=1, look at the daemon right away."""
        if message.get("READY") != "1" or self.ready_snapshot is not None:
            return
        status, _ = self.http_get("/healthz", timeout=2)
        self.ready_snapshot = ReadySnapshot(
            at=message.at,
            healthz_status=status,
            log_events=tuple(str(line.get("event")) for line in self.logs()),
        )

    def wait_for(
        self,
        condition: Callable[[], Any],
        *,
        timeout: float,
        what: str,
        interval: float = 0.05,
    ) -> Any:
        """:func:`wait_until`, failing at once (with the log) if the daemon exits."""

        def alive_and(condition: Callable[[], Any] = condition) -> Any:
            if not self.running():
                raise AssertionError(
                    f"the daemon exited with status {self.process.returncode} "
                    f"while the test waited for {what}; its log ends:\n"
                    f"{self.log_tail()}\n{self.stdout_path.read_text(errors='replace')}"
                )
            return condition()

        return wait_until(alive_and, timeout=timeout, what=what, interval=interval)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait for READY=1; return the seconds it took from the start."""
        self.wait_for(
            lambda: self.notify.with_key("READY", "1"),
            timeout=timeout,
            what="READY=1 from the daemon",
        )
        return self.notify.with_key("READY", "1")[0].at - self.started_at

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT
    ) -> tuple[int, float]:
        """Send ``sig`` and wait for the exit: (exit status, seconds taken).

        A daemon that does not exit within ``timeout`` is killed and the
        call fails the test.
        """
        process = self.process
        if process.poll() is not None:
            return process.returncode, 0.0
        started = time.monotonic()
        process.send_signal(sig)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError(
                f"the daemon did not exit within {timeout:g} s of {sig.name}"
            ) from None
        return code, time.monotonic() - started

    def close(self) -> None:
        """Stop the daemon whatever its state (SIGTERM, then SIGKILL); idempotent."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self.notify.close()

    # -- HTTP ------------------------------------------------------------------

    def http_get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """(HTTP status, body); status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()
        except (urllib.error.URLError, OSError):
            return 0, ""

    def metrics_text(self) -> str:
        code, body = self.http_get("/metrics")
        assert code == 200, f"GET /metrics answered {code}"
        return body

    def metrics(self) -> dict[MetricKey, float]:
        """One scrape, parsed: {(sample name, sorted labels): value}."""
        return parse_metrics(self.metrics_text())

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from a fresh scrape; KeyError when it is absent."""
        return self.metrics()[metric_key(name, **labels)]

    def status(self) -> dict[str, Any]:
        code, body = self.http_get("/status")
        assert code == 200, f"GET /status answered {code}: {body}"
        document: dict[str, Any] = json.loads(body)
        return document

    # -- logs ------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (a partial last line is left out)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs() if record.get("event") == event]

    def log_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace") + (
                self.stdout_path.read_text(errors="replace")
            )
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def passes(self, trigger_part: str | None = None) -> list[dict[str, Any]]:
        """``reconcile.finished`` lines, optionally those whose trigger names a part."""
        passes = self.log_events("reconcile.finished")
        if trigger_part is None:
            return passes
        return [
            p for p in passes if trigger_part in str(p.get("trigger", "")).split(",")
        ]


class DaemonFactory:
    """Starts daemons for one test and stops every one of them afterwards."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.started: list[DaemonProcess] = []

    def __call__(
        self,
        state_dir: Path | None,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        resync_interval: float | None = DEFAULT_RESYNC_INTERVAL,
        watchdog_usec: int | None = None,
        wait_ready: bool = True,
    ) -> DaemonProcess:
        daemon = DaemonProcess(
            state_dir,
            self.work_dir / f"daemon{len(self.started)}",
            args=args,
            env=env,
            resync_interval=resync_interval,
            watchdog_usec=watchdog_usec,
        )
        self.started.append(daemon)
        daemon.start()
        if wait_ready:
            daemon.wait_ready()
        return daemon

    def close(self) -> None:
        for daemon in reversed(self.started):
            daemon.close()
            print(f"--- daemon {daemon.pid} log tail ({daemon.stderr_path}) ---")
            print(daemon.log_tail())


MANAGED_LABEL = "swarmkeeper.managed"
MANAGED_NODE_LABELS = "swarmkeeper.managed-labels"


def foreign_owned(client: Any, prefix: str) -> list[str]:
    """What swarmkeeper owns on the swarm that the test of ``prefix`` did not make.

    A daemon works on the whole swarm: an owned object outside its desired
    state is drift to it (a removal candidate), and node label keys recorded
    as managed by someone else are removed. So a test's daemon needs a swarm
    where swarmkeeper owns nothing but that test's objects.
    """
    api = client.api
    managed = {"label": f"{MANAGED_LABEL}=true"}
    found = [f"service {s['Spec']['Name']}" for s in api.services(filters=managed)]
    found += [f"network {n['Name']}" for n in api.networks(filters=managed)]
    found += [f"config {c['Spec']['Name']}" for c in api.configs(filters=managed)]
    found += [f"secret {s['Spec']['Name']}" for s in api.secrets(filters=managed)]
    found = [item for item in found if not item.split(" ", 1)[1].startswith(prefix)]
    found += [
        f"node {n['Description']['Hostname']} (labels managed elsewhere)"
        for n in api.nodes()
        if MANAGED_NODE_LABELS in (n["Spec"].get("Labels") or {})
    ]
    return found


def require_swarm_to_ourselves(client: Any, prefix: str, timeout: float = 60.0) -> None:
    """Wait until swarmkeeper owns nothing but this test's; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while found := foreign_owned(client, prefix):
        if time.monotonic() > deadline:
            listed = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
            pytest.fail(
                "the swarm holds objects swarmkeeper owns that this test did not "
                f"make ({listed}); a daemon is swarm-wide and would act on them: "
                "run these tests on a swarm of their own",
                pytrace=False,
            )
        time.sleep(1)


@pytest.fixture(name="daemons")
def daemons_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[DaemonFactory]:
    """A factory of daemons for this test; each is stopped when the test ends."""
    if "swarm" in request.fixturenames:
        # Set the test bed up first, so that its clean-up runs after every
        # daemon has stopped (a running daemon would re-create what it removes).
        bed = request.getfixturevalue("swarm")
        require_swarm_to_ourselves(bed.client, bed.prefix)
    factory = DaemonFactory(tmp_path / "daemons")
    try:
        yield factory
    finally:
        factory.close()
