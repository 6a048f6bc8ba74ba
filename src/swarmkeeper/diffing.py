"""Comparing specs without false drift: both sides in one canonical form, then a diff.

The same intent is stored in different shapes depending on who wrote it
(the CLI sends empty objects, ``docker service create`` sends explicit
falses, the engine fills some defaults and leaves others out). So desired
and live specs both go through :func:`canonical_service`, which applies the
engine's own defaults, sorts what the engine treats as a set, drops what is
derived (image digests, platforms, ``ForceUpdate``, config and secret IDs)
and names networks instead of giving their IDs. Equal canonical forms mean
no drift; otherwise :func:`field_changes` lists the changed paths.

This module is pure: no engine, no files.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

JSONObject = dict[str, Any]

# On a service: the revision of the desired state whose pass last wrote it
# (a git commit or dir-<hash>). Bookkeeping, never drift: a new revision must
# not rewrite services it did not change.
REVISION_LABEL = "swarmkeeper.revision"

SECOND = 1_000_000_000
DEFAULT_STOP_GRACE_PERIOD = 10 * SECOND
DEFAULT_RESTART_POLICY: JSONObject = {
    "Condition": "any",
    "Delay": 5 * SECOND,
    "MaxAttempts": 0,
    "Window": 0,
}
DEFAULT_UPDATE_CONFIG: JSONObject = {
    "Parallelism": 1,
    "Delay": 0,
    "FailureAction": "pause",
    "Monitor": 5 * SECOND,
    "MaxFailureRatio": 0.0,
    "Order": "stop-first",
}


@dataclass(frozen=True)
class FieldChange:
    """One changed field: its dotted path, and the live and desired values."""

    path: str
    old: Any
    new: Any


MISSING = None  # how an absent value shows in a FieldChange


def _empty(value: Any) -> bool:
    return value is None or (not value and isinstance(value, (dict, list, str)))


def _prune_empty(mapping: JSONObject, *keys: str) -> None:
    for key in keys:
        if key in mapping and _empty(mapping[key]):
            del mapping[key]


def _float32(value: Any) -> float:
    """The engine stores ratios as float32; round both sides the same way."""
    result: float = struct.unpack("f", struct.pack("f", float(value or 0)))[0]
    return result


def strip_digest(image: str) -> str:
    """``nginx:1.25@sha256:...`` as ``nginx:1.25``: the digest is derived data."""
    return image.split("@", 1)[0]


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data: dicts, lists, tuples and scalars.

    Specs are plain JSON, so copy.deepcopy's memo and dispatch are dead
    weight; they were most of a daemon's pass (canonical_service runs twice
    per service per pass) and a tenth of a cold apply of 1,000 services
    (each spec copied before its names are resolved). Any other mutable type
    still goes to deepcopy.
    """
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, tuple):
        return tuple(copy_json(item) for item in value)
    return copy.deepcopy(value)


def canonical_service(spec: JSONObject, *, network_names: dict[str, str]) -> JSONObject:
    """A service spec in the canonical form both sides are compared in.

    ``network_names`` maps network IDs to names, for the live side, whose
    attachments name networks by ID.
    """
    result: JSONObject = {"Name": spec.get("Name", "")}
    result["Labels"] = dict(spec.get("Labels") or {})
    result["Labels"].pop(REVISION_LABEL, None)

    template = copy_json(spec.get("TaskTemplate") or {})
    # A legacy service keeps its networks at the top level of the spec.
    if not template.get("Networks") and spec.get("Networks"):
        template["Networks"] = copy_json(spec["Networks"])
    result["TaskTemplate"] = _canonical_template(template, network_names)
    result["Mode"] = _canonical_mode(spec.get("Mode"))
    for key in ("UpdateConfig", "RollbackConfig"):
        result[key] = _canonical_update_config(spec.get(key))
    result["EndpointSpec"] = _canonical_endpoint(spec.get("EndpointSpec"))
    return result


def _canonical_template(
    template: JSONObject, network_names: dict[str, str]
) -> JSONObject:
    template.pop("ForceUpdate", None)
    if template.get("Runtime") in (None, "", "container"):
        template.pop("Runtime", None)

    template["ContainerSpec"] = _canonical_container(
        template.get("ContainerSpec") or {}
    )

    resources = template.get("Resources") or {}
    _prune_empty(resources, "Limits", "Reservations")
    for section in resources.values():
        if isinstance(section, dict):
            for key in [k for k, v in section.items() if v in (0, None, [], {})]:
                del section[key]
    _prune_empty(resources, "Limits", "Reservations")
    template["Resources"] = resources

    restart = {**DEFAULT_RESTART_POLICY, **(template.get("RestartPolicy") or {})}
    if restart.get("Condition") in (None, ""):
        restart["Condition"] = "any"
    if restart.get("Delay") is None:
        restart["Delay"] = DEFAULT_RESTART_POLICY["Delay"]
    template["RestartPolicy"] = restart

    placement = template.get("Placement") or {}
    placement.pop("Platforms", None)  # added by digest resolution: derived
    if placement.get("Constraints"):
        placement["Constraints"] = sorted(set(placement["Constraints"]))
    if not placement.get("MaxReplicas"):
        placement.pop("MaxReplicas", None)
    _prune_empty(placement, "Constraints", "Preferences")
    template["Placement"] = placement

    networks = []
    for attachment in template.get("Networks") or []:
        target = attachment.get("Target", "")
        entry: JSONObject = {
            "Target": network_names.get(target, target),
            "Aliases": sorted(set(attachment.get("Aliases") or [])),
        }
        if attachment.get("DriverOpts"):
            entry["DriverOpts"] = dict(attachment["DriverOpts"])
        networks.append(entry)
    template["Networks"] = sorted(networks, key=lambda n: str(n["Target"]))

    log_driver = template.get("LogDriver")
    if log_driver is not None:
        log_driver = {
            "Name": log_driver.get("Name", ""),
            **({"Options": log_driver["Options"]} if log_driver.get("Options") else {}),
        }
        template["LogDriver"] = log_driver
    _prune_empty(template, "Networks", "LogDriver")
    return template


def _canonical_container(container: JSONObject) -> JSONObject:
    # ``container`` belongs to the template copy canonical_service made.
    image = str(container.get("Image") or "")
    container["Image"] = strip_digest(image)

    if container.get("Isolation") in (None, ""):
        container["Isolation"] = "default"
    if container.get("StopGracePeriod") is None:
        container["StopGracePeriod"] = DEFAULT_STOP_GRACE_PERIOD

    privileges = {
        k: v
        for k, v in (container.get("Privileges") or {}).items()
        if v not in (None, False, {})
    }
    container["Privileges"] = privileges

    for flag in ("TTY", "OpenStdin", "ReadOnly", "Init"):
        # False is the engine's default for each (Init: the daemon's, which
        # is false unless the daemon is configured otherwise).
        if not container.get(flag):
            container.pop(flag, None)

    if container.get("Env"):
        container["Env"] = sorted(container["Env"])
    for key in ("CapabilityAdd", "CapabilityDrop"):
        if container.get(key):
            container[key] = sorted(set(container[key]))
    if container.get("Ulimits"):
        container["Ulimits"] = sorted(
            container["Ulimits"], key=lambda u: str(u.get("Name"))
        )

    mounts = []
    for mount in container.get("Mounts") or []:
        mount = dict(mount)
        if not mount.get("ReadOnly"):
            mount.pop("ReadOnly", None)
        _prune_empty(mount, "VolumeOptions", "BindOptions", "TmpfsOptions", "Source")
        options = mount.get("VolumeOptions")
        if isinstance(options, dict):
            options = {
                k: v for k, v in options.items() if not _empty(v) and v is not False
            }
            if options:
                mount["VolumeOptions"] = options
            else:
                mount.pop("VolumeOptions")
        mounts.append(mount)
    container["Mounts"] = sorted(mounts, key=lambda m: str(m.get("Target")))

    for key, name_key, id_key in (
        ("Secrets", "SecretName", "SecretID"),
        ("Configs", "ConfigName", "ConfigID"),
    ):
        references = []
        for reference in container.get(key) or []:
            reference = {k: v for k, v in reference.items() if k != id_key}
            references.append(reference)
        container[key] = sorted(
            references, key=lambda r: (str(r.get(name_key)), str(r.get("File")))
        )

    healthcheck = container.get("Healthcheck")
    if isinstance(healthcheck, dict):
        container["Healthcheck"] = {
            k: v for k, v in healthcheck.items() if not _empty(v) and v != 0
        }

    _prune_empty(
        container,
        "Labels",
        "Command",
        "Args",
        "Env",
        "Mounts",
        "Secrets",
        "Configs",
        "DNSConfig",
        "Hosts",
        "Sysctls",
        "CapabilityAdd",
        "CapabilityDrop",
        "Ulimits",
        "Healthcheck",
        "Hostname",
        "Dir",
        "User",
        "StopSignal",
        "Groups",
    )
    return container


def _canonical_mode(mode: JSONObject | None) -> JSONObject:
    if not mode:
        return {"Replicated": {"Replicas": 1}}
    if "Replicated" in mode:
        replicas = (mode["Replicated"] or {}).get("Replicas")
        return {"Replicated": {"Replicas": 1 if replicas is None else replicas}}
    if "ReplicatedJob" in mode:
        job = mode["ReplicatedJob"] or {}
        concurrent = job.get("MaxConcurrent") or 1
        completions = job.get("TotalCompletions") or concurrent
        return {
            "ReplicatedJob": {
                "MaxConcurrent": concurrent,
                "TotalCompletions": completions,
            }
        }
    if "Global" in mode:
        return {"Global": {}}
    if "GlobalJob" in mode:
        return {"GlobalJob": {}}
    return copy.deepcopy(mode)


def _canonical_update_config(config: JSONObject | None) -> JSONObject:
    if config is None:
        return dict(DEFAULT_UPDATE_CONFIG)
    # A present config with a field left out means that field's zero value,
    # except where the engine substitutes its own default.
    result: JSONObject = {
        "Parallelism": config.get("Parallelism") or 0,
        "Delay": config.get("Delay") or 0,
        "FailureAction": config.get("FailureAction") or "pause",
        "Monitor": config.get("Monitor") or DEFAULT_UPDATE_CONFIG["Monitor"],
        "MaxFailureRatio": _float32(config.get("MaxFailureRatio")),
        "Order": config.get("Order") or "stop-first",
    }
    return result


def _canonical_endpoint(endpoint: JSONObject | None) -> JSONObject:
    endpoint = endpoint or {}
    ports = []
    for port in endpoint.get("Ports") or []:
        entry: JSONObject = {
            "Protocol": port.get("Protocol") or "tcp",
            "TargetPort": port.get("TargetPort") or 0,
            "PublishMode": port.get("PublishMode") or "ingress",
        }
        if port.get("PublishedPort"):
            entry["PublishedPort"] = port["PublishedPort"]
        ports.append(entry)
    result: JSONObject = {"Mode": (endpoint.get("Mode") or "vip").lower()}
    if ports:
        result["Ports"] = sorted(
            ports,
            key=lambda p: (
                p.get("PublishedPort", 0),
                p["TargetPort"],
                p["Protocol"],
                p["PublishMode"],
            ),
        )
    return result


def field_changes(live: Any, desired: Any, path: str = "") -> Iterator[FieldChange]:
    """Each leaf that differs between two canonical forms, by dotted path.

    Mappings are compared key by key; lists and scalars as whole values, so a
    changed environment shows as one change of ``...ContainerSpec.Env``.
    """
    if isinstance(live, dict) and isinstance(desired, dict):
        for key in sorted(set(live) | set(desired), key=str):
            child = f"{path}.{key}" if path else str(key)
            yield from field_changes(live.get(key), desired.get(key), child)
        return
    if live != desired:
        yield FieldChange(path=path, old=live, new=desired)


SECRET_WORDS = ("password", "passwd", "token", "key", "secret")
MASK = "******"


def looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def mask_environment(entries: Any) -> Any:
    """``PASSWORD=x`` as ``PASSWORD=******``; other entries as they are."""
    if not isinstance(entries, list):
        return entries
    masked = []
    for entry in entries:
        name, found, _ = str(entry).partition("=")
        masked.append(f"{name}={MASK}" if found and looks_secret(name) else entry)
    return masked


def masked(change: FieldChange) -> FieldChange:
    """The change as it may be shown or logged: secret-looking values hidden."""
    if change.path.endswith("ContainerSpec.Env"):
        return FieldChange(
            change.path, mask_environment(change.old), mask_environment(change.new)
        )
    return change
