"""Run directories into tables, plots and reports: `analyze_run(path)`, `compare(paths)`."""

from analysis.pipeline import (
    RunAnalysis,
    analyse,
    analyze_run,
    compare,
    compare_results,
)

__all__ = ["RunAnalysis", "analyse", "analyze_run", "compare", "compare_results"]
