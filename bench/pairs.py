"""Back-to-back rounds: a target's figure and its floor measured one right after the other.

The VM of these runs changes speed from one minute to the next (the same cell has read
±20 % a minute apart, docs/performance.md), while the table divides figures measured
minutes apart. Here each target's two cells run next to each other, ``rounds`` times,
the order swapped every round (floor first, then pqkms first) so that a steady drift
cancels out; the median of the rounds' ratios is the target's figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Cell", "Pair", "PairRound", "measure_pair"]

Cell = Callable[[], Awaitable[float]]
"""One measured cell; returns its operations (or items) per second."""


@dataclass(frozen=True)
class PairRound:
    """One round: the pqkms figure and its floor, measured back to back."""

    figure: float
    floor: float

    @property
    def ratio(self) -> float | None:
        return self.figure / self.floor if self.floor > 0 else None


@dataclass
class Pair:
    """A target's rounds."""

    target: str  # as named in Report.targets()
    figure: str  # what the numerator measures
    floor: str  # what the denominator measures
    rounds: list[PairRound] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        ratios = [ratio for ratio in (entry.ratio for entry in self.rounds) if ratio is not None]
        return statistics.median(ratios) if ratios else None

    def as_json(self) -> dict[str, object]:
        median = self.median
        return {
            "target": self.target, "figure": self.figure, "floor": self.floor,
            "rounds": [{"figure": round(entry.figure, 1), "floor": round(entry.floor, 1),
                        "ratio": None if entry.ratio is None else round(entry.ratio, 3)}
                       for entry in self.rounds],
            "median_ratio": None if median is None else round(median, 3),
        }


async def measure_pair(figure: Cell, floor: Cell, rounds: int) -> list[PairRound]:
    """``rounds`` rounds of both cells, floor first in even rounds, figure first in odd."""
    measured: list[PairRound] = []
    for index in range(rounds):
        if index % 2 == 0:
            below = await floor()
            mine = await figure()
        else:
            mine = await figure()
            below = await floor()
        measured.append(PairRound(mine, below))
    return measured
