"""Speed of the analysis on a synthetic run of a million probe records (speed only: the
records are well-formed and mutually consistent, not measured):

    .venv/bin/python benchmarks/analysis_loader.py [--records 1000000] [--packets 1000000]

Prints records/s of the loader (JSONL -> tables, clock offsets applied), the time of the
joins and metrics on top, and packets/s of the pcap reader.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import load_run
from analysis.pcap import read_pcap
from analysis.pipeline import analyse
from analysis.rundir import open_run

CALLS_PER_TASK = 5
START = 1_800_000_000_000_000_000
CLIENT, SERVER = "10.77.0.11", "10.77.0.12"
KINDS = ["task", "llm", "tool", "agent", "db"]


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_json(path, orient="records", lines=True)


def make_run(root: Path, records: int) -> Path:
    """Tasks of five calls, each on its own connection; probe records split: 10 % lifetime,
    10 % connect, 10 % state, 70 % RTT samples."""
    flows = records // 10
    tasks = flows // CALLS_PER_TASK
    run = root / "bench-run"
    probes = run / "nodes" / "agent-a" / "probes"
    i = np.arange(flows)
    start = START + i * 2_000_000  # one new connection every 2 ms, 1 ms long
    end = start + 1_000_000
    sport = 20000 + i % 40000
    dport = 8000 + (i % CALLS_PER_TASK)
    base = {"node": "agent-a", "run_id": "bench", "saddr": CLIENT, "sport": sport, "daddr": SERVER, "dport": dport}
    _write(
        probes / "lifetime.jsonl",
        pd.DataFrame(
            {
                "ts_ns": end,
                **base,
                "probe": "lifetime",
                "pid": 1,
                "comm": "python",
                "tx_bytes": 500 + i % 700,
                "rx_bytes": 4000 + i % 9000,
                "duration_ns": end - start,
                "start_ns": start,
            }
        ),
    )
    _write(
        probes / "connect.jsonl",
        pd.DataFrame(
            {"ts_ns": start + 50_000, **base, "probe": "connect", "direction": "connect", "pid": 1, "comm": "python"}
        ),
    )
    _write(
        probes / "state.jsonl",
        pd.DataFrame({"ts_ns": start, **base, "probe": "state", "oldstate": "CLOSE", "newstate": "SYN_SENT"}),
    )
    rtt_n = records - 3 * flows
    j = np.arange(rtt_n) % flows
    _write(
        probes / "rtt.jsonl",
        pd.DataFrame(
            {
                "ts_ns": start[j] + 100_000 + (np.arange(rtt_n) // flows) * 1000,
                "node": "agent-a",
                "run_id": "bench",
                "probe": "rtt",
                "saddr": CLIENT,
                "sport": sport[j],
                "daddr": SERVER,
                "dport": dport[j],
                "srtt_us": 50 + np.arange(rtt_n) % 5000,
                "snd_cwnd": 10,
            }
        ),
    )
    trace = np.char.add("t", (i // CALLS_PER_TASK).astype(str))
    call_id = np.char.add("c", i.astype(str))
    parent = np.where(i % CALLS_PER_TASK == 0, None, np.char.add("c", (i - i % CALLS_PER_TASK).astype(str)))
    local = np.char.add(CLIENT + ":", sport.astype(str))
    remote = np.char.add(SERVER + ":", dport.astype(str))
    events = pd.DataFrame(
        {
            "event": "call",
            "node": "agent-a",
            "service": "svc",
            "agent_id": None,
            "task_id": trace,
            "call_id": call_id,
            "parent_id": parent,
            "trace_id": trace,
            "kind": np.array(KINDS)[i % CALLS_PER_TASK],
            "side": "client",
            "peer": "p",
            "op": "op",
            "start_ns": start + 10_000,
            "end_ns": end - 10_000,
            "req_bytes": 100,
            "resp_bytes": 1000,
            "status": "ok",
            "error": None,
            "local": local,
            "remote": remote,
            "conns": [[[here, there]] for here, there in zip(local, remote, strict=True)],
        }
    )
    _write(run / "nodes" / "agent-a" / "telemetry" / "svc.jsonl", events)
    roots = events[i % CALLS_PER_TASK == 0]
    _write(
        run / "results.jsonl",
        pd.DataFrame(
            {
                "task_id": roots["task_id"],
                "scenario": "bench",
                "ok": True,
                "answer": "x",
                "error": None,
                "start_ns": roots["start_ns"],
                "end_ns": roots["end_ns"],
                "call_id": roots["call_id"],
                "repetition": 0,
                "warmup": False,
            }
        ),
    )
    offsets = {"start": {"offset_ns": 1000, "uncertainty_ns": 10}, "end": {"offset_ns": 3000, "uncertainty_ns": 10}}
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "run_id": "bench",
                "scenario": {"name": "bench"},
                "started_at_ns": int(start[0]),
                "ended_at_ns": int(end[-1]),
                "clock_offsets": {"agent-a": offsets},
            }
        )
    )
    assert tasks == len(roots)
    return run


def make_pcap(path: Path, packets: int) -> None:
    """Ethernet/IPv4/TCP headers, 66 bytes captured per packet, varying payload length."""
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)
    frame = (
        bytes(12)
        + b"\x08\x00"
        + bytes.fromhex("45000034000040004006")
        + bytes(2)
        + bytes([10, 77, 0, 11, 10, 77, 0, 12])
    )
    frame += struct.pack(">HHIIBBHHH", 40000, 8000, 1, 1, 0x80, 0x18, 500, 0, 0) + bytes(12)
    record = np.frombuffer(struct.pack("<IIII", 1_800_000_000, 0, len(frame), len(frame) + 100) + frame, np.uint8)
    body = np.tile(record, packets).reshape(packets, -1)
    body[:, 4:8] = np.frombuffer((np.arange(packets, dtype="<u4") % 1_000_000).tobytes(), np.uint8).reshape(-1, 4)
    path.write_bytes(header + body.tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/analysis_loader.py")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--packets", type=int, default=1_000_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="analysis-bench-"))
    try:
        made = time.perf_counter()
        run = make_run(root, args.records)
        size = sum(p.stat().st_size for p in run.rglob("*.jsonl"))
        print(
            f"synthetic run: {args.records:,} probe records + {args.records // 10:,} telemetry events, "
            f"{size / 1e6:.0f} MB of JSONL (made in {time.perf_counter() - made:.1f} s)"
        )
        began = time.perf_counter()
        data = load_run(open_run(run))
        loaded = time.perf_counter() - began
        count = sum(len(frame) for frame in data.probes.values())
        assert count == args.records, count
        print(
            f"loader: {count:,} probe records in {loaded:.2f} s = {count / loaded:,.0f} records/s "
            f"({size / 1e6 / loaded:.0f} MB/s)"
        )
        began = time.perf_counter()
        result = analyse(run)
        total = time.perf_counter() - began
        print(
            f"load + join + metrics (no plots): {total:.2f} s; {result.summary['tasks']:.0f} tasks, "
            f"{len(result.joined.conns):,} connections, {result.summary['matched_lab_flows']:.1%} joined to calls"
        )
        pcap = root / "bench.pcap"
        make_pcap(pcap, args.packets)
        began = time.perf_counter()
        capture = read_pcap(pcap.read_bytes())
        took = time.perf_counter() - began
        print(
            f"pcap reader: {len(capture.packets):,} packets in {took:.2f} s = "
            f"{len(capture.packets) / took:,.0f} packets/s"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
