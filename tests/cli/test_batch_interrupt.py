"""Ctrl-C during ``pqkms batch`` stops the run even when a cancellation is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pqkms.batch_files import BatchState
from pqkms.batch_interrupt import BatchInterrupted, sigint_stops_the_run

_STATE = BatchState(job_id="j", operation="kem.encrypt", input_path="in", input_size=1,
                    input_mtime_ns=1, chunk_size=1, raw_lines=False, key_version=1,
                    algorithm=None, total_chunks=2, total_items=2)


async def _send_sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0)  # (the loop reads the signal on its next pass)


async def _swallow_one_cancellation() -> None:
    """What Python 3.11's ``wait_for`` does when the reply comes with the cancellation."""
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        return


async def test_sigint_cancels_what_the_run_awaits() -> None:
    with pytest.raises(BatchInterrupted), sigint_stops_the_run():
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)


async def test_a_lost_cancellation_stops_the_run_at_the_next_chunk() -> None:
    written = 0
    with pytest.raises(BatchInterrupted), sigint_stops_the_run() as checkpoint:
        await _send_sigint()
        await _swallow_one_cancellation()
        written += 1
        checkpoint(_STATE)  # the chunk just written is kept; nothing after it runs
        written += 1
    assert written == 1


async def test_without_sigint_the_checkpoint_lets_the_run_go_on() -> None:
    with sigint_stops_the_run() as checkpoint:
        checkpoint(_STATE)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_DEAF_RUN = textwrap.dedent("""
    import asyncio, sys
    from pqkms.batch_interrupt import sigint_stops_the_run

    async def main() -> None:
        with sigint_stops_the_run():
            print("ready", flush=True)
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:  # lost, as if it had come with a reply
                print("cancelled", flush=True)
            await asyncio.sleep(5)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
""")


def test_a_second_sigint_stops_a_run_that_lost_the_first() -> None:
    process = subprocess.Popen([sys.executable, "-c", _DEAF_RUN], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGINT)
        assert process.stdout.readline() == "cancelled\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130
    finally:
        process.kill()
        process.wait()
