"""The systemd unit and its example environment file, checked for real.

Process 1 is not systemd on the machines the suite runs on, but
``systemd-analyze verify`` and ``systemd-analyze security --offline=yes``
work on a unit file alone. ``verify`` only warns about most mistakes (an
unknown key, a bad value, a misspelt ``Type=``) and still exits 0, so any
output at all fails the check. ``systemd-analyze`` comes from Debian's
``systemd`` package, installed by ``scripts/test-deps.sh``.

The notify protocol itself (READY=1 after the first pass, WATCHDOG=1 at half
``WATCHDOG_USEC``, STOPPING=1 on SIGTERM) is tested against a real daemon in
``tests/test_daemon.py``.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarmkeeper.serving import STALL_SECONDS
from swarmkeeper.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "swarmkeeper.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "swarmkeeper.env"
INSTALL_GUIDE = ROOT / "docs" / "install.md"
INSTALLED_EXEC = "/opt/swarmkeeper/venv/bin/swarmkeeper"

# The exposure score systemd-analyze gives the unit (0 safest, 10 worst); it
# was 1.3 ("OK") when written. What remains is what swarmkeeper needs: its
# network, the socket's group, the host's root directory.
EXPOSURE_THRESHOLD = 2.0

REQUIRE = os.environ.get("SWARMKEEPER_REQUIRE_ENGINE") == "1"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze", path=SEARCH_PATH)
    if found is None:
        message = "systemd-analyze is not installed; run scripts/test-deps.sh"
        if REQUIRE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def unit_settings(text: str) -> dict[str, list[str]]:
    """``KEY=VALUE`` lines of a unit as {key: [values in order]}, sections ignored."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def checkable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ONLY its ExecStart= line pointing at this venv's swarmkeeper.

    ``verify`` wants the program to exist where it runs, and
    /opt/swarmkeeper/venv (the path docs/install.md installs to) does not
    exist on a test machine. Every other line is checked as shipped.
    """
    text = UNIT.read_text() if text is None else text
    here = Path(sys.executable).parent / "swarmkeeper"
    assert here.is_file(), f"{here} is missing: is the package installed in the venv?"
    rewritten = text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={here} ")
    assert rewritten.count(f"ExecStart={here} ") == 1
    copy = tmp_path / "swarmkeeper.service"
    copy.write_text(rewritten)
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestUnit:
    def test_verify_prints_nothing_and_succeeds(self, tmp_path: Path) -> None:
        result = verify(checkable_copy(tmp_path))
        assert (result.returncode, result.stdout + result.stderr) == (0, "")

    def test_verify_output_catches_a_mistake_that_exits_0(self, tmp_path: Path) -> None:
        """The check above can fail: a misspelt key only warns, and is seen."""
        text = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=")
        result = verify(checkable_copy(tmp_path, text))
        assert "WatchdogSecs" in result.stdout + result.stderr

    def test_exposure_is_under_the_threshold(self, tmp_path: Path) -> None:
        unit = checkable_copy(tmp_path)
        result = subprocess.run(
            [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        match = re.search(
            r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout
        )
        assert match, result.stdout + result.stderr
        exposure = float(match.group(1))
        print(f"exposure {exposure} (threshold {EXPOSURE_THRESHOLD})")
        assert exposure <= EXPOSURE_THRESHOLD

    def test_what_the_issue_and_the_daemon_require(self) -> None:
        unit = unit_settings(UNIT.read_text())
        assert unit["Type"] == ["notify"]
        assert unit["Restart"] == ["on-failure"]
        assert unit["RestartPreventExitStatus"] == ["2"]  # bad settings exit 2
        assert "docker.service" in unit["After"][0].split()
        assert unit["EnvironmentFile"] == ["-/etc/swarmkeeper/swarmkeeper.env"]
        assert unit["ExecStart"] == [f"{INSTALLED_EXEC} run"]
        assert unit["CapabilityBoundingSet"] == [""]
        assert unit["NoNewPrivileges"] == ["yes"]
        assert unit["ProtectSystem"] == ["strict"]
        # The daemon stops pinging once its loop is silent for STALL_SECONDS:
        # the watchdog must not fire before /healthz would report that.
        watchdog = float(unit["WatchdogSec"][0])
        assert watchdog > STALL_SECONDS
        # The socket is reached by group; cache_dir is the StateDirectory.
        assert unit["SupplementaryGroups"] == ["docker"]
        assert unit["StateDirectory"] == ["swarmkeeper"]
        assert Settings.model_fields["state_dir"].default == Path(
            "/etc/swarmkeeper/desired-state"
        )


class TestMemoryDenyWriteExecute:
    """MemoryDenyWriteExecute=yes must not break Python, git, ssh or gpg.

    systemd enforces it with a seccomp filter; Linux 6.3 and later offer the
    same rule to any process (prctl PR_SET_MDWE, inherited across fork and
    exec), so the programs are run under it here.
    """

    PR_SET_MDWE = 65
    PR_MDWE_REFUSE_EXEC_GAIN = 1

    def run_under_mdwe(self, *command: str) -> subprocess.CompletedProcess[str]:
        def deny_write_execute() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(self.PR_SET_MDWE, self.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")

        return subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            # In the child, between fork and exec: the rule then holds for the
            # program from its very first mapping.
            preexec_fn=deny_write_execute,
        )

    def test_the_swarmkeeper_process_and_its_tools_run(self, tmp_path: Path) -> None:
        try:
            self.run_under_mdwe(sys.executable, "-c", "pass")
        except subprocess.SubprocessError:
            pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
        state = tmp_path / "state"
        (state / "stacks").mkdir(parents=True)
        (state / "stacks" / "web.yml").write_text(
            "services:\n  web:\n    image: nginx:1.27\n"
        )
        # Loading a desired state exercises pydantic-core, libyaml, jsonschema.
        result = self.run_under_mdwe(
            sys.executable, "-m", "swarmkeeper", "validate", "--state-dir", str(state)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        for tool, flag in (("git", "--version"), ("ssh", "-V"), ("gpg", "--version")):
            path = shutil.which(tool)
            if path is None:
                continue  # the image test checks the image's own copies
            result = self.run_under_mdwe(path, flag)
            assert result.returncode == 0, f"{tool}: {result.stderr}"


class TestEnvironmentFile:
    def documented(self) -> dict[str, str]:
        """``SWARMKEEPER_X=value`` lines (commented out or not): {name: value}."""
        pattern = re.compile(r"^#?(SWARMKEEPER_[A-Z0-9_]+)=(.*)$")
        found: dict[str, str] = {}
        for line in ENV_FILE.read_text().splitlines():
            match = pattern.match(line.strip())
            if match:
                assert match.group(1) not in found, f"{match.group(1)} twice"
                found[match.group(1)] = match.group(2)
        return found

    def test_every_setting_is_documented_with_its_default(self) -> None:
        documented = self.documented()
        for name, field in Settings.model_fields.items():
            variable = "SWARMKEEPER_" + name.upper()
            assert variable in documented, f"{variable} is not in {ENV_FILE.name}"
            shown = documented[variable]
            default = field.default
            if default is None:
                assert shown == "", f"{variable}: the default is none, shown {shown!r}"
            elif isinstance(default, bool):
                assert shown == str(default).lower(), variable
            elif isinstance(default, int | float):
                assert float(shown) == default, variable
            else:
                assert shown == str(default), variable

    def test_lines_are_plain_assignments(self) -> None:
        """systemd takes KEY=VALUE: no ``export``, no spaces around ``=``.

        A value with spaces must be in double quotes (systemd strips them).
        """
        assignment = re.compile(r"#?[A-Z][A-Z0-9_]*=(\S*|\"[^\"]*\")")
        for number, line in enumerate(ENV_FILE.read_text().splitlines(), 1):
            if re.match(r"#?[A-Z][A-Z0-9_]*=", line) or (
                line and not line.startswith("#")
            ):
                assert assignment.fullmatch(line), f"line {number}: {line}"
