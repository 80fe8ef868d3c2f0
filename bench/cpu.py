"""CPU time of processes from /proc (Linux), to attribute cost per request."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["CpuMeter"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" of comm: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """CPU seconds used by groups of processes between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._before: dict[str, float] = {}
        self._own_before = 0.0

    def _read(self) -> dict[str, float]:
        totals = {}
        for name, pids in self._groups.items():
            values = [_cpu_seconds(pid) for pid in pids]
            totals[name] = sum(value for value in values if value is not None)
        return totals

    def start(self) -> None:
        self._before = self._read()
        self._own_before = time.process_time()

    def per_op_us(self, ops: int) -> dict[str, float]:
        """µs of CPU per completed operation, per group and for this (generator) process."""
        after = self._read()
        own = time.process_time() - self._own_before
        if ops <= 0:
            return {}
        result = {
            name: round((after[name] - self._before.get(name, 0.0)) * 1e6 / ops, 1)
            for name in after
        }
        result["generator"] = round(own * 1e6 / ops, 1)
        return result
