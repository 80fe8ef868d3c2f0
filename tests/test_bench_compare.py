"""bench.compare: two checkouts side by side (figures are not asserted)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from bench.compare import CellFigures, compare, main, median_ratios, parse_env
from bench.stack import BenchStack
from pqkms.nats_embedded import EmbeddedNats

pytestmark = pytest.mark.long

ROOT = Path(__file__).resolve().parent.parent


def test_ratios_are_taken_round_by_round_then_the_median() -> None:
    base = [CellFigures(100.0, 10.0, 1.0), CellFigures(50.0, 20.0, 2.0),
            CellFigures(100.0, 10.0, 1.0)]
    new = [CellFigures(110.0, 9.0, 1.0), CellFigures(60.0, 20.0, 1.0),
           CellFigures(90.0, 12.0, 1.5)]
    # items/s 1.1, 1.2, 0.9; CPU 0.9, 1.0, 1.2; p50 1.0, 0.5, 1.5; no bridge: 0
    assert median_ratios(new, base) == CellFigures(1.1, 1.0, 1.0, 0.0)


def test_the_bridge_cpu_ratio_is_taken_the_same_way() -> None:
    base = [CellFigures(1.0, 1.0, 1.0, 100.0), CellFigures(1.0, 1.0, 1.0, 200.0),
            CellFigures(1.0, 1.0, 1.0, 100.0)]
    new = [CellFigures(1.0, 1.0, 1.0, 80.0), CellFigures(1.0, 1.0, 1.0, 200.0),
           CellFigures(1.0, 1.0, 1.0, 90.0)]
    assert median_ratios(new, base).bridge_cpu_us_per_item == pytest.approx(0.9)


@pytest.mark.integration
async def test_a_checkout_against_itself_measures_both_stacks_every_round() -> None:
    new, base = await compare(ROOT, "encrypt", batch=0, in_flight=4, workers=1, rounds=2,
                              seconds=0.3)
    assert len(new) == len(base) == 2
    assert all(figures.items_per_s > 0 and figures.worker_cpu_us_per_item > 0
               and figures.p50_ms > 0 for figures in new + base)


@pytest.mark.integration
async def test_batches_of_any_operation_are_compared() -> None:
    new, base = await compare(ROOT, "verify", batch=10, in_flight=2, workers=1, rounds=1,
                              seconds=0.3)
    assert new[0].items_per_s > 0 and base[0].items_per_s > 0


@pytest.mark.integration
async def test_http_requests_go_through_each_stack_s_bridge() -> None:
    new, base = await compare(ROOT, "encrypt", batch=0, in_flight=4, workers=1, rounds=1,
                              seconds=0.3, http=True)
    assert all(figures.items_per_s > 0 and figures.bridge_cpu_us_per_item > 0
               for figures in new + base)


@pytest.mark.integration
async def test_a_durable_job_is_run_whole_on_each_stack_every_round() -> None:
    new, base = await compare(ROOT, "encrypt", batch=0, in_flight=1, workers=1, rounds=1,
                              seconds=0.3, job_items=30)
    assert all(figures.items_per_s > 0 and figures.worker_cpu_us_per_item > 0
               and figures.p50_ms > 0 for figures in new + base)


@pytest.mark.parametrize("cells", [["--http", "--batch", "10"], ["--job", "100", "--batch", "10"],
                                   ["--http", "--job", "100"]])
def test_only_one_kind_of_cell_is_compared(
    cells: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--base", str(ROOT), *cells])
    assert exit_info.value.code == 2
    assert "different cells: give one" in capsys.readouterr().err


def test_settings_are_read_as_name_equals_value() -> None:
    assert parse_env(["PQKMS_AUDIT=false", "PQKMS_LOG_LEVEL=", "A=b=c"]) == {
        "PQKMS_AUDIT": "false", "PQKMS_LOG_LEVEL": "", "A": "b=c"}


@pytest.mark.parametrize("malformed", ["PQKMS_AUDIT", "=false"])
def test_a_malformed_setting_is_refused_before_anything_starts(
    malformed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--base", str(ROOT), "--env", malformed])
    assert exit_info.value.code == 2
    assert "expected NAME=value" in capsys.readouterr().err


def test_a_stack_s_settings_override_the_benchmark_defaults(tmp_path: Path) -> None:
    stack = BenchStack(tmp_path, extra_env={"PQKMS_LOG_LEVEL": "WARNING",
                                            "PQKMS_AUDIT_LINGER_MS": "0"})
    stack.nats = cast(EmbeddedNats, SimpleNamespace(url="nats://127.0.0.1:1"))
    env = stack._env()
    assert env["PQKMS_LOG_LEVEL"] == "WARNING"
    assert env["PQKMS_AUDIT_LINGER_MS"] == "0"
    assert env["PQKMS_AUDIT"] == "true"


@pytest.mark.integration
async def test_each_side_runs_with_its_own_settings() -> None:
    # The same code, the audit trail off on one side only: both sides answer.
    new, base = await compare(ROOT, "encrypt", batch=0, in_flight=4, workers=1, rounds=1,
                              seconds=0.3, env={"PQKMS_AUDIT": "false"}, base_env={})
    assert new[0].items_per_s > 0 and base[0].items_per_s > 0
