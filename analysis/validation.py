"""What a reader needs before trusting a run's numbers, checked in every report: the probes'
connections against the handshakes in the packet capture (per hop kind), what the probes
lost, and the clocks' error against the window the joins allow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from analysis.join import SLACK_NS
from analysis.pcap import ACK, SYN
from analysis.rundir import CONTROLLER
from lab.runlayout import Conditions

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis
    from analysis.rundir import RunDir


def handshakes(result: RunAnalysis) -> pd.DataFrame:
    """Per hop kind: the connections the probes saw open during the run, the distinct connections whose
    SYN (without ACK) the captures hold, and the share of those SYNs that joined a probe connection."""
    conns, packets = result.joined.conns, result.joined.packets
    opened = conns[~conns["before_run"]]
    syn = packets[(packets["flags"] & (SYN | ACK)) == SYN]
    syn = syn.drop_duplicates(["key", "conn_id"])  # a retransmitted SYN is the same handshake
    joined = syn["conn_id"].isin(opened["conn_id"])
    out = pd.DataFrame(
        {
            "connections (probes)": opened.groupby("hop").size(),
            "handshakes (capture)": syn.groupby("hop").size(),
            "handshakes joined to a probe connection": syn[joined].groupby("hop").size(),
        }
    )
    out = out.fillna(0).astype("int64")
    out.loc["all"] = out.sum()
    out["share joined"] = (out["handshakes joined to a probe connection"] / out["handshakes (capture)"]).map(
        lambda share: f"{share:.1%}" if pd.notna(share) else "–"
    )
    out.index.name = "hop kind"
    return out


def probe_losses(run: RunDir) -> pd.DataFrame:
    """Per node and probe: its state at the stop, records written, records lost (a full buffer, or a
    full disk), values out of range, output the node could not write; a probe that never started,
    failed or could not write says why."""
    rows = [
        {
            "node": node,
            "probe": name,
            "state": str(probe.state),
            "records": probe.records,
            "lost": probe.lost,
            "invalid values": probe.invalid_values,
            "unwritten bytes": probe.unwritten_bytes,
            "error": probe.error or "",
        }
        for node, probes in sorted(run.manifest.probes.items())
        for name, probe in sorted(probes.items())
    ]
    return pd.DataFrame(
        rows, columns=["node", "probe", "state", "records", "lost", "invalid values", "unwritten bytes", "error"]
    )


def clock_budget(run: RunDir) -> pd.DataFrame:
    """Per node: the offset to the controller at the start and the end, the drift between them, and the
    error of the timestamps moved to the controller's clock (the larger uncertainty: offsets are
    interpolated between the two measurements) against the join window."""
    rows = []
    for node, measured in sorted(run.manifest.clock_offsets.items()):
        start, end = measured.get("start"), measured.get("end")
        known = [m.uncertainty_ns for m in (start, end) if m is not None]
        error = max(known) if known else None
        drift = end.offset_ns - start.offset_ns if start and end else None
        rows.append(
            {
                "node": node,
                "offset at start (µs)": _us(start.offset_ns if start else None),
                "offset at end (µs)": _us(end.offset_ns if end else None),
                "drift (µs)": _us(drift),
                "timestamp error (µs)": _us(error),
                "within the join window": "unknown"
                if error is None
                else ("yes" if error < SLACK_NS / 2 else f"no: over half of the {SLACK_NS / 1e6:.0f} ms window"),
            }
        )
    return pd.DataFrame(rows)


STEAL_WARN = 0.02  # steal above this share of CPU time: the hypervisor delayed the node often enough to show in timing
BUSY_WARN = 0.9  # a node this busy queues its own work: latency includes waiting for a CPU


def conditions(run: RunDir) -> pd.DataFrame:
    """Per node and the controller's host, between the probes' start and the end of the tasks: the share
    of CPU time busy and stolen (from /proc/stat), CPUs, load, and the lab interface's offloads at the
    start; for VMs, the vCPUs given to the nodes over the host's CPUs (overcommit)."""
    rows = []
    for node, measured in sorted(run.manifest.conditions.items()):
        start, end = measured.get("start") or Conditions(), measured.get("end") or Conditions()
        spent = {k: end.cpu[k] - start.cpu[k] for k in start.cpu} if end.cpu else {}
        total = sum(spent.values())
        rows.append(
            {
                "node": node,
                "CPUs": start.cpus,
                "busy": 1 - (spent["idle"] + spent["iowait"]) / total if total else None,
                "steal": spent["steal"] / total if total else None,
                "load (1 min) at start": start.loadavg,
                "load (1 min) at end": end.loadavg,
                "offloads (GSO/TSO/GRO)": "/".join(start.offload.get(k, "–") for k in ("gso", "tso", "gro")) or "–",
            }
        )
    return pd.DataFrame(rows)


def overcommit(run: RunDir) -> float | None:
    """VMs only: the nodes' vCPUs over the controller host's CPUs (containers share the host's)."""
    host = run.manifest.conditions.get(CONTROLLER, {}).get("start")
    nodes = run.manifest.lab.get("nodes") or []
    if run.manifest.provider != "libvirt" or host is None or not host.cpus:
        return None
    return sum(n.get("vcpus", 1) for n in nodes) / host.cpus


def _us(ns: float | None) -> str:
    return "–" if ns is None else f"{ns / 1000:.1f}"


@dataclass(frozen=True)
class Checks:
    """One run's validation, each table computed once for the report and its warnings."""

    handshakes: pd.DataFrame
    losses: pd.DataFrame
    clocks: pd.DataFrame
    hosts: pd.DataFrame
    overcommit: float | None

    def warnings(self) -> list[str]:
        """The findings a reader must see before the numbers."""
        found = []
        checked = self.handshakes.loc["all"]
        if (
            checked["handshakes (capture)"]
            and checked["handshakes joined to a probe connection"] < 0.99 * checked["handshakes (capture)"]
        ):
            found.append(f"only {checked['share joined']} of the captured handshakes joined a probe connection")
        lost = pd.to_numeric(self.losses["lost"], errors="coerce").fillna(0).sum()
        if lost:
            found.append(f"the probes lost {lost:.0f} record(s) (see the table)")
        failed = self.losses[self.losses["state"] != "stopped"].groupby(["node", "state"])["probe"].agg(", ".join)
        found += [
            f"on {node} the probes ended {state}, not stopped: {names}" for (node, state), names in failed.items()
        ]
        hosts = self.hosts.to_dict("records")
        found += [
            f"{c['node']}: {c['steal']:.1%} of CPU time stolen by the hypervisor during the run: "
            "timing may be distorted"
            for c in hosts
            if c["steal"] is not None and c["steal"] > STEAL_WARN
        ]
        found += [
            f"{c['node']}: CPU {c['busy']:.0%} busy during the run: latencies include waiting for a CPU"
            for c in hosts
            if c["busy"] is not None and c["busy"] > BUSY_WARN
        ]
        if self.overcommit is not None and self.overcommit > 1:
            found.append(f"the VMs have {self.overcommit:.1f}x the host's CPUs: they compete for them")
        if len(self.clocks):
            late = self.clocks.loc[self.clocks["within the join window"] != "yes", "node"]
            found += [f"the clock of {node} is not known within the join window" for node in late]
        return found


def check(result: RunAnalysis) -> Checks:
    run = result.run
    return Checks(handshakes(result), probe_losses(run), clock_budget(run), conditions(run), overcommit(run))
