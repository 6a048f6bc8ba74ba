"""The daemon's Prometheus metrics. Their names and labels are a contract.

Dashboards and alerts depend on them, so they change only with care. Labels
stay bounded: object kinds, actions, results, event types and the stack names
of the desired state; never task or container IDs. Every label combination
that can occur is created at 0 up front, so ``rate()`` and absence alerts work
from the first scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from swarmkeeper import __version__

KINDS = ("service", "network", "config", "secret", "node")
ACTIONS = ("create", "update", "adopt", "recreate", "remove", "record-failure")
RESULTS = ("success", "failure")
RECONCILE_RESULTS = ("success", "failure", "partial")
EVENT_TYPES = ("service", "network", "node", "config", "secret")
# accepted: a fetch was asked for; unauthorized: no valid signature or token;
# too-large: the body was over the cap.
WEBHOOK_RESULTS = ("accepted", "unauthorized", "too-large")


class Metrics:
    """One registry per daemon (and per test), holding every metric."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry

        self.build_info = Gauge(
            "swarmkeeper_build_info", "swarmkeeper's version", ["version"], registry=r
        )
        self.leader = Gauge(
            "swarmkeeper_leader",
            "1 when this instance runs on the swarm's leader and may write",
            registry=r,
        )
        self.engine_connected = Gauge(
            "swarmkeeper_engine_connected",
            "1 when the last engine call succeeded",
            registry=r,
        )
        self.swarm_quorum = Gauge(
            "swarmkeeper_swarm_quorum",
            "1 when this instance's manager reaches a swarm leader and sees a "
            "majority of the managers; 0 when cut off, without quorum or "
            "without an engine",
            registry=r,
        )
        self.reconciles = Counter(
            "swarmkeeper_reconcile",
            "Reconcile passes by result",
            ["result"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "swarmkeeper_reconcile_duration_seconds",
            "Time of one reconcile pass: read, compare, write",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        # CPU time, beside the wall time above: a pass mostly waits on the
        # engine, so only this says what a pass costs the machine. It is the
        # event loop thread's time, which includes the little work of other
        # tasks (the HTTP server, the event watcher) interleaved with the pass.
        self.reconcile_cpu = Histogram(
            "swarmkeeper_reconcile_cpu_seconds",
            "CPU time of the daemon's event loop thread during one reconcile pass",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.last_success = Gauge(
            "swarmkeeper_last_reconcile_success_timestamp_seconds",
            "When the last reconcile pass succeeded",
            registry=r,
        )
        self.drift = Gauge(
            "swarmkeeper_drift_resources",
            "Objects that differ from the desired state, by kind",
            ["kind"],
            registry=r,
        )
        self.managed = Gauge(
            "swarmkeeper_managed_resources",
            "Objects swarmkeeper manages, by kind",
            ["kind"],
            registry=r,
        )
        self.actions = Counter(
            "swarmkeeper_actions",
            "Writes to the swarm, by kind, action and result",
            ["kind", "action", "result"],
            registry=r,
        )
        self.events = Counter(
            "swarmkeeper_docker_events",
            "Engine events received, by type",
            ["type"],
            registry=r,
        )
        self.desired_valid = Gauge(
            "swarmkeeper_desired_state_valid",
            "1 when the desired state on disk loads; 0 while it does not",
            registry=r,
        )
        self.desired_info = Gauge(
            "swarmkeeper_desired_state_info",
            "The desired-state revision being converged (value 1)",
            ["revision"],
            registry=r,
        )
        self.fights = Counter(
            "swarmkeeper_fights",
            "Objects found fighting: changed back again and again by someone else",
            ["kind"],
            registry=r,
        )
        self.prune_refused = Counter(
            "swarmkeeper_prune_refused",
            "Reconcile passes in which a prune guard held removals back, by kind",
            ["kind"],
            registry=r,
        )
        self.stack_drifted = Gauge(
            "swarmkeeper_stack_drifted_services",
            "Services of a stack that differ from the desired state",
            ["stack"],
            registry=r,
        )
        self.stack_unhealthy = Gauge(
            "swarmkeeper_stack_unhealthy_services",
            "Services of a stack short of running tasks, or with a failed update",
            ["stack"],
            registry=r,
        )

        self.build_info.labels(version=__version__).set(1)
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result=result)
        for kind in KINDS:
            self.drift.labels(kind=kind)
            self.managed.labels(kind=kind)
            self.fights.labels(kind=kind)
            self.prune_refused.labels(kind=kind)
            for action in ACTIONS:
                for result in RESULTS:
                    self.actions.labels(kind=kind, action=action, result=result)
        for event_type in EVENT_TYPES:
            self.events.labels(type=event_type)
        self._stacks: set[str] = set()
        self._revision: str | None = None

    def enable_git(self) -> None:
        """The git source's series; only a daemon that follows a branch has them."""
        from swarmkeeper.gitsource import REASONS

        r = self.registry
        self.git_sync_errors = Counter(
            "swarmkeeper_git_sync_errors",
            "Git syncs that failed, by reason; the last good revision stays",
            ["reason"],
            registry=r,
        )
        self.git_last_sync = Gauge(
            "swarmkeeper_git_last_sync_timestamp_seconds",
            "When the git remote last answered a fetch",
            registry=r,
        )
        self.git_sync_ok = Gauge(
            "swarmkeeper_git_sync_ok",
            "1 when the last sync succeeded and the branch head is deployed",
            registry=r,
        )
        self.webhook_requests = Counter(
            "swarmkeeper_git_webhook_requests",
            "Webhook calls, by result",
            ["result"],
            registry=r,
        )
        for reason in REASONS:
            self.git_sync_errors.labels(reason=reason)
        for result in WEBHOOK_RESULTS:
            self.webhook_requests.labels(result=result)

    def set_stacks(self, stacks: set[str]) -> None:
        """Start the per-stack series of new stacks at 0; drop those of gone ones."""
        for stack in self._stacks - stacks:
            self.stack_drifted.remove(stack)
            self.stack_unhealthy.remove(stack)
        for stack in stacks - self._stacks:
            self.stack_drifted.labels(stack=stack).set(0)
            self.stack_unhealthy.labels(stack=stack).set(0)
        self._stacks = set(stacks)

    def set_revision(self, revision: str) -> None:
        if self._revision is not None and self._revision != revision:
            self.desired_info.remove(self._revision)
        self.desired_info.labels(revision=revision).set(1)
        self._revision = revision
