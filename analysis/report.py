"""Self-contained HTML reports (plots embedded as base64 PNG): one per run, and one
comparing runs side by side. Facts first, so a reader knows what was measured."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from analysis import plots
from analysis.rundir import facts

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis

# summary key -> (label, format)
HEADLINE: dict[str, tuple[str, str]] = {
    "tasks": ("tasks measured (warm-up excluded)", "{:.0f}"),
    "ok_share": ("tasks answered ok", "{:.0%}"),
    "task_s_p50": ("task duration p50 (s)", "{:.3f}"),
    "task_s_p90": ("task duration p90 (s)", "{:.3f}"),
    "flows_per_task": ("TCP connections used per task", "{:.2f}"),
    "new_flows_per_task": ("TCP connections opened per task", "{:.2f}"),
    "peers_per_task": ("distinct server endpoints per task (fan-out)", "{:.2f}"),
    "llm_calls_per_task": ("LLM calls per task", "{:.2f}"),
    "packets_per_task": ("packets per task", "{:.0f}"),
    "bytes_per_task": ("bytes on the wire per task", "{:,.0f}"),
    "rtt_us_p50": ("RTT p50 (µs)", "{:.0f}"),
    "rtt_us_p90": ("RTT p90 (µs)", "{:.0f}"),
    "rtt_us_p99": ("RTT p99 (µs)", "{:.0f}"),
    "rtt_us_p99.9": ("RTT p99.9 (µs)", "{:.0f}"),
    "rtt_us_max": ("RTT max, any segment (µs)", "{:.0f}"),
    "retrans_rate": ("retransmission rate (per data segment)", "{:.4f}"),
    "lifetime_ms_p50": ("connection lifetime p50 (ms)", "{:.1f}"),
    "lifetime_ms_p90": ("connection lifetime p90 (ms)", "{:.1f}"),
    "iat_cv_mean": ("packet inter-arrival CV per task (mean)", "{:.2f}"),
    "burst_size_mean": ("burst size, packets < 1 ms apart (mean)", "{:.2f}"),
    "burst_size_p90": ("burst size p90", "{:.0f}"),
    "share_llm": ("time share: LLM", "{:.1%}"),
    "share_tools": ("time share: tools, services, DB", "{:.1%}"),
    "share_handoff": ("time share: agent hand-off", "{:.1%}"),
    "share_network": ("time share: network", "{:.1%}"),
    "share_other": ("time share: other", "{:.1%}"),
    "matched_lab_flows": ("lab connections joined to a call", "{:.1%}"),
    "matched_packets": ("packets joined to a connection", "{:.1%}"),
}

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2}.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em}
.ok{color:#176c2c}figure{margin:1.5em 0}figcaption{font-size:.9em;color:#444;max-width:800px}
img{max-width:100%}"""


def _fmt(value: float, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns])
    rows = "".join(
        "<tr>" + f"<td>{html.escape(str(i))}</td>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for i, row in zip(frame.index, frame.itertuples(index=False), strict=True)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def headline(results: list[RunAnalysis]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            r.label: {
                label: _fmt(r.summary.get(key, float("nan")), pattern) for key, (label, pattern) in HEADLINE.items()
            }
            for r in results
        }
    )
    frame.index.name = "metric"
    return frame


def facts_table(results: list[RunAnalysis]) -> pd.DataFrame:
    frame = pd.DataFrame({r.label: facts(r.run) for r in results})
    frame.index.name = "fact"
    return frame


def mixed_setups(results: list[RunAnalysis]) -> str:
    """A warning when runs were measured on different providers or accelerators."""
    setups = {(facts(r.run)["provider"], facts(r.run)["accelerator"]) for r in results}
    if len(setups) < 2:
        return ""
    listed = "; ".join(f"{p}/{a}" for p, a in sorted(setups))
    return (
        f'<p class="warn"><b>Runs from different set-ups are compared here</b> ({html.escape(listed)}): '
        "differences in RTT, timing and bursts may come from the set-up, not the workload.</p>"
    )


def problems(result: RunAnalysis) -> str:
    if not result.run.problems:
        files = len(result.run.manifest.get("files") or {})
        return f'<p class="ok">Nothing missing: {files} file(s) listed in the manifest, all present and intact.</p>'
    items = "".join(f"<li><code>{html.escape(p.where)}</code>: {html.escape(p.what)}</li>" for p in result.run.problems)
    return (
        f'<div class="warn"><b>{html.escape(result.label)}: analysed as far as the data allows.</b>'
        f"<ul>{items}</ul></div>"
    )


def join_quality(result: RunAnalysis) -> pd.DataFrame:
    conns = result.joined.conns
    frame = conns.groupby("label").agg(connections=("conn_id", "size"), packets=("packets", "sum"))
    frame.index.name = "connections"
    return frame


def hops(result: RunAnalysis) -> pd.DataFrame:
    frame = result.hops.set_index("hop").round(1)
    frame.index.name = "hop kind"
    return frame


def tasks(result: RunAnalysis) -> pd.DataFrame:
    columns = [
        "task_id",
        "ok",
        "duration_ns",
        "flows",
        "new_flows",
        "peers",
        "packets",
        "bytes",
        "retransmits",
        "iat_cv",
        "llm_ns",
        "tools_ns",
        "handoff_ns",
        "network_ns",
        "other_ns",
    ]
    frame = result.per_task.reindex(columns=columns).copy()
    for column in [c for c in columns if c.endswith("_ns")]:
        frame[column.replace("_ns", "_s")] = (frame.pop(column) / 1e9).round(3)
    return frame.round(2).set_index("task_id")


def _figure(stem: str, fig: plt.Figure, caption: str, directory: Path) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    directory.mkdir(exist_ok=True)
    (directory / f"{stem}.png").write_bytes(buffer.getvalue())
    data = base64.b64encode(buffer.getvalue()).decode()
    return (
        f'<figure><img alt="{html.escape(stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _page(title: str, body: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n"
    )


JOIN_NOTE = (
    "<p>Connections from the probes joined to the calls in the telemetry (4-tuple and time); "
    "unmatched ones are kept and labelled.</p>"
)


def write_run_report(result: RunAnalysis) -> Path:
    directory = result.run.path / "plots"
    figures = [_figure(stem, fig, caption, directory) for stem, fig, caption in plots.run_plots(result)]
    body = [
        "<h2>What was measured</h2>",
        _table(facts_table([result])),
        "<h2>What was missing</h2>",
        problems(result),
        "<h2>Headline metrics</h2>",
        _table(headline([result])),
        "<h2>Join quality</h2>",
        JOIN_NOTE,
        _table(join_quality(result)),
        "<h2>Per hop kind</h2>",
        _table(hops(result)),
        "<h2>Plots</h2>",
        *figures,
        "<h2>Per task</h2>",
        _table(tasks(result)),
        "<p>Tables: <code>tables/*.parquet</code>; summary: <code>analysis.json</code>.</p>",
    ]
    path = result.run.path / "report.html"
    path.write_text(_page(f"Run {result.run.run_id}: {result.run.scenario}", body))
    return path


def write_comparison(results: list[RunAnalysis], out: Path) -> Path:
    figures = [_figure(stem, fig, caption, out / "plots") for stem, fig, caption in plots.comparison_plots(results)]
    body = [
        mixed_setups(results),
        "<h2>What was measured</h2>",
        _table(facts_table(results)),
        "<h2>What was missing</h2>",
        *[problems(r) for r in results],
        "<h2>Headline metrics, side by side</h2>",
        _table(headline(results)),
        "<h2>Per hop kind</h2>",
        *[f"<h3>{html.escape(r.label)}</h3>" + _table(hops(r)) for r in results],
        "<h2>Plots</h2>",
        *figures,
    ]
    path = out / "report.html"
    path.write_text(_page("Comparison: " + " vs ".join(r.run.scenario for r in results), body))
    return path
