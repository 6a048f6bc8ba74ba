"""The ``swarmkeeper`` command line.

Exit statuses, the same for every subcommand (``docs/design.md``):

* 0: success; for ``plan``, the swarm already matches.
* 1: the answer is "no": ``validate`` found problems, ``plan`` has changes.
* 2: swarmkeeper could not do its job: bad usage or settings, an unreadable
  desired state, an unreachable engine, or a subcommand not built yet.

Heavy imports (pydantic, aiodocker) happen inside the subcommands, so that
``--version`` and ``--help`` answer without paying for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmkeeper import __version__

if TYPE_CHECKING:
    from swarmkeeper.settings import Settings

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2

# The flags that set a Settings field; the rest (--config, --json) are not
# settings. Names follow the fields: --state-dir sets state_dir.
_COMMON_SETTINGS = ("state_dir", "docker_host", "log_level", "log_format")
_RUN_SETTINGS = (
    "metrics_addr",
    "mode",
    "resync_interval",
    "secrets_dir",
    "git_url",
    "git_branch",
    "git_path",
    "git_interval",
    "webhook_addr",
    "cache_dir",
)


def _add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    helps = {
        "state_dir": "desired-state directory (SWARMKEEPER_STATE_DIR)",
        "docker_host": "engine address, as DOCKER_HOST (SWARMKEEPER_DOCKER_HOST)",
        "log_level": "debug, info, warning or error (SWARMKEEPER_LOG_LEVEL)",
        "log_format": "auto, json or console (SWARMKEEPER_LOG_FORMAT)",
        "metrics_addr": "HOST:PORT for /metrics (SWARMKEEPER_METRICS_ADDR)",
        "mode": "enforce or observe (SWARMKEEPER_MODE)",
        "resync_interval": "seconds between full resyncs (SWARMKEEPER_RESYNC_INTERVAL)",
        "secrets_dir": "folder of secret files (SWARMKEEPER_SECRETS_DIR)",
        "git_url": "repository to follow instead of --state-dir (SWARMKEEPER_GIT_URL)",
        "git_branch": "branch to follow, default main (SWARMKEEPER_GIT_BRANCH)",
        "git_path": "folder of the desired state in the repository "
        "(SWARMKEEPER_GIT_PATH)",
        "git_interval": "seconds between fetches (SWARMKEEPER_GIT_INTERVAL)",
        "webhook_addr": "HOST:PORT of POST /hooks/git; needs "
        "SWARMKEEPER_GIT_WEBHOOK_SECRET (SWARMKEEPER_WEBHOOK_ADDR)",
        "cache_dir": "the daemon's git cache and revision trees "
        "(SWARMKEEPER_CACHE_DIR)",
    }
    for name in names:
        # SUPPRESS keeps flags the operator did not give out of the namespace,
        # so they cannot override the environment or the config file.
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.split("_")[-1].upper(),
            help=helps[name],
        )


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings file (SWARMKEEPER_CONFIG; default "
        "/etc/swarmkeeper/swarmkeeper.toml when it exists)",
    )
    _add_setting_flags(common, _COMMON_SETTINGS)

    parser = argparse.ArgumentParser(
        prog="swarmkeeper",
        description="Keep a Docker Swarm matching a desired-state directory.",
    )
    parser.add_argument(
        "--version", action="version", version=f"swarmkeeper {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "validate",
        parents=[common],
        help="check the desired-state directory offline",
        description="Check the desired-state directory without an engine.",
    )

    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="show what apply would change (exit 1 when changes are pending)",
        description="Compare the swarm with the desired state and show the difference.",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    apply = commands.add_parser(
        "apply",
        parents=[common],
        help="make the swarm match the desired state once",
        description="Make the swarm match the desired state, once.",
    )
    for command in (plan, apply):
        command.add_argument(
            "--recreate-services",
            action="store_true",
            help="remove and create again services whose mode cannot change in place",
        )
        command.add_argument(
            "--recreate-networks",
            action="store_true",
            help="re-create networks whose fixed properties changed, and replace "
            "the ingress network, when no service is in the way",
        )
        command.add_argument(
            "--allow-mass-prune",
            action="store_true",
            help="remove owned objects even when a prune guard would hold them",
        )

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the reconciliation daemon",
        description="Watch the swarm and the desired state and converge drift.",
    )
    _add_setting_flags(run, _RUN_SETTINGS)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="show the running daemon's view: each object's sync and health",
        description="Ask the daemon on --metrics-addr for its status.",
    )
    _add_setting_flags(status, ("metrics_addr",))
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    return parser


def _not_built(name: str) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, arguments: argparse.Namespace) -> int:
        print(
            f"swarmkeeper: '{name}' is not built yet in this version", file=sys.stderr
        )
        return EXIT_ERROR

    return command


def _command(name: str) -> Callable[[Settings, argparse.Namespace], int]:
    """The subcommand ``name`` from ``commands.py``, imported when it runs."""

    def command(settings: Settings, arguments: argparse.Namespace) -> int:
        from swarmkeeper import commands

        run: Callable[[Settings, argparse.Namespace], int] = getattr(commands, name)
        return run(settings, arguments)

    return command


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "validate": _command("validate"),
    "plan": _command("plan"),
    "apply": _command("apply"),
    "run": _command("run"),
    "status": _command("status"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load settings, configure logging, run one subcommand."""
    arguments = _build_parser().parse_args(argv)

    from swarmkeeper.logs import configure_logging
    from swarmkeeper.settings import Settings, SettingsError, load_settings

    flags: dict[str, Any] = {
        name: value
        for name, value in vars(arguments).items()
        if name in Settings.model_fields
    }
    try:
        settings = load_settings(flags, config_file=arguments.config)
    except SettingsError as error:
        for problem in error.problems:
            print(f"swarmkeeper: {problem}", file=sys.stderr)
        return EXIT_ERROR

    configure_logging(level=settings.log_level, log_format=settings.log_format)
    try:
        return _COMMANDS[arguments.command](settings, arguments)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the promise is: never a traceback
        # A bug, not bad input (bad input is reported, located, by the
        # commands). Say so in one line; the log at debug level has the rest.
        from swarmkeeper.logs import get_logger

        get_logger("swarmkeeper.cli").debug("command.crashed", exc_info=True)
        print(
            f"swarmkeeper: internal error in '{arguments.command}': "
            f"{type(error).__name__}: {error} (please report this)",
            file=sys.stderr,
        )
        return EXIT_ERROR
