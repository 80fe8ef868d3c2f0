"""structlog configuration: one JSON line per event when not on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from worker.log_sink import BufferedLineLoggerFactory

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    # JSON through orjson, written as bytes: the one line per request stays cheap.
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    logger_factory: Callable[..., Any] = (
        BufferedLineLoggerFactory(sys.stderr.buffer)
        if use_json
        else structlog.PrintLoggerFactory(sys.stderr)
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s")
    # FastStream narrates every task at INFO; our one line per request is enough.
    logging.getLogger("faststream").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
