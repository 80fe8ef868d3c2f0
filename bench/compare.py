"""Two checkouts side by side: the same cell on both stacks, rounds alternated.

The host of these measurements drifts by up to ±20 % within minutes, more than most
changes move a figure, so full benchmark runs minutes apart cannot tell code A from
code B. Here both codes run at once, each with its own nats-server and workers, and
one cell is measured on each in turn (order swapped every round); the median of the
rounds' ratios is the comparison.

``python -m bench.compare --base ../pqkms-base --operation encrypt --rounds 8`` with
``../pqkms-base`` a checkout of the code to compare against (``git worktree add
../pqkms-base <commit>``); both must share the database schema. Prints each round and
the medians of throughput, worker CPU per item and p50 (this checkout ÷ base).
``--http`` sends the single requests through each stack's bridge instead, and adds the
bridge's CPU per request; ``--job ITEMS`` runs one durable job of ITEMS items per round
and stack instead (submitted, run and read back, as the benchmark's job cell), its
"p50" being the job's whole time. ``--nats-as-up`` runs this checkout's side on
nats-server as ``pqkms up`` runs it (users and permissions, an encrypted store); with
``--base .`` that measures what they cost. Each side also reports nats-server's CPU.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nats
import uvloop
from nats.aio.client import Client as NatsClient

from bench.clients import PQKMS_SUBJECTS, Bodies, http_call, nats_call
from bench.cpu import CpuMeter
from bench.fixture import OPERATIONS
from bench.http_client import HttpPool
from bench.measure import Call, closed_loop
from bench.run import BenchConfig, _pqkms_bodies, _run_job, batch_call
from bench.stack import BenchStack
from schemas.subjects import HEADER_API_KEY

__all__ = ["CellFigures", "compare", "main", "median_ratios", "parse_env"]

_PAYLOAD = bytes(range(256)) * 4
_WARMUP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class CellFigures:
    """One measurement of the cell on one stack."""

    items_per_s: float
    worker_cpu_us_per_item: float
    p50_ms: float
    # The bridge's CPU per request (``--http``); 0 without the bridge.
    bridge_cpu_us_per_item: float = 0.0
    # nats-server's CPU per item.
    nats_cpu_us_per_item: float = 0.0


@dataclass(slots=True)
class _Side:
    stack: BenchStack
    client: NatsClient
    call: Call
    operation: str
    bodies: Bodies
    pool: HttpPool | None = None
    job_items: int = 0


def median_ratios(new: list[CellFigures], base: list[CellFigures]) -> CellFigures:
    """Round by round ``new ÷ base`` of each figure, then the median of each."""
    return CellFigures(
        statistics.median(n.items_per_s / b.items_per_s for n, b in zip(new, base, strict=True)),
        statistics.median(n.worker_cpu_us_per_item / b.worker_cpu_us_per_item
                          for n, b in zip(new, base, strict=True)),
        statistics.median(n.p50_ms / b.p50_ms for n, b in zip(new, base, strict=True)),
        statistics.median(n.bridge_cpu_us_per_item / b.bridge_cpu_us_per_item
                          if b.bridge_cpu_us_per_item else 0.0
                          for n, b in zip(new, base, strict=True)),
        statistics.median(n.nats_cpu_us_per_item / b.nats_cpu_us_per_item
                          if b.nats_cpu_us_per_item else 0.0
                          for n, b in zip(new, base, strict=True)),
    )


async def _start(code_dir: Path | None, operation: str, batch: int, workers: int,
                 env: dict[str, str], http: bool = False, in_flight: int = 200,
                 job_items: int = 0, nats_as_up: bool = False) -> _Side:
    stack = BenchStack(Path(tempfile.mkdtemp(prefix="pqkms-compare-")), code_dir=code_dir,
                       extra_env=env, nats_as_up=nats_as_up)
    try:
        stack.start_nats()
        await stack.init_store()
        await stack.start_workers(workers)
        client = await nats.connect(stack.nats_url, pending_size=64 * 1024 * 1024)
        await stack.generate_keys(client)
    except BaseException:
        stack.stop()
        raise
    bodies = await _pqkms_bodies(stack, client, _PAYLOAD)
    if http:
        stack.start_bridge()
        if not await stack.wait_for_bridge():
            await client.close()
            stack.stop()
            raise RuntimeError(f"the bridge did not start; see {stack.root / 'bridge.log'}")
        pool = HttpPool(stack.http_url, in_flight, headers={HEADER_API_KEY: stack.api_key})
        return _Side(stack, client, http_call(pool, operation, bodies[operation]),
                     operation, bodies, pool)
    if batch:
        call = batch_call(client, operation, bodies.batch(operation, batch), batch,
                          stack.api_key)
    else:
        call = nats_call(client, PQKMS_SUBJECTS[operation], operation, bodies[operation],
                         stack.api_key)
    return _Side(stack, client, call, operation, bodies, job_items=job_items)


async def _measure(side: _Side, in_flight: int, seconds: float, items: int) -> CellFigures:
    processes = {"workers": [process.pid for process in side.stack.workers]}
    if side.stack.bridge is not None:
        processes["bridge"] = [side.stack.bridge.pid]
    if side.stack.nats is not None:
        processes["nats"] = [side.stack.nats.process.pid]
    meter = CpuMeter(processes)
    if side.job_items:
        return await _measure_job(side, meter)
    measured = await closed_loop(side.call, in_flight, seconds, 10**9, _WARMUP_SECONDS,
                                 meter.start)
    if measured.errors:
        raise RuntimeError(f"{measured.errors} requests failed: {measured.first_error}")
    ordered = sorted(measured.latencies)
    cpu = meter.per_op_us(measured.ops)
    return CellFigures(measured.ops_per_s * items, cpu["workers"] / items,
                       ordered[len(ordered) // 2] * 1000, cpu.get("bridge", 0.0) / items,
                       cpu.get("nats", 0.0) / items)


async def _measure_job(side: _Side, meter: CpuMeter) -> CellFigures:
    """One whole durable job on this side: items/s, workers' CPU per item, its time."""
    meter.start()
    job = await _run_job(BenchConfig(job_items=side.job_items), side.stack,
                         side.operation, side.bodies)
    if job.errors:
        raise RuntimeError(f"{job.errors} job items failed")
    cpu = meter.per_op_us(job.ops)
    return CellFigures(job.ops_per_s, cpu["workers"], job.seconds * 1000,
                       nats_cpu_us_per_item=cpu.get("nats", 0.0))


def parse_env(assignments: list[str]) -> dict[str, str]:
    """``["NAME=value", ...]`` as a mapping; a malformed one is an error."""
    env: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=value, got {assignment!r}")
        env[name] = value
    return env


async def compare(base: Path, operation: str, batch: int, in_flight: int, workers: int,
                  rounds: int, seconds: float, env: dict[str, str] | None = None,
                  base_env: dict[str, str] | None = None, http: bool = False,
                  job_items: int = 0, nats_as_up: bool = False,
                  ) -> tuple[list[CellFigures], list[CellFigures]]:
    """The cell measured ``rounds`` times on each stack: (this checkout's, the base's).
    ``env`` and ``base_env``: settings for each side's processes; ``http``: through
    each stack's bridge; ``job_items``: one durable job of that many items a round;
    ``nats_as_up``: this checkout's side on nats-server as ``pqkms up`` runs it
    (accounts, encrypted store), the base's on the open one."""
    sides = {"base": await _start(base, operation, batch, workers, base_env or {}, http,
                                  in_flight, job_items)}
    try:
        sides["new"] = await _start(None, operation, batch, workers, env or {}, http,
                                    in_flight, job_items, nats_as_up)
        figures: dict[str, list[CellFigures]] = {"base": [], "new": []}
        for round_number in range(rounds):
            order = ("base", "new") if round_number % 2 == 0 else ("new", "base")
            for name in order:
                figures[name].append(
                    await _measure(sides[name], in_flight, seconds, batch or 1))
            new, old = figures["new"][-1], figures["base"][-1]
            print(f"round {round_number + 1}: base {_figures_text(old)}, "
                  f"new {_figures_text(new)}", flush=True)
        return figures["new"], figures["base"]
    finally:
        for side in sides.values():
            if side.pool is not None:
                await side.pool.close()
            await side.client.close()
            side.stack.stop()
            shutil.rmtree(side.stack.root, ignore_errors=True)


def _figures_text(figures: CellFigures) -> str:
    bridge = (f" bridge {figures.bridge_cpu_us_per_item:.0f} µs"
              if figures.bridge_cpu_us_per_item else "")
    return (f"{figures.items_per_s:,.0f}/s {figures.worker_cpu_us_per_item:.0f} µs{bridge} "
            f"nats {figures.nats_cpu_us_per_item:.0f} µs p50 {figures.p50_ms:.3f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--base", type=Path, required=True,
                        help="the checkout to compare this one against")
    parser.add_argument("--operation", choices=OPERATIONS, default="encrypt")
    parser.add_argument("--batch", type=int, default=0, metavar="ITEMS",
                        help="batches of ITEMS items of the operation instead of single "
                             "requests")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and stack")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for this checkout's workers (repeatable); with "
                             "--base . it compares settings of the same code")
    parser.add_argument("--base-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the base's workers (repeatable)")
    parser.add_argument("--http", action="store_true",
                        help="single requests through each stack's bridge; adds the "
                             "bridge's CPU per request")
    parser.add_argument("--job", type=int, default=0, metavar="ITEMS",
                        help="one durable job of ITEMS items per round and stack instead "
                             "(submit, run, read back); p50 is the job's whole time")
    parser.add_argument("--nats-as-up", action="store_true",
                        help="this checkout's side on nats-server as `pqkms up` runs it "
                             "(accounts, encrypted store); with --base . it measures what "
                             "they cost")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.http, args.batch, args.job))) > 1:
        parser.error("--http, --batch and --job are different cells: give one")
    try:
        env, base_env = parse_env(args.env), parse_env(args.base_env)
    except ValueError as exc:
        parser.error(str(exc))
    new, base = uvloop.run(compare(args.base.resolve(), args.operation, args.batch,
                                   args.in_flight, args.workers, args.rounds, args.seconds,
                                   env, base_env, args.http, args.job, args.nats_as_up))
    ratios = median_ratios(new, base)
    bridge = f", bridge CPU per request {ratios.bridge_cpu_us_per_item:.3f}" if args.http else ""
    latency = "job time" if args.job else "p50"
    print(f"this checkout ÷ base, median of {args.rounds} rounds: items/s "
          f"{ratios.items_per_s:.3f}, worker CPU per item {ratios.worker_cpu_us_per_item:.3f}, "
          f"{latency} {ratios.p50_ms:.3f}{bridge}, nats-server CPU per item "
          f"{ratios.nats_cpu_us_per_item:.3f}")


if __name__ == "__main__":
    main()
