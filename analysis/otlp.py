"""One run's telemetry as one OTLP/JSON trace document (an ExportTraceServiceRequest, the file an
OpenTelemetry collector's file exporter writes and trace viewers such as Jaeger open), with span
names and attributes after the OpenTelemetry GenAI, MCP and A2A semantic conventions (analysis/genai.py).

    python -m analysis.otlp RUN_DIR [-o FILE]     # FILE, else standard output; notes on standard error

Every telemetry event, the driver's and every node's services', becomes one span: CLIENT for a call's
client side, SERVER for each of its server-side events (an MCP session writes several per call),
times on the controller's clock (analysis/load.py). Ids: the trace id is the event's `trace_id`; a
call's client span takes the call id as its span id (what its `traceparent` carried), each other
event of the call a stable id hashed from (trace, call, side, its rank by start). Parents: a server
span's is the client span of its call; a client span's is the server span of its `parent_id` call in
which the caller made it (on its own service, the one whose interval holds its start, an MCP event
stream last), else that call's client span. Each task is then one tree under the driver's task call.
The lab's own fields stay as `lab.*` attributes, so the joins' 5-tuples and ids are all there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from analysis import genai
from analysis.load import EVENTS_SCHEMA, load_events
from analysis.rundir import RunDir, open_run

SPAN_KIND = {"server": 2, "client": 3}
"""OTLP's SpanKind: SPAN_KIND_SERVER, SPAN_KIND_CLIENT (integers in OTLP/JSON)."""
STATUS_OK, STATUS_ERROR = 1, 2
SCOPE = "workload.telemetry"
"""The instrumentation scope: the lab's telemetry module wrote every event."""
PROVIDER = "openai"
"""gen_ai.provider.name: the agents speak the OpenAI chat API (ChatOpenAI) to the lab's LLM server,
whichever backend serves it (the run's manifest names it)."""
DB_SYSTEM = "postgresql"
_ENDPOINT = re.compile(r"\[?([^\[\]]+?)\]?:(\d+)")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass
class Span:
    event: dict[str, Any]
    trace_id: str
    span_id: str
    parent_span_id: str | None = None


# --- reading ----------------------------------------------------------------------------------


def run_traces(run: RunDir) -> dict[str, Any]:
    """The run's telemetry as one OTLP/JSON document; what could not be read is noted in `run`."""
    return document(records(load_events(run)), run.run_id)


def records(events: pd.DataFrame) -> list[dict[str, Any]]:
    """The events table (analysis.load) as plain records: null as None, integers as int."""
    return pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False).to_pylist()


# --- ids and parents ------------------------------------------------------------------------


def hex_id(value: str | None, length: int, *salt: str) -> str:
    """`value` when it is already a valid id (`length` lower-case hex digits, not all zero), else a
    stable one hashed from `salt`."""
    if value and len(value) == length and _HEX.fullmatch(value) and value.strip("0"):
        return value
    return hashlib.sha256("/".join(salt).encode()).hexdigest()[:length]


def _order(event: dict[str, Any]) -> tuple:
    return event["start_ns"] or 0, event["end_ns"] or 0, event["op"] or "", event["service"] or ""


def identify(events: list[dict[str, Any]]) -> list[Span]:
    """One span per event with its trace and span id (module docstring)."""
    sides: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in sorted(events, key=_order):
        sides[(str(event["trace_id"]), str(event["call_id"]), event["side"])].append(event)
    spans = []
    for (trace, call, side), group in sides.items():
        trace_id = hex_id(trace, 32, "trace", trace)
        for rank, event in enumerate(group):
            own = call if side == "client" and rank == 0 else None
            spans.append(Span(event, trace_id, hex_id(own, 16, trace, call, side, str(rank))))
    return spans


class Calls:
    """The spans of each call of each trace, by side, in start order."""

    def __init__(self, spans: list[Span]) -> None:
        self.sides: dict[tuple[str, str], dict[str, list[Span]]] = defaultdict(lambda: defaultdict(list))
        for span in spans:
            self.sides[(span.trace_id, span.event["call_id"])][span.event["side"]].append(span)

    def of(self, span: Span, call_id: str) -> dict[str, list[Span]]:
        return self.sides.get((span.trace_id, call_id), {})

    def parent(self, span: Span) -> str | None:
        """The span id of `span`'s parent (module docstring), None for a root or a parent not logged."""
        event = span.event
        clients = self.of(span, event["call_id"]).get("client", [])
        if event["side"] == "server" and clients:
            return clients[0].span_id
        return self.caller(span, event["parent_id"]) if event["parent_id"] else None

    def caller(self, span: Span, parent_call: str) -> str | None:
        """The span of `parent_call` in which `span`'s call was made."""
        sides = self.of(span, parent_call)
        servers = sides.get("server", [])
        working = [s for s in servers if s.event["event"] != "stream"] or servers
        own = [s for s in working if s.event["service"] == span.event["service"]] or working
        start = span.event["start_ns"]
        holding = [s for s in own if s.event["start_ns"] <= start <= s.event["end_ns"]]
        found = holding or own or sides.get("client", [])
        return found[0].span_id if found else None


def link(spans: list[Span]) -> list[Span]:
    calls = Calls(spans)
    for span in spans:
        span.parent_span_id = calls.parent(span)
    return spans


# --- one span ---------------------------------------------------------------------------------


def span_json(span: Span) -> dict[str, Any]:
    event = span.event
    operation = genai.event_operation(event["kind"], event["side"], event["op"])
    start = event["start_ns"] or 0
    out: dict[str, Any] = {"traceId": span.trace_id, "spanId": span.span_id}
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    return out | {
        "name": span_name(event, operation),
        "kind": SPAN_KIND[event["side"]],
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(max(event["end_ns"] or 0, start)),
        "attributes": [_attribute(k, v) for k, v in attributes(event, operation).items() if v is not None],
        "status": _status(event),
    }


def _status(event: dict[str, Any]) -> dict[str, Any]:
    if event["status"] == "error":
        return {"code": STATUS_ERROR, "message": event["error"] or ""}
    return {"code": STATUS_OK}


def span_name(event: dict[str, Any], operation: str | None) -> str:
    """`chat {model}`, `execute_tool {tool}`, `invoke_agent {agent}` for a client's GenAI call; the op
    otherwise: an MCP server's `{mcp.method.name} {target}`, an A2A server's method, an HTTP `POST /task`,
    a query's name."""
    if event["side"] == "client" and operation:
        return f"{operation} {_subject(event, operation)}"
    return event["op"] or event["kind"]


def _subject(event: dict[str, Any], operation: str) -> str:
    """The model, tool or agent a GenAI operation is about."""
    if operation == genai.INVOKE_AGENT:
        return (event["peer"] if event["side"] == "client" else event["agent_id"] or event["service"]) or ""
    if operation == genai.EXECUTE_TOOL:
        return genai.request(event["kind"], event["side"], event["op"] or "").tool or ""
    return event["op"] or ""


def attributes(event: dict[str, Any], operation: str | None) -> dict[str, Any]:
    """Every attribute of the event's span, None where it has no value."""
    return {
        "gen_ai.operation.name": operation,
        **_genai(event, operation),
        **_protocol(event),
        **_network(event),
        "error.type": genai.error_type(event["error"]),
        **_lab(event),
    }


def _genai(event: dict[str, Any], operation: str | None) -> dict[str, Any]:
    if operation == genai.CHAT:
        return {
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": event["op"],
            "gen_ai.usage.input_tokens": event["input_tokens"],
            "gen_ai.usage.output_tokens": event["output_tokens"],
        }
    if operation == genai.EXECUTE_TOOL:
        return {"gen_ai.tool.name": _subject(event, operation), "gen_ai.tool.call.id": event["call_id"]}
    if operation == genai.INVOKE_AGENT:
        return {"gen_ai.agent.name": _subject(event, operation)}
    return {}


def _protocol(event: dict[str, Any]) -> dict[str, Any]:
    """HTTP method and path, the MCP or A2A request of a tool or agent hop, the database's system and operation."""
    op = event["op"] or ""
    if event["kind"] == "db":
        return {"db.system.name": DB_SYSTEM, "db.operation.name": op}
    if request := genai.http_request(op):
        return {"http.request.method": request[0], "url.path": request[1]}
    if event["kind"] in genai.HOP_KINDS:
        found = genai.request(event["kind"], event["side"], op)
        return {
            "mcp.method.name": found.mcp_method,
            "a2a.method.name": found.a2a_method,
            "gen_ai.tool.name": found.tool,
        }
    return {}


def _network(event: dict[str, Any]) -> dict[str, Any]:
    """The TCP connection (its first) as the server.*, client.* and network.* attributes."""
    local, remote = _endpoint(event["local"]), _endpoint(event["remote"])
    server, client = (local, remote) if event["side"] == "server" else (remote, (None, None))
    return {
        "server.address": server[0],
        "server.port": server[1],
        "client.address": client[0],
        "client.port": client[1],
        "network.peer.address": remote[0],
        "network.peer.port": remote[1],
        "network.local.address": local[0],
        "network.local.port": local[1],
        "network.transport": "tcp" if remote[0] else None,
    }


def _endpoint(value: str | None) -> tuple[str | None, int | None]:
    """`ip:port` or `[ipv6]:port` as (address, port); (None, None) for anything else (a Unix socket)."""
    found = _ENDPOINT.fullmatch(value or "")
    return (found.group(1), int(found.group(2))) if found else (None, None)


def _lab(event: dict[str, Any]) -> dict[str, Any]:
    """The event's own fields, as the joins read them (ids, bytes, the sockets it used)."""
    fields = ("call_id", "parent_id", "task_id", "agent_id", "kind", "side", "peer", "op", "event")
    return {
        **{f"lab.{name}": event[name] for name in fields},
        "lab.req_bytes": event["req_bytes"],
        "lab.resp_bytes": event["resp_bytes"],
        "lab.local": event["local"],
        "lab.remote": event["remote"],
        "lab.conns": json.dumps(event["conns"], separators=(",", ":")) if event["conns"] else None,
        "lab.node_dir": event["node_dir"],
    }


def _attribute(key: str, value: Any) -> dict[str, Any]:
    """One KeyValue of OTLP/JSON: 64-bit integers as strings."""
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


# --- the document -----------------------------------------------------------------------------


def document(events: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """ExportTraceServiceRequest as OTLP/JSON: one resource per (node, service), its spans by start."""
    by_resource: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for span in link(identify(events)):
        by_resource[(span.event["node"] or span.event["node_dir"] or "", span.event["service"] or "")].append(span)
    return {
        "resourceSpans": [
            _resource(node, service, run_id, spans) for (node, service), spans in sorted(by_resource.items())
        ]
    }


def _resource(node: str, service: str, run_id: str, spans: list[Span]) -> dict[str, Any]:
    resource = {"service.name": service, "host.name": node, "lab.run_id": run_id}
    return {
        "resource": {"attributes": [_attribute(k, v) for k, v in resource.items()]},
        "scopeSpans": [{"scope": {"name": SCOPE}, "spans": [span_json(s) for s in sorted(spans, key=_span_order)]}],
    }


def _span_order(span: Span) -> tuple:
    return (span.trace_id, *_order(span.event))


def spans_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]


def summary(doc: dict[str, Any]) -> dict[str, int]:
    """Spans and traces in the document, and `extra_roots`: spans without a parent beyond one per
    trace (0 when every task is one tree; each extra one is a call whose parent was not logged)."""
    spans = spans_of(doc)
    traces = {span["traceId"] for span in spans}
    roots = sum(1 for span in spans if "parentSpanId" not in span)
    return {"spans": len(spans), "traces": len(traces), "extra_roots": max(roots - len(traces), 0)}


def write(run: RunDir, path: Path) -> dict[str, int]:
    """Write the run's traces to `path`; returns their summary."""
    doc = run_traces(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(encode(doc))
    return summary(doc)


def encode(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":")) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.otlp", description="A run's telemetry as one OTLP/JSON trace document."
    )
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<run-id>/)")
    parser.add_argument("-o", "--output", type=Path, help="the file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        run = open_run(args.run_dir, verify=False)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc = run_traces(run)
    text = encode(doc)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    for problem in run.problems:
        print(f"note: {problem.where}: {problem.what}", file=sys.stderr)
    counts = summary(doc)
    print(
        f"{counts['spans']} spans in {counts['traces']} traces, {counts['extra_roots']} without their parent",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
