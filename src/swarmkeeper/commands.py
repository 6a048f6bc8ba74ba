"""The subcommands' bodies: settings and arguments in, an exit status out.

They live apart from ``cli.py`` so that argument parsing stays free of the
heavy imports these need.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarmkeeper.settings import Settings

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2


def validate(settings: Settings, arguments: argparse.Namespace) -> int:
    """Check the desired-state directory offline: exit 0 valid, 1 invalid.

    Every problem is one line on standard output, ``file:line: field: message``;
    warnings follow the same shape with ``warning:`` before the message.
    Nothing is written anywhere.
    """
    from swarmkeeper.loading.problems import Problems
    from swarmkeeper.loading.statedir import read_desired_state

    problems = Problems()
    state = read_desired_state(
        settings.state_dir,
        secrets_dir=settings.secrets_dir,
        environ=_compose_environment(),
        problems=problems,
    )

    out = sys.stdout
    for problem in problems.errors:
        print(problem, file=out)
    for warning in problems.warnings:
        where = str(warning.location)
        field = f" {warning.field}:" if warning.field else ""
        print(f"{where}:{field} warning: {warning.message}", file=out)

    if problems.errors:
        count = len(problems.errors)
        print(
            f"{settings.state_dir}: {count} problem{'s' if count != 1 else ''}",
            file=sys.stderr,
        )
        return EXIT_NO

    services = sum(len(stack.services) for stack in state.stacks.values())
    print(
        f"{settings.state_dir}: valid: {len(state.stacks)} stacks, "
        f"{services} services, {len(state.networks)} cluster networks, "
        f"{len(state.node_labels)} nodes",
        file=sys.stderr,
    )
    return EXIT_OK


def _compose_environment() -> dict[str, str]:
    import os

    return dict(os.environ)
