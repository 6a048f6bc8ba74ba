"""deploy/grafana/swarmkeeper.json: every panel's query returns data.

A real daemon follows a git repository (so the git panels have series) and
converges a small desired state on the real engine; a real Prometheus
(Debian's, on loopback, with its own storage) scrapes it with the shipped
``deploy/prometheus/prometheus.yml``, changed only where a test must: a 1 s
scrape interval and the daemon's address as the one target. The test then
runs every panel's query, as Grafana would send it, and each must return at
least one series with a number (not NaN).

How the dashboard's variables are replaced (Grafana does it before sending a
query; the test does it the same way, with one selected value each):

    $job              "swarmkeeper" (the job name of the shipped config)
    $instance         the daemon's address, regex-escaped (Grafana escapes
                      the values of a variable used with =~)
    $stack            the test's stack name, regex-escaped
    $__rate_interval  RATE_INTERVAL: longer than the test's whole run, so
                      every rate() sees all the samples the test produced

The variables' own queries (``label_values(selector, label)``) are run
against the same Prometheus through its label-values API and must list the
value used above. Queries without an engine (the dashboard's shape, its
metric names) are checked too.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SwarmTestBed
from daemon_process import (
    DaemonFactory,
    daemons_fixture,  # noqa: F401 - the ``daemons`` fixture
    wait_until,
)
from gitrepo import GitRemote
from swarmkeeper.metrics import Metrics
from test_daemon import replicas, scale_service, wait_converged
from test_daemon_prometheus import Prometheus, prometheus_for, tool  # noqa: F401
from test_git_daemon import cluster_files, git_env

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "swarmkeeper.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "swarmkeeper.rules.yml"
RATE_INTERVAL = "5m"
# Grafana's own variables the dashboard may use; anything else must be one
# of the dashboard's template variables.
BUILTIN_VARIABLES = {"__rate_interval"}
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
METRIC = re.compile(r"\bswarmkeeper_\w+")


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def query_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def template_variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]

    return VARIABLE.sub(one, expr)


def promql_regex(value: str) -> str:
    """``value`` as a regex matching only itself, inside a PromQL string."""
    return re.escape(value).replace("\\", "\\\\")


def exported_metric_names() -> set[str]:
    """Every series name the daemon can export, git ones included."""
    metrics = Metrics()
    metrics.enable_git()
    # From the families, not their samples: a labelled gauge has no sample
    # until a label value is set (the stack gauges before a state loads).
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


# ----------------------------------------------------- without an engine --


def test_the_dashboard_is_complete_and_uses_real_metric_names() -> None:
    panels = query_panels()
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exported = exported_metric_names()
    defined = set(template_variables()) | BUILTIN_VARIABLES
    for panel in panels:
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            for match in VARIABLE.finditer(expr):
                assert (match.group(1) or match.group(2)) in defined, expr
            for name in METRIC.findall(expr):
                assert name in exported, f"{panel['title']}: {name} is not exported"
    # What the issue asks the dashboard to show, by the metrics that show it.
    used = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "swarmkeeper_stack_drifted_services",  # sync per stack
        "swarmkeeper_stack_unhealthy_services",  # health per stack
        "swarmkeeper_drift_resources",
        "swarmkeeper_reconcile_total",
        "swarmkeeper_reconcile_duration_seconds_bucket",
        "swarmkeeper_actions_total",
        "swarmkeeper_docker_events_total",
        "swarmkeeper_leader",
        "swarmkeeper_swarm_quorum",
        "swarmkeeper_desired_state_info",
        "swarmkeeper_git_last_sync_timestamp_seconds",
        "swarmkeeper_git_sync_ok",
    ):
        assert needed in used, f"no panel shows {needed}"


def test_the_alert_rules_use_real_metric_names() -> None:
    exported = exported_metric_names()
    for name in METRIC.findall(RULES.read_text()):
        assert name in exported, f"{RULES.name}: {name} is not exported"


# ------------------------------------------------- against a real daemon --


def scrape_config_for(target: str) -> str:
    """The shipped configuration, scraping ``target`` every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES)]
    job = config["scrape_configs"][0]
    assert job["job_name"] == "swarmkeeper"
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]
    text: str = yaml.safe_dump(config)
    return text


def label_values(server: Prometheus, query: str, values: dict[str, str]) -> list[str]:
    """A Grafana ``label_values(selector, label)`` query, run by Prometheus."""
    match = re.fullmatch(r"label_values\((.+), *(\w+)\)", query)
    assert match, query
    selector, label = substitute(match.group(1), values), match.group(2)
    code, body = server.get(
        f"/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
    )
    assert code == 200, body
    found: list[str] = json.loads(body)["data"]
    return found


@pytest.mark.engine
def test_every_panel_query_returns_data(
    swarm: SwarmTestBed,
    daemons: DaemonFactory,
    prometheus_for: list[Prometheus],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    tool("prometheus")
    p = swarm.prefix
    stack = (
        "services:\n"
        "  web:\n"
        f"    image: {swarm.image}\n"
        "    command: [sleep, '3600']\n"
        "    stop_grace_period: 1s\n"
        "    deploy: {replicas: 1}\n"
        "  idle:\n"
        f"    image: {swarm.image}\n"
        "    command: [sleep, '3600']\n"
        "    deploy: {replicas: 0}\n"
    )
    remote = GitRemote(tmp_path / "repo")
    remote.commit(cluster_files(p, stack))
    daemon = daemons(None, env=git_env(remote.url, tmp_path / "cache"))
    wait_converged(daemon, p)

    server = Prometheus(
        tmp_path / "prometheus",
        daemon.metrics_addr,
        config_text=scrape_config_for(daemon.metrics_addr),
    )
    prometheus_for.append(server)
    server.start()
    # The shipped rules load into a real server, not only into promtool.
    code, rules = server.get("/api/v1/rules")
    assert code == 200, rules
    loaded = {
        r["name"] for g in json.loads(rules)["data"]["groups"] for r in g["rules"]
    }
    assert "SwarmkeeperNoLeader" in loaded, loaded
    wait_until(
        lambda: server.query("swarmkeeper_build_info"),
        timeout=30,
        what="the first scrape in Prometheus",
        interval=0.2,
    )
    # Drift, corrected: writes, events and a few passes inside the window.
    scale_service(swarm.client, swarm.name("web"), 0)
    daemon.wait_for(
        lambda: replicas(swarm.client, swarm.name("web")) == 1,
        timeout=60,
        what="the daemon to scale web back to 1",
    )
    # Enough samples after the correction for every rate() to have two.
    samples_after = len(server.query("swarmkeeper_build_info[1h]")[0]["values"]) + 3
    wait_until(
        lambda: (
            len(server.query("swarmkeeper_build_info[1h]")[0]["values"])
            >= samples_after
        ),
        timeout=30,
        what="three more scrapes",
        interval=0.5,
    )

    values = {
        "job": "swarmkeeper",
        "instance": promql_regex(daemon.metrics_addr),
        "stack": promql_regex(p),
        "__rate_interval": RATE_INTERVAL,
    }
    expected = {"job": "swarmkeeper", "instance": daemon.metrics_addr, "stack": p}
    for name, variable in template_variables().items():
        if variable["type"] != "query":
            continue
        found = label_values(server, variable["query"]["query"], values)
        assert expected[name] in found, f"${name}: {found}"

    empty: list[str] = []
    queried = 0
    for panel in query_panels():
        for target in panel["targets"]:
            promql = substitute(target["expr"], values)
            result = server.query(promql)
            queried += 1
            numbers = [
                float(series["value"][1])
                for series in result
                if not math.isnan(float(series["value"][1]))
            ]
            if not numbers:
                empty.append(f"{panel['title']}: {promql} -> {result}")
    print(f"{queried} panel queries, {len(empty)} without data")
    assert not empty, "\n".join(empty)
    # The firing example: the drift just corrected shows in the counters.
    writes = server.query(
        substitute(
            'sum(increase(swarmkeeper_actions_total{job="$job", result="success"}'
            "[$__rate_interval]))",
            values,
        )
    )
    assert float(writes[0]["value"][1]) > 0
