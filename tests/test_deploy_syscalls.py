"""The unit's system call filter and address families allow what swarmkeeper does.

Process 1 is not systemd on the machines the suite runs on, so the unit's
``SystemCallFilter=`` and ``RestrictAddressFamilies=`` cannot be tried by
starting the unit. Instead the programs run under ``strace -f`` doing the
real work, and every system call and socket family they use is compared
with what the unit allows (the filter's groups expanded by
``systemd-analyze syscall-filter``, the same tables systemd enforces):

- the daemon itself, following a git repository whose commits it verifies
  with gpg (git, gpg and gpg's helpers are its children, so traced too),
  converging on the real engine, taking a second commit, and stopping on
  SIGTERM;
- git verifying an ssh-signed commit (``ssh-keygen -Y verify``), and an ssh
  client connecting, as git does for an ssh URL.

A call outside the filter would fail with EPERM under systemd
(``SystemCallErrorNumber=EPERM``) and a socket of another family with
EAFNOSUPPORT. strace comes from Debian's package (``scripts/test-deps.sh``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SwarmTestBed
from daemon_process import DaemonProcess, wait_until
from gitrepo import GitRemote, GpgKey, ssh_key, ssh_signing
from test_daemon import replicas, wait_converged
from test_deploy_systemd import UNIT, systemd_analyze, unit_settings
from test_git_daemon import cluster_files, git_env, stack

REQUIRE = os.environ.get("SWARMKEEPER_REQUIRE_ENGINE") == "1"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CALL = re.compile(r"^\d+\s+([a-z0-9_]+)\(")
SOCKET_FAMILY = re.compile(r"^\d+\s+socket\((AF_\w+)")


def strace() -> str:
    found = shutil.which("strace", path=SEARCH_PATH)
    if found is None:
        message = "strace is not installed; run scripts/test-deps.sh"
        if REQUIRE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    """A filter entry (``@group`` or one call) as the calls it stands for."""
    if not name.startswith("@"):
        return frozenset({name})
    listing = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= syscall_group(entry)
    return frozenset(calls)


def unit_filter() -> tuple[frozenset[str], frozenset[str]]:
    """(calls the unit allows, address families it allows), read from the unit."""
    settings = unit_settings(UNIT.read_text())
    allowed: set[str] = set()
    for value in settings["SystemCallFilter"]:
        deny = value.startswith("~")
        calls = set().union(*(syscall_group(e) for e in value.lstrip("~").split()))
        allowed = allowed - calls if deny else allowed | calls
    families = frozenset(settings["RestrictAddressFamilies"][0].split())
    return frozenset(allowed), families


def traced(trace: Path) -> tuple[set[str], set[str]]:
    """(system calls, socket families) in an ``strace -f`` output file."""
    calls: set[str] = set()
    families: set[str] = set()
    with trace.open(errors="replace") as lines:
        for line in lines:
            match = CALL.match(line)
            if match:
                calls.add(match.group(1))
            match = SOCKET_FAMILY.match(line)
            if match:
                families.add(match.group(1))
    return calls, families


def assert_within_the_unit(trace: Path) -> None:
    allowed, allowed_families = unit_filter()
    calls, families = traced(trace)
    assert {"openat", "connect", "execve"} <= calls, "the trace is incomplete"
    assert calls - allowed == set(), f"{trace.name}: outside SystemCallFilter"
    assert families - allowed_families == set(), f"{trace.name}: families"


def test_the_filter_is_what_it_claims() -> None:
    """The check below is not vacuous: the unit denies calls swarmkeeper lacks."""
    allowed, families = unit_filter()
    for denied in ("setuid", "setrlimit", "mount", "reboot", "init_module"):
        assert denied not in allowed
    for needed in ("openat", "connect", "clone3", "execve", "epoll_wait"):
        assert needed in allowed
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_git_ssh_signature_check_and_ssh_connection(tmp_path: Path) -> None:
    key, public = ssh_key(tmp_path / "keys", "deployer")
    allowed = tmp_path / "keys" / "allowed_signers"
    allowed.write_text(f"person@example.org {public}\n")
    remote = GitRemote(tmp_path / "repo")
    remote.commit({"a.txt": "a\n"}, "signed", sign=ssh_signing(key))
    # The port of a listener just closed: the connection is refused, after
    # ssh has resolved, opened its socket and connected as it does for git.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    trace = tmp_path / "tools.trace"
    script = (
        f"git -c gpg.ssh.allowedSignersFile={allowed} verify-commit HEAD && "
        f"{{ ssh -o BatchMode=yes -o ConnectTimeout=5 -p {port} git@localhost true; "
        "test $? = 255; }"
    )
    result = subprocess.run(
        [
            strace(),
            "-f",
            "-qq",
            "-e",
            "signal=none",
            "-o",
            str(trace),
            "sh",
            "-c",
            script,
        ],
        cwd=remote.work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_within_the_unit(trace)


@pytest.mark.engine
def test_the_daemon_with_git_and_gpg(swarm: SwarmTestBed, tmp_path: Path) -> None:
    tracer = strace()
    signer = GpgKey("Deployer <person@example.org>")
    try:
        allowed = signer.export(tmp_path / "allowed.asc")
        remote = GitRemote(tmp_path / "repo")
        remote.commit(
            cluster_files(swarm.prefix, stack(swarm.image, web=0)),
            "first",
            sign=signer.signing(),
        )
        trace = tmp_path / "daemon.trace"
        # DaemonProcess runs ``python -m swarmkeeper run``: this wrapper puts
        # strace in front of that python.
        wrapper = tmp_path / "python-under-strace"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'exec {tracer} -f -qq -e signal=none -o {trace} {sys.executable} "$@"\n'
        )
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        env = git_env(
            remote.url,
            tmp_path / "cache",
            git_verify="gpg",
            git_allowed_signers=str(allowed),
        )
        daemon = DaemonProcess(None, tmp_path / "daemon", env=env, python=str(wrapper))
        try:
            daemon.start()
            daemon.wait_ready(timeout=120)
            wait_converged(daemon, swarm.prefix, timeout=120)
            remote.commit(
                cluster_files(swarm.prefix, stack(swarm.image, web=1)),
                "second",
                sign=signer.signing(),
            )
            daemon.wait_for(
                lambda: replicas(swarm.client, swarm.name("web")) == 1,
                timeout=120,
                what="the second signed commit deployed",
            )
            # SIGTERM to the daemon itself (strace's child), as systemd sends
            # it to the main process.
            children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children")
            [child] = children.read_text().split()
            os.kill(int(child), signal.SIGTERM)
            wait_until(
                lambda: not Path(f"/proc/{child}").exists(),
                timeout=30,
                what="the daemon to exit",
            )
            # gpg started an agent for the private GNUPGHOME; it outlives the
            # daemon (under systemd the unit's cgroup ends it at stop), and
            # strace -f waits for every process it traces.
            subprocess.run(
                ["gpgconf", "--kill", "all"],
                env={**os.environ, "GNUPGHOME": str(tmp_path / "cache" / "gnupg")},
                capture_output=True,
                timeout=30,
                check=False,
            )
            wait_until(
                lambda: daemon.process.poll() is not None,
                timeout=30,
                what="strace to exit",
            )
            assert daemon.process.returncode == 0, daemon.log_tail()
        finally:
            daemon.close()
        # The trace covers the tools, not only python.
        programs = set(
            re.findall(r'^\d+\s+execve\("[^"]*/([^/"]+)"', trace.read_text(), re.M)
        )
        assert {"git", "gpg"} <= programs, programs
        assert_within_the_unit(trace)
    finally:
        signer.close()
