"""Back-to-back rounds and the targets they feed (bench/pairs.py, bench/report.py)."""

from __future__ import annotations

import asyncio

from bench.pairs import Pair, PairRound, measure_pair
from bench.report import TARGET_BATCH, TARGET_SIGN, Report, Row


def test_rounds_swap_the_order_of_the_two_cells() -> None:
    order: list[str] = []

    async def figure() -> float:
        order.append("figure")
        return 50.0

    async def floor() -> float:
        order.append("floor")
        return 100.0

    rounds = asyncio.run(measure_pair(figure, floor, 3))

    assert order == ["floor", "figure", "figure", "floor", "floor", "figure"]
    assert [entry.ratio for entry in rounds] == [0.5, 0.5, 0.5]


def test_the_median_round_is_the_figure_and_a_zero_floor_is_left_out() -> None:
    pair = Pair("t", "a", "b", [PairRound(30, 100), PairRound(90, 100), PairRound(50, 100),
                                PairRound(10, 0)])

    assert pair.median == 0.5
    assert pair.as_json()["rounds"][3]["ratio"] is None
    assert Pair("t", "a", "b", [PairRound(1, 0)]).median is None


def _figures(ops_per_s: float) -> dict[str, float]:
    return {"ops_per_s": ops_per_s, "p50_ms": 1.0, "p99_ms": 2.0}


def _row(key: str, ops_per_s: float) -> Row:
    return Row(key, "layer", "encrypt", 2, 200, figures=_figures(ops_per_s))


def test_a_target_with_rounds_takes_their_median_and_keeps_the_table_ratio() -> None:
    report = Report(config={"in_flight": 200}, machine={})
    report.add(Row("nats/sign/2w/200", "pqkms NATS", "sign", 2, 200,
                   figures=_figures(600.0)))
    report.add(_row("crypto/sign/2p", 1000.0))
    report.add(_row("batch/encrypt/2w/4", 300.0))
    report.add(_row("crypto/encrypt/2p", 1000.0))
    report.pairs.append(Pair(TARGET_SIGN, "pqkms sign", "crypto sign",
                             [PairRound(900, 1000), PairRound(850, 1000), PairRound(880, 1000)]))

    targets = {target["target"]: target for target in report.targets()}

    assert targets[TARGET_SIGN]["measured"] == 0.88
    assert targets[TARGET_SIGN]["met"] is True
    assert targets[TARGET_SIGN]["from"] == "back-to-back median"
    assert targets[TARGET_SIGN]["table_ratio"] == 0.6
    assert targets[TARGET_BATCH]["measured"] == 0.3
    assert targets[TARGET_BATCH]["from"] == "table"
    assert "back to back" in report.table()


def test_the_printed_median_is_one_of_the_printed_rounds() -> None:
    # 0.3848 alone would print as 0.38, its 3-decimal 0.385 (the median's) as 0.39.
    report = Report(config={"in_flight": 200}, machine={})
    report.pairs.append(Pair(TARGET_BATCH, "pqkms batch items", "crypto encrypt",
                             [PairRound(3910, 10000), PairRound(3740, 10000),
                              PairRound(3848, 10000)]))

    (line,) = [line for line in report.table().splitlines() if "pqkms batch items" in line]

    assert line.endswith("0.39  0.37  0.39  → median 0.39")
