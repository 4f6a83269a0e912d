"""Metrics on the joined tables: per task, per hop kind and per scenario.

Every function takes plain DataFrames (columns named in its docstring) and is vectorised,
so each can be checked on a small hand-built table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.join import HOPS

WINDOW_NS = 10_000_000  # packets-per-window bins
BURST_GAP_NS = 1_000_000  # a gap longer than this ends a burst
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
BREAKDOWN = ("llm", "tools", "handoff", "network", "other")
_CATEGORY = {"llm": "llm", "tool": "tools", "db": "tools", "service": "tools", "agent": "handoff", "task": "other"}
# per-task columns of the agents' loops, as they counted them (results.jsonl; null for the baseline's
# tasks and in runs from before they were recorded): the headline's `<column>_per_task` means
LOOP = ("steps", "reported_llm_calls", "reported_tool_calls", "delegations", "prompt_tokens", "completion_tokens")


def percentiles(values: pd.Series | np.ndarray) -> dict[str, float]:
    """p50, p90, p99 and p99.9 (linear interpolation); NaN when there are no values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {name: float("nan") for name in QUANTILES}
    return dict(zip(QUANTILES, np.quantile(values, list(QUANTILES.values())).tolist(), strict=True))


# --- per task -------------------------------------------------------------------------------


def flows_per_task(used: pd.DataFrame) -> pd.DataFrame:
    """`used` (call_id, conn_id, trace_id, start_ns, server_ep): per trace, the distinct connections its
    calls used (`flows`), those it opened, i.e. was the first to use (`new_flows`), and the distinct
    server endpoints it reached (`peers`, the fan-out)."""
    used = used.dropna(subset=["trace_id"])
    first = used.sort_values("start_ns").drop_duplicates("conn_id")
    out = used.groupby("trace_id").agg(flows=("conn_id", "nunique"), peers=("server_ep", "nunique"))
    out["new_flows"] = first.groupby("trace_id").size()
    return out.fillna({"new_flows": 0}).astype(np.int64)


def traffic(packets: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`packets` (wire_len, payload, plus the `by` columns): packets, bytes on the wire, payload bytes."""
    return packets.groupby(by, observed=True).agg(
        packets=("wire_len", "size"), bytes=("wire_len", "sum"), payload_bytes=("payload", "sum")
    )


def bursts(packets: pd.DataFrame, by: str, gap_ns: int = BURST_GAP_NS) -> pd.DataFrame:
    """`packets` (ts_ns, `by`): one row per burst, a run of packets of one group no more than `gap_ns`
    apart: the group, its start and its size in packets."""
    ordered = packets[[by, "ts_ns"]].dropna().sort_values([by, "ts_ns"])
    gap = ordered.groupby(by)["ts_ns"].diff()
    burst = (gap.isna() | (gap > gap_ns)).cumsum()
    return (
        ordered.groupby(burst)
        .agg(group=(by, "first"), start_ns=("ts_ns", "min"), size=("ts_ns", "size"))
        .rename(columns={"group": by})
        .reset_index(drop=True)
    )


def interarrival_cv(packets: pd.DataFrame, by: str) -> pd.Series:
    """Coefficient of variation (std / mean) of packet inter-arrival times per group (NaN below 3 packets)."""
    ordered = packets[[by, "ts_ns"]].dropna().sort_values([by, "ts_ns"])
    gaps = ordered.assign(gap=ordered.groupby(by)["ts_ns"].diff()).dropna(subset=["gap"])
    stats = gaps.groupby(by)["gap"].agg(["mean", "std", "size"])
    return (stats["std"] / stats["mean"]).where(stats["size"] >= 2)


def window_counts(packets: pd.DataFrame, by: str, window_ns: int = WINDOW_NS) -> pd.DataFrame:
    """Packets per `window_ns` window per group, empty windows between a group's first and last packet
    included: mean, max and peak-to-mean ratio."""
    ordered = packets[[by, "ts_ns"]].dropna()
    first = ordered.groupby(by)["ts_ns"].transform("min")
    slot = ((ordered["ts_ns"] - first) // window_ns).astype(np.int64)
    counts = ordered.assign(slot=slot).groupby([by, "slot"]).size()
    per = counts.groupby(level=0).agg(["sum", "max"])
    windows = slot.groupby(ordered[by]).max() + 1
    out = pd.DataFrame({"pkts_per_window_mean": per["sum"] / windows, "pkts_per_window_max": per["max"]})
    out["peak_to_mean"] = out["pkts_per_window_max"] / out["pkts_per_window_mean"]
    return out


def latency_breakdown(calls: pd.DataFrame) -> pd.DataFrame:
    """Per trace, where its time went, in ns. `calls`: call_id, parent_id, trace_id, kind, duration_ns,
    server_busy_ns (NaN without a server side), has_client (bool).

    Each call's self time is its duration less its children's; where both sides logged, the
    client's time beyond the server's is network (and queueing); the rest goes to the call's
    category: llm, tools (MCP tools, services, database), handoff (agent to agent), other
    (the entry's own work around the task). Parallel children can make the parts sum to more
    than the task took."""
    children = calls.groupby("parent_id")["duration_ns"].sum()
    # numeric even where no call has a child: mapping ids through an empty Series keeps the ids' string dtype
    own_children = pd.to_numeric(calls["call_id"].map(children), errors="coerce").fillna(0)
    self_ns = (calls["duration_ns"] - own_children).clip(lower=0)
    both = calls["has_client"] & calls["server_busy_ns"].notna()
    network = (calls["duration_ns"] - calls["server_busy_ns"]).where(both, 0).clip(lower=0).clip(upper=self_ns)
    parts = pd.DataFrame(
        {
            "trace_id": calls["trace_id"],
            "category": calls["kind"].map(_CATEGORY).fillna("tools"),
            "own": self_ns - network,
            "network": network,
        }
    )
    own = parts.pivot_table(index="trace_id", columns="category", values="own", aggfunc="sum", fill_value=0)
    out = own.reindex(columns=list(BREAKDOWN), fill_value=0)
    out["network"] = parts.groupby("trace_id")["network"].sum()
    return out.fillna(0).add_suffix("_ns")


def retrans_rate(retrans: pd.DataFrame, packets: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Retransmitted segments over data segments (payload > 0) per group; NaN where no data segment was captured."""
    sent = packets[packets["payload"] > 0].groupby(by, observed=True).size().rename("data_segments")
    again = retrans.groupby(by, observed=True).size().rename("retransmits")
    out = pd.concat([sent, again], axis=1).fillna(0).astype(np.int64)
    out["retrans_rate"] = (out["retransmits"] / out["data_segments"]).where(out["data_segments"] > 0)
    return out


def task_metrics(
    tasks: pd.DataFrame, calls: pd.DataFrame, used: pd.DataFrame, packets: pd.DataFrame, retrans: pd.DataFrame
) -> pd.DataFrame:
    """One row per task: calls by kind, flows, fan-out, traffic, retransmits, burstiness, latency breakdown."""
    mine = calls[calls["trace_id"].isin(tasks["trace_id"])]
    # every kind of call a column, 0 where a run made none (a multihop run whose model never handed off)
    kinds = pd.crosstab(mine["trace_id"], mine["kind"]).reindex(columns=list(HOPS), fill_value=0).add_suffix("_calls")
    breakdown = latency_breakdown(mine.assign(has_client=mine["client_service"].notna()))
    task_packets = packets.dropna(subset=["trace_id"])
    parts = [
        kinds,
        flows_per_task(used),
        traffic(task_packets, ["trace_id"]),
        retrans.dropna(subset=["trace_id"]).groupby("trace_id").size().rename("retransmits"),
        interarrival_cv(task_packets, "trace_id").rename("iat_cv"),
        window_counts(task_packets, "trace_id"),
        bursts(task_packets, "trace_id").groupby("trace_id")["size"].agg(bursts="size", burst_mean="mean"),
        breakdown,
    ]
    out = tasks.set_index("trace_id")
    # Traces that are not tasks (a session opened before the first task) are dropped from each part
    # first: joined as they are, they would turn the task columns (warmup) into objects.
    out = out.join([part.reindex(out.index) for part in parts])
    # the telemetry's call counts; the agents' own (reported_*, min_tool_calls) stay null where unknown
    counts = list(kinds.columns) + [
        "flows",
        "new_flows",
        "peers",
        "packets",
        "bytes",
        "payload_bytes",
        "retransmits",
        "bursts",
    ]
    out[counts] = out[counts].fillna(0).astype(np.int64)
    return out.reset_index()


def hop_metrics(packets: pd.DataFrame, conns: pd.DataFrame, rtt: pd.DataFrame, tasks: pd.DataFrame) -> pd.DataFrame:
    """Per hop kind: connections, packets and bytes per task, RTT p50/p99 over the rtt probe's windows and
    the highest smoothed RTT any segment saw (µs), median connection lifetime, and connection reuse:
    the mean number of calls (LLM requests, tool calls, service requests) each connection carried."""
    counted = tasks.loc[~tasks["warmup"], "trace_id"]
    n = max(len(counted), 1)
    inside = packets[packets["trace_id"].isin(counted)]
    out = traffic(inside, ["hop"]) / n
    out.columns = [f"{c}_per_task" for c in out.columns]
    out["connections"] = conns.groupby("hop").size()
    out["calls_per_conn"] = conns[conns["calls"] > 0].groupby("hop")["calls"].mean()
    out["lifetime_ms_p50"] = conns.groupby("hop")["lifetime_ns"].median() / 1e6
    rtt_by = rtt.groupby("hop")["srtt_us"]
    out["rtt_us_p50"], out["rtt_us_p99"] = rtt_by.median(), rtt_by.quantile(0.99)
    out["rtt_us_max"] = rtt.groupby("hop")["srtt_max_us"].max()
    return out.reset_index()


def scenario_summary(
    per_task: pd.DataFrame,
    conns: pd.DataFrame,
    packets: pd.DataFrame,
    rtt: pd.DataFrame,
    retrans: pd.DataFrame,
    burst_sizes: pd.Series,
) -> dict[str, float]:
    """The headline figures of one run: the measured tasks' traffic only (warm-up tasks, SSH, connections
    from before the run and traffic no call made are left out: `excluded` counts them)."""
    counted = per_task[~per_task["warmup"]]
    measured = counted["trace_id"]
    lab = conns[conns["lab"]]
    rtt = rtt[rtt["trace_id"].isin(measured)]
    conns = conns[conns["trace_id"].isin(measured)]
    task_packets = packets[packets["trace_id"].isin(measured)]
    retx = retrans_rate(retrans[retrans["trace_id"].isin(measured)].assign(all=1), task_packets.assign(all=1), ["all"])
    total_ns = counted[[f"{p}_ns" for p in BREAKDOWN]].sum()
    summary = {
        "tasks": float(len(counted)),
        "ok_share": float(counted["ok"].mean()) if len(counted) else float("nan"),
        # runs from before answers were checked have no `correct`: unknown, not wrong
        "correct_share": float(counted["correct"].astype("float64").mean()) if "correct" in counted else float("nan"),
        "task_s_mean": float(counted["duration_ns"].mean() / 1e9),
        "task_s_p50": float(counted["duration_ns"].median() / 1e9),
        "task_s_p90": float(counted["duration_ns"].quantile(0.9) / 1e9),
        "flows_per_task": float(counted["flows"].mean()),
        "new_flows_per_task": float(counted["new_flows"].mean()),
        "peers_per_task": float(counted["peers"].mean()),
        "packets_per_task": float(counted["packets"].mean()),
        "bytes_per_task": float(counted["bytes"].mean()),
        "llm_calls_per_task": float(counted.get("llm_calls", pd.Series(0.0)).mean()),
        **{f"rtt_us_{k}": v for k, v in percentiles(rtt["srtt_us"]).items()},
        "rtt_us_max": float(rtt["srtt_max_us"].max()) if len(rtt) else float("nan"),
        "retrans_rate": float(retx["retrans_rate"].iloc[0]) if len(retx) else float("nan"),
        "retransmits": float(retx["retransmits"].sum()),
        "lifetime_ms_p50": float(conns["lifetime_ns"].median() / 1e6),
        "lifetime_ms_p90": float(conns["lifetime_ns"].quantile(0.9) / 1e6),
        "iat_cv_mean": float(counted["iat_cv"].mean()),
        "burst_size_mean": float(burst_sizes.mean()),
        "burst_size_p90": float(burst_sizes.quantile(0.9)) if len(burst_sizes) else float("nan"),
        "matched_lab_flows": float(lab["call_id"].notna().mean()) if len(lab) else float("nan"),
        "matched_packets": float(packets["conn_id"].notna().mean()) if len(packets) else float("nan"),
        "connections": float(len(conns)),
    }
    if packets.empty:  # no capture: unknown, not zero
        summary.update(packets_per_task=float("nan"), bytes_per_task=float("nan"))
    shares = total_ns / total_ns.sum() if total_ns.sum() > 0 else total_ns * np.nan
    summary.update({f"share_{p}": float(shares[f"{p}_ns"]) for p in BREAKDOWN})
    summary.update(loop_summary(counted))
    return summary


def task_mean(tasks: pd.DataFrame, column: str) -> float:
    """The mean of a per-task column over the tasks that have a value (a flag counts as 0 or 1); NaN where
    none has one or the column is missing (a run from before it was recorded: unknown, not zero)."""
    if column not in tasks:
        return float("nan")
    return float(pd.to_numeric(tasks[column], errors="coerce").mean())


def loop_summary(counted: pd.DataFrame) -> dict[str, float]:
    """The agents' loops in the measured tasks `counted`: each LOOP column's mean per task, and the share
    of tasks Agent A stopped at its step limit (`max_steps_share`)."""
    means = {f"{column}_per_task": task_mean(counted, column) for column in LOOP}
    return {**means, "max_steps_share": task_mean(counted, "max_steps_reached")}


def excluded(per_task: pd.DataFrame, conns: pd.DataFrame, packets: pd.DataFrame, rtt: pd.DataFrame) -> pd.DataFrame:
    """What the headline leaves out, by why: connections, packets and RTT windows of warm-up tasks, of
    calls outside any task (a session opened before the first one), and of connections no call made
    (SSH, the controller, connections older than the run: their join labels)."""
    warmup = per_task.loc[per_task["warmup"], "trace_id"]
    measured = per_task.loc[~per_task["warmup"], "trace_id"]
    reason = pd.Series(
        np.select(
            [conns["trace_id"].isin(measured), conns["trace_id"].isin(warmup), conns["call_id"].notna()],
            ["measured tasks", "warm-up tasks", "calls outside a task"],
            conns["label"],
        ),
        index=conns["conn_id"],
    )
    out = pd.DataFrame(
        {
            "connections": reason.value_counts(),
            "packets": packets["conn_id"].map(reason).fillna("no connection").value_counts(),
            "rtt windows": rtt["conn_id"].map(reason).fillna("no connection").value_counts(),
        }
    )
    out = out.fillna(0).astype(np.int64)
    out.index.name = "traffic of"
    return out
