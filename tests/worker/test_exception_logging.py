"""The worker's (and the bridge's) log of an exception: types and frames, never its
message; a burst of one failing event is a few lines with a ``count``, not a traceback
per request.

Logging is configured as the worker does it (``configure_logging``, JSON) and written
to a buffer that stands in for stderr.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from pydantic import BaseModel

from api_bridge.log_config import configure_logging as configure_bridge_logging
from worker.logging_setup import configure_logging

MARKER = "ZQXMARKER7f3a9c"
HERE = "tests/worker/test_exception_logging.py"


class _Stderr(io.TextIOWrapper):
    """What ``configure_logging`` writes to: bytes in ``raw``, never a terminal."""

    def __init__(self) -> None:
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, encoding="utf-8")

    def isatty(self) -> bool:
        return False


@pytest.fixture(params=["worker", "bridge"])
def log_output(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[_Stderr]:
    """The worker's (or the bridge's) logging set-up writing to a buffer; everything
    restored after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    fake = _Stderr()
    monkeypatch.setattr(sys, "stderr", fake)
    if request.param == "worker":
        configure_logging("INFO", json=True)
    else:
        configure_bridge_logging("INFO", json=True)
    # Loggers of other modules must not keep this configuration after the test.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield fake
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def _lines(output: _Stderr) -> list[dict[str, Any]]:
    # Error and warning lines are written at once (worker.log_sink).
    return [orjson.loads(line) for line in output.raw_bytes.getvalue().splitlines()]


def _failures(output: _Stderr, event: str) -> list[dict[str, Any]]:
    return [line for line in _lines(output)
            if line["event"] == event and line["level"] == "error"]


class _Item(BaseModel):
    size: int


def _fail_on(secret: str) -> None:
    try:
        _Item.model_validate({"size": secret})  # its error quotes the input value
    except ValueError as exc:
        raise RuntimeError(f"could not seal plaintext={secret}") from exc


def test_an_exception_is_logged_by_type_and_frames_without_its_message(
    log_output: _Stderr,
) -> None:
    log = structlog.get_logger("pqkms.worker")
    try:
        _fail_on(MARKER)
    except RuntimeError:
        log.exception("request_failed", request_id="r1")
    try:
        try:
            raise KeyError(MARKER)
        except KeyError:
            raise OSError(f"while handling {MARKER}")  # noqa: B904 - implicit context
    except OSError as exc:
        log.warning("audit_metrics_failed", exc_info=exc)

    text = log_output.raw_bytes.getvalue().decode()
    assert MARKER not in text
    assert "input_value" not in text and "Traceback" not in text
    failed, warned = _lines(log_output)

    assert failed["event"] == "request_failed" and failed["request_id"] == "r1"
    assert failed["level"] == "error"
    assert failed["exception_type"] == "RuntimeError"
    first = _fail_on.__code__.co_firstlineno
    assert failed["where"] == f"{HERE}:{first + 4}:_fail_on"  # its raise
    outer, cause = failed["traceback"]
    assert outer["type"] == "RuntimeError" and "via" not in outer
    assert outer["frames"][0].startswith(f"{HERE}:") and outer["frames"][0].endswith(
        ":test_an_exception_is_logged_by_type_and_frames_without_its_message")
    assert cause["type"] == "pydantic_core._pydantic_core.ValidationError"
    assert cause["via"] == "cause"
    assert cause["frames"][0] == f"{HERE}:{first + 2}:_fail_on"
    # A frame of an installed package is named from site-packages on.
    assert any(frame.startswith("pydantic/") for frame in cause["frames"])

    assert warned["level"] == "warning"
    assert [entry["type"] for entry in warned["traceback"]] == ["OSError", "KeyError"]
    assert warned["traceback"][1]["via"] == "context"


def test_a_burst_of_one_failing_event_is_one_line_a_second_with_a_count(
    log_output: _Stderr,
) -> None:
    log = structlog.get_logger("pqkms.worker")
    for n in range(100):
        try:
            raise RuntimeError(f"database is locked {n}")
        except RuntimeError:
            log.exception("request_failed", request_id=f"r{n}")
    try:
        raise LookupError("another")
    except LookupError:
        log.exception("job_chunk_failed")  # another event: not held back by the first
    log.info("request_failed", outcome="OK")  # without an exception: never throttled
    burst = _failures(log_output, "request_failed")
    assert len(burst) == 1
    assert burst[0]["count"] == 1 and burst[0]["request_id"] == "r0"
    assert len(_failures(log_output, "job_chunk_failed")) == 1

    time.sleep(1.05)  # the next one a second later says how many came meanwhile
    try:
        raise RuntimeError("database is locked")
    except RuntimeError:
        log.exception("request_failed", request_id="r100")
    burst = _failures(log_output, "request_failed")
    assert [line["count"] for line in burst] == [1, 100]
    assert burst[1]["request_id"] == "r100"
    # ≈ 8.6 KB of traceback per request before; now a few hundred bytes per second.
    assert len(log_output.raw_bytes.getvalue()) < 3000
