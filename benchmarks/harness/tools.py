"""The two commands compared, each run as a whole process and timed.

The code under test is frozen when a run starts: src/ is copied into the
run's temporary folder and put first on PYTHONPATH (ahead of the editable
install), so edits to src/ during a run cannot change it halfway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.machine import REPO

PYTHON = Path(sys.executable)
SWARMKEEPER = PYTHON.parent / "swarmkeeper"


@dataclass(frozen=True)
class Run:
    """One process run: wall time from start to exit, and what it said."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def brief(self) -> dict[str, Any]:
        """What the raw JSON keeps: the time, the status, tails of the output."""
        return {
            "seconds": round(self.seconds, 4),
            "returncode": self.returncode,
            "stdout_tail": self.stdout[-400:],
            "stderr_tail": self.stderr[-800:],
        }

    def check(self, what: str) -> Run:
        if self.returncode != 0:
            raise RuntimeError(
                f"{what} exited {self.returncode}: {self.stderr[-1500:]}"
                f"{self.stdout[-1500:]}"
            )
        return self


class Tools:
    """``swarmkeeper apply`` (frozen code) and ``docker stack deploy``."""

    def __init__(self, workdir: Path) -> None:
        self.source = workdir / "source"
        shutil.copytree(
            REPO / "src",
            self.source,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
        # Compile now, so that no measured run pays for writing .pyc files.
        subprocess.run(
            [str(PYTHON), "-m", "compileall", "-q", str(self.source)], check=True
        )
        # No SWARMKEEPER_* setting of the caller and no config file may change
        # what is measured; DOCKER_HOST stays, for both tools alike.
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("SWARMKEEPER_")
            and key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
        }
        self.env["SWARMKEEPER_CONFIG"] = os.devnull
        self.env["PYTHONPATH"] = str(self.source)

    def timed(self, argv: list[str]) -> Run:
        started = time.perf_counter()
        process = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, check=False
        )
        return Run(
            time.perf_counter() - started,
            process.returncode,
            process.stdout,
            process.stderr,
        )

    def apply_command(self, state_dir: Path) -> list[str]:
        # The venv's console script, as operators run it.
        return [str(SWARMKEEPER), "apply", "--state-dir", str(state_dir)]

    def apply(self, state_dir: Path) -> Run:
        return self.timed(self.apply_command(state_dir))

    def deploy(self, compose: Path, stack: str) -> Run:
        return self.timed(
            [
                "docker", "stack", "deploy", "--resolve-image", "never",
                "--detach=true", "-c", str(compose), stack,
            ]
        )  # fmt: skip
