"""deploy/prometheus/: the example configuration and the alerting rules.

``promtool`` (Debian's prometheus package, from ``scripts/test-deps.sh``)
checks the configuration and the rules and runs the rules' unit tests
(``swarmkeeper.rules.test.yml``), in which every alert has a case where it
fires and one where it does not; this module checks that last promise too,
and that the unit tests can fail. ``promtool check metrics`` on a real
daemon's exposition is in ``tests/test_daemon_prometheus.py``; that the rules
name only metrics the daemon exports, and that a real Prometheus loads them,
is in ``tests/test_deploy_grafana.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from test_daemon_prometheus import tool

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "prometheus"
CONFIG = FOLDER / "prometheus.yml"
RULES = FOLDER / "swarmkeeper.rules.yml"
RULE_TESTS = FOLDER / "swarmkeeper.rules.test.yml"


def promtool(*args: str, cwd: Path = FOLDER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def alert_names() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [
        rule["alert"]
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_promtool_accepts_the_config_and_the_rules() -> None:
    config = promtool("check", "config", CONFIG.name)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout  # the rules are wired in
    rules = promtool("check", "rules", RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_issue_alerts_exist() -> None:
    assert set(alert_names()) >= {
        "SwarmkeeperDriftPersisting",
        "SwarmkeeperReconcileFailing",
        "SwarmkeeperDesiredStateInvalid",
        "SwarmkeeperGitSyncStale",
        "SwarmkeeperGitSyncFailing",
        "SwarmkeeperEngineUnreachable",
        "SwarmkeeperNoLeader",
        "SwarmkeeperTwoLeaders",
        "SwarmkeeperQuorumLost",
    }


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: list[dict[str, Any]] = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for name in alert_names():
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name} always fires"


def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """A rule that fires too early fails its test: the tests can fail."""
    shutil.copy(RULE_TESTS, tmp_path)
    rules = RULES.read_text()
    assert rules.count("for: 5m") >= 1
    (tmp_path / RULES.name).write_text(rules.replace("for: 5m", "for: 1m"))
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "SwarmkeeperDriftPersisting" in result.stdout + result.stderr
