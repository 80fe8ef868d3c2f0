"""Helpers to run ``pqkms`` as a real process and watch its children."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RunningCommand", "alive", "clean_env", "descendants", "run_pqkms", "start_pqkms"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any PQKMS_* setting of the developer's, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQKMS_")}
    env.update(extra)
    return env


def run_pqkms(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m pqkms ARGS`` to completion (``stdin``: its input, else none)."""
    return subprocess.run(
        [sys.executable, "-m", "pqkms", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


class RunningCommand:
    """A running process whose stdout and stderr are collected by threads."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()

    def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._stdout.put(line.rstrip("\n"))
        self._stdout.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for_stdout(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix``; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line starting with {prefix!r} within {timeout}s; stderr:\n"
                    + "\n".join(self.stderr_lines[-20:])
                )
            try:
                line = self._stdout.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self.process.wait(timeout=5)
                raise AssertionError(
                    f"exited with {self.process.returncode} before {prefix!r}; stderr:\n"
                    + "\n".join(self.stderr_lines[-20:])
                )
            self.stdout_lines.append(line)
            if line.startswith(prefix):
                return line

    def drain_stdout(self, timeout: float = 5) -> list[str]:
        """Every stdout line not yet consumed, once the process has closed stdout."""
        lines: list[str] = []
        while True:
            line = self._stdout.get(timeout=timeout)
            if line is None:
                self._stdout.put(None)
                return lines
            self.stdout_lines.append(line)
            lines.append(line)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit status."""
        code = self.process.wait(timeout=timeout)
        self._stderr_thread.join(timeout=5)
        return code

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._stderr_thread.join(timeout=5)
        return code

    def kill(self) -> None:
        """Last resort in a test's cleanup: SIGKILL it and everything it started."""
        for pid in descendants(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


def start_pqkms(*args: str, env: dict[str, str] | None = None) -> RunningCommand:
    """``python -m pqkms ARGS`` in the background."""
    return RunningCommand([sys.executable, "-m", "pqkms", *args], env or clean_env())


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def thread_policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of ``pid`` (Linux /proc)."""
    return {os.sched_getscheduler(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()}
