"""Ctrl-C during ``pqkms batch``: the run stops, and the interrupt is never lost.

``asyncio.run`` turns Ctrl-C into a cancellation of the running task. Python 3.11's
``asyncio.wait_for``, which nats-py's requests wait in, returns the reply instead of
raising when the cancellation and the reply arrive in the same pass of the event loop:
the cancellation is then lost and the run went on to the end, as if Ctrl-C had never
been pressed. Here Ctrl-C still cancels the task, and it is also remembered: the
checkpoint that ``run_batch_file`` calls after each chunk durably written stops a run
whose cancellation was lost, so the state file always names a chunk boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

from pqkms.batch_files import BatchState

__all__ = ["BatchInterrupted", "sigint_stops_the_run"]


class BatchInterrupted(Exception):
    """Ctrl-C stopped the run; what was written before is kept for the next run."""


@contextlib.contextmanager
def sigint_stops_the_run() -> Iterator[Callable[[BatchState], None]]:
    """Inside, SIGINT cancels the current task and raises :class:`BatchInterrupted`
    from the ``with`` block; yields the checkpoint for ``run_batch_file(on_chunk=...)``.
    A second SIGINT raises ``KeyboardInterrupt`` out of the event loop at once. Call
    from the task that runs the batch, on the main thread."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("sigint_stops_the_run needs a running task")
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C stops at once, as under asyncio.run alone
            raise KeyboardInterrupt
        interrupted = True
        task.cancel()

    def checkpoint(_state: BatchState) -> None:
        if interrupted:
            raise BatchInterrupted

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield checkpoint
    except asyncio.CancelledError:
        if interrupted:
            raise BatchInterrupted from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
