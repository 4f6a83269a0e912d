"""One run directory in, tables + plots + report.html + analysis.json out; several runs
into a comparison report."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import metrics, report, timescales
from analysis.codeversion import code_digest
from analysis.join import Joined, join
from analysis.load import load_run
from analysis.rundir import RunDir, open_run
from lab import runlayout

SCENARIO_ORDER = ("baseline", "simple", "multihop", "fanout")  # comparison columns, then any other scenario


@dataclass
class RunAnalysis:
    run: RunDir
    joined: Joined
    per_task: pd.DataFrame
    hops: pd.DataFrame
    bursts: pd.DataFrame
    summary: dict[str, float]
    timescales: pd.DataFrame
    """Variance-time curves: per link and node, IDC and peak-to-mean at each timescale (analysis/timescales.py)."""
    burstiness: pd.DataFrame
    """Per link and node: Hurst estimate, peak-to-mean at 10 ms and 1 s, ON/OFF period medians and p90s."""

    label: str = ""
    """What tables and plots call the run: its scenario name, numbered in a comparison that holds it twice
    (`relabel`); the report's run legend maps each label to its run id."""

    def __post_init__(self) -> None:
        self.label = self.label or self.run.scenario


def relabel(results: list[RunAnalysis]) -> None:
    """Short labels that tell the runs apart: the scenario, with #1, #2, ... where it repeats."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.run.scenario] = counts.get(r.run.scenario, 0) + 1
    seen: dict[str, int] = {}
    for r in results:
        name = r.run.scenario
        seen[name] = seen.get(name, 0) + 1
        r.label = f"{name} #{seen[name]}" if counts[name] > 1 else name


def analyse(path: Path) -> RunAnalysis:
    """Load, join and measure one run (no files written)."""
    run = open_run(path)
    data = load_run(run)
    joined = join(data, run.scenario)
    per_task = metrics.task_metrics(joined.tasks, joined.calls, joined.used, joined.packets, joined.retrans)
    counted = per_task.loc[~per_task["warmup"], "trace_id"]
    bursts = metrics.bursts(joined.packets[joined.packets["trace_id"].isin(counted)], "trace_id")
    hops = metrics.hop_metrics(joined.packets, joined.conns, joined.rtt, joined.tasks)
    summary = metrics.scenario_summary(
        per_task, joined.conns, joined.packets, joined.rtt, joined.retrans, bursts["size"]
    )
    # every capture point's own packets: the joined table keeps one copy of a packet seen at two nodes
    curve, burstiness = timescales.summary(data.packets, joined.packets, joined.tasks)
    return RunAnalysis(run, joined, per_task, hops, bursts, summary, curve, burstiness)


def analyze_run(path: Path) -> RunAnalysis:
    """Analyse one run and write `tables/*.parquet`, `plots/*.png`, `report.html` and `analysis.json` into it."""
    result = analyse(path)
    tables = write_tables(result)
    report.write_run_report(result)
    summary = {
        "run_id": result.run.run_id,
        "scenario": result.run.scenario,
        "analysed_at_ns": time.time_ns(),
        "code": code_digest(),
        "summary": result.summary,
        "problems": [p.__dict__ for p in result.run.problems],
        "tables": tables,
        "report": runlayout.REPORT,
    }
    runlayout.analysis_path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return result


def write_tables(result: RunAnalysis) -> list[str]:
    runlayout.tables_dir(result.run.path).mkdir(exist_ok=True)
    j = result.joined
    tables = {
        "tasks": result.per_task,
        "calls": j.calls,
        "flows": j.flows,
        "connections": j.conns,
        "call_connections": j.used,
        "packets": j.packets,
        "rtt": j.rtt,
        "retrans": j.retrans,
        "hops": result.hops,
        "bursts": result.bursts,
        "timescales": result.timescales,
        "burstiness": result.burstiness,
    }
    for name, frame in tables.items():
        frame.to_parquet(runlayout.table_path(result.run.path, name), index=False)
    return [runlayout.table_relpath(name) for name in tables]


def compare(paths: list[Path], out: Path | None = None) -> Path:
    """Analyse every run and write one comparison report; returns its path."""
    return compare_results([analyze_run(path) for path in paths], out)


def compare_results(results: list[RunAnalysis], out: Path | None = None) -> Path:
    """One comparison report of runs already analysed (baseline, simple, multihop, then the rest), by
    default beside the first run; returns its path."""
    order = {name: i for i, name in enumerate(SCENARIO_ORDER)}
    first = results[0].run.path
    results = sorted(results, key=lambda r: order.get(r.run.workload, len(order)))
    relabel(results)
    if out is None:
        digest = hashlib.sha256("\n".join(r.run.run_id for r in results).encode()).hexdigest()[:8]
        out = first.resolve().parent / f"comparison-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    return report.write_comparison(results, out)
