"""How many Python calls a worker makes per request: exact counts where timings drift.

``python -m bench.call_census --operation encrypt --in-flight 1 --requests 2000`` starts
its own stack with one worker run under ``bench/call_counter.py``, sends a warm-up,
then counts every call on the worker's event-loop thread over ``--requests`` requests
and prints them per request: in all, by area (the project's packages, each installed
package, each standard-library module) and the most frequent functions. ``--base DIR``
counts another checkout's worker the same way (``git worktree add ../pqkms-base
<commit>``) and prints both side by side: a change's effect on the work done per
request, free of the host's speed. ``--batch ITEMS`` counts per item of batches.

The counts leave out the signing threads, native code and the kernel;
``bench.profile_worker --perf`` and ``strace -c`` see those (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
import uvloop
from nats.aio.client import Client as NatsClient

from bench.call_counter import CENSUS_FILE_ENV
from bench.clients import PQKMS_SUBJECTS, nats_call
from bench.fixture import OPERATIONS
from bench.measure import closed_loop
from bench.run import _pqkms_bodies, batch_call
from bench.stack import BenchStack
from schemas.subjects import Subject

__all__ = ["Census", "call_area", "census_table", "main", "short_location"]

_COUNTER_SCRIPT = Path(__file__).with_name("call_counter.py")
_PROJECT_PACKAGES = ("worker", "schemas", "api_bridge", "pqkms", "bench")
_PAYLOAD = bytes(range(256)) * 4


def call_area(location: str) -> str:
    """Where a Python function lives, in a word or two: ``worker/audit``, ``nats``
    (an installed package), ``stdlib asyncio``; a C function (``module.name``) by its
    top-level module."""
    if location.startswith("<"):  # <frozen module>, <string>
        return location
    parts = location.replace("\\", "/").split("/")
    if len(parts) == 1:
        return "C " + location.split(".", 1)[0]
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    for index, part in enumerate(parts):
        if part.startswith("python3.") and index + 1 < len(parts):
            return "stdlib " + parts[index + 1].removesuffix(".py")
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in _PROJECT_PACKAGES:
            below = parts[index + 1:]
            return parts[index] if len(below) == 1 else f"{parts[index]}/{below[0]}"
    return "other"


def short_location(location: str) -> str:
    """A file's path from its package on (``worker/audit/trail.py``, ``nats/aio/client.py``,
    ``asyncio/queues.py``): the same function in two checkouts gets the same name."""
    parts = location.replace("\\", "/").split("/")
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1:])
    for index, part in enumerate(parts):
        if part.startswith("python3.") and index + 1 < len(parts):
            return "/".join(parts[index + 1:])
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in _PROJECT_PACKAGES:
            return "/".join(parts[index:])
    return location


@dataclass(frozen=True, slots=True)
class Census:
    """One worker's counted calls over ``requests`` requests (or batch items)."""

    requests: int
    calls: dict[str, int]  # "name (path from its package)" → count
    c_calls: dict[str, int]  # "module.name" → count
    areas: dict[str, int]  # call_area → Python and C calls

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, list[list[object]]], requests: int) -> Census:
        calls: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        for file, _line, name, count in snapshot["calls"]:
            calls[f"{name} ({short_location(str(file))})"] += _count_of(count)
            areas[call_area(str(file))] += _count_of(count)
        c_calls = {str(name): _count_of(count) for name, count in snapshot["c_calls"]}
        for name, count in c_calls.items():
            areas[call_area(name)] += count
        return cls(requests, dict(calls), c_calls, dict(areas))

    def per_request(self, count: int) -> float:
        return count / max(self.requests, 1)

    def as_json(self) -> dict[str, object]:
        return {"requests": self.requests, "calls": self.calls, "c_calls": self.c_calls,
                "areas": self.areas}


def _count_of(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"a count that is not a whole number: {value!r}")
    return value


def census_table(title: str, sides: dict[str, Census], rows: dict[str, dict[str, int]],
                 top: int, unit: str = "request") -> list[str]:
    """Per-request figures of ``rows`` (row name → side → count), largest first for
    the first side; with two sides a last column of their difference."""
    names = list(sides)
    first = sides[names[0]]
    ordered = sorted(rows, key=lambda row: -first.per_request(rows[row].get(names[0], 0)))
    if len(names) > 1:  # rows that changed most come first (by tenths), then the largest
        ordered = sorted(ordered, key=lambda row: -round(abs(
            sides[names[0]].per_request(rows[row].get(names[0], 0))
            - sides[names[1]].per_request(rows[row].get(names[1], 0))), 1))
    header = "".join(f"{name:>10}" for name in names) + ("      diff" if len(names) > 1 else "")
    lines = [f"{title} (per {unit})", f"{header}  "]
    for row in ordered[:top]:
        values = [sides[name].per_request(rows[row].get(name, 0)) for name in names]
        cells = "".join(f"{value:10.2f}" for value in values)
        if len(values) > 1:
            cells += f"{values[0] - values[1]:+10.2f}"
        lines.append(f"{cells}  {row}")
    return lines


def _rows(sides: dict[str, Census], pick: str) -> dict[str, dict[str, int]]:
    rows: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for name, census in sides.items():
        source = {"areas": census.areas, "calls": census.calls,
                  "c_calls": census.c_calls}[pick]
        for row, count in source.items():
            rows[row][name] = count
    return rows


def _report(sides: dict[str, Census], top: int, unit: str) -> list[str]:
    lines = []
    for name, census in sides.items():
        python_calls = census.per_request(sum(census.calls.values()))
        c_calls = census.per_request(sum(census.c_calls.values()))
        lines.append(f"{name}: {census.requests:,} counted; per {unit} "
                     f"{python_calls:,.1f} Python calls, {c_calls:,.1f} C calls")
    for title, pick, limit in (("by area, Python and C calls", "areas", top),
                               ("Python functions", "calls", top),
                               ("C functions called from Python", "c_calls", top)):
        lines += ["", *census_table(title, sides, _rows(sides, pick), limit, unit)]
    return lines


async def _count(code_dir: Path | None, operation: str, requests: int, in_flight: int,
                 batch_items: int, log_level: str, keep: bool) -> Census:
    root = Path(tempfile.mkdtemp(prefix="pqkms-census-"))
    out = root / "census.json"
    stack = BenchStack(root, worker_log_level=log_level, code_dir=code_dir,
                       extra_env={CENSUS_FILE_ENV: str(out)},
                       worker_command=[str(_COUNTER_SCRIPT), "worker"])
    try:
        stack.start_nats()
        await stack.init_store()
        await stack.start_workers(1)
        client = await nats.connect(stack.nats_url)
        try:
            await stack.generate_keys(client)
            bodies = await _pqkms_bodies(stack, client, _PAYLOAD)
            call = (batch_call(client, operation, bodies.batch(operation, batch_items),
                               batch_items, stack.api_key) if batch_items else
                    nats_call(client, PQKMS_SUBJECTS[operation], operation,
                              bodies[operation], stack.api_key))
            worker = stack.workers[0].pid
            measurement = await closed_loop(
                call, in_flight, 3600.0, requests, 1.0,
                lambda: os.kill(worker, signal.SIGUSR1))
            os.kill(worker, signal.SIGUSR2)
            if measurement.errors:
                raise SystemExit(f"{measurement.errors} requests failed while counted: "
                                 f"{measurement.first_error}")
            snapshot = await _wait_for_counts(out, client)
        finally:
            await client.close()
    finally:
        stack.stop()
        if keep:
            print(f"the stack's directory, with the worker's log: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return Census.from_snapshot(snapshot, measurement.ops * max(batch_items, 1))


async def _wait_for_counts(out: Path, client: NatsClient,
                           within: float = 30.0) -> dict[str, list[list[object]]]:
    # A signal's Python handler runs when the process next runs Python code; a health
    # ping makes sure an idle worker does (the ping itself is no longer counted).
    deadline = time.monotonic() + within
    while (counts := _read_counts(out)) is None:
        if time.monotonic() > deadline:
            raise SystemExit("the worker wrote no counts; --keep keeps its log")
        with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await client.request(Subject.HEALTH_PING.value, b"", timeout=0.5)
        await asyncio.sleep(0.2)
    return counts


def _read_counts(out: Path) -> dict[str, list[list[object]]] | None:
    if not out.exists():
        return None
    counts: dict[str, list[list[object]]] = json.loads(out.read_text())
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.call_census")
    parser.add_argument("--operation", choices=OPERATIONS, default="encrypt")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests (or batches) counted after a 1 s warm-up "
                             "(default 2000)")
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0, metavar="ITEMS",
                        help="batches of ITEMS items instead; counts per item")
    parser.add_argument("--base", type=Path,
                        help="another checkout, counted the same way, side by side")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--worker-log-level", default="INFO")
    parser.add_argument("--out", type=Path, help="write the counts as JSON here too")
    parser.add_argument("--keep", action="store_true",
                        help="keep each stack's temporary directory and its logs")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.in_flight < 1 or args.batch < 0:
        parser.error("--requests and --in-flight must be at least 1, --batch at least 0")
    sides: dict[str, Census] = {}
    for name, code_dir in (("this", None), ("base", args.base)):
        if name == "base" and code_dir is None:
            continue
        sides[name] = uvloop.run(_count(code_dir, args.operation, args.requests,
                                        args.in_flight, args.batch, args.worker_log_level,
                                        args.keep))
    counted = f"batches of {args.batch} items" if args.batch else "requests"
    print(f"{args.operation}, {args.in_flight} in flight, one worker's event-loop thread, "
          f"counted over {args.requests:,} {counted}")
    print("\n".join(_report(sides, args.top, "item" if args.batch else "request")))
    if args.out is not None:
        args.out.write_text(json.dumps({
            "operation": args.operation, "in_flight": args.in_flight,
            "batch": args.batch, **{name: c.as_json() for name, c in sides.items()}}))


if __name__ == "__main__":
    main()
