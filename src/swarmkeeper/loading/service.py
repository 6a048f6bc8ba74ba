"""One compose service to one engine ServiceSpec, field by field as the CLI does.

The spec is shaped like the body ``docker stack deploy`` sends (CLI 28.2),
so the engine stores the same thing whichever of the two created the
service. ``../shared/research/engine-spec-notes.md`` (section 1.3) is the map
of every field; the corpus tests in ``tests/compose_corpus`` check each one
against what the real engine stores after a real ``docker stack deploy``.

The schema check has already run, so values have the types the schema
promises; what is checked here is what the schema cannot say (units, port
syntax, references to undefined networks, engine name limits).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmkeeper.desired import STACK_IMAGE_LABEL, STACK_NAMESPACE_LABEL, Location
from swarmkeeper.loading.compose import (
    MAX_SERVICE_NAME,
    StackContext,
    image_allowed,
    mapping_or_list,
    working_path,
)
from swarmkeeper.loading.problems import FieldPath
from swarmkeeper.loading.units import (
    go_string,
    parse_bytes,
    parse_duration,
    parse_nano_cpus,
)

# Swarmkit's rule for service names.
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")

# Files mounted from configs and secrets default to read-only for everyone.
DEFAULT_FILE_MODE = 0o444


@dataclass
class ConvertedService:
    name: str
    spec: dict[str, Any]
    source: Location
    network_keys: set[str] = field(default_factory=set)


class _Invalid(Exception):
    """A value that cannot be converted; reported at ``path``."""

    def __init__(self, path: FieldPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def convert_service(
    context: StackContext, key: str, definition: dict[str, Any]
) -> ConvertedService | None:
    """Convert one service; problems go to the context, None if it has errors."""
    converter = _ServiceConverter(context, key, definition)
    try:
        return converter.convert()
    except _Invalid as invalid:
        context.error(invalid.path, invalid.message)
        return None


class _ServiceConverter:
    def __init__(self, context: StackContext, key: str, definition: dict[str, Any]):
        self.context = context
        self.key = key
        self.service = definition
        self.base: FieldPath = ("services", key)
        self.network_keys: set[str] = set()
        self.failed = False

    # -- helpers ---------------------------------------------------------

    def path(self, *parts: str | int) -> FieldPath:
        return (*self.base, *parts)

    def error(self, path: FieldPath, message: str) -> None:
        self.context.error(path, message)
        self.failed = True

    def duration(self, value: Any, *parts: str | int) -> int:
        try:
            return parse_duration(value)
        except ValueError as error:
            raise _Invalid(self.path(*parts), str(error)) from None

    # -- the service -----------------------------------------------------

    def convert(self) -> ConvertedService | None:
        name = self.context.scoped(self.key)
        if len(name) > MAX_SERVICE_NAME:
            self.error(
                self.base,
                f"the service name {name!r} is {len(name)} characters; "
                f"the engine allows {MAX_SERVICE_NAME}",
            )
        elif not SERVICE_NAME.match(name):
            self.error(
                self.base,
                f"the service name {name!r} is not valid: letters, digits, "
                "and - or _ between them",
            )

        image = self.service.get("image")
        if not image:
            self.error(self.path("image"), "a service needs an image")
            image = ""
        allowed = self.context.allowed_images
        if image and allowed is not None and not image_allowed(str(image), allowed):
            self.error(
                self.path("image"),
                f"{image!r} is not allowed by policy.yml (images.allow)",
            )

        deploy = self.service.get("deploy") or {}
        spec: dict[str, Any] = {
            "Name": name,
            "Labels": {
                **mapping_or_list(deploy.get("labels"), separator="=", bare=""),
                STACK_NAMESPACE_LABEL: self.context.name,
                STACK_IMAGE_LABEL: str(image),
            },
            "TaskTemplate": self.task_template(str(image), deploy),
            "Mode": self.mode(deploy),
            "EndpointSpec": self.endpoint(deploy),
        }
        for compose_key, spec_key in (
            ("update_config", "UpdateConfig"),
            ("rollback_config", "RollbackConfig"),
        ):
            if deploy.get(compose_key) is not None:
                spec[spec_key] = self.update_config(deploy[compose_key], compose_key)

        if self.failed:
            return None
        return ConvertedService(
            name=name,
            spec=spec,
            source=self.context.at(self.base),
            network_keys=self.network_keys,
        )

    def task_template(self, image: str, deploy: dict[str, Any]) -> dict[str, Any]:
        template: dict[str, Any] = {
            "ContainerSpec": self.container_spec(image),
            "Resources": self.resources(deploy.get("resources") or {}),
            "Placement": self.placement(deploy.get("placement") or {}),
            "Networks": self.networks(),
        }
        restart = self.restart_policy(deploy)
        if restart is not None:
            template["RestartPolicy"] = restart
        logging = self.service.get("logging")
        if logging is not None:
            driver: dict[str, Any] = {"Name": str(logging.get("driver") or "")}
            if logging.get("options"):
                driver["Options"] = {
                    str(k): go_string(v) for k, v in logging["options"].items()
                }
            template["LogDriver"] = driver
        return template

    # -- container -------------------------------------------------------

    def container_spec(self, image: str) -> dict[str, Any]:
        service = self.service
        container: dict[str, Any] = {
            "Image": normalize_image(image),
            "Labels": {
                **mapping_or_list(service.get("labels"), separator="=", bare=""),
                STACK_NAMESPACE_LABEL: self.context.name,
            },
            # The CLI always sends an empty Privileges object; the engine then
            # stores one with null members, which is what a read shows.
            "Privileges": self.privileges(),
        }

        for compose_key, spec_key in (("entrypoint", "Command"), ("command", "Args")):
            if service.get(compose_key) is not None:
                container[spec_key] = self.command(service[compose_key], compose_key)

        simple = (
            ("hostname", "Hostname"),
            ("user", "User"),
            ("working_dir", "Dir"),
            ("stop_signal", "StopSignal"),
            ("isolation", "Isolation"),
        )
        for compose_key, spec_key in simple:
            if service.get(compose_key):
                container[spec_key] = str(service[compose_key])
        for compose_key, spec_key in (
            ("tty", "TTY"),
            ("stdin_open", "OpenStdin"),
            ("read_only", "ReadOnly"),
        ):
            if service.get(compose_key):
                container[spec_key] = True
        if service.get("init") is not None:
            container["Init"] = bool(service["init"])

        environment = self.environment()
        if environment:
            container["Env"] = environment
        if service.get("stop_grace_period") is not None:
            container["StopGracePeriod"] = self.duration(
                service["stop_grace_period"], "stop_grace_period"
            )
        if service.get("healthcheck") is not None:
            container["Healthcheck"] = self.healthcheck(service["healthcheck"])
        if service.get("extra_hosts"):
            container["Hosts"] = self.hosts(service["extra_hosts"])

        dns = self.dns()
        if dns:
            container["DNSConfig"] = dns
        mounts = self.mounts()
        if mounts:
            container["Mounts"] = mounts
        secrets = self.file_references("secrets")
        if secrets:
            container["Secrets"] = secrets
        configs = self.file_references("configs")
        if configs:
            container["Configs"] = configs
        if service.get("sysctls"):
            container["Sysctls"] = mapping_or_list(
                service["sysctls"], separator="=", bare=""
            )
        capability_add, capability_drop = self.capabilities()
        if capability_add:
            container["CapabilityAdd"] = capability_add
        if capability_drop:
            container["CapabilityDrop"] = capability_drop
        if service.get("ulimits"):
            container["Ulimits"] = self.ulimits(service["ulimits"])
        return container

    def privileges(self) -> dict[str, Any]:
        spec = self.service.get("credential_spec")
        if not spec:
            return {}
        credential: dict[str, Any] = {}
        for compose_key, spec_key in (
            ("config", "Config"),
            ("file", "File"),
            ("registry", "Registry"),
        ):
            if spec.get(compose_key):
                credential[spec_key] = str(spec[compose_key])
        return {"CredentialSpec": credential}

    def command(self, value: Any, compose_key: str) -> list[str]:
        if isinstance(value, list):
            return [go_string(part) for part in value]
        try:
            return split_command(str(value))
        except ValueError as error:
            raise _Invalid(
                self.path(compose_key), f"cannot be split: {error}"
            ) from None

    def environment(self) -> list[str]:
        """``env_file`` then ``environment`` (which wins), sorted as ``KEY=VALUE``.

        A key written without a value, or with an empty one, takes the value
        from the variables the file is interpolated with, when set there (as
        the CLI does with its own environment); otherwise it stays bare.
        """
        variables: dict[str, str | None] = {}

        env_files = self.service.get("env_file")
        if env_files:
            listed = [env_files] if isinstance(env_files, str) else list(env_files)
            for index, reference in enumerate(listed):
                path = (
                    self.path("env_file")
                    if isinstance(env_files, str)
                    else self.path("env_file", index)
                )
                self.merge_environment(
                    variables, self.read_env_file(str(reference), path)
                )

        environment = self.service.get("environment")
        if environment:
            self.merge_environment(
                variables, mapping_or_list(environment, separator="=", bare=None)
            )

        return sorted(
            key if value is None else f"{key}={value}"
            for key, value in variables.items()
        )

    def merge_environment(
        self, into: dict[str, str | None], values: dict[str, str | None]
    ) -> None:
        for key, value in values.items():
            from_environment = self.context.environ.get(key)
            if (value is None or value == "") and from_environment is not None:
                into[key] = from_environment
            else:
                into[key] = value

    def read_env_file(self, reference: str, path: FieldPath) -> dict[str, str | None]:
        from swarmkeeper.loading.files import FileRefused

        files = self.context.files
        try:
            resolved = files.resolve(self.context.folder, reference)
            text = files.read_text(resolved)
        except FileRefused as error:
            raise _Invalid(path, str(error)) from None
        return parse_env_file(
            text, path=path, on_error=self.error, environ=self.context.environ
        )

    def healthcheck(self, check: dict[str, Any]) -> dict[str, Any]:
        if check.get("disable"):
            if check.get("test") is not None:
                raise _Invalid(
                    self.path("healthcheck"), "`test` and `disable` cannot both be set"
                )
            return {"Test": ["NONE"]}

        result: dict[str, Any] = {}
        test = check.get("test")
        if isinstance(test, str):
            result["Test"] = ["CMD-SHELL", test]
        elif test is not None:
            result["Test"] = [go_string(part) for part in test]
        for compose_key, spec_key in (
            ("interval", "Interval"),
            ("timeout", "Timeout"),
            ("start_period", "StartPeriod"),
        ):
            if check.get(compose_key) is not None:
                nanoseconds = self.duration(
                    check[compose_key], "healthcheck", compose_key
                )
                if nanoseconds:
                    result[spec_key] = nanoseconds
        # start_interval needs API 1.44; the reference engine (1.41) drops it.
        if check.get("retries") is not None:
            result["Retries"] = int(check["retries"])
        return result

    def hosts(self, extra_hosts: Any) -> list[str]:
        """``host:ip`` entries as the engine's ``ip host`` lines, in file order."""
        entries = (
            [f"{host}:{go_string(ip)}" for host, ip in extra_hosts.items()]
            if isinstance(extra_hosts, dict)
            else [str(entry) for entry in extra_hosts]
        )
        lines = []
        for index, entry in enumerate(entries):
            separator = "=" if "=" in entry else ":"
            host, found, address = entry.partition(separator)
            if not found or not host or not address:
                raise _Invalid(
                    self.path("extra_hosts", index), f"{entry!r} is not HOST:IP"
                )
            lines.append(f"{address} {host}")
        return lines

    def dns(self) -> dict[str, Any]:
        dns: dict[str, Any] = {}
        for compose_key, spec_key in (("dns", "Nameservers"), ("dns_search", "Search")):
            value = self.service.get(compose_key)
            if value:
                dns[spec_key] = (
                    [value] if isinstance(value, str) else [str(v) for v in value]
                )
        return dns

    def capabilities(self) -> tuple[list[str], list[str]]:
        """As the CLI normalizes them: upper case, ``CAP_`` prefix, sorted; ALL wins."""

        def normalize(values: Any) -> list[str]:
            result = set()
            for value in values or []:
                name = str(value).strip().upper()
                if not name:
                    continue
                if name != "ALL" and not name.startswith("CAP_"):
                    name = "CAP_" + name
                result.add(name)
            if "ALL" in result:
                return ["ALL"]
            return sorted(result)

        add = normalize(self.service.get("cap_add"))
        drop = normalize(self.service.get("cap_drop"))
        # A capability named in both lists is added, not dropped.
        return add, [name for name in drop if name not in add]

    def ulimits(self, ulimits: dict[str, Any]) -> list[dict[str, Any]]:
        result = []
        for name in sorted(ulimits):
            value = ulimits[name]
            if isinstance(value, dict):
                soft, hard = int(value.get("soft", 0)), int(value.get("hard", 0))
            else:
                soft = hard = int(value)
            result.append({"Name": str(name), "Hard": hard, "Soft": soft})
        return result

    # -- mounts ----------------------------------------------------------

    def mounts(self) -> list[dict[str, Any]]:
        mounts = []
        for index, volume in enumerate(self.service.get("volumes") or []):
            path = self.path("volumes", index)
            spec = parse_volume(volume) if isinstance(volume, str) else dict(volume)
            if spec is None:
                raise _Invalid(path, f"{volume!r} is not SOURCE:TARGET[:MODE]")
            mounts.append(self.mount(spec, path))
        return mounts

    def mount(self, volume: dict[str, Any], path: FieldPath) -> dict[str, Any]:
        kind = str(volume.get("type") or "volume")
        target = str(volume.get("target") or "")
        source = volume.get("source")
        mount: dict[str, Any] = {"Type": kind, "Target": target}
        if volume.get("read_only"):
            mount["ReadOnly"] = True

        if kind == "volume":
            if not source:
                return mount  # anonymous
            declared = self.context.volumes.get(str(source))
            if declared is None:
                raise _Invalid(path, f"undefined volume {source!r}")
            mount["Source"] = declared.name
            # The CLI always sends VolumeOptions for a named volume, empty for
            # an external one, and the engine stores it as sent.
            options: dict[str, Any] = {}
            nocopy = (volume.get("volume") or {}).get("nocopy")
            if nocopy:
                options["NoCopy"] = True
            if not declared.external:
                definition = declared.definition
                options["Labels"] = {
                    **mapping_or_list(definition.get("labels"), separator="=", bare=""),
                    STACK_NAMESPACE_LABEL: self.context.name,
                }
                if definition.get("driver") or definition.get("driver_opts"):
                    driver: dict[str, Any] = {
                        "Name": str(definition.get("driver") or "")
                    }
                    if definition.get("driver_opts"):
                        driver["Options"] = {
                            str(k): go_string(v)
                            for k, v in definition["driver_opts"].items()
                        }
                    options["DriverConfig"] = driver
            mount["VolumeOptions"] = options
            return mount

        if kind == "bind":
            if not source:
                raise _Invalid(path, "a bind mount needs a source")
            mount["Source"] = working_path(self.context, str(source))
            propagation = (volume.get("bind") or {}).get("propagation")
            if propagation:
                mount["BindOptions"] = {"Propagation": str(propagation)}
            return mount

        if kind == "tmpfs":
            if source:
                raise _Invalid(path, "a tmpfs mount cannot have a source")
            size = (volume.get("tmpfs") or {}).get("size")
            if size is not None:
                try:
                    mount["TmpfsOptions"] = {"SizeBytes": parse_bytes(size)}
                except ValueError as error:
                    raise _Invalid((*path, "tmpfs", "size"), str(error)) from None
            return mount

        if kind == "npipe":
            mount["Source"] = str(source or "")
            return mount
        raise _Invalid((*path, "type"), f"unknown mount type {kind!r}")

    # -- configs and secrets ---------------------------------------------

    def file_references(self, section: str) -> list[dict[str, Any]]:
        kind = section[:-1]
        declared = (
            self.context.configs if section == "configs" else self.context.secrets
        )
        references = []
        for index, reference in enumerate(self.service.get(section) or []):
            path = self.path(section, index)
            if isinstance(reference, str):
                reference = {"source": reference}
            source = str(reference.get("source") or "")
            item = declared.get(source)
            if item is None and (section, source) in self.context.broken:
                self.failed = True  # already reported where it is declared
                continue
            if item is None:
                raise _Invalid(path, f"undefined {kind} {source!r}")

            target = str(reference.get("target") or source)
            mode = reference.get("mode")
            entry = {
                "File": {
                    "Name": target,
                    "UID": go_string(reference.get("uid") or "0"),
                    "GID": go_string(reference.get("gid") or "0"),
                    "Mode": int(mode) if mode is not None else DEFAULT_FILE_MODE,
                },
                ("ConfigName" if kind == "config" else "SecretName"): item.name,
            }
            references.append(entry)
        name_key = "ConfigName" if kind == "config" else "SecretName"
        return sorted(references, key=lambda entry: str(entry[name_key]))

    # -- networks --------------------------------------------------------

    def networks(self) -> list[dict[str, Any]]:
        requested = self.service.get("networks")
        if requested is None:
            requested = {"default": None}
        elif isinstance(requested, list):
            requested = {str(name): None for name in requested}

        attachments = []
        for index, (key, options) in enumerate(requested.items()):
            key = str(key)
            path = self.path(
                "networks",
                key if isinstance(self.service.get("networks"), dict) else index,
            )
            declared = self.context.networks.get(key)
            if declared is None and key != "default":
                raise _Invalid(path, f"undefined network {key!r}")
            self.network_keys.add(key)
            target = declared.name if declared else self.context.scoped("default")

            options = options or {}
            aliases = [str(alias) for alias in options.get("aliases") or []]
            attachment: dict[str, Any] = {
                "Target": target,
                "Aliases": [*aliases, self.key],
            }
            if options.get("driver_opts"):
                attachment["DriverOpts"] = {
                    str(k): go_string(v) for k, v in options["driver_opts"].items()
                }
            attachments.append(attachment)
        return sorted(attachments, key=lambda attachment: str(attachment["Target"]))

    # -- deploy ----------------------------------------------------------

    def mode(self, deploy: dict[str, Any]) -> dict[str, Any]:
        mode = str(deploy.get("mode") or "replicated")
        replicas = deploy.get("replicas")
        if replicas is not None and int(replicas) < 0:
            raise _Invalid(
                self.path("deploy", "replicas"), "must be a non-negative integer"
            )

        if mode == "replicated":
            return {
                "Replicated": {"Replicas": 1 if replicas is None else int(replicas)}
            }
        if mode == "replicated-job":
            job: dict[str, Any] = {}
            if replicas is not None:
                job = {
                    "MaxConcurrent": int(replicas),
                    "TotalCompletions": int(replicas),
                }
            return {"ReplicatedJob": job}
        if replicas is not None:
            raise _Invalid(
                self.path("deploy", "replicas"),
                f"cannot be used with mode {mode!r}, only with replicated "
                "and replicated-job",
            )
        if mode == "global":
            return {"Global": {}}
        if mode == "global-job":
            return {"GlobalJob": {}}
        raise _Invalid(
            self.path("deploy", "mode"),
            f"unknown mode {mode!r}: replicated, global, replicated-job or global-job",
        )

    def resources(self, resources: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for compose_key, spec_key in (
            ("limits", "Limits"),
            ("reservations", "Reservations"),
        ):
            section = resources.get(compose_key)
            if section is None:
                continue
            path = ("deploy", "resources", compose_key)
            converted: dict[str, Any] = {}
            try:
                if section.get("cpus") is not None:
                    converted["NanoCPUs"] = parse_nano_cpus(section["cpus"])
                if section.get("memory") is not None:
                    converted["MemoryBytes"] = parse_bytes(section["memory"])
            except ValueError as error:
                raise _Invalid(self.path(*path), str(error)) from None
            if compose_key == "limits" and section.get("pids"):
                converted["Pids"] = int(section["pids"])
            generic = section.get("generic_resources")
            if compose_key == "reservations" and generic:
                converted["GenericResources"] = [
                    {
                        "DiscreteResourceSpec": {
                            "Kind": str(entry["discrete_resource_spec"]["kind"]),
                            "Value": int(entry["discrete_resource_spec"]["value"]),
                        }
                    }
                    for entry in generic
                    if entry.get("discrete_resource_spec")
                ]
            result[spec_key] = converted
        return result

    def placement(self, placement: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if placement.get("constraints"):
            result["Constraints"] = [str(c) for c in placement["constraints"]]
        if placement.get("preferences"):
            result["Preferences"] = [
                {"Spread": {"SpreadDescriptor": str(preference.get("spread", ""))}}
                for preference in placement["preferences"]
            ]
        if placement.get("max_replicas_per_node"):
            result["MaxReplicas"] = int(placement["max_replicas_per_node"])
        return result

    def restart_policy(self, deploy: dict[str, Any]) -> dict[str, Any] | None:
        policy = deploy.get("restart_policy")
        if policy is not None:
            result: dict[str, Any] = {"Condition": str(policy.get("condition") or "")}
            for compose_key, spec_key in (("delay", "Delay"), ("window", "Window")):
                if policy.get(compose_key) is not None:
                    result[spec_key] = self.duration(
                        policy[compose_key], "deploy", "restart_policy", compose_key
                    )
            if policy.get("max_attempts") is not None:
                result["MaxAttempts"] = int(policy["max_attempts"])
            return result

        # The CLI warns that `restart` is unsupported, then uses it anyway.
        restart = self.service.get("restart")
        if restart is None:
            return None
        restart = str(restart)
        if restart in ("always", "unless-stopped"):
            return {"Condition": "any"}
        if restart == "no":
            return None
        name, _, attempts = restart.partition(":")
        if name == "on-failure":
            result = {"Condition": "on-failure"}
            if attempts:
                if not attempts.isdigit():
                    raise _Invalid(
                        self.path("restart"), f"{restart!r}: attempts must be a number"
                    )
                result["MaxAttempts"] = int(attempts)
            return result
        raise _Invalid(
            self.path("restart"),
            f"unknown restart policy {restart!r}: "
            "no, always, unless-stopped or on-failure[:N]",
        )

    def update_config(self, config: dict[str, Any], compose_key: str) -> dict[str, Any]:
        parallelism = config.get("parallelism")
        result: dict[str, Any] = {
            "Parallelism": 1 if parallelism is None else int(parallelism)
        }
        for key, spec_key in (("delay", "Delay"), ("monitor", "Monitor")):
            if config.get(key) is not None:
                nanoseconds = self.duration(config[key], "deploy", compose_key, key)
                if nanoseconds:
                    result[spec_key] = nanoseconds
        if config.get("failure_action"):
            result["FailureAction"] = str(config["failure_action"])
        if config.get("max_failure_ratio") is not None:
            result["MaxFailureRatio"] = float(config["max_failure_ratio"])
        if config.get("order"):
            result["Order"] = str(config["order"])
        return result

    def endpoint(self, deploy: dict[str, Any]) -> dict[str, Any]:
        endpoint: dict[str, Any] = {
            "Mode": str(deploy.get("endpoint_mode") or "").lower()
        }
        ports = self.ports()
        if ports:
            endpoint["Ports"] = ports
        return endpoint

    def ports(self) -> list[dict[str, Any]]:
        ports: list[dict[str, Any]] = []
        for index, entry in enumerate(self.service.get("ports") or []):
            path = self.path("ports", index)
            if isinstance(entry, dict):
                port: dict[str, Any] = {
                    "Protocol": str(entry.get("protocol") or ""),
                    "TargetPort": int(entry.get("target") or 0),
                    "PublishMode": str(entry.get("mode") or ""),
                }
                if entry.get("published") is not None:
                    try:
                        port["PublishedPort"] = int(entry["published"])
                    except ValueError:
                        raise _Invalid(
                            (*path, "published"), "must be a port number"
                        ) from None
                ports.append(port)
                continue
            try:
                ports.extend(parse_port(go_string(entry)))
            except ValueError as error:
                raise _Invalid(path, str(error)) from None
        return sorted(ports, key=lambda port: int(port.get("PublishedPort", 0)))


# ------------------------------------------------------------ parsing ---


def normalize_image(image: str) -> str:
    """The reference as the Go client sends it: familiar form, ``:latest`` added.

    ``docker.io/library/nginx`` becomes ``nginx:latest``; a reference with a tag
    or a digest keeps it.
    """
    name = image
    for prefix in ("docker.io/library/", "index.docker.io/library/"):
        if name.startswith(prefix) and "/" not in name[len(prefix) :].split(":")[0]:
            name = name[len(prefix) :]
            break
    else:
        for prefix in ("docker.io/", "index.docker.io/"):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
    if "@" in name:
        return name
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and name:
        name += ":latest"
    return name


_PORT_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _port_range(text: str, what: str) -> list[int]:
    match = _PORT_RANGE.match(text)
    if match is None:
        raise ValueError(f"invalid {what} port {text!r}")
    start = int(match[1])
    end = int(match[2]) if match[2] else start
    if end < start or not 0 < start <= 65535 or end > 65535:
        raise ValueError(f"invalid {what} port range {text!r}")
    return list(range(start, end + 1))


def parse_port(text: str) -> list[dict[str, Any]]:
    """Short port syntax, ``[IP:][PUBLISHED:]TARGET[/PROTOCOL]`` with ranges."""
    spec, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid protocol {protocol!r} in {text!r}")

    parts = spec.rsplit(":", 2)
    if len(parts) == 3:
        _, published_text, target_text = parts  # the host IP is ignored by swarm
    elif len(parts) == 2:
        published_text, target_text = parts
    else:
        published_text, target_text = "", parts[0]

    targets = _port_range(target_text, "target")
    published = _port_range(published_text, "published") if published_text else []
    if published and len(published) != len(targets):
        if len(targets) == 1:
            raise ValueError(f"{text!r}: a published range needs a target range")
        raise ValueError(f"{text!r}: the published and target ranges differ in size")

    ports = []
    for index, target in enumerate(targets):
        port: dict[str, Any] = {
            "Protocol": protocol,
            "TargetPort": target,
            "PublishMode": "ingress",
        }
        if published:
            port["PublishedPort"] = published[index]
        ports.append(port)
    return ports


def parse_volume(text: str) -> dict[str, Any] | None:
    """Short volume syntax, ``[SOURCE:]TARGET[:MODE]``, as a long-syntax mapping."""
    parts = text.split(":")
    if len(parts) > 3 or not text:
        return None
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}

    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) == 3 else []
    is_path = source.startswith(("/", ".", "~"))
    volume: dict[str, Any] = {
        "type": "bind" if is_path else "volume",
        "source": source,
        "target": target,
    }
    for mode in modes:
        if mode == "ro":
            volume["read_only"] = True
        elif mode == "rw":
            volume["read_only"] = False
        elif mode == "nocopy":
            volume["volume"] = {"nocopy": True}
        elif mode in ("shared", "rshared", "slave", "rslave", "private", "rprivate"):
            volume["bind"] = {"propagation": mode}
        elif mode in ("z", "Z", "cached", "delegated", "consistent"):
            continue  # SELinux and macOS hints: swarm has no use for them
        else:
            return None
    return volume


def parse_env_file(
    text: str, *, path: FieldPath, on_error: Any, environ: Mapping[str, str]
) -> dict[str, str | None]:
    """An ``env_file`` as the CLI reads it: ``KEY=VALUE`` lines, no quoting rules.

    Blank lines and ``#`` comments are skipped. A line with only a name takes
    the variable's value from ``environ`` when it is set there, and is left
    out otherwise.
    """
    variables: dict[str, str | None] = {}
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, found, value = line.partition("=")
        if not name or any(character.isspace() for character in name):
            on_error(
                path, f"line {number}: variable {name!r} has white space in its name"
            )
            continue
        if found:
            variables[name] = value
        elif name in environ:
            variables[name] = environ[name]
    return variables


def split_command(text: str) -> list[str]:
    """Split a command string into words the way the CLI does (Go's shlex rules).

    Whitespace separates words; single quotes keep everything literally;
    in double quotes and outside quotes a backslash keeps the next character
    (the backslash itself is dropped); a ``#`` at the start of a word begins
    a comment to the end of the line. No variables, globs or operators: the
    words go to the engine as they are, not to a shell.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = False
    index = 0

    def take_escaped() -> str:
        nonlocal index
        if index >= len(text):
            raise ValueError("EOF found after escape character")
        index += 1
        return text[index - 1]

    while index < len(text):
        character = text[index]
        index += 1
        if character.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        elif character == "#" and not in_word:
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline + 1
        elif character == "\\":
            in_word = True
            word.append(take_escaped())
        elif character == "'":
            in_word = True
            end = text.find("'", index)
            if end < 0:
                raise ValueError("EOF found when expecting closing quote")
            word.append(text[index:end])
            index = end + 1
        elif character == '"':
            in_word = True
            while True:
                if index >= len(text):
                    raise ValueError("EOF found when expecting closing quote")
                character = text[index]
                index += 1
                if character == '"':
                    break
                word.append(take_escaped() if character == "\\" else character)
        else:
            in_word = True
            word.append(character)

    if in_word:
        words.append("".join(word))
    return words
