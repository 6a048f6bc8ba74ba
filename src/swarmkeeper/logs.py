"""Logging, configured once per process with structlog.

Logs go to standard error, so that what a command prints on standard output
(a plan, ``--json``) stays clean for pipes. The ``auto`` format writes
readable console lines when standard error is a terminal and JSON lines
otherwise (journald, containers, CI).

Event names are constants such as ``service.updated``; data goes in fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    *, level: str = "info", log_format: str = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process. Safe to call again (tests do).

    Without ``stream``, lines go to whatever ``sys.stderr`` is when each one
    is written, not to the object it was at configuration: whoever swaps
    standard error later (pytest's capture, a redirecting wrapper) gets the
    lines, and a swapped-out stream that was closed is never written to.
    """
    factory: Any
    if stream is None:
        stream = sys.stderr
        factory = _current_stderr_logger
    else:
        factory = structlog.WriteLoggerFactory(file=stream)
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"

    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        # Tracebacks as data, without local variables: locals would carry
        # whole specs and settings into the log.
        exceptions: list[Any] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        exceptions = []

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def _current_stderr_logger(*_args: Any) -> structlog.WriteLogger:
    # Loggers are not cached (cache_logger_on_first_use=False), so this runs
    # for each line; a WriteLogger is a thin wrapper, cheap to make.
    return structlog.WriteLogger(sys.stderr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger carrying ``logger_name``; use constant event names with it.

    It stays lazy: a module may create it at import time, before
    :func:`configure_logging` runs, and still log the configured way.
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(
        logger_name=name
    )
    return logger
