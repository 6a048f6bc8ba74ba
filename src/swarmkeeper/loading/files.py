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

import functools
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
    # True when parsing saw every mapping key and each was a string, so a
    # check need not walk ``data`` to find one that is not (False: unknown).
    string_keys: bool = False

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

    loader = _loader_class()(text)
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
        document.string_keys = builder.keys_all_strings
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


_MERGE_TAG = "tag:yaml.org,2002:merge"


@functools.cache
def _loader_class() -> Any:
    """libyaml's loader, with the only tag resolution the builder needs.

    libyaml composes the nodes in C but calls back into Python for every
    node's tag, and PyYAML's resolver then tries its YAML 1.1 patterns on
    every plain scalar: a tenth of a big file's parse, for tags the builder
    never reads (it resolves plain scalars itself, the YAML 1.2 way). The
    one tag it reads is the merge key's, a plain ``<<`` (an explicit
    ``!!merge`` tag does not come through here).
    """
    import yaml

    class Loader(yaml.CSafeLoader):
        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            if kind is yaml.ScalarNode:
                if implicit[0] and value == "<<":
                    return _MERGE_TAG
                return "tag:yaml.org,2002:str"
            if kind is yaml.SequenceNode:
                return "tag:yaml.org,2002:seq"
            return "tag:yaml.org,2002:map"

    return Loader


class _Builder:
    """Turns libyaml nodes into plain values, noting lines and checking keys.

    A big file has hundreds of thousands of nodes, so the common case (a
    scalar value in a mapping) is handled in place rather than through
    :meth:`value`, with the same count and the same results.
    """

    def __init__(self, file: str, lines: dict[FieldPath, int]) -> None:
        import yaml

        self.file = file
        self.lines = lines
        self.visited = 0
        # Whether every mapping key built was a string: when so, the schema
        # check need not walk the document looking for one that is not.
        self.keys_all_strings = True
        self._scalar_node = yaml.ScalarNode
        self._sequence_node = yaml.SequenceNode
        self._mapping_node = yaml.MappingNode

    def _count(self) -> None:
        self.visited += 1
        if self.visited > MAX_YAML_NODES:
            raise _BadYAML(
                f"expands to more than {MAX_YAML_NODES} values (anchors and aliases?)",
                line=None,
            )

    def value(self, node: Any, path: FieldPath) -> Any:
        self._count()
        kind = type(node)
        if kind is self._scalar_node:
            # libyaml marks plain scalars with an empty style; quoted,
            # literal and folded ones are strings whatever they spell. (Its
            # own tags follow YAML 1.1 and are ignored, as is an explicit tag
            # on a plain scalar: compose files do not use them.)
            return node.value if node.style else resolve_scalar(node.value)
        if kind is self._sequence_node:
            items = []
            lines = self.lines
            for index, item in enumerate(node.value):
                child = (*path, index)
                lines[child] = item.start_mark.line + 1
                items.append(self.value(item, child))
            return items
        return self.mapping(node, path)

    def mapping(self, node: Any, path: FieldPath) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        merged: list[dict[Any, Any]] = []
        lines = self.lines
        scalar_node = self._scalar_node
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merged.extend(self.merge_sources(value_node, path))
                continue
            if type(key_node) is not scalar_node:
                raise _BadYAML("a mapping key must be a plain value", line=line)
            text = key_node.value
            key = text if key_node.style else resolve_scalar(text)
            if key in first_line:
                raise _BadYAML(
                    f"duplicate key {key!r} (first defined on line {first_line[key]})",
                    line=line,
                )
            first_line[key] = line
            if type(key) is not str:
                self.keys_all_strings = False
            child = (*path, str(key))
            lines[child] = line
            if type(value_node) is scalar_node:
                self._count()
                text = value_node.value
                result[key] = text if value_node.style else resolve_scalar(text)
            else:
                result[key] = self.value(value_node, child)
        # Keys written in the mapping win over merged ones; earlier merge
        # sources win over later ones.
        for source in merged:
            for key, value in source.items():
                result.setdefault(key, value)
        return result

    def merge_sources(self, node: Any, path: FieldPath) -> list[dict[Any, Any]]:
        sources = node.value if type(node) is self._sequence_node else [node]
        values = []
        for source in sources:
            if type(source) is not self._mapping_node:
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
