"""One compose file to one stack, the way ``docker stack deploy`` converts it.

The steps, in the CLI's order: read and parse the file, interpolate
``${VAR}`` references, check the compose version and the schema the CLI
checks against, refuse the keys the CLI refuses and warn about those swarm
ignores, then convert the top-level networks, configs and secrets, and every
service (``service.py``).

Differences from the CLI, on purpose:

* A ``.env`` file beside a stack's compose file is read for interpolation
  (the CLI ignores it; users asked for it). The process environment wins
  over it, as in ``docker compose``. Variables named ``SWARMKEEPER_*`` are
  never visible to a compose file: they are swarmkeeper's own settings.
* Config and secret names carry the first ten hex digits of their content's
  SHA-256 (``<stack>_<key>-<hash>``), so a changed file is a new object that
  services move to, instead of the in-place update the engine refuses.
* Everything is checked before anything is written: the CLI creates networks
  and only then notices an undefined network in a later service.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmkeeper.desired import (
    STACK_NAMESPACE_LABEL,
    DesiredBlob,
    DesiredNetwork,
    DesiredService,
    Location,
    Problem,
    Stack,
)
from swarmkeeper.loading.files import Document, FileRefused, StateFiles, parse_yaml
from swarmkeeper.loading.interpolation import interpolate
from swarmkeeper.loading.problems import FieldPath, Problems, format_path
from swarmkeeper.loading.units import go_string

# The newest compose file version the reference CLI (28.2) accepts; "3" and
# a missing version mean this one.
NEWEST_VERSION = (3, 13)

# Keys the CLI refuses outright in a stack.
FORBIDDEN_SERVICE_KEYS = (
    "extends",
    "volume_driver",
    "volumes_from",
    "cpu_quota",
    "cpu_shares",
    "cpuset",
    "mem_limit",
    "memswap_limit",
)
# Keys swarm ignores; the CLI warns "Ignoring unsupported options: ...".
# (`restart` is still used when `deploy.restart_policy` is absent.)
IGNORED_SERVICE_KEYS = (
    "build",
    "cgroupns_mode",
    "cgroup_parent",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
)
DEPRECATED_SERVICE_KEYS = {
    "container_name": "setting the container name is not supported",
    "expose": "exposing ports is unnecessary: services on the same network "
    "reach each other's containers on any port",
}

# Engine limits: object names are at most 64 characters; service names are
# DNS-label-like and at most 63.
MAX_OBJECT_NAME = 64
MAX_SERVICE_NAME = 63
HASH_DIGITS = 10

_INTERPOLATED_SECTIONS = ("services", "networks", "volumes", "configs", "secrets")


@dataclass
class StackContext:
    """What converting one stack's parts needs to know, and where to report."""

    name: str
    document: Document
    problems: Problems
    folder: Path  # the compose file's folder, as the state directory spells it
    files: StateFiles
    environ: Mapping[str, str]
    allowed_images: tuple[str, ...] | None = None
    networks: dict[str, TopLevelObject] = field(default_factory=dict)
    volumes: dict[str, TopLevelObject] = field(default_factory=dict)
    configs: dict[str, TopLevelObject] = field(default_factory=dict)
    secrets: dict[str, TopLevelObject] = field(default_factory=dict)
    # Keys of configs and secrets already reported as broken, so that the
    # services using them do not add "undefined" errors on top.
    broken: set[tuple[str, str]] = field(default_factory=set)

    def at(self, path: FieldPath) -> Location:
        return self.document.at(path)

    def error(self, path: FieldPath, message: str) -> None:
        self.problems.error(self.at(path), format_path(path), message)

    def warn(self, path: FieldPath, message: str) -> None:
        self.problems.warn(self.at(path), format_path(path), message)

    def scoped(self, key: str) -> str:
        """``<stack>_<key>``: how the CLI names what a stack creates."""
        return f"{self.name}_{key}"


@dataclass(frozen=True)
class TopLevelObject:
    """A network, volume, config or secret declared at the top of the file."""

    key: str
    name: str  # the engine object's name (for configs and secrets: with hash)
    external: bool
    definition: dict[str, Any]


def load_stack(
    name: str,
    compose_file: Path,
    *,
    state_dir: Path,
    environ: Mapping[str, str],
    secrets_dir: Path | None = None,
    read_dotenv: bool = True,
) -> tuple[Stack, list[Problem]]:
    """Convert one compose file; raise InvalidDesiredState listing every problem.

    Returns the stack and the warnings (fields swarm ignores, secrets kept in
    the state directory, unset variables).
    """
    problems = Problems()
    files = StateFiles(root=state_dir, secrets_dir=secrets_dir)
    stack = convert_compose_file(
        name,
        compose_file,
        files=files,
        environ=environ,
        problems=problems,
        read_dotenv=read_dotenv,
    )
    problems.raise_if_any()
    assert stack is not None  # no errors means a stack was built
    return stack, list(problems.warnings)


def convert_compose_file(
    name: str,
    compose_file: Path,
    *,
    files: StateFiles,
    environ: Mapping[str, str],
    problems: Problems,
    read_dotenv: bool = True,
    allowed_images: tuple[str, ...] | None = None,
) -> Stack | None:
    """Convert one compose file, recording problems; None when it has errors.

    ``allowed_images`` is the policy's allow-list (None allows every image).
    """
    display = files.display(compose_file)
    errors_before = len(problems.errors)

    try:
        text = files.read_text(compose_file)
    except FileRefused as error:
        problems.error(Location(display, error.line), "", error.reason)
        return None
    document = parse_yaml(text, file=display, problems=problems)
    if document is None:
        return None
    if document.data is None:
        document.data = {}
    if not isinstance(document.data, dict):
        problems.error(
            document.at(()), "", "a compose file must be a mapping of sections"
        )
        return None

    folder = compose_file.parent
    variables = _variables(folder, files, environ, problems, read_dotenv=read_dotenv)
    context = StackContext(
        name=name,
        document=document,
        problems=problems,
        folder=folder,
        files=files,
        environ=variables,
        allowed_images=allowed_images,
    )

    if "$" in text:  # most files have no reference at all: skip the walk
        _interpolate(context)
    if not _check_version(context):
        return None
    # Services whose own fields broke the schema are not converted (their
    # types cannot be trusted); the others still are, so that one run reports
    # every problem of the file.
    invalid_services = _check_schema(context)
    if invalid_services is None:
        return None
    _check_service_keys(context)

    context.networks = _declared(context, "networks")
    context.volumes = _declared(context, "volumes")
    context.configs = _declared_blobs(context, "configs")
    context.secrets = _declared_blobs(context, "secrets")

    from swarmkeeper.loading.service import convert_service

    services: dict[str, DesiredService] = {}
    used_networks: set[str] = set()
    for key, definition in (document.data.get("services") or {}).items():
        if str(key) in invalid_services:
            continue
        converted = convert_service(context, str(key), definition or {})
        if converted is not None:
            services[converted.name] = DesiredService(
                name=converted.name,
                stack=name,
                spec=converted.spec,
                source=converted.source,
            )
            used_networks.update(converted.network_keys)

    if len(problems.errors) > errors_before:
        return None

    return Stack(
        name=name,
        source=Location(display),
        services=services,
        networks=_networks_to_create(context, used_networks),
        configs=_blobs_to_create(context, context.configs, "config"),
        secrets=_blobs_to_create(context, context.secrets, "secret"),
        external_networks=frozenset(
            context.networks[key].name
            for key in used_networks
            if key in context.networks and context.networks[key].external
        ),
        external_configs=frozenset(
            o.name for o in context.configs.values() if o.external
        ),
        external_secrets=frozenset(
            o.name for o in context.secrets.values() if o.external
        ),
    )


# --------------------------------------------------------------- variables --


def _variables(
    folder: Path,
    files: StateFiles,
    environ: Mapping[str, str],
    problems: Problems,
    *,
    read_dotenv: bool,
) -> dict[str, str]:
    """The variables a compose file may use: ``.env``, then the environment."""
    variables: dict[str, str] = {}
    dotenv = folder / ".env"
    if read_dotenv and dotenv.exists():
        try:
            variables.update(_parse_dotenv(files.read_text(dotenv)))
        except FileRefused as error:
            problems.error(
                Location(files.display(dotenv), error.line), "", error.reason
            )
    variables.update(environ)
    return {
        key: value
        for key, value in variables.items()
        if not key.upper().startswith("SWARMKEEPER_")
    }


def _parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=value`` lines, comments, ``export`` and quotes, as compose reads them."""
    import io

    from dotenv import dotenv_values

    return {
        key: value if value is not None else ""
        for key, value in dotenv_values(stream=io.StringIO(text)).items()
    }


def _interpolate(context: StackContext) -> None:
    data = context.document.data
    unset_reported: set[str] = set()

    def on_error(path: FieldPath, message: str) -> None:
        context.error(path, message)

    def on_unset(path: FieldPath, variable: str) -> None:
        if variable not in unset_reported:
            unset_reported.add(variable)
            context.warn(path, f"variable {variable} is not set; using an empty string")

    for section in _INTERPOLATED_SECTIONS:
        if section in data:
            data[section] = _interpolate_section(
                data[section], section, context, on_error, on_unset
            )


def _interpolate_section(
    value: Any, section: str, context: StackContext, on_error: Any, on_unset: Any
) -> Any:
    # Interpolate with paths rooted at the section, so problems name the
    # full field path.
    wrapped = interpolate(
        {section: value}, context.environ, on_error=on_error, on_unset=on_unset
    )
    return wrapped[section]


# ------------------------------------------------------ version and schema --


def _check_version(context: StackContext) -> bool:
    data = context.document.data
    if data.get("version") in (None, ""):
        context.document.data["version"] = "3.13"
        return True
    raw = data["version"]
    text = go_string(raw) if isinstance(raw, (int, float, str)) else None
    parsed = _parse_version(text) if text is not None else None
    if parsed is None or parsed > NEWEST_VERSION or parsed < (3, 0):
        context.error(
            ("version",),
            f"unsupported compose file version {text or raw!r}: "
            f"docker stack deploy reads versions 3 to 3.{NEWEST_VERSION[1]}",
        )
        return False
    return True


def _parse_version(text: str) -> tuple[int, int] | None:
    if text == "3":
        return NEWEST_VERSION
    major, dot, minor = text.partition(".")
    if dot and major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    return None


def _check_schema(context: StackContext) -> set[str] | None:
    """Validate against the CLI's own JSON schema for the file's version.

    Returns the services with schema errors, or None when something outside
    the services is wrong (then nothing can be converted).
    """
    from swarmkeeper.loading.schema import validate_compose

    data = context.document.data
    version = _parse_version(go_string(data["version"])) or NEWEST_VERSION
    invalid_services: set[str] = set()
    elsewhere = False
    # Interpolation and the version default keep every key a string.
    string_keys = context.document.string_keys
    for path, message in validate_compose(data, version, string_keys=string_keys):
        context.error(path, message)
        if len(path) >= 2 and path[0] == "services":
            invalid_services.add(str(path[1]))
        else:
            elsewhere = True
    return None if elsewhere else invalid_services


def _check_service_keys(context: StackContext) -> None:
    for key, definition in (context.document.data.get("services") or {}).items():
        if not isinstance(definition, dict):
            continue
        for option in FORBIDDEN_SERVICE_KEYS:
            if option in definition:
                context.error(
                    ("services", str(key), option),
                    "not supported by docker stack deploy (swarm has no such setting)",
                )
        for option in IGNORED_SERVICE_KEYS:
            if option in definition:
                context.warn(
                    ("services", str(key), option),
                    "ignored by swarm (the CLI says: Ignoring unsupported options)",
                )
        for option, reason in DEPRECATED_SERVICE_KEYS.items():
            if option in definition:
                context.warn(("services", str(key), option), f"ignored: {reason}")


# ----------------------------------------------------- top-level objects --


def _declared(context: StackContext, section: str) -> dict[str, TopLevelObject]:
    """Top-level networks or volumes: the engine name each key stands for.

    An external object keeps its own name (``name:`` or the key); the stack's
    own ones are ``<stack>_<key>`` unless ``name:`` says otherwise.
    """
    declared: dict[str, TopLevelObject] = {}
    for key, definition in (context.document.data.get(section) or {}).items():
        definition = definition or {}
        external = _is_external(definition)
        name = (
            _external_name(definition, str(key))
            if external
            else (definition.get("name") or context.scoped(str(key)))
        )
        declared[str(key)] = TopLevelObject(str(key), str(name), external, definition)
    return declared


def _is_external(definition: dict[str, Any]) -> bool:
    external = definition.get("external")
    if isinstance(external, dict):  # the old form: external: {name: x}
        return True
    return bool(external)


def _external_name(definition: dict[str, Any], key: str) -> str:
    external = definition.get("external")
    if isinstance(external, dict) and external.get("name"):
        return str(external["name"])
    return str(definition.get("name") or key)


def _declared_blobs(context: StackContext, section: str) -> dict[str, TopLevelObject]:
    """Configs or secrets: read each file now, and name it by its content."""
    kind = section[:-1]
    declared: dict[str, TopLevelObject] = {}
    for key, definition in (context.document.data.get(section) or {}).items():
        key = str(key)
        definition = definition or {}
        path = (section, key)
        if _is_external(definition):
            name = _external_name(definition, key)
            declared[key] = TopLevelObject(key, name, True, definition)
            continue

        source = definition.get("file")
        if not source:
            context.error(path, f"a {kind} needs `file:` or `external: true`")
            context.broken.add((section, key))
            continue
        data = _read_blob(context, kind, str(source), (*path, "file"))
        if data is None:
            context.broken.add((section, key))
            continue
        digest = hashlib.sha256(data).hexdigest()
        base = str(definition.get("name") or context.scoped(key))
        name = content_addressed_name(base, digest)
        declared[key] = TopLevelObject(
            key, name, False, {**definition, "_data": data, "_digest": digest}
        )
    return declared


def content_addressed_name(base: str, digest: str) -> str:
    """``<base>-<10 hex digits>``, ``base`` shortened to fit the engine's limit."""
    suffix = "-" + digest[:HASH_DIGITS]
    return base[: MAX_OBJECT_NAME - len(suffix)] + suffix


def _read_blob(
    context: StackContext, kind: str, source: str, path: FieldPath
) -> bytes | None:
    files = context.files
    allow_secrets_dir = kind == "secret"
    try:
        resolved = files.resolve(
            context.folder, source, allow_secrets_dir=allow_secrets_dir
        )
        data = files.read_bytes(resolved)
    except FileRefused as error:
        context.error(path, str(error))
        return None

    if kind == "secret" and _inside(resolved, files.root):
        context.warn(
            path,
            "this secret's file is inside the state directory, so its value is "
            "probably in git; keep it in the secrets directory "
            "(SWARMKEEPER_SECRETS_DIR) or make it external",
        )
    return data


def _inside(path: Path, folder: Path) -> bool:
    real, root = path.resolve(), folder.resolve()
    return real == root or root in real.parents


def _networks_to_create(
    context: StackContext, used: set[str]
) -> dict[str, DesiredNetwork]:
    """The stack's own networks that some service uses, as the CLI creates them."""
    networks: dict[str, DesiredNetwork] = {}
    for key in sorted(used):
        declared = context.networks.get(key)
        if declared is not None and declared.external:
            continue
        definition = declared.definition if declared else {}
        name = declared.name if declared else context.scoped(key)
        path = ("networks", key)

        labels = {
            **_labels(definition.get("labels")),
            STACK_NAMESPACE_LABEL: context.name,
        }
        create: dict[str, Any] = {
            "Driver": definition.get("driver") or "overlay",
            "Labels": labels,
            "Internal": bool(definition.get("internal", False)),
            "Attachable": bool(definition.get("attachable", False)),
        }
        if definition.get("driver_opts"):
            create["Options"] = {
                str(k): go_string(v) for k, v in definition["driver_opts"].items()
            }
        ipam = definition.get("ipam") or {}
        if ipam.get("driver") or ipam.get("config"):
            create["IPAM"] = {
                "Driver": ipam.get("driver") or "",
                "Config": [
                    {"Subnet": str(entry["subnet"])}
                    for entry in ipam.get("config") or []
                    if isinstance(entry, dict) and entry.get("subnet")
                ],
            }
        networks[name] = DesiredNetwork(
            name=name, stack=context.name, create=create, source=context.at(path)
        )
    return networks


def _blobs_to_create(
    context: StackContext, declared: dict[str, TopLevelObject], kind: str
) -> dict[str, DesiredBlob]:
    blobs: dict[str, DesiredBlob] = {}
    for key, item in declared.items():
        if item.external:
            continue
        definition = item.definition
        templating = None
        if definition.get("template_driver"):
            templating = {"Name": str(definition["template_driver"])}
        blobs[item.name] = DesiredBlob(
            kind=kind,
            name=item.name,
            stack=context.name,
            labels={
                **_labels(definition.get("labels")),
                STACK_NAMESPACE_LABEL: context.name,
            },
            data=definition["_data"],
            digest=definition["_digest"],
            source=context.at((f"{kind}s", key)),
            templating=templating,
        )
    return blobs


def _labels(value: Any) -> dict[str, str]:
    """A compose label list (``k=v``) or mapping, as strings."""
    return mapping_or_list(value, separator="=", bare="")


def mapping_or_list(value: Any, *, separator: str, bare: str | None) -> dict[str, Any]:
    """Compose's two spellings of a mapping: ``{k: v}`` or ``["k=v", ...]``.

    A list item without a separator maps to ``bare`` (None keeps it valueless).
    """
    if not value:
        return {}
    if isinstance(value, dict):
        return {
            str(key): (bare if item is None else go_string(item))
            for key, item in value.items()
        }
    result: dict[str, Any] = {}
    for item in value:
        key, found, text = str(item).partition(separator)
        result[key] = text if found else bare
    return result


def short_image_name(image: str) -> str:
    """Docker's short form: ``registry:2``, not ``docker.io/library/registry:2``."""
    for prefix in (
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ):
        if image.startswith(prefix):
            return image[len(prefix) :]
    return image


def image_allowed(image: str, patterns: tuple[str, ...]) -> bool:
    """Whether a glob of the allow-list matches the image as written.

    ``*`` matches any characters, ``/`` included, so ``registry.local/*``
    admits every image of that registry.
    """
    short = short_image_name(image)
    return any(fnmatch.fnmatchcase(short, pattern) for pattern in patterns)


def working_path(context: StackContext, source: str) -> str:
    """A bind source as the engine needs it: absolute, resolved like the CLI.

    A relative source resolves against the compose file's folder as the state
    directory spells it, so it stays the same from one git revision to the
    next even when the directory is a switched symlink.
    """
    if source.startswith("~"):
        source = os.path.expanduser(source)
    if os.path.isabs(source):
        return source  # kept as written, trailing slash and all, as the CLI does
    return os.path.normpath(os.path.join(os.path.abspath(context.folder), source))
