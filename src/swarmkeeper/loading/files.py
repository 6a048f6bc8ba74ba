"""Reading files of the state directory safely, and YAML with line numbers.

Everything the desired state names is read through :class:`StateFiles`, which
refuses paths that leave the directory (``..``, absolute paths, symlinks that
point outside), files over a size cap, and text that is not UTF-8. The only
other folder it reads is the secrets folder the operator names.

YAML is parsed as YAML 1.2 (as the Docker CLI does: ``yes`` is a string, not
a boolean), duplicate keys are errors, and every value keeps the line it came
from, so that problems found much later can still say where.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmkeeper.desired import Location
from swarmkeeper.loading.problems import FieldPath, Problems

# Desired-state files are hand-written and small; anything bigger is a mistake
# (or an attempt to exhaust memory) rather than a cluster description.
MAX_FILE_BYTES = 1024 * 1024
# Anchors and aliases can make a small file expand enormously.
MAX_YAML_NODES = 200_000


class FileRefused(Exception):
    """A file cannot be used; the message says why, in the operator's terms.

    ``str()`` names the file; ``reason`` does not, for problems located at
    the file itself.
    """

    def __init__(
        self, reason: str, *, file: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(f"{file}: {reason}" if file else reason)
        self.reason = reason
        self.file = file
        self.line = line


@dataclass
class Document:
    """A parsed YAML file: plain Python data plus the line of every value."""

    file: str  # as shown to the operator: relative to the state directory
    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def at(self, path: FieldPath) -> Location:
        return Location(self.file, self.line(path))


@dataclass(frozen=True)
class StateFiles:
    """The state directory (and the secrets folder) as the only readable places."""

    root: Path
    secrets_dir: Path | None = None

    def display(self, path: Path) -> str:
        """A path as the operator knows it: relative to the state directory."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def resolve(
        self, base: Path, reference: str, *, allow_secrets_dir: bool = False
    ) -> Path:
        """The file ``reference`` names, relative to ``base``, if it stays inside.

        ``base`` is a folder inside the state directory. The result keeps the
        state directory's own spelling (it is not a realpath), but every symlink
        along the way has been checked to land inside.
        """
        candidate = Path(os.path.normpath(base / Path(reference).expanduser()))
        allowed = [self.root.resolve()]
        if allow_secrets_dir and self.secrets_dir is not None:
            allowed.append(self.secrets_dir.resolve())

        real = candidate.resolve()
        if not any(real == place or place in real.parents for place in allowed):
            where = "the state directory"
            if allow_secrets_dir and self.secrets_dir is not None:
                where += f" or the secrets directory {self.secrets_dir}"
            raise FileRefused(f"{reference!r} is outside {where}")
        return candidate

    def read_bytes(self, path: Path) -> bytes:
        """Read a whole file, refusing folders, oversized and unreadable files."""
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise FileRefused("no such file", file=self.display(path)) from None
        except IsADirectoryError:
            raise FileRefused(
                "is a directory, not a file", file=self.display(path)
            ) from None
        except OSError as error:
            raise FileRefused(
                f"cannot be read: {error.strerror}", file=self.display(path)
            ) from None
        if len(data) > MAX_FILE_BYTES:
            raise FileRefused(
                f"larger than {MAX_FILE_BYTES // 1024} KiB", file=self.display(path)
            )
        return data

    def read_text(self, path: Path) -> str:
        data = self.read_bytes(path)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise FileRefused(
                f"not UTF-8 text (byte {error.start})",
                file=self.display(path),
                line=line,
            ) from None


def parse_yaml(text: str, *, file: str, problems: Problems) -> Document | None:
    """Parse YAML text; on failure, record a located problem and return None."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    parser = YAML(typ="rt", pure=True)
    parser.allow_duplicate_keys = False
    try:
        tree = parser.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = (
            " ".join(part for part in (error.context, error.problem) if part)
            or "invalid YAML"
        )
        if "duplicate key" in reason:
            reason = _duplicate_key_reason(error)
        problems.error(Location(file, line), "", f"YAML: {reason}")
        return None
    except YAMLError as error:
        problems.error(Location(file), "", f"YAML: {error}")
        return None

    # The whole document is "line 1", so every problem has a line to show.
    document = Document(file=file, data=None, lines={(): 1})
    counter = [0]
    try:
        document.data = _plain(tree, (), document.lines, counter)
    except _TooLarge:
        problems.error(
            Location(file),
            "",
            f"YAML expands to more than {MAX_YAML_NODES} values (anchors and aliases?)",
        )
        return None
    return document


def _duplicate_key_reason(error: Any) -> str:
    problem = str(error.problem or "")
    # ruamel says: found duplicate key "x" with value "y" (original value: "z")
    key = problem.split('"')[1] if problem.count('"') >= 2 else "?"
    first = error.context_mark.line + 1 if error.context_mark else None
    return f"duplicate key {key!r}" + (
        f" (first defined on line {first})" if first else ""
    )


class _TooLarge(Exception):
    pass


def _plain(
    node: Any, path: FieldPath, lines: dict[FieldPath, int], counter: list[int]
) -> Any:
    """Turn ruamel's round-trip nodes into dicts, lists and scalars, noting lines."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    counter[0] += 1
    if counter[0] > MAX_YAML_NODES:
        raise _TooLarge

    if isinstance(node, CommentedMap):
        result: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*path, str(key))
            position = _key_line(node, key)
            if position is not None:
                lines[child] = position
            result[key] = _plain(value, child, lines, counter)
        return result

    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*path, index)
            with contextlib.suppress(KeyError, TypeError, IndexError):
                lines[child] = node.lc.item(index)[0] + 1
            items.append(_plain(value, child, lines, counter))
        return items

    return _scalar(node)


def _key_line(node: Any, key: Any) -> int | None:
    try:
        return int(node.lc.key(key)[0]) + 1
    except (KeyError, TypeError, IndexError):
        # A key merged in through `<<: *anchor` has no line of its own here.
        return None


def _scalar(value: Any) -> Any:
    """ruamel's scalar subclasses (kept for round-tripping) as plain Python types."""
    from ruamel.yaml.scalarbool import ScalarBoolean

    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, ScalarBoolean):  # an anchored boolean; an int subclass
        return bool(value)
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    # Timestamps and other YAML types: the compose schema wants strings.
    return str(value)


def _integer(value: int) -> int:
    """An integer as Go's YAML reads it: a leading zero means octal (``0440``).

    YAML 1.2 reads ``0440`` as decimal 440, but the Docker CLI's parser reads
    it as octal 288, and file modes of configs and secrets are written that way.
    """
    width = getattr(value, "_width", None)
    digits = str(int(value))
    if width and value > 0 and width > len(digits):
        padded = digits.rjust(width, "0")
        if set(padded) <= set("01234567"):
            return int(padded, 8)
    return int(value)


def walk_files(folder: Path) -> Iterator[Path]:
    """Regular files directly in ``folder``, sorted, skipping hidden ones."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("."):
            yield entry
