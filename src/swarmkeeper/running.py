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

Start-up: the HTTP endpoints come up, the git source (if any) is fetched,
the desired state is loaded and the first reconcile pass runs; systemd hears
READY=1 once that pass has finished, whatever its outcome. A pass that finds
the engine unreachable has finished too, so an engine that is down at boot
delays READY=1 by at most one engine timeout and never gets swarmkeeper
killed. Shutdown on SIGTERM or
SIGINT: no new pass starts, the pass in flight may finish its writes for up
to ``STOP_GRACE`` seconds, then everything is cancelled. SIGHUP reloads the
desired state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmkeeper.engine import Engine, EngineError
from swarmkeeper.live import read_leadership
from swarmkeeper.logs import get_logger
from swarmkeeper.metrics import EVENT_TYPES, Metrics
from swarmkeeper.notify import Notifier
from swarmkeeper.reconciling import PassResult, Reconciler
from swarmkeeper.revisions import revision_of, state_revision
from swarmkeeper.serving import STALL_SECONDS, Probes, make_app, make_webhook_app

if TYPE_CHECKING:
    from swarmkeeper.gitsource import GitSource
    from swarmkeeper.settings import Settings

log = get_logger("swarmkeeper.running")

COALESCE_SECONDS = 0.02  # let a burst of events arrive before reading
STOP_GRACE = 8.0  # seconds the pass in flight may take to finish on SIGTERM
LEADERSHIP_POLL = 2.0  # seconds; the takeover after an election waits up to this
# Seconds between task counts for /status health and the unhealthy-services
# metric (tasks change without events); one cheap filtered list each time.
HEALTH_POLL = 5.0
FILE_SETTLE_MS = 300  # a change to the desired state counts once writes stop
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # engine outage back-off, seconds
WRITE_RETRY_MIN = 2.0  # failed writes: first pause, doubling up to RETRY_MAX
# A plan waiting on the engine (a removed network this node still lists) is
# looked at again every WAITING_POLL seconds for WAITING_PATIENCE seconds,
# then after pauses doubling up to RETRY_MAX. The wait is usually a task's
# stop grace period (10 s by default), and the local network's end sends no
# event this daemon subscribes to.
WAITING_POLL, WAITING_PATIENCE = 1.0, 60.0
# A pass waiting on an engine call is alive while the call is within its
# deadline; this much past it, the loop counts as stuck (/healthz says so).
CALL_STALL_MARGIN = 5.0


class _Stop(Exception):
    """Raised inside the task group to end it after a signal."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        reconciler: Reconciler,
        probes: Probes,
        notifier: Notifier,
        *,
        source: GitSource | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        # Switching the stable path and loading from it never overlap, so a
        # load reads one revision's files only.
        self.desired_lock = asyncio.Lock()
        self.git_wake = asyncio.Event()
        self.git_head_invalid = False  # the branch head does not load
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
        self._waiting_wake: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._waiting_delay = WAITING_POLL
        self._retry_delay = RETRY_MIN
        self._write_retry_delay = WRITE_RETRY_MIN
        self.ready_sent = False

    def trigger(self, reason: str) -> None:
        self.reasons.add(reason)
        self.dirty.set()

    def reload(self, reason: str = "reload") -> None:
        self.reload_wanted = True
        self.trigger(reason)

    def fetch_soon(self) -> None:
        """An early fetch (the webhook); a burst of calls is one fetch."""
        self.git_wake.set()

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
            return state, problems, revision_of(settings.state_dir)

        self.reload_wanted = False
        if self.source is not None and self.source.deployed is None:
            log.warning(
                "desired_state.waiting_for_git",
                url=self.source.status()["url"],
                branch=settings.git_branch,
            )
            return
        async with self.desired_lock:
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
            # A branch head that does not load keeps the state marked invalid
            # (pruning off) even though the deployed tree itself loads.
            valid = not self.git_head_invalid
            self.reconciler.set_desired(state, valid=valid, revision=revision)  # type: ignore[arg-type]
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
                if (
                    "resync" in reasons
                    and not self.reload_wanted
                    and self.source is None
                ):
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
                self._wake_for_waiting(result)
                if not self.ready_sent:
                    # systemd's "started" means "has reconciled once": units
                    # ordered after swarmkeeper see a swarm it has looked at.
                    self.ready_sent = True
                    self.notifier.ready(self._pass_status(result.outcome))
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

    def _wake_for_waiting(self, result: PassResult) -> None:
        """Look again while the plan waits for the engine to let go of a network."""
        if self._waiting_wake is not None:
            self._waiting_wake.cancel()
            self._waiting_wake = None
        loop = asyncio.get_running_loop()
        if result.plan is None or not result.plan.waiting:
            self._waiting_since = None
            self._waiting_delay = WAITING_POLL
            return
        if self._waiting_since is None:
            self._waiting_since = loop.time()
        if loop.time() - self._waiting_since < WAITING_PATIENCE:
            delay = WAITING_POLL
        else:
            delay = self._jittered("_waiting_delay")
        self._waiting_wake = loop.call_later(delay, self.trigger, "waiting")

    def _pass_status(self, outcome: str) -> str:
        """The STATUS= line after a pass: its outcome, our role, the revision."""
        if not self.reconciler.engine_connected:
            return f"{outcome}; engine unreachable; revision {self.reconciler.revision}"
        role = "leader" if self.reconciler.is_leader else "follower"
        return f"{outcome}; {role}; revision {self.reconciler.revision}"

    def _after_pass(self, result: PassResult) -> None:
        if self.reconciler.engine_connected and not result.failures:
            self._retry_delay = RETRY_MIN
            self._write_retry_delay = WRITE_RETRY_MIN
            self.notifier.status(self._pass_status(result.outcome))
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

    # -- git ---------------------------------------------------------------------

    async def follow_git(self) -> None:
        """Fetch every git_interval, or at once when the webhook asks."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.git_wake.wait(), timeout=self.settings.git_interval
                )
            await self.sync_git()

    async def sync_git(self) -> None:
        """One fetch; a new, verified, valid head is switched to and converged."""
        assert self.source is not None
        # Cleared before the fetch: a hook arriving during it asks for one more.
        self.git_wake.clear()
        outcome = await self.source.sync(self._validate_tree)
        error = outcome.error
        was_invalid = self.git_head_invalid
        self.git_head_invalid = error is not None and error.reason == "invalid"
        if outcome.switch_to is not None:
            async with self.desired_lock:
                await self.source.switch(outcome.switch_to)
            self.reload("git")
        elif self.git_head_invalid and not was_invalid:
            self.reconciler.set_desired(None, valid=False, revision=None)
            self.probes.desired_valid = False
        elif was_invalid and not self.git_head_invalid and error is None:
            # The broken head went away (the branch reset to the deployed
            # revision): what is deployed is the head again.
            self.reload("git")

    async def _validate_tree(self, folder: Path) -> list[str]:
        """Load a revision's tree with the normal loader: its located problems."""
        from swarmkeeper.loading.problems import Problems
        from swarmkeeper.loading.statedir import read_desired_state

        settings = self.settings

        def load() -> list[str]:
            import os

            problems = Problems()
            read_desired_state(
                folder,
                secrets_dir=settings.secrets_dir,
                environ=dict(os.environ),
                problems=problems,
            )
            return [str(problem) for problem in problems.errors]

        return await asyncio.to_thread(load)

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

    async def health_poll(self) -> None:
        """Task states change with no event this daemon receives: count them.

        Only health is refreshed (see Reconciler.refresh_health); drift
        still needs a pass, which events, the resync and the other polls run.
        """
        while True:
            await asyncio.sleep(HEALTH_POLL)
            try:
                tasks = await self.engine.list_tasks(desired_state="running")
            except EngineError:
                continue  # the engine is away: the passes report and retry that
            self.reconciler.refresh_health(tasks)

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
                if self.source is None:
                    group.create_task(self.watch_files())
                else:
                    # Revision trees never change; the git loop says when
                    # the state directory points at another one.
                    group.create_task(self.follow_git())
                group.create_task(self.resync_timer())
                group.create_task(self.leadership_poll())
                group.create_task(self.health_poll())
                if self.notifier.watchdog_interval:
                    group.create_task(self.watchdog(self.notifier.watchdog_interval))
                group.create_task(self.stop_when_asked())
        except* _Stop:
            pass
        finally:
            for handle in (self._retry, self._hold_wake, self._waiting_wake):
                if handle is not None:
                    handle.cancel()


async def _listen(sites: list[tuple[str, Any]]) -> list[Any] | None:
    """Serve each (address, aiohttp application); None (all stopped) on failure."""
    from aiohttp import web

    from swarmkeeper.settings import split_listen_address

    runners: list[web.AppRunner] = []
    for address, app in sites:
        host, port = split_listen_address(address)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            print(
                f"swarmkeeper: cannot listen on {address}: {error.strerror}",
                file=sys.stderr,
            )
            for started in runners:
                await started.cleanup()
            return None
        log.info("http.listening", address=address)
    return runners


async def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; 0 then, 2 when the daemon cannot start."""

    metrics = Metrics()
    probes = Probes()
    notifier = Notifier()
    source = None
    if settings.git_url:
        from swarmkeeper.gitsource import GitSource

        metrics.enable_git()
        source = GitSource(settings, metrics)

    daemon: Daemon | None = None

    def on_hook() -> None:
        if daemon is not None:
            daemon.fetch_soon()

    sites = [(settings.metrics_addr, make_app(metrics, probes))]
    if settings.webhook_addr and settings.git_webhook_secret is not None:
        secret = settings.git_webhook_secret.get_secret_value().encode()
        sites.append(
            (settings.webhook_addr, make_webhook_app(secret, on_hook, metrics))
        )
    runners = await _listen(sites)
    if runners is None:
        return 2

    try:
        async with Engine.connect(
            settings.docker_host, call_timeout=settings.engine_timeout
        ) as engine:
            reconciler = Reconciler(engine, metrics, mode=settings.mode)
            daemon = Daemon(
                settings, engine, reconciler, probes, notifier, source=source
            )

            def status() -> dict[str, Any]:
                document = dict(reconciler.status)
                document["git"] = source.status() if source is not None else None
                return document

            probes.status = status

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, daemon.stopping.set)
            loop.add_signal_handler(signal.SIGINT, daemon.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, daemon.reload)

            if source is not None:
                # Fetch first: a cached tree may be older than the branch, and
                # converging it would roll the swarm back for a moment.
                await daemon.sync_git()
                probes.beat()
            await daemon.load_desired_state()
            log.info(
                "daemon.started", mode=settings.mode, state_dir=str(settings.state_dir)
            )
            daemon.trigger("start")
            await daemon.run()
    finally:
        for runner in runners:
            await runner.cleanup()
    log.info("daemon.stopped")
    return 0
