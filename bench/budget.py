"""The machine's CPU per operation at each ratio target, next to what was used.

Every process of a run — workers, nats-server, the bridge, the load generator — shares
the same cores. A throughput target ``goal x floor`` therefore leaves at most
``cores / (goal x floor ops/s)`` of CPU per operation for all of them together: the
budget. A table cell's measured CPU per operation (``Row.cpu_us_per_op``, summed over
its groups) against that budget, and the cores it kept busy, say why a target is missed:
more CPU per operation than the budget allows, or cores left idle. Figures come from the
table's cells (the back-to-back rounds measure no CPU).

What the budget leaves the workers: the budget less what the cell's other processes
(nats-server, the bridge, the load generator) used per operation. Where the cell names
its crypto floor, the crypto's own cost (the floor's loops, per operation) is set against
that share, and the **ceiling** is the ratio the cell would reach with every core busy if
its workers cost only the crypto and everything else cost what it did in the cell:
``goal x budget / (crypto + the others)``. A ceiling well under the goal means no work on
the workers' own code can meet the target on this machine unless the others get cheaper.
The others' cost per operation is taken as measured, at the cell's rate (at a higher rate
they would share more system calls), so a ceiling just under its goal is a warning, not
a proof.
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
    # What the budget leaves the workers once the cell's other processes are paid for.
    workers_allowed_us: float | None = None
    crypto_us: float | None = None  # the operation's crypto alone, in the floor's loops
    ceiling: float | None = None  # the ratio with workers that cost only the crypto

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "goal": self.goal, "cores": self.cores,
            "budget_us_per_op": round(self.budget_us, 1),
            "used_us_per_op": _rounded(self.used_us, 1),
            "used_by": self.used_by,
            "busy_cores": _rounded(self.busy_cores, 2),
            "floor_used_us_per_op": _rounded(self.floor_used_us, 1),
            "workers_allowed_us_per_op": _rounded(self.workers_allowed_us, 1),
            "crypto_us_per_op": _rounded(self.crypto_us, 1),
            "ceiling": _rounded(self.ceiling, 3),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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


def _crypto_of(report: Report, figure: Row | None) -> float | None:
    """µs of CPU per operation of the figure's crypto alone, from its crypto-floor row."""
    crypto = report.row(figure.crypto_floor) if figure and figure.crypto_floor else None
    crypto_ops = _ops_per_s(crypto)
    return None if crypto is None or crypto_ops is None else _cpu_of(crypto, crypto_ops)


def _others_of(used_by: dict[str, float]) -> float | None:
    """µs per operation of every metered process but the workers (``servers``)."""
    if "servers" not in used_by:
        return None
    return sum(value for name, value in used_by.items() if name != "servers")


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
        used_by = dict(figure.cpu_us_per_op or {}) if figure is not None else {}
        budget_us = int(cores) * 1e6 / (goal * floor_ops)
        others = _others_of(used_by)
        crypto = _crypto_of(report, figure)
        found.append(Budget(
            target=name, goal=goal, cores=int(cores),
            budget_us=budget_us,
            used_us=used,
            used_by=used_by,
            busy_cores=None if used is None or figure_ops is None else used * figure_ops / 1e6,
            floor_used_us=_cpu_of(floor, floor_ops),
            workers_allowed_us=None if others is None else budget_us - others,
            crypto_us=crypto,
            ceiling=(None if others is None or crypto is None
                     else goal * budget_us / (crypto + others)),
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
        share = _share_line(budget)
        if share:
            lines.append(share)
    return lines


def _share_line(budget: Budget) -> str | None:
    """What the budget leaves the workers, and the ceiling, when the cell was metered."""
    if budget.workers_allowed_us is None:
        return None
    line = (f"    the others leave the workers ≤ {budget.workers_allowed_us:,.0f} "
            f"(they used {budget.used_by['servers']:,.0f})")
    if budget.crypto_us is not None and budget.ceiling is not None:
        left = budget.workers_allowed_us - budget.crypto_us
        line += (f"; the crypto alone takes {budget.crypto_us:,.0f} in its loops, "
                 f"{left:,.0f} left for the rest of their work; ceiling "
                 f"{budget.ceiling:.2f} with workers that only run the crypto "
                 f"({'above' if budget.ceiling >= budget.goal else 'under'} the goal)")
    return line
