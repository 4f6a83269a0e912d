"""The figures, with seaborn, for one run or several side by side. Each function returns a
figure and a caption that says what is plotted, so the report reads without the code."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.agentloop import pooled_steps
from analysis.metrics import BREAKDOWN, WINDOW_NS
from analysis.rundir import impairments
from analysis.stats import concurrent_flows
from analysis.timescales import LAB

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis
    from analysis.sweep import CellResult

Plot = tuple[str, Figure, str]  # file stem, figure, caption
sns.set_theme(style="whitegrid", context="notebook")


def _stack(results: list[RunAnalysis], frame: str, column: str) -> pd.DataFrame:
    parts = [getattr(r.joined, frame)[[column]].assign(run=r.label) for r in results]
    return pd.concat(parts, ignore_index=True).dropna(subset=[column])


def _empty(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the data", ha="center", va="center", transform=ax.transAxes)


def _ecdf(data: pd.DataFrame, column: str, what: str, xlabel: str, ylabel: str, complementary: bool = False) -> Figure:
    """A log-scale CDF (or CCDF, log-log) of `column`, one line per run (a `weight` column weighs the
    values), or a note that there is nothing to plot."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(data):
        weights = "weight" if "weight" in data else None
        sns.ecdfplot(
            data=data, x=column, hue="run", weights=weights, complementary=complementary, log_scale=True, ax=ax
        )
        if complementary:
            ax.set_yscale("log")
    else:
        _empty(ax, what)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return fig


def rtt_cdf(results: list[RunAnalysis]) -> Plot:
    fig = _ecdf(
        _stack(results, "rtt", "srtt_us"), "srtt_us", "RTT windows", "smoothed RTT (µs, log scale)", "share of windows"
    )
    return (
        "rtt_cdf",
        fig,
        (
            "CDF of the kernel's smoothed RTT (srtt) at the end of each rtt-probe window (one per socket "
            "per window), every connection of every node, per run."
        ),
    )


def flow_size_cdf(results: list[RunAnalysis]) -> Plot:
    data = _stack(results, "conns", "bytes")
    fig = _ecdf(
        data[data["bytes"] > 0],
        "bytes",
        "flow sizes",
        "bytes per connection, both directions (log scale)",
        "share of connections",
    )
    return (
        "flow_size_cdf",
        fig,
        (
            "CDF of connection sizes: payload bytes sent plus received (lifetime probe; "
            "connections still open at the end are sized from their captured packets)."
        ),
    )


def flows_per_task(results: list[RunAnalysis]) -> Plot:
    fig, ax = plt.subplots(figsize=(7, 4))
    data = pd.concat(
        [r.per_task.loc[~r.per_task["warmup"], ["flows", "new_flows"]].assign(run=r.label) for r in results]
    )
    long = data.melt(id_vars="run", var_name="count", value_name="connections")
    if len(long):
        sns.stripplot(data=long, x="run", y="connections", hue="count", dodge=True, jitter=0.2, ax=ax)
    else:
        _empty(ax, "tasks")
    ax.set(xlabel="", ylabel="TCP connections per task")
    return (
        "flows_per_task",
        fig,
        (
            "Connections per task (warm-up tasks excluded): `flows` = distinct connections the "
            "task's calls used; `new_flows` = those the task opened (was first to use)."
        ),
    )


def latency_breakdown(results: list[RunAnalysis]) -> Plot:
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [
        {"run": r.label, **{p: r.per_task.loc[~r.per_task["warmup"], f"{p}_ns"].mean() / 1e9 for p in BREAKDOWN}}
        for r in results
    ]
    pd.DataFrame(rows).set_index("run").plot.barh(stacked=True, ax=ax)
    ax.set(xlabel="mean seconds per task", ylabel="")
    return (
        "latency_breakdown",
        fig,
        (
            "Where a task's time goes (mean per task): LLM calls, tools (MCP tools, services, "
            "database), agent-to-agent hand-off, network (client time beyond the server's), "
            "and other (the entry's own work)."
        ),
    )


def sample_task(result: RunAnalysis) -> pd.Series | None:
    """The task of median duration among those with captured packets (else among all)."""
    tasks = result.per_task[~result.per_task["warmup"]]
    with_packets = tasks[tasks["packets"] > 0]
    tasks = with_packets if len(with_packets) else tasks
    if not len(tasks):
        return None
    return tasks.sort_values("duration_ns").iloc[(len(tasks) - 1) // 2]


def burst_timeline(result: RunAnalysis) -> Plot:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    task = sample_task(result)
    packets = result.joined.packets
    mine = packets[packets["trace_id"] == task["trace_id"]] if task is not None else packets.iloc[:0]
    if len(mine):
        slot = (mine["ts_ns"] - task["start_ns"]) // WINDOW_NS
        counts = pd.crosstab(slot, mine["hop"])  # only windows that saw packets: one bar each
        bottom = pd.Series(0, index=counts.index)
        for hop, colour in zip(counts.columns, sns.color_palette(n_colors=len(counts.columns)), strict=True):
            ax.bar(
                counts.index * WINDOW_NS / 1e6,
                counts[hop],
                bottom=bottom,
                width=WINDOW_NS / 1e6,
                align="edge",
                color=colour,
                edgecolor=colour,
                linewidth=1.5,
                label=hop,
            )
            bottom += counts[hop]
        ax.legend(title="hop", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        _empty(ax, "captured packets for a task")
    ax.set(xlabel="ms since the task started", ylabel=f"packets per {WINDOW_NS // 1_000_000} ms")
    name = f"task {task['task_id']}" if task is not None else "no task"
    return (
        "burst_timeline",
        fig,
        (
            f"{result.label}: packets per {WINDOW_NS // 1_000_000} ms window during {name} "
            "(the task of median duration), stacked by hop kind."
        ),
    )


def call_sequence(result: RunAnalysis) -> Plot:
    fig, ax = plt.subplots(figsize=(9, 4))
    task = sample_task(result)
    calls = result.joined.calls
    mine = calls[calls["trace_id"] == task["trace_id"]].sort_values("start_ns") if task is not None else calls.iloc[:0]
    if len(mine):
        row = mine["client_service"].fillna("?") + " → " + mine["peer"].fillna(mine["server_service"]).fillna("?")
        lanes = {lane: i for i, lane in enumerate(dict.fromkeys(row))}
        palette = dict(
            zip(sorted(mine["kind"].unique()), sns.color_palette(n_colors=mine["kind"].nunique()), strict=True)
        )
        start = (mine["start_ns"] - task["start_ns"]) / 1e6
        visible = task["duration_ns"] / 1e6 / 300  # the shortest calls still show as a sliver
        for (lane, kind), left, width in zip(
            zip(row, mine["kind"], strict=True), start, mine["duration_ns"] / 1e6, strict=True
        ):
            ax.barh(lanes[lane], max(width, visible), left=left, color=palette[kind], label=kind)
        ax.set_yticks(list(lanes.values()), list(lanes))
        ax.invert_yaxis()
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), title="kind", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        _empty(ax, "calls for a task")
    ax.set(xlabel="ms since the task started")
    name = f"task {task['task_id']}" if task is not None else "no task"
    return (
        "call_sequence",
        fig,
        (
            f"{result.label}: every call of {name} as a bar from its start to its end, one lane "
            "per caller → callee, coloured by kind (from the services' telemetry)."
        ),
    )


def retransmissions(results: list[RunAnalysis]) -> Plot:
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [
        {
            "run": f"{r.label}\nimpairment: {_impairment(r)}",
            "retransmits per 1000 data segments": 1000 * r.summary["retrans_rate"],
            "retransmits": r.summary["retransmits"],
        }
        for r in results
    ]
    data = pd.DataFrame(rows)
    sns.barplot(data=data, y="run", x="retransmits per 1000 data segments", ax=ax)
    for i, count in enumerate(data["retransmits"]):
        ax.annotate(f"{count:.0f} retransmits", (0, i), xytext=(4, 0), textcoords="offset points", va="center")
    ax.set(ylabel="")
    return (
        "retransmissions",
        fig,
        (
            "Retransmitted segments (retrans probe) per 1000 data segments captured, per run, "
            "labelled with the impairment applied during the run."
        ),
    )


def _impairment(result: RunAnalysis) -> str:
    return impairments(result.run.manifest) or "none"


def variance_time(results: list[RunAnalysis], groups: str) -> Plot:
    """IDC of packet counts against the window length, log-log: per link of one run (`groups` "link") or
    for the whole lab of each run (`groups` "lab")."""
    fig, ax = plt.subplots(figsize=(7, 4))
    parts = [r.timescales.assign(run=r.label) for r in results if len(r.timescales)]
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["group", "run"])
    data = data[data["group"].str.startswith("link ") if groups == "link" else data["group"] == LAB]
    if len(data):
        sns.lineplot(
            data=data, x="timescale_ms", y="idc_pkts", hue="group" if groups == "link" else "run", marker="o", ax=ax
        )
        ax.set(xscale="log", yscale="log")
        ax.axhline(1, color="grey", linestyle=":", linewidth=1)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))
    else:
        _empty(ax, "captured packets during the measured tasks")
    ax.set(xlabel="window length T (ms, log)", ylabel="IDC of packets, Var/mean (log)")
    what = "each link (node/interface), from its own capture" if groups == "link" else "all lab traffic of each run"
    return (
        f"variance_time_{groups}",
        fig,
        (
            f"Variance-time curve of {what}, during the measured tasks: the index of dispersion of packet "
            "counts in windows of length T. Poisson arrivals stay at 1 (dotted); a curve rising with T is "
            "bursty across timescales, its slope s giving the Hurst estimate H = (1 + s) / 2."
        ),
    )


def context_growth(groups: dict[str, list[RunAnalysis]]) -> Plot:
    """The LLM request body by step (agentloop.llm_steps): median and p10-p90 per group and agent."""
    fig, ax = plt.subplots(figsize=(7, 4))
    parts = [pooled_steps(runs).assign(run=label) for label, runs in groups.items()]
    data = pd.concat(parts, ignore_index=True).dropna(subset=["req_bytes"])
    if len(data):
        sns.lineplot(
            data=data,
            x="step",
            y="req_bytes",
            hue="run",
            style="agent",
            estimator="median",
            errorbar=("pi", 80),
            markers=True,
            ax=ax,
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))
    else:
        _empty(ax, "LLM requests of the measured tasks")
    ax.set(xlabel="LLM call of the agent in the task (step)", ylabel="request body (bytes)")
    return (
        "context_growth",
        fig,
        (
            "Body of each agent's n-th LLM request within a task (Agent B's numbered anew for each hand-off), "
            "measured tasks, per run (a sweep cell's repetitions pooled) and agent: the median, and the 10th to "
            "90th percentile shaded. A loop that resends the conversation at every step grows the body step by step."
        ),
    )


def run_plots(result: RunAnalysis) -> list[Plot]:
    both = [result]
    return [
        rtt_cdf(both),
        flow_size_cdf(both),
        flows_per_task(both),
        latency_breakdown(both),
        context_growth({result.label: both}),
        burst_timeline(result),
        call_sequence(result),
        retransmissions(both),
        variance_time(both, "link"),
    ]


def comparison_plots(results: list[RunAnalysis]) -> list[Plot]:
    per_run = [
        (f"{stem}-{r.run.run_id}", fig, caption)
        for r in results
        for stem, fig, caption in (burst_timeline(r), call_sequence(r))
    ]
    return [
        rtt_cdf(results),
        flow_size_cdf(results),
        flows_per_task(results),
        latency_breakdown(results),
        context_growth({r.label: [r] for r in results}),
        retransmissions(results),
        variance_time(results, "lab"),
        *per_run,
    ]


# --- sweeps: distributions pooled over each cell's repetitions ------------------------------------


def _pooled_conns(cells: list[CellResult]) -> pd.DataFrame:
    """The lab connections (opened during the run, to a lab service) of every repetition, by cell."""
    parts = [
        r.joined.conns.loc[r.joined.conns["lab"], ["conn_id", "bytes", "lifetime_ns"]].assign(run=c.cell.label)
        for c in cells
        for r in c.results
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["bytes", "lifetime_ns", "run"])


def flow_size_ccdf(cells: list[CellResult]) -> Plot:
    data = _pooled_conns(cells)
    fig = _ecdf(
        data[data["bytes"] > 0], "bytes", "flow sizes", "bytes per connection (log)", "share larger", complementary=True
    )
    return (
        "flow_size_ccdf",
        fig,
        "CCDF of lab connection sizes (payload bytes both ways), every repetition of each cell pooled.",
    )


def flow_duration_ccdf(cells: list[CellResult]) -> Plot:
    data = _pooled_conns(cells).assign(lifetime_ms=lambda d: d["lifetime_ns"] / 1e6)
    fig = _ecdf(
        data[data["lifetime_ms"] > 0],
        "lifetime_ms",
        "flow durations",
        "connection lifetime, ms (log)",
        "share longer",
        complementary=True,
    )
    return (
        "flow_duration_ccdf",
        fig,
        (
            "CCDF of lab connection lifetimes (SYN to close; a connection still open at the stop counts "
            "until then), every repetition of each cell pooled."
        ),
    )


def concurrency_ccdf(cells: list[CellResult]) -> Plot:
    parts = []
    for cell in cells:
        for r in cell.results:
            lab = r.joined.conns.loc[r.joined.conns["lab"], "conn_id"]
            ends = r.joined.flows[r.joined.flows["conn_id"].isin(lab)]
            held = concurrent_flows(ends)
            parts.append(pd.DataFrame({"open": held["open"], "weight": held["duration_ns"], "run": cell.cell.label}))
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["open", "weight", "run"])
    fig = _ecdf(
        data[data["open"] > 0],
        "open",
        "open connections",
        "lab connections open at once on a node (log)",
        "share of time above",
        complementary=True,
    )
    return (
        "concurrency_ccdf",
        fig,
        (
            "CCDF over time of the number of lab connections open at once on a node (each node's ends, "
            "weighted by how long each count held while any was open), repetitions pooled."
        ),
    )


def sweep_plots(cells: list[CellResult]) -> list[Plot]:
    return [
        flow_size_ccdf(cells),
        flow_duration_ccdf(cells),
        concurrency_ccdf(cells),
        context_growth({c.cell.label: c.results for c in cells}),
    ]
