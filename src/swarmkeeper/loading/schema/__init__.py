"""The compose schema check, with the Docker CLI's own JSON schemas as data.

``config_schema_v3.N.json`` are the schemas the reference CLI validates stack
files against (see README.md here for their origin and licence). Which one
applies depends on the file's ``version``; ``3`` and no version mean the
newest. Two formats are the CLI's own, ``duration`` and ``ports``, and are
checked with the same parsers the conversion uses.

Each problem comes out as a field path and a sentence, and every problem is
reported, not only the first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from typing import Any

from swarmkeeper.loading.problems import FieldPath

Version = tuple[int, int]
NEWEST: Version = (3, 13)

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}


@cache
def _schema(version: Version) -> dict[str, Any]:
    name = f"config_schema_v{version[0]}.{version[1]}.json"
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(version: Version) -> Any:
    from jsonschema import Draft4Validator, FormatChecker
    from jsonschema.validators import extend

    # The CLI's formats; `expose` has no checker there, so none here either.
    checker = FormatChecker(formats=())
    checker.checks("duration", raises=ValueError)(_check_duration)
    checker.checks("ports", raises=ValueError)(_check_ports)
    # The CLI's validator counts a whole-number float (replicas: 1.0) as an
    # integer; draft 4 proper does not.
    types = Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer)
    validator_class = extend(Draft4Validator, type_checker=types)  # type: ignore[no-untyped-call]
    return validator_class(_schema(version), format_checker=checker)


def _is_integer(_: object, value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _check_duration(value: object) -> bool:
    from swarmkeeper.loading.units import parse_duration

    if isinstance(value, str):
        parse_duration(value)
    return True


def _check_ports(value: object) -> bool:
    from swarmkeeper.loading.service import parse_port

    if isinstance(value, (str, int)) and not isinstance(value, bool):
        parse_port(str(value))
    return True


def validate_compose(
    data: Any, version: Version, *, string_keys: bool = False
) -> Iterator[tuple[FieldPath, str]]:
    """Every schema violation in ``data`` as (field path, message).

    ``string_keys``: the caller knows every mapping key in ``data`` is a
    string (the YAML parser saw them all), so the walk looking for one that
    is not is skipped.
    """
    bad_key = None if string_keys else _first_non_string_key(data, ())
    if bad_key is not None:
        path, key = bad_key
        yield path, f"keys must be strings, found {key!r}"
        return

    # Most files are valid: a compiled check answers that in a fraction of
    # the time. Only when it objects does the full validator run, which
    # finds every problem (and has the last word: it knows the CLI's rules,
    # such as whole-number floats being integers, that the fast one lacks).
    if _fast_check(version)(data):
        return
    validator = _validator(version)
    for error in sorted(
        validator.iter_errors(data), key=lambda e: list(map(str, e.path))
    ):
        yield from describe_error(error, version)


@cache
def _fast_check(version: Version) -> Callable[[Any], bool]:
    return compile_yes_no(
        _schema(version), formats={"duration": _check_duration, "ports": _check_ports}
    )


def compile_yes_no(
    schema: dict[str, Any], *, formats: dict[str, Any] | None = None
) -> Callable[[Any], bool]:
    """A compiled check that says only whether ``schema`` accepts a document.

    Only a yes or no is wanted from it (the full validator words the
    problems), so no detailed exceptions: that halves the generated code,
    and compiling it is what a fresh `swarmkeeper` process pays (0.13 s
    with them, 0.04 s without, for the 3.13 compose schema). No defaults
    either: a check must not insert fields into the document it checks.
    """
    import fastjsonschema

    compiled = fastjsonschema.compile(
        schema, formats=formats or {}, detailed_exceptions=False, use_default=False
    )

    def check(data: Any) -> bool:
        try:
            compiled(data)
        except fastjsonschema.JsonSchemaException:
            return False
        except ValueError:  # a format checker refused a value
            return False
        return True

    return check


def _first_non_string_key(value: Any, path: FieldPath) -> tuple[FieldPath, Any] | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return path, key
            found = _first_non_string_key(item, (*path, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_non_string_key(item, (*path, index))
            if found:
                return found
    return None


def describe_error(
    error: Any, version: Version = NEWEST
) -> Iterator[tuple[FieldPath, str]]:
    """A jsonschema error as (path, sentence) pairs an operator can act on."""
    path: FieldPath = tuple(error.absolute_path)
    kind = error.validator

    if kind == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        import re

        for key in error.instance:
            if key in allowed or any(re.search(p, key) for p in patterns):
                continue
            yield (*path, key), _unknown_field(path, key, version)
        return

    if kind == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        yield path, "must be " + " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        return

    if kind in ("oneOf", "anyOf"):
        # A failure deeper inside one of the allowed shapes says more than
        # "wrong shape": report that one, at its own path.
        depth = len(error.absolute_path)
        deeper = [s for s in error.context or [] if len(s.absolute_path) > depth]
        if deeper and not any(s.validator == "format" for s in error.context):
            yield from describe_error(max(deeper, key=lambda s: len(s.absolute_path)))
            return
        yield path, _describe_alternatives(error)
        return

    if kind == "enum":
        choices = ", ".join(repr(choice) for choice in error.validator_value)
        yield path, f"must be one of {choices}"
        return

    if kind == "format":
        yield path, str(error.cause or error.message)
        return

    if kind == "uniqueItems":
        yield path, "must not list the same item twice"
        return

    if kind == "required":
        yield path, error.message.replace("is a required property", "is required")
        return

    yield path, error.message


def _describe_alternatives(error: Any) -> str:
    """For "one of these shapes" failures, name the shapes that were allowed."""
    # A format failure inside one alternative is the real message (ports).
    for sub in error.context or []:
        if sub.validator == "format":
            return str(sub.cause or sub.message)
    shapes: list[str] = []
    for option in error.validator_value:
        option_type = option.get("type") if isinstance(option, dict) else None
        if isinstance(option_type, str):
            shapes.append(_TYPE_NAMES.get(option_type, str(option_type)))
        elif isinstance(option_type, list):
            shapes.extend(_TYPE_NAMES.get(str(t), str(t)) for t in option_type)
        elif isinstance(option, dict) and "$ref" in option:
            shapes.append(option["$ref"].rsplit("/", 1)[-1].replace("_", " "))
    unique = list(dict.fromkeys(shapes))
    return "must be " + " or ".join(unique) if unique else error.message


def _unknown_field(path: FieldPath, key: str, version: Version) -> str:
    """An unknown key, with a hint when a newer compose version knows it."""
    message = f"unknown field {key!r}"
    if version < NEWEST and _known_in(NEWEST, path, key):
        message += f" in compose file version {version[0]}.{version[1]}"
        message += " (a newer version such as 3.13 has it)"
    return message


def _known_in(version: Version, path: FieldPath, key: str) -> bool:
    """Whether the schema for ``version`` allows ``key`` at a similar place."""
    schema = _schema(version)
    text = json.dumps(schema)
    return f'"{key}"' in text
