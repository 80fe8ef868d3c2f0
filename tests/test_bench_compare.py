"""bench.compare: two checkouts side by side (figures are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import CellFigures, compare, median_ratios

ROOT = Path(__file__).resolve().parent.parent


def test_ratios_are_taken_round_by_round_then_the_median() -> None:
    base = [CellFigures(100.0, 10.0, 1.0), CellFigures(50.0, 20.0, 2.0),
            CellFigures(100.0, 10.0, 1.0)]
    new = [CellFigures(110.0, 9.0, 1.0), CellFigures(60.0, 20.0, 1.0),
           CellFigures(90.0, 12.0, 1.5)]
    # items/s 1.1, 1.2, 0.9; CPU 0.9, 1.0, 1.2; p50 1.0, 0.5, 1.5
    assert median_ratios(new, base) == CellFigures(1.1, 1.0, 1.0)


@pytest.mark.integration
async def test_a_checkout_against_itself_measures_both_stacks_every_round() -> None:
    new, base = await compare(ROOT, "encrypt", batch=0, in_flight=4, workers=1, rounds=2,
                              seconds=0.3)
    assert len(new) == len(base) == 2
    assert all(figures.items_per_s > 0 and figures.worker_cpu_us_per_item > 0
               and figures.p50_ms > 0 for figures in new + base)
