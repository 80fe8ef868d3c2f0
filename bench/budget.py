"""The machine's CPU per operation at each ratio target, next to what was used.

Every process of a run — workers, nats-server, the bridge, the load generator — shares
the same cores. A throughput target ``goal x floor`` therefore leaves at most
``cores / (goal x floor ops/s)`` of CPU per operation for all of them together: the
budget. A table cell's measured CPU per operation (``Row.cpu_us_per_op``, summed over
its groups) against that budget, and the cores it kept busy, say why a target is missed:
more CPU per operation than the budget allows, or cores left idle. Figures come from the
table's cells (the back-to-back rounds measure no CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.report import Report, Row

__all__ = ["Budget", "budgets", "budget_lines"]


@dataclass(frozen=True)
class Budget:
    """One ratio target's CPU budget per operation and the measured use (µs)."""

    target: str
    goal: float
    cores: int
    budget_us: float
    used_us: float | None  # the pqkms cell, every measured process together
    used_by: dict[str, float]
    busy_cores: float | None
    floor_used_us: float | None  # the floor cell, the same way (crypto floor: its loops)

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "goal": self.goal, "cores": self.cores,
            "budget_us_per_op": round(self.budget_us, 1),
            "used_us_per_op": None if self.used_us is None else round(self.used_us, 1),
            "used_by": self.used_by,
            "busy_cores": None if self.busy_cores is None else round(self.busy_cores, 2),
            "floor_used_us_per_op": (None if self.floor_used_us is None
                                     else round(self.floor_used_us, 1)),
        }


def _ops_per_s(row: Row | None) -> float | None:
    if row is None or not row.figures or not row.figures.get("ops_per_s"):
        return None
    return float(row.figures["ops_per_s"])


def _cpu_of(row: Row, ops_per_s: float) -> float | None:
    """µs of CPU per operation over every measured process of the cell; a crypto floor
    (no meter) is its processes, each busy the whole time."""
    if row.cpu_us_per_op:
        return sum(row.cpu_us_per_op.values())
    if row.layer == "crypto floor" and row.processes:
        return row.processes * 1e6 / ops_per_s
    return None


def budgets(report: Report) -> list[Budget]:
    """A budget per ratio target whose floor cell was measured."""
    cores = report.machine.get("usable_cpus") or report.machine.get("nproc")
    if not cores:
        return []
    found = []
    for name, goal, figure_key, floor_key in report.ratio_targets():
        floor = report.row(floor_key)
        floor_ops = _ops_per_s(floor)
        if floor is None or floor_ops is None:
            continue
        figure = report.row(figure_key) if figure_key else None
        figure_ops = _ops_per_s(figure)
        used = None if figure is None or figure_ops is None else _cpu_of(figure, figure_ops)
        found.append(Budget(
            target=name, goal=goal, cores=int(cores),
            budget_us=int(cores) * 1e6 / (goal * floor_ops),
            used_us=used,
            used_by=dict(figure.cpu_us_per_op or {}) if figure is not None else {},
            busy_cores=None if used is None or figure_ops is None else used * figure_ops / 1e6,
            floor_used_us=_cpu_of(floor, floor_ops),
        ))
    return found


def budget_lines(report: Report) -> list[str]:
    """The printed section: one line per target."""
    found = budgets(report)
    if not found:
        return []
    lines = [f"CPU per operation at each target ({found[0].cores} cores shared by every "
             "process; table cells):"]
    for budget in found:
        line = f"  {budget.target}: at the goal ≤ {budget.budget_us:,.0f} µs"
        if budget.used_us is not None and budget.busy_cores is not None:
            parts = ", ".join(f"{name} {value:,.0f}" for name, value in budget.used_by.items())
            line += (f"; used {budget.used_us:,.0f} ({parts}), "
                     f"{budget.busy_cores:.2f} cores busy")
        if budget.floor_used_us is not None:
            line += f"; the floor used {budget.floor_used_us:,.0f}"
        lines.append(line)
    return lines
