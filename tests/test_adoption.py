"""Adoption: stacks deployed with ``docker stack deploy``, taken over by ``apply``.

A cluster that swarmkeeper starts to manage was deployed by hand with the
CLI. The first ``plan`` must show nothing but the take-over: the ownership
label on each service and, for services with configs or secrets, the one-time
move to content-addressed names. Anything else would be a difference between
swarmkeeper's conversion and the CLI's, which would roll every task of the
cluster on its first ``apply``.

Every case of ``tests/compose_corpus/`` is deployed with the CLI and adopted
(their images are not on the engine, so their tasks never run). A stack of
the runnable test image shows the point of it: adoption keeps running tasks.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmTestBed
from test_compose_corpus import (
    CASES,
    Case,
    create_externals,
    deploy_with_cli,
    stack_model,
)
from test_plan_apply import (
    expect_status,
    plan_document,
    require_swarm_to_ourselves,
    run_swarmkeeper,
    shown,
    snapshot,
    wait_until_stable,
    writes_reported,
)

pytestmark = pytest.mark.engine

MANAGED = "swarmkeeper.managed"
NAMESPACE = "com.docker.stack.namespace"
OWNERSHIP_FIELD = f"Labels.{MANAGED}"
REFERENCE_FIELDS = {
    "configs": "TaskTemplate.ContainerSpec.Configs",
    "secrets": "TaskTemplate.ContainerSpec.Secrets",
}


@pytest.fixture(autouse=True)
def _swarm_to_ourselves(swarm: SwarmTestBed) -> None:
    require_swarm_to_ourselves(swarm)


def process_environment(variables: Mapping[str, str], home: Path) -> dict[str, str]:
    """The same few variables for the CLI and for swarmkeeper: both interpolate."""
    home.mkdir(exist_ok=True)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    if "DOCKER_HOST" in os.environ:
        environment["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    return {**environment, **variables}


def stack_folder(tmp_path: Path, stack: str) -> Path:
    """``<tmp>/state/stacks/<stack>/``: a stack folder of a fresh state directory."""
    folder = tmp_path / "state" / "stacks" / stack
    folder.parent.mkdir(parents=True)
    return folder


def uses_own(model: Mapping[str, Any], service: str, kind: str) -> bool:
    """Whether the service names a config (or secret) the stack itself creates."""
    top = model.get(kind) or {}
    for reference in model["services"][service].get(kind) or []:
        source = reference if isinstance(reference, str) else reference["source"]
        if not (top.get(source) or {}).get("external"):
            return True
    return False


def expected_field_paths(case: Case, stack: str) -> dict[str, set[str]]:
    """``expected_differences`` as plan field paths, by full service name."""
    paths: dict[str, set[str]] = {}
    for item in case.expected_differences:
        kind, name, *rest = item.path.split("/")
        assert kind == "services", f"{case.folder.name}: unexpected {item.path}"
        service = name.replace("STACK", stack, 1)
        paths.setdefault(service, set()).add(".".join(rest))
    return paths


def reference_names(references: Any, name_key: str) -> dict[str, str]:
    return {r["File"]["Name"]: r[name_key] for r in references or []}


def check_renamed_references(field: Mapping[str, Any], kind: str, service: str) -> None:
    """Each reference keeps its target; a stack-made one gains a content hash."""
    name_key = "ConfigName" if kind == "configs" else "SecretName"
    old = reference_names(field["old"], name_key)
    new = reference_names(field["new"], name_key)
    assert set(old) == set(new), f"{service}: {kind} targets changed: {field}"
    renamed = 0
    for target, name in old.items():
        if new[target] != name:
            assert re.fullmatch(re.escape(name) + r"-[0-9a-f]{10}", new[target]), (
                f"{service}: {kind} {name!r} became {new[target]!r}"
            )
            renamed += 1
    assert renamed, f"{service}: {kind} changed, but no name did: {field}"


@pytest.mark.parametrize("case_folder", CASES, ids=[path.name for path in CASES])
def test_a_corpus_stack_deployed_by_the_cli_is_only_adopted(
    case_folder: Path, swarm: SwarmTestBed, tmp_path: Path
) -> None:
    client, stack = swarm.client, swarm.prefix
    case = Case.load(case_folder)
    folder = stack_folder(tmp_path, stack)
    shutil.copytree(case_folder, folder)
    state_dir = folder.parent.parent
    environment = process_environment(
        {**case.environ, "CORPUS_PREFIX": stack}, tmp_path / "home"
    )

    model = stack_model(folder, environment)
    create_externals(client, model)
    deploy_with_cli(folder, stack, environment)
    deployed = {
        s["Spec"]["Name"]
        for s in client.api.services(filters={"label": f"{NAMESPACE}={stack}"})
    }
    assert deployed == {f"{stack}_{name}" for name in model["services"]}

    document = plan_document(state_dir, base_env=environment)

    listed = "\n".join(
        f"{c['kind']} {c['name']} ({c['action']}): "
        + ", ".join(f["path"] for f in c["fields"])
        for c in document["changes"]
    )
    others = [
        c
        for c in document["changes"]
        if not (c["kind"] == "service" and c["action"] == "adopt")
        and not (c["kind"] in ("config", "secret") and c["action"] == "create")
    ]
    assert not others, f"more than adoption:\n{listed}"

    adopted = {c["name"]: c for c in document["changes"] if c["kind"] == "service"}
    assert set(adopted) == deployed, listed
    known = expected_field_paths(case, stack)
    for name, change in adopted.items():
        short = name.removeprefix(f"{stack}_")
        expected = {OWNERSHIP_FIELD} | known.get(name, set())
        expected |= {
            path
            for kind, path in REFERENCE_FIELDS.items()
            if uses_own(model, short, kind)
        }
        fields = {f["path"]: f for f in change["fields"]}
        assert set(fields) == expected, f"{name}:\n{listed}"
        assert (fields[OWNERSHIP_FIELD]["old"], fields[OWNERSHIP_FIELD]["new"]) == (
            None,
            "true",
        )
        for kind, path in REFERENCE_FIELDS.items():
            if path in fields:
                check_renamed_references(fields[path], kind, name)

    result = run_swarmkeeper("apply", state_dir, base_env=environment)
    expect_status(result, 0)
    for service in client.api.services(filters={"label": f"{NAMESPACE}={stack}"}):
        labels = service["Spec"]["Labels"]
        assert labels.get(MANAGED) == "true", service["Spec"]["Name"]
        assert labels.get(NAMESPACE) == stack

    # The corpus images cannot run here, so where adoption replaced tasks (the
    # move of configs and secrets) the engine may pause the rolling update.
    # The spec is the desired one all the same: nothing is pending. Today plan
    # lists such a service as held with no field (a bug, pinned down by
    # test_plan_apply.py::test_a_paused_update_of_the_desired_spec_is_in_sync);
    # that, and only that, is let through here.
    after = plan_document(state_dir, base_env=environment)
    for change in after["changes"]:
        assert (change["kind"], change["action"], change["fields"]) == (
            "service",
            "held",
            [],
        ), f"after apply:\n{after}"
        status = client.api.inspect_service(change["name"]).get("UpdateStatus")
        assert (status or {}).get("State") == "paused", f"after apply:\n{after}"


# -- adoption keeps running tasks -----------------------------------------------


RUNNABLE_STACK = """\
version: "3.8"

x-runnable: &runnable
  image: {image}
  command: ["sleep", "3600"]
  stop_grace_period: 1s

services:
  alpha: *runnable
  beta: *runnable
  gamma:
    <<: *runnable
    configs:
      - source: greeting
        target: /etc/greeting
    secrets:
      - token

configs:
  greeting:
    file: ./greeting.txt

secrets:
  token:
    file: ./token.txt
"""


def tasks_by_state(client: Any, service: str) -> dict[str, str]:
    """Every task of the service, ID to its current state."""
    return {
        task["ID"]: task["Status"]["State"]
        for task in client.api.tasks(filters={"service": service})
    }


def one_running_task(swarm: SwarmTestBed, service: str) -> Callable[[], bool]:
    return lambda: len(swarm.running_tasks(service)) == 1


def running(tasks: Mapping[str, str]) -> set[str]:
    return {task for task, state in tasks.items() if state == "running"}


def test_adoption_keeps_running_tasks(swarm: SwarmTestBed, tmp_path: Path) -> None:
    client, stack = swarm.client, swarm.prefix
    folder = stack_folder(tmp_path, stack)
    folder.mkdir()
    (folder / "compose.yml").write_text(RUNNABLE_STACK.format(image=swarm.image))
    greeting, token = b"hello from a config\n", os.urandom(16).hex().encode()
    (folder / "greeting.txt").write_bytes(greeting)
    (folder / "token.txt").write_bytes(token)
    state_dir = folder.parent.parent
    environment = process_environment({}, tmp_path / "home")

    deploy_with_cli(folder, stack, environment)
    names = {short: f"{stack}_{short}" for short in ("alpha", "beta", "gamma")}
    for name in names.values():
        swarm.wait_for(one_running_task(swarm, name), what=f"a running task of {name}")
    before = {name: tasks_by_state(client, name) for name in names.values()}

    expect_status(run_swarmkeeper("apply", state_dir, base_env=environment), 0)

    config_name = f"{stack}_greeting-{hashlib.sha256(greeting).hexdigest()[:10]}"
    secret_name = f"{stack}_token-{hashlib.sha256(token).hexdigest()[:10]}"
    config_id = client.api.inspect_config(config_name)["ID"]
    secret_id = client.api.inspect_secret(secret_name)["ID"]

    def gamma_updated() -> bool:
        service = client.api.inspect_service(names["gamma"])
        container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
        return (
            [(c["ConfigName"], c["ConfigID"]) for c in container.get("Configs", [])]
            == [(config_name, config_id)]
            and [(s["SecretName"], s["SecretID"]) for s in container["Secrets"]]
            == [(secret_name, secret_id)]
            and (service.get("UpdateStatus") or {}).get("State") == "completed"
            and len(swarm.running_tasks(names["gamma"])) == 1
        )

    # The rolling update of gamma takes its monitor period (5 s): time enough
    # for a needless restart of alpha or beta to show.
    swarm.wait_for(gamma_updated, what=f"{names['gamma']} updated to {config_name}")
    stable = wait_until_stable(swarm)

    for short in ("alpha", "beta"):
        name = names[short]
        after = tasks_by_state(client, name)
        assert after == before[name], (
            f"{name}: tasks changed: {before[name]} -> {after}"
        )
        assert len(running(after)) == 1
        labels = client.api.inspect_service(name)["Spec"]["Labels"]
        assert labels[MANAGED] == "true"
        assert labels[NAMESPACE] == stack
    gamma_after = tasks_by_state(client, names["gamma"])
    assert running(gamma_after).isdisjoint(running(before[names["gamma"]]))

    again = expect_status(run_swarmkeeper("apply", state_dir, base_env=environment), 0)
    assert writes_reported(again) == 0, shown(again)
    assert snapshot(client, stack) == stable
    expect_status(run_swarmkeeper("plan", state_dir, base_env=environment), 0)
