"""Parsing the units compose files use, as the Docker CLI reads them.

Durations follow Go's ``time.ParseDuration`` (``1h30m``, ``2.5s``, ``300ms``)
and become integer nanoseconds, the engine's unit. Sizes follow Docker's
binary units (``64M`` is 64 MiB). CPU counts become nano-CPUs exactly, with
no float rounding. Scalars that land in string fields (labels, environment)
are spelt the way Go prints them, so ``true`` stays ``true``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # Go accepts the micro sign
    "μs": 1_000,  # and the Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: Any) -> int:
    """Nanoseconds from a Go duration string; ValueError if it is not one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{value!r} is not a duration such as 10s or 1m30s")
    text = str(value).strip()
    if text in ("0", "+0", "-0"):
        return 0
    if not text:
        raise ValueError("an empty string is not a duration such as 10s or 1m30s")

    sign = 1
    if text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]

    total: Fraction | int = 0
    position = 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 10s or 1m30s")
        number = match[1]
        # Whole numbers (nearly all durations) skip the slow exact fraction.
        amount = int(number) if number.isdigit() else Fraction(number)
        total += amount * _DURATION_UNITS[match[2]]
        position = match.end()
    if position == 0:
        raise ValueError(f"{value!r} is not a duration such as 10s or 1m30s")
    return sign * int(total)


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
}


def parse_bytes(value: Any) -> int:
    """Bytes from ``64M``, ``1.5g``, ``512mb`` or a plain number (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size such as 64M")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size such as 64M or 1G")
    return int(Fraction(match[1]) * _SIZE_FACTORS[match[2].lower()])


def parse_nano_cpus(value: Any) -> int:
    """Nano-CPUs from ``"0.5"`` or ``2``; only exact multiples of 1e-9 CPUs."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number of CPUs")
    try:
        amount = Fraction(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a number of CPUs such as 0.5") from None
    nano = amount * 1_000_000_000
    if nano.denominator != 1 or nano < 0:
        raise ValueError(f"{value!r} is not a valid number of CPUs")
    return int(nano)


def go_string(value: Any) -> str:
    """A YAML scalar as Go's ``fmt`` prints it, for fields that hold strings."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        if math.isnan(value):
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)
