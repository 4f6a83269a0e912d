"""Joins: connections from the probes, calls from the telemetry, tasks from the results;
then every connection, packet, RTT window and retransmission to the call and task it
belongs to, all with vectorised merges (no Python loop per record).

Keys. An address is scoped by node when it is loopback (127.0.0.0/8, ::1), so two nodes'
loopback traffic never meets; an endpoint is (scoped address, port) as one int64 and a
connection key is the unordered pair of its endpoints. A connection seen at both ends
(two lifetime records, on two nodes or on one node's loopback) is one connection.

Attribution. A connection belongs to every call whose telemetry names its 4-tuple while
the connection was alive (keep-alive reuse: several calls); its owner is the first of them,
and the owner's task is the connection's task. A packet, RTT window (by its last segment) or retransmission
belongs to the call whose interval on that connection contains it, else to the owner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analysis.genai import call_operations
from analysis.jsonl import RESULTS_SCHEMA
from analysis.load import RunData

SLACK_NS = 10_000_000  # clock and probe-timing tolerance when matching intervals
HOPS = {
    "llm": "agent→llm",
    "tool": "agent→tool",
    "agent": "agent→agent",
    "service": "service→service",
    "db": "→db",
    "task": "client→entry",
}
UNMATCHED = "unmatched"
SSH_PORT = 22
# results.jsonl fields named otherwise in the tasks table: the task's kind beside the calls' kinds, and
# the agents' own counts beside the telemetry's (llm_calls, tool_calls: metrics.task_metrics)
RESULT_RENAMES = {"kind": "task_kind", "llm_calls": "reported_llm_calls", "tool_calls": "reported_tool_calls"}


class Codebook:
    """Scoped address -> small integer, shared by every table of one run."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def endpoints(self, addr: pd.Series, port: pd.Series, node: pd.Series) -> np.ndarray:
        addr = addr.astype(object).fillna("")
        loop = addr.str.startswith("127.") | (addr == "::1")
        scoped = addr.where(~loop, addr + "@" + node.astype(object))
        codes, uniques = pd.factorize(scoped)
        lookup = np.array([self.index.setdefault(u, len(self.index)) for u in uniques] or [0], np.int64)
        if len(self.index) >= 1 << 15:
            raise ValueError("more than 32767 distinct addresses in one run")
        return (lookup[codes] << 16) | port.fillna(0).to_numpy(np.int64)


def pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.minimum(a, b) << 31) | np.maximum(a, b)


def hop_kind(kind: pd.Series) -> pd.Series:
    return kind.map(HOPS).fillna(UNMATCHED)


# --- calls and tasks ------------------------------------------------------------------------


def calls_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per call_id, both sides merged: the client's interval when it logged one."""
    client = events[events["side"] == "client"].drop_duplicates("call_id")
    # a server's event stream (workload.telemetry.CallEvent.event) only waits for what it may send: no work
    server = events[events["side"] == "server"].assign(
        busy_ns=lambda e: (e["end_ns"] - e["start_ns"]).where(e["event"] != "stream", 0)
    )
    served = server.groupby("call_id").agg(
        server_service=("service", "first"),
        server_node=("node_dir", "first"),
        server_start_ns=("start_ns", "min"),
        server_end_ns=("end_ns", "max"),
        server_busy_ns=("busy_ns", "sum"),
        server_kind=("kind", "first"),
        server_trace=("trace_id", "first"),
        server_task=("task_id", "first"),
        server_parent=("parent_id", "first"),
        server_error=("error", "first"),
    )
    keep = [
        "call_id",
        "trace_id",
        "task_id",
        "parent_id",
        "agent_id",
        "kind",
        "peer",
        "op",
        "service",
        "node_dir",
        "start_ns",
        "end_ns",
        "req_bytes",
        "resp_bytes",
        "status",
        "error",
    ]
    calls = client[keep].rename(columns={"service": "client_service", "node_dir": "client_node"})
    calls = calls.merge(served, on="call_id", how="outer")
    for mine, theirs in (
        ("kind", "server_kind"),
        ("trace_id", "server_trace"),
        ("task_id", "server_task"),
        ("parent_id", "server_parent"),
        ("start_ns", "server_start_ns"),
        ("end_ns", "server_end_ns"),
        ("error", "server_error"),
    ):
        calls[mine] = calls[mine].fillna(calls[theirs])
    calls["status"] = np.where(calls["error"].notna(), "error", "ok")
    calls["duration_ns"] = calls["end_ns"] - calls["start_ns"]
    calls["hop"] = hop_kind(calls["kind"])
    calls["gen_ai_operation"] = call_operations(calls)
    return calls.drop(columns=["server_kind", "server_trace", "server_task", "server_parent", "server_error"])


def tasks_table(calls: pd.DataFrame, results: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """One row per submitted task (a trace): the driver's task call joined with results.jsonl. Every
    field of RESULTS_SCHEMA becomes a column (RESULT_RENAMES), null where results.jsonl lacks the task
    or the field (a run from before it was recorded)."""
    roots = calls[calls["kind"] == "task"].sort_values("start_ns").drop_duplicates("trace_id")
    roots = roots[["trace_id", "task_id", "call_id", "op", "start_ns", "end_ns", "status"]]
    extra = (
        results.reindex(columns=RESULTS_SCHEMA.names)
        .drop(columns=["task_id", "start_ns", "end_ns"])
        .drop_duplicates("call_id")
        .rename(columns=RESULT_RENAMES)
    )
    tasks = roots.merge(extra, on="call_id", how="left")
    tasks["scenario"] = tasks["scenario"].fillna(tasks["op"]).fillna(scenario)
    tasks["warmup"] = tasks["warmup"].astype("boolean").fillna(False).astype(bool)
    tasks["ok"] = tasks["ok"].astype("boolean").fillna(tasks["status"] == "ok").astype(bool)
    tasks["repetition"] = tasks["repetition"].fillna(0).astype(np.int64)
    tasks["duration_ns"] = tasks["end_ns"] - tasks["start_ns"]
    return tasks.drop(columns=["op", "status"]).reset_index(drop=True)


# --- connections ----------------------------------------------------------------------------


def flow_observations(probes: dict[str, pd.DataFrame], stop_ns: dict[str, int], book: Codebook) -> pd.DataFrame:
    """One row per connection end seen by a node: closed ones from `lifetime`, and those
    `connect` saw established but `lifetime` never closed (still open when the probes stopped)."""
    life = probes["lifetime"]
    closed = pd.DataFrame(
        {
            "node": life["node"],
            "saddr": life["saddr"],
            "sport": life["sport"],
            "daddr": life["daddr"],
            "dport": life["dport"],
            "start_ns": life["start_ns"],
            "end_ns": life["ts_ns"],
            "tx_bytes": life["tx_bytes"],
            "rx_bytes": life["rx_bytes"],
            "closed": True,
        }
    )
    conn = probes["connect"]
    opened = pd.DataFrame(
        {
            "node": conn["node"],
            "saddr": conn["saddr"],
            "sport": conn["sport"],
            "daddr": conn["daddr"],
            "dport": conn["dport"],
            "start_ns": conn["ts_ns"],
            "direction": conn["direction"],
        }
    )
    tuple_cols = ["node", "saddr", "sport", "daddr", "dport"]
    seen = opened.reset_index().merge(closed[tuple_cols + ["start_ns", "end_ns"]], on=tuple_cols, suffixes=("", "_c"))
    covered = seen.loc[
        (seen["start_ns"] >= seen["start_ns_c"] - SLACK_NS) & (seen["start_ns"] <= seen["end_ns"]), "index"
    ]
    still_open = opened.drop(index=covered.unique()).drop(columns="direction")
    last = pd.concat(
        [p[["node", "ts_ns"]] for p in probes.values() if len(p)] or [pd.DataFrame(columns=["node", "ts_ns"])]
    )
    ends = pd.Series(stop_ns, dtype="float64").combine_first(last.groupby("node")["ts_ns"].max().astype("float64"))
    still_open = still_open.assign(end_ns=still_open["node"].map(ends).fillna(still_open["start_ns"]), closed=False)
    obs = pd.concat([closed, still_open], ignore_index=True).astype({"start_ns": "int64", "end_ns": "int64"})
    obs = obs.merge(opened[tuple_cols + ["direction"]].drop_duplicates(tuple_cols), on=tuple_cols, how="left")
    local = book.endpoints(obs["saddr"], obs["sport"], obs["node"])
    remote = book.endpoints(obs["daddr"], obs["dport"], obs["node"])
    obs["key"], obs["local_ep"], obs["remote_ep"] = pair_key(local, remote), local, remote
    return obs


def seen_only(obs: pd.DataFrame, records: list[pd.DataFrame]) -> pd.DataFrame:
    """Connections that neither opened nor closed while the probes ran (e.g. a pooled database
    connection from before the run) but carried packets or RTT windows: one observation per
    node from the first to the last record."""
    seen = pd.concat(
        [r[["node", "key", "ts_ns", "saddr", "sport", "daddr", "dport"]] for r in records if len(r)]
        or [pd.DataFrame(columns=["node", "key", "ts_ns", "saddr", "sport", "daddr", "dport"])]
    )
    seen = seen[~seen["key"].isin(obs["key"])]
    out = seen.groupby(["node", "key"], as_index=False).agg(
        start_ns=("ts_ns", "min"),
        end_ns=("ts_ns", "max"),
        saddr=("saddr", "first"),
        sport=("sport", "first"),
        daddr=("daddr", "first"),
        dport=("dport", "first"),
    )
    return out.astype(
        {"key": "int64", "start_ns": "int64", "end_ns": "int64", "sport": "int64", "dport": "int64"}
    ).assign(closed=False, direction="seen")


def connections(obs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group observations of the same connection (same key, overlapping lifetimes): (obs with conn_id, conns)."""
    obs = obs.sort_values(["key", "start_ns"]).reset_index(drop=True)
    reach = obs.groupby("key")["end_ns"].cummax().groupby(obs["key"]).shift()
    obs["conn_id"] = (reach.isna() | (obs["start_ns"] > reach + SLACK_NS)).cumsum() - 1
    obs["bytes"] = obs["tx_bytes"] + obs["rx_bytes"]
    obs["seen"] = obs["direction"] == "seen"
    conns = obs.groupby("conn_id").agg(
        key=("key", "first"),
        start_ns=("start_ns", "min"),
        end_ns=("end_ns", "max"),
        closed=("closed", "all"),
        bytes=("bytes", "max"),
        observations=("node", "size"),
        node=("node", "first"),
        before_run=("seen", "all"),
    )
    conns["lifetime_ns"] = conns["end_ns"] - conns["start_ns"]
    return obs, conns.reset_index()


def call_conns(events: pd.DataFrame, book: Codebook) -> pd.DataFrame:
    """Every (call, TCP connection) a telemetry event names in `conns` (or `local`/`remote`
    when it has no list), with the event's interval."""
    nested = pa.array(events["conns"], type=pa.list_(pa.list_(pa.string())), from_pandas=True)
    inner = pc.list_flatten(nested)
    listed = pd.DataFrame(
        {
            "_event": pc.list_parent_indices(nested).to_numpy(),
            "local": pc.list_element(inner, 0).to_numpy(zero_copy_only=False),
            "remote": pc.list_element(inner, 1).to_numpy(zero_copy_only=False),
        }
    )
    bare = np.flatnonzero(pc.fill_null(pc.list_value_length(nested), 0).to_numpy() == 0)
    single = pd.DataFrame(
        {"_event": bare, "local": events["local"].to_numpy()[bare], "remote": events["remote"].to_numpy()[bare]}
    )
    pairs = pd.concat([listed, single], ignore_index=True).dropna()
    pairs = pairs[~pairs["local"].str.startswith("unix:")]
    meta = events[["call_id", "side", "node_dir", "start_ns", "end_ns"]].reset_index(drop=True)
    rows = meta.iloc[pairs["_event"].to_numpy()].reset_index(drop=True)
    (laddr, lport), (raddr, rport) = _split(pairs["local"]), _split(pairs["remote"])
    local_ep = book.endpoints(laddr, lport, rows["node_dir"])
    remote_ep = book.endpoints(raddr, rport, rows["node_dir"])
    return rows.assign(
        key=pair_key(local_ep, remote_ep), server_ep=np.where(rows["side"] == "client", remote_ep, local_ep)
    )


def _split(endpoint: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = endpoint.reset_index(drop=True).str.rsplit(":", n=1)
    return parts.str[0].str.strip("[]"), pd.to_numeric(parts.str[1], errors="coerce").fillna(0).astype(np.int64)


def match_calls(conns: pd.DataFrame, cc: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    """(call_id, conn_id) for every call that used a connection while it was alive."""
    pairs = cc.merge(conns[["conn_id", "key", "start_ns", "end_ns"]], on="key", suffixes=("", "_conn"))
    alive = (pairs["start_ns_conn"] - SLACK_NS <= pairs["end_ns"]) & (
        pairs["start_ns"] <= pairs["end_ns_conn"] + SLACK_NS
    )
    pairs = pairs.loc[alive, ["call_id", "conn_id", "server_ep"]].drop_duplicates(["call_id", "conn_id"])
    return pairs.merge(calls[["call_id", "trace_id", "start_ns", "kind"]], on="call_id", how="left")


def own(conns: pd.DataFrame, used: pd.DataFrame, lab_endpoints: np.ndarray) -> pd.DataFrame:
    """Each connection's owner (its first call), task, hop kind and, if unmatched, why. `lab` marks the
    connections opened during the run with a lab server endpoint: the denominator of the matched share
    (a leftover of an earlier run, seen only closing or idling, is labelled but not counted)."""
    first = used.sort_values("start_ns").drop_duplicates("conn_id")
    conns = conns.merge(first[["conn_id", "call_id", "trace_id", "kind"]], on="conn_id", how="left")
    conns["hop"] = hop_kind(conns["kind"])
    conns["calls"] = conns["conn_id"].map(used.groupby("conn_id").size()).fillna(0).astype(np.int64)
    low, high = conns["key"].to_numpy() >> 31, conns["key"].to_numpy() & ((1 << 31) - 1)
    lab = np.isin(low, lab_endpoints) | np.isin(high, lab_endpoints)
    ssh = ((low & 0xFFFF) == SSH_PORT) | ((high & 0xFFFF) == SSH_PORT)
    conns["lab"] = lab & ~conns["before_run"]
    conns["label"] = np.select(
        [conns["call_id"].notna(), conns["before_run"], lab, ssh],
        ["matched", "unmatched: opened before the run", "unmatched: lab service port, no call", "unmatched: ssh"],
        "unmatched: other",
    )
    return conns.drop(columns="kind")


# --- per-record attribution -----------------------------------------------------------------


def attribute(frame: pd.DataFrame, conns: pd.DataFrame, cc: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    """Add conn_id, call_id (`in_call`: inside that call's interval, else the owner), trace_id and hop
    to records that have `key` and `ts_ns`; the input order is kept."""
    frame = frame.assign(_row=np.arange(len(frame))).sort_values("ts_ns")
    probe = frame[["_row", "key", "ts_ns"]].assign(_at=frame["ts_ns"] + SLACK_NS)
    live = conns[["conn_id", "key", "start_ns", "end_ns", "call_id"]].rename(columns={"call_id": "owner"})
    hit = pd.merge_asof(probe, live.sort_values("start_ns"), left_on="_at", right_on="start_ns", by="key")
    hit.loc[hit["ts_ns"] > hit["end_ns"] + SLACK_NS, ["conn_id", "owner"]] = np.nan
    spans = cc.groupby(["key", "call_id"], as_index=False).agg(start_ns=("start_ns", "min"), end_ns=("end_ns", "max"))
    inside = pd.merge_asof(probe, spans.sort_values("start_ns"), left_on="ts_ns", right_on="start_ns", by="key")
    in_call = inside["call_id"].notna() & (inside["ts_ns"] <= inside["end_ns"]) & hit["conn_id"].notna()
    call_id = inside["call_id"].where(in_call, hit["owner"])
    out = frame.drop(columns=[c for c in ("conn_id", "call_id", "in_call", "trace_id", "hop") if c in frame])
    out = out.assign(conn_id=hit["conn_id"].to_numpy(), call_id=call_id.to_numpy(), in_call=in_call.to_numpy())
    info = calls.set_index("call_id")
    out["trace_id"] = out["call_id"].map(info["trace_id"])
    out["hop"] = hop_kind(out["call_id"].map(info["kind"]))
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def keyed(frame: pd.DataFrame, book: Codebook) -> pd.DataFrame:
    local = book.endpoints(frame["saddr"], frame["sport"], frame["node"])
    remote = book.endpoints(frame["daddr"], frame["dport"], frame["node"])
    return frame.assign(key=pair_key(local, remote))


def dedupe_packets(packets: pd.DataFrame) -> pd.DataFrame:
    """A packet between two observed nodes is captured at both: keep the first node's copy."""
    if packets["node"].nunique() < 2:
        return packets
    fields = ["key", "sport", "dport", "seq", "ack", "flags", "payload", "ip_id"]
    first_node = packets.groupby(fields, sort=False)["node"].transform("first")
    return packets[packets["node"] == first_node].reset_index(drop=True)


@dataclass
class Joined:
    calls: pd.DataFrame
    tasks: pd.DataFrame
    flows: pd.DataFrame  # connection ends, with conn_id
    conns: pd.DataFrame  # connections, with owner call, task, hop, label
    used: pd.DataFrame  # (call_id, conn_id, server_ep, trace_id, ...) every call that used a connection
    packets: pd.DataFrame
    rtt: pd.DataFrame
    retrans: pd.DataFrame


def join(data: RunData, scenario: str) -> Joined:
    book = Codebook()
    calls = calls_table(data.events)
    tasks = tasks_table(calls, data.results, scenario)
    obs = flow_observations(data.probes, data.probe_stop_ns, book)
    packets = dedupe_packets(keyed(data.packets, book))
    rtt, retrans = keyed(data.probes["rtt"], book), keyed(data.probes["retrans"], book)
    flows, conns = connections(pd.concat([obs, seen_only(obs, [packets, rtt])], ignore_index=True))
    cc = call_conns(data.events, book)
    used = match_calls(conns, cc, calls)
    conns = own(conns, used, np.unique(cc["server_ep"].to_numpy()))
    packets = attribute(packets, conns, cc, calls)
    conns["packets"] = conns["conn_id"].map(packets.groupby("conn_id").size()).fillna(0).astype(np.int64)
    conns["bytes"] = conns["bytes"].fillna(conns["conn_id"].map(packets.groupby("conn_id")["payload"].sum()))
    return Joined(
        calls,
        tasks,
        flows,
        conns,
        used,
        packets,
        attribute(rtt, conns, cc, calls),
        attribute(retrans, conns, cc, calls),
    )
