"""The CPU budget per operation at each target (bench/budget.py) and the window the CPU
meter covers (bench/measure.py)."""

from __future__ import annotations

import asyncio

import pytest

from bench.budget import budgets
from bench.measure import closed_loop
from bench.report import TARGET_BATCH, TARGET_ENCRYPT, TARGET_JOB, Report, Row


def _row(key: str, layer: str, ops_per_s: float, processes: int = 2,
         cpu: dict[str, float] | None = None, crypto_floor: str | None = None) -> Row:
    return Row(key, layer, "encrypt", processes, 200,
               figures={"ops_per_s": ops_per_s, "p50_ms": 1.0, "p99_ms": 2.0},
               cpu_us_per_op=cpu, crypto_floor=crypto_floor)


def _report() -> Report:
    report = Report(config={"in_flight": 200}, machine={"usable_cpus": 2, "nproc": 4})
    report.add(_row("crypto/encrypt/2p", "crypto floor", 50_000.0))
    report.add(_row("transport/encrypt/2p/200", "bare nats-py", 16_000.0,
                    cpu={"servers": 60.0, "nats": 15.0, "generator": 35.0}))
    report.add(_row("nats/encrypt/2w/200", "pqkms NATS", 8_000.0,
                    cpu={"servers": 180.0, "nats": 20.0, "generator": 50.0},
                    crypto_floor="crypto/encrypt/2p"))
    report.add(_row("batch/encrypt/2w/4", "pqkms batch (100 items)", 20_000.0,
                    cpu={"servers": 70.0, "nats": 10.0, "generator": 10.0},
                    crypto_floor="crypto/encrypt/2p"))
    return report


def test_the_budget_is_the_usable_cores_over_the_goal_times_the_floor() -> None:
    found = {budget.target: budget for budget in budgets(_report())}

    batch = found[TARGET_BATCH]
    # 2 cores / (0.6 x 50 000 items/s) = 66.7 µs per item for every process together.
    assert batch.budget_us == pytest.approx(2e6 / 30_000)
    assert batch.used_us == pytest.approx(90.0)
    assert batch.busy_cores == pytest.approx(1.8)
    # A crypto floor has no meter: its 2 processes are busy the whole time.
    assert batch.floor_used_us == pytest.approx(40.0)

    encrypt = found[TARGET_ENCRYPT]
    assert encrypt.budget_us == pytest.approx(2e6 / (0.8 * 16_000))
    assert encrypt.used_us == pytest.approx(250.0)
    assert encrypt.floor_used_us == pytest.approx(110.0)


def test_the_workers_share_is_what_the_others_leave_and_the_ceiling_pays_only_the_crypto(
) -> None:
    found = {budget.target: budget for budget in budgets(_report())}

    batch = found[TARGET_BATCH]
    # 66.7 µs per item at the goal, 20 of them used by nats-server and the generator.
    assert batch.workers_allowed_us == pytest.approx(2e6 / 30_000 - 20.0)
    # The crypto floor's 2 processes: 2 cores / 50 000 items/s = 40 µs per item.
    assert batch.crypto_us == pytest.approx(40.0)
    # Workers costing only those 40 µs: 60 µs per item, 33 333 items/s on 2 cores.
    assert batch.ceiling == pytest.approx((2e6 / 60.0) / 50_000)

    encrypt = found[TARGET_ENCRYPT]
    assert encrypt.workers_allowed_us == pytest.approx(2e6 / (0.8 * 16_000) - 70.0)
    assert encrypt.ceiling == pytest.approx((2e6 / 110.0) / 16_000)


def test_the_ceiling_says_when_no_worker_could_meet_the_goal() -> None:
    report = _report()
    report.add(_row("job/encrypt/2w", "durable job", 12_000.0,
                    cpu={"servers": 90.0, "nats": 30.0, "generator": 20.0},
                    crypto_floor="crypto/encrypt/2p"))

    job = {budget.target: budget for budget in budgets(report)}[TARGET_JOB]

    # 80 µs per item at the goal: the others' 50 and the crypto's 40 are already more.
    assert job.workers_allowed_us == pytest.approx(30.0)
    assert job.ceiling == pytest.approx(0.5 * 80.0 / 90.0)
    assert ("the others leave the workers ≤ 30 (they used 90); the crypto alone takes 40 "
            "in its loops, -10 left for the rest of their work; ceiling 0.44 with workers "
            "that only run the crypto (under the goal)") in report.table()
    saved = {entry["target"]: entry for entry in report.as_json()["budgets"]}
    assert saved[TARGET_JOB]["ceiling"] == 0.444
    assert saved[TARGET_JOB]["crypto_us_per_op"] == 40.0


def test_without_a_crypto_floor_the_share_has_no_ceiling() -> None:
    report = _report()
    cell = report.row("nats/encrypt/2w/200")
    assert cell is not None
    cell.crypto_floor = None

    encrypt = {budget.target: budget for budget in budgets(report)}[TARGET_ENCRYPT]

    assert encrypt.workers_allowed_us is not None
    assert encrypt.crypto_us is None
    assert encrypt.ceiling is None


def test_a_target_whose_cell_was_not_measured_has_a_budget_and_no_use() -> None:
    found = {budget.target: budget for budget in budgets(_report())}

    assert found[TARGET_JOB].used_us is None
    assert found[TARGET_JOB].busy_cores is None
    assert found[TARGET_JOB].budget_us == pytest.approx(2e6 / 25_000)
    assert found[TARGET_JOB].workers_allowed_us is None
    assert found[TARGET_JOB].ceiling is None


def test_the_budget_is_printed_and_saved() -> None:
    report = _report()

    assert "at the goal ≤ 67 µs; used 90 (servers 70, nats 10, generator 10), 1.80 cores" \
        in report.table()
    saved = {entry["target"]: entry for entry in report.as_json()["budgets"]}
    assert saved[TARGET_BATCH]["budget_us_per_op"] == 66.7
    assert saved[TARGET_BATCH]["used_by"] == {"servers": 70.0, "nats": 10.0,
                                              "generator": 10.0}


def test_without_the_cores_there_is_no_budget() -> None:
    report = _report()
    report.machine = {}

    assert budgets(report) == []
    assert "CPU per operation" not in report.table()


def test_the_window_opens_after_the_warm_up_and_before_the_first_recorded_call() -> None:
    calls = 0
    at_window_start: list[int] = []

    async def call() -> str | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return None

    measurement = asyncio.run(closed_loop(call, 4, 0.05, 40, 0.0,
                                          lambda: at_window_start.append(calls)))

    # One warm-up round (4 calls), then the 40 recorded ones.
    assert at_window_start == [4]
    assert measurement.ops == 40
    assert calls == 44
