"""scripts/local-swarm.sh: CI relies on it failing loudly when no engine starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "local-swarm.sh"


def test_up_fails_with_the_engine_log_when_dockerd_cannot_start(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_dockerd = fake_bin / "dockerd"
    fake_dockerd.write_text(
        "#!/bin/sh\necho 'failed to start daemon: simulated breakage' >&2\nexit 1\n"
    )
    fake_dockerd.chmod(0o755)
    environment = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "DOCKER_HOST": f"unix://{tmp_path}/engine.sock",
        "SWARMKEEPER_LOCAL_DIR": str(tmp_path / "state"),
    }

    result = subprocess.run(
        [str(SCRIPT), "up"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert result.returncode != 0
    assert "simulated breakage" in result.stderr
    assert "could not start the Docker engine" in result.stderr
    assert not (tmp_path / "state" / "engine-started-by-script").exists()


def test_status_reports_an_absent_engine(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "DOCKER_HOST": f"unix://{tmp_path}/engine.sock",
        "SWARMKEEPER_LOCAL_DIR": str(tmp_path / "state"),
    }

    result = subprocess.run(
        [str(SCRIPT), "status"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert f"not reachable at unix://{tmp_path}/engine.sock" in result.stdout
