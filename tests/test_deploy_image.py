"""The container image, deployed as ``deploy/stack.yml`` says, converges a git repository.

The test does what an operator does, on the engine the suite uses
(``DOCKER_HOST``; in CI the local single-node swarm):

1. makes the base image with ``scripts/base-image.sh`` (Debian packages, no
   registry) and the image from the repository's ``Dockerfile`` on that
   engine, offline: pip installs from a wheelhouse downloaded on this machine
   (``./wheelhouse``, the Dockerfile's documented offline build), since the
   engine may have no route to a package index (private engines have none);
2. deploys ``deploy/stack.yml`` with ``deploy/stack-webhook.yml`` through the
   real ``docker stack deploy``, as stack ``<prefix>``, plus an override
   that only does what a test must: the engine's own socket path, the test's
   repository bind-mounted read-only, a 1 s health-check interval;
3. reads the outcome with the Docker SDK: the repository's service appears
   with the committed spec and the commit's revision label, the swarmkeeper
   task turns healthy through the image's own ``HEALTHCHECK``, every process
   of it runs as uid 10001, and the webhook secret (a swarm secret) is the
   one the daemon checks calls against.

Caching, so that a rerun is fast: the base image and the swarmkeeper image
stay on the engine under tags made of a hash of their inputs (the same
sources are not built twice; older tags of the two names are removed), and
the wheelhouse is downloaded again only when ``constraints.txt`` or
``pyproject.toml`` change. Everything else the test makes (the stack's
service, network, volume and secret, the desired service) is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import yaml

from conftest import SwarmTestBed
from daemon_process import free_port, require_swarm_to_ourselves
from gitrepo import GitRemote
from test_daemon import service_spec

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = REPO / "wheelhouse"
IMAGE_REPOSITORY = "swarmkeeper-test/swarmkeeper"
BASE_REPOSITORY = "swarmkeeper-base/python"
DAEMON_UID = 10001
# Where the override mounts the test's bare repository inside the container.
REPOSITORY_MOUNT = "/srv/desired.git"
DEADLINE = 120.0  # a task start, a fetch and a pass; generous for a busy machine


# ------------------------------------------------------------- the images --


def engine_socket() -> Path:
    """The unix socket of the engine the suite uses, as DOCKER_HOST names it."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip(f"the stack mounts the engine's unix socket; DOCKER_HOST is {host}")
    return Path(host.removeprefix("unix://"))


def base_image() -> str:
    """The registry-free base, made (or found) by scripts/base-image.sh."""
    result = subprocess.run(
        [str(REPO / "scripts" / "base-image.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"base-image.sh failed:\n{result.stderr}"
    return result.stdout.strip()


def wheelhouse() -> None:
    """Wheels of every pinned runtime dependency (and the build backend)."""
    inputs = hashlib.sha256()
    for name in ("constraints.txt", "pyproject.toml"):
        inputs.update((REPO / name).read_bytes())
    stamp = WHEELHOUSE / ".inputs"
    if stamp.is_file() and stamp.read_text() == inputs.hexdigest():
        return
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet"),
            *("--disable-pip-version-check", "--only-binary=:all:"),
            *("-c", "constraints.txt", "-d", str(WHEELHOUSE)),
            *(".", "setuptools>=77", "wheel"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"pip download failed:\n{result.stderr}"
    stamp.write_text(inputs.hexdigest())


def context_digest(base: str) -> str:
    """A hash of everything the build reads: the same inputs, the same image."""
    digest = hashlib.sha256(base.encode())
    files = [REPO / name for name in ("Dockerfile", ".dockerignore", "README.md")]
    files += [REPO / "pyproject.toml", REPO / "constraints.txt"]
    files += sorted(
        path
        for path in (REPO / "src").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    files += sorted(WHEELHOUSE.glob("*.whl"))
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def remove_other_tags(client: Any, repository: str, keep: str) -> None:
    """Earlier cached versions go; one in use by a container stays."""
    for image in client.images.list(name=repository):
        if keep in image.tags:
            continue
        for tag in image.tags:
            # In use by a container, or already gone: left as it is.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag)


def swarmkeeper_image(client: Any) -> str:
    """The repository's Dockerfile built on the suite's engine, offline."""
    base = base_image()
    wheelhouse()
    tag = f"{IMAGE_REPOSITORY}:{context_digest(base)}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        before = {image.id for image in client.images.list(filters={"dangling": True})}
        client.images.build(
            path=str(REPO),
            tag=tag,
            buildargs={
                "BASE": base,
                "PIP_NO_INDEX": "1",
                "PIP_FIND_LINKS": "/src/wheelhouse",
            },
            rm=True,
            forcerm=True,
        )
        # The build stage's last layer is left untagged by the legacy builder.
        for image in client.images.list(filters={"dangling": True}):
            if image.id not in before:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id)
    remove_other_tags(client, IMAGE_REPOSITORY, keep=tag)
    remove_other_tags(client, BASE_REPOSITORY, keep=base)
    return tag


# -------------------------------------------------------------- the stack --


def desired_state(prefix: str, image: str) -> dict[str, str | None]:
    """One stack, ``<prefix>_app``, with one service whose spec is checked."""
    return {
        f"cluster/stacks/{prefix}_app.yml": (
            "services:\n"
            "  web:\n"
            f"    image: {image}\n"
            "    command: [sleep, '3600']\n"
            "    stop_grace_period: 1s\n"
            "    environment: {GREETING: from-git}\n"
            "    labels: {team: platform}\n"
            "    deploy: {replicas: 1}\n"
        ),
        # Nothing but this test's objects may be touched, even if another
        # session's appear on the swarm while the test runs.
        "cluster/policy.yml": "prune: false\n",
    }


def override(socket: Path, repository: Path) -> str:
    """What the test changes in the operator's stack: paths and timing only."""
    return json.dumps(
        {
            "version": "3.8",
            "services": {
                "swarmkeeper": {
                    "volumes": [
                        # Merged by target: replaces /var/run/docker.sock's source.
                        {
                            "type": "bind",
                            "source": str(socket),
                            "target": "/var/run/docker.sock",
                        },
                        {
                            "type": "bind",
                            "source": str(repository),
                            "target": REPOSITORY_MOUNT,
                            "read_only": True,
                        },
                    ],
                    # Only the timing: the test itself is the image's HEALTHCHECK.
                    "healthcheck": {"interval": "1s", "start_period": "60s"},
                }
            },
        },
        indent=2,
    )


def docker_cli(*arguments: str, env: dict[str, str] | None = None) -> str:
    """The real docker client against the suite's engine; fails the test on error."""
    result = subprocess.run(
        ["docker", *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, (
        f"docker {' '.join(arguments)} failed ({result.returncode}):\n{result.stderr}"
    )
    return result.stdout


def stack_files(*extra: Path) -> list[str]:
    files = [REPO / "deploy" / "stack.yml", REPO / "deploy" / "stack-webhook.yml"]
    return [argument for path in (*files, *extra) for argument in ("-c", str(path))]


def daemon_container(client: Any, service: str) -> Any | None:
    """The running container of the swarmkeeper service (one node here)."""
    found = client.containers.list(
        filters={"label": f"com.docker.swarm.service.name={service}"}
    )
    return found[0] if found else None


def in_container(container: Any, script: str) -> tuple[int, str]:
    """Run Python inside the daemon's container (the host may not reach it)."""
    code, output = container.exec_run(["python3", "-c", script])
    return int(code), output.decode(errors="replace")


def assert_runs_as_non_root(container: Any, socket: Path) -> None:
    """Every process (tini and the daemon) runs as uid 10001, in the socket's group."""
    processes = container.top(ps_args="-o pid,uid,args")
    uid_column = processes["Titles"].index("UID")
    rows = processes["Processes"]
    assert any("swarmkeeper run" in " ".join(row) for row in rows), rows
    assert {row[uid_column] for row in rows} == {str(DAEMON_UID)}, rows
    code, identity = in_container(
        container,
        "import os; print(os.getuid(), os.getgid(), os.access('/var/run/docker.sock', os.W_OK))",
    )
    expected = [str(DAEMON_UID), str(socket.stat().st_gid), "True"]
    assert (code, identity.split()) == (0, expected)


def assert_webhook_uses_the_swarm_secret(container: Any, secret: str) -> None:
    """A call signed with the secret's value is accepted, another refused."""
    code, answers = in_container(
        container,
        "import hashlib, hmac, urllib.error, urllib.request\n"
        "def call(secret):\n"
        "    body = b'{}'\n"
        "    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()\n"
        "    request = urllib.request.Request('http://127.0.0.1:9489/hooks/git', data=body,\n"
        "        headers={'X-Hub-Signature-256': 'sha256=' + signature})\n"
        "    try:\n"
        "        return urllib.request.urlopen(request, timeout=5).status\n"
        "    except urllib.error.HTTPError as error:\n"
        "        return error.code\n"
        f"print(call({secret!r}), call('wrong'))\n",
    )
    assert (code, answers.split()) == (0, ["202", "401"])


def assert_metrics(container: Any) -> None:
    """Read where a scraper on the stack's network reads: leader, git in sync."""
    code, metrics = in_container(
        container,
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9488/metrics').read().decode())",
    )
    assert code == 0, metrics
    assert "swarmkeeper_leader 1.0" in metrics
    assert "swarmkeeper_git_sync_ok 1.0" in metrics


@pytest.fixture
def stack_name(swarm: SwarmTestBed) -> Iterator[str]:
    """The stack the test deploys, taken down before the test bed's clean-up.

    The daemon must be gone first: it would re-create the desired service
    that the clean-up removes. Its volume is a node-local object, which the
    clean-up does not know, so it is removed here once no container holds it.
    """
    name = swarm.prefix
    yield name
    client = swarm.client
    # The daemon's last words, shown by pytest when the test failed.
    logs = subprocess.run(
        ["docker", "service", "logs", "--tail", "40", f"{name}_swarmkeeper"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    print(logs.stdout[-20000:], logs.stderr[-5000:])
    for service in client.services.list(
        filters={"label": f"com.docker.stack.namespace={name}"}
    ):
        service.remove()
    deadline = time.monotonic() + 60
    volume = f"{name}_cache"
    while time.monotonic() < deadline:
        if not client.containers.list(all=True, filters={"volume": volume}):
            break
        time.sleep(0.5)
    with contextlib.suppress(docker.errors.NotFound):
        client.volumes.get(volume).remove()


# --------------------------------------------------------------- the test --


def test_the_image_as_the_stacks_service_converges_a_git_repository(
    swarm: SwarmTestBed, stack_name: str, tmp_path: Path
) -> None:
    client = swarm.client
    socket = engine_socket()
    started = time.monotonic()
    image = swarmkeeper_image(client)
    built = time.monotonic()

    remote = GitRemote(tmp_path / "repo")
    commit = remote.commit(desired_state(swarm.prefix, swarm.image), "a web service")
    # git refuses a repository owned by another user ("dubious ownership"):
    # the daemon's uid owns it, as it would own a repository an operator
    # mounts into the container.
    for path in [remote.bare, *remote.bare.rglob("*")]:
        os.chown(path, DAEMON_UID, DAEMON_UID, follow_symlinks=False)
    webhook_secret = "s3cret-" + swarm.prefix
    client.secrets.create(
        name=swarm.name("webhook"),
        data=f'git_webhook_secret = "{webhook_secret}"\n'.encode(),
    )
    (tmp_path / "override.yml").write_text(override(socket, remote.bare))

    require_swarm_to_ourselves(client, swarm.prefix)
    docker_cli(
        *("stack", "deploy", "-d", "--resolve-image", "never"),
        *stack_files(tmp_path / "override.yml"),
        stack_name,
        env={
            "DOCKER_GID": str(socket.stat().st_gid),
            "SWARMKEEPER_IMAGE": image,
            "SWARMKEEPER_GIT_URL": f"file://{REPOSITORY_MOUNT}",
            "SWARMKEEPER_GIT_PATH": "cluster",
            "SWARMKEEPER_GIT_INTERVAL": "1",
            "SWARMKEEPER_WEBHOOK_SECRET": swarm.name("webhook"),
            "SWARMKEEPER_WEBHOOK_PORT": str(free_port()),
        },
    )
    daemon_service = f"{stack_name}_swarmkeeper"

    # The repository's service, with the committed spec and the commit's label.
    web = swarm.name("app_web")
    swarm.wait_for(
        lambda: service_spec(client, web) is not None,
        timeout=DEADLINE,
        what=f"{web} to be created by the daemon in the container",
    )
    spec = service_spec(client, web) or {}
    container_spec = spec["TaskTemplate"]["ContainerSpec"]
    assert container_spec["Image"] == swarm.image
    assert container_spec["Args"] == ["sleep", "3600"]
    assert "GREETING=from-git" in container_spec["Env"]
    assert container_spec["Labels"]["team"] == "platform"
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["Labels"]["swarmkeeper.managed"] == "true"
    assert spec["Labels"]["swarmkeeper.revision"] == commit
    swarm.wait_for(
        lambda: len(swarm.running_tasks(web)) == 1,
        timeout=DEADLINE,
        what=f"{web}'s task to run",
    )
    converged = time.monotonic()

    # The daemon's own service is not one it owns, so it is never pruned.
    daemon_spec = service_spec(client, daemon_service) or {}
    assert "swarmkeeper.managed" not in (daemon_spec.get("Labels") or {})

    # Healthy by the image's own HEALTHCHECK (the override sets only timing).
    def health() -> str | None:
        container = daemon_container(client, daemon_service)
        if container is None:
            return None
        state: dict[str, Any] = container.attrs["State"]
        return str(state.get("Health", {}).get("Status"))

    swarm.wait_for(
        lambda: health() == "healthy",
        timeout=DEADLINE,
        what=f"{daemon_service}'s container to be healthy (last: {health()})",
    )
    container = daemon_container(client, daemon_service)
    assert container is not None
    assert container.attrs["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "python3"]
    healthy = time.monotonic()

    assert_runs_as_non_root(container, socket)
    assert_webhook_uses_the_swarm_secret(container, webhook_secret)
    assert_metrics(container)

    print(
        f"\nimage {image}: ready in {built - started:.1f} s "
        f"(base, wheels, build or cache); deployed and converged in "
        f"{converged - built:.1f} s; healthy after {healthy - built:.1f} s"
    )


def test_the_ssh_overlay_merges_into_a_valid_stack(tmp_path: Path) -> None:
    """deploy/stack-ssh.yml, checked by the real CLI (no ssh server is run)."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    merged = docker_cli(
        "stack",
        "config",
        *stack_files(REPO / "deploy" / "stack-ssh.yml"),
        env={
            "DOCKER_GID": "999",
            "SWARMKEEPER_GIT_URL": "git@git.example:ops/cluster.git",
        },
    )
    service = yaml.safe_load(merged)["services"]["swarmkeeper"]
    targets = {secret["target"]: secret for secret in service["secrets"]}
    assert set(targets) == {"swarmkeeper.toml", "ssh_key", "known_hosts"}
    assert targets["ssh_key"]["uid"] == str(DAEMON_UID)
    assert stat.S_IMODE(int(targets["ssh_key"]["mode"])) == 0o400
    assert "-i /run/secrets/ssh_key" in service["environment"]["GIT_SSH_COMMAND"]
    assert service["user"] == "10001:999"
