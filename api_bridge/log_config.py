"""structlog set-up for the bridge process: JSON off a terminal; exceptions by type and
frames only, as the worker logs them (worker.logging_setup)."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from worker.log_sink import BufferedLineLoggerFactory
from worker.log_throttle import ExceptionThrottle
from worker.logging_setup import render_exception, route_stdlib_logging, utc_timestamper

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog once for the process (call from ``run``, never at import)."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    # uvicorn's own lines (start, stop, errors) in the same form (log_config=None).
    route_stdlib_logging(level, use_json)
    structlog.configure(
        # No contextvars merge: the bridge binds none (≈ 1.5 µs a line).
        processors=[
            # First: a dropped repeat costs neither a timestamp nor a traceback walk.
            ExceptionThrottle(),
            structlog.processors.add_log_level,
            utc_timestamper,  # TimeStamper(fmt="iso", utc=True) for less
            # Types and frames, as the worker logs them: no message, no locals (they
            # could hold request data or the API key).
            render_exception,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        # orjson renders bytes: written as they are, one line per event.
        logger_factory=(
            BufferedLineLoggerFactory(sys.stderr.buffer)
            if use_json
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )
