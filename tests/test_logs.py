"""Logging: JSON lines for machines, console lines for people, levels honoured."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from swarmkeeper.logs import configure_logging, get_logger


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_auto_format_writes_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(level="info", log_format="auto", stream=stream)

    get_logger("swarmkeeper.test").info(
        "service.updated", service="t8g1_proxy", changed=2
    )

    record = json.loads(stream.getvalue())
    assert record["event"] == "service.updated"
    assert record["service"] == "t8g1_proxy"
    assert record["changed"] == 2
    assert record["level"] == "info"
    assert record["logger_name"] == "swarmkeeper.test"
    assert record["timestamp"].endswith("Z")


def test_auto_format_is_readable_on_a_terminal() -> None:
    stream = TerminalStream()
    configure_logging(level="info", log_format="auto", stream=stream)

    get_logger("swarmkeeper.test").info("engine.connected", version="20.10.24")

    line = stream.getvalue()
    assert "engine.connected" in line
    assert "version" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_filters_lower_levels() -> None:
    # Created before configuration, as a module-level logger would be.
    logger = get_logger("swarmkeeper.test")
    stream = io.StringIO()
    configure_logging(level="warning", log_format="json", stream=stream)

    logger.info("reconcile.finished")
    logger.warning("engine.events.reconnecting", delay=1.5)

    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["engine.events.reconnecting"]


def test_exceptions_are_structured_in_json() -> None:
    stream = io.StringIO()
    configure_logging(level="info", log_format="json", stream=stream)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("swarmkeeper.test").exception("reconcile.failed")

    record = json.loads(stream.getvalue())
    assert record["exception"][0]["exc_type"] == "RuntimeError"
    assert record["exception"][0]["exc_value"] == "boom"


def test_without_a_stream_lines_follow_the_current_standard_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Configured while one stream is standard error, which is then closed and
    # replaced (as pytest's capture does between tests): lines must reach the
    # replacement, and writing must not fail on the closed one.
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging(level="info", log_format="json")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)

    get_logger("swarmkeeper.test").info("webhook.accepted", bytes=3)

    assert json.loads(second.getvalue())["event"] == "webhook.accepted"
