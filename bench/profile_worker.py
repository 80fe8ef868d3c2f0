"""Profile one pqkms worker, or the HTTP bridge, under load with py-spy (``pip install py-spy``).

``python -m bench.profile_worker --operation encrypt --seconds 10`` starts its own
stack with one worker, drives the operation with 200 requests in flight, records the
worker with ``py-spy record`` (collapsed stacks) and prints where its CPU goes:
the heaviest functions by inclusive and by self time. ``--bridge`` records the bridge
instead, with two workers behind it and the requests sent over HTTP; ``--nats`` records
nats-server with Linux perf (``bench.nats_profile``), and ``--perf`` the worker (or the
bridge) with perf, summed by the native code its CPU went to (``bench.native_profile``).

By default py-spy reads the running process: shares are unbiased, but a sample can mix
two stacks. ``--blocking`` pauses it for each sample: whole stacks, but the pause lands
where the process next enters the kernel, so system calls collect samples out of
proportion (docs/performance.md). ``--native`` adds the C frames (and pauses).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import nats
import uvloop

from bench.clients import PQKMS_SUBJECTS, Bodies, http_call, nats_call
from bench.cpu import CpuMeter
from bench.fixture import OPERATIONS
from bench.http_client import HttpPool
from bench.measure import Measurement, closed_loop
from bench.native_profile import categorize_native
from bench.nats_profile import NATS_CATEGORIES, categorize_stacks
from bench.perf_samples import (
    PERF_FREQUENCY,
    fold_perf_script,
    perf_record_arguments,
    perf_script_arguments,
)
from bench.run import BenchConfig, _pqkms_bodies, _run_job, batch_call
from bench.stack import BenchStack
from bench.stacks import read_collapsed, summarize_stacks, write_collapsed
from schemas.subjects import HEADER_API_KEY

__all__ = [
    "CATEGORIES",
    "Sampling",
    "categorize_collapsed",
    "py_spy_record_arguments",
    "summarize_collapsed",
]

# Where a sample's CPU goes, first match from the leaf up wins for the innermost
# interesting frame; checked in this order on the whole stack.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database (SQLAlchemy + aiosqlite, incl. its thread)",
     ("aiosqlite/", "sqlalchemy/", "sqlmodel/", "worker/store/")),
    ("crypto (HPKE / ML-DSA)", ("worker/crypto/",)),
    ("crypto thread pool hand-off", ("concurrent/futures/", "crypto_runner.py")),
    ("request log line (structlog)", ("structlog/",)),
    ("uuid4 (request / message ids)", ("uuid4 ",)),
    ("pydantic validation + dump", ("pydantic/", "pydantic_core", "schemas/")),
    ("auth + rate limit", ("services/auth.py", "services/rate_limit.py",
                           "services/shared_rate_limiter.py")),
    ("pqkms handler / services (own code)", ("worker/handlers/", "worker/services/")),
    ("FastStream + fast_depends + anyio", ("faststream/", "fast_depends/", "anyio/")),
    ("nats-py client (parse, publish, flush)", ("nats/",)),
    ("event loop (uvloop: I/O, callbacks)", ("asyncio/runners.py",)),
)

# The same for the bridge (``--bridge``), matched from the leaf up.
BRIDGE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("request log line (structlog, log sink)", ("structlog/", "log_sink.py",
                                                "logging_setup.py")),
    ("metrics (prometheus_client, api_bridge/metrics.py)", ("prometheus_client/",
                                                            "api_bridge/metrics.py")),
    ("nats-py client (request, parse, publish)", ("nats/",)),
    ("socket writes (coalesced_writes.py)", ("coalesced_writes.py",)),
    ("uvicorn + httptools (HTTP/1.1)", ("uvicorn/", "httptools/")),
    ("Starlette + FastAPI (Request, Response)", ("starlette/", "fastapi/")),
    ("bridge's own code", ("api_bridge/", "schemas/")),
    ("event loop (uvloop: I/O, callbacks)", ("asyncio/",)),
)


_RATE = 250


def summarize_collapsed(path: Path, top: int = 30) -> str:
    """Inclusive and self sample shares per function from py-spy's collapsed output."""
    return summarize_stacks(read_collapsed(path), top, _short)


def categorize_collapsed(
    path: Path, categories: tuple[tuple[str, tuple[str, ...]], ...] = CATEGORIES,
    innermost: bool = False,
) -> tuple[int, dict[str, int]]:
    """Samples per cost category (``CATEGORIES`` unless told). By default the first
    category whose marker appears anywhere in a stack takes the sample; with
    ``innermost`` the frame nearest the leaf that any marker matches decides (for a
    process whose middleware wraps everything, such as the bridge)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in read_collapsed(path).items():
        total += count
        scopes = reversed(stack.split(";")) if innermost else (stack,)
        counts[_category(scopes, categories)] += count
    return total, dict(counts)


def _category(scopes: Iterable[str],
              categories: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for scope in scopes:
        for name, markers in categories:
            if any(marker in scope for marker in markers):
                return name
    return "other"


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; drop the line number
    # and keep the path from site-packages or the project root on.
    name, _, location = frame.partition(" (")
    location = location.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
            break
    return f"{name} ({location})"


@dataclass(frozen=True, slots=True)
class Sampling:
    """How py-spy samples the profiled process."""

    gil: bool = False  # only the thread holding the GIL
    blocking: bool = False  # pause the process for each sample
    native: bool = False  # C frames too (py-spy pauses the process for them)


def py_spy_record_arguments(pid: int, seconds: float, out: Path,
                            sampling: Sampling) -> list[str]:
    """``py-spy record``'s arguments (after the executable) for collapsed stacks."""
    paused = sampling.blocking or sampling.native
    return [
        "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", str(_RATE), "--format", "raw", "--output", str(out),
        *([] if paused else ["--nonblocking"]),
        *(["--native"] if sampling.native else []),
        *(["--gil"] if sampling.gil else []),
    ]


async def _jobs_back_to_back(stack: BenchStack, operation: str, bodies: Bodies, items: int,
                             seconds: float, on_start: Callable[[], None]) -> Measurement:
    """Durable jobs of ``items`` items, one after the other, until ``seconds`` are over
    (the first job is a warm-up, not counted); items per second over the jobs counted."""
    config = BenchConfig(job_items=items)
    await _run_job(config, stack, operation, bodies)
    on_start()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += (await _run_job(config, stack, operation, bodies)).ops
    return Measurement(ops=done, seconds=time.perf_counter() - started, latencies=[])


async def _profile(operation: str, seconds: float, in_flight: int, out: Path,
                   log_level: str, sampling: Sampling, batch_items: int = 0,
                   bridge: bool = False, job_items: int = 0,
                   profile_nats: bool = False, perf: bool = False) -> tuple[float, float]:
    """Requests completed during the recording and the profiled process's CPU µs per
    request (one worker's, or with ``bridge`` the bridge's in front of two workers, or
    with ``profile_nats`` nats-server's). With ``perf`` or ``profile_nats``, perf records
    into ``_perf_recording(out)``; otherwise py-spy into ``out``."""
    cpu: dict[str, float] = {}
    requests = 0.0
    root = Path(tempfile.mkdtemp(prefix="pqkms-profile-"))
    stack = BenchStack(root, worker_log_level=log_level)
    pool: HttpPool | None = None
    try:
        stack.start_nats()
        await stack.init_store()
        await stack.start_workers(2 if bridge else 1)
        client = await nats.connect(stack.nats_url, pending_size=64 * 1024 * 1024)
        await stack.generate_keys(client)
        bodies = await _pqkms_bodies(stack, client, bytes(range(256)) * 4)
        if bridge:
            stack.start_bridge()
            if not await stack.wait_for_bridge() or stack.bridge is None:
                raise SystemExit(f"the bridge did not start; see {root / 'bridge.log'}")
            pool = HttpPool(stack.http_url, in_flight, headers={HEADER_API_KEY: stack.api_key})
            call = http_call(pool, operation, bodies[operation])
            profiled = stack.bridge.pid
        elif job_items:
            call = None
            profiled = stack.workers[0].pid
        elif batch_items:
            call = batch_call(client, operation, bodies.batch(operation, batch_items),
                              batch_items, stack.api_key)
            profiled = stack.workers[0].pid
        else:
            call = nats_call(client, PQKMS_SUBJECTS[operation], operation, bodies[operation],
                             stack.api_key)
            profiled = stack.workers[0].pid
        if profile_nats and stack.nats is not None:
            profiled = stack.nats.process.pid
        recorder = await asyncio.create_subprocess_exec(
            *(_perf_record(profiled, seconds, _perf_recording(out)) if perf or profile_nats
              else _py_spy_record(profiled, seconds, out, sampling)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        meter = CpuMeter({"profiled": [profiled]})
        started = time.perf_counter()
        if call is None:
            measurement = await _jobs_back_to_back(stack, operation, bodies, job_items,
                                                   seconds + 1.0, meter.start)
        else:
            measurement = await closed_loop(call, in_flight, seconds + 1.0, 10**9, 0.5,
                                            meter.start)
        cpu = meter.per_op_us(measurement.ops)
        requests = measurement.ops_per_s * int(seconds)
        process = "nats-server" if profile_nats else "bridge" if bridge else "worker"
        print(f"{operation}: {measurement.ops_per_s:,.0f} ops/s during the profile "
              f"({time.perf_counter() - started:.1f} s), {process} "
              f"CPU {cpu.get('profiled', 0):,.0f} µs per request")
        _, errors = await recorder.communicate()
        if recorder.returncode != 0:
            print(errors.decode(errors="replace"))
        await client.close()
    finally:
        if pool is not None:
            await pool.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    return requests, cpu.get("profiled", 0.0)


def _py_spy_record(pid: int, seconds: float, out: Path, sampling: Sampling) -> list[str]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return [spy, *py_spy_record_arguments(pid, seconds, out, sampling)]


def _perf_record(pid: int, seconds: float, recording: Path) -> list[str]:
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    return [perf, *perf_record_arguments(pid, seconds, str(recording))]


def _perf_recording(out: Path) -> Path:
    """Where ``--nats`` has perf write its recording before it is folded into ``out``."""
    return out.with_name(out.name + ".perf")


def _fold_perf_recording(out: Path, native: bool) -> None:
    """``perf script`` of the recording folded into collapsed stacks in ``out`` (with
    ``native``, frames name their library and stacks start with their thread)."""
    recording = _perf_recording(out)
    if not recording.exists():
        return
    script = subprocess.run(
        ["perf", *perf_script_arguments(str(recording), libraries=native)],
        capture_output=True, check=False,
    )
    text = script.stdout.decode(errors="replace")
    write_collapsed(out, fold_perf_script(text, threads=native))
    recording.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker")
    parser.add_argument("--operation", choices=OPERATIONS, default="encrypt")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--worker-log-level", default="INFO")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pqkms-worker-profile.txt"))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--batch", type=int, default=0, metavar="ITEMS",
                        help="profile batches of ITEMS items of the operation instead (in "
                             "flight: --in-flight batches)")
    parser.add_argument("--job", type=int, default=0, metavar="ITEMS",
                        help="profile durable jobs of ITEMS items of the operation instead, "
                             "one after the other (one worker runs every chunk)")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (no double counting of "
                             "threads waiting for it)")
    parser.add_argument("--bridge", action="store_true",
                        help="profile the HTTP bridge (two workers behind it) instead")
    parser.add_argument("--blocking", action="store_true",
                        help="pause the process for each sample: every stack is one the "
                             "process really had (without it py-spy reads a running "
                             "process and a sample can mix two stacks), but the pause "
                             "lands at the process's next entry into the kernel, so "
                             "samples pile up at system calls: trust its stacks, not its "
                             "shares")
    parser.add_argument("--native", action="store_true",
                        help="C frames too, below the Python ones (implies --blocking)")
    parser.add_argument("--nats", action="store_true",
                        help="profile nats-server instead, with Linux perf (perf record -g), "
                             "under the same load")
    parser.add_argument("--perf", action="store_true",
                        help="record the worker (or the bridge) with Linux perf instead of "
                             "py-spy: only CPU actually used, kernel included, summed by the "
                             "native code it went to (crypto, CPython, C library, kernel)")
    args = parser.parse_args(argv)
    if args.bridge and (args.batch or args.job):
        parser.error("--bridge sends single requests; leave out --batch and --job")
    if args.batch and args.job:
        parser.error("--batch or --job, not both")
    if args.nats and (args.gil or args.blocking or args.native):
        parser.error("--gil, --blocking and --native are py-spy's; perf records nats-server")
    if args.perf and (args.gil or args.blocking or args.native or args.nats):
        parser.error("--perf records with perf: leave out py-spy's --gil, --blocking and "
                     "--native, and --nats (which uses perf already)")
    sampling = Sampling(gil=args.gil, blocking=args.blocking, native=args.native)
    args.out.unlink(missing_ok=True)  # (a failed recording must not show an old one)
    requests, cpu_per_request = uvloop.run(_profile(
        args.operation, args.seconds, args.in_flight, args.out, args.worker_log_level,
        sampling, args.batch, args.bridge, args.job, args.nats, args.perf))
    if args.nats or args.perf:
        _fold_perf_recording(args.out, native=args.perf)
    if not args.out.exists():
        return
    if args.nats:
        _print_nats_costs(args.out, requests, cpu_per_request)
    elif args.perf:
        _print_native_costs(args.out, "bridge" if args.bridge else "worker", requests,
                            cpu_per_request)
    else:
        _print_python_costs(args, requests, cpu_per_request)
    print()
    print(summarize_stacks(read_collapsed(args.out), args.top) if args.nats or args.perf
          else summarize_collapsed(args.out, args.top))
    print(f"\ncollapsed stacks: {args.out} (flamegraph.pl or speedscope can render them)")


def _print_python_costs(args: argparse.Namespace, requests: float,
                        cpu_per_request: float) -> None:
    process = "bridge" if args.bridge else "worker"
    total, counts = categorize_collapsed(
        args.out, BRIDGE_CATEGORIES if args.bridge else CATEGORIES, innermost=args.bridge)
    print(f"\nwhere the {process}'s time goes per request ({total} samples at {_RATE}/s"
          f"{', GIL holder only' if args.gil else ', every active thread'}, "
          f"{requests:,.0f} requests):")
    sampled = _print_categories(counts, total, _RATE, requests)
    print(f"         {sampled:7.0f} µs  sampled in total; the process used "
          f"{cpu_per_request:,.0f} µs CPU per request (/proc)")
    if args.gil:
        print(f"         {cpu_per_request - sampled:7.0f} µs  CPU outside the GIL: thread "
              "hand-offs and GIL waits, kernel, sqlite's C code, crypto without the GIL")


def _print_nats_costs(out: Path, requests: float, cpu_per_request: float) -> None:
    total, counts, kernel = categorize_stacks(read_collapsed(out), NATS_CATEGORIES)
    print(f"\nwhere nats-server's time goes per request or item ({total} samples at "
          f"{PERF_FREQUENCY}/s, every thread, {requests:,.0f} requests or items):")
    sampled = _print_categories(counts, total, PERF_FREQUENCY, requests, decimals=1)
    in_kernel = 1e6 * kernel / PERF_FREQUENCY / max(requests, 1.0)
    print(f"         {sampled:7.1f} µs  sampled in total, {in_kernel:,.1f} of them in the "
          f"kernel (system calls, page cache, page faults); the process used "
          f"{cpu_per_request:,.0f} µs CPU per request (/proc)")


def _print_native_costs(out: Path, process: str, requests: float,
                        cpu_per_request: float) -> None:
    costs = categorize_native(read_collapsed(out))
    print(f"\nwhere the {process}'s CPU goes per request or item, by native code "
          f"({costs.total} samples at {PERF_FREQUENCY}/s, every thread, "
          f"{requests:,.0f} requests or items):")
    sampled = _print_categories(costs.counts, costs.total, PERF_FREQUENCY, requests,
                                decimals=1)
    on_main = 100 * costs.main_thread / max(costs.total, 1)
    print(f"         {sampled:7.1f} µs  sampled in total, {on_main:.0f} % on the main "
          f"thread (the event loop); the process used {cpu_per_request:,.0f} µs CPU per "
          "request (/proc)")


def _print_categories(counts: dict[str, int], total: int, rate: float,
                      requests: float, decimals: int = 0) -> float:
    """Print each category's share and µs per request; return the µs summed."""
    sampled = 0.0
    for name, count in sorted(counts.items(), key=lambda item: -item[1]):
        micros = 1e6 * count / rate / max(requests, 1.0)
        sampled += micros
        print(f"  {100 * count / max(total, 1):5.1f}%  {micros:7.{decimals}f} µs  {name}")
    return sampled

if __name__ == "__main__":
    main()
