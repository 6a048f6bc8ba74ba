"""``swarmkeeper run``: the daemon that watches and converges.

One task group owns everything: the reconcile loop, the engine event
watcher, the desired-state file watcher, the resync timer, the leadership
poll and the systemd watchdog. Triggers only mark the state dirty; the loop
coalesces a burst of them into one pass, and passes never overlap.

Start-up: the HTTP endpoints come up, the desired state is loaded and the
first reconcile pass runs; systemd hears READY=1 once that pass has
finished, whatever its outcome. A pass that finds the engine unreachable
has finished too, so an engine that is down at boot delays READY=1 by at
most one engine timeout and never gets swarmkeeper killed. Shutdown on SIGTERM or
SIGINT: no new pass starts, the pass in flight may finish its writes for up
to ``STOP_GRACE`` seconds, then everything is cancelled. SIGHUP reloads the
desired state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from swarmkeeper.engine import Engine, EngineError
from swarmkeeper.logs import get_logger
from swarmkeeper.metrics import EVENT_TYPES, Metrics
from swarmkeeper.notify import Notifier
from swarmkeeper.reconciling import Reconciler
from swarmkeeper.serving import STALL_SECONDS, Probes, make_app

if TYPE_CHECKING:
    from swarmkeeper.settings import Settings

log = get_logger("swarmkeeper.running")

COALESCE_SECONDS = 0.02  # let a burst of events arrive before reading
STOP_GRACE = 8.0  # seconds the pass in flight may take to finish on SIGTERM
LEADERSHIP_POLL = 5.0
FILE_SETTLE_MS = 300  # a change to the desired state counts once writes stop
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # engine outage back-off, seconds


class _Stop(Exception):
    """Raised inside the task group to end it after a signal."""


def state_revision(state_dir: Path) -> str:
    """A short content hash of the state directory, naming what is converged.

    (With git, the commit replaces it.) Hidden files are left out, as the
    loader leaves them out.
    """
    digest = hashlib.sha256()
    if state_dir.is_dir():
        for path in sorted(state_dir.rglob("*")):
            relative = path.relative_to(state_dir)
            if any(part.startswith(".") and part != ".env" for part in relative.parts):
                continue
            if path.is_file():
                digest.update(str(relative).encode() + b"\0")
                with contextlib.suppress(OSError):
                    digest.update(path.read_bytes())
    return "dir-" + digest.hexdigest()[:12]


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        reconciler: Reconciler,
        probes: Probes,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.reconciler = reconciler
        self.probes = probes
        self.notifier = notifier
        self.dirty = asyncio.Event()
        self.reasons: set[str] = set()
        self.reload_wanted = True
        self.stopping = asyncio.Event()
        self.loop_done = asyncio.Event()
        self._retry: asyncio.TimerHandle | None = None
        self._hold_wake: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_MIN
        self.ready_sent = False

    def trigger(self, reason: str) -> None:
        self.reasons.add(reason)
        self.dirty.set()

    def reload(self) -> None:
        self.reload_wanted = True
        self.trigger("reload")

    # -- loading -------------------------------------------------------------

    async def load_desired_state(self) -> None:
        """Load in a worker thread; a failure keeps the last good state in use."""
        from swarmkeeper.loading.problems import Problems
        from swarmkeeper.loading.statedir import read_desired_state

        settings = self.settings

        def load() -> tuple[object, Problems, str]:
            import os

            problems = Problems()
            state = read_desired_state(
                settings.state_dir,
                secrets_dir=settings.secrets_dir,
                environ=dict(os.environ),
                problems=problems,
            )
            return state, problems, state_revision(settings.state_dir)

        self.reload_wanted = False
        state, problems, revision = await asyncio.to_thread(load)
        if problems.errors:
            self.reconciler.set_desired(None, valid=False, revision=None)
            log.error(
                "desired_state.invalid",
                problems=[str(p) for p in problems.errors[:20]],
                count=len(problems.errors),
                keeping=self.reconciler.revision,
            )
        else:
            self.reconciler.set_desired(state, valid=True, revision=revision)  # type: ignore[arg-type]
            log.info(
                "desired_state.loaded",
                revision=revision,
                warnings=[str(w) for w in problems.warnings[:20]],
            )
        self.probes.desired_loaded = self.reconciler.desired is not None
        self.probes.desired_valid = self.reconciler.desired_valid

    # -- the tasks -----------------------------------------------------------

    async def reconcile_loop(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    await asyncio.wait_for(self.dirty.wait(), timeout=1.0)
                except TimeoutError:
                    self.probes.beat()
                    continue
                self.probes.beat()
                await asyncio.sleep(COALESCE_SECONDS)
                if self.stopping.is_set():
                    break
                reasons = ",".join(sorted(self.reasons))
                self.reasons.clear()
                self.dirty.clear()
                if "resync" in reasons and not self.reload_wanted:
                    # The file watcher cannot see everything (a symlink
                    # switched to another folder): compare the content.
                    revision = await asyncio.to_thread(
                        state_revision, self.settings.state_dir
                    )
                    self.reload_wanted = revision != self.reconciler.revision
                if self.reload_wanted:
                    await self.load_desired_state()
                result = await self.reconciler.reconcile(reasons)
                self.probes.beat()
                self.probes.engine_connected = self.reconciler.engine_connected
                self._after_pass(result.outcome, result.error)
                self._wake_for_holds()
                if not self.ready_sent:
                    # systemd's "started" means "has reconciled once": units
                    # ordered after swarmkeeper see a swarm it has looked at.
                    self.ready_sent = True
                    self.notifier.ready(self._pass_status(result.outcome))
        finally:
            self.loop_done.set()

    def _wake_for_holds(self) -> None:
        """Look again when a held (fighting) object may be corrected again."""
        release = self.reconciler.fights.next_release()
        if release is None:
            return
        if self._hold_wake is not None:
            self._hold_wake.cancel()
        loop = asyncio.get_running_loop()
        self._hold_wake = loop.call_later(release + 0.05, self.trigger, "hold-ended")

    def _pass_status(self, outcome: str) -> str:
        """The STATUS= line after a pass: its outcome, our role, the revision."""
        if not self.reconciler.engine_connected:
            return f"{outcome}; engine unreachable; revision {self.reconciler.revision}"
        role = "leader" if self.reconciler.is_leader else "follower"
        return f"{outcome}; {role}; revision {self.reconciler.revision}"

    def _after_pass(self, outcome: str, error: str | None) -> None:
        if self.reconciler.engine_connected:
            self._retry_delay = RETRY_MIN
            self.notifier.status(self._pass_status(outcome))
            return
        # The engine is away: look again after a growing, jittered pause.
        delay = self._retry_delay * (0.5 + random.random())  # jitter, not crypto
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self.notifier.status(f"engine unreachable; retrying in {delay:.1f} s")
        log.warning("engine.unreachable", retry_in=round(delay, 2), error=error)
        loop = asyncio.get_running_loop()
        if self._retry is not None:
            self._retry.cancel()
        self._retry = loop.call_later(delay, self.trigger, "retry")

    async def watch_events(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                async with self.engine.event_stream(types=EVENT_TYPES) as events:
                    delay = RETRY_MIN
                    log.info("engine.events.connected")
                    # Anything may have happened while we were not listening.
                    self.trigger("events-connected")
                    async for event in events:
                        kind = str(event.get("Type", ""))
                        if kind in EVENT_TYPES:
                            self.reconciler.metrics.events.labels(type=kind).inc()
                        self.trigger(f"{kind}-event")
                log.warning("engine.events.ended")
            except EngineError as error:
                log.warning(
                    "engine.events.reconnecting",
                    retry_in=round(delay, 2),
                    error=str(error),
                )
            # A lost stream may mean a lost engine: a pass finds out, reports
            # it, and keeps retrying on its own back-off until it returns.
            if delay == RETRY_MIN:
                self.trigger("events-lost")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, RETRY_MAX)

    async def watch_files(self) -> None:
        from watchfiles import awatch

        state_dir = self.settings.state_dir
        while not state_dir.is_dir():  # noqa: ASYNC110 - polling a path, not an event
            await asyncio.sleep(5)  # the folder may appear later (a first checkout)
        async for changes in awatch(
            state_dir,
            debounce=FILE_SETTLE_MS,
            step=50,
            recursive=True,
            ignore_permission_denied=True,
        ):
            log.info("desired_state.changed", files=len(changes))
            self.reload()

    async def resync_timer(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            self.trigger("resync")

    async def leadership_poll(self) -> None:
        """An election may emit no event: look at our own node every few seconds."""
        while True:
            await asyncio.sleep(LEADERSHIP_POLL)
            with contextlib.suppress(EngineError):
                info = await self.engine.info()
                node_id = (info.get("Swarm") or {}).get("NodeID")
                if not node_id:
                    continue
                node = await self.engine.inspect_node(node_id)
                leader = bool((node.get("ManagerStatus") or {}).get("Leader"))
                if leader != self.reconciler.is_leader:
                    log.info("leadership.changed", leader=leader)
                    self.trigger("leadership")

    async def watchdog(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self.probes.heartbeat < STALL_SECONDS:
                self.notifier.watchdog()

    async def stop_when_asked(self) -> None:
        await self.stopping.wait()
        log.info("daemon.stopping")
        self.notifier.stopping()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loop_done.wait(), STOP_GRACE)
        raise _Stop

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.reconcile_loop())
                group.create_task(self.watch_events())
                group.create_task(self.watch_files())
                group.create_task(self.resync_timer())
                group.create_task(self.leadership_poll())
                if self.notifier.watchdog_interval:
                    group.create_task(self.watchdog(self.notifier.watchdog_interval))
                group.create_task(self.stop_when_asked())
        except* _Stop:
            pass
        finally:
            for handle in (self._retry, self._hold_wake):
                if handle is not None:
                    handle.cancel()


async def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; 0 then, 2 when the daemon cannot start."""
    from aiohttp import web

    from swarmkeeper.settings import split_listen_address

    metrics = Metrics()
    probes = Probes()
    notifier = Notifier()
    host, port = split_listen_address(settings.metrics_addr)

    runner = web.AppRunner(make_app(metrics, probes), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        print(
            f"swarmkeeper: cannot listen on {settings.metrics_addr}: {error.strerror}",
            file=sys.stderr,
        )
        await runner.cleanup()
        return 2
    log.info("http.listening", address=settings.metrics_addr)

    try:
        async with Engine.connect(
            settings.docker_host, call_timeout=settings.engine_timeout
        ) as engine:
            reconciler = Reconciler(engine, metrics, mode=settings.mode)
            daemon = Daemon(settings, engine, reconciler, probes, notifier)
            probes.status = lambda: reconciler.status

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, daemon.stopping.set)
            loop.add_signal_handler(signal.SIGINT, daemon.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, daemon.reload)

            await daemon.load_desired_state()
            log.info(
                "daemon.started", mode=settings.mode, state_dir=str(settings.state_dir)
            )
            daemon.trigger("start")
            await daemon.run()
    finally:
        await runner.cleanup()
    log.info("daemon.stopped")
    return 0
