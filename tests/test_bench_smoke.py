"""The benchmark runs end to end in its tiniest configuration (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import parse_args
from bench.fixture import OPERATIONS
from bench.run import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.long]


def test_tiniest_benchmark_measures_every_layer_and_writes_json(tmp_path: Path) -> None:
    config = parse_args(["--ops", "50", "--duration", "5", "--warmup", "0",
                         "--in-flight", "10", "--http-in-flight", "4", "--processes", "1",
                         "--out", str(tmp_path)])
    config.progress = None

    report = run_bench(config)

    measured = {row.key: row for row in report.rows if row.figures is not None}
    for operation in OPERATIONS:
        for key in (f"crypto/{operation}/1p", f"transport/{operation}/1p/10",
                    f"nats/{operation}/1w/1", f"nats/{operation}/1w/10",
                    f"http/{operation}/1w/1", f"http/{operation}/1w/4"):
            assert key in measured, key
            figures = measured[key].figures
            assert figures is not None
            # Every request got a success envelope back (decrypt opened, verify was valid).
            assert figures["errors"] == 0, (key, figures["first_error"])
            assert 0 < figures["ops"] <= 50
        # Batches of 100 items: every item of every batch succeeded; ops count items.
        batch = measured[f"batch/{operation}/1w/4"].figures
        assert batch is not None
        assert batch["errors"] == 0, (operation, batch["first_error"])
        assert batch["ops"] > 0 and batch["ops"] % 100 == 0
        # The durable job ran to completion, every item succeeded (max_ops caps its size).
        job = measured[f"job/{operation}/1w"].figures
        assert job is not None
        assert job["errors"] == 0 and job["ops"] == 50, operation
        # Its three phases add up to the whole job, each with the CPU it used.
        phases = job["phases"]
        assert list(phases) == ["submit", "run_after_submit", "read_back"]
        assert sum(phase["seconds"] for phase in phases.values()) == pytest.approx(
            job["seconds"], abs=1e-3)
        assert all({"servers", "nats", "generator"} <= set(phase["cpu_us_per_item"])
                   for phase in phases.values())

    written = list(tmp_path.glob("*.json"))
    assert len(written) == 1
    saved = json.loads(written[0].read_text())
    assert {row["key"] for row in saved["rows"]} == {row.key for row in report.rows}
    assert len(saved["targets"]) == 6
    # Every ratio target was also measured back to back with its floor.
    assert {pair["target"] for pair in saved["back_to_back"]} == {
        target["target"] for target in saved["targets"] if "p50" not in target["target"]}
    assert all(len(pair["rounds"]) == 3 for pair in saved["back_to_back"])
    # Every ratio target has its CPU budget, and every cell it divides was metered.
    assert len(saved["budgets"]) == 5
    assert all(budget["used_us_per_op"] for budget in saved["budgets"])
    # Every target but HTTP's (whose cell names no crypto floor) has its ceiling.
    assert sum(budget["ceiling"] is not None for budget in saved["budgets"]) == 4
    assert "pqkms NATS" in report.table()
