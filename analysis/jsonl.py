"""JSONL into Arrow tables with the C++ reader (multi-threaded, no Python per record).

Schemas are explicit so a column that is null in the first block (e.g. `error`) does not
change type later. A truncated last line is dropped; a broken line in the middle falls back
to a line-by-line parse that skips what cannot be read. Both are reported.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj

from analysis.rundir import RunDir

_TUPLE = [("ts_ns", pa.int64()), ("node", pa.string()), ("run_id", pa.string()), ("probe", pa.string()),
          ("saddr", pa.string()), ("sport", pa.int32()), ("daddr", pa.string()), ("dport", pa.int32())]

PROBE_SCHEMAS: dict[str, pa.Schema] = {
    "lifetime": pa.schema(_TUPLE + [("pid", pa.int64()), ("comm", pa.string()), ("tx_bytes", pa.int64()),
                                    ("rx_bytes", pa.int64()), ("duration_ns", pa.int64()), ("start_ns", pa.int64())]),
    "state": pa.schema(_TUPLE + [("oldstate", pa.string()), ("newstate", pa.string())]),
    "connect": pa.schema(_TUPLE + [("direction", pa.string()), ("pid", pa.int64()), ("comm", pa.string())]),
    "rtt": pa.schema(_TUPLE + [("srtt_us", pa.int64()), ("snd_cwnd", pa.int64()), ("first_ns", pa.int64()),
                               ("segments", pa.int64()), ("srtt_min_us", pa.int64()), ("srtt_max_us", pa.int64())]),
    "retrans": pa.schema(_TUPLE + [("state", pa.string())]),
}

TELEMETRY_SCHEMA = pa.schema([
    ("event", pa.string()), ("node", pa.string()), ("service", pa.string()), ("agent_id", pa.string()),
    ("task_id", pa.string()), ("call_id", pa.string()), ("parent_id", pa.string()), ("trace_id", pa.string()),
    ("kind", pa.string()), ("side", pa.string()), ("peer", pa.string()), ("op", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("req_bytes", pa.int64()), ("resp_bytes", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("local", pa.string()), ("remote", pa.string()),
    ("conns", pa.list_(pa.list_(pa.string()))),
])

RESULTS_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("scenario", pa.string()), ("ok", pa.bool_()), ("answer", pa.string()),
    ("error", pa.string()), ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("call_id", pa.string()),
    ("repetition", pa.int64()), ("warmup", pa.bool_()),
])


def read_jsonl(path: Path, schema: pa.Schema, run: RunDir) -> pa.Table:
    """Every readable record of `path` (an empty table when it is missing), problems noted in `run`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        run.note(run.rel(path), "missing")
        return schema.empty_table()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        run.note(run.rel(path), f"truncated: last line incomplete ({len(data) - end} B dropped)")
        data = data[:end]
    if not data or data.isspace():
        return schema.empty_table()
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore", newlines_in_values=False)
    try:
        return pj.read_json(io.BytesIO(data), parse_options=options,
                            read_options=pj.ReadOptions(block_size=16 << 20)).select(schema.names)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _read_lenient(path, data, schema, run)


def _read_lenient(path: Path, data: bytes, schema: pa.Schema, run: RunDir) -> pa.Table:
    """The slow path, only for a damaged file: keep every line that parses as a JSON object of the schema."""
    rows, bad = [], 0
    for line in data.splitlines():
        try:
            record = json.loads(line)
            if isinstance(record, dict):
                rows.append({name: record.get(name) for name in schema.names})
                continue
        except ValueError:
            pass
        bad += int(bool(line.strip()))
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        run.note(run.rel(path), f"unreadable records ({exc}); file skipped")
        return schema.empty_table()
    run.note(run.rel(path), f"{bad} unreadable line(s) skipped, {len(rows)} kept")
    return table
