"""The wheel pip builds holds every file of the package, not only its modules.

The test suite runs from an editable install, which reads the source tree;
an operator installs a wheel (docs/install.md: ``pip install`` of a
checkout), which holds only what the packaging configuration lists. Data
files left out (the compose schemas once were) break the installed program
while every other test passes, so the wheel is built here and compared with
the tree. pip builds it in an isolated environment, fetching setuptools
from the configured index, as it does for an operator.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "swarmkeeper"


def test_the_wheel_holds_every_file_of_the_package(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--disable-pip-version-check", "--wheel-dir", str(tmp_path), str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = tmp_path.glob("swarmkeeper-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {
            name for name in archive.namelist() if name.startswith("swarmkeeper/")
        }
    in_tree = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert in_tree - packed == set()
