"""What the report says about the machine and the software measured."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _first_line(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError:
        pass
    return ""


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, memory, kernel, OS, and the load when the run began."""
    memory_kib = _first_line("/proc/meminfo", "MemTotal").split()
    os_name = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cpu": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory_kib[0]) / 1024 / 1024, 1) if memory_kib else 0,
        "kernel": platform.release(),
        "os": os_name,
        "load_at_start": _load_average(),
    }


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
    ).stdout.strip()


def describe_versions(
    engine_version: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    """Engine, CLI, Python and the swarmkeeper commit (with uncommitted files)."""
    cli = subprocess.run(
        ["docker", "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    ).stdout.strip()
    return {
        "engine": engine_version.get("Version"),
        "engine_api": engine_version.get("ApiVersion"),
        "cli": cli,
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "uncommitted": [
            line[3:]
            for line in git("status", "--porcelain", "--", "src").splitlines()
            if line.strip()
        ],
    }
