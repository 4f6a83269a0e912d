"""JSONL into Arrow tables with the C++ reader (multi-threaded, no Python per record).

Schemas are explicit so a column that is null in the first block (e.g. `error`) does not
change type later. A truncated last line is dropped; a broken line, or a value the schema
cannot hold (an integer past 64 bits, a string where a number belongs), makes the file fall
back to a line-by-line parse that keeps every record, turns each such value into null and
lists it by field. All of it is reported, never raised.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj

from analysis.rundir import RunDir

# `invalid`: what the probe runner could not write as a value (collectors.children.Records.record)
_TUPLE = [
    ("ts_ns", pa.int64()),
    ("node", pa.string()),
    ("run_id", pa.string()),
    ("probe", pa.string()),
    ("saddr", pa.string()),
    ("sport", pa.int32()),
    ("daddr", pa.string()),
    ("dport", pa.int32()),
    ("invalid", pa.string()),
]

PROBE_SCHEMAS: dict[str, pa.Schema] = {
    "lifetime": pa.schema(
        _TUPLE
        + [
            ("pid", pa.int64()),
            ("comm", pa.string()),
            ("tx_bytes", pa.int64()),
            ("rx_bytes", pa.int64()),
            ("duration_ns", pa.int64()),
            ("start_ns", pa.int64()),
        ]
    ),
    "state": pa.schema(_TUPLE + [("oldstate", pa.string()), ("newstate", pa.string())]),
    "connect": pa.schema(_TUPLE + [("direction", pa.string()), ("pid", pa.int64()), ("comm", pa.string())]),
    "rtt": pa.schema(
        _TUPLE
        + [
            ("srtt_us", pa.int64()),
            ("snd_cwnd", pa.int64()),
            ("first_ns", pa.int64()),
            ("segments", pa.int64()),
            ("srtt_min_us", pa.int64()),
            ("srtt_max_us", pa.int64()),
        ]
    ),
    "retrans": pa.schema(_TUPLE + [("state", pa.string())]),
}

TELEMETRY_SCHEMA = pa.schema(
    [
        ("event", pa.string()),
        ("node", pa.string()),
        ("service", pa.string()),
        ("agent_id", pa.string()),
        ("task_id", pa.string()),
        ("call_id", pa.string()),
        ("parent_id", pa.string()),
        ("trace_id", pa.string()),
        ("kind", pa.string()),
        ("side", pa.string()),
        ("peer", pa.string()),
        ("op", pa.string()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("req_bytes", pa.int64()),
        ("resp_bytes", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("local", pa.string()),
        ("remote", pa.string()),
        ("conns", pa.list_(pa.list_(pa.string()))),
        # an llm client call's usage as the LLM server reported it; absent from older runs (null)
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
    ]
)

RESULTS_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("scenario", pa.string()),
        ("ok", pa.bool_()),
        ("correct", pa.bool_()),
        ("answer", pa.string()),
        ("error", pa.string()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("call_id", pa.string()),
        ("repetition", pa.int64()),
        ("warmup", pa.bool_()),
        # the task and its agents' loop (experiments/drive.py Outcome.record): absent from older runs,
        # null for the baseline's tasks (no LLM)
        ("kind", pa.string()),
        ("min_tool_calls", pa.int64()),
        ("steps", pa.int64()),
        ("tool_calls", pa.int64()),
        ("delegations", pa.int64()),
        ("llm_calls", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("max_steps_reached", pa.bool_()),
    ]
)


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
        return pj.read_json(
            io.BytesIO(data), parse_options=options, read_options=pj.ReadOptions(block_size=16 << 20)
        ).select(schema.names)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _read_lenient(path, data, schema, run)


def _read_lenient(path: Path, data: bytes, schema: pa.Schema, run: RunDir) -> pa.Table:
    """The slow path, only for a damaged file: every line that parses as a JSON object, each value
    the schema cannot hold made null and counted per field."""
    rows, bad, nulled = [], 0, Counter[str]()
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            bad += int(bool(line.strip()))
            continue
        row = {}
        for item in schema:
            value = record.get(item.name)
            row[item.name] = value if value is None or _fits(value, item.type) else None
            nulled[item.name] += int(value is not None and row[item.name] is None)
        rows.append(row)
    if bad:
        run.note(run.rel(path), f"{bad} unreadable line(s) skipped, {len(rows)} kept")
    for name, count in sorted(nulled.items()):
        if count:
            run.note(run.rel(path), f"{name}: {count} value(s) out of range or of the wrong type, read as null")
    return pa.Table.from_pylist(rows, schema=schema)


_INT_RANGES = {pa.int32(): 1 << 31, pa.int64(): 1 << 63}


def _fits(value: object, kind: pa.DataType) -> bool:
    """Whether a JSON value can stand in a column of this type as it is."""
    if kind in _INT_RANGES:
        limit = _INT_RANGES[kind]
        return isinstance(value, int) and not isinstance(value, bool) and -limit <= value < limit
    if kind == pa.string():
        return isinstance(value, str)
    if kind == pa.bool_():
        return isinstance(value, bool)
    if pa.types.is_list(kind):
        return isinstance(value, list) and all(item is None or _fits(item, kind.value_type) for item in value)
    raise TypeError(f"no JSON check for column type {kind}")
