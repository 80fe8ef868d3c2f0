"""Buffered JSON log lines: info later in one write, warnings at once, order kept."""

from __future__ import annotations

import io
import time

from worker.log_sink import BufferedLineLogger, BufferedLineSink


class _CountingFile(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def test_info_lines_arrive_together_shortly_after() -> None:
    file = _CountingFile()
    logger = BufferedLineLogger(BufferedLineSink(file, flush_seconds=0.05))
    for n in range(100):
        logger.info(b'{"n": %d}' % n)
    assert file.getvalue() == b""  # not yet
    deadline = time.monotonic() + 5
    while not file.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert file.getvalue().splitlines() == [b'{"n": %d}' % n for n in range(100)]
    assert file.writes == 1


def test_a_warning_is_written_at_once_after_what_is_pending() -> None:
    file = _CountingFile()
    logger = BufferedLineLogger(BufferedLineSink(file, flush_seconds=60))
    logger.info(b"first")
    logger.error(b"second")
    assert file.getvalue() == b"first\nsecond\n"
    logger.msg(b"third")
    logger.exception(b"fourth")
    assert file.getvalue().endswith(b"third\nfourth\n")


def test_a_full_buffer_is_written_without_waiting() -> None:
    file = _CountingFile()
    sink = BufferedLineSink(file, flush_seconds=60, max_pending=1000)
    for _ in range(20):
        sink.add(b"x" * 99)
    assert len(file.getvalue()) >= 1000
    sink.flush()
    assert file.getvalue().splitlines() == [b"x" * 99] * 20


def test_a_closed_stream_does_not_raise() -> None:
    file = io.BytesIO()
    sink = BufferedLineSink(file, flush_seconds=60)
    file.close()
    sink.add(b"lost", now=True)
