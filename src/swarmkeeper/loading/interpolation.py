"""``${VAR}`` interpolation in compose files, with the Docker CLI's rules.

Supported, as ``docker stack deploy`` supports them: ``$VAR``, ``${VAR}``,
``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset),
``${VAR:?message}`` and ``${VAR?message}`` (an error when missing), and ``$$``
for a literal dollar. Defaults are literal text: ``${A:-${B}}`` is not nested.
Anything else after a ``$`` is an error, as in the CLI. A variable that is
not set and has no default becomes the empty string, with a warning.

Only values are interpolated, never keys. Afterwards, values at paths that
the schema types as numbers or booleans are converted from strings, so that
``replicas: ${REPLICAS}`` is an integer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from swarmkeeper.loading.problems import FieldPath, format_path

_NAME = r"[_a-zA-Z][_a-zA-Z0-9]*"
_REFERENCE = re.compile(
    r"\$(?:"
    r"(?P<escaped>\$)"
    rf"|(?P<named>{_NAME})"
    rf"|\{{(?P<braced>{_NAME})(?:(?P<operator>:?[-?])(?P<argument>[^}}]*))?\}}"
    r"|(?P<invalid>)"
    r")"
)


class InterpolationError(ValueError):
    """A reference that cannot be substituted; the message says which and why."""


def substitute(
    text: str, environ: Mapping[str, str], *, unset: Callable[[str], None]
) -> str:
    """Replace every reference in ``text``; ``unset`` hears of missing variables."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"] is not None:
            return "$"
        if match["invalid"] is not None:
            raise InterpolationError(
                f"invalid interpolation format in {text!r}; "
                "write $$ for a literal dollar sign"
            )

        name = match["named"] or match["braced"]
        operator = match["operator"]
        argument = match["argument"] or ""
        value = environ.get(name)

        if operator in (":-", "-"):
            missing = value is None or (operator == ":-" and value == "")
            return argument if missing else str(value)
        if operator in (":?", "?"):
            missing = value is None or (operator == ":?" and value == "")
            if missing:
                raise InterpolationError(
                    f"required variable {name} is missing a value"
                    + (f": {argument}" if argument else "")
                )
            return str(value)

        if value is None:
            unset(name)
            return ""
        return value

    return _REFERENCE.sub(replace, text)


# Paths whose values the compose schema types as integers, numbers or
# booleans; "*" matches any one key or index. Only these are converted from
# the strings that interpolation produces.
_CASTS: dict[tuple[str, ...], str] = {}
for _path, _kind in [
    ("services.*.deploy.replicas", "int"),
    ("services.*.deploy.update_config.parallelism", "int"),
    ("services.*.deploy.update_config.max_failure_ratio", "float"),
    ("services.*.deploy.rollback_config.parallelism", "int"),
    ("services.*.deploy.rollback_config.max_failure_ratio", "float"),
    ("services.*.deploy.restart_policy.max_attempts", "int"),
    ("services.*.deploy.placement.max_replicas_per_node", "int"),
    ("services.*.deploy.resources.limits.pids", "int"),
    ("services.*.healthcheck.retries", "int"),
    ("services.*.healthcheck.disable", "bool"),
    ("services.*.ports.*.target", "int"),
    ("services.*.ports.*.published", "int"),
    ("services.*.ulimits.*", "int"),
    ("services.*.ulimits.*.hard", "int"),
    ("services.*.ulimits.*.soft", "int"),
    ("services.*.init", "bool"),
    ("services.*.privileged", "bool"),
    ("services.*.read_only", "bool"),
    ("services.*.stdin_open", "bool"),
    ("services.*.tty", "bool"),
    ("services.*.volumes.*.read_only", "bool"),
    ("services.*.volumes.*.volume.nocopy", "bool"),
    ("services.*.volumes.*.tmpfs.size", "int"),
    ("services.*.configs.*.mode", "int"),
    ("services.*.secrets.*.mode", "int"),
    ("networks.*.external", "bool"),
    ("networks.*.internal", "bool"),
    ("networks.*.attachable", "bool"),
    ("volumes.*.external", "bool"),
    ("secrets.*.external", "bool"),
    ("configs.*.external", "bool"),
]:
    _CASTS[tuple(_path.split("."))] = _kind

_TRUE = {"y", "yes", "true", "on"}
_FALSE = {"n", "no", "false", "off"}


def _cast_kind(path: FieldPath) -> str | None:
    for pattern, kind in _CASTS.items():
        if len(pattern) == len(path) and all(
            part == "*" or part == str(actual)
            for part, actual in zip(pattern, path, strict=True)
        ):
            return kind
    return None


def _cast(value: str, kind: str) -> Any:
    if kind == "int":
        return (
            int(value, 0)
            if value.strip().lower().startswith(("0x", "0o"))
            else int(value)
        )
    if kind == "float":
        return float(value)
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)


def interpolate(
    data: Any,
    environ: Mapping[str, str],
    *,
    on_error: Callable[[FieldPath, str], None],
    on_unset: Callable[[FieldPath, str], None],
) -> Any:
    """A copy of ``data`` with every string value interpolated.

    Errors are reported through ``on_error(path, message)`` and leave the value
    as it was, so one pass finds every bad reference.
    """

    def visit(value: Any, path: FieldPath) -> Any:
        if isinstance(value, str):
            if "$" not in value:  # most values: nothing to substitute or cast
                return value
        elif isinstance(value, dict):
            return {key: visit(item, (*path, str(key))) for key, item in value.items()}
        elif isinstance(value, list):
            return [visit(item, (*path, index)) for index, item in enumerate(value)]
        else:
            return value

        try:
            result = substitute(value, environ, unset=lambda name: on_unset(path, name))
        except InterpolationError as error:
            on_error(path, str(error))
            return value
        # Only values that contained a reference are converted: a quoted "3"
        # written by hand stays a string (and the schema then rejects it), as
        # in the CLI.
        kind = _cast_kind(path)
        if kind is None:
            return result
        try:
            return _cast(result, kind)
        except ValueError:
            on_error(path, f"{result!r} (from {value!r}) is not a valid {kind}")
            return result

    return visit(data, ())


__all__ = ["InterpolationError", "format_path", "interpolate", "substitute"]
