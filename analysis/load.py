"""Every file of a run into pandas tables, with node clocks brought to the controller's.

`offset_ns = node clock - controller clock` (manifest `clock_offsets`), interpolated
linearly between the measurements at start and end when both exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.jsonl import PROBE_SCHEMAS, RESULTS_SCHEMA, TELEMETRY_SCHEMA, read_jsonl
from analysis.pcap import PcapError, empty_packets, read_pcap
from analysis.rundir import CONTROLLER, RunDir
from lab import runlayout

PROBES = tuple(PROBE_SCHEMAS)
EVENTS_SCHEMA = TELEMETRY_SCHEMA.append(pa.field("node_dir", pa.string()))  # where each event was found
TIME_COLUMNS = {"lifetime": ("ts_ns", "start_ns"), "rtt": ("ts_ns", "first_ns"), "telemetry": ("start_ns", "end_ns")}


@dataclass
class RunData:
    """The raw tables of one run, times in controller nanoseconds."""

    results: pd.DataFrame
    events: pd.DataFrame  # telemetry, one row per call per side; column `node_dir` says where it was found
    probes: dict[str, pd.DataFrame]  # lifetime, state, connect, rtt, retrans; column `node`
    packets: pd.DataFrame  # every node's captures; columns `node`, `iface`
    probe_stop_ns: dict[str, int] = field(default_factory=dict)  # per node, when its probes stopped


def load_run(run: RunDir) -> RunData:
    nodes = run.nodes()
    if not nodes:
        run.note(f"{runlayout.NODES}/", "no node directories: no probe data, no service telemetry")
    status = {node: _status(run, node) for node in nodes}
    unknown = [n for n in nodes if n not in run.manifest.clock_offsets]
    if unknown:
        run.note(runlayout.MANIFEST, f"no clock offset for {', '.join(unknown)}: their times are used as recorded")
    probes = {
        probe: _concat([_probe(run, node, probe, status[node]) for node in nodes], PROBE_SCHEMAS[probe])
        for probe in PROBES
    }
    events = load_events(run, nodes)
    results = read_jsonl(runlayout.results_path(run.path), RESULTS_SCHEMA, run).to_pandas()
    packets = pd.concat(
        [_packets(run, node) for node in nodes] or [_with_node(empty_packets(), "", "")], ignore_index=True
    )
    stops = {
        node: s["stopped_at_ns"] - _offset(run, node, np.array([s["stopped_at_ns"]]))[0]
        for node, s in status.items()
        if s.get("stopped_at_ns")
    }
    return RunData(results, events, probes, packets, stops)


def load_events(run: RunDir, nodes: list[str] | None = None) -> pd.DataFrame:
    """Every telemetry event of the run, the driver's and each node's services' (`nodes`: every node by
    default), times on the controller's clock; column `node_dir` says where each was found."""
    events = [_events(run, runlayout.driver_telemetry(run.path), CONTROLLER)]
    for node in run.nodes() if nodes is None else nodes:
        events.extend(_events(run, path, node) for path in runlayout.node_telemetry_files(run.path, node))
    return _concat(events, EVENTS_SCHEMA)


def _concat(frames: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return schema.empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def _status(run: RunDir, node: str) -> dict:
    path = runlayout.status_file(run.path, node)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        run.note(run.rel(path), "missing: probe states unknown")
    except (json.JSONDecodeError, UnicodeDecodeError):
        run.note(run.rel(path), "unreadable")
    return {}


def _probe(run: RunDir, node: str, probe: str, status: dict) -> pd.DataFrame:
    path = runlayout.probe_file(run.path, node, probe)
    listed = status.get("probes") or run.manifest.probes.get(node, {})
    if not path.exists() and listed and probe not in listed:
        return pd.DataFrame()  # not one of the run's probes (its scenario's `probes`)
    state = (status.get("probes") or {}).get(probe) or _summary(run, node, probe)
    if not path.exists() and state.get("state") == "unavailable":
        run.note(run.rel(path), f"probe unavailable on {node}: {state.get('unavailable_reason') or state.get('error')}")
        return pd.DataFrame()
    if state.get("state") in ("failed", "exited"):
        run.note(run.rel(path), f"probe {state['state']} on {node}: {state.get('attach_error') or state.get('error')}")
    frame = read_jsonl(path, PROBE_SCHEMAS[probe], run).to_pandas()
    if (invalid := frame["invalid"].dropna()).size:
        run.note(
            run.rel(path),
            f"{invalid.size} record(s) with a value the probe could not read, kept as null (first: {invalid.iloc[0]})",
        )
    frame["node"] = node
    _to_controller_clock(run, node, frame, TIME_COLUMNS.get(probe, ("ts_ns",)))
    return frame


def _summary(run: RunDir, node: str, probe: str) -> dict:
    """The manifest's summary of a probe, for a node whose status.json is missing ({} when none)."""
    summary = run.manifest.probes.get(node, {}).get(probe)
    return summary.model_dump() if summary else {}


def _events(run: RunDir, path: Path, node: str) -> pd.DataFrame:
    frame = read_jsonl(path, TELEMETRY_SCHEMA, run).to_pandas()
    frame["node_dir"] = node
    _to_controller_clock(run, node, frame, TIME_COLUMNS["telemetry"])
    return frame


def _packets(run: RunDir, node: str) -> pd.DataFrame:
    frames = []
    for path in runlayout.capture_files(run.path, node):
        iface = runlayout.capture_iface(path)
        try:
            capture = read_pcap(path.read_bytes())
        except PcapError as exc:
            run.note(run.rel(path), f"skipped: {exc}")
            continue
        if capture.truncated:
            run.note(run.rel(path), "truncated: last packet incomplete (dropped)")
        if capture.packets.empty and iface != "lo":  # loopback is empty on a node whose services never call each other
            run.note(run.rel(path), "holds no TCP packet: packet, byte and burst figures lack this interface")
        _to_controller_clock(run, node, capture.packets, ("ts_ns",))
        frames.append(_with_node(capture.packets, node, iface))
    probes = runlayout.probes_dir(run.path, node)
    if not frames and probes.is_dir():
        run.note(
            run.rel(runlayout.capture_file(run.path, node, "*")),
            "no packet capture: packet, byte and burst figures lack this node",
        )
    return pd.concat(frames, ignore_index=True) if frames else _with_node(empty_packets(), node, "")


def _with_node(packets: pd.DataFrame, node: str, iface: str) -> pd.DataFrame:
    return packets.assign(node=node, iface=iface)


def _to_controller_clock(run: RunDir, node: str, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    for column in columns:
        frame[column] = frame[column] - _offset(run, node, frame[column].to_numpy())


def _offset(run: RunDir, node: str, at_ns: np.ndarray) -> np.ndarray:
    """node clock - controller clock at each node time (0 for the controller or when unknown)."""
    offsets = run.manifest.clock_offsets.get(node)
    start, end = (offsets.get("start"), offsets.get("end")) if offsets else (None, None)
    first = start or end
    if node == CONTROLLER or first is None:
        return np.zeros(len(at_ns), np.int64)
    if start is None or end is None or start.offset_ns == end.offset_ns:
        return np.full(len(at_ns), first.offset_ns, np.int64)
    t0 = start.measured_at_ns or run.manifest.started_at_ns
    t1 = end.measured_at_ns or run.manifest.ended_at_ns
    if not t0 or not t1 or t1 <= t0:
        return np.full(len(at_ns), start.offset_ns, np.int64)
    share = np.clip((at_ns.astype(np.float64) - t0) / (t1 - t0), 0.0, 1.0)
    return (start.offset_ns + share * (end.offset_ns - start.offset_ns)).astype(np.int64)
