"""The desired-state directory: stacks, cluster networks, node labels, policy.

::

    <state-dir>/
      stacks/<stack>.yml            a compose file; the stack is named after it
      stacks/<stack>/compose.yml    or a folder (compose.yml, compose.yaml,
                                    docker-compose.yml or docker-compose.yaml)
                                    with an optional .env and the files its
                                    configs and secrets name
      networks.yml                  networks: {NAME: {...}}
      nodes.yml                     nodes: {HOSTNAME: {labels: {...}}}
      policy.yml                    images.allow, prune, prune_cap, suspend

Loading reads everything and reports every problem found, each with its file,
line and field; it never stops at the first.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from swarmkeeper.desired import (
    DesiredNetwork,
    DesiredState,
    Location,
    Policy,
    Stack,
)
from swarmkeeper.loading.compose import convert_compose_file
from swarmkeeper.loading.files import Document, FileRefused, StateFiles, parse_yaml
from swarmkeeper.loading.problems import FieldPath, Problems, format_path
from swarmkeeper.loading.units import go_string

COMPOSE_FILE_NAMES = (
    "compose.yml",
    "compose.yaml",
    "docker-compose.yml",
    "docker-compose.yaml",
)
STACK_FILE_SUFFIXES = (".yml", ".yaml")
# Stack names become name prefixes (<stack>_<service>); the engine's charset.
STACK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_NETWORK_NAME = 64

_LIST_OR_DICT: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
        {"type": "array", "items": {"type": "string"}},
    ]
}

NETWORKS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "networks": {
            "type": ["object", "null"],
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "driver": {"type": "string"},
                    "driver_opts": {
                        "type": "object",
                        "additionalProperties": {
                            "type": ["string", "number", "boolean"]
                        },
                    },
                    "attachable": {"type": "boolean"},
                    "internal": {"type": "boolean"},
                    "encrypted": {"type": "boolean"},
                    "ingress": {"type": "boolean"},
                    "enable_ipv6": {"type": "boolean"},
                    "labels": _LIST_OR_DICT,
                    "ipam": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "driver": {"type": "string"},
                            "options": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "config": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "subnet": {"type": "string"},
                                        "ip_range": {"type": "string"},
                                        "gateway": {"type": "string"},
                                        "aux_addresses": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}

NODES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "nodes": {
            "type": ["object", "null"],
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "labels": {
                        "type": ["object", "null"],
                        "additionalProperties": {
                            "type": ["string", "number", "boolean", "null"]
                        },
                    }
                },
            },
        }
    },
}

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "images": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"allow": {"type": "array", "items": {"type": "string"}}},
        },
        "prune": {"type": "boolean"},
        "prune_cap": {"type": "integer", "minimum": 0},
        "suspend": {"type": "array", "items": {"type": "string"}},
    },
}


def load_desired_state(
    state_dir: Path,
    *,
    secrets_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> DesiredState:
    """Load and convert the whole directory; raise InvalidDesiredState on errors."""
    problems = Problems()
    state = read_desired_state(
        state_dir,
        secrets_dir=secrets_dir,
        environ=os.environ if environ is None else environ,
        problems=problems,
    )
    problems.raise_if_any()
    return state


def read_desired_state(
    state_dir: Path,
    *,
    secrets_dir: Path | None,
    environ: Mapping[str, str],
    problems: Problems,
) -> DesiredState:
    """Like :func:`load_desired_state`, but leaves the problems in ``problems``."""
    with _without_cycle_collection():
        return _read_desired_state(
            state_dir, secrets_dir=secrets_dir, environ=environ, problems=problems
        )


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector while loading.

    Loading builds hundreds of thousands of small dicts and lists, all trees
    without cycles; the collector kept walking them and took 40 % of the time
    of a 1,000-service load. Reference counting still frees everything.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_desired_state(
    state_dir: Path,
    *,
    secrets_dir: Path | None,
    environ: Mapping[str, str],
    problems: Problems,
) -> DesiredState:
    root = Path(os.path.abspath(state_dir))
    files = StateFiles(root=root, secrets_dir=secrets_dir)
    if not root.is_dir():
        problems.error(
            Location(str(state_dir)), "", "the state directory does not exist"
        )
        return DesiredState(root=root)

    policy = _load_policy(files, problems)
    stacks = _load_stacks(
        files, environ, problems, allowed_images=policy.allowed_images
    )
    networks, ingress = _load_networks(files, problems)
    node_labels = _load_nodes(files, problems)

    _check_network_names(stacks, networks, problems)
    _check_suspended(stacks, policy, problems)

    state = DesiredState(
        root=root,
        stacks=stacks,
        networks=networks,
        ingress_network=ingress,
        node_labels=node_labels,
        policy=policy,
        warnings=tuple(problems.warnings),
    )
    if state.is_empty and not problems.errors:
        problems.warn(
            Location("."),
            "",
            "the state directory declares no stacks, networks or nodes",
        )
        state = DesiredState(
            root=root, policy=policy, warnings=tuple(problems.warnings)
        )
    return state


# ------------------------------------------------------------------ stacks --


def _stack_sources(files: StateFiles, problems: Problems) -> dict[str, Path]:
    """Each stack's compose file, by stack name; clashes and strays reported."""
    folder = files.root / "stacks"
    if not folder.exists():
        return {}
    if not folder.is_dir():
        problems.error(Location("stacks"), "", "must be a folder of compose files")
        return {}

    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        display = files.display(entry)
        if entry.is_dir():
            name = entry.name
            candidates = [entry / n for n in COMPOSE_FILE_NAMES if (entry / n).exists()]
            if not candidates:
                problems.error(
                    Location(display),
                    "",
                    "a stack folder needs compose.yml (or compose.yaml, "
                    "docker-compose.yml, docker-compose.yaml)",
                )
                continue
            if len(candidates) > 1:
                names = ", ".join(c.name for c in candidates)
                problems.error(
                    Location(display), "", f"more than one compose file: {names}"
                )
                continue
            source = candidates[0]
        elif entry.suffix in STACK_FILE_SUFFIXES:
            name, source = entry.stem, entry
        else:
            problems.warn(
                Location(display), "", "ignored: not a .yml or .yaml compose file"
            )
            continue

        try:
            files.resolve(folder, entry.name)
        except FileRefused as error:
            problems.error(Location(display), "", error.reason)
            continue
        if not STACK_NAME.match(name):
            problems.error(
                Location(display),
                "",
                f"{name!r} is not a valid stack name: "
                "letters, digits, '-', '_' and '.'",
            )
            continue
        if name in found:
            problems.error(
                Location(display),
                "",
                f"the stack name {name!r} is also claimed by "
                f"{files.display(found[name])}",
            )
            continue
        found[name] = source
    return found


def _load_stacks(
    files: StateFiles,
    environ: Mapping[str, str],
    problems: Problems,
    *,
    allowed_images: tuple[str, ...] | None,
) -> dict[str, Stack]:
    stacks: dict[str, Stack] = {}
    for name, source in _stack_sources(files, problems).items():
        stack = convert_compose_file(
            name,
            source,
            files=files,
            environ=environ,
            problems=problems,
            allowed_images=allowed_images,
            # Only a stack folder has a .env of its own.
            read_dotenv=source.parent != files.root / "stacks",
        )
        if stack is not None:
            stacks[name] = stack
    return stacks


# ------------------------------------------------------- the other files --


def _read_document(
    files: StateFiles, name: str, schema: dict[str, Any], problems: Problems
) -> Document | None:
    path = files.root / name
    if not path.exists() and not path.is_symlink():
        return None
    try:
        files.resolve(files.root, name)
        text = files.read_text(path)
    except FileRefused as error:
        problems.error(Location(name, error.line), "", error.reason)
        return None

    document = parse_yaml(text, file=name, problems=problems)
    if document is None:
        return None
    if document.data is None:
        document.data = {}

    # Most files are valid: the compiled yes-or-no check answers that
    # without importing jsonschema, whose import alone costs a fresh process
    # about 40 ms and the daemon about 10 MB of resident memory. Only when it
    # objects does the full validator run, to word every problem.
    if _fast_check(schema)(document.data):
        return document

    from jsonschema import Draft4Validator

    from swarmkeeper.loading.schema import describe_error

    failed = False
    for violation in Draft4Validator(schema).iter_errors(document.data):
        for path_in_file, message in describe_error(violation):
            problems.error(
                document.at(path_in_file), format_path(path_in_file), message
            )
            failed = True
    return None if failed else document


_FAST_CHECKS: dict[int, tuple[dict[str, Any], Callable[[Any], bool]]] = {}


def _fast_check(schema: dict[str, Any]) -> Callable[[Any], bool]:
    """A compiled check of one of this module's schemas, made once per process.

    It follows draft 4, as the full validator does (a float is never an
    integer there), so that it never passes what the full validator would
    refuse; when it refuses, the full validator has the last word.
    """
    known = _FAST_CHECKS.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    from swarmkeeper.loading.schema import compile_yes_no

    check = compile_yes_no(
        {"$schema": "http://json-schema.org/draft-04/schema#", **schema}
    )
    _FAST_CHECKS[id(schema)] = (schema, check)
    return check


def _load_networks(
    files: StateFiles, problems: Problems
) -> tuple[dict[str, DesiredNetwork], str | None]:
    document = _read_document(files, "networks.yml", NETWORKS_SCHEMA, problems)
    if document is None:
        return {}, None

    networks: dict[str, DesiredNetwork] = {}
    ingress: list[str] = []
    for name, definition in (document.data.get("networks") or {}).items():
        definition = definition or {}
        path: FieldPath = ("networks", name)
        if not NETWORK_NAME.match(name) or len(name) > MAX_NETWORK_NAME:
            problems.error(
                document.at(path),
                format_path(path),
                f"{name!r} is not a valid network name (letters, digits, '-', '_', "
                f"'.', at most {MAX_NETWORK_NAME} characters)",
            )
            continue
        options = {
            str(k): go_string(v)
            for k, v in (definition.get("driver_opts") or {}).items()
        }
        if definition.get("encrypted"):
            options["encrypted"] = ""

        create: dict[str, Any] = {
            "Driver": definition.get("driver") or "overlay",
            "Attachable": bool(definition.get("attachable", False)),
            "Internal": bool(definition.get("internal", False)),
            "Ingress": bool(definition.get("ingress", False)),
            "EnableIPv6": bool(definition.get("enable_ipv6", False)),
            "Labels": _string_map(definition.get("labels")),
        }
        if options:
            create["Options"] = options
        ipam = definition.get("ipam")
        if ipam:
            create["IPAM"] = {
                "Driver": ipam.get("driver") or "default",
                "Options": dict(ipam.get("options") or {}),
                "Config": [
                    {
                        key: value
                        for key, value in (
                            ("Subnet", entry.get("subnet")),
                            ("IPRange", entry.get("ip_range")),
                            ("Gateway", entry.get("gateway")),
                            ("AuxiliaryAddresses", entry.get("aux_addresses")),
                        )
                        if value
                    }
                    for entry in ipam.get("config") or []
                ],
            }
        if create["Ingress"]:
            ingress.append(name)
            if create["Attachable"]:
                problems.error(
                    document.at((*path, "attachable")),
                    format_path((*path, "attachable")),
                    "an ingress network cannot be attachable",
                )
        networks[name] = DesiredNetwork(
            name=name, stack=None, create=create, source=document.at(path)
        )

    if len(ingress) > 1:
        problems.error(
            document.at(("networks", ingress[1], "ingress")),
            format_path(("networks", ingress[1], "ingress")),
            f"only one network can be the ingress network; {ingress[0]!r} already is",
        )
    return networks, (ingress[0] if ingress else None)


def _load_nodes(files: StateFiles, problems: Problems) -> dict[str, dict[str, str]]:
    document = _read_document(files, "nodes.yml", NODES_SCHEMA, problems)
    if document is None:
        return {}
    nodes: dict[str, dict[str, str]] = {}
    for hostname, definition in (document.data.get("nodes") or {}).items():
        labels = (definition or {}).get("labels") or {}
        for key in labels:
            if not key.strip():
                path: FieldPath = ("nodes", hostname, "labels", key)
                problems.error(
                    document.at(path), format_path(path), "a label key cannot be empty"
                )
        nodes[hostname] = {str(key): go_string(value) for key, value in labels.items()}
    return nodes


def _load_policy(files: StateFiles, problems: Problems) -> Policy:
    document = _read_document(files, "policy.yml", POLICY_SCHEMA, problems)
    if document is None:
        return Policy()
    data = document.data
    images = data.get("images") or {}
    allowed = images.get("allow")
    return Policy(
        allowed_images=tuple(allowed) if allowed is not None else None,
        prune=bool(data.get("prune", True)),
        prune_cap=data.get("prune_cap"),
        suspend=tuple(data.get("suspend") or ()),
    )


def _string_map(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): go_string(v) for k, v in value.items()}
    return {k: v for k, _, v in (str(item).partition("=") for item in value)}


# ------------------------------------------------------ cross-file checks --


def _check_network_names(
    stacks: dict[str, Stack], networks: dict[str, DesiredNetwork], problems: Problems
) -> None:
    """A name claimed twice, or an external network that nobody declares."""
    for stack in stacks.values():
        for name, network in stack.networks.items():
            if name in networks:
                problems.error(
                    network.source,
                    "",
                    f"network {name!r} is also declared in networks.yml; "
                    "refer to it with external: true",
                )


def _check_suspended(
    stacks: dict[str, Stack], policy: Policy, problems: Problems
) -> None:
    for index, entry in enumerate(policy.suspend):
        stack_name, _, service = entry.partition("/")
        stack = stacks.get(stack_name)
        known = stack is not None and (
            not service or f"{stack_name}_{service}" in stack.services
        )
        if not known:
            problems.warn(
                Location("policy.yml"),
                f"suspend[{index}]",
                f"{entry!r} names no stack or service of the desired state",
            )
