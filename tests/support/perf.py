"""Whether Linux perf can record a process here (tests that need it are skipped if not)."""

from __future__ import annotations

import functools
import shutil
import subprocess

__all__ = ["perf_can_record"]


@functools.cache
def perf_can_record() -> bool:
    """perf is installed and this machine lets it sample a process (not every kernel or
    container does)."""
    perf = shutil.which("perf")
    if perf is None:
        return False
    probe = subprocess.run([perf, "record", "-o", "/dev/null", "-q", "--", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0
