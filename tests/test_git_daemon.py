"""The daemon following a git branch, against the real swarm and real repositories.

Each test makes a bare "remote" on disk and a working clone, commits a small
desired state (services of the test's prefix) under ``cluster/``, and starts
``swarmkeeper run`` with ``SWARMKEEPER_GIT_URL`` pointing at the remote (by
``file://``, or over HTTP on loopback where a network remote's faults are
needed). Outcomes are read from the engine through the Docker SDK and from
the daemon's metrics, status and logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import SwarmTestBed
from daemon_process import (
    DaemonFactory,
    DaemonProcess,
    daemons_fixture,  # noqa: F401 - the ``daemons`` fixture
    free_port,
    metric_key,
    require_swarm_to_ourselves,
)
from gitrepo import GitRemote, dumb_http_server, git, ssh_key, ssh_signing
from test_daemon import (
    replicas,
    scale_service,
    service_spec,
    swarmkeeper_cli,
    wait_converged,
)

pytestmark = pytest.mark.engine

REVISION_LABEL = "swarmkeeper.revision"
ERRORS = "swarmkeeper_git_sync_errors_total"
DEADLINE = 30.0  # generous: what should take a second may take longer on a busy machine


def stack(image: str, *, web: int = 0, broken: bool = False) -> str:
    """Two services: ``web`` (replicas vary) and ``files`` (a relative bind)."""
    replicas_text = "many" if broken else str(web)
    return (
        "services:\n"
        "  web:\n"
        f"    image: {image}\n"
        "    command: [sleep, '3600']\n"
        "    stop_grace_period: 1s\n"
        f"    deploy: {{replicas: {replicas_text}}}\n"
        "  files:\n"
        f"    image: {image}\n"
        "    command: [sleep, '3600']\n"
        "    volumes: ['./data:/data:ro']\n"
        "    deploy: {replicas: 0}\n"
    )


def cluster_files(prefix: str, text: str) -> dict[str, str | None]:
    return {f"cluster/stacks/{prefix}.yml": text}


def git_env(remote_url: str, cache: Path, **more: str) -> dict[str, str]:
    env = {
        "SWARMKEEPER_GIT_URL": remote_url,
        "SWARMKEEPER_GIT_PATH": "cluster",
        "SWARMKEEPER_CACHE_DIR": str(cache),
        "SWARMKEEPER_GIT_INTERVAL": "1",
    }
    env.update({f"SWARMKEEPER_{k.upper()}": v for k, v in more.items()})
    return env


def label(swarm: SwarmTestBed, service: str) -> str | None:
    spec = service_spec(swarm.client, swarm.name(service)) or {}
    found = (spec.get("Labels") or {}).get(REVISION_LABEL)
    return None if found is None else str(found)


def bind_source(swarm: SwarmTestBed, service: str) -> str:
    spec = service_spec(swarm.client, swarm.name(service)) or {}
    mounts = spec["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
    return str(mounts[0]["Source"])


def deployed(daemon: DaemonProcess) -> str | None:
    git_status = daemon.status().get("git") or {}
    found = git_status.get("revision")
    return None if found is None else str(found)


def errors(daemon: DaemonProcess, reason: str) -> float:
    return daemon.metrics().get(metric_key(ERRORS, reason=reason), 0.0)


# --------------------------------------------------------- the happy path --


def test_a_commit_reaches_the_swarm_within_an_interval_and_a_revert_undoes_it(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    remote = GitRemote(tmp_path / "repo")
    first = remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=0)))
    cache = tmp_path / "cache"
    daemon = daemons(None, env=git_env(remote.url, cache))
    wait_converged(daemon, swarm.prefix)

    assert label(swarm, "web") == first
    assert label(swarm, "files") == first
    stable_bind = str(cache / "state" / "stacks" / "data")
    assert bind_source(swarm, "files") == stable_bind
    samples = daemon.metrics()
    assert samples[metric_key("swarmkeeper_desired_state_info", revision=first)] == 1

    # A commit changes web's replicas: it reaches the swarm by the interval.
    second = remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=1)))
    daemon.wait_for(
        lambda: replicas(swarm.client, swarm.name("web")) == 1,
        timeout=DEADLINE,
        what="the new replicas in the swarm",
    )
    daemon.wait_for(
        lambda: deployed(daemon) == second, timeout=DEADLINE, what="the revision"
    )
    assert label(swarm, "web") == second
    # The other service did not change: not rewritten, its bind source stable.
    assert label(swarm, "files") == first
    assert bind_source(swarm, "files") == stable_bind
    samples = daemon.metrics()
    assert samples[metric_key("swarmkeeper_desired_state_info", revision=second)] == 1
    assert metric_key("swarmkeeper_desired_state_info", revision=first) not in samples
    assert samples[metric_key("swarmkeeper_git_sync_ok")] == 1
    assert samples[metric_key("swarmkeeper_git_last_sync_timestamp_seconds")] > 0
    git_status = daemon.status()["git"]
    assert git_status["url"] == remote.url
    assert git_status["branch"] == "main"
    assert git_status["last_error"] is None

    # plan and apply name the same revision when run on the stable path.
    plan = swarmkeeper_cli("plan", "--state-dir", str(cache / "state"))
    assert plan.returncode == 0, plan.stderr
    assert f"Desired state at revision {second[:12]}" in plan.stdout
    as_json = swarmkeeper_cli("plan", "--json", "--state-dir", str(cache / "state"))
    assert json.loads(as_json.stdout)["revision"] == second
    status = swarmkeeper_cli("status", "--metrics-addr", daemon.metrics_addr)
    assert f"deployed {second}" in status.stdout

    # A revert commit brings the swarm back.
    git("revert", "--no-edit", "HEAD", cwd=remote.work)
    remote.push()
    third = remote.head()
    daemon.wait_for(
        lambda: replicas(swarm.client, swarm.name("web")) == 0,
        timeout=DEADLINE,
        what="the revert in the swarm",
    )
    daemon.wait_for(
        lambda: label(swarm, "web") == third, timeout=DEADLINE, what="the label"
    )
    assert label(swarm, "files") == first

    # Every line of a pass names the revision it converged.
    passes = daemon.passes()
    assert passes
    assert all(p.get("revision") for p in passes)
    assert passes[-1]["revision"] == third
    updates = daemon.log_events("service.updated")
    assert updates
    assert {u["revision"] for u in updates} == {second, third}


def post_hook(address: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        f"http://{address}/hooks/git", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_a_webhook_call_gets_a_commit_into_the_swarm_at_once(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    remote = GitRemote(tmp_path / "repo")
    remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=0)))
    secret = "hook-" + os.urandom(8).hex()
    hook_address = f"127.0.0.1:{free_port()}"
    env = git_env(
        remote.url,
        tmp_path / "cache",
        git_interval="300",  # only the webhook explains a fetch
        webhook_addr=hook_address,
        git_webhook_secret=secret,
    )
    daemon = daemons(None, env=env)
    wait_converged(daemon, swarm.prefix)
    fetches = len(daemon.log_events("git.revision.deployed"))

    changed = remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=1)))
    body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
    assert post_hook(hook_address, body, {"X-Gitea-Signature": "0" * 64}) == 401

    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    called = time.monotonic()
    status = post_hook(
        hook_address, body, {"X-Hub-Signature-256": f"sha256={signature}"}
    )
    assert status == 202
    daemon.wait_for(
        lambda: replicas(swarm.client, swarm.name("web")) == 1,
        timeout=DEADLINE,
        what="the commit in the swarm after the webhook call",
        interval=0.01,
    )
    latency = time.monotonic() - called
    print(f"webhook to swarm: {latency * 1000:.0f} ms")  # reported, not asserted

    assert label(swarm, "web") == changed
    assert len(daemon.log_events("git.revision.deployed")) == fetches + 1
    samples = daemon.metrics()
    accepted = metric_key("swarmkeeper_git_webhook_requests_total", result="accepted")
    refused = metric_key(
        "swarmkeeper_git_webhook_requests_total", result="unauthorized"
    )
    assert samples[accepted] == 1
    assert samples[refused] == 1
    assert secret not in daemon.log_text() + json.dumps(daemon.status())


# ---------------------------------------------------------------- failures --


# One daemon lives through every failure in turn (long, but a daemon per
# failure would triple the time).
def test_remote_failures_are_survived_reported_and_recovered_from(  # noqa: PLR0915
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    remote = GitRemote(tmp_path / "repo")
    first = remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=0)))
    password = "pw-" + os.urandom(6).hex()
    cache = tmp_path / "cache"
    with dumb_http_server(remote.bare) as server:
        server.password = password
        url = server.url(user="git", password=password)
        env = git_env(url, cache, git_interval="0.5", git_timeout="2")

        # Start-up with the remote down and nothing cached: alive, not ready.
        server.stop()
        daemon = daemons(None, env=env)
        daemon.wait_for(
            lambda: errors(daemon, "unreachable") >= 1,
            timeout=DEADLINE,
            what="the unreachable remote reported",
        )
        assert daemon.http_get("/healthz")[0] == 200
        assert daemon.http_get("/readyz")[0] == 503
        server.start()
        daemon.wait_for(
            lambda: deployed(daemon) == first, timeout=DEADLINE, what="first deploy"
        )
        wait_converged(daemon, swarm.prefix)

        def fails(reason: str) -> None:
            before = errors(daemon, reason)
            daemon.wait_for(
                lambda: (
                    errors(daemon, reason) > before
                    and (daemon.status()["git"]["last_error"] or {}).get("reason")
                    == reason
                ),
                timeout=DEADLINE,
                what=f"a sync failure with reason {reason}",
            )
            assert daemon.metric("swarmkeeper_git_sync_ok") == 0
            assert any(
                r.get("reason") == reason for r in daemon.log_events("git.sync.failed")
            )

        def recovers(revision: str) -> None:
            daemon.wait_for(
                lambda: (
                    deployed(daemon) == revision
                    and daemon.status()["git"]["last_error"] is None
                ),
                timeout=DEADLINE,
                what=f"recovery at {revision}",
            )
            assert daemon.metric("swarmkeeper_git_sync_ok") == 1

        # Unreachable: the swarm is still converged meanwhile.
        server.stop()
        fails("unreachable")
        scale_service(swarm.client, swarm.name("web"), 2)
        daemon.wait_for(
            lambda: replicas(swarm.client, swarm.name("web")) == 0,
            timeout=DEADLINE,
            what="drift corrected while the remote is away",
        )
        server.start()
        recovers(first)

        # Bad credentials.
        server.password = "changed"
        fails("auth")
        server.password = password
        recovers(first)

        # A remote that hangs.
        server.hang.set()
        fails("timeout")
        server.hang.clear()
        recovers(first)

        # The branch disappears, then comes back.
        remote.delete_branch()
        fails("branch-missing")
        remote.push()
        recovers(first)

        # A commit that does not load: the last good revision stays.
        broken = remote.commit(
            cluster_files(swarm.prefix, stack(swarm.image, broken=True))
        )
        fails("invalid")
        assert daemon.metric("swarmkeeper_desired_state_valid") == 0
        assert daemon.status()["git"]["last_error"]["commit"] == broken
        assert label(swarm, "web") == first
        fixed = remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=1)))
        recovers(fixed)
        daemon.wait_for(
            lambda: (
                replicas(swarm.client, swarm.name("web")) == 1
                and daemon.metric("swarmkeeper_desired_state_valid") == 1
            ),
            timeout=DEADLINE,
            what="the fixed commit converged",
        )

        # A force-push that rewrites history.
        remote.rewrite(
            cluster_files(swarm.prefix, stack(swarm.image, web=0)), "new root"
        )
        fails("history-rewritten")
        assert replicas(swarm.client, swarm.name("web")) == 1
        remote.reset_hard(fixed)
        onwards = remote.commit(
            cluster_files(swarm.prefix, stack(swarm.image, web=0)), push=False
        )
        remote.push(force=True)
        recovers(onwards)
        daemon.wait_for(
            lambda: replicas(swarm.client, swarm.name("web")) == 0,
            timeout=DEADLINE,
            what="the commit after the rewrite converged",
        )

        status_text = json.dumps(daemon.status())
        assert password not in daemon.log_text() + status_text
        assert "git:***@" in status_text
        daemon.stop()

        # A restart while the remote is away serves the cached revision.
        server.stop()
        restarted = daemons(None, env=env)
        restarted.wait_for(
            lambda: restarted.http_get("/readyz")[0] == 200,
            timeout=DEADLINE,
            what="ready on the cached revision",
        )
        assert deployed(restarted) == onwards
        assert restarted.status()["revision"] == onwards
        assert errors(restarted, "unreachable") >= 1


# ------------------------------------------------------------ verification --


def test_with_ssh_verification_only_a_signed_commit_is_deployed(
    swarm: SwarmTestBed, daemons: DaemonFactory, tmp_path: Path
) -> None:
    key, public = ssh_key(tmp_path / "keys", "deployer")
    allowed = tmp_path / "keys" / "allowed_signers"
    allowed.write_text(f"person@example.org {public}\n")
    remote = GitRemote(tmp_path / "repo")
    unsigned = remote.commit(cluster_files(swarm.prefix, stack(swarm.image, web=0)))
    env = git_env(
        remote.url,
        tmp_path / "cache",
        git_verify="ssh",
        git_allowed_signers=str(allowed),
    )

    daemon = daemons(None, env=env)
    daemon.wait_for(
        lambda: errors(daemon, "unverified") >= 1,
        timeout=DEADLINE,
        what="the unsigned commit refused",
    )
    refusals = daemon.log_events("git.sync.failed")
    assert refusals[-1]["commit"] == unsigned
    assert service_spec(swarm.client, swarm.name("web")) is None
    assert deployed(daemon) is None

    signed = remote.commit(
        cluster_files(swarm.prefix, stack(swarm.image, web=1)),
        "signed",
        sign=ssh_signing(key),
    )
    daemon.wait_for(
        lambda: replicas(swarm.client, swarm.name("web")) == 1,
        timeout=DEADLINE,
        what="the signed commit deployed",
    )
    assert label(swarm, "web") == signed
    assert deployed(daemon) == signed


# ------------------------------------------------------ apply's own label --


def test_apply_labels_only_the_services_it_writes_with_its_revision(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    # apply works on the whole swarm: nothing of another test may be owned.
    require_swarm_to_ourselves(swarm.client, swarm.prefix)
    state = tmp_path / "state"
    (state / "stacks").mkdir(parents=True)
    (state / "stacks" / f"{swarm.prefix}.yml").write_text(stack(swarm.image, web=0))

    first = swarmkeeper_cli("apply", "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    revision = label(swarm, "web")
    assert revision is not None
    assert revision.startswith("dir-")
    assert label(swarm, "files") == revision
    assert f"Desired state at revision {revision}" in first.stdout

    (state / "stacks" / f"{swarm.prefix}.yml").write_text(stack(swarm.image, web=1))
    second = swarmkeeper_cli("apply", "--state-dir", str(state))
    assert second.returncode == 0, second.stderr

    assert label(swarm, "web") not in (None, revision)
    assert label(swarm, "files") == revision
    again = swarmkeeper_cli("plan", "--state-dir", str(state))
    assert again.returncode == 0, again.stdout
