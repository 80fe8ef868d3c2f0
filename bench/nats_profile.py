"""Where nats-server's CPU goes, from ``perf record`` (Linux perf; Debian's linux-perf).

nats-server is a Go program: py-spy cannot read it, but its binary keeps its symbols,
so ``perf record -g`` on its process gives whole Go stacks with the kernel's frames
below them. ``python -m bench.profile_worker --nats`` records it under the same load
as a worker profile; this module builds perf's command lines, folds ``perf script``'s
output into one line per stack, and sums the samples into the costs a pqkms request or
job item pays inside nats-server (docs/performance.md).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

__all__ = [
    "NATS_CATEGORIES",
    "categorize_stacks",
    "fold_perf_script",
    "perf_record_arguments",
    "perf_script_arguments",
]

# perf's sampling frequency: ≈ 1 ms of CPU per sample, cheap for a 2-core machine.
PERF_FREQUENCY = 999
_KERNEL_MARK = " [k]"
_KERNEL_SPACE = 0xFFFF_8000_0000_0000  # x86-64: the kernel's half of the address space

# The first category with a marker anywhere in a stack takes the sample, in this order:
# the JetStream store before the client loops that call into it.
NATS_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JetStream store: writing messages (page cache)",
     ("(*fileStore).StoreMsg", "(*fileStore).storeRawMsg", "(*memStore).StoreMsg")),
    ("JetStream acks and removals",
     ("(*consumer).processAck", "(*stream).ackMsg", "(*fileStore).removeMsg",
      "(*fileStore).RemoveMsg")),
    ("JetStream store: reading messages back (consumers, direct get)",
     ("(*fileStore).LoadNextMsg", "(*fileStore).LoadLastMsg", "(*fileStore).LoadMsg",
      "(*msgBlock).loadMsgs", "(*msgBlock).fetchMsg", "(*stream).getDirectRequest")),
    ("JetStream API and consumers' own work",
     ("(*consumer).", "(*stream).", "(*jetStream).", "(*Server).jsStream",
      "(*Server).jsConsumer")),
    ("delivering to subscribers (socket writes)",
     ("(*client).writeLoop", "(*client).flushOutbound", "(*client).flushClients")),
    ("reading and routing client messages (socket reads, parse, match)",
     ("(*client).readLoop",)),
    ("Go runtime: garbage collection",
     ("runtime.gcBgMarkWorker", "runtime.gcDrain", "runtime.bgsweep",
      "runtime.bgscavenge", "runtime.gcStart")),
    ("Go runtime: scheduler and timers",
     ("runtime.schedule", "runtime.findRunnable", "runtime.sysmon", "runtime.mcall",
      "runtime.park_m", "runtime.mstart")),
)


def perf_record_arguments(pid: int, seconds: float, out: str) -> list[str]:
    """``perf``'s arguments for call stacks of ``pid`` for ``seconds`` into ``out``."""
    return ["record", "-F", str(PERF_FREQUENCY), "-g", "-p", str(pid), "-o", out,
            "--", "sleep", f"{seconds:g}"]


def perf_script_arguments(recording: str) -> list[str]:
    """``perf``'s arguments to print every sample of ``recording`` with its stack."""
    return ["script", "-i", recording, "-F", "comm,pid,tid,ip,sym"]


def fold_perf_script(text: str) -> collections.Counter[str]:
    """Samples per stack, root first and frames joined by ``;``, from ``perf script``.

    ``perf script`` prints each sample as a header line, its frames one per indented
    line, leaf first (``<address> <symbol>``), and a blank line."""
    stacks: collections.Counter[str] = collections.Counter()
    frames: list[str] = []
    in_sample = False
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if in_sample:
                stacks[";".join(reversed(frames)) or "[unknown]"] += 1
            frames, in_sample = [], False
        elif line[0].isspace():
            frames.append(_symbol(line))
        else:
            frames, in_sample = [], True
    return stacks


def categorize_stacks(
    stacks: collections.Counter[str],
    categories: Iterable[tuple[str, tuple[str, ...]]] = NATS_CATEGORIES,
) -> tuple[int, dict[str, int], int]:
    """Total samples, samples per category (``other`` for the rest), and how many of all
    the samples were taken in the kernel (a leaf frame marked ``[k]``)."""
    ordered = tuple(categories)
    counts: collections.Counter[str] = collections.Counter()
    kernel = total = 0
    for stack, count in stacks.items():
        total += count
        counts[_category(stack, ordered)] += count
        if stack.endswith(_KERNEL_MARK):
            kernel += count
    return total, dict(counts), kernel


def _symbol(line: str) -> str:
    # "\t  4d46b1 github.com/nats-io/nats-server/v2/server.(*msgBlock).writeAt"; the
    # kernel's frames sit at the top of the address space: marked "[k]".
    address, _, symbol = line.strip().partition(" ")
    symbol = symbol.strip() or "[unknown]"
    if "+0x" in symbol:
        symbol = symbol.rsplit("+0x", 1)[0]
    symbol = symbol.removeprefix("github.com/nats-io/nats-server/v2/server.")
    return symbol + _KERNEL_MARK if _kernel_address(address) else symbol


def _kernel_address(address: str) -> bool:
    try:
        return int(address, 16) >= _KERNEL_SPACE
    except ValueError:
        return False


def _category(stack: str, categories: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for name, markers in categories:
        if any(marker in stack for marker in markers):
            return name
    return "other"


