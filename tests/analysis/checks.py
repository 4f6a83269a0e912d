"""Checks of an analysed run shared by the loopback runs and the controller's runs on the lab."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scapy.all import TCP, PcapReader

from analysis.pipeline import RunAnalysis
from workload.tasks import KINDS

DB_TOOLS = ("get_order", "get_customer", "get_shipment")
HANDSHAKE_TOLERANCE = 0.01  # probe connections vs SYNs in the capture: within 1 % (at least 1)


def hops_per_task(result: RunAnalysis) -> pd.DataFrame:
    """Connections of each measured task by hop kind."""
    used = result.joined.used.merge(result.joined.conns[["conn_id", "hop"]], on="conn_id")
    counted = result.per_task.loc[~result.per_task["warmup"], "trace_id"]
    used = used[used["trace_id"].isin(counted)].drop_duplicates(["trace_id", "conn_id"])
    return pd.crosstab(used["trace_id"], used["hop"]).reindex(counted, fill_value=0)


def handshakes(pcaps: list[Path]) -> int:
    """Independent count: distinct 4-tuples of SYN (without ACK) segments in the captures, read with scapy.
    A connection between two nodes is captured on both; the set counts it once."""
    syns = set()
    for pcap in pcaps:
        with PcapReader(str(pcap)) as packets:
            for packet in packets:
                if TCP in packet and packet[TCP].flags & 0x12 == 0x02:
                    syns.add((packet.payload.src, packet[TCP].sport, packet.payload.dst, packet[TCP].dport))
    return len(syns)


def opened_connections(result: RunAnalysis) -> int:
    """Connections the probes saw opened during the run (not ones that existed before it)."""
    flows = result.joined.flows
    return flows.loc[flows["direction"].fillna("") != "seen", "conn_id"].nunique()


def assert_baseline_matches_the_call_graph(result: RunAnalysis) -> None:
    """The baseline runs each task's minimal plan (workload/baseline.py): one connection from the
    driver, and for each planned call a service connection (pooled: calls one after another may share
    one) and, for the database tools, a database connection."""
    assert result.per_task["ok"].all()
    hops = hops_per_task(result)
    kinds = result.per_task.set_index("trace_id")["task_kind"]
    for trace, row in hops.iterrows():
        kind = kinds[trace]
        plan = [tool for step in KINDS[kind].plan for tool in step] + (
            ["get_order"] if kind == "compare_totals" else []
        )
        queries = sum(tool in DB_TOOLS for tool in plan)
        assert row["client→entry"] == 1, (trace, row)
        assert 1 <= row["→db"] <= queries, (trace, kind, row)
        if len(plan) == 1:  # one lookup: one service connection, one database connection
            assert row["service→service"] == 1 and row["→db"] == 1, (trace, kind, row)
        else:
            assert row["service→service"] >= 1, (trace, kind, row)


def assert_flows_agree_with_handshakes(result: RunAnalysis, pcaps: list[Path]) -> None:
    opened, counted = opened_connections(result), handshakes(pcaps)
    assert counted > 0
    assert abs(opened - counted) <= max(1, HANDSHAKE_TOLERANCE * counted), (opened, counted)


def assert_every_agentic_task_has_an_llm_flow(result: RunAnalysis, multihop: bool) -> None:
    hops = hops_per_task(result).reindex(columns=["agent→llm", "agent→agent"], fill_value=0)
    assert len(hops) > 0
    assert (hops["agent→llm"] >= 1).all(), hops
    if multihop:  # a task's hand-offs each used an agent→agent connection; its tool calls agent→tool ones
        handed = result.per_task.set_index("trace_id").loc[hops.index, "delegations"].fillna(0) > 0
        assert (hops.loc[handed, "agent→agent"] >= 1).all(), hops
