"""Checks of an analysed run shared by the loopback runs and the controller's runs on the lab."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scapy.all import TCP, PcapReader

from analysis.pipeline import RunAnalysis

# The baseline's fixed call graph: every task makes exactly these hops, each over its own connection.
BASELINE_HOPS = {
    "client→entry": 1,
    "service→service": 2,
    "→db": 2,
}  # driver→gateway; gateway→order, order→shipping; 2 queries
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
    assert result.per_task["ok"].all()
    assert (result.per_task["flows"] == sum(BASELINE_HOPS.values())).all(), result.per_task[["task_id", "flows"]]
    hops = hops_per_task(result)
    assert hops.loc[:, list(BASELINE_HOPS)].eq(pd.Series(BASELINE_HOPS)).all().all(), hops


def assert_flows_agree_with_handshakes(result: RunAnalysis, pcaps: list[Path]) -> None:
    opened, counted = opened_connections(result), handshakes(pcaps)
    assert counted > 0
    assert abs(opened - counted) <= max(1, HANDSHAKE_TOLERANCE * counted), (opened, counted)


def assert_every_agentic_task_has_an_llm_flow(result: RunAnalysis, multihop: bool) -> None:
    hops = hops_per_task(result)
    assert len(hops) > 0
    assert (hops["agent→llm"] >= 1).all(), hops
    if multihop:
        assert (hops["agent→agent"] >= 1).all() and (hops["agent→tool"] >= 2).all(), hops
