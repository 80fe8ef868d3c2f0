"""structlog configuration: one JSON line per event when not on a terminal.

An exception is logged as its type, its chained causes and its frames
(``file:line:function``), never its message: a message may quote what the code was
working on (pydantic's ``input_value=``, a driver echoing a row), and plaintexts, keys
and secrets must never reach a log. The same helpers describe the bridge's crashes
(``api_bridge.request_context.log_crash``). Each event name carrying an exception is
written at most once a second, with a ``count`` (``worker.log_throttle``).
"""

from __future__ import annotations

import logging
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import structlog
from nats.errors import SlowConsumerError

from worker.log_sink import BufferedLineLoggerFactory
from worker.log_throttle import ExceptionThrottle

__all__ = [
    "FASTSTREAM_LOGGER",
    "configure_logging",
    "exception_fields",
    "exception_frames",
    "exception_type_name",
    "render_exception",
    "route_stdlib_logging",
    "utc_timestamper",
]

# The last second formatted: a timestamp per line costs ≈ 0.5 µs instead of the ≈ 3 µs
# of structlog's TimeStamper (datetime.now + isoformat), for the same text.
_second_text: tuple[int, str] = (-1, "")


def utc_timestamper(_logger: object, _method: str,
                    event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp`` as ``2026-02-15T10:30:00.123456Z`` (what ``TimeStamper(fmt="iso",
    utc=True)`` writes)."""
    global _second_text
    now_us = time.time_ns() // 1000
    second, micro = divmod(now_us, 1_000_000)
    cached, prefix = _second_text
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, prefix)
    event["timestamp"] = f"{prefix}.{micro:06d}Z"
    return event


# A deep stack (SQLAlchemy under a request) keeps its first few and its last frames:
# where it was caught and where it was raised.
# The logger FastStream's brokers are given: its records take the root's JSON form
# instead of FastStream's own coloured text on stdout.
FASTSTREAM_LOGGER = "pqkms.faststream"
_MAX_FRAMES = 24
_OUTER_FRAMES = 4
_MAX_CHAIN = 5  # exceptions followed along __cause__ / __context__


def _path_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    project = str(Path(__file__).resolve().parent.parent)
    roots = {project, paths["purelib"], paths["platlib"], paths["stdlib"]}
    # Longest first: site-packages may lie inside the project (a .venv).
    return tuple(sorted((root.rstrip("/") + "/" for root in roots), key=len, reverse=True))


_PATH_PREFIXES = _path_prefixes()


def _short_path(filename: str) -> str:
    for prefix in _PATH_PREFIXES:
        if filename.startswith(prefix):
            return filename[len(prefix):]
    return filename


def exception_type_name(exc: BaseException) -> str:
    """``ValueError`` for a built-in, ``module.QualName`` otherwise; never the message."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def exception_frames(exc: BaseException) -> list[str]:
    """``file:line:function`` of each frame ``exc`` went through, outermost first (paths
    relative to the project, site-packages or the standard library). Read from the
    frames themselves: no source lines, no locals."""
    frames = [
        f"{_short_path(frame.f_code.co_filename)}:{line}:{frame.f_code.co_qualname}"
        for frame, line in traceback.walk_tb(exc.__traceback__)
    ]
    if len(frames) > _MAX_FRAMES:
        hidden = len(frames) - _MAX_FRAMES
        frames[_OUTER_FRAMES:_OUTER_FRAMES + hidden] = [f"... {hidden} frames ..."]
    return frames


def _chain(exc: BaseException) -> Iterator[tuple[BaseException, str | None]]:
    """``exc``, then what it was raised from (``cause``) or while handling
    (``context``), as Python's own traceback follows them."""
    current: BaseException | None = exc
    via: str | None = None
    seen: set[int] = set()
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current, via
        if current.__cause__ is not None:
            current, via = current.__cause__, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, via = current.__context__, "context"
        else:
            current = None


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """What a log line says about ``exc``: ``exception_type``, ``where`` it was raised
    (its innermost frame) and ``traceback``, one entry per exception of its chain
    (``type``, ``frames``, and ``via``: ``cause`` or ``context``). No message text."""
    chain: list[dict[str, Any]] = []
    for link, via in _chain(exc):
        entry: dict[str, Any] = {"type": exception_type_name(link),
                                 "frames": exception_frames(link)}
        if via is not None:
            entry["via"] = via
        chain.append(entry)
    frames = chain[0]["frames"]
    return {
        "exception_type": chain[0]["type"],
        "where": frames[-1] if frames else "?",
        "traceback": chain,
    }


def _exception_of(exc_info: object) -> BaseException | None:
    """The exception an ``exc_info`` value means (as structlog reads it)."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        value = exc_info[1] if len(exc_info) == 3 else None
        return value if isinstance(value, BaseException) else None
    return sys.exc_info()[1] if exc_info else None


def render_exception(_logger: object, _method: str,
                     event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor in place of ``format_exc_info``: ``exc_info`` becomes
    :func:`exception_fields`, so no exception message reaches the log."""
    exc = _exception_of(event.pop("exc_info", None))
    if exc is not None:
        event.update(exception_fields(exc))
    return event


def _without_slow_consumer_errors(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, SlowConsumerError)


def route_stdlib_logging(level: str, use_json: bool) -> None:
    """Records of the standard library's loggers (FastStream's, uvicorn's, asyncio's)
    as lines of the same form as structlog's: a log shipper reading JSON gets JSON
    only, with the level, the time, the logger's name, and an exception by type and
    frames. Replaces the root logger's handlers."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            utc_timestamper,
            render_exception,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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
    route_stdlib_logging(level, use_json)
    # FastStream narrates every task at INFO; our one line per request is enough.
    logging.getLogger("faststream").setLevel(logging.WARNING)
    logging.getLogger(FASTSTREAM_LOGGER).setLevel(logging.WARNING)
    # ... and a traceback per message nats-py drops as a slow consumer, which the
    # connection guard counts in one line a second (``nats_slow_consumer``).
    for name in ("faststream.access.nats", FASTSTREAM_LOGGER):
        logging.getLogger(name).addFilter(_without_slow_consumer_errors)
    structlog.configure(
        # No contextvars merge: the worker binds none (≈ 1.5 µs a line).
        processors=[
            # First: a dropped repeat costs neither a timestamp nor a traceback walk.
            ExceptionThrottle(),
            structlog.processors.add_log_level,
            utc_timestamper,
            render_exception,  # types and frames, never messages
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
