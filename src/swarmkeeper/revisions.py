"""Naming what is converged: a git commit, or a content hash of the directory.

With git the state directory is a stable symlink into the revision cache,
``<cache_dir>/trees/<40 hex sha>/<git_path>``; resolving it names the commit,
so ``plan`` and ``apply`` run against that path report the same revision as
the daemon. Any other directory is named ``dir-`` and 12 hex digits of a hash
over its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

# trees/<sha> in the cache: see gitsource.py.
TREES_FOLDER = "trees"
_SHA = re.compile(r"^[0-9a-f]{40}$")


def git_revision_of(state_dir: Path) -> str | None:
    """The commit a state directory in the revision cache belongs to, if any."""
    try:
        real = state_dir.resolve(strict=True)
    except OSError:
        return None
    for folder in (real, *real.parents):
        if _SHA.match(folder.name) and folder.parent.name == TREES_FOLDER:
            return folder.name
    return None


def state_revision(state_dir: Path) -> str:
    """A short content hash of the state directory, naming what is converged.

    Hidden files are left out, as the loader leaves them out.
    """
    digest = hashlib.sha256()
    if state_dir.is_dir():
        for path in sorted(state_dir.rglob("*")):
            relative = path.relative_to(state_dir)
            if any(part.startswith(".") and part != ".env" for part in relative.parts):
                continue
            if path.is_file():
                digest.update(str(relative).encode() + b"\0")
                with contextlib.suppress(OSError):
                    digest.update(path.read_bytes())
    return "dir-" + digest.hexdigest()[:12]


def revision_of(state_dir: Path) -> str:
    """The git commit of a cached revision tree, else the directory's hash."""
    return git_revision_of(state_dir) or state_revision(state_dir)
