"""Rows, ratios to their floors, issue 7's targets, the printed table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.budget import budget_lines, budgets
from bench.measure import Measurement
from bench.pairs import Pair

__all__ = [
    "TARGET_BATCH", "TARGET_ENCRYPT", "TARGET_HTTP", "TARGET_JOB", "TARGET_LONE", "TARGET_SIGN",
    "Report", "Row", "machine_info",
]

TARGET_ENCRYPT = "Single encrypt over NATS ≥ 0.8 x bare nats-py responder"
TARGET_SIGN = "Sign over NATS ≥ 0.85 x 2-process crypto floor"
TARGET_BATCH = "Batch encrypt (100 x 1 KiB) ≥ 0.6 x 2-process crypto floor"
TARGET_JOB = "Durable job ≥ 0.5 x 2-process crypto floor"
TARGET_HTTP = "HTTP bridge single encrypt ≥ 0.5 x pqkms over NATS"
TARGET_LONE = "p50 of a lone encrypt request over NATS < 1 ms"


@dataclass
class Row:
    """One measured (or not implemented) configuration."""

    key: str
    layer: str
    operation: str
    processes: int | None
    in_flight: int | None
    figures: dict[str, Any] | None = None
    floor: str | None = None  # key of the row this one is compared with
    crypto_floor: str | None = None  # key of the crypto-floor row with as many processes
    cpu_us_per_op: dict[str, float] | None = None
    note: str | None = None

    @classmethod
    def measured(cls, key: str, layer: str, operation: str, processes: int | None,
                 in_flight: int | None, measurement: Measurement, **extra: Any) -> Row:
        return cls(key, layer, operation, processes, in_flight, measurement.summary(), **extra)


@dataclass
class Report:
    """Everything one run produced."""

    config: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    started_at: str = field(
        default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    notes: list[str] = field(default_factory=list)
    # Back-to-back rounds (bench/pairs.py): when present, a target's figure.
    pairs: list[Pair] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def row(self, key: str) -> Row | None:
        return next((row for row in self.rows if row.key == key), None)

    def _ops(self, key: str | None) -> float | None:
        row = self.row(key) if key else None
        if row is None or not row.figures or not row.figures["ops_per_s"]:
            return None
        return float(row.figures["ops_per_s"])

    def _key_starting(self, prefix: str) -> str | None:
        return next((row.key for row in self.rows if row.key.startswith(prefix)), None)

    def ratio(self, key: str | None, floor_key: str | None) -> float | None:
        mine, floor = self._ops(key), self._ops(floor_key)
        if mine is None or floor is None:
            return None
        return mine / floor

    # -- issue 7 ---------------------------------------------------------------------------

    def _top_workers(self) -> int:
        workers = [row.processes or 0 for row in self.rows if row.layer == "pqkms NATS"]
        return max(workers) if workers else 2

    def ratio_targets(self) -> list[tuple[str, float, str | None, str]]:
        """Issue 7's ratio targets: (name, goal, figure row key, floor row key)."""
        top = self._top_workers()
        flight = self.config.get("in_flight", 200)
        http_flight = self.config.get("http_in_flight", 200)
        return [
            (TARGET_ENCRYPT, 0.8, f"nats/encrypt/{top}w/{flight}",
             f"transport/encrypt/{top}p/{flight}"),
            (TARGET_SIGN, 0.85, f"nats/sign/{top}w/{flight}", f"crypto/sign/{top}p"),
            (TARGET_BATCH, 0.6, self._key_starting(f"batch/encrypt/{top}w/"),
             f"crypto/encrypt/{top}p"),
            (TARGET_JOB, 0.5, f"job/encrypt/{top}w", f"crypto/encrypt/{top}p"),
            (TARGET_HTTP, 0.5, f"http/encrypt/{top}w/{http_flight}",
             f"nats/encrypt/{top}w/{flight}"),
        ]

    def targets(self) -> list[dict[str, Any]]:
        """Issue 7's targets, each with the measured value (None when not measurable)."""
        top = self._top_workers()
        # A lone request is served by one worker whatever their number.
        lone = self.row(f"nats/encrypt/{top}w/1") or next(
            (row for row in self.rows if row.layer == "pqkms NATS"
             and row.operation == "encrypt" and row.in_flight == 1), None)
        lone_p50 = lone.figures["p50_ms"] if lone and lone.figures else None
        paired = {pair.target: pair.median for pair in self.pairs if pair.median is not None}
        results = []
        for name, goal, figure_key, floor_key in self.ratio_targets():
            table_ratio = self.ratio(figure_key, floor_key)
            value = paired.get(name, table_ratio)
            results.append({
                "target": name, "goal": goal,
                "measured": None if value is None else round(value, 3),
                "met": None if value is None else value >= goal,
                "from": "back-to-back median" if name in paired else "table",
                "table_ratio": None if table_ratio is None else round(table_ratio, 3),
            })
        results.append({
            "target": TARGET_LONE, "goal": 1.0,
            "measured": lone_p50, "met": None if lone_p50 is None else lone_p50 < 1.0,
            "from": "table", "table_ratio": None,
        })
        return results

    # -- output ----------------------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            entry = asdict(row)
            entry["ratio_to_floor"] = _round(self.ratio(row.key, row.floor))
            entry["ratio_to_crypto_floor"] = _round(self.ratio(row.key, row.crypto_floor))
            rows.append(entry)
        return {"started_at": self.started_at, "machine": self.machine, "config": self.config,
                "rows": rows, "back_to_back": [pair.as_json() for pair in self.pairs],
                "targets": self.targets(),
                "budgets": [budget.as_json() for budget in budgets(self)], "notes": self.notes}

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.started_at.replace(':', '-')}.json"
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        return path

    def table(self) -> str:
        header = ["layer", "op", "procs", "in flight", "ops/s", "p50 ms", "p99 ms",
                  "÷ floor", "÷ crypto", "server CPU µs/op", "floor"]
        lines = [header]
        for row in self.rows:
            if row.figures is None:
                lines.append([row.layer, row.operation, _text(row.processes),
                              _text(row.in_flight), row.note or "n/a", "", "", "", "", "", ""])
                continue
            figures = row.figures
            cpu = row.cpu_us_per_op or {}
            server_cpu = cpu.get("servers")
            lines.append([
                row.layer, row.operation, _text(row.processes), _text(row.in_flight),
                f"{figures['ops_per_s']:,.0f}", f"{figures['p50_ms']:.3f}",
                f"{figures['p99_ms']:.3f}",
                _ratio(self.ratio(row.key, row.floor)),
                _ratio(self.ratio(row.key, row.crypto_floor)),
                "" if server_cpu is None else f"{server_cpu:,.0f}",
                _floor_name(row.floor),
            ])
            if figures.get("errors"):
                lines.append(["", "", "", "", f"errors: {figures['errors']}",
                              str(figures.get("first_error"))[:60], "", "", "", "", ""])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        numeric = {2, 3, 4, 5, 6, 7, 8, 9}
        out = _host_lines(self.machine)
        for index, line in enumerate(lines):
            cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                     for i, cell in enumerate(line)]
            out.append("  ".join(cells).rstrip())
            if index == 0:
                out.append("  ".join("-" * width for width in widths))
        out.append("")
        out.extend(_job_phase_lines(self.rows))
        if self.pairs:
            out.append("back to back (each target's figure next to its floor, order swapped "
                       "every round; median):")
            for pair in self.pairs:
                # Rounds and median both from their 3-decimal values (as the JSON and the
                # targets below have them), so that the median shown is a round shown.
                ratios = "  ".join("n/a" if entry.ratio is None
                                   else f"{_round(entry.ratio):.2f}" for entry in pair.rounds)
                median = _round(pair.median)
                out.append(f"  {pair.figure} ÷ {pair.floor}: {ratios}  → median "
                           f"{'n/a' if median is None else f'{median:.2f}'}")
            out.append("")
        budget = budget_lines(self)
        if budget:
            out.extend([*budget, ""])
        out.append("issue 7 targets (2 workers, 200 in flight):")
        for target in self.targets():
            measured = target["measured"]
            status = {True: "met", False: "NOT met", None: "n/a (not measured)"}[
                target["met"]]
            if measured is None:
                absent = {"Durable": "job/encrypt", "Batch": "batch/encrypt"}
                for word, key in absent.items():
                    found = self.row(key)
                    if target["target"].startswith(word) and found is not None and found.note:
                        status = found.note
            shown = "" if measured is None else (
                f"{measured:.3f} ms" if "p50" in target["target"] else f"{measured:.2f}x")
            if target["from"] != "table" and target["table_ratio"] is not None:
                status += f" (back to back; table {target['table_ratio']:.2f}x)"
            out.append(f"  {target['target']:<62} {shown:>10}  {status}")
        return "\n".join(out)


def _host_lines(machine: dict[str, Any]) -> list[str]:
    """The host first: runs on this VM kind land on different CPU models, and figures of
    two runs compare only on the same one."""
    model = machine.get("cpu_model")
    if not model:
        return []
    cpus = machine.get("usable_cpus") or machine.get("nproc")
    return [f"host: {model}, {cpus} usable CPUs, Python {machine.get('python', '?')}", ""]


def _job_phase_lines(rows: list[Row]) -> list[str]:
    """Where each durable job's time and CPU went (bench.run._run_job's phases)."""
    out = []
    for row in rows:
        phases = (row.figures or {}).get("phases")
        if not phases:
            continue
        parts = []
        for name, phase in phases.items():
            cpu = phase["cpu_us_per_item"]
            used = ", ".join(f"{group} {micros:,.0f}" for group, micros in cpu.items())
            parts.append(f"{name.replace('_', ' ')} {phase['seconds']:.2f} s"
                         + (f" ({used} µs per item)" if used else ""))
        out.extend([f"{row.layer}: " + "; ".join(parts), ""])
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _floor_name(key: str | None) -> str:
    return key or ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("cryptography", "nats-py", "faststream", "orjson", "uvloop", "httpx",
                    "pydantic", "fastapi", "uvicorn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        from pqkms.nats_embedded import nats_server_binary

        versions["nats-server"] = subprocess.run(
            [str(nats_server_binary()), "--version"], capture_output=True, text=True,
            timeout=10, check=False,
        ).stdout.strip()
    except Exception:  # informational only
        versions["nats-server"] = None
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
    }
