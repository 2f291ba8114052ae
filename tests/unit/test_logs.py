"""Log output as an operator sees it: JSON lines off a terminal, a console renderer on one,
stdlib logging in the same shape, and no registered secret ever printed."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy.exc import OperationalError

from balancewatch import logs

SECRET = "sk-live-9f8e7d6c5b4a39281706"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put structlog and the stdlib root logger back as they were, for the other tests."""
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    yield
    structlog.contextvars.clear_contextvars()
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    access.setLevel(access_level)


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def plain(out: io.StringIO) -> str:
    return ANSI.sub("", out.getvalue())


def assert_recent_utc(timestamp: str) -> None:
    moment = datetime.fromisoformat(timestamp)
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(seconds=30)


# --- shape ------------------------------------------------------------------------------------


def test_off_a_terminal_every_line_is_json_with_event_level_timestamp_and_context() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out)
    log = logs.get_logger("balancewatch.test")
    log.info("writer.flushed", rows=3, wallet="FV1r")
    log.bind(connection=2).warning("stream.dropped", reason="idle")

    first, second = json_lines(out)
    assert first["event"] == "writer.flushed"
    assert first["level"] == "info"
    assert (first["rows"], first["wallet"]) == (3, "FV1r")
    assert first["logger"] == "balancewatch.test"
    assert_recent_utc(first["timestamp"])
    assert second["event"] == "stream.dropped"
    assert second["level"] == "warning"
    assert (second["connection"], second["reason"]) == (2, "idle")
    assert_recent_utc(second["timestamp"])


def test_context_variables_are_merged_into_each_line() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out)
    structlog.contextvars.bind_contextvars(run_id="r-1")
    logs.get_logger("x").info("hello")
    [line] = json_lines(out)
    assert line["run_id"] == "r-1"


def test_on_a_terminal_the_output_is_the_console_renderer_not_json() -> None:
    out = TtyStream()
    logs.configure("info", "auto", out)
    logs.get_logger("x").info("writer.flushed", rows=3)

    text = out.getvalue()
    assert text.strip()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
    assert "writer.flushed" in text
    assert "rows=3" in plain(out)
    assert "\x1b[" in text  # colours on a terminal


@pytest.mark.parametrize(
    ("stream", "fmt", "is_json"),
    [(TtyStream, "json", True), (io.StringIO, "console", False)],
    ids=["json forced on a terminal", "console forced off one"],
)
def test_an_explicit_format_overrides_the_terminal_check(
    stream: type[io.StringIO], fmt: str, is_json: bool
) -> None:
    out = stream()
    logs.configure("info", fmt, out)
    logs.get_logger("x").info("hello", n=1)
    line = out.getvalue().splitlines()[0]
    if is_json:
        assert json.loads(line)["event"] == "hello"
    else:
        assert "hello" in line
        assert "\x1b[" not in line  # no colours off a terminal
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_stdlib_logging_comes_out_in_the_same_json_shape() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out)
    logging.getLogger("asyncpg.pool").warning("disk %s is %d%% full", "sda", 91)

    [line] = json_lines(out)
    assert line["event"] == "disk sda is 91% full"
    assert line["level"] == "warning"
    assert line["logger"] == "asyncpg.pool"
    assert_recent_utc(line["timestamp"])


def test_the_level_filters_both_structlog_and_stdlib_lines() -> None:
    out = io.StringIO()
    logs.configure("warning", "auto", out)
    logs.get_logger("x").info("quiet")
    logging.getLogger("y").info("quiet too")
    logs.get_logger("x").warning("loud")
    logging.getLogger("y").error("loud too")
    assert [line["event"] for line in json_lines(out)] == ["loud", "loud too"]


def test_aiohttp_access_lines_are_dropped_at_info_level() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out)
    logging.getLogger("aiohttp.access").info("GET / 200")
    assert out.getvalue() == ""


# --- secrets ----------------------------------------------------------------------------------


def test_a_secret_is_replaced_in_event_values_nested_dicts_and_lists() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out, secrets=[SECRET])
    logs.get_logger("x").info(
        f"connecting to wss://datastream.example/{SECRET}",
        url=f"wss://datastream.example/{SECRET}",
        nested={"headers": [f"x-key: {SECRET}", {"deep": (SECRET, 1)}], "n": 5},
    )

    assert SECRET not in out.getvalue()
    [line] = json_lines(out)
    assert line["event"] == "connecting to wss://datastream.example/***"
    assert line["url"] == "wss://datastream.example/***"
    assert line["nested"] == {"headers": ["x-key: ***", {"deep": ["***", 1]}], "n": 5}


def test_a_secret_in_a_stdlib_log_line_is_replaced() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out, secrets=[SECRET])
    logging.getLogger("aiohttp.client").error("cannot connect to /%s/ws", SECRET)
    assert SECRET not in out.getvalue()
    assert json_lines(out)[0]["event"] == "cannot connect to /***/ws"


def test_a_secret_inside_an_object_value_is_caught_in_the_rendered_line() -> None:
    class Url:
        def __repr__(self) -> str:
            return f"Url('wss://datastream.example/{SECRET}')"

    out = io.StringIO()
    logs.configure("info", "auto", out, secrets=[SECRET])
    logs.get_logger("x").info("connecting", url=Url(), rooms={f"room-{SECRET}"})
    assert SECRET not in out.getvalue()
    assert "***" in json_lines(out)[0]["url"]


def test_a_secret_containing_another_is_replaced_whole() -> None:
    short, long = "pw-4c1d", "pw-4c1d-and-more-2e9f"
    out = io.StringIO()
    logs.configure("info", "auto", out, secrets=[short, long])
    logs.get_logger("x").info("creds", value=f"{long} then {short}")
    assert json_lines(out)[0]["value"] == "*** then ***"


def test_an_empty_secret_is_ignored() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out, secrets=[""])
    logs.get_logger("x").info("plain text")
    assert json_lines(out)[0]["event"] == "plain text"


def _raise_with_secret() -> None:
    raise ConnectionError(f"handshake to wss://datastream.example/{SECRET} failed")


@pytest.mark.parametrize("source", ["structlog", "stdlib"])
def test_a_secret_in_a_json_exception_traceback_is_replaced(source: str) -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out, secrets=[SECRET])
    try:
        _raise_with_secret()
    except ConnectionError:
        if source == "structlog":
            logs.get_logger("x").exception("stream.failed", key=SECRET)
        else:
            logging.getLogger("x").exception("stream.failed")

    assert SECRET not in out.getvalue()
    [line] = json_lines(out)
    assert line["event"] == "stream.failed"
    assert line["level"] == "error"
    assert "Traceback" in line["exception"]
    assert "ConnectionError: handshake to wss://datastream.example/*** failed" in line["exception"]


@pytest.mark.parametrize("source", ["structlog", "stdlib"])
def test_a_secret_in_a_console_exception_traceback_is_replaced(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A narrow terminal: a traceback wrapped to its width (as rich's would be) could cut the
    # secret in two, past the scrub of the rendered line. The message must stay whole.
    monkeypatch.setenv("COLUMNS", "40")
    out = TtyStream()
    logs.configure("info", "auto", out, secrets=[SECRET])
    try:
        _raise_with_secret()
    except ConnectionError:
        if source == "structlog":
            logs.get_logger("x").exception("stream.failed")
        else:
            logging.getLogger("x").exception("stream.failed")

    text = plain(out)
    assert SECRET not in out.getvalue()
    assert "stream.failed" in text
    assert "Traceback" in text
    assert "handshake to wss://datastream.example/*** failed" in text


def test_describe_error_gives_type_and_message_with_secrets_scrubbed() -> None:
    logs.configure("info", "auto", io.StringIO(), secrets=[SECRET])
    error = OSError(f"cannot reach wss://datastream.example/{SECRET}")
    assert logs.describe_error(error) == "OSError: cannot reach wss://datastream.example/***"


def test_describe_error_names_the_driver_error_under_a_sqlalchemy_wrapper() -> None:
    logs.configure("info", "auto", io.StringIO(), secrets=[SECRET])
    inner = ConnectionRefusedError(f"connect to postgresql://bw:{SECRET}@db/bw refused")
    wrapped = OperationalError("SELECT 1", {}, inner)
    assert logs.describe_error(wrapped) == (
        "ConnectionRefusedError: connect to postgresql://bw:***@db/bw refused"
    )


def test_secrets_accumulate_across_configure_calls() -> None:
    first, second = "first-secret-77aa", "second-secret-88bb"
    out = io.StringIO()
    logs.configure("info", "auto", io.StringIO(), secrets=[first])
    logs.configure("info", "auto", out, secrets=[second])
    logs.get_logger("x").info("both", a=first, b=second)
    line = json_lines(out)[0]
    assert (line["a"], line["b"]) == ("***", "***")
