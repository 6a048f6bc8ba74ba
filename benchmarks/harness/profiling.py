"""One ``swarmkeeper apply`` under pyinstrument, summarised for people.

pyinstrument (a benchmark-only tool, the ``bench`` extra) samples the whole
process: interpreter start-up after the profiler loads, imports, loading,
reading the live state, planning, writing. The profiler's hook slows
call-heavy code more than the rest, so the report reads the shares, not the
seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.tools import PYTHON, Tools

TREE_THRESHOLD = 0.03  # frames below this share of the total are left out
FLAT_LINES = 20


def profile_apply(tools: Tools, state_dir: Path, session_file: Path) -> dict[str, Any]:
    """Profile one apply; its flat (self time) and tree summaries as text."""
    from pyinstrument import __version__ as pyinstrument_version
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    run = tools.timed(
        [
            str(PYTHON), "-m", "pyinstrument", "--interval", "0.001",
            "-r", "pyisession", "-o", str(session_file),
            "-m", "swarmkeeper", "apply", "--state-dir", str(state_dir),
        ]
    )  # fmt: skip
    run.check("the profiled apply")
    session = Session.load(str(session_file))
    flat = ConsoleRenderer(flat=True, flat_time="self", time="percent_of_total")
    tree = ConsoleRenderer(
        time="seconds",
        processor_options={"filter_threshold": TREE_THRESHOLD},
    )
    flat_lines = [line for line in flat.render(session).splitlines() if "%" in line][
        :FLAT_LINES
    ]
    return {
        "tool": f"pyinstrument {pyinstrument_version}",
        "seconds_under_profiler": round(run.seconds, 3),
        "flat_self": "\n".join(flat_lines),
        "tree": _trim(tree.render(session)),
    }


def _trim(text: str) -> str:
    """The rendered tree without pyinstrument's banner and closing hints."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line[:1].isdigit()), 0)
    body = [line for line in lines[start:] if line.strip()]
    while (
        body and not body[-1].lstrip()[:1].isdigit() and "frames hidden" not in body[-1]
    ):
        body.pop()
    return "\n".join(body)
