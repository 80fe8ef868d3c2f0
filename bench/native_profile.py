"""Where a Python process's CPU goes by native code, from ``perf record``.

py-spy sees Python frames; it cannot tell how much of a worker's CPU is OpenSSL's
crypto, CPython's interpreter, the C library or the kernel, and its default mode also
counts threads that are not on a CPU. perf samples only what runs, kernel included.
Without frame pointers a Python process's user-space stacks end at their leaf, so a
sample is placed by the library its leaf frame is in, and a kernel sample by the
system call it is under (``python -m bench.profile_worker --perf``, docs/performance.md).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import NamedTuple

from bench.perf_samples import KERNEL_MARK, MAIN_THREAD

__all__ = ["NATIVE_CATEGORIES", "NativeCategory", "NativeCosts", "categorize_native"]


class NativeCategory(NamedTuple):
    """A sample is in the category if its leaf frame contains one of ``leaf`` and (when
    ``under`` is not empty) one of ``under`` appears anywhere in its stack."""

    name: str
    leaf: tuple[str, ...]
    under: tuple[str, ...] = ()


class NativeCosts(NamedTuple):
    """Samples in all, per category (``other`` for the rest), and on the main thread."""

    total: int
    counts: dict[str, int]
    main_thread: int


_CPYTHON = ("(libpython3", "(python3")
# CPython's cycle collector and the tp_traverse functions it calls.
_GC_FRAMES = ("gc_collect", "visit_decref", "visit_reachable", "move_unreachable",
              "traverse (libpython3", "traverse (python3")

# First match wins, in this order.
NATIVE_CATEGORIES: tuple[NativeCategory, ...] = (
    NativeCategory("kernel: thread hand-offs (futex: the GIL, locks, wake-ups)",
                   (KERNEL_MARK,), ("__x64_sys_futex [k]",)),
    NativeCategory("kernel: sockets, files, epoll (other system calls)",
                   (KERNEL_MARK,), ("do_syscall_64 [k]",)),
    NativeCategory("kernel: interrupts, page faults, preemption", (KERNEL_MARK,)),
    NativeCategory("crypto: pyca's OpenSSL (ML-KEM, ML-DSA, HPKE, AES-GCM, hashes)",
                   ("(_rust.abi3.so)", "(libcrypto.so")),
    NativeCategory("CPython: cycle garbage collector", _GC_FRAMES),
    NativeCategory("CPython: interpreter, objects, allocator", _CPYTHON),
    NativeCategory("C library: malloc, free, memcpy, locks", ("(libc.so",)),
    NativeCategory("SQLite (audit commits, key state)", ("(libsqlite3", "(_sqlite3.")),
    NativeCategory("event loop's C code (uvloop, _asyncio)", ("(loop.cpython", "(_asyncio.")),
    NativeCategory("JSON, base64, validation (orjson, pybase64, pydantic-core)",
                   ("(orjson.", "(_pybase64.", "(_pydantic_core.", "(_json.")),
)


def categorize_native(
    stacks: Mapping[str, int], categories: tuple[NativeCategory, ...] = NATIVE_CATEGORIES,
) -> NativeCosts:
    """Sum folded samples (``bench.perf_samples.fold_perf_script`` with libraries named,
    threads told apart) into ``categories``."""
    counts: collections.Counter[str] = collections.Counter()
    total = main_thread = 0
    for stack, count in stacks.items():
        total += count
        if stack.startswith(MAIN_THREAD):
            main_thread += count
        counts[_category(stack, categories)] += count
    return NativeCosts(total, dict(counts), main_thread)


def _category(stack: str, categories: tuple[NativeCategory, ...]) -> str:
    leaf = stack.rsplit(";", 1)[-1]
    for category in categories:
        if any(marker in leaf for marker in category.leaf) and (
            not category.under or any(marker in stack for marker in category.under)
        ):
            return category.name
    return "other"
