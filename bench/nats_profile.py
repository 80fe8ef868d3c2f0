"""Where nats-server's CPU goes, from ``perf record`` (Linux perf; Debian's linux-perf).

nats-server is a Go program: py-spy cannot read it, but its binary keeps its symbols,
so ``perf record -g`` on its process gives whole Go stacks with the kernel's frames
below them. ``python -m bench.profile_worker --nats`` records it under the same load
as a worker profile (``bench.perf_samples`` folds the samples); this module sums them
into the costs a pqkms request or job item pays inside nats-server
(docs/performance.md).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from bench.perf_samples import KERNEL_MARK

__all__ = ["NATS_CATEGORIES", "categorize_stacks"]

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
        if stack.endswith(KERNEL_MARK):
            kernel += count
    return total, dict(counts), kernel


def _category(stack: str, categories: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for name, markers in categories:
        if any(marker in stack for marker in markers):
            return name
    return "other"


