"""Call stacks sampled by Linux perf (Debian's linux-perf), folded for the profilers.

``perf record -g`` samples a process by the CPU it uses, every thread, kernel frames
included; ``perf script`` prints each sample. Folded here into one line per stack (the
collapsed format of ``bench.stacks``), they feed ``bench.nats_profile`` (nats-server, a
Go program whose binary keeps its symbols) and ``bench.native_profile`` (a Python
process, by the native library each sample landed in).
"""

from __future__ import annotations

import collections

__all__ = [
    "KERNEL_MARK",
    "MAIN_THREAD",
    "OTHER_THREAD",
    "PERF_FREQUENCY",
    "fold_perf_script",
    "perf_record_arguments",
    "perf_script_arguments",
]

# perf's sampling frequency: ≈ 1 ms of CPU per sample, cheap for a 2-core machine.
PERF_FREQUENCY = 999
KERNEL_MARK = " [k]"
# The root frame of a sample when threads are told apart (``fold_perf_script``).
MAIN_THREAD = "[main thread]"
OTHER_THREAD = "[other thread]"
_KERNEL_SPACE = 0xFFFF_8000_0000_0000  # x86-64: the kernel's half of the address space
_GO_SERVER_PREFIX = "github.com/nats-io/nats-server/v2/server."
_UNKNOWN = "[unknown]"


def perf_record_arguments(pid: int, seconds: float, out: str) -> list[str]:
    """``perf``'s arguments for call stacks of ``pid`` for ``seconds`` into ``out``."""
    return ["record", "-F", str(PERF_FREQUENCY), "-g", "-p", str(pid), "-o", out,
            "--", "sleep", f"{seconds:g}"]


def perf_script_arguments(recording: str, libraries: bool = False) -> list[str]:
    """``perf``'s arguments to print every sample of ``recording`` with its stack; with
    ``libraries``, each frame also names the file its code is in."""
    fields = "comm,pid,tid,ip,sym" + (",dso" if libraries else "")
    return ["script", "-i", recording, "-F", fields]


def fold_perf_script(text: str, threads: bool = False) -> collections.Counter[str]:
    """Samples per stack, root first and frames joined by ``;``, from ``perf script``.

    ``perf script`` prints each sample as a header line (``comm pid/tid``), its frames one
    per indented line, leaf first (``<address> <symbol>``, then `` (<file>)`` if asked),
    and a blank line. Kernel frames are marked ``[k]``; a library is named by its file
    name. With ``threads`` each stack starts with :data:`MAIN_THREAD` or
    :data:`OTHER_THREAD`."""
    stacks: collections.Counter[str] = collections.Counter()
    frames: list[str] = []
    root: list[str] = []
    in_sample = False
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if in_sample:
                # (frames perf could not name say nothing; a leaf it could not name stays)
                named = [frame for frame in frames[1:] if frame != _UNKNOWN]
                stack = [*root, *reversed(named), *frames[:1]]
                stacks[";".join(stack) or _UNKNOWN] += 1
            frames, in_sample = [], False
        elif line[0].isspace():
            frames.append(_frame(line))
        else:
            frames, in_sample = [], True
            root = [_thread(line)] if threads else []
    return stacks


def _thread(header: str) -> str:
    # "python  5316/5320  " -> the main thread's id is the process's.
    for word in header.split():
        pid, slash, tid = word.partition("/")
        if slash and pid.isdigit() and tid.isdigit():
            return MAIN_THREAD if pid == tid else OTHER_THREAD
    return OTHER_THREAD


def _frame(line: str) -> str:
    # "\t  4d46b1 github.com/nats-io/nats-server/v2/server.(*msgBlock).writeAt", or with
    # libraries "\t  1b984c tupledealloc (/usr/lib/libpython3.11.so.1.0)". The kernel's
    # frames sit at the top of the address space: marked "[k]", their file left out.
    address, _, rest = line.strip().partition(" ")
    symbol, library = rest.strip(), ""
    if symbol.endswith(")") and " (" in symbol:
        symbol, _, library = symbol[:-1].rpartition(" (")
        library = library.rsplit("/", 1)[-1]
    symbol = symbol.strip() or _UNKNOWN
    if "+0x" in symbol:
        symbol = symbol.rsplit("+0x", 1)[0]
    symbol = symbol.removeprefix(_GO_SERVER_PREFIX)
    if _kernel_address(address):
        return symbol + KERNEL_MARK
    if library and library != _UNKNOWN:
        return f"{symbol} ({library})"
    return symbol


def _kernel_address(address: str) -> bool:
    try:
        return int(address, 16) >= _KERNEL_SPACE
    except ValueError:
        return False
