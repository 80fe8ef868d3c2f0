"""Count the Python calls a process makes between two signals (``bench.call_census``).

Run a module under it: ``python bench/call_counter.py worker`` runs ``python -m worker``
from the working directory, with ``SIGUSR1`` starting the count on the main thread (the
event loop's) and ``SIGUSR2`` stopping it and writing the counts as JSON to the file in
``PQKMS_CALL_CENSUS_FILE``. Each count is a function entered or a coroutine or
generator resumed (``sys.setprofile``'s ``call``) or a C function called from Python
(``c_call``). Counts are exact for what runs, unlike timings on a host that drifts; the
profile hook slows the process several times, so the counts of a loaded process depend
on how its requests happened to group.

It is run by path, not as ``bench.call_counter``, so that it can run another checkout's
worker (``bench.call_census --base``): it imports nothing outside the standard library.
"""

from __future__ import annotations

import collections
import json
import os
import runpy
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["CENSUS_FILE_ENV", "CallCounter", "install_signal_window"]

CENSUS_FILE_ENV = "PQKMS_CALL_CENSUS_FILE"


def _c_function_name(function: Any) -> str:
    owner = getattr(function, "__self__", None)
    module = getattr(function, "__module__", None)
    if module is None and owner is not None and not isinstance(owner, type):
        module = type(owner).__module__
    return f"{module or '?'}.{getattr(function, '__qualname__', repr(function))}"


class CallCounter:
    """Python calls and C calls of the thread that starts it, until it is stopped."""

    def __init__(self) -> None:
        self.calls: collections.Counter[Any] = collections.Counter()
        self.c_calls: collections.Counter[str] = collections.Counter()
        self.counting = False

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            self.calls[frame.f_code] += 1
        elif event == "c_call":
            self.c_calls[_c_function_name(arg)] += 1

    def start(self) -> None:
        self.calls.clear()
        self.c_calls.clear()
        self.counting = True
        sys.setprofile(self._hook)

    def stop(self) -> None:
        sys.setprofile(None)
        self.counting = False

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """The counts as JSON-ready rows: ``calls`` as ``[file, line, name, count]``,
        ``c_calls`` as ``[name, count]``, largest first."""
        calls: collections.Counter[tuple[str, int, str]] = collections.Counter()
        for code, count in self.calls.items():
            calls[(code.co_filename, code.co_firstlineno, code.co_name)] += count
        return {
            "calls": [[*where, count] for where, count in calls.most_common()],
            "c_calls": [[name, count] for name, count in self.c_calls.most_common()],
        }


def install_signal_window(out: Path, counter: CallCounter | None = None) -> CallCounter:
    """``SIGUSR1`` starts ``counter`` (a new one unless given) on the main thread;
    ``SIGUSR2`` stops it and writes its snapshot to ``out`` (whole, by a rename)."""
    counter = counter or CallCounter()

    def start(_signal: int, _frame: FrameType | None) -> None:
        counter.start()

    def stop(_signal: int, _frame: FrameType | None) -> None:
        counter.stop()
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(counter.snapshot()))
        partial.replace(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return counter


def _run(module: str) -> None:
    census_file = os.environ.get(CENSUS_FILE_ENV)
    if not census_file:
        raise SystemExit(f"{CENSUS_FILE_ENV} names no file to write the counts to")
    install_signal_window(Path(census_file))
    sys.path[0] = os.getcwd()  # as `python -m` would: the checkout run from comes first
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/call_counter.py MODULE")
    _run(sys.argv[1])
