"""Reading files of the state directory safely, and YAML with line numbers.

Everything the desired state names is read through :class:`StateFiles`, which
refuses paths that leave the directory (``..``, absolute paths, symlinks that
point outside), files over a size cap, and text that is not UTF-8. The only
other folder it reads is the secrets folder the operator names.

YAML is read as YAML 1.2 (as the Docker CLI reads it: ``yes`` is a string,
not a boolean), duplicate keys are errors, and every value keeps the line it
came from, so that problems found much later can still say where.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmkeeper.desired import Location
from swarmkeeper.loading.problems import FieldPath, Problems

# Desired-state files are hand-written and small; anything bigger is a mistake
# (or an attempt to exhaust memory) rather than a cluster description.
MAX_FILE_BYTES = 8 * 1024 * 1024
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
                f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB",
                file=self.display(path),
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
    """Parse YAML text; on failure, record a located problem and return None.

    libyaml (through PyYAML's C parser) builds the node tree, which keeps
    every node's line; turning nodes into values is done here, with the
    YAML 1.2 rules the Docker CLI's parser follows rather than PyYAML's
    YAML 1.1 ones (``yes`` stays a string, ``0440`` is octal).
    """
    import yaml

    loader = yaml.CSafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(part for part in (error.context, error.problem) if part)
        problems.error(Location(file, line), "", f"YAML: {reason or 'invalid YAML'}")
        return None
    except yaml.YAMLError as error:
        problems.error(Location(file), "", f"YAML: {error}")
        return None
    finally:
        loader.dispose()

    # The whole document is "line 1", so every problem has a line to show.
    document = Document(file=file, data=None, lines={(): 1})
    if root is None:
        return document
    builder = _Builder(file, document.lines)
    try:
        document.data = builder.value(root, ())
    except _BadYAML as error:
        problems.error(Location(file, error.line), error.path, f"YAML: {error}")
        return None
    except RecursionError:
        problems.error(Location(file), "", "YAML: nested too deeply")
        return None
    return document


class _BadYAML(Exception):
    def __init__(self, message: str, *, line: int | None, path: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.path = path


_NULLS = {"", "~", "null", "Null", "NULL"}
_BOOLEANS = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
}
_DECIMAL = re.compile(r"^[-+]?[0-9]+$")
_OCTAL = re.compile(r"^0o[0-7]+$")
_HEXADECIMAL = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
}  # fmt: skip


def resolve_scalar(text: str) -> Any:
    """A plain (unquoted) scalar's value under YAML 1.2's core schema, as Go reads it.

    One difference from the schema, kept because the Docker CLI has it: a
    decimal with a leading zero is octal (``0440`` is 288), the usual spelling
    of file modes in compose files.
    """
    # Most plain scalars are words: settle those without the patterns.
    first = text[:1]
    if first.isalpha() and first not in "tTfFnN":
        return text
    if text in _NULLS:
        return None
    if text in _BOOLEANS:
        return _BOOLEANS[text]
    if _DECIMAL.match(text):
        digits = text.lstrip("+-")
        if (
            len(digits) > 1
            and digits.startswith("0")
            and set(digits) <= set("01234567")
        ):
            value = int(digits, 8)
            return -value if text.startswith("-") else value
        return int(text)
    if _OCTAL.match(text):
        return int(text[2:], 8)
    if _HEXADECIMAL.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    return text


class _Builder:
    """Turns libyaml nodes into plain values, noting lines and checking keys."""

    def __init__(self, file: str, lines: dict[FieldPath, int]) -> None:
        self.file = file
        self.lines = lines
        self.visited = 0

    def value(self, node: Any, path: FieldPath) -> Any:
        import yaml

        self.visited += 1
        if self.visited > MAX_YAML_NODES:
            raise _BadYAML(
                f"expands to more than {MAX_YAML_NODES} values (anchors and aliases?)",
                line=None,
            )
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                child = (*path, index)
                self.lines[child] = item.start_mark.line + 1
                items.append(self.value(item, child))
            return items
        return self.mapping(node, path)

    def scalar(self, node: Any) -> Any:
        # libyaml marks plain scalars with an empty style; quoted, literal
        # and folded ones are strings whatever they spell. (Its own tags
        # follow YAML 1.1 and are ignored, as is an explicit tag on a plain
        # scalar: compose files do not use them.)
        if node.style:
            return node.value
        return resolve_scalar(node.value)

    def mapping(self, node: Any, path: FieldPath) -> dict[Any, Any]:
        import yaml

        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        merged: list[dict[Any, Any]] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.extend(self.merge_sources(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _BadYAML("a mapping key must be a plain value", line=line)
            key = self.scalar(key_node)
            if key in first_line:
                raise _BadYAML(
                    f"duplicate key {key!r} (first defined on line {first_line[key]})",
                    line=line,
                )
            first_line[key] = line
            child = (*path, str(key))
            self.lines[child] = line
            result[key] = self.value(value_node, child)
        # Keys written in the mapping win over merged ones; earlier merge
        # sources win over later ones.
        for source in merged:
            for key, value in source.items():
                result.setdefault(key, value)
        return result

    def merge_sources(self, node: Any, path: FieldPath) -> list[dict[Any, Any]]:
        import yaml

        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        values = []
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise _BadYAML(
                    "<< must merge a mapping", line=source.start_mark.line + 1
                )
            values.append(self.mapping(source, path))
        return values


def walk_files(folder: Path) -> Iterator[Path]:
    """Regular files directly in ``folder``, sorted, skipping hidden ones."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("."):
            yield entry
