"""Real git repositories for tests: a working clone, a bare "remote", a server.

:class:`GitRemote` makes a bare repository on disk (the remote the daemon
follows, by ``file://`` URL) and a working clone a test commits in as a
person would: write files, commit (signed with ssh or gpg when asked), push,
force-push, delete the branch.

:class:`DumbHttpServer` serves the bare repository over HTTP (git's "dumb"
protocol: plain files, after ``git update-server-info``), so that a test can
produce what only a network remote does: a refused password, a server that
hangs, a connection refused, and then recovery, all on loopback.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Person",
    "GIT_AUTHOR_EMAIL": "person@example.org",
    "GIT_COMMITTER_NAME": "Test Person",
    "GIT_COMMITTER_EMAIL": "person@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*arguments: str, cwd: Path | None = None, env: Mapping[str, str] = {}) -> str:
    """Run git; its standard output, stripped. A failure fails the test."""
    environment = {**os.environ, **GIT_IDENTITY, **env}
    result = subprocess.run(
        ["git", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"git {' '.join(arguments)} failed ({result.returncode}): {result.stderr}"
    )
    return result.stdout.strip()


class GitRemote:
    """A bare repository on disk and a working clone that pushes to it."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.branch = branch
        self.bare = root / "remote.git"
        self.work = root / "work"
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.bare))
        git("init", "--quiet", f"--initial-branch={branch}", str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def write(self, files: Mapping[str, str | None]) -> None:
        """Write (or with None, delete) files of the working clone."""
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def commit(
        self,
        files: Mapping[str, str | None],
        message: str = "change",
        *,
        sign: Mapping[str, str] | None = None,
        push: bool = True,
    ) -> str:
        """Commit ``files`` (and push): the new commit's sha.

        ``sign`` holds ``-c`` settings and environment for a signed commit
        (see :func:`ssh_signing` and :class:`GpgKey`).
        """
        self.write(files)
        git("add", "--all", cwd=self.work)
        options: list[str] = []
        env: dict[str, str] = {}
        flags = ["--allow-empty", "--quiet", "-m", message]
        if sign is not None:
            for key, value in sign.items():
                if key.isupper():
                    env[key] = value
                else:
                    options += ["-c", f"{key}={value}"]
            flags.append("-S")
        git(*options, "commit", *flags, cwd=self.work, env=env)
        sha = git("rev-parse", "HEAD", cwd=self.work)
        if push:
            self.push()
        return sha

    def push(self, *, force: bool = False) -> None:
        flags = ["--force"] if force else []
        git("push", "--quiet", *flags, "origin", f"HEAD:{self.branch}", cwd=self.work)
        self.published()

    def reset_hard(self, revision: str) -> None:
        git("reset", "--quiet", "--hard", revision, cwd=self.work)

    def rewrite(self, files: Mapping[str, str | None], message: str) -> str:
        """Replace the branch's history with one unrelated commit; force-push it."""
        git("checkout", "--quiet", "--orphan", "rewritten", cwd=self.work)
        sha = self.commit(files, message, push=False)
        git("branch", "--quiet", "-M", self.branch, cwd=self.work)
        self.push(force=True)
        return sha

    def delete_branch(self) -> None:
        git("update-ref", "-d", f"refs/heads/{self.branch}", cwd=self.bare)
        self.published()

    def head(self) -> str:
        return git("rev-parse", self.branch, cwd=self.bare)

    def published(self) -> None:
        """Refresh the files the dumb HTTP protocol reads."""
        git("update-server-info", cwd=self.bare)


def ssh_key(folder: Path, name: str) -> tuple[Path, str]:
    """A fresh ed25519 key without passphrase: (private key path, public key line)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return key, (folder / f"{name}.pub").read_text().strip()


def ssh_signing(key: Path) -> dict[str, str]:
    """What :meth:`GitRemote.commit` needs to sign with an ssh key."""
    return {"gpg.format": "ssh", "user.signingkey": str(key)}


class GpgKey:
    """A gpg signing key without passphrase, in a temporary GNUPGHOME of its own.

    The home is a short path under /tmp: gpg-agent's socket lives there and
    socket paths are limited to 107 bytes.
    """

    def __init__(self, uid: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="skgpg"))
        self.home.chmod(0o700)
        self._gpg(
            "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"
        )
        listing = self._gpg("--with-colons", "--list-secret-keys")
        self.fingerprint = next(
            line.split(":")[9]
            for line in listing.splitlines()
            if line.startswith("fpr")
        )

    def _gpg(self, *arguments: str) -> str:
        result = subprocess.run(
            ["gpg", "--batch", "--pinentry-mode", "loopback", *arguments],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def export(self, path: Path) -> Path:
        """The armored public key, as an allowed keys file."""
        path.write_text(self._gpg("--armor", "--export", self.fingerprint))
        return path

    def signing(self) -> dict[str, str]:
        return {"user.signingkey": self.fingerprint, "GNUPGHOME": str(self.home)}

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--kill", "all"],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            capture_output=True,
            check=False,
            timeout=30,
        )
        shutil.rmtree(self.home, ignore_errors=True)


class DumbHttpServer:
    """The bare repository over HTTP on loopback, with faults a test switches on.

    ``password``: when set, requests need Basic auth ``git:<password>``
    (401 otherwise). ``hang``: requests are held without an answer until the
    mode is switched off. ``stop()``/``start()``: nothing listens (connection
    refused), then the same port again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.password: str | None = None
        self.hang = threading.Event()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, *, user: str | None = None, password: str | None = None) -> str:
        credentials = f"{user}:{password}@" if user and password else ""
        return f"http://{credentials}127.0.0.1:{self.port}/{self.folder.name}"

    def start(self) -> None:
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

            def do_GET(self) -> None:
                while server.hang.is_set():
                    time.sleep(0.05)
                if server.password is not None:
                    wanted = base64.b64encode(
                        f"git:{server.password}".encode()
                    ).decode()
                    if self.headers.get("Authorization") != f"Basic {wanted}":
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="git"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                super().do_GET()

        handler = partial(Handler, directory=str(self.folder.parent))
        for _ in range(50):
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
                break
            except OSError:  # the port of a stopped server, not free yet
                time.sleep(0.1)
        assert self._server is not None, f"cannot listen on port {self.port}"
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.hang.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def dumb_http_server(folder: Path) -> Iterator[DumbHttpServer]:
    server = DumbHttpServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
