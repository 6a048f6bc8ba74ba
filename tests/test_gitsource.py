"""The git source on real repositories: fetch, refuse, verify, switch, recover.

No engine is needed: these drive :class:`swarmkeeper.gitsource.GitSource`
against repositories the tests make (a bare remote on disk by ``file://``,
or served over HTTP on loopback) and check what the cache holds afterwards:
which tree the stable path points at, what was refused and why, and the
metrics. The daemon's side (the swarm converging) is in test_git_daemon.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from gitrepo import GitRemote, GpgKey, dumb_http_server, ssh_key, ssh_signing
from swarmkeeper.gitsource import (
    GitSource,
    classify_git_failure,
    redact_url,
)
from swarmkeeper.metrics import Metrics
from swarmkeeper.revisions import git_revision_of, revision_of
from swarmkeeper.settings import Settings, load_settings

GOOD_STACK = "services:\n  web:\n    image: busybox:1.36\n    deploy: {replicas: %d}\n"
BROKEN_STACK = (
    "services:\n  web:\n    image: busybox:1.36\n    deploy: {replicas: many}\n"
)


@pytest.fixture(autouse=True)
def no_settings_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SWARMKEEPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWARMKEEPER_CONFIG", os.devnull)


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    repo = GitRemote(tmp_path / "repo")
    repo.commit({"state/stacks/app.yml": GOOD_STACK % 1}, "first")
    return repo


def make_source(tmp_path: Path, url: str, **flags: Any) -> GitSource:
    settings: Settings = load_settings(
        {"git_url": url, "cache_dir": str(tmp_path / "cache"), "git_path": "state"}
        | flags
    )
    metrics = Metrics()
    metrics.enable_git()
    return GitSource(settings, metrics)


async def validate(folder: Path) -> list[str]:
    """The normal loader, as the daemon validates a revision."""
    from swarmkeeper.loading.problems import Problems
    from swarmkeeper.loading.statedir import read_desired_state

    problems = Problems()
    read_desired_state(folder, secrets_dir=None, environ={}, problems=problems)
    return [str(problem) for problem in problems.errors]


async def deploy(source: GitSource) -> str | None:
    """One sync, and the switch when it found something new: the error reason."""
    outcome = await source.sync(validate)
    if outcome.switch_to:
        await source.switch(outcome.switch_to)
    return outcome.error.reason if outcome.error else None


def errors(source: GitSource, reason: str) -> float:
    assert source.metrics is not None
    value = source.metrics.registry.get_sample_value(
        "swarmkeeper_git_sync_errors_total", {"reason": reason}
    )
    return value or 0.0


def sync_ok(source: GitSource) -> float | None:
    assert source.metrics is not None
    return source.metrics.registry.get_sample_value("swarmkeeper_git_sync_ok")


# ------------------------------------------------------------- the happy path --


async def test_a_revision_is_exported_whole_and_the_stable_path_switched(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    first = remote.head()

    assert await deploy(source) is None

    stable = tmp_path / "cache" / "state"
    assert stable.is_symlink()
    assert (stable / "stacks" / "app.yml").read_text() == GOOD_STACK % 1
    assert git_revision_of(stable) == first == revision_of(stable)
    assert source.deployed == first
    assert not list((tmp_path / "cache" / "trees").glob("*.partial"))
    assert sync_ok(source) == 1
    assert source.metrics is not None
    assert source.metrics.registry.get_sample_value(
        "swarmkeeper_git_last_sync_timestamp_seconds"
    )

    # Three more revisions: the deployed and the previous tree stay, no more.
    shas = [first]
    for replicas in (2, 3, 4):
        shas.append(remote.commit({"state/stacks/app.yml": GOOD_STACK % replicas}))
        assert await deploy(source) is None
        assert git_revision_of(stable) == shas[-1]
    kept = sorted(p.name for p in (tmp_path / "cache" / "trees").iterdir())
    assert kept == sorted(shas[-2:])
    assert (stable / "stacks" / "app.yml").read_text() == GOOD_STACK % 4

    # Nothing new: no switch, still a successful sync.
    outcome = await source.sync(validate)
    assert outcome.switch_to is None
    assert outcome.error is None


async def test_a_restart_serves_the_cached_tree_while_the_remote_is_away(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    assert await deploy(source) is None
    deployed = source.deployed
    remote.bare.rename(remote.bare.with_name("moved.git"))

    restarted = make_source(tmp_path, remote.url)

    assert restarted.deployed == deployed
    assert await deploy(restarted) == "unreachable"
    assert git_revision_of(tmp_path / "cache" / "state") == deployed


# ------------------------------------------------------------------ refusals --


async def test_a_broken_revision_is_refused_and_the_next_good_one_deployed(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    assert await deploy(source) is None
    good = source.deployed

    broken = remote.commit({"state/stacks/app.yml": BROKEN_STACK}, "broken")
    outcome = await source.sync(validate)

    assert outcome.error is not None
    assert outcome.error.reason == "invalid"
    assert outcome.error.commit == broken
    assert any("app.yml:4" in problem for problem in outcome.error.problems)
    assert outcome.switch_to is None
    assert git_revision_of(tmp_path / "cache" / "state") == good
    assert errors(source, "invalid") == 1
    assert sync_ok(source) == 0
    # The same head again: the same refusal, counted again.
    assert await deploy(source) == "invalid"
    assert errors(source, "invalid") == 2

    fixed = remote.commit({"state/stacks/app.yml": GOOD_STACK % 5}, "fixed")
    assert await deploy(source) is None
    assert source.deployed == fixed
    assert sync_ok(source) == 1
    assert source.last_error is None


async def test_a_missing_state_folder_is_an_invalid_revision(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    assert await deploy(source) is None
    remote.commit({"state/stacks/app.yml": None, "other/readme": "x"}, "moved")

    assert await deploy(source) == "invalid"
    assert source.last_error is not None
    assert "has no folder 'state'" in source.last_error["message"]


async def test_a_rewritten_history_is_refused_until_the_branch_descends_again(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    assert await deploy(source) is None
    deployed = source.deployed
    assert deployed is not None

    rewritten = remote.rewrite({"state/stacks/app.yml": GOOD_STACK % 7}, "rewritten")

    assert await deploy(source) == "history-rewritten"
    assert source.deployed == deployed
    assert source.last_error is not None
    assert source.last_error["commit"] == rewritten

    # The branch is put back and moves on from the deployed revision.
    remote.reset_hard(deployed)
    onwards = remote.commit(
        {"state/stacks/app.yml": GOOD_STACK % 8}, "onwards", push=False
    )
    remote.push(force=True)
    assert await deploy(source) is None
    assert source.deployed == onwards


async def test_git_allow_rewrite_deploys_a_rewritten_history(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url, git_allow_rewrite=True)
    assert await deploy(source) is None

    rewritten = remote.rewrite({"state/stacks/app.yml": GOOD_STACK % 7}, "rewritten")

    assert await deploy(source) is None
    assert source.deployed == rewritten


async def test_a_changed_source_is_not_held_to_the_old_history(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    assert await deploy(source) is None
    other = GitRemote(tmp_path / "other")
    unrelated = other.commit({"state/stacks/app.yml": GOOD_STACK % 2}, "elsewhere")

    moved = make_source(tmp_path, other.url)

    assert await deploy(moved) is None
    assert moved.deployed == unrelated


async def test_a_branch_that_disappears_is_reported_and_comes_back(
    tmp_path: Path, remote: GitRemote
) -> None:
    source = make_source(tmp_path, remote.url)
    assert await deploy(source) is None
    deployed = source.deployed

    remote.delete_branch()
    assert await deploy(source) == "branch-missing"
    assert source.deployed == deployed

    remote.push()
    assert await deploy(source) is None
    assert sync_ok(source) == 1


# -------------------------------------------------------------- verification --


@pytest.fixture
def signers(tmp_path: Path) -> dict[str, Any]:
    keys = tmp_path / "keys"
    allowed, allowed_public = ssh_key(keys, "allowed")
    stranger, _ = ssh_key(keys, "stranger")
    allowed_signers = keys / "allowed_signers"
    allowed_signers.write_text(f"person@example.org {allowed_public}\n")
    return {"allowed": allowed, "stranger": stranger, "file": allowed_signers}


async def test_ssh_verification_deploys_only_commits_signed_by_an_allowed_key(
    tmp_path: Path, signers: dict[str, Any]
) -> None:
    remote = GitRemote(tmp_path / "repo")
    unsigned = remote.commit({"state/stacks/app.yml": GOOD_STACK % 1}, "unsigned")
    source = make_source(
        tmp_path,
        remote.url,
        git_verify="ssh",
        git_allowed_signers=str(signers["file"]),
    )

    assert await deploy(source) == "unverified"
    assert source.status()["revision"] is None
    assert source.last_error is not None
    assert source.last_error["commit"] == unsigned

    stranger = remote.commit(
        {"state/stacks/app.yml": GOOD_STACK % 2},
        "signed by a stranger",
        sign=ssh_signing(signers["stranger"]),
    )
    assert await deploy(source) == "unverified"
    assert source.last_error is not None
    assert source.last_error["commit"] == stranger

    signed = remote.commit(
        {"state/stacks/app.yml": GOOD_STACK % 3},
        "signed",
        sign=ssh_signing(signers["allowed"]),
    )
    assert await deploy(source) is None
    assert source.deployed == signed
    assert errors(source, "unverified") == 2


async def test_gpg_verification_deploys_only_commits_signed_by_an_allowed_key(
    tmp_path: Path,
) -> None:
    allowed, stranger = GpgKey("Allowed <a@example.org>"), GpgKey("S <s@example.org>")
    try:
        keyring = allowed.export(tmp_path / "allowed.asc")
        remote = GitRemote(tmp_path / "repo")
        remote.commit({"state/stacks/app.yml": GOOD_STACK % 1}, "unsigned")
        source = make_source(
            tmp_path, remote.url, git_verify="gpg", git_allowed_signers=str(keyring)
        )

        assert await deploy(source) == "unverified"

        remote.commit(
            {"state/stacks/app.yml": GOOD_STACK % 2}, "s", sign=stranger.signing()
        )
        assert await deploy(source) == "unverified"

        signed = remote.commit(
            {"state/stacks/app.yml": GOOD_STACK % 3}, "a", sign=allowed.signing()
        )
        assert await deploy(source) is None
        assert source.deployed == signed
    finally:
        allowed.close()
        stranger.close()


# -------------------------------------------------- a network remote's faults --


async def test_http_remote_faults_are_told_apart_and_recovered_from(
    tmp_path: Path, remote: GitRemote
) -> None:
    remote.published()
    with dumb_http_server(remote.bare) as server:
        server.password = "right"
        url = server.url(user="git", password="wrong")
        source = make_source(tmp_path, url, git_timeout=1.5)

        # Bad credentials; the password never shows.
        assert await deploy(source) == "auth"
        assert source.last_error is not None
        assert "wrong" not in str(source.status())
        assert source.status()["url"] == server.url(user="git", password="***")

        # The server takes the password: recovered.
        server.password = "wrong"
        assert await deploy(source) is None
        assert source.deployed == remote.head()

        # A server that never answers: the fetch is given up.
        server.hang.set()
        started = asyncio.get_running_loop().time()
        assert await deploy(source) == "timeout"
        assert asyncio.get_running_loop().time() - started < 10
        server.hang.clear()

        # Nothing listens.
        server.stop()
        assert await deploy(source) == "unreachable"
        server.start()
        new = remote.commit({"state/stacks/app.yml": GOOD_STACK % 9}, "after")
        assert await deploy(source) is None
        assert source.deployed == new

    for reason in ("auth", "timeout", "unreachable"):
        assert errors(source, reason) == 1, reason


# --------------------------------------------------------------- pure parts --


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        ("fatal: couldn't find remote ref refs/heads/main", "branch-missing"),
        ("fatal: Authentication failed for 'https://host/r.git/'", "auth"),
        ("git@host: Permission denied (publickey).\nfatal: Could not read", "auth"),
        (
            "fatal: could not read Username for 'https://h': terminal prompts disabled",
            "auth",
        ),
        ("fatal: '/x' does not appear to be a git repository", "unreachable"),
        ("ssh: Could not resolve hostname nohost: Name or service", "unreachable"),
        ("fatal: unable to access 'http://h/': Failed to connect", "unreachable"),
        ("error: something new", "other"),
    ],
)
def test_git_failures_are_classified_by_cause(stderr: str, reason: str) -> None:
    assert classify_git_failure(stderr) == reason


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@host/r.git", "https://user:***@host/r.git"),
        ("https://user:s3cret@host:8443/r.git", "https://user:***@host:8443/r.git"),
        ("https://host/r.git", "https://host/r.git"),
        ("git@host:org/r.git", "git@host:org/r.git"),
        ("/srv/git/r.git", "/srv/git/r.git"),
    ],
)
def test_passwords_in_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
