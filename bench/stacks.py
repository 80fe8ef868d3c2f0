"""Collapsed call stacks (``root;...;leaf count`` per line), as profilers write them."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["read_collapsed", "summarize_stacks", "write_collapsed"]


def read_collapsed(path: Path) -> collections.Counter[str]:
    """Samples per stack from a collapsed-stacks file."""
    stacks: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack:
            stacks[stack] += int(count_text)
    return stacks


def write_collapsed(path: Path, stacks: Mapping[str, int]) -> None:
    """Write ``stacks`` in the collapsed format (flamegraph.pl and speedscope read it)."""
    path.write_text("".join(f"{stack} {count}\n" for stack, count in stacks.items()))


def summarize_stacks(stacks: Mapping[str, int], top: int = 30,
                     short: Callable[[str], str] = str) -> str:
    """Inclusive and self sample shares per frame (each frame passed through ``short``)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in stacks.items():
        frames = [short(frame) for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"\n-- {title} --")
        for frame, count in counter.most_common(top):
            lines.append(f"{100 * count / total:6.1f}%  {frame}")
    return "\n".join(lines)
