"""swarmkeeper's compose conversion against what ``docker stack deploy`` stores.

Each folder of ``tests/compose_corpus/`` is one case. The test deploys it
twice on the real engine: once with the docker CLI (``docker stack deploy
--resolve-image never``, stack ``<prefix>c``) and once from swarmkeeper's
conversion (stack ``<prefix>k``) posted raw to the API. Both are read back,
normalized the same way and compared: the engine's stored ``Spec`` is the
referee, so a conversion that differs from the CLI's in any stored field fails.

The CLI's stack is removed before swarmkeeper's is created, because the two
share cluster-wide things (published ingress ports, pinned subnets, networks
with a ``name:``).

A case folder holds ``compose.yml``, the files it references, and an optional
``case.toml``::

    notes = "why the case exists"
    environ = {VAR = "value"}          # interpolation variables, for both sides
    cli_warnings = ["Ignoring ..."]    # substrings of the CLI's stderr
    expected_differences = [{path = "services/STACK_web/...", reason = "..."}]

The harness also sets ``CORPUS_PREFIX`` (the test's prefix) for both sides:
compose files spell external objects as ``${CORPUS_PREFIX}-something``, which
the harness creates first so the per-test clean-up removes them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SwarmTestBed
from swarmkeeper.desired import (
    DesiredBlob,
    DesiredNetwork,
    DesiredService,
    Location,
    Stack,
)

CORPUS = Path(__file__).parent / "compose_corpus"
CASES = sorted(path for path in CORPUS.iterdir() if (path / "compose.yml").is_file())
DOCKER = shutil.which("docker", path="/usr/local/bin") or "docker"

NAMESPACE_LABEL = "com.docker.stack.namespace"
VXLAN_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
PLACEHOLDER = "STACK"
# What an expected difference is replaced with on both sides once checked.
MASKED = "<expected difference>"
MISSING = "<absent>"

View = dict[str, dict[str, Any]]


# -- cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedDifference:
    path: str
    reason: str


@dataclass(frozen=True)
class Case:
    folder: Path
    notes: str = ""
    environ: dict[str, str] = field(default_factory=dict)
    cli_warnings: tuple[str, ...] = ()
    expected_differences: tuple[ExpectedDifference, ...] = ()

    @classmethod
    def load(cls, folder: Path) -> Case:
        toml_file = folder / "case.toml"
        raw: dict[str, Any] = {}
        if toml_file.is_file():
            raw = tomllib.loads(toml_file.read_text())
        unknown = set(raw) - {
            "notes",
            "environ",
            "cli_warnings",
            "expected_differences",
        }
        assert not unknown, f"{toml_file}: unknown keys {sorted(unknown)}"
        return cls(
            folder=folder,
            notes=str(raw.get("notes", "")),
            environ={str(k): str(v) for k, v in raw.get("environ", {}).items()},
            cli_warnings=tuple(raw.get("cli_warnings", ())),
            expected_differences=tuple(
                ExpectedDifference(path=item["path"], reason=item["reason"])
                for item in raw.get("expected_differences", ())
            ),
        )


def _environment(case: Case, prefix: str) -> dict[str, str]:
    return {**case.environ, "CORPUS_PREFIX": prefix}


def _cli_process_environment(
    variables: Mapping[str, str], home: Path
) -> dict[str, str]:
    """Only the case's variables: the CLI interpolates from its whole environment."""
    home.mkdir(exist_ok=True)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    if "DOCKER_HOST" in os.environ:
        environment["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    return {**environment, **variables}


# -- the CLI side ---------------------------------------------------------------


def _run_cli(
    args: list[str], folder: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stack_model(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """The file as the CLI loads and interpolates it (``docker stack config``)."""
    result = _run_cli(["stack", "config", "-c", "compose.yml"], folder, env)
    assert result.returncode == 0, f"docker stack config failed:\n{result.stderr}"
    loaded = yaml.safe_load(result.stdout)
    return dict(loaded or {})


def deploy_with_cli(
    folder: Path, stack: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = _run_cli(
        [
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-d",
            "-c",
            "compose.yml",
            stack,
        ],
        folder,
        env,
    )
    assert result.returncode == 0, (
        f"docker stack deploy failed ({result.returncode}):\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def fields_the_cli_ignores(stderr: str) -> list[str]:
    """Field names from the CLI's "Ignoring unsupported/deprecated options" notes."""
    names: list[str] = []
    for match in re.finditer(r"Ignoring unsupported options: (.*)", stderr):
        names += [name.strip() for name in match.group(1).split(",") if name.strip()]
    # The deprecated ones come one per line as "name: why", blank lines between.
    _, header, rest = stderr.partition("Ignoring deprecated options:")
    if header:
        names += re.findall(r"^([\w.-]+): ", rest, re.MULTILINE)
    return names


def create_externals(client: Any, model: Mapping[str, Any]) -> None:
    """Create the external networks, configs and secrets the case names."""
    for key, network in (model.get("networks") or {}).items():
        if network and network.get("external"):
            client.api.create_network(
                network.get("name") or key, driver="overlay", attachable=True
            )
    for kind in ("configs", "secrets"):
        for key, entry in (model.get(kind) or {}).items():
            if entry and entry.get("external"):
                name = entry.get("name") or key
                data = f"external {kind[:-1]} {name}\n".encode()
                if kind == "configs":
                    client.api.create_config(name, data)
                else:
                    client.api.create_secret(name, data)
    # External volumes need nothing: swarm creates volumes on the nodes, and
    # these cases' tasks never start (their images are not on the engine).


def cli_secret_digests(
    model: Mapping[str, Any], stack: str, folder: Path
) -> dict[str, str]:
    """Secret name → sha256 of its source file: the API never returns secret data."""
    digests: dict[str, str] = {}
    for key, entry in (model.get("secrets") or {}).items():
        if not entry or entry.get("external") or "file" not in entry:
            continue
        name = entry.get("name") or f"{stack}_{key}"
        digests[name] = hashlib.sha256(
            (folder / entry["file"]).read_bytes()
        ).hexdigest()
    return digests


def read_cli_stack(client: Any, stack: str, secret_digests: Mapping[str, str]) -> View:
    """Every object ``docker stack deploy`` made for the stack, found by its label."""
    label = {"label": f"{NAMESPACE_LABEL}={stack}"}
    return _read_objects(
        client,
        service_ids=[s["ID"] for s in client.api.services(filters=label)],
        network_ids=[n["Id"] for n in client.api.networks(filters=label)],
        config_ids=[c["ID"] for c in client.api.configs(filters=label)],
        secret_ids=[s["ID"] for s in client.api.secrets(filters=label)],
        secret_digests=secret_digests,
    )


def remove_stack(client: Any, stack: str) -> None:
    """Remove what the CLI made, so the other side can reuse ports and names."""
    label = {"label": f"{NAMESPACE_LABEL}={stack}"}
    for service in client.api.services(filters=label):
        client.api.remove_service(service["ID"])
    for config in client.api.configs(filters=label):
        client.api.remove_config(config["ID"])
    for secret in client.api.secrets(filters=label):
        client.api.remove_secret(secret["ID"])
    for network in client.api.networks(filters=label):
        client.api.remove_network(network["Id"])


# -- reading back ---------------------------------------------------------------


def _inspect_allocated_network(client: Any, network_id: str) -> dict[str, Any]:
    """The swarm's record of a network, once its allocator has been through it.

    Until then (a few ms after the create) the engine shows an empty Driver and
    IPAM: they come from the allocated driver state, not from the request.
    """
    deadline = time.monotonic() + 10
    while True:
        network: dict[str, Any] = client.api.inspect_network(network_id, scope="swarm")
        if network.get("Driver") or time.monotonic() > deadline:
            return network
        time.sleep(0.05)


def _read_objects(
    client: Any,
    *,
    service_ids: Iterable[str],
    network_ids: Iterable[str],
    config_ids: Iterable[str],
    secret_ids: Iterable[str],
    secret_digests: Mapping[str, str],
) -> View:
    """The stored objects, raw except for what the API cannot show.

    Network targets are turned into names here, while the networks exist.
    """
    network_names = {n["Id"]: n["Name"] for n in client.api.networks()}
    view: View = {"services": {}, "networks": {}, "configs": {}, "secrets": {}}

    for service_id in service_ids:
        spec = client.api.inspect_service(service_id)["Spec"]
        for attachment in spec.get("TaskTemplate", {}).get("Networks") or []:
            target = attachment.get("Target")
            attachment["Target"] = network_names.get(target, f"<unknown id {target}>")
        view["services"][spec["Name"]] = spec

    for network_id in network_ids:
        network = _inspect_allocated_network(client, network_id)
        view["networks"][network["Name"]] = network

    for config_id in config_ids:
        spec = client.api.inspect_config(config_id)["Spec"]
        view["configs"][spec["Name"]] = spec

    for secret_id in secret_ids:
        spec = dict(client.api.inspect_secret(secret_id)["Spec"])
        spec["DataSHA256"] = secret_digests.get(spec["Name"], MISSING)
        view["secrets"][spec["Name"]] = spec

    return view


# -- the swarmkeeper side -------------------------------------------------------


def load_with_swarmkeeper(
    stack: str, folder: Path, environ: Mapping[str, str]
) -> tuple[Stack, list[Any]]:
    """``load_stack`` on the copied case; imported here so the file always collects."""
    try:
        compose = importlib.import_module("swarmkeeper.loading.compose")
        problems = importlib.import_module("swarmkeeper.loading.problems")
    except ImportError as error:
        pytest.skip(f"swarmkeeper's compose converter is not there yet: {error}")
    load_stack: Any = compose.load_stack
    invalid: type[Exception] = problems.InvalidDesiredState

    try:
        loaded, warnings = load_stack(
            stack, folder / "compose.yml", state_dir=folder, environ=dict(environ)
        )
    except invalid as error:
        listed = "\n".join(str(problem) for problem in getattr(error, "problems", []))
        pytest.fail(f"swarmkeeper rejected the case:\n{listed}", pytrace=False)
    return loaded, list(warnings)


def _api_post(client: Any, path: str, body: Mapping[str, Any]) -> Any:
    """POST the body exactly as given (docker-py's helpers drop or rename keys)."""
    response = client.api._post(
        client.api._url(path),
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    return client.api._result(response, json=True)


def _blob_body(blob: DesiredBlob) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Name": blob.name,
        "Labels": blob.labels,
        "Data": base64.b64encode(blob.data).decode(),
    }
    if blob.templating is not None:
        body["Templating"] = blob.templating
    return body


def _ids_by_name(items: Iterable[Mapping[str, Any]], id_key: str) -> dict[str, str]:
    return {item["Spec"]["Name"]: item[id_key] for item in items}


def _resolve(ids_by_name: Mapping[str, str], name: str) -> str:
    if name not in ids_by_name:
        pytest.fail(
            f"a service refers to {name!r}, which does not exist", pytrace=False
        )
    return ids_by_name[name]


def create_from_stack(client: Any, stack: Stack) -> View:
    """Create what swarmkeeper's conversion describes, resolving names to IDs."""
    network_ids = [
        _api_post(client, "/networks/create", {"Name": name, **network.create})["Id"]
        for name, network in stack.networks.items()
    ]
    config_ids = [
        _api_post(client, "/configs/create", _blob_body(blob))["ID"]
        for blob in stack.configs.values()
    ]
    secret_ids = [
        _api_post(client, "/secrets/create", _blob_body(blob))["ID"]
        for blob in stack.secrets.values()
    ]

    # Resolve names the way `docker stack deploy` does: at the moment of writing.
    networks_by_name = {n["Name"]: n["Id"] for n in client.api.networks()}
    configs_by_name = _ids_by_name(client.api.configs(), "ID")
    secrets_by_name = _ids_by_name(client.api.secrets(), "ID")

    service_ids = []
    for service in stack.services.values():
        spec = copy.deepcopy(service.spec)
        task = spec.get("TaskTemplate", {})
        for attachment in task.get("Networks") or []:
            attachment["Target"] = _resolve(networks_by_name, attachment["Target"])
        container = task.get("ContainerSpec", {})
        for reference in container.get("Configs") or []:
            reference["ConfigID"] = _resolve(configs_by_name, reference["ConfigName"])
        for reference in container.get("Secrets") or []:
            reference["SecretID"] = _resolve(secrets_by_name, reference["SecretName"])
        service_ids.append(_api_post(client, "/services/create", spec)["ID"])

    return _read_objects(
        client,
        service_ids=service_ids,
        network_ids=network_ids,
        config_ids=config_ids,
        secret_ids=secret_ids,
        secret_digests={
            blob.name: hashlib.sha256(blob.data).hexdigest()
            for blob in stack.secrets.values()
        },
    )


def hashed_names(stack: Stack) -> dict[str, str]:
    """swarmkeeper's content-addressed blob names → the names the CLI gives.

    Only a suffix that really is the start of the data's sha256 is stripped:
    a wrong hash stays visible in the comparison.
    """
    names = {}
    for blob in (*stack.configs.values(), *stack.secrets.values()):
        suffix = "-" + hashlib.sha256(blob.data).hexdigest()[:10]
        if blob.name.endswith(suffix):
            names[blob.name] = blob.name.removesuffix(suffix)
    return names


# -- normalizing and comparing --------------------------------------------------


def _replace_strings(value: Any, replace: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, list):
        return [_replace_strings(item, replace) for item in value]
    if isinstance(value, dict):
        return {replace(k): _replace_strings(v, replace) for k, v in value.items()}
    return value


def _without_own_labels(labels: Mapping[str, str] | None) -> Any:
    if labels is None:
        return None
    return {k: v for k, v in labels.items() if not k.startswith("swarmkeeper.")}


def _strip_own_labels(value: Any) -> Any:
    """Drop ``swarmkeeper.*`` keys from every ``Labels`` map, at any depth."""
    if isinstance(value, list):
        return [_strip_own_labels(item) for item in value]
    if isinstance(value, dict):
        return {
            k: _without_own_labels(v)
            if k == "Labels" and isinstance(v, dict)
            else _strip_own_labels(v)
            for k, v in value.items()
        }
    return value


def _network_summary(network: Mapping[str, Any], *, pinned: bool) -> dict[str, Any]:
    ipam = network.get("IPAM") or {}
    subnets = [c.get("Subnet") for c in ipam.get("Config") or []] if pinned else []
    options = dict(network.get("Options") or {})
    options.pop(VXLAN_OPTION, None)
    return {
        "Driver": network.get("Driver"),
        "Options": options,
        "Labels": network.get("Labels"),
        "Internal": network.get("Internal"),
        "Attachable": network.get("Attachable"),
        "Ingress": network.get("Ingress"),
        "EnableIPv6": network.get("EnableIPv6"),
        "IPAM.Driver": ipam.get("Driver"),
        # The engine shows an allocated subnet even when none was asked for;
        # only a requested one belongs to the conversion.
        "IPAM.Subnets": subnets,
    }


def pinned_networks(model: Mapping[str, Any], stack: str) -> frozenset[str]:
    """Names of the networks whose compose entry asks for a subnet."""
    names = set()
    for key, network in (model.get("networks") or {}).items():
        configs = ((network or {}).get("ipam") or {}).get("config") or []
        if any(config.get("subnet") for config in configs):
            names.add(network.get("name") or f"{stack}_{key}")
    return frozenset(names)


def _requests_subnet(create: Mapping[str, Any]) -> bool:
    configs = (create.get("IPAM") or {}).get("Config") or []
    return any(config.get("Subnet") for config in configs)


def normalize(
    view: View,
    *,
    stack: str,
    pinned_subnets: Callable[[str], bool],
    renamed: Mapping[str, str] | None = None,
) -> View:
    """Both sides go through here: only conversion results remain comparable."""
    renamed = renamed or {}

    def rename(name: str) -> str:
        return renamed.get(name, name)

    services = {}
    for name, stored in view["services"].items():
        spec = copy.deepcopy(stored)
        container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
        for reference in container.get("Configs") or []:
            reference.pop("ConfigID", None)
            if "ConfigName" in reference:
                reference["ConfigName"] = rename(reference["ConfigName"])
        for reference in container.get("Secrets") or []:
            reference.pop("SecretID", None)
            if "SecretName" in reference:
                reference["SecretName"] = rename(reference["SecretName"])
        services[name] = spec

    networks = {
        name: _network_summary(network, pinned=pinned_subnets(name))
        for name, network in view["networks"].items()
    }
    configs = {
        rename(name): {
            "Labels": spec.get("Labels"),
            "Data": base64.b64decode(spec.get("Data", "")).decode(errors="replace"),
            "Templating": spec.get("Templating"),
        }
        for name, spec in view["configs"].items()
    }
    secrets = {
        rename(name): {
            "Labels": spec.get("Labels"),
            "Templating": spec.get("Templating"),
            "DataSHA256": spec.get("DataSHA256"),
        }
        for name, spec in view["secrets"].items()
    }

    normalized = {
        "services": services,
        "networks": networks,
        "configs": configs,
        "secrets": secrets,
    }
    replaced = _replace_strings(normalized, lambda s: s.replace(stack, PLACEHOLDER))
    result: View = _strip_own_labels(replaced)
    return result


def differences(
    expected: Any, actual: Any, path: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """Leaf paths where two JSON values differ: (path, expected, actual)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual), key=str):
            found += differences(
                expected.get(key, MISSING), actual.get(key, MISSING), (*path, str(key))
            )
        return found
    if (
        isinstance(expected, list)
        and isinstance(actual, list)
        and len(expected) == len(actual)
    ):
        found = []
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found += differences(left, right, (*path, str(index)))
        return found
    if expected == actual:
        return []
    return [("/".join(path), expected, actual)]


def describe(found: list[tuple[str, Any, Any]]) -> str:
    lines = [f"{len(found)} difference(s) (path: CLI value | swarmkeeper value):"]
    lines += [f"  {path}: {left!r} | {right!r}" for path, left, right in found]
    return "\n".join(lines)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _mask(view: Any, path: str) -> None:
    *parents, last = path.split("/")
    node = view
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = MASKED
    elif isinstance(node, dict):
        node[last] = MASKED


def check_expected_differences(
    expected: View, actual: View, known: Iterable[ExpectedDifference]
) -> None:
    """Every known difference must really differ; then it is masked on both sides."""
    known = list(known)
    found = differences(expected, actual)
    for item in known:
        under = [d for d in found if _under(d[0], item.path)]
        assert under, (
            f"expected a difference at {item.path} ({item.reason}), "
            "but both sides agree there"
        )
        _mask(expected, item.path)
        _mask(actual, item.path)


# -- one case, end to end -------------------------------------------------------


@dataclass(frozen=True)
class CliSide:
    """What the CLI side of a case saw and stored."""

    stack: str
    folder: Path
    environ: Mapping[str, str]
    model: Mapping[str, Any]
    view: View
    pinned_networks: frozenset[str]


@dataclass
class Outcome:
    cli: View
    swarmkeeper: View
    cli_stderr: str
    warnings: list[Any]


def run_case(
    swarm: SwarmTestBed,
    case: Case,
    tmp_path: Path,
    *,
    convert: Callable[[str, CliSide], Stack] | None = None,
) -> Outcome:
    """Deploy a case both ways and return the two normalized views.

    ``convert`` stands in for swarmkeeper's converter (the self-tests use it);
    it gets the stack name to use and what the CLI side saw and stored.
    """
    client = swarm.client
    folder = tmp_path / case.folder.name
    shutil.copytree(case.folder, folder)
    variables = _environment(case, swarm.prefix)
    cli_env = _cli_process_environment(variables, tmp_path / "home")
    cli_stack, sk_stack = swarm.prefix + "c", swarm.prefix + "k"

    # 1. External objects, from the CLI's own reading of the file.
    model = stack_model(folder, cli_env)
    create_externals(client, model)
    pinned_by_cli = pinned_networks(model, cli_stack)

    # 2. The CLI side, read back and then removed.
    deployed = deploy_with_cli(folder, cli_stack, cli_env)
    raw_cli = read_cli_stack(
        client, cli_stack, cli_secret_digests(model, cli_stack, folder)
    )
    remove_stack(client, cli_stack)

    # 3. The swarmkeeper side.
    warnings: list[Any] = []
    if convert is None:
        stack, warnings = load_with_swarmkeeper(sk_stack, folder, variables)
    else:
        side = CliSide(cli_stack, folder, variables, model, raw_cli, pinned_by_cli)
        stack = convert(sk_stack, side)
    raw_sk = create_from_stack(client, stack)

    return Outcome(
        cli=normalize(
            raw_cli, stack=cli_stack, pinned_subnets=pinned_by_cli.__contains__
        ),
        swarmkeeper=normalize(
            raw_sk,
            stack=sk_stack,
            pinned_subnets=lambda name: _requests_subnet(stack.networks[name].create),
            renamed=hashed_names(stack),
        ),
        cli_stderr=deployed.stderr,
        warnings=warnings,
    )


@pytest.mark.engine
@pytest.mark.parametrize("case_folder", CASES, ids=[path.name for path in CASES])
def test_swarmkeeper_converts_like_docker_stack_deploy(
    case_folder: Path, swarm: SwarmTestBed, tmp_path: Path
) -> None:
    case = Case.load(case_folder)

    outcome = run_case(swarm, case, tmp_path)

    for fragment in case.cli_warnings:
        assert fragment in outcome.cli_stderr, (
            f"the CLI did not print {fragment!r}; its stderr:\n{outcome.cli_stderr}"
        )
    warned = "\n".join(str(problem) for problem in outcome.warnings)
    for name in fields_the_cli_ignores(outcome.cli_stderr):
        assert name in warned, (
            f"the CLI ignores {name!r} with a warning, swarmkeeper does not "
            f"warn about it; its warnings:\n{warned or '(none)'}"
        )

    expected, actual = outcome.cli, outcome.swarmkeeper
    check_expected_differences(expected, actual, case.expected_differences)
    assert actual == expected, describe(differences(expected, actual))


# -- the harness can fail -------------------------------------------------------


def replay_cli_stack(stack: str, source: CliSide) -> Stack:
    """A stand-in converter: the CLI's stored objects, renamed to ``stack``.

    Replaying them must compare equal; it checks the create-and-read path and
    the normalization without swarmkeeper's converter.
    """

    def rename(value: Any) -> Any:
        return _replace_strings(value, lambda s: s.replace(cli_stack, stack))

    cli, cli_stack = source.view, source.stack
    where = Location("compose.yml")
    services = {}
    for stored in cli["services"].values():
        spec = rename(copy.deepcopy(stored))
        container = spec["TaskTemplate"]["ContainerSpec"]
        for reference in container.get("Configs") or []:
            reference.pop("ConfigID", None)
        for reference in container.get("Secrets") or []:
            reference.pop("SecretID", None)
        services[spec["Name"]] = DesiredService(spec["Name"], stack, spec, where)

    networks = {}
    for network in cli["networks"].values():
        name = rename(network["Name"])
        ipam = network.get("IPAM") or {}
        options = {
            k: v for k, v in (network.get("Options") or {}).items() if k != VXLAN_OPTION
        }
        create = {
            "Driver": network["Driver"],
            "Options": options,
            "Labels": rename(network.get("Labels")),
            "Internal": network["Internal"],
            "Attachable": network["Attachable"],
            "IPAM": {
                "Driver": ipam.get("Driver"),
                # Only what the file asked for: the rest was allocated.
                "Config": [
                    {"Subnet": c["Subnet"]}
                    for c in ipam.get("Config") or []
                    if network["Name"] in source.pinned_networks
                ],
            },
        }
        networks[name] = DesiredNetwork(name, stack, create, where)

    def blob(kind: str, spec: Mapping[str, Any], data: bytes) -> DesiredBlob:
        digest = hashlib.sha256(data).hexdigest()
        return DesiredBlob(
            kind=kind,
            name=f"{rename(spec['Name'])}-{digest[:10]}",
            stack=stack,
            labels=rename(spec.get("Labels") or {}),
            data=data,
            digest=digest,
            source=where,
            templating=spec.get("Templating"),
        )

    configs = [
        blob("config", spec, base64.b64decode(spec["Data"]))
        for spec in cli["configs"].values()
    ]
    # Secret data cannot be read back: the replay takes it from the files.
    secret_files = {}
    for key, entry in (source.model.get("secrets") or {}).items():
        if entry and not entry.get("external") and "file" in entry:
            name = entry.get("name") or f"{cli_stack}_{key}"
            secret_files[name] = (source.folder / entry["file"]).read_bytes()
    secrets = [
        blob("secret", spec, secret_files[spec["Name"]])
        for spec in cli["secrets"].values()
    ]

    # Services refer to blobs by the CLI's names: point them at the hashed ones.
    hashed = {b.name.rsplit("-", 1)[0]: b.name for b in (*configs, *secrets)}
    for service in services.values():
        container = service.spec["TaskTemplate"]["ContainerSpec"]
        for reference in container.get("Configs") or []:
            reference["ConfigName"] = hashed.get(
                reference["ConfigName"], reference["ConfigName"]
            )
        for reference in container.get("Secrets") or []:
            reference["SecretName"] = hashed.get(
                reference["SecretName"], reference["SecretName"]
            )

    return Stack(
        name=stack,
        source=where,
        services=services,
        networks=networks,
        configs={b.name: b for b in configs},
        secrets={b.name: b for b in secrets},
    )


SELF_TEST_CASE = CORPUS / "22-networks-toplevel"


def _first_service(stack: Stack) -> DesiredService:
    return stack.services[sorted(stack.services)[0]]


@pytest.mark.engine
def test_replay_of_the_cli_stack_differs_only_where_altered(
    swarm: SwarmTestBed, tmp_path: Path
) -> None:
    """Replaying the CLI's own objects compares equal but for two planted changes."""
    altered: list[str] = []

    def replay_and_alter(stack_name: str, source: CliSide) -> Stack:
        stack = replay_cli_stack(stack_name, source)
        service = _first_service(stack)
        service.spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] = 123
        network = stack.networks[sorted(stack.networks)[0]]
        network.create["Labels"]["corpus.planted"] = "yes"
        short = service.name.replace(stack_name, PLACEHOLDER)
        net = network.name.replace(stack_name, PLACEHOLDER)
        altered.extend(
            [
                f"services/{short}/TaskTemplate/ContainerSpec/StopGracePeriod",
                f"networks/{net}/Labels/corpus.planted",
            ]
        )
        return stack

    outcome = run_case(
        swarm, Case.load(SELF_TEST_CASE), tmp_path, convert=replay_and_alter
    )

    found = differences(outcome.cli, outcome.swarmkeeper)
    assert sorted(path for path, _, _ in found) == sorted(altered), describe(found)
    assert outcome.cli != outcome.swarmkeeper


@pytest.mark.engine
@pytest.mark.parametrize("case_folder", CASES, ids=[path.name for path in CASES])
def test_every_case_replays_losslessly(
    case_folder: Path, swarm: SwarmTestBed, tmp_path: Path
) -> None:
    """The CLI's stored objects, re-created through the harness, compare equal.

    This keeps the harness honest per case without swarmkeeper's converter:
    creating, reading back and normalizing lose and invent nothing.
    """
    outcome = run_case(
        swarm, Case.load(case_folder), tmp_path, convert=replay_cli_stack
    )

    assert outcome.swarmkeeper == outcome.cli, describe(
        differences(outcome.cli, outcome.swarmkeeper)
    )


@pytest.mark.engine
def test_an_altered_conversion_is_reported(swarm: SwarmTestBed, tmp_path: Path) -> None:
    """swarmkeeper's own conversion, with one field changed, must not pass."""
    path = ""

    def convert_and_alter(stack_name: str, source: CliSide) -> Stack:
        nonlocal path
        stack, _ = load_with_swarmkeeper(stack_name, source.folder, source.environ)
        service = _first_service(stack)
        container = service.spec["TaskTemplate"]["ContainerSpec"]
        container["Hostname"] = "planted-difference"
        short = service.name.replace(stack_name, PLACEHOLDER)
        path = f"services/{short}/TaskTemplate/ContainerSpec/Hostname"
        return stack

    outcome = run_case(
        swarm, Case.load(SELF_TEST_CASE), tmp_path, convert=convert_and_alter
    )

    found = differences(outcome.cli, outcome.swarmkeeper)
    assert path in [p for p, _, _ in found], describe(found)


def test_expected_differences_must_really_differ() -> None:
    left: View = {"services": {"STACK_a": {"Env": ["A=1"], "User": "x"}}}
    right: View = {"services": {"STACK_a": {"Env": ["A=2"], "User": "x"}}}
    known = [ExpectedDifference("services/STACK_a/Env", ".env is read")]

    check_expected_differences(left, right, known)
    assert left == right

    unchanged: View = {"services": {"STACK_a": {"Env": ["A=1"], "User": "x"}}}
    with pytest.raises(AssertionError, match="both sides agree"):
        check_expected_differences(
            unchanged,
            copy.deepcopy(unchanged),
            [ExpectedDifference("services/STACK_a/User", "no")],
        )


def test_normalization_keeps_real_differences() -> None:
    def view(user: str, label: str) -> View:
        spec = {
            "Name": "skt000000k_web",
            "Labels": {"swarmkeeper.hash": label, "a": "b"},
            "TaskTemplate": {"ContainerSpec": {"User": user}},
        }
        return {
            "services": {"skt000000k_web": spec},
            "networks": {},
            "configs": {},
            "secrets": {},
        }

    def norm(value: View) -> View:
        return normalize(value, stack="skt000000k", pinned_subnets=lambda _: False)

    assert norm(view("root", "1")) == norm(view("root", "2"))
    found = differences(norm(view("root", "1")), norm(view("nobody", "1")))
    assert [p for p, _, _ in found] == [
        "services/STACK_web/TaskTemplate/ContainerSpec/User"
    ]
