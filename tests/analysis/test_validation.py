"""The checks every report carries, on hand-built tables and manifests with known answers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis import validation
from analysis.pcap import ACK, SYN
from analysis.rundir import RunDir
from lab.runlayout import Manifest


def result(conns: pd.DataFrame, packets: pd.DataFrame, manifest: dict) -> SimpleNamespace:
    joined = SimpleNamespace(conns=conns, packets=packets)
    return SimpleNamespace(joined=joined, run=RunDir(Path("run"), Manifest.model_validate(manifest)))


CONNS = pd.DataFrame(
    {"conn_id": [0, 1, 2], "hop": ["agent→llm", "agent→tool", "unmatched"], "before_run": [False, False, True]}
)
MANIFEST = {
    "probes": {"agent-a": {"rtt": {"state": "stopped", "records": 10, "lost": 0, "invalid_values": 0}}},
    "clock_offsets": {
        "agent-a": {
            "start": {"offset_ns": -1000, "uncertainty_ns": 50_000},
            "end": {"offset_ns": 3000, "uncertainty_ns": 80_000},
        }
    },
}


def test_every_handshake_joined_to_a_probe_connection_is_counted_once_per_hop() -> None:
    packets = pd.DataFrame(
        {
            "key": [1, 1, 1, 2, 3],
            "conn_id": [0, 0, 0, 1, None],
            "hop": ["agent→llm", "agent→llm", "agent→llm", "agent→tool", "unmatched"],
            "flags": [SYN, SYN, SYN | ACK, SYN, SYN],  # a retransmitted SYN, the SYN-ACK, a SYN the probes missed
        }
    )
    checked = validation.handshakes(result(CONNS, packets, MANIFEST))
    assert checked.loc["agent→llm"].tolist() == [1, 1, 1, "100.0%"]
    assert checked.loc["all"].tolist() == [2, 3, 2, "66.7%"]
    assert "only 66.7% of the captured handshakes" in validation.check(result(CONNS, packets, MANIFEST)).warnings()[0]


def test_losses_failed_probes_and_clocks_outside_the_join_window_are_warned_about() -> None:
    packets = pd.DataFrame({"key": [1], "conn_id": [0], "hop": ["agent→llm"], "flags": [SYN]})
    assert validation.check(result(CONNS, packets, MANIFEST)).warnings() == []
    clocks = validation.clock_budget(RunDir(Path("run"), Manifest.model_validate(MANIFEST))).iloc[0]
    assert (clocks["drift (µs)"], clocks["timestamp error (µs)"], clocks["within the join window"]) == (
        "4.0",
        "80.0",
        "yes",
    )
    bad = {
        "probes": {
            "agent-a": {
                "rtt": {"state": "stopped", "records": 10, "lost": 7},
                "pcap:lo": {"state": "failed", "error": "tcpdump exited 1"},
            }
        },
        "clock_offsets": {"llm": {"start": {"offset_ns": 0, "uncertainty_ns": 9_000_000}}},
    }
    found = validation.check(result(CONNS, packets, bad)).warnings()
    assert "the probes lost 7 record(s) (see the table)" in found
    assert "on agent-a the probes ended failed, not stopped: pcap:lo" in found
    assert "the clock of llm is not known within the join window" in found


def test_cpu_steal_saturation_and_overcommit_are_warned_about() -> None:
    def cpu(idle: int, steal: int, busy: int) -> dict:
        return {"user": busy, "nice": 0, "system": 0, "idle": idle, "iowait": 0, "irq": 0, "softirq": 0, "steal": steal}

    offload = {"gso": "on", "tso": "on", "gro": "off"}
    manifest = {
        **MANIFEST,
        "provider": "libvirt",
        "lab": {"nodes": [{"vcpus": 2}, {"vcpus": 2}, {"vcpus": 1}]},
        "conditions": {
            "agent-a": {
                "start": {"cpu": cpu(0, 0, 0), "cpus": 2, "offload": offload},
                "end": {"cpu": cpu(900, 50, 50)},
            },
            "llm": {"start": {"cpu": cpu(0, 0, 0), "cpus": 1}, "end": {"cpu": cpu(40, 0, 960)}},
            "controller": {"start": {"cpu": cpu(0, 0, 0), "cpus": 2}, "end": {"cpu": cpu(1000, 0, 0)}},
        },
    }
    table = validation.conditions(RunDir(Path("run"), Manifest.model_validate(manifest))).set_index("node")
    assert table.loc["agent-a", "steal"] == 0.05 and table.loc["agent-a", "busy"] == pytest.approx(0.1)
    assert table.loc["agent-a", "offloads (GSO/TSO/GRO)"] == "on/on/off"
    packets = pd.DataFrame({"key": [1], "conn_id": [0], "hop": ["agent→llm"], "flags": [SYN]})
    found = validation.check(result(CONNS, packets, manifest)).warnings()
    assert found == [
        "agent-a: 5.0% of CPU time stolen by the hypervisor during the run: timing may be distorted",
        "llm: CPU 96% busy during the run: latencies include waiting for a CPU",
        "the VMs have 2.5x the host's CPUs: they compete for them",
    ]
