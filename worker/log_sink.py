"""Where JSON log lines go: a buffer that reaches the file a moment later, in one write.

structlog's ``BytesLogger`` writes and flushes every line: one ``write`` system call per
request, ≈ 10 µs of a worker's ≈ 300 µs per encrypt on the 2-core machine
(docs/performance.md). Here ``debug`` and ``info`` lines are buffered and written by a
daemon thread at most :data:`FLUSH_SECONDS` later (or as soon as
:data:`MAX_PENDING_BYTES` are waiting); ``warning`` and worse are written at once,
together with what is pending, so they are never late and lines keep their order. The
buffer is written at exit; a process killed with SIGKILL may lose its last fraction of a
second of info lines (the audit trail, not the log, is the record of operations).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from typing import BinaryIO

__all__ = [
    "FLUSH_SECONDS",
    "MAX_PENDING_BYTES",
    "BufferedLineLogger",
    "BufferedLineLoggerFactory",
    "BufferedLineSink",
]

FLUSH_SECONDS = 0.1
MAX_PENDING_BYTES = 64 * 1024


class BufferedLineSink:
    """Lines for one binary file, written in batches (thread-safe)."""

    def __init__(self, file: BinaryIO, *, flush_seconds: float = FLUSH_SECONDS,
                 max_pending: int = MAX_PENDING_BYTES) -> None:
        self._file = file
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._size = 0
        self._due = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pqkms-log", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def add(self, line: bytes, *, now: bool = False) -> None:
        """Queue one line (its newline is added); ``now``: write it and the queue at once."""
        with self._lock:
            self._pending.append(line)
            self._size += len(line) + 1
            if now or self._size >= self._max_pending:
                self._write_locked()
                return
        if not self._due.is_set():  # (set() takes a lock: once per interval is enough)
            self._due.set()

    def flush(self) -> None:
        """Write what is queued."""
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        if not self._pending:
            return
        data = b"\n".join(self._pending) + b"\n"
        self._pending.clear()
        self._size = 0
        # A closed or broken stream must not take the process down with it.
        with contextlib.suppress(OSError, ValueError):
            self._file.write(data)
            self._file.flush()

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            # Lines that arrive meanwhile ride along: one write per interval at most.
            time.sleep(self._flush_seconds)
            self.flush()


class BufferedLineLogger:
    """A structlog logger (for ``JSONRenderer`` output as bytes) over a sink."""

    def __init__(self, sink: BufferedLineSink) -> None:
        self._sink = sink

    def _later(self, message: bytes) -> None:
        self._sink.add(message)

    def _now(self, message: bytes) -> None:
        self._sink.add(message, now=True)

    debug = info = msg = _later
    warning = warn = error = err = critical = exception = fatal = failure = _now


class BufferedLineLoggerFactory:
    """``logger_factory`` for ``structlog.configure``: one sink for the process."""

    def __init__(self, file: BinaryIO) -> None:
        self._sink = BufferedLineSink(file)

    def __call__(self, *args: object) -> BufferedLineLogger:
        return BufferedLineLogger(self._sink)
