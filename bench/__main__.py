"""``python -m bench``: the whole benchmark (≈ 6 minutes), ``--quick`` (≈ 1.5 minutes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.fixture import OPERATIONS
from bench.run import RESULTS_DIR, BenchConfig, run_bench


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="pqkms side by side with the crypto floor and a bare nats-py responder",
    )
    parser.add_argument("--quick", action="store_true",
                        help="short cells (0.6 s each, 0.2 s warm-up, jobs of 20 000 items): "
                             "≈ 1.5 minutes")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 3)")
    parser.add_argument("--warmup", type=float, help="unrecorded seconds per cell (default 0.5)")
    parser.add_argument("--ops", type=int, help="at most this many operations per cell")
    parser.add_argument("--job-items", type=int,
                        help="items in each durable job (default 100 000)")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--http-in-flight", type=int, default=200)
    parser.add_argument("--http-connections", type=int, default=200,
                        help="keep-alive connections of the HTTP load generator (default 200)")
    parser.add_argument("--operations", default=",".join(OPERATIONS),
                        help="comma-separated subset of " + ",".join(OPERATIONS))
    parser.add_argument("--processes", default="1,2",
                        help="process / worker counts, comma-separated (default 1,2)")
    parser.add_argument("--batch-in-flight", type=int, default=4,
                        help="encrypt batches of 100 items in flight (default 4)")
    parser.add_argument("--pair-rounds", type=int, default=3,
                        help="rounds of each target's figure measured back to back with its "
                        "floor (default 3; 0: none)")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP bridge")
    parser.add_argument("--no-audit", action="store_true",
                        help="workers without the audit trail (to measure what it costs; "
                        "never how pqkms runs)")
    parser.add_argument("--nats-normal-scheduling", action="store_true",
                        help="nats-server under the default policy instead of SCHED_BATCH, "
                        "as pqkms up runs it (to measure what that changes)")
    parser.add_argument("--worker-log-level", default="INFO")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="directory for the JSON result (default bench/results)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temp directory")
    args = parser.parse_args(argv)

    config = BenchConfig()
    if args.quick:
        config.duration, config.warmup, config.job_items = 0.6, 0.2, 20_000
    if args.duration is not None:
        config.duration = args.duration
    if args.warmup is not None:
        config.warmup = args.warmup
    if args.ops is not None:
        config.max_ops = args.ops
    if args.job_items is not None:
        config.job_items = max(1, args.job_items)
    config.in_flight = args.in_flight
    config.http_in_flight = args.http_in_flight
    config.batch_in_flight = args.batch_in_flight
    config.http_connections = args.http_connections
    config.operations = tuple(op for op in args.operations.split(",") if op)
    unknown = set(config.operations) - set(OPERATIONS)
    if unknown:
        parser.error(f"unknown operations: {', '.join(sorted(unknown))}")
    config.processes = tuple(int(n) for n in args.processes.split(",") if n)
    config.pair_rounds = max(0, args.pair_rounds)
    config.http = not args.no_http
    config.audit = not args.no_audit
    config.nats_batch_scheduling = not args.nats_normal_scheduling
    config.worker_log_level = args.worker_log_level
    config.out_dir = None if args.no_save else args.out
    config.keep_stack_dir = args.keep
    return config


def main(argv: list[str] | None = None) -> None:
    report = run_bench(parse_args(argv))
    print()
    print(report.table())


if __name__ == "__main__":
    main()
