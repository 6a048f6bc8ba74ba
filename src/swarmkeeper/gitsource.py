"""Git as the source of the desired state: fetch, verify, export, switch.

The real ``git`` client does the work, so users' ssh keys, credential
helpers and known hosts apply as they do for them. Nothing ever prompts:
``GIT_TERMINAL_PROMPT=0``, ssh in ``BatchMode``, and every command has a
deadline (``git_timeout``), after which its whole process group is killed.

The cache under ``cache_dir``::

    git/repo.git        bare repository; only the followed branch is fetched
    git/source.json     the url, branch and path the deployed tree came from
    gnupg/              private GNUPGHOME holding the allowed keys (gpg)
    trees/<sha>         one complete export per revision (<sha>.partial while
                        it is written, renamed when complete)
    state               symlink to trees/<sha>/<git_path>: the stable state
                        directory the rest of swarmkeeper reads

One sync: fetch the branch, and when its head is new, check it descends from
the deployed revision, verify its signature (``git_verify``), export it and
load it with the normal loader. Only a head that passes every step is handed
back for switching; on any failure the stable path keeps pointing at the
last good tree and the failure is reported with one of :data:`REASONS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from swarmkeeper.logs import get_logger
from swarmkeeper.revisions import TREES_FOLDER, git_revision_of

if TYPE_CHECKING:
    from swarmkeeper.metrics import Metrics
    from swarmkeeper.settings import Settings

log = get_logger("swarmkeeper.gitsource")

# Why a sync failed; the label values of swarmkeeper_git_sync_errors_total.
REASONS = (
    "unreachable",
    "auth",
    "branch-missing",
    "timeout",
    "invalid",
    "unverified",
    "history-rewritten",
    "other",
)

FETCHED_REF = "refs/swarmkeeper/fetched"
# Keeps the deployed commit (and the history behind it) in the cache, so the
# ancestry of the next head can be checked even after a force-push.
DEPLOYED_REF = "refs/swarmkeeper/deployed"
STDERR_SHOWN = 2000  # characters of git's own message kept in a report

# What git prints, lower-cased, for each cause. Checked in this order: the
# first match names the reason. Anything else is "other".
_STDERR_REASONS = (
    ("branch-missing", ("couldn't find remote ref",)),
    (
        "auth",
        (
            "authentication failed",
            "could not read username",
            "could not read password",
            "permission denied",
            "access denied",
            "invalid credentials",
            "http 401",
            "http 403",
            "the requested url returned error: 401",
            "the requested url returned error: 403",
            "host key verification failed",
        ),
    ),
    (
        "unreachable",
        (
            "does not appear to be a git repository",
            "could not resolve host",
            "connection refused",
            "failed to connect",
            "no such file or directory",
            "unable to access",
            "connection timed out",
            "network is unreachable",
            "no route to host",
            "could not read from remote repository",
            "repository not found",
        ),
    ),
)


class GitSyncError(Exception):
    """One failed sync, with its reason (one of REASONS) and the commit, if known."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        commit: str | None = None,
        problems: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        assert reason in REASONS, reason
        self.reason = reason
        self.message = message
        self.commit = commit
        self.problems = problems


def classify_git_failure(stderr: str) -> str:
    """The reason a fetch failed, recognised from git's own message."""
    text = stderr.lower()
    for reason, needles in _STDERR_REASONS:
        if any(needle in text for needle in needles):
            return reason
    return "other"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (user names stay)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass
class SyncOutcome:
    """What one sync found: the branch head, and a revision ready to switch to."""

    head: str | None = None
    switch_to: str | None = None  # a new, verified, valid revision
    error: GitSyncError | None = None


# Validates an exported tree with the normal loader: located problems, if any.
Validator = Callable[[Path], Awaitable[list[str]]]


@dataclass
class _Refusal:
    head: str
    deployed: str | None
    error: GitSyncError


class GitSource:
    """The followed branch, the revision cache, and what the last sync found."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.url = settings.git_url or ""
        self.cache = settings.cache_dir
        self.repo = self.cache / "git" / "repo.git"
        self.trees = self.cache / TREES_FOLDER
        self.stable = self.cache / "state"
        self.gnupg_home = self.cache / "gnupg"
        self.head: str | None = None
        self.last_sync: float | None = None  # when the remote last answered
        self.last_error: dict[str, Any] | None = None
        self._refused: _Refusal | None = None
        self._keyring_stamp: tuple[float, int] | None = None
        self._environment = _git_environment()

        # A daemon restart finds the last good tree in the cache and serves it
        # until the remote answers. Ancestry is checked against it only when
        # it came from the same url and branch: a changed source is a choice.
        self.deployed = git_revision_of(self.stable) if self.stable.exists() else None
        self._ancestry_base: str | None = None
        if self.deployed and self._recorded_source() == self._source_record():
            self._ancestry_base = self.deployed

    # -- what is shown ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.url),
            "branch": self.settings.git_branch,
            "path": self.settings.git_path or ".",
            "revision": self.deployed,
            "head": self.head,
            "last_sync": self.last_sync,
            "last_error": self.last_error,
        }

    # -- one sync ----------------------------------------------------------------

    async def sync(self, validate: Validator) -> SyncOutcome:
        """Fetch the branch; prepare its head when it is new and acceptable.

        Never raises for a git or content problem: the outcome carries it,
        and it is already logged and counted.
        """
        outcome = SyncOutcome()
        try:
            outcome.head = head = await self._fetch()
            self.head = head
            self.last_sync = time.time()
            if self.metrics is not None:
                self.metrics.git_last_sync.set(self.last_sync)
            if head != self.deployed:
                await self._accept(head, validate)
                outcome.switch_to = head
        except GitSyncError as error:
            outcome.error = error
            self._report(error)
            return outcome

        self.last_error = None
        if self.metrics is not None:
            self.metrics.git_sync_ok.set(1)
        return outcome

    async def _accept(self, head: str, validate: Validator) -> None:
        """Raise GitSyncError unless ``head`` may be deployed; export it."""
        refused = self._refused
        if refused and refused.head == head and refused.deployed == self.deployed:
            # The same head as last time: the same answer, without the work.
            raise refused.error
        try:
            await self._check_ancestry(head)
            await self._verify(head)
            tree = await self._export(head)
            await self._validate(head, tree, validate)
        except GitSyncError as error:
            if error.reason in ("invalid", "unverified", "history-rewritten"):
                self._refused = _Refusal(head, self.deployed, error)
            raise

    def _report(self, error: GitSyncError) -> None:
        self.last_error = {
            "reason": error.reason,
            "message": error.message,
            "commit": error.commit,
            "at": time.time(),
        }
        if self.metrics is not None:
            self.metrics.git_sync_errors.labels(reason=error.reason).inc()
            self.metrics.git_sync_ok.set(0)
        log.error(
            "git.sync.failed",
            reason=error.reason,
            error=error.message,
            commit=error.commit,
            problems=list(error.problems[:20]) or None,
            keeping=self.deployed,
            url=redact_url(self.url),
            branch=self.settings.git_branch,
        )

    # -- the steps ----------------------------------------------------------------

    async def _fetch(self) -> str:
        if not (self.repo / "HEAD").exists():
            self.repo.parent.mkdir(parents=True, exist_ok=True)
            await self._git("init", "--quiet", "--bare", str(self.repo), git_dir=False)
        refspec = f"+refs/heads/{self.settings.git_branch}:{FETCHED_REF}"
        code, _, stderr = await self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--end-of-options",
            self.url,
            refspec,
            check=False,
        )
        if code != 0:
            message = self._redacted(stderr)
            raise GitSyncError(classify_git_failure(message), message)
        _, stdout, _ = await self._git(
            "rev-parse", "--verify", "--end-of-options", f"{FETCHED_REF}^{{commit}}"
        )
        return stdout.strip()

    async def _check_ancestry(self, head: str) -> None:
        base = self._ancestry_base
        if base is None or self.settings.git_allow_rewrite:
            return
        code, _, stderr = await self._git(
            "merge-base", "--is-ancestor", base, head, check=False
        )
        if code == 0:
            return
        if code == 1:
            raise GitSyncError(
                "history-rewritten",
                f"the branch head {head} does not descend from the deployed "
                f"revision {base} (a force-push?); it is not deployed unless "
                "git_allow_rewrite is set",
                commit=head,
            )
        # The deployed commit is gone from the cache (a wiped repository):
        # ancestry cannot be told; the head is taken as it is.
        log.warning(
            "git.ancestry.unknown",
            deployed=base,
            head=head,
            error=self._redacted(stderr),
        )

    async def _verify(self, head: str) -> None:
        mode = self.settings.git_verify
        signers = self.settings.git_allowed_signers
        if mode == "none" or signers is None:
            return
        arguments: tuple[str, ...]
        if mode == "ssh":
            arguments = (
                "-c",
                "gpg.format=ssh",
                "-c",
                f"gpg.ssh.allowedSignersFile={signers}",
                "verify-commit",
                "--end-of-options",
                head,
            )
            extra: dict[str, str] = {}
        else:
            await self._import_keyring(signers)
            arguments = ("verify-commit", "--end-of-options", head)
            extra = {"GNUPGHOME": str(self.gnupg_home)}
        code, _, stderr = await self._git(*arguments, check=False, extra_env=extra)
        if code != 0:
            why = stderr.strip().splitlines()
            raise GitSyncError(
                "unverified",
                f"commit {head} has no signature by an allowed {mode} key: "
                + ("; ".join(why[-3:]) if why else "it is not signed"),
                commit=head,
            )

    async def _import_keyring(self, keyring: Path) -> None:
        """A private GNUPGHOME holding exactly the allowed keys (rebuilt on change)."""
        info = await asyncio.to_thread(keyring.stat)
        stamp = (info.st_mtime, info.st_size)
        if stamp == self._keyring_stamp and self.gnupg_home.is_dir():
            return
        shutil.rmtree(self.gnupg_home, ignore_errors=True)
        self.gnupg_home.mkdir(parents=True, mode=0o700)
        code, _, stderr = await self._run(
            ["gpg", "--batch", "--quiet", "--import", str(keyring)],
            extra_env={"GNUPGHOME": str(self.gnupg_home)},
        )
        if code != 0:
            raise GitSyncError(
                "unverified", f"the allowed keys in {keyring} do not import: {stderr}"
            )
        self._keyring_stamp = stamp

    async def _export(self, head: str) -> Path:
        """The whole revision in trees/<sha>; written aside, renamed when complete."""
        tree = self.trees / head
        if tree.is_dir():
            return tree  # exported before (a revert to a kept revision)
        partial = self.trees / f"{head}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        index = self.repo / "swarmkeeper-export.index"
        index.unlink(missing_ok=True)
        extra = {"GIT_INDEX_FILE": str(index)}
        await self._git("read-tree", "--end-of-options", head, extra_env=extra)
        await self._git(
            f"--work-tree={partial}", "checkout-index", "--all", "--force",
            extra_env=extra,
        )  # fmt: skip
        index.unlink(missing_ok=True)
        partial.rename(tree)
        return tree

    async def _validate(self, head: str, tree: Path, validate: Validator) -> None:
        folder = tree / self.settings.git_path
        if not folder.is_dir():
            raise GitSyncError(
                "invalid",
                f"revision {head} has no folder {self.settings.git_path!r}",
                commit=head,
            )
        problems = await validate(folder)
        if problems:
            raise GitSyncError(
                "invalid",
                f"revision {head} does not load: {len(problems)} problems",
                commit=head,
                problems=tuple(problems),
            )

    async def switch(self, head: str) -> None:
        """Point the stable path at ``head``'s tree, atomically; prune old trees.

        The caller makes sure nothing loads from the stable path meanwhile.
        The previous tree stays (something may still look at it); older ones go.
        """
        target = Path(TREES_FOLDER) / head / self.settings.git_path
        fresh = self.cache / "state.new"
        fresh.unlink(missing_ok=True)
        os.symlink(target, fresh)
        os.replace(fresh, self.stable)
        previous, self.deployed = self.deployed, head
        self._ancestry_base = head
        self._refused = None
        await self._git("update-ref", DEPLOYED_REF, head)
        self._write_source_record()
        log.info(
            "git.revision.deployed",
            revision=head,
            previous=previous,
            branch=self.settings.git_branch,
        )
        keep = {head, previous}
        stale = [e for e in self.trees.iterdir() if e.name not in keep]
        await asyncio.to_thread(_remove_all, stale)

    # -- bookkeeping --------------------------------------------------------------

    def _source_record(self) -> dict[str, str]:
        return {
            "url": self.url,
            "branch": self.settings.git_branch,
            "path": self.settings.git_path,
        }

    def _recorded_source(self) -> dict[str, str] | None:
        try:
            found = json.loads((self.cache / "git" / "source.json").read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def _write_source_record(self) -> None:
        path = self.cache / "git" / "source.json"
        fresh = path.with_suffix(".new")
        fresh.write_text(json.dumps(self._source_record()))
        os.replace(fresh, path)

    def _redacted(self, text: str) -> str:
        """git's message without any password of the URL, and not too long."""
        password = _password_of(self.url)
        if password:
            text = text.replace(password, "***")
        return text.strip()[:STDERR_SHOWN]

    # -- running git --------------------------------------------------------------

    async def _git(
        self,
        *arguments: str,
        check: bool = True,
        git_dir: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> tuple[int, str, str]:
        command = ["git"]
        if git_dir:
            command.append(f"--git-dir={self.repo}")
        command.extend(arguments)
        code, stdout, stderr = await self._run(command, extra_env=extra_env)
        if check and code != 0:
            message = self._redacted(stderr)
            raise GitSyncError(
                "other", f"git {arguments[0]} failed (exit {code}): {message}"
            )
        return code, stdout, stderr

    async def _run(
        self, command: list[str], *, extra_env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run one command with the deadline; kill its whole group on timeout."""
        environment = {**self._environment, **(extra_env or {})}
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            start_new_session=True,  # its helpers (ssh, git-remote-https) too
        )
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(), self.settings.git_timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise GitSyncError(
                "timeout",
                f"{command[0]} {_verb(command)} took longer than "
                f"{self.settings.git_timeout:g} s (git_timeout)",
            ) from None
        except BaseException:
            # Cancelled (shutdown): leave no git behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        return (
            process.returncode or 0,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )


def _remove_all(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _verb(command: list[str]) -> str:
    return next((part for part in command[1:] if not part.startswith("-")), "")


def _password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


_SSH_BATCH = re.compile(r"\bBatchMode\b", re.IGNORECASE)


def _git_environment() -> dict[str, str]:
    """The process environment, made non-interactive and predictable for git."""
    environment = {
        key: value
        for key, value in os.environ.items()
        # Settings are swarmkeeper's own; git and its helpers have no use
        # for them (the webhook secret is one of them).
        if not key.startswith("SWARMKEEPER_")
    }
    environment["GIT_TERMINAL_PROMPT"] = "0"
    environment["LC_ALL"] = "C"  # git's messages are recognised in English
    ssh = environment.get("GIT_SSH_COMMAND") or "ssh"
    if not _SSH_BATCH.search(ssh):
        ssh += " -o BatchMode=yes"
    environment["GIT_SSH_COMMAND"] = ssh
    return environment
