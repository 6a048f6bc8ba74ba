"""Collecting located problems, so that one pass reports all of them, not the first."""

from __future__ import annotations

from collections.abc import Iterable

from swarmkeeper.desired import Location, Problem

FieldPath = tuple[str | int, ...]


def format_path(path: Iterable[str | int]) -> str:
    """``("services", "proxy", "ports", 0)`` as ``services.proxy.ports[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class InvalidDesiredState(Exception):
    """The desired state cannot be used; ``problems`` says every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


class Problems:
    """Errors and warnings found while loading, each with its file and line."""

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, location: Location, field: str, message: str) -> None:
        self.errors.append(Problem(location, field, message))

    def warn(self, location: Location, field: str, message: str) -> None:
        self.warnings.append(Problem(location, field, message))

    def extend(self, other: Problems) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)

    def raise_if_any(self) -> None:
        if self.errors:
            raise InvalidDesiredState(list(self.errors))
