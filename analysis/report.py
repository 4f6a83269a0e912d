"""Self-contained HTML reports (plots embedded as base64 PNG): one per run, and one
comparing runs side by side. Facts first, so a reader knows what was measured."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from analysis import agentloop, metrics, plots, published, stats, validation
from analysis.cells import BASELINE, Cell, CellResult, baselines, effects, measure
from analysis.rundir import facts, versions
from lab import runlayout

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis

# summary key -> (label, format)
HEADLINE: dict[str, tuple[str, str]] = {
    "tasks": ("tasks measured (warm-up excluded)", "{:.0f}"),
    "ok_share": ("tasks answered (the agent or service replied)", "{:.0%}"),
    "correct_share": ("tasks answered correctly (every expected fact stated)", "{:.0%}"),
    "task_s_mean": ("task duration, mean (s)", "{:.3f}"),
    "task_s_p50": ("task duration p50 (s)", "{:.3f}"),
    "task_s_p90": ("task duration p90 (s)", "{:.3f}"),
    "flows_per_task": ("TCP connections used per task", "{:.2f}"),
    "new_flows_per_task": ("TCP connections opened per task", "{:.2f}"),
    "peers_per_task": ("distinct server endpoints per task (fan-out)", "{:.2f}"),
    "llm_calls_per_task": ("LLM calls per task (telemetry)", "{:.2f}"),
    "reported_llm_calls_per_task": ("LLM calls per task, as the agents counted them", "{:.2f}"),
    "steps_per_task": ("agent steps per task (Agent A's LLM decisions)", "{:.2f}"),
    "reported_tool_calls_per_task": ("tool calls per task (Agent A's, hand-offs included)", "{:.2f}"),
    "delegations_per_task": ("hand-offs to Agent B per task", "{:.2f}"),
    "prompt_tokens_per_task": ("prompt tokens per task (every agent)", "{:,.0f}"),
    "completion_tokens_per_task": ("completion tokens per task (every agent)", "{:,.0f}"),
    "max_steps_share": ("tasks stopped at Agent A's step limit", "{:.0%}"),
    "packets_per_task": ("packets per task", "{:.0f}"),
    "bytes_per_task": ("bytes on the wire per task", "{:,.0f}"),
    "rtt_us_p50": ("smoothed RTT at window ends, p50 (µs)", "{:.0f}"),
    "rtt_us_p90": ("smoothed RTT at window ends, p90 (µs)", "{:.0f}"),
    "rtt_us_p99": ("smoothed RTT at window ends, p99 (µs)", "{:.0f}"),
    "rtt_us_p99.9": ("smoothed RTT at window ends, p99.9 (µs)", "{:.0f}"),
    "rtt_us_max": ("smoothed RTT max, any segment (µs)", "{:.0f}"),
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
img{max-width:100%}.scroll{overflow-x:auto;max-width:100%}"""


def _fmt(value: float, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns])
    rows = "".join(
        "<tr>" + f"<td>{html.escape(str(i))}</td>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for i, row in zip(frame.index, frame.itertuples(index=False), strict=True)
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{rows}</table></div>'


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


HEADLINE_NOTE = (
    "<p>Counted: the measured tasks' traffic only. Warm-up tasks, calls outside a task, SSH, the "
    "controller and connections older than the run are left out of these figures and counted in "
    "<i>Left out of the headline</i>. RTT is the kernel's smoothed RTT (srtt) at the end of each "
    "rtt-probe window of a socket, and its highest value within the window for the max.</p>"
)


def intervals(cells: list[CellResult], keys: Iterable[str] = HEADLINE) -> pd.DataFrame:
    """Each headline metric (of `keys`) per cell: mean [95 % bootstrap interval] over the cell's units."""
    shown = {key: HEADLINE[key] for key in keys}
    frame = pd.DataFrame(
        {
            f"{c.cell.label} (n = {c.intervals['flows_per_task'].n} {c.unit})": {
                label: c.intervals[key].format(pattern) if key in c.intervals else "–"
                for key, (label, pattern) in shown.items()
            }
            for c in cells
        }
    )
    frame.index.name = f"metric: mean [{stats.LEVEL:.0%} interval]"
    return frame


def effects_table(found: pd.DataFrame) -> pd.DataFrame:
    """Agentic minus baseline per metric, the ratio, and whether the cells' intervals overlap."""
    if found.empty:
        return pd.DataFrame({"": ["no baseline at the same setting: no effect to report"]}).set_index("")
    pattern = {key: p for key, (_, p) in HEADLINE.items()}
    rows = pd.DataFrame(
        {
            "metric": found["metric"].map(lambda k: HEADLINE[k][0] if k in HEADLINE else k),
            "agentic vs baseline": found["agentic cell"] + " vs " + found["baseline cell"],
            "units": found["unit"],
            "difference": [
                d.format(pattern.get(k, "{:.3g}")) for d, k in zip(found["difference"], found["metric"], strict=True)
            ],
            "ratio": [r.format("{:.2f}") for r in found["ratio"]],
            "intervals overlap": found["overlap"].map({True: "yes: no clear difference", False: "no"}),
        }
    )
    return rows.set_index("metric")


def spread(results: list[RunAnalysis]) -> str:
    """The comparison's intervals (each run's tasks as units) and each agentic run against the baseline run."""
    cells = [measure(Cell(r.label, {}, [r.run.path]), [r]) for r in results]
    spread = (
        f"<h2>Spread: mean and {stats.LEVEL:.0%} bootstrap interval</h2>"
        f"<p>{stats.RESAMPLES} resamples of each run's units (its tasks, or its repetitions when it has "
        "several); percentile intervals.</p>" + _table(intervals(cells, stats.TASK_MEANS))
    )
    if len(cells) < 2:
        return spread
    return spread + "<h2>Agentic vs baseline</h2>" + _table(effects_table(effects(cells)))


def left_out(result: RunAnalysis) -> pd.DataFrame:
    j = result.joined
    return metrics.excluded(result.per_task, j.conns, j.packets, j.rtt)


def facts_table(results: list[RunAnalysis]) -> pd.DataFrame:
    """One column per run label (its run directory in the `run` row): the legend of every table and plot."""
    frame = pd.DataFrame({r.label: facts(r.run) for r in results})
    frame.index.name = "fact"
    return frame


def versions_table(results: list[RunAnalysis]) -> pd.DataFrame:
    frame = pd.DataFrame({r.label: versions(r.run) for r in results}).fillna("–")
    frame.index.name = "software"
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
        files = len(result.run.manifest.files)
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
        "correct",
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


BURSTINESS_NOTE = (
    "<p>During the measured tasks, per link (a node's interface, from its own capture), per node and for "
    "the whole lab (each packet once): the Hurst estimate from the variance-time curve (index of dispersion "
    "of packet counts over windows of 1 ms to 10 s; 0.5 = no long-range dependence), the busiest window's "
    "packets over the mean at 10 ms and 1 s, and ON/OFF periods (ON while packets follow within 1 ms). "
    "Definitions and sources: analysis/timescales.py.</p>"
)


PUBLISHED_NOTE = (
    "<p>The measured tasks' lab connections, measured as published studies of AI traffic measured theirs "
    "(sources and definitions: analysis/published.py). Those studies saw WAN traffic to hosted models; the "
    "lab's hops are a LAN's, so read the direction of each difference, not its size.</p>"
)


def burstiness(result: RunAnalysis) -> str:
    if result.burstiness.empty:
        return "<p>No packets captured during the measured tasks.</p>"
    return BURSTINESS_NOTE + _table(result.burstiness.set_index("group").round(3))


Groups = dict[str, list["RunAnalysis"]]
"""Label -> runs: one run each in a run or comparison report, a cell's repetitions (pooled) in a sweep's."""

# per-task column -> row label of the loop-depth table
LOOP_ROWS: dict[str, str] = {
    "steps": "steps (Agent A's LLM decisions)",
    "reported_llm_calls": "LLM calls, every agent (as counted)",
    "llm_calls": "LLM calls, every agent (telemetry)",
    "reported_tool_calls": "tool calls of Agent A, hand-offs included",
    "delegations": "hand-offs to Agent B",
    "prompt_tokens": "prompt tokens, every agent",
    "completion_tokens": "completion tokens, every agent",
}
# column of an agentloop table -> (heading, format)
LOOP_COLUMNS: dict[str, tuple[str, str]] = {
    "tasks": ("tasks", "{:.0f}"),
    "share": ("share of tasks", "{:.0%}"),
    "correct": ("answered correctly", "{:.0%}"),
    "mean": ("mean", "{:,.2f}"),
    **{q: (q, "{:,.1f}") for q in agentloop.QUANTILES},
    "steps": ("steps", "{:.2f}"),
    "reported_tool_calls": ("tool calls", "{:.2f}"),
    "min_tool_calls": ("minimal tool calls", "{:.2f}"),
    "new_flows": ("connections opened", "{:.2f}"),
    "bytes": ("bytes on the wire", "{:,.0f}"),
    "calls": ("LLM requests", "{:.0f}"),
    "req_bytes_p50": ("request body p50 (bytes)", "{:,.0f}"),
    "req_bytes_p90": ("request body p90 (bytes)", "{:,.0f}"),
    "growth": ("p50 over step 1's", "{:.2f}"),
}

AGENT_LOOP_NOTE = (
    "<p>Measured tasks only (per workload; a sweep cell's repetitions pooled). Steps, calls, hand-offs and "
    "tokens as the agents counted them (results.jsonl); LLM calls also as the telemetry saw them. Tool calls "
    "are Agent A's, its hand-offs to Agent B included. Connections opened, bytes on the wire: the per-task "
    "traffic of the headline. A task is <i>correct</i> when its answer states every fact the task expects, "
    "<i>wrong</i> when it answered otherwise, <i>failed</i> without an answer (error or timeout), <i>not "
    "checked</i> in runs from before answers were checked. A dash: not recorded (the baseline has no agent "
    "loop, a failed task reports none, older runs lack these fields).</p>"
)
CONTEXT_NOTE = (
    "<p>Each agent's LLM requests in a task numbered in order (Agent B's anew for each hand-off), and the "
    "size of their bodies (telemetry <code>req_bytes</code>) by step: a loop that resends the conversation at "
    "every step grows the body step by step.</p>"
)


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """The LOOP_COLUMNS of an agentloop table formatted and headed; other columns as they are."""
    shown = frame.copy()
    for column, (_, pattern) in LOOP_COLUMNS.items():
        if column in shown:
            shown[column] = [_fmt(v, pattern) for v in shown[column]]
    return shown.rename(columns={c: heading for c, (heading, _) in LOOP_COLUMNS.items()})


def _by_group(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every group's table, one under the other: the group's label as the index, its own index first."""
    frames = [part.reset_index().assign(run=label).set_index("run") for label, part in parts.items() if len(part)]
    return _formatted(pd.concat(frames)) if frames else pd.DataFrame()


def _agentic(groups: Groups) -> Groups:
    return {label: runs for label, runs in groups.items() if runs[0].run.workload != BASELINE}


def _depth(tasks: pd.DataFrame) -> pd.DataFrame:
    return agentloop.spread(tasks, list(LOOP_ROWS)).rename(index=LOOP_ROWS).rename_axis("per task")


def loop_depth(groups: Groups) -> pd.DataFrame:
    """Per agentic group, each LOOP_ROWS column's spread over the measured tasks."""
    return _by_group({label: _depth(agentloop.pooled_tasks(runs)) for label, runs in _agentic(groups).items()})


def answers(groups: Groups) -> pd.DataFrame:
    """Per agentic group, the traffic and depth of its tasks by answer outcome."""
    return _by_group(
        {label: agentloop.by_answer(agentloop.pooled_tasks(runs)) for label, runs in _agentic(groups).items()}
    )


def kinds(groups: Groups) -> pd.DataFrame:
    """Per group, its tasks by kind: accuracy, depth against the minimal plan, traffic."""
    return _by_group({label: agentloop.by_kind(agentloop.pooled_tasks(runs)) for label, runs in groups.items()})


def context(groups: Groups) -> pd.DataFrame:
    """Per group, the LLM request body by agent and step."""
    return _by_group(
        {
            label: agentloop.context_growth(agentloop.pooled_steps(runs)).set_index("agent")
            for label, runs in groups.items()
        }
    )


def agent_loop(groups: Groups) -> str:
    """The agent loop section: its depth per task, traffic by answer and by task kind, context growth."""
    tables = [
        ("Depth of the loop per task", "", loop_depth(groups), "agentic run"),
        ("Traffic by answer", "", answers(groups), "agentic run"),
        ("Traffic by task kind", "", kinds(groups), "measured task"),
        ("Context growth: LLM request body by step", CONTEXT_NOTE, context(groups), "LLM request"),
    ]
    parts = [AGENT_LOOP_NOTE]
    for title, note, frame, missing in tables:
        shown = _table(frame) if len(frame) else f"<p>Nothing to show: no {missing} here.</p>"
        parts.append(f"<h3>{title}</h3>{note}{shown}")
    return "".join(parts)


def checks(result: RunAnalysis, full: bool) -> str:
    """The validation of one run: its warnings, then the handshake cross-check (and, in full, the
    probes' losses and the clocks' error budget)."""
    checked = validation.check(result)
    found = checked.warnings()
    verdict = (
        '<div class="warn"><ul>' + "".join(f"<li>{html.escape(w)}</li>" for w in found) + "</ul></div>"
        if found
        else '<p class="ok">Every captured handshake joined a probe connection; no probe record lost; '
        "every clock known within the join window; no CPU steal, saturation or overcommit seen.</p>"
    )
    parts = [verdict, _table(checked.handshakes)]
    if full:
        parts += [_table(checked.losses.set_index("node"))]
        clocks, hosts = checked.clocks, checked.hosts
        parts += [_table(clocks.set_index("node")) if len(clocks) else "<p>No clock offsets in the manifest.</p>"]
        parts += [
            _table(hosts.set_index("node").round(3))
            if len(hosts)
            else "<p>CPU and offload conditions not recorded (a run from before they were).</p>"
        ]
    return "".join(parts)


def write_run_report(result: RunAnalysis) -> Path:
    directory = runlayout.plots_dir(result.run.path)
    figures = [_figure(stem, fig, caption, directory) for stem, fig, caption in plots.run_plots(result)]
    body = [
        "<h2>What was measured</h2>",
        _table(facts_table([result])),
        "<h3>Versions</h3>",
        _table(versions_table([result])),
        "<h2>What was missing</h2>",
        problems(result),
        "<h2>Validation</h2>",
        checks(result, full=True),
        "<h2>Headline metrics</h2>",
        HEADLINE_NOTE,
        _table(headline([result])),
        spread([result]),
        "<h2>Left out of the headline</h2>",
        _table(left_out(result)),
        "<h2>Agent loop, accuracy and traffic</h2>",
        agent_loop({result.label: [result]}),
        "<h2>Join quality</h2>",
        JOIN_NOTE,
        _table(join_quality(result)),
        "<h2>Per hop kind</h2>",
        _table(hops(result)),
        "<h2>Burstiness across timescales</h2>",
        burstiness(result),
        "<h2>Beside published figures</h2>",
        PUBLISHED_NOTE,
        _table(published.table({result.label: [result]}, {})),
        "<h2>Plots</h2>",
        *figures,
        "<h2>Per task</h2>",
        _table(tasks(result)),
        "<p>Tables: <code>tables/*.parquet</code>; summary: <code>analysis.json</code>.</p>",
    ]
    path = runlayout.report_path(result.run.path)
    path.write_text(_page(f"Run {result.run.run_id}: {result.run.scenario}", body))
    return path


def write_comparison(results: list[RunAnalysis], out: Path) -> Path:
    figures = [
        _figure(stem, fig, caption, runlayout.plots_dir(out)) for stem, fig, caption in plots.comparison_plots(results)
    ]
    body = [
        mixed_setups(results),
        "<h2>What was measured</h2>",
        _table(facts_table(results)),
        "<h3>Versions</h3>",
        _table(versions_table(results)),
        "<h2>What was missing</h2>",
        *[problems(r) for r in results],
        "<h2>Validation</h2>",
        *[f"<h3>{html.escape(r.label)}</h3>" + checks(r, full=False) for r in results],
        "<h2>Headline metrics, side by side</h2>",
        HEADLINE_NOTE,
        _table(headline(results)),
        spread(results),
        "<h2>Agent loop, accuracy and traffic</h2>",
        agent_loop({r.label: [r] for r in results}),
        "<h2>Per hop kind</h2>",
        *[f"<h3>{html.escape(r.label)}</h3>" + _table(hops(r)) for r in results],
        "<h2>Burstiness across timescales</h2>",
        *[f"<h3>{html.escape(r.label)}</h3>" + burstiness(r) for r in results],
        "<h2>Beside published figures</h2>",
        PUBLISHED_NOTE,
        _table(published.table({r.label: [r] for r in results}, published.against_baseline(results))),
        "<h2>Plots</h2>",
        *figures,
    ]
    path = runlayout.report_path(out)
    path.write_text(_page("Comparison: " + " vs ".join(r.run.scenario for r in results), body))
    return path


def sweep_checks(cells: list[CellResult]) -> pd.DataFrame:
    """Every run's validation in one row: handshakes joined, the highest steal and busy share of any node,
    and its warnings (each run's own report has the tables)."""
    rows = []
    for cell in cells:
        for r in cell.results:
            checked = validation.check(r)
            rows.append(
                {
                    "run": r.run.run_id,
                    "cell": cell.cell.label,
                    "handshakes joined": checked.handshakes.loc["all", "share joined"],
                    "steal, highest node": _share(checked.hosts, "steal"),
                    "busy, highest node": _share(checked.hosts, "busy"),
                    "warnings": "; ".join(checked.warnings()) or "none",
                }
            )
    return pd.DataFrame(rows).set_index("run")


def _share(hosts: pd.DataFrame, column: str) -> str:
    values = pd.to_numeric(hosts[column], errors="coerce").dropna() if column in hosts else pd.Series(dtype=float)
    return f"{values.max():.1%}" if len(values) else "not recorded"


def write_sweep(cells: list[CellResult], found: pd.DataFrame, out: Path) -> Path:
    """The sweep report: the grid, facts, each cell's intervals across repetitions, effects, pooled CCDFs."""
    runs = [r for c in cells for r in c.results]
    grid = pd.DataFrame(
        [
            {
                "cell": c.cell.label,
                **{k: str(v) for k, v in c.cell.params.items()},
                "workload": c.workload,
                "repetitions": len(c.results),
                "runs": ", ".join(r.run.run_id for r in c.results),
            }
            for c in cells
        ]
    ).set_index("cell")
    figures = [_figure(stem, fig, caption, runlayout.plots_dir(out)) for stem, fig, caption in plots.sweep_plots(cells)]
    body = [
        mixed_setups(runs),
        "<h2>The grid</h2>",
        _table(grid),
        "<h2>What was measured</h2>",
        _table(facts_table([c.results[0] for c in cells])),
        "<h3>Versions</h3>",
        _table(versions_table([c.results[0] for c in cells])),
        "<h2>What was missing</h2>",
        *[problems(r) for r in runs],
        f"<h2>Headline metrics: mean and {stats.LEVEL:.0%} bootstrap interval across repetitions</h2>",
        HEADLINE_NOTE,
        f"<p>{stats.RESAMPLES} resamples of the cell's repetitions (of its tasks when it has one); percentile "
        "intervals.</p>",
        _table(intervals(cells)),
        "<h2>Agentic vs baseline at the same setting</h2>",
        "<p>Difference and ratio of means (agentic over baseline) with their bootstrap intervals; "
        "<i>intervals overlap</i> flags the metrics where the two cells' own intervals overlap.</p>",
        _table(effects_table(found)),
        "<h2>Agent loop, accuracy and traffic: repetitions pooled</h2>",
        agent_loop({c.cell.label: c.results for c in cells}),
        "<h2>Beside published figures</h2>",
        PUBLISHED_NOTE + "<p>Each figure is the mean over the cell's repetitions.</p>",
        _table(
            published.table(
                {c.cell.label: c.results for c in cells}, {k: v.cell.label for k, v in baselines(cells).items()}
            )
        ),
        "<h2>Validation</h2>",
        _table(sweep_checks(cells)),
        "<h2>Distributions, repetitions pooled</h2>",
        *figures,
    ]
    path = runlayout.report_path(out)
    path.write_text(_page(f"Sweep: {len(cells)} cells, {len(runs)} runs", body))
    return path
