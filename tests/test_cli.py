"""The command line as an operator meets it: a real process, its output, its status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmkeeper import __version__

CONSOLE_SCRIPT = Path(sys.executable).parent / "swarmkeeper"


def run_swarmkeeper(
    *arguments: str, env: dict[str, str] | None = None, module: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SWARMKEEPER_")
    }
    # A config file under /etc on the machine running the tests must not
    # change what these tests see.
    environment["SWARMKEEPER_CONFIG"] = os.devnull
    environment.update(env or {})
    command = [sys.executable, "-m", "swarmkeeper"] if module else [str(CONSOLE_SCRIPT)]
    return subprocess.run(
        [*command, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("module", [True, False], ids=["python-m", "console-script"])
def test_version(module: bool) -> None:
    result = run_swarmkeeper("--version", module=module)

    assert result.returncode == 0
    assert result.stdout.strip() == f"swarmkeeper {__version__}"


def test_invalid_metrics_address_ends_with_one_line_and_status_2() -> None:
    result = run_swarmkeeper("run", env={"SWARMKEEPER_METRICS_ADDR": "nonsense"})

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "swarmkeeper: invalid setting SWARMKEEPER_METRICS_ADDR='nonsense': "
        "expected HOST:PORT, such as 127.0.0.1:9488"
    ]


def test_invalid_flag_value_names_the_flag() -> None:
    result = run_swarmkeeper("run", "--resync-interval", "0")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "swarmkeeper: invalid setting --resync-interval='0'"
    )


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    config = tmp_path / "swarmkeeper.toml"
    config.write_text("[broken\n")

    result = run_swarmkeeper("plan", "--config", str(config))

    assert result.returncode == 2
    assert result.stderr.startswith(f"swarmkeeper: config file {config}:")
    assert "Traceback" not in result.stderr


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = run_swarmkeeper("frobnicate")

    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "run"])
def test_every_subcommand_has_help(command: str) -> None:
    result = run_swarmkeeper(command, "--help")

    assert result.returncode == 0
    assert "--state-dir" in result.stdout
