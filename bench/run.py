"""One benchmark run: crypto floor, transport floor, pqkms over NATS and HTTP."""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NatsClient

from bench.clients import (
    ALGORITHMS,
    BATCH_SUBJECTS,
    FLOOR_SUBJECTS,
    JOB_OPERATIONS,
    PQKMS_SUBJECTS,
    Bodies,
    http_call,
    item_error,
    nats_call,
)
from bench.cpu import CpuMeter
from bench.fixture import OPERATIONS, LocalKeys, Seeds
from bench.floor import CryptoFloor
from bench.http_client import HttpPool
from bench.measure import Call, Measurement, closed_loop
from bench.pairs import Cell, Pair, measure_pair
from bench.report import (
    TARGET_BATCH,
    TARGET_ENCRYPT,
    TARGET_HTTP,
    TARGET_JOB,
    TARGET_SIGN,
    Report,
    Row,
    machine_info,
)
from bench.stack import BenchStack
from schemas.subjects import HEADER_API_KEY

__all__ = ["RESULTS_DIR", "BenchConfig", "run_bench"]

RESULTS_DIR = Path(__file__).parent / "results"
NOT_IMPLEMENTED = "n/a (not implemented)"


@dataclass
class BenchConfig:
    """How long and how hard to measure."""

    duration: float = 3.0  # seconds per measured cell
    warmup: float = 0.5  # unrecorded seconds before each cell
    max_ops: int = 1_000_000_000  # cap per cell (the smoke test uses 50)
    in_flight: int = 200
    # As many HTTP requests in flight as NATS ones: the HTTP target divides the two.
    http_in_flight: int = 200
    # Keep-alive connections of the lean HTTP client (bench/http_client.py), one request
    # at a time on each: with as many connections as requests in flight nothing queues
    # in the client.
    http_connections: int = 200
    batch_items: int = 100
    batch_in_flight: int = 4
    job_items: int = 100_000  # items in each durable job (capped by max_ops)
    job_chunk_items: int = 500
    # Rounds of each target's figure next to its floor (bench/pairs.py); 0: none.
    pair_rounds: int = 3
    processes: tuple[int, ...] = (1, 2)
    operations: tuple[str, ...] = OPERATIONS
    http: bool = True
    audit: bool = True  # the workers' audit trail; --no-audit measures what it costs
    # nats-server under SCHED_BATCH, as `pqkms up` runs it (pqkms.nats_embedded).
    nats_batch_scheduling: bool = True
    worker_log_level: str = "INFO"
    out_dir: Path | None = field(default_factory=lambda: RESULTS_DIR)
    keep_stack_dir: bool = False
    progress: Callable[[str], None] | None = print


def run_bench(config: BenchConfig) -> Report:
    """Measure everything, print progress, write the JSON (unless ``out_dir`` is None)."""
    import uvloop

    settings = {key: value for key, value in asdict(config).items()
                if key not in {"progress", "out_dir"}}
    report = Report(config=settings, machine=machine_info())
    report.notes.append(
        "The load generator (one asyncio process) shares the machine's cores with "
        "nats-server and the workers; throughput rows include that competition."
    )
    if not config.audit:
        report.notes.append("Workers ran WITHOUT the audit trail (--no-audit): these figures "
                            "show what auditing costs, not how pqkms runs.")
    if not config.nats_batch_scheduling:
        report.notes.append("nats-server ran under the default scheduling policy "
                            "(--nats-normal-scheduling), not SCHED_BATCH as pqkms up runs it.")
    report.machine["loadavg_at_start"] = _loadavg()
    seeds = Seeds.fresh()
    _crypto_floor(config, report, seeds)
    root = Path(tempfile.mkdtemp(prefix="pqkms-bench-"))
    stack = BenchStack(root, worker_log_level=config.worker_log_level, audit=config.audit,
                       nats_batch_scheduling=config.nats_batch_scheduling)
    try:
        uvloop.run(_over_the_wire(config, report, stack, seeds))
    finally:
        stack.stop()
        if config.keep_stack_dir:
            _say(config, f"stack files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report.machine["loadavg_at_end"] = _loadavg()
    if config.out_dir is not None:
        path = report.write(config.out_dir)
        report.notes.append(f"written to {path}")
        _say(config, f"results written to {path}")
    return report


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def _say(config: BenchConfig, text: str) -> None:
    if config.progress is not None:
        config.progress(text)


def _crypto_floor(config: BenchConfig, report: Report, seeds: Seeds) -> None:
    for processes in config.processes:
        floor = CryptoFloor(processes, seeds)
        try:
            for operation in config.operations:
                _say(config, f"crypto floor: {operation}, {processes} process(es)")
                measurement = floor.measure(operation, config.duration, config.max_ops,
                                            config.warmup)
                report.add(Row.measured(f"crypto/{operation}/{processes}p", "crypto floor",
                                        operation, processes, None, measurement))
        finally:
            floor.close()


async def _measure(config: BenchConfig, call: Call, in_flight: int,
                   meter: CpuMeter | None) -> tuple[Measurement, dict[str, float] | None]:
    # The meter starts after the warm-up: its CPU would be charged to the recorded ops.
    measurement = await closed_loop(call, in_flight, config.duration, config.max_ops,
                                    0.0 if meter is None else config.warmup,
                                    None if meter is None else meter.start)
    return measurement, None if meter is None else meter.per_op_us(measurement.ops)


async def _over_the_wire(config: BenchConfig, report: Report, stack: BenchStack,
                         seeds: Seeds) -> None:
    stack.start_nats()
    assert stack.nats is not None
    nats_pid = stack.nats.process.pid
    client = await nats.connect(stack.nats_url, pending_size=64 * 1024 * 1024)
    try:
        await _transport_floor(config, report, stack, seeds, client, nats_pid)
        bodies = await _pqkms_nats(config, report, stack, client, nats_pid)
        if config.http:
            await _pqkms_http(config, report, stack, bodies, nats_pid)
        await _batches(config, report, stack, client, bodies, nats_pid)
        await _durable_jobs(config, report, stack, bodies, nats_pid)
        if config.pair_rounds > 0:
            await _back_to_back(config, report, stack, seeds, client, bodies)
    finally:
        await client.close()


def _in_flights(config: BenchConfig, processes: int) -> list[int]:
    # Latency (1 in flight) once with one server process; throughput with each count.
    return [1, config.in_flight] if processes == config.processes[0] else [config.in_flight]


async def _transport_floor(config: BenchConfig, report: Report, stack: BenchStack,
                           seeds: Seeds, client: NatsClient, nats_pid: int) -> None:
    keys = LocalKeys(seeds)
    bodies = Bodies(keys.payload, keys.ciphertext, keys.signature)
    for processes in config.processes:
        await stack.start_responders(processes, seeds)
        meter = CpuMeter({"servers": [p.pid for p in stack.responders], "nats": [nats_pid]})
        for operation in config.operations:
            for in_flight in _in_flights(config, processes):
                _say(config, f"bare nats-py responder: {operation}, {processes} process(es), "
                             f"{in_flight} in flight")
                call = nats_call(client, FLOOR_SUBJECTS[operation], operation, bodies[operation])
                measurement, cpu = await _measure(config, call, in_flight, meter)
                report.add(Row.measured(
                    f"transport/{operation}/{processes}p/{in_flight}", "bare nats-py",
                    operation, processes, in_flight, measurement,
                    floor=f"crypto/{operation}/{processes}p" if in_flight > 1 else None,
                    cpu_us_per_op=cpu,
                ))
    stack.stop_responders()


async def _pqkms_bodies(stack: BenchStack, client: NatsClient, payload: bytes) -> Bodies:
    """A real ciphertext and signature from the service for decrypt and verify."""
    headers = {HEADER_API_KEY: stack.api_key}
    scratch = Bodies(payload, b"", b"")
    sealed = orjson.loads((await client.request(
        PQKMS_SUBJECTS["encrypt"], scratch["encrypt"], timeout=10, headers=headers)).data)
    signed = orjson.loads((await client.request(
        PQKMS_SUBJECTS["sign"], scratch["sign"], timeout=10, headers=headers)).data)
    return Bodies(payload, base64.b64decode(sealed["data"]["ciphertext"]),
                  base64.b64decode(signed["data"]["signature"]))


async def _pqkms_nats(config: BenchConfig, report: Report, stack: BenchStack,
                      client: NatsClient, nats_pid: int) -> Bodies:
    """The single-request cells; returns the bodies every later pqkms cell sends."""
    await stack.init_store()
    await stack.start_workers(1)
    await stack.generate_keys(client)
    bodies = await _pqkms_bodies(stack, client, bytes(range(256)) * 4)
    for workers in config.processes:
        await stack.start_workers(workers)
        meter = CpuMeter({"servers": [p.pid for p in stack.workers], "nats": [nats_pid]})
        for operation in config.operations:
            for in_flight in _in_flights(config, workers):
                _say(config, f"pqkms over NATS: {operation}, {workers} worker(s), "
                             f"{in_flight} in flight")
                call = nats_call(client, PQKMS_SUBJECTS[operation], operation,
                                 bodies[operation], stack.api_key)
                measurement, cpu = await _measure(config, call, in_flight, meter)
                floor_processes = workers if in_flight > 1 else config.processes[0]
                report.add(Row.measured(
                    f"nats/{operation}/{workers}w/{in_flight}", "pqkms NATS", operation,
                    workers, in_flight, measurement,
                    floor=f"transport/{operation}/{floor_processes}p/{in_flight}",
                    crypto_floor=f"crypto/{operation}/{workers}p" if in_flight > 1 else None,
                    cpu_us_per_op=cpu,
                ))
    return bodies


async def _pqkms_http(config: BenchConfig, report: Report, stack: BenchStack, bodies: Bodies,
                      nats_pid: int) -> None:
    """Each operation's single request through the bridge, 1 and ``http_in_flight`` in
    flight, next to the same request over NATS."""
    workers = len(stack.workers)
    stack.start_bridge()
    if not await stack.wait_for_bridge():
        note = "n/a (bridge did not start; see bridge.log)"
        report.notes.append(f"HTTP bridge: {note}")
        for operation in config.operations:
            report.add(Row(f"http/{operation}", "pqkms HTTP", operation, workers, None,
                           note=note))
        return
    assert stack.bridge is not None
    pids = [p.pid for p in stack.workers]
    meter = CpuMeter({"servers": pids, "bridge": [stack.bridge.pid], "nats": [nats_pid]})
    for operation in config.operations:
        for in_flight in (1, config.http_in_flight):
            _say(config, f"pqkms over HTTP: {operation}, {workers} worker(s), "
                         f"{in_flight} in flight")
            connections = min(in_flight, config.http_connections)
            pool = HttpPool(stack.http_url, connections,
                            headers={HEADER_API_KEY: stack.api_key})
            try:
                measurement, cpu = await _measure(
                    config, http_call(pool, operation, bodies[operation]), in_flight, meter)
            finally:
                await pool.close()
            # A lone HTTP request is compared with the lone NATS request (one worker's row).
            nats_row = (f"nats/{operation}/{workers}w/{config.in_flight}" if in_flight > 1
                        else f"nats/{operation}/{config.processes[0]}w/1")
            report.add(Row.measured(
                f"http/{operation}/{workers}w/{in_flight}", "pqkms HTTP", operation, workers,
                in_flight, measurement, floor=nats_row,
                cpu_us_per_op=cpu,
            ))


def batch_error(reply: bytes, operation: str, items: int) -> str | None:
    """What is wrong with a batch reply (not every item succeeded), or ``None``."""
    try:
        data = orjson.loads(reply)["data"]
        results = data["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return reply[:200].decode(errors="replace")
    if data.get("succeeded") != items or len(results) != items:
        return f"{data.get('succeeded')} of {items} items succeeded"
    return next(filter(None, (item_error(operation, result) for result in results)), None)


def batch_call(client: NatsClient, operation: str, body: bytes, items: int,
               api_key: str) -> Call:
    """One batch of ``items`` per call; every item must succeed."""
    headers = {HEADER_API_KEY: api_key}
    subject = BATCH_SUBJECTS[operation]

    async def call() -> str | None:
        try:
            reply = await client.request(subject, body, timeout=60, headers=headers)
        except Exception as exc:
            return type(exc).__name__
        return batch_error(reply.data, operation, items)

    return call


async def _batches(config: BenchConfig, report: Report, stack: BenchStack,
                   client: NatsClient, bodies: Bodies, nats_pid: int) -> None:
    """Batches of ``batch_items`` of each operation when the worker serves them, else n/a."""
    workers = len(stack.workers)
    items = config.batch_items
    meter = CpuMeter({"servers": [p.pid for p in stack.workers], "nats": [nats_pid]})
    for operation in config.operations:
        layer = f"pqkms batch ({items} items)"
        body = bodies.batch(operation, items)
        call = batch_call(client, operation, body, items, stack.api_key)
        problem = await call()
        if problem is not None:
            note = (NOT_IMPLEMENTED if problem == nats.errors.NoRespondersError.__name__
                    else f"n/a ({problem[:60]})")
            report.add(Row(f"batch/{operation}", layer, operation, workers, None, note=note))
            continue
        _say(config, f"pqkms batch over NATS: {operation} x {items}, {workers} worker(s), "
                     f"{config.batch_in_flight} batches in flight")
        measurement, cpu = await _measure(config, call, config.batch_in_flight, meter)
        # Figures per item: ops count items, latencies stay per batch.
        measurement.ops *= items
        per_item = {name: round(value / items, 1) for name, value in (cpu or {}).items()}
        report.add(Row.measured(
            f"batch/{operation}/{workers}w/{config.batch_in_flight}", layer,
            operation, workers, config.batch_in_flight, measurement,
            floor=f"crypto/{operation}/{workers}p",
            crypto_floor=f"crypto/{operation}/{workers}p",
            cpu_us_per_op=per_item,
            note="ops/s counts items; p50/p99 are per batch",
        ))


async def _durable_jobs(config: BenchConfig, report: Report, stack: BenchStack,
                        bodies: Bodies, nats_pid: int) -> None:
    """One durable JetStream job of ``job_items`` items per operation, submitted, run and
    read back."""
    workers = len(stack.workers)
    groups = {"servers": [p.pid for p in stack.workers], "nats": [nats_pid]}
    for operation in config.operations:
        _say(config, f"pqkms durable job: {operation} x {_job_size(config)}, "
                     f"{workers} worker(s), chunks of at most {config.job_chunk_items}")
        meter = CpuMeter(groups)
        meter.start()
        phases: dict[str, dict[str, Any]] = {}
        measurement = await _run_job(config, stack, operation, bodies, phases,
                                     CpuMeter(groups))
        cpu = meter.per_op_us(measurement.ops)
        row = report.add(Row.measured(
            f"job/{operation}/{workers}w", f"pqkms durable job ({_job_size(config)} items)",
            operation, workers, None, measurement, floor=f"crypto/{operation}/{workers}p",
            crypto_floor=f"crypto/{operation}/{workers}p", cpu_us_per_op=cpu or None,
            note="ops/s counts items from the submit to the last result read; p50 is the "
                 "whole job; figures.phases: seconds and CPU per item of the submit, the "
                 "run after it and the read-back",
        ))
        assert row.figures is not None
        row.figures["phases"] = phases


def _job_size(config: BenchConfig) -> int:
    return max(1, min(config.job_items, config.max_ops))


async def _run_job(config: BenchConfig, stack: BenchStack, operation: str, bodies: Bodies,
                   phases: dict[str, dict[str, Any]] | None = None,
                   phase_meter: CpuMeter | None = None) -> Measurement:
    """Submit a job of ``_job_size`` items of ``operation`` (every item the same 1 KiB
    request), wait for it and read every result back: items per second from the submit
    to the last result in hand. ``phases`` receives each part's seconds (and, with
    ``phase_meter``, its CPU µs per item of the whole job): ``submit`` (every chunk
    queued; workers run chunks meanwhile), ``run_after_submit`` (until the job is
    completed) and ``read_back``."""
    from pqkms.client import PqkmsClient

    items = _job_size(config)
    body = [bodies.items[operation]] * items
    marks: list[tuple[str, float, dict[str, float]]] = []

    def mark(phase: str) -> None:
        marks.append((phase, time.perf_counter(),
                      phase_meter.per_op_us(items) if phase_meter is not None else {}))
        if phase_meter is not None:
            phase_meter.start()

    async with await PqkmsClient.connect(stack.nats_url, stack.api_key) as client:
        if phase_meter is not None:
            phase_meter.start()
        started = time.perf_counter()
        job_id = await client.submit_job(JOB_OPERATIONS[operation], body,
                                         chunk_items=config.job_chunk_items,
                                         key_version=1, algorithm=ALGORITHMS[operation])
        mark("submit")
        await client.wait_for_job(job_id, poll_seconds=0.1, timeout=600)
        mark("run_after_submit")
        read = failed = 0
        async for result in client.job_results(job_id):
            read += 1
            failed += item_error(operation, result) is not None
        mark("read_back")
    elapsed = marks[-1][1] - started
    if phases is not None:
        since = started
        for phase, at, cpu in marks:
            phases[phase] = {"seconds": round(at - since, 4), "cpu_us_per_item": cpu}
            since = at
    failed += items - read
    return Measurement(ops=items - failed, seconds=elapsed, latencies=[elapsed], errors=failed)


async def _back_to_back(config: BenchConfig, report: Report, stack: BenchStack, seeds: Seeds,
                        client: NatsClient, bodies: Bodies) -> None:
    """Each target's figure next to its floor, ``pair_rounds`` times (bench/pairs.py)."""
    workers = len(stack.workers)
    keys = LocalKeys(seeds)
    floor_bodies = Bodies(keys.payload, keys.ciphertext, keys.signature)
    floor = CryptoFloor(workers, seeds)
    await stack.start_responders(workers, seeds)
    pool: HttpPool | None = None
    try:
        async def crypto(operation: str) -> float:
            measurement = await asyncio.to_thread(floor.measure, operation, config.duration,
                                                  config.max_ops, config.warmup)
            return measurement.ops_per_s

        def loaded(call: Call, in_flight: int, items: int = 1) -> Cell:
            async def cell() -> float:
                measurement = await closed_loop(call, in_flight, config.duration,
                                                config.max_ops, config.warmup)
                return measurement.ops_per_s * items
            return cell

        def pqkms(operation: str) -> Cell:
            return loaded(nats_call(client, PQKMS_SUBJECTS[operation], operation,
                                    bodies[operation], stack.api_key), config.in_flight)

        async def job() -> float:
            return (await _run_job(config, stack, "encrypt", bodies)).ops_per_s

        pairs: list[tuple[str, str, str, Cell, Cell]] = []
        if "encrypt" in config.operations:
            bare = loaded(nats_call(client, FLOOR_SUBJECTS["encrypt"], "encrypt",
                                    floor_bodies["encrypt"]), config.in_flight)
            encrypt_floor: Cell = lambda: crypto("encrypt")  # noqa: E731
            pairs.append((TARGET_ENCRYPT, "pqkms encrypt", "bare responder", pqkms("encrypt"),
                          bare))
            batch = loaded(batch_call(client, "encrypt",
                                      bodies.batch("encrypt", config.batch_items),
                                      config.batch_items, stack.api_key),
                           config.batch_in_flight, config.batch_items)
            pairs.append((TARGET_BATCH, "pqkms batch items", "crypto encrypt", batch,
                          encrypt_floor))
            pairs.append((TARGET_JOB, "pqkms job items", "crypto encrypt", job, encrypt_floor))
            if config.http and stack.bridge is not None and stack.bridge.poll() is None:
                pool = HttpPool(stack.http_url, min(config.http_in_flight,
                                                    config.http_connections),
                                headers={HEADER_API_KEY: stack.api_key})
                http = loaded(http_call(pool, "encrypt", bodies["encrypt"]),
                              config.http_in_flight)
                pairs.append((TARGET_HTTP, "pqkms HTTP encrypt", "pqkms NATS encrypt", http,
                              pqkms("encrypt")))
        if "sign" in config.operations:
            pairs.append((TARGET_SIGN, "pqkms sign", "crypto sign", pqkms("sign"),
                          lambda: crypto("sign")))
        for target, figure_name, floor_name, figure, below in pairs:
            _say(config, f"back to back: {figure_name} next to {floor_name}, "
                         f"{config.pair_rounds} rounds")
            rounds = await measure_pair(figure, below, config.pair_rounds)
            report.pairs.append(Pair(target, figure_name, floor_name, rounds))
    finally:
        if pool is not None:
            await pool.close()
        stack.stop_responders()
        floor.close()
