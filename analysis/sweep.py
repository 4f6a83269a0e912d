"""A sweep's runs into evidence: `write_sweep_report` (what `lab sweep` calls at the end) analyses
every cell's repetitions and writes one report with intervals, effects and pooled distributions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import report, stats
from analysis.cells import Cell, CellResult, effects, measure
from analysis.pipeline import analyze_run

__all__ = ["Cell", "write_sweep_report"]


def summary(cells: list[CellResult], found: pd.DataFrame) -> dict[str, Any]:
    """The numbers of the report, machine-readable (sweep-summary.json)."""
    return {
        "level": stats.LEVEL,
        "resamples": stats.RESAMPLES,
        "cells": [
            {
                "label": c.cell.label,
                "params": c.cell.params,
                "workload": c.workload,
                "runs": [r.run.run_id for r in c.results],
                "unit": c.unit,
                "metrics": {k: v.as_dict() for k, v in c.intervals.items()},
            }
            for c in cells
        ],
        "effects": [
            {**row, "difference": row["difference"].as_dict(), "ratio": row["ratio"].as_dict()}
            for row in found.to_dict("records")
        ],
    }


def write_sweep_report(cells: list[Cell], out: Path) -> Path:
    """Analyse every cell's runs and write `out/report.html` and `out/sweep-summary.json`; returns the report."""
    measured = [measure(cell, [analyze_run(path) for path in cell.runs]) for cell in cells]
    found = effects(measured)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep-summary.json").write_text(json.dumps(summary(measured, found), indent=2, default=str) + "\n")
    return report.write_sweep(measured, found, out)
