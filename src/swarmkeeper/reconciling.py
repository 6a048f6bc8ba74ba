"""One reconcile pass, and what the daemon remembers between passes.

A pass is level-based: it reads the whole live state again, plans against
the last desired state that loaded, writes what the plan calls for (when
this instance may write), and records the outcome in metrics, one log line
and the status document. Whatever triggered it (an event, a file change, the
timer) only said "look again"; its own writes come back as events and end in
a pass that finds nothing to do.

Leadership: only the instance on the swarm's leader writes. A pass takes it
from the state it reads, asks the engine once more right before its first
write (a pass can take a while, and an election can happen meanwhile), and
before each write looks at the flag the daemon's leadership poll keeps
current, so an instance that loses leadership stops writing at once. A write
that still races a change of leader carries the version it was computed from
and is refused by the engine (out of sequence), or by Raft on the old leader
(no quorum); either is a failed write, reported and retried later with
back-off by the daemon, never at once.

Fights: when something else keeps changing an object back, correcting it
on every event would thrash. After ``FIGHT_LIMIT`` corrections of one object
within ``FIGHT_WINDOW`` seconds, the object is held for a back-off that
doubles with each further fight (capped), and the fight is reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from swarmkeeper.desired import STACK_NAMESPACE_LABEL, DesiredState
from swarmkeeper.engine import Engine, EngineError, SwarmUnavailable
from swarmkeeper.live import (
    Leadership,
    LiveState,
    is_owned,
    read_leadership,
    read_live_state,
)
from swarmkeeper.logs import get_logger
from swarmkeeper.metrics import Metrics
from swarmkeeper.planning import (
    HELD,
    REMOVE,
    Change,
    Plan,
    PlanOptions,
    make_plan,
    update_state,
)

log = get_logger("swarmkeeper.reconciling")

FIGHT_LIMIT = 3
FIGHT_WINDOW = 60.0
FIGHT_BACKOFF = 5.0
FIGHT_BACKOFF_MAX = 600.0
# A contest is forgotten (its back-off starts again at FIGHT_BACKOFF) only
# after this long without a correction: a fight that pauses is still a fight.
FIGHT_MEMORY = 600.0


@dataclass
class _Contest:
    # When each field path (or "created", for an object made again) was last
    # corrected: a fight is the same field changed back again and again, not
    # three unrelated drifts of one object.
    corrections: dict[str, list[float]] = field(default_factory=dict)
    fights: int = 0
    held_until: float = 0.0
    last_correction: float = 0.0


class FightTracker:
    """Per object: recent corrections, and a back-off once it is contested."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._contests: dict[tuple[str, str], _Contest] = {}

    def held(self, kind: str, name: str) -> float:
        """Seconds the object is still held for, 0 when it may be corrected."""
        contest = self._contests.get((kind, name))
        return max(0.0, contest.held_until - self._clock()) if contest else 0.0

    def corrected(
        self, kind: str, name: str, paths: Iterable[str] = ("created",)
    ) -> bool:
        """Record one correction of ``paths``; True when this makes it a fight."""
        now = self._clock()
        contest = self._contests.setdefault((kind, name), _Contest())
        contest.last_correction = now
        contested = False
        for path in paths:
            times = [
                t for t in contest.corrections.get(path, []) if now - t < FIGHT_WINDOW
            ]
            times.append(now)
            contest.corrections[path] = times
            contested = contested or len(times) >= FIGHT_LIMIT
        if not contested:
            return False
        backoff = min(FIGHT_BACKOFF * 2**contest.fights, FIGHT_BACKOFF_MAX)
        contest.fights += 1
        contest.held_until = now + backoff
        contest.corrections.clear()
        return True

    def settled(self, kind: str, name: str) -> None:
        """The object matched in a pass: forget it once quiet for FIGHT_MEMORY."""
        contest = self._contests.get((kind, name))
        now = self._clock()
        if (
            contest
            and now >= contest.held_until
            and now - contest.last_correction >= FIGHT_MEMORY
        ):
            del self._contests[(kind, name)]

    def next_release(self) -> float | None:
        """Seconds until the next held object may be corrected again, if any."""
        now = self._clock()
        waits = [
            c.held_until - now for c in self._contests.values() if c.held_until > now
        ]
        return min(waits) if waits else None


@dataclass
class PassResult:
    outcome: str  # "success", "failure" (nothing could be done), "partial"
    plan: Plan | None = None
    writes: int = 0
    failures: int = 0
    error: str | None = None
    skipped: int = 0  # writes left out because leadership was lost


class Reconciler:
    """Runs passes; holds the last good desired state and the status document."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        mode: str = "enforce",
        fights: FightTracker | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.mode = mode
        self.fights = fights or FightTracker()
        self.desired: DesiredState | None = None
        self.desired_valid = False
        self.revision: str | None = None
        self.engine_connected = False
        # May write: leader with a quorum in view. Set by passes and by the
        # daemon's leadership poll (observe_leadership), read before writes.
        self.is_leader = False
        self.quorum: bool | None = None  # None until first known
        self.swarm_problem: str | None = None
        # The managed services of the last pass by ID, each with its entry in
        # status["objects"], for refresh_health between passes.
        self._health_view: dict[str, dict[str, Any]] = {}
        # This engine's swarm node, from the last reading that named it: with
        # it a pass's read skips /info (see read_live_state).
        self.node_id: str | None = None
        self.status: dict[str, Any] = {"objects": [], "last_pass": None}
        # The revision the last writing pass converged to: the first pass of
        # a new revision carries out a change request, it corrects no drift.
        self._written_revision: str | None = None

    def observe_leadership(self, leadership: Leadership) -> bool:
        """Take a fresh reading of leadership and quorum; True when either changed.

        Losing leadership takes effect here, at once: writes in flight check
        ``is_leader`` before each write. Transitions are logged once.
        """
        may_write = leadership.may_write
        changed = may_write != self.is_leader or leadership.quorum != self.quorum
        if leadership.quorum and self.quorum is False and self.swarm_problem:
            log.info("swarm.quorum_regained", node=leadership.node_id)
        elif not leadership.quorum and self.quorum and leadership.problem:
            # (An engine that does not answer is logged as that, elsewhere.)
            log.warning(
                "swarm.quorum_lost", node=leadership.node_id, problem=leadership.problem
            )
        if may_write != self.is_leader:
            log.info(
                "leadership.gained" if may_write else "leadership.lost",
                node=leadership.node_id,
                problem=leadership.problem,
            )
        self.is_leader = may_write
        self.quorum = leadership.quorum
        if leadership.node_id:
            self.node_id = leadership.node_id
        self.swarm_problem = None if leadership.quorum else leadership.problem
        self.metrics.leader.set(1 if may_write else 0)
        self.metrics.swarm_quorum.set(1 if leadership.quorum else 0)
        self.status["leader"] = may_write
        self.status["quorum"] = leadership.quorum
        return changed

    def set_desired(
        self, desired: DesiredState | None, *, valid: bool, revision: str | None
    ) -> None:
        """A new load result; an invalid one keeps the last good state in use."""
        self.desired_valid = valid
        self.metrics.desired_valid.set(1 if valid else 0)
        if valid and desired is not None:
            self.desired = desired
            self.revision = revision
            if revision:
                self.metrics.set_revision(revision)
            self.metrics.set_stacks(set(desired.stacks))

    async def reconcile(self, trigger: str) -> PassResult:
        # Every line logged during the pass (its writes included) names the
        # revision being converged.
        with structlog.contextvars.bound_contextvars(revision=self.revision):
            return await self._reconcile(trigger)

    async def _reconcile(self, trigger: str) -> PassResult:
        started = time.monotonic()
        cpu_started = time.thread_time()
        result = await self._pass()
        duration = time.monotonic() - started
        cpu = time.thread_time() - cpu_started

        self.metrics.reconcile_duration.observe(duration)
        self.metrics.reconcile_cpu.observe(cpu)
        self.metrics.reconciles.labels(result=result.outcome).inc()
        if result.outcome == "success":
            self.metrics.last_success.set(time.time())
        counts = result.plan.counts() if result.plan else {}
        log.info(
            "reconcile.finished",
            trigger=trigger,
            outcome=result.outcome,
            duration_ms=round(duration * 1000, 1),
            cpu_ms=round(cpu * 1000, 1),
            leader=self.is_leader,
            mode=self.mode,
            writes=result.writes,
            failures=result.failures,
            skipped=result.skipped,
            changes=counts,
            error=result.error,
        )
        self.status["last_pass"] = {
            "trigger": trigger,
            "outcome": result.outcome,
            "duration_seconds": round(duration, 4),
            "cpu_seconds": round(cpu, 4),
            "finished_at": time.time(),
            "writes": result.writes,
            "error": result.error,
        }
        return result

    async def _pass(self) -> PassResult:
        from swarmkeeper.applying import apply_plan

        try:
            # One round trip, not two: the task list does not depend on the
            # rest, and a pass's wall time is mostly waiting on the engine.
            # Both are awaited to the end (no read left running unobserved);
            # the live state's error, if any, is the one reported.
            live_read, tasks_read = await asyncio.gather(
                read_live_state(self.engine, node_id=self.node_id),
                self.engine.list_tasks(desired_state="running"),
                return_exceptions=True,
            )
            for answer in (live_read, tasks_read):
                if isinstance(answer, BaseException):
                    raise answer
            assert not isinstance(live_read, BaseException)
            assert not isinstance(tasks_read, BaseException)
            live, tasks = live_read, tasks_read
        except EngineError as error:
            # The engine away, or its swarm without a leader from here: either
            # way nothing can be read, and nothing may be written.
            self.engine_connected = False
            self.metrics.engine_connected.set(0)
            self.observe_leadership(_unknown_leadership(error))
            return PassResult("failure", error=str(error))
        self.engine_connected = True
        self.metrics.engine_connected.set(1)
        self.observe_leadership(
            live.leadership or Leadership(live.node_id, live.is_leader, quorum=True)
        )

        if self.desired is None:
            return PassResult("failure", error="no desired state has loaded yet")

        plan = make_plan(self.desired, live, PlanOptions(now=time.time()))
        if not self.desired_valid:
            plan = _without_removals(plan, "the desired state on disk does not load")
        plan = self._hold_fights(plan)
        self._record(plan, live, tasks)

        if (
            self.mode != "enforce"
            or not live.is_leader
            or not any(c.writes for c in plan.changes)
        ):
            return PassResult("success", plan=plan)

        # Reading and planning took a moment: ask again, right before writing.
        if not await self._still_leader():
            return PassResult("success", plan=plan)

        outcome = await apply_plan(
            self.engine,
            plan,
            self.desired,
            live,
            may_write=lambda: self.is_leader,
            revision=self.revision,
        )
        new_revision = self.revision != self._written_revision
        self._written_revision = self.revision
        if outcome.swarm_unavailable:
            # Raft refused a write for want of a leader: this node cannot
            # write now, whatever it last read about itself.
            self.observe_leadership(
                Leadership(
                    live.node_id,
                    leader=False,
                    quorum=False,
                    problem="a write was refused: the swarm has no leader here",
                )
            )
        failed = {(change.kind, change.name) for change, _ in outcome.failures}
        for change in plan.changes:
            if not change.writes or (change.kind, change.name) in outcome.skipped:
                continue
            ok = (change.kind, change.name) not in failed
            self.metrics.actions.labels(
                kind=change.kind,
                action=change.action,
                result="success" if ok else "failure",
            ).inc()
            if (
                ok
                and not new_revision
                and change.action in ("update", "create")
                and self.fights.corrected(
                    change.kind,
                    change.name,
                    [f.path for f in change.fields] or ["created"],
                )
            ):
                self.metrics.fights.labels(kind=change.kind).inc()
                log.warning(
                    "fight.detected",
                    kind=change.kind,
                    object=change.name,
                    held_seconds=round(self.fights.held(change.kind, change.name), 1),
                )
        return PassResult(
            "partial" if outcome.failures else "success",
            plan=plan,
            writes=outcome.writes,
            failures=len(outcome.failures),
            skipped=len(outcome.skipped),
        )

    async def _still_leader(self) -> bool:
        """A fresh leadership reading from the engine, taken in; True to write."""
        try:
            leadership = await read_leadership(self.engine)
        except EngineError as error:
            leadership = _unknown_leadership(error)
        self.observe_leadership(leadership)
        if not leadership.may_write:
            log.warning(
                "write.skipped",
                reason="leadership lost before writing",
                problem=leadership.problem,
            )
        return leadership.may_write

    def _hold_fights(self, plan: Plan) -> Plan:
        changes = []
        for change in plan.changes:
            held = self.fights.held(change.kind, change.name) if change.writes else 0.0
            if held:
                change = Change(
                    change.kind,
                    change.name,
                    HELD,
                    fields=change.fields,
                    reason="something else keeps changing it back; "
                    f"held {held:.0f} s more",
                    live=change.live,
                )
            changes.append(change)
        return Plan(tuple(changes), plan.notes, plan.prune_refused)

    def refresh_health(self, tasks: list[dict[str, Any]]) -> None:
        """Count running tasks again for the services the last pass saw.

        Tasks start, fail and move without any event this daemon watches, so
        between passes the health in ``/status`` and
        ``swarmkeeper_stack_unhealthy_services`` is refreshed from a fresh
        task list alone; specs and update states still come from the last
        pass (a change to those is a service event, and runs a pass).
        """
        running = _running_by_service(tasks)
        stacks_unhealthy: dict[str, int] = {}
        for service_id, item in self._health_view.items():
            have = running.get(service_id, 0)
            unhealthy = _unhealthy(item["desired"], have, item["update_state"])
            item["running"] = have
            item["health"] = "unhealthy" if unhealthy else "healthy"
            if unhealthy:
                stack = item["stack"]
                stacks_unhealthy[stack] = stacks_unhealthy.get(stack, 0) + 1
        if self.desired is not None:
            for stack in self.desired.stacks:
                self.metrics.stack_unhealthy.labels(stack=stack).set(
                    stacks_unhealthy.get(stack, 0)
                )

    def _record(self, plan: Plan, live: LiveState, tasks: list[dict[str, Any]]) -> None:
        """Metrics and the status document for this pass's view of the swarm."""
        from swarmkeeper.metrics import KINDS

        drifted: dict[str, int] = dict.fromkeys(KINDS, 0)
        changed = {(c.kind, c.name): c for c in plan.changes}
        for change in plan.changes:
            drifted[change.kind] = drifted.get(change.kind, 0) + 1
        for kind, count in drifted.items():
            self.metrics.drift.labels(kind=kind).set(count)
        for kind, refused in plan.prune_refused.items():
            if refused:
                self.metrics.prune_refused.labels(kind=kind).inc()

        running = _running_by_service(tasks)

        managed = {
            "service": [
                s for s in live.services.values() if is_owned(s["Spec"].get("Labels"))
            ],
            "config": [
                c for c in live.configs.values() if is_owned(c["Spec"].get("Labels"))
            ],
            "secret": [
                s for s in live.secrets.values() if is_owned(s["Spec"].get("Labels"))
            ],
            "network": [n for n in live.networks.values() if is_owned(n.get("Labels"))],
        }
        for kind, objects in managed.items():
            self.metrics.managed.labels(kind=kind).set(len(objects))

        stacks_drifted: dict[str, int] = {}
        stacks_unhealthy: dict[str, int] = {}
        objects = []
        health_view: dict[str, dict[str, Any]] = {}
        for service in managed["service"]:
            spec = service["Spec"]
            name = spec["Name"]
            stack = (spec.get("Labels") or {}).get(STACK_NAMESPACE_LABEL, "")
            wanted = _wanted_replicas(service)
            have = running.get(service["ID"], 0)
            state = update_state(service)
            unhealthy = _unhealthy(wanted, have, state)
            found = changed.get(("service", name))
            sync = "in-sync" if found is None else found.action
            if found is not None:
                stacks_drifted[stack] = stacks_drifted.get(stack, 0) + 1
            if unhealthy:
                stacks_unhealthy[stack] = stacks_unhealthy.get(stack, 0) + 1
            entry = {
                "kind": "service",
                "name": name,
                "stack": stack,
                "sync": sync,
                "health": "unhealthy" if unhealthy else "healthy",
                "running": have,
                "desired": wanted,
                "update_state": state,
            }
            objects.append(entry)
            health_view[service["ID"]] = entry
        for kind in ("network", "config", "secret"):
            for item in managed[kind]:
                name = item.get("Name") or item["Spec"]["Name"]
                found = changed.get((kind, name))
                objects.append(
                    {
                        "kind": kind,
                        "name": name,
                        "sync": "in-sync" if found is None else found.action,
                    }
                )
        for change in plan.changes:
            if change.kind in (
                "service",
                "network",
                "config",
                "secret",
                "node",
            ) and not any(
                o["kind"] == change.kind and o["name"] == change.name for o in objects
            ):
                objects.append(
                    {
                        "kind": change.kind,
                        "name": change.name,
                        "sync": change.action,
                        "reason": change.reason,
                    }
                )

        if self.desired is not None:
            for stack in self.desired.stacks:
                self.metrics.stack_drifted.labels(stack=stack).set(
                    stacks_drifted.get(stack, 0)
                )
                self.metrics.stack_unhealthy.labels(stack=stack).set(
                    stacks_unhealthy.get(stack, 0)
                )
        for item in objects:
            if item["sync"] == "in-sync":
                self.fights.settled(item["kind"], item["name"])

        self.status["objects"] = sorted(objects, key=lambda o: (o["kind"], o["name"]))
        self._health_view = health_view
        self.status["revision"] = self.revision
        self.status["leader"] = self.is_leader
        self.status["quorum"] = self.quorum
        self.status["mode"] = self.mode
        self.status["desired_state_valid"] = self.desired_valid


def _running_by_service(tasks: list[dict[str, Any]]) -> dict[str, int]:
    """Running tasks per service ID."""
    running: dict[str, int] = {}
    for task in tasks:
        if (task.get("Status") or {}).get("State") == "running":
            service_id = task.get("ServiceID", "")
            running[service_id] = running.get(service_id, 0) + 1
    return running


def _wanted_replicas(service: dict[str, Any]) -> int | None:
    """Replicas a replicated service asks for; None for a global one."""
    spec = service["Spec"]
    wanted: int | None = ((spec.get("Mode") or {}).get("Replicated") or {}).get(
        "Replicas"
    )
    return wanted


def _unhealthy(wanted: int | None, have: int, update: str | None) -> bool:
    """Fewer tasks running than asked for, or an update stopped or rolled back."""
    return (wanted is not None and have < wanted) or update in (
        "paused",
        "rollback_started",
        "rollback_paused",
        "rollback_completed",
    )


def _unknown_leadership(error: EngineError) -> Leadership:
    """No reading: not leader, no quorum; a swarm problem only if the swarm said so."""
    problem = str(error) if isinstance(error, SwarmUnavailable) else None
    return Leadership("", leader=False, quorum=False, problem=problem)


def _without_removals(plan: Plan, reason: str) -> Plan:
    changes = tuple(
        Change(c.kind, c.name, HELD, reason=reason, live=c.live)
        if c.action == REMOVE
        else c
        for c in plan.changes
    )
    return Plan(changes, plan.notes, plan.prune_refused)
