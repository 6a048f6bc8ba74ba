"""``swarmkeeper run``: the daemon that watches and converges.

One task group owns everything: the reconcile loop, the engine event
watcher, the desired-state file watcher, the resync timer, the leadership
poll and the systemd watchdog. Triggers only mark the state dirty; the loop
coalesces a burst of them into one pass, and passes never overlap.

Several managers each run an instance; the swarm's own Raft election decides
which one writes. The leadership poll reads this node's standing every
``LEADERSHIP_POLL`` seconds (an election may come with no event at all) and
runs a pass at once when it changes: a new leader converges within seconds,
an old one stops writing before its next write. A pass whose writes failed
(the swarm lost its leader under it, a version race lost five times) is
retried after a growing pause, never at once.

Start-up: the HTTP endpoints come up and the desired state is loaded, then
systemd hears READY=1, without waiting for the engine (an engine that is
down at boot must not get swarmkeeper killed). Shutdown on SIGTERM or
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
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

from swarmkeeper.engine import Engine, EngineError
from swarmkeeper.live import read_leadership
from swarmkeeper.logs import get_logger
from swarmkeeper.metrics import EVENT_TYPES, Metrics
from swarmkeeper.notify import Notifier
from swarmkeeper.reconciling import PassResult, Reconciler
from swarmkeeper.serving import STALL_SECONDS, Probes, make_app

if TYPE_CHECKING:
    from swarmkeeper.settings import Settings

log = get_logger("swarmkeeper.running")

COALESCE_SECONDS = 0.02  # let a burst of events arrive before reading
STOP_GRACE = 8.0  # seconds the pass in flight may take to finish on SIGTERM
LEADERSHIP_POLL = 2.0  # seconds; the takeover after an election waits up to this
FILE_SETTLE_MS = 300  # a change to the desired state counts once writes stop
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # engine outage back-off, seconds
WRITE_RETRY_MIN = 2.0  # failed writes: first pause, doubling up to RETRY_MAX
# A pass waiting on an engine call is alive while the call is within its
# deadline; this much past it, the loop counts as stuck (/healthz says so).
CALL_STALL_MARGIN = 5.0


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
        self._write_retry_delay = WRITE_RETRY_MIN

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
                result = await self._beating(self.reconciler.reconcile(reasons))
                self.probes.beat()
                self._publish()
                self._after_pass(result)
                self._wake_for_holds()
        finally:
            self.loop_done.set()

    async def _beating(self, work: Awaitable[PassResult]) -> PassResult:
        """Await a pass, beating while it waits on engine calls within their deadline.

        A write to a manager that is losing its quorum can hang until the
        engine gives up on it (about 18 s here) or until ``engine_timeout``:
        that is a slow engine, not a stuck daemon, and /healthz and the
        systemd watchdog must not restart it for that.
        """
        task = asyncio.ensure_future(work)
        limit = self.engine.call_timeout + CALL_STALL_MARGIN
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if done:
                    return task.result()
                if self.engine.oldest_call_age() < limit:
                    self.probes.beat()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _publish(self) -> None:
        """Copy what the probes say of the engine and swarm from the reconciler."""
        self.probes.engine_connected = self.reconciler.engine_connected
        self.probes.swarm_problem = self.reconciler.swarm_problem

    def _wake_for_holds(self) -> None:
        """Look again when a held (fighting) object may be corrected again."""
        release = self.reconciler.fights.next_release()
        if release is None:
            return
        if self._hold_wake is not None:
            self._hold_wake.cancel()
        loop = asyncio.get_running_loop()
        self._hold_wake = loop.call_later(release + 0.05, self.trigger, "hold-ended")

    def _after_pass(self, result: PassResult) -> None:
        if self.reconciler.engine_connected and not result.failures:
            self._retry_delay = RETRY_MIN
            self._write_retry_delay = WRITE_RETRY_MIN
            role = "leader" if self.reconciler.is_leader else "follower"
            self.notifier.status(
                f"{result.outcome}; {role}; revision {self.reconciler.revision}"
            )
            return

        if self.reconciler.engine_connected:
            # Some writes failed: try again later, not in a tight loop (a
            # failed write sends no event that would end it either).
            delay = self._jittered("_write_retry_delay")
            self.notifier.status(
                f"{result.failures} writes failed; retrying in {delay:.1f} s"
            )
            log.warning(
                "reconcile.retrying", retry_in=round(delay, 2), failures=result.failures
            )
        elif self.reconciler.swarm_problem and not self.reconciler.quorum:
            # The engine answers, its swarm does not: cut off or no quorum.
            # The leadership poll runs a pass as soon as that ends.
            delay = self._jittered("_retry_delay")
            self.notifier.status(f"swarm unavailable; retrying in {delay:.1f} s")
            log.warning(
                "swarm.unavailable", retry_in=round(delay, 2), error=result.error
            )
        else:
            # The engine is away: look again after a growing, jittered pause.
            delay = self._jittered("_retry_delay")
            self.notifier.status(f"engine unreachable; retrying in {delay:.1f} s")
            log.warning(
                "engine.unreachable", retry_in=round(delay, 2), error=result.error
            )
        self._schedule_retry(delay)

    def _jittered(self, attribute: str) -> float:
        """The next pause of the back-off kept in ``attribute``, which then doubles."""
        base: float = getattr(self, attribute)
        setattr(self, attribute, min(base * 2, RETRY_MAX))
        return base * (0.5 + random.random())  # jitter, not crypto

    def _schedule_retry(self, delay: float | None) -> None:
        """A pass after ``delay`` seconds (None: cancel the pending one)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if delay is not None:
            loop = asyncio.get_running_loop()
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
        """An election may emit no event: look at our own node every few seconds.

        A change of leadership or quorum takes effect at once (an instance
        that lost leadership skips its remaining writes) and runs a pass now,
        whatever back-off was pending: a new leader resyncs and converges, a
        swarm that regained its quorum is read again.
        """
        while True:
            await asyncio.sleep(LEADERSHIP_POLL)
            try:
                leadership = await read_leadership(self.engine)
            except EngineError:
                continue  # the engine is away: the passes report and retry that
            if self.reconciler.observe_leadership(leadership):
                self._publish()
                self._retry_delay = RETRY_MIN
                self._write_retry_delay = WRITE_RETRY_MIN
                self._schedule_retry(None)
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
            notifier.ready(f"desired state revision {reconciler.revision}")
            log.info(
                "daemon.started", mode=settings.mode, state_dir=str(settings.state_dir)
            )
            daemon.trigger("start")
            await daemon.run()
    finally:
        await runner.cleanup()
    log.info("daemon.stopped")
    return 0
