"""The log lines' timestamp: structlog's ISO UTC spelling, formatted for less."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from worker.logging_setup import utc_timestamper

_ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def test_the_timestamp_is_iso_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    stamped = utc_timestamper(None, "info", {"event": "request"})
    after = datetime.now(UTC)
    text = stamped["timestamp"]
    assert _ISO_UTC.fullmatch(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= moment <= after
    assert stamped["event"] == "request"


def test_consecutive_lines_keep_their_order() -> None:
    stamps = [utc_timestamper(None, "info", {})["timestamp"] for _ in range(2000)]
    assert stamps == sorted(stamps)
