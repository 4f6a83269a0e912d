"""Runs grouped into cells, one setting each (a sweep's grid point, or one run of a comparison):
every headline metric of a cell as a mean with its bootstrap interval across the cell's
repetitions (across the tasks of a single run), and the effect of each agentic cell against
the baseline cell of the same setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import stats

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis

BASELINE = "baseline"
# the metrics whose agentic-vs-baseline effect is reported
EFFECTS = (
    "flows_per_task",
    "new_flows_per_task",
    "peers_per_task",
    "packets_per_task",
    "bytes_per_task",
    "task_s_mean",
    "rtt_us_p99",
    "retrans_rate",
    "lifetime_ms_p50",
)


@dataclass(frozen=True)
class Cell:
    """One setting of a sweep's grid: `params` by dotted scenario key, `runs` its repetitions' run directories."""

    label: str
    params: dict[str, object]
    runs: list[Path]


@dataclass
class CellResult:
    cell: Cell
    results: list[RunAnalysis]
    intervals: dict[str, stats.Interval] = field(default_factory=dict)
    unit: str = "repetitions"

    @property
    def workload(self) -> str:
        return str(self.cell.params.get("workload") or self.results[0].run.workload)

    def setting(self) -> tuple[tuple[str, str], ...]:
        """The cell's grid values other than the workload: cells with the same setting are compared."""
        return tuple(sorted((k, repr(v)) for k, v in self.cell.params.items() if k != "workload"))

    def values(self, key: str) -> tuple[np.ndarray, str]:
        """The units behind `key`'s interval: one value per repetition, or, for a single run, per task
        (per repetition within it, when it has several) where `key` is a per-task mean."""
        if len(self.results) >= stats.MIN_UNITS or key not in stats.TASK_MEANS:
            return np.array([r.summary.get(key, np.nan) for r in self.results], dtype=np.float64), "repetitions"
        table, unit = stats.units(self.results[0].per_task)
        column, scale = stats.TASK_MEANS[key]
        values = table[column] if column in table else pd.Series(0.0, index=table.index)  # no such call: none
        return values.to_numpy(np.float64) * scale, unit


def measure(cell: Cell, results: list[RunAnalysis]) -> CellResult:
    """The interval of each headline metric across the cell's repetitions (its tasks, for one run)."""
    if not results:
        raise ValueError(f"cell {cell.label} has no completed run")
    result = CellResult(cell, results)
    result.unit = result.values("flows_per_task")[1]
    result.intervals = {key: stats.interval(result.values(key)[0]) for key in results[0].summary}
    return result


def baselines(cells: list[CellResult]) -> dict[str, CellResult]:
    """Each agentic cell's label -> the baseline cell of the same setting (cells without one are left out)."""
    by_setting = {c.setting(): c for c in cells if c.workload == BASELINE}
    return {
        c.cell.label: by_setting[c.setting()] for c in cells if c.workload != BASELINE and c.setting() in by_setting
    }


def effects(cells: list[CellResult]) -> pd.DataFrame:
    """Each agentic cell against the baseline cell of the same setting: per metric, the difference and
    ratio of means with their intervals, and whether the two cells' own intervals overlap."""
    controls = baselines(cells)
    rows = []
    for cell in cells:
        control = controls.get(cell.cell.label)
        if control is None:
            continue
        for key in EFFECTS:
            (treated, unit), (base, _) = cell.values(key), control.values(key)
            rows.append(
                {
                    "agentic cell": cell.cell.label,
                    "baseline cell": control.cell.label,
                    "metric": key,
                    "unit": unit,
                    "difference": stats.difference(treated, base),
                    "ratio": stats.ratio(treated, base),
                    "overlap": cell.intervals[key].overlaps(control.intervals[key]),
                }
            )
    return pd.DataFrame(rows)
