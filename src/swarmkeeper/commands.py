"""The subcommands' bodies: settings and arguments in, an exit status out.

They live apart from ``cli.py`` so that argument parsing stays free of the
heavy imports these need.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

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


def _load_for_engine_command(settings: Settings) -> Any:
    """Load the desired state for plan/apply; on problems print them, return None."""
    from swarmkeeper.loading.problems import Problems
    from swarmkeeper.loading.statedir import read_desired_state

    problems = Problems()
    state = read_desired_state(
        settings.state_dir,
        secrets_dir=settings.secrets_dir,
        environ=_compose_environment(),
        problems=problems,
    )
    for warning in problems.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if problems.errors:
        for problem in problems.errors:
            print(f"error: {problem}", file=sys.stderr)
        print(
            "swarmkeeper: the desired state does not load; nothing was changed",
            file=sys.stderr,
        )
        return None
    return state


def _revision(settings: Settings) -> str:
    """The revision of the state directory: the git commit of a cached tree
    (the daemon's stable path), else the directory's content hash."""
    from swarmkeeper.revisions import revision_of

    return revision_of(settings.state_dir)


def plan(settings: Settings, arguments: argparse.Namespace) -> int:
    """Show what apply would change: exit 0 in sync, 1 changes pending, 2 error."""
    _pause_cycle_collection()
    desired = _load_for_engine_command(settings)
    if desired is None:
        return EXIT_ERROR
    revision = _revision(settings)
    return _run_with_engine(
        settings, lambda engine: _plan(engine, desired, arguments, revision)
    )


async def _plan(
    engine: Any, desired: Any, arguments: argparse.Namespace, revision: str
) -> int:
    from swarmkeeper.live import read_live_state
    from swarmkeeper.planning import make_plan, render_json, render_text

    live = await read_live_state(engine)
    result = make_plan(desired, live, _plan_options(arguments))
    render = render_json if arguments.json else render_text
    sys.stdout.write(render(result, revision=revision))
    return EXIT_OK if result.in_sync else EXIT_NO


def apply(settings: Settings, arguments: argparse.Namespace) -> int:
    """Make the swarm match: exit 0 matched, 1 items left alone, 2 error."""
    import structlog

    _pause_cycle_collection()
    desired = _load_for_engine_command(settings)
    if desired is None:
        return EXIT_ERROR
    revision = _revision(settings)
    with structlog.contextvars.bound_contextvars(revision=revision):
        return _run_with_engine(
            settings, lambda engine: _apply(engine, desired, arguments, revision)
        )


async def _apply(
    engine: Any, desired: Any, arguments: argparse.Namespace, revision: str
) -> int:
    from swarmkeeper.applying import apply_plan
    from swarmkeeper.live import read_live_state
    from swarmkeeper.planning import make_plan, render_text

    live = await read_live_state(engine)
    result = make_plan(desired, live, _plan_options(arguments))
    sys.stdout.write(render_text(result, revision=revision))
    outcome = await apply_plan(engine, result, desired, live, revision=revision)

    left_alone = [c for c in result.changes if not c.writes]
    print(
        f"Applied: {outcome.writes} writes, {len(outcome.failures)} failed, "
        f"{len(left_alone)} left alone.",
    )
    for change, reason in outcome.failures:
        print(f"error: {change.kind} {change.name}: {reason}", file=sys.stderr)
    if outcome.failures:
        return EXIT_ERROR
    return EXIT_NO if left_alone else EXIT_OK


def _pause_cycle_collection() -> None:
    """Turn Python's cycle collector off for the rest of a plan or apply process.

    They are short-lived processes that build large acyclic structures (the
    desired state, the live state, specs); the collector only slowed them
    down, and memory is returned when the process ends. Off from before the
    load, not only around it: turned back on in between, its first pass
    walked every object the load had made (25 ms at 1,000 services),
    only to be turned off again for the engine's part.
    """
    import gc

    gc.disable()


def _spare_the_exit_collection() -> None:
    """Leave every object alive now out of the collection the interpreter runs at exit.

    With the collector off, Python still makes one full pass over every
    tracked object when it shuts down: those of the imports (pydantic,
    aiohttp, the compose schemas) more than the states, which are freed by
    reference counting as the command returns. That pass was 60 ms of a
    no-op apply's 800. Frozen objects are left out of it and nothing else
    changes: the work is done, output is flushed as before, and memory is
    returned when the process ends.
    """
    import gc

    gc.freeze()


def _plan_options(arguments: argparse.Namespace) -> Any:
    """The operator's permissions from the command line (plan shows the same)."""
    import time

    from swarmkeeper.planning import PlanOptions

    return PlanOptions(
        recreate_services=getattr(arguments, "recreate_services", False),
        recreate_networks=getattr(arguments, "recreate_networks", False),
        allow_mass_prune=getattr(arguments, "allow_mass_prune", False),
        now=time.time(),
    )


def _run_with_engine(settings: Settings, body: Any) -> int:
    """Connect, run ``body(engine)``; an engine failure becomes status 2."""
    import asyncio

    from swarmkeeper.engine import Engine, EngineError

    async def main() -> int:
        async with Engine.connect(
            settings.docker_host, call_timeout=settings.engine_timeout
        ) as engine:
            result: int = await body(engine)
            return result

    try:
        return asyncio.run(main())
    except EngineError as error:
        print(f"swarmkeeper: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        _spare_the_exit_collection()


def run(settings: Settings, arguments: argparse.Namespace) -> int:
    """The daemon, until SIGTERM or SIGINT."""
    import asyncio

    from swarmkeeper.running import run_daemon

    if settings.git_url and settings.state_dir != settings.cache_dir / "state":
        # The daemon switches <cache_dir>/state itself; another directory
        # would never see a revision.
        print(
            "swarmkeeper: state_dir cannot be set together with git_url: the "
            f"daemon's state directory is then {settings.cache_dir / 'state'} "
            "(set cache_dir to move it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return asyncio.run(run_daemon(settings))


def status(settings: Settings, arguments: argparse.Namespace) -> int:
    """Ask the running daemon for its status: 0 all in sync, 1 not, 2 unreachable."""
    import json
    import urllib.error
    import urllib.request

    from swarmkeeper.settings import split_listen_address

    host, port = split_listen_address(settings.metrics_addr)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # our own address
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"swarmkeeper: no daemon answers at {url}: {error}", file=sys.stderr)
        return EXIT_ERROR

    if arguments.json:
        print(json.dumps(document, indent=2))
    else:
        print(_status_table(document))
    objects = document.get("objects", [])
    drifted = [
        o
        for o in objects
        if o.get("sync") != "in-sync" or o.get("health") == "unhealthy"
    ]
    return EXIT_NO if drifted else EXIT_OK


def _git_line(git: dict[str, Any]) -> str:
    """The git source in one line: where from, what is live, how the last sync went."""
    import time

    last_sync = git.get("last_sync")
    ago = f"{time.time() - last_sync:.0f} s ago" if last_sync else "never"
    line = (
        f"git {git.get('url')} branch {git.get('branch')} path {git.get('path')}  "
        f"deployed {git.get('revision') or '(none)'}  last sync {ago}"
    )
    error = git.get("last_error")
    if error:
        line += f"\nlast git error: {error.get('reason')}: {error.get('message')}"
    return line


def _status_table(document: dict[str, Any]) -> str:
    last = document.get("last_pass") or {}
    lines = [
        f"revision {document.get('revision')}  leader {document.get('leader')}  "
        f"mode {document.get('mode')}  desired state valid "
        f"{document.get('desired_state_valid')}  last pass {last.get('outcome')}",
    ]
    git = document.get("git")
    if git:
        lines.append(_git_line(git))
    lines.append("")
    rows = [("KIND", "NAME", "SYNC", "HEALTH", "TASKS")]
    for item in document.get("objects", []):
        tasks = ""
        if item.get("desired") is not None:
            tasks = f"{item.get('running', 0)}/{item['desired']}"
        rows.append(
            (
                item["kind"],
                item["name"],
                item.get("sync", ""),
                item.get("health", ""),
                tasks,
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        lines.append(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)
