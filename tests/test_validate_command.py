"""``swarmkeeper validate`` as a pre-commit hook runs it: lines and a status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_loading import BAD_INPUT, REPO_STATE, write


def validate(state_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SWARMKEEPER_")
    }
    # No engine is needed: point at one that does not exist to prove it.
    environment["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    environment["SWARMKEEPER_CONFIG"] = os.devnull
    environment["HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmkeeper",
            "validate",
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in folder.rglob("*")
    }


def test_the_repo_desired_state_is_valid(tmp_path: Path) -> None:
    result = validate(REPO_STATE, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "valid: 1 stacks, 3 services, 3 cluster networks, 2 nodes" in result.stderr


@pytest.mark.parametrize(
    ("files", "expected"),
    [pytest.param(files, expected, id=name) for name, files, expected in BAD_INPUT],
)
def test_bad_input_gives_located_lines_and_status_1(
    tmp_path: Path, files: dict[str, str | bytes], expected: str
) -> None:
    state = write(tmp_path / "state", files)
    before = snapshot(tmp_path)

    result = validate(state, tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    error_lines = [
        line for line in result.stdout.splitlines() if "warning:" not in line
    ]
    assert any(expected in line for line in error_lines), result.stdout
    for line in error_lines:
        # file:line: ... or file: ... for problems about a whole file
        assert line.split(":", 1)[0] in {str(p) for p in files} | {
            str(Path(p).parent) for p in files
        }, line
    assert snapshot(tmp_path) == before, "validate wrote something"


def test_warnings_alone_keep_status_0(tmp_path: Path) -> None:
    state = write(
        tmp_path / "state",
        {
            "stacks/a.yml": "services:\n  web:\n    image: a\n    build: .\n    privileged: true\n"
        },
    )

    result = validate(state, tmp_path)

    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "stacks/a.yml:4: services.web.build: warning: ignored by swarm "
        "(the CLI says: Ignoring unsupported options)",
        "stacks/a.yml:5: services.web.privileged: warning: ignored by swarm "
        "(the CLI says: Ignoring unsupported options)",
    ]


def test_missing_state_directory_is_an_error(tmp_path: Path) -> None:
    result = validate(tmp_path / "nowhere", tmp_path)

    assert result.returncode == 1
    assert "the state directory does not exist" in result.stdout
