"""A run's telemetry as OTLP/JSON traces (analysis/otlp.py) and the GenAI names the analysis gives
its calls (analysis/genai.py), on a small hand-built run: two tasks of a multihop-like workload, the
events written by the workload's own EventWriter."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from analysis import genai, otlp
from analysis.join import calls_table
from analysis.load import load_events
from analysis.rundir import open_run
from lab import runlayout
from lab.runlayout import Manifest, write_manifest
from workload.telemetry import CallEvent, EventWriter

MS = 1_000_000
T0 = 1_800_000_000_000_000_000
OFFSET_B = 2_000
"""agent-b's clock - the controller's, in ns."""
TRACE_A, TRACE_B = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"
TASK, LLM_A, TOOL, DB, AGENT, LLM_B, SESSION = (f"10000000000000{n:02d}" for n in range(1, 8))
TASK_B, TOOL_B, CARD, A2A, LLM_B2 = (f"20000000000000{n:02d}" for n in range(1, 6))
REFUSED = "tool error: no order ORD-1"


def _event(service: str, call: str, side: str, kind: str, op: str, ms: tuple[int, int], **fields: Any) -> CallEvent:
    local, remote = fields.pop("sockets", ("10.0.0.11:40000", "10.0.0.12:8201"))
    return CallEvent(
        node=fields.pop("node", "agent-a"),
        service=service,
        agent_id=fields.pop("agent_id", None),
        task_id=fields.pop("task_id", "t1"),
        call_id=call,
        parent_id=fields.pop("parent", TASK),
        trace_id=fields.pop("trace", TRACE_A),
        kind=kind,
        side=side,  # type: ignore[arg-type]
        peer=fields.pop("peer", "p"),
        op=op,
        start_ns=T0 + ms[0] * MS,
        end_ns=T0 + ms[1] * MS,
        req_bytes=100,
        resp_bytes=200,
        local=local,
        remote=remote,
        conns=[[local, remote]],
        **fields,
    )


def _task_a() -> dict[str, list[CallEvent]]:
    """service -> its events: the driver's task, Agent A's LLM and tool calls and hand-off, the tool
    server's MCP session (its event stream included), Agent B's LLM call, a kept session's opening."""
    on_b = {"node": "agent-b"}
    return {
        "driver": [
            _event("driver", TASK, "client", "task", "multihop", (0, 100), node="controller", parent=None),
        ],
        "agent-a": [
            _event("agent-a", TASK, "server", "task", "POST /task", (1, 99), parent=None, agent_id="agent-a"),
            _event("agent-a", LLM_A, "client", "llm", "lab-model", (2, 10), input_tokens=120, output_tokens=30),
            _event("agent-a", TOOL, "client", "tool", "get_order", (11, 30), peer="tool-db"),
            _event("agent-a", AGENT, "client", "agent", "handle_subtask", (31, 80), peer="agent-b"),
            _event("agent-a", SESSION, "client", "tool", "initialize", (81, 85), peer="tool-db"),
        ],
        "tool-db": [
            _event("tool-db", TOOL, "server", "tool", "initialize", (12, 13), **on_b),
            _event("tool-db", TOOL, "server", "tool", "GET /mcp-sse", (13, 29), event="stream", **on_b),
            _event("tool-db", TOOL, "server", "tool", "tools/call get_order", (14, 20), **on_b),
            _event("tool-db", TOOL, "server", "tool", "DELETE /mcp-sse", (21, 22), **on_b),
            _event("tool-db", DB, "client", "db", "get_order", (15, 18), parent=TOOL, peer="postgres", **on_b),
            _event("tool-db", SESSION, "server", "tool", "initialize", (82, 84), **on_b),
        ],
        "agent-b": [
            _event("agent-b", AGENT, "server", "agent", "initialize", (32, 33), agent_id="agent-b", **on_b),
            _event(
                "agent-b", AGENT, "server", "agent", "tools/call handle_subtask", (34, 78), agent_id="agent-b", **on_b
            ),
            _event("agent-b", LLM_B, "client", "llm", "lab-model", (35, 50), parent=AGENT, agent_id="agent-b", **on_b),
        ],
    }


def _task_b() -> dict[str, list[CallEvent]]:
    """A task whose tool call failed (the tool's result marked as an error) and that handed work to
    Agent B over A2A: the Agent Card read, then one streamed message."""
    top = {"trace": TRACE_B, "task_id": "t2", "parent": None}
    b = top | {"parent": TASK_B}
    on_b = b | {"node": "agent-b", "agent_id": "agent-b"}
    return {
        "driver": [_event("driver", TASK_B, "client", "task", "multihop", (200, 300), node="controller", **top)],
        "agent-a": [
            _event("agent-a", TASK_B, "server", "task", "POST /task", (201, 299), **top),
            _event("agent-a", TOOL_B, "client", "tool", "get_order", (210, 220), **b),
            _event("agent-a", CARD, "client", "agent", "agent-card", (221, 222), peer="agent-b", **b),
            _event("agent-a", A2A, "client", "agent", "SendStreamingMessage", (223, 290), peer="agent-b", **b),
        ],
        "tool-db": [
            _event("tool-db", TOOL_B, "server", "tool", "tools/call get_order", (211, 219), node="agent-b", **b)
        ],
        "agent-b": [
            _event("agent-b", CARD, "server", "agent", "GET /.well-known/agent-card.json", (221, 222), **on_b),
            _event("agent-b", A2A, "server", "agent", "SendStreamingMessage", (224, 289), **on_b),
            _event("agent-b", LLM_B2, "client", "llm", "lab-model", (230, 240), **on_b | {"parent": A2A}),
        ],
    }


def _fail(events: list[CallEvent]) -> None:
    for event in events:
        if event.call_id == TOOL_B:
            event.fail(REFUSED)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    manifest = Manifest.model_validate(
        {"run_id": "r1", "clock_offsets": {"agent-b": {"start": {"offset_ns": OFFSET_B, "uncertainty_ns": 10}}}}
    )
    write_manifest(manifest, tmp_path)
    nodes = {"driver": None, "agent-a": "agent-a", "tool-db": "agent-b", "agent-b": "agent-b"}
    for services in (_task_a(), _task_b()):
        for service, events in services.items():
            _fail(events)
            node = nodes[service]
            root = runlayout.node_dir(tmp_path, node) if node else tmp_path
            writer = EventWriter(runlayout.telemetry_file(runlayout.telemetry_dir(root), service))
            for event in events:
                writer.write(event)
            writer.close()
    return tmp_path


def _doc(run: Path) -> dict[str, Any]:
    return otlp.run_traces(open_run(run))


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def _spans(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return otlp.spans_of(doc)


def _one(doc: dict[str, Any], **match: str) -> dict[str, Any]:
    """The one span whose lab.* attributes (or name) have these values."""
    found = [
        s
        for s in _spans(doc)
        if all((s["name"] if k == "name" else _attrs(s).get(f"lab.{k}")) == v for k, v in match.items())
    ]
    assert len(found) == 1, (match, [s["name"] for s in found])
    return found[0]


def _event_count() -> int:
    return sum(len(events) for services in (_task_a(), _task_b()) for events in services.values())


def test_every_event_becomes_one_span_with_valid_ids(run: Path) -> None:
    spans = _spans(_doc(run))
    assert len(spans) == _event_count()
    assert all(re.fullmatch(r"[0-9a-f]{32}", s["traceId"]) for s in spans)
    ids = [s["spanId"] for s in spans]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) and i.strip("0") for i in ids) and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", s["parentSpanId"]) for s in spans if "parentSpanId" in s)
    clients = [s for s in spans if s["kind"] == otlp.SPAN_KIND["client"]]
    assert all(s["spanId"] == _attrs(s)["lab.call_id"] for s in clients)  # what the traceparent carried
    assert {s["kind"] for s in spans} == {2, 3}


def test_each_task_is_one_tree_under_the_drivers_task_call(run: Path) -> None:
    doc = _doc(run)
    spans = _spans(doc)
    ids = {s["spanId"] for s in spans}
    assert all(s["parentSpanId"] in ids for s in spans if "parentSpanId" in s)
    roots = [s for s in spans if "parentSpanId" not in s]
    assert sorted(s["traceId"] for s in roots) == [TRACE_A, TRACE_B]  # one root per task
    assert {(_attrs(s)["lab.kind"], _attrs(s)["lab.side"], _attrs(s)["lab.node_dir"]) for s in roots} == {
        ("task", "client", "controller")
    }
    assert otlp.summary(doc) == {"spans": _event_count(), "traces": 2, "extra_roots": 0}
    by_id = {s["spanId"]: s for s in spans}
    parent = {s["spanId"]: by_id.get(s.get("parentSpanId", ""), {}).get("name") for s in spans}
    # a server span under its call's client span; a call under the server span its caller was serving
    assert parent[_one(doc, call_id=TOOL, side="server", op="initialize")["spanId"]] == "execute_tool get_order"
    assert parent[_one(doc, call_id=DB)["spanId"]] == "tools/call get_order"  # not the event stream around it
    assert parent[_one(doc, call_id=LLM_B)["spanId"]] == "tools/call handle_subtask"
    assert parent[_one(doc, call_id=LLM_A)["spanId"]] == "POST /task"
    assert parent[_one(doc, call_id=TASK, side="server")["spanId"]] == "multihop"


def test_llm_tool_and_agent_spans_carry_the_genai_names(run: Path) -> None:
    doc = _doc(run)
    chat = _one(doc, call_id=LLM_A)
    assert chat["name"] == "chat lab-model" and chat["kind"] == 3
    assert {k: v for k, v in _attrs(chat).items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "lab-model",
        "gen_ai.usage.input_tokens": "120",
        "gen_ai.usage.output_tokens": "30",
    }
    older = _attrs(_one(doc, call_id=LLM_B))  # no usage recorded (a run from before it was)
    assert older["gen_ai.operation.name"] == "chat" and "gen_ai.usage.input_tokens" not in older
    tool = _one(doc, call_id=TOOL, side="client")
    assert tool["name"] == "execute_tool get_order"
    expected = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_order", "gen_ai.tool.call.id": TOOL}
    assert _attrs(tool).items() >= expected.items()
    served = _attrs(_one(doc, call_id=TOOL, op="tools/call get_order"))
    assert (served["gen_ai.operation.name"], served["mcp.method.name"], served["gen_ai.tool.call.id"]) == (
        "execute_tool",
        "tools/call",
        TOOL,
    )
    plumbing = [_attrs(_one(doc, call_id=TOOL, side="server", op=op)) for op in ("initialize", "DELETE /mcp-sse")]
    assert [a.get("gen_ai.operation.name") for a in plumbing] == [None, None]
    assert plumbing[0]["mcp.method.name"] == "initialize" and plumbing[1]["http.request.method"] == "DELETE"
    opening = _one(doc, call_id=SESSION, side="client")  # a kept session's own request: no tool ran
    assert opening["name"] == "initialize" and "gen_ai.operation.name" not in _attrs(opening)
    agent = _one(doc, call_id=AGENT, side="client")
    assert agent["name"] == "invoke_agent agent-b"
    assert _attrs(agent)["gen_ai.operation.name"] == "invoke_agent" and _attrs(agent)["gen_ai.agent.name"] == "agent-b"
    handled = _attrs(_one(doc, call_id=AGENT, op="tools/call handle_subtask"))
    assert handled["gen_ai.operation.name"] == "invoke_agent" and handled["gen_ai.agent.name"] == "agent-b"


def test_an_a2a_hand_off_is_an_agent_invocation_and_its_card_read_is_not(run: Path) -> None:
    doc = _doc(run)
    sent = _one(doc, call_id=A2A, side="client")
    assert sent["name"] == "invoke_agent agent-b"
    assert (
        _attrs(sent).items()
        >= {"gen_ai.operation.name": "invoke_agent", "a2a.method.name": "SendStreamingMessage"}.items()
    )
    served = _one(doc, call_id=A2A, side="server")
    assert served["name"] == "SendStreamingMessage" and served["parentSpanId"] == sent["spanId"]
    assert _attrs(served).items() >= {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "agent-b"}.items()
    assert _one(doc, call_id=LLM_B2)["parentSpanId"] == served["spanId"]
    for side in ("client", "server"):
        assert "gen_ai.operation.name" not in _attrs(_one(doc, call_id=CARD, side=side))
    assert _one(doc, call_id=CARD, side="client")["name"] == "agent-card"


def test_task_service_and_db_spans_keep_their_own_names(run: Path) -> None:
    doc = _doc(run)
    served = _one(doc, call_id=TASK, side="server")
    assert served["name"] == "POST /task" and served["kind"] == 2
    assert _attrs(served)["http.request.method"] == "POST" and _attrs(served)["url.path"] == "/task"
    query = _attrs(_one(doc, call_id=DB))
    assert (query["db.system.name"], query["db.operation.name"]) == ("postgresql", "get_order")
    assert "gen_ai.operation.name" not in query


def test_the_lab_fields_and_the_5_tuple_stay(run: Path) -> None:
    doc = _doc(run)
    client = _attrs(_one(doc, call_id=TOOL, side="client"))
    assert (client["server.address"], client["server.port"]) == ("10.0.0.12", "8201")
    assert (client["network.local.address"], client["network.local.port"]) == ("10.0.0.11", "40000")
    assert json.loads(client["lab.conns"]) == [["10.0.0.11:40000", "10.0.0.12:8201"]]
    assert (client["lab.local"], client["lab.remote"]) == ("10.0.0.11:40000", "10.0.0.12:8201")
    assert (client["lab.req_bytes"], client["lab.resp_bytes"], client["lab.task_id"]) == ("100", "200", "t1")
    assert (client["lab.kind"], client["lab.parent_id"]) == ("tool", TASK)
    resources = {tuple(_attrs(rs["resource"])[k] for k in ("host.name", "service.name")) for rs in doc["resourceSpans"]}
    assert resources == {
        ("controller", "driver"),
        ("agent-a", "agent-a"),
        ("agent-b", "tool-db"),
        ("agent-b", "agent-b"),
    }


def test_times_are_the_controllers_clock(run: Path) -> None:
    doc = _doc(run)
    assert _one(doc, call_id=DB)["startTimeUnixNano"] == str(T0 + 15 * MS - OFFSET_B)
    assert _one(doc, call_id=TASK, side="client")["endTimeUnixNano"] == str(T0 + 100 * MS)


def test_a_failed_call_is_an_error_span_with_its_error_type(run: Path) -> None:
    doc = _doc(run)
    for side in ("client", "server"):
        span = _one(doc, call_id=TOOL_B, side=side)
        assert span["status"] == {"code": otlp.STATUS_ERROR, "message": REFUSED}
        assert _attrs(span)["error.type"] == "tool_error"
    assert _one(doc, call_id=TASK_B, side="client")["status"] == {"code": otlp.STATUS_OK}


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("HTTP 503", "503"),
        ("JSON-RPC error -32602: bad params", "-32602"),
        (REFUSED, "tool_error"),
        ("task TASK_STATE_FAILED: the loop failed", "TASK_STATE_FAILED"),
        ("ReadTimeout: timed out", "ReadTimeout"),
        ("TimeoutError", "TimeoutError"),
        ("the server went away", "_OTHER"),
        (None, None),
    ],
)
def test_error_types_are_low_cardinality(error: str | None, kind: str | None) -> None:
    assert genai.error_type(error) == kind


def test_ids_that_are_not_valid_are_replaced_by_stable_hex_ones() -> None:
    event = _event("svc", "not-a-hex-id", "server", "service", "GET /x", (0, 1), parent=None, trace="t")
    record = {**event.__dict__, "node_dir": "n"}
    first, again = otlp.identify([record]), otlp.identify([dict(record)])
    assert re.fullmatch(r"[0-9a-f]{32}", first[0].trace_id) and re.fullmatch(r"[0-9a-f]{16}", first[0].span_id)
    assert (first[0].trace_id, first[0].span_id) == (again[0].trace_id, again[0].span_id)
    assert otlp.hex_id("0" * 16, 16, "x") != "0" * 16  # all-zero ids are invalid in OTLP


def _protobuf_json(doc: dict[str, Any]) -> str:
    """OTLP/JSON writes ids as hex where protobuf's JSON mapping of bytes is base64: the one deviation."""
    doc = copy.deepcopy(doc)
    for span in otlp.spans_of(doc):
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json.dumps(doc)


def test_the_document_is_an_export_trace_service_request(run: Path) -> None:
    doc = _doc(run)
    request = json_format.Parse(_protobuf_json(doc), ExportTraceServiceRequest())  # unknown fields fail
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == _event_count() and len(request.resource_spans) == 4
    assert all(len(s.trace_id) == 16 and len(s.span_id) == 8 for s in spans)
    assert all(len(s.parent_span_id) in (0, 8) and s.end_time_unix_nano >= s.start_time_unix_nano for s in spans)
    chat = next(s for s in spans if s.name == "chat lab-model" and s.span_id == bytes.fromhex(LLM_A))
    usage = {a.key: a.value.int_value for a in chat.attributes if a.key.startswith("gen_ai.usage.")}
    assert usage == {"gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 30}
    assert chat.kind == Span.SPAN_KIND_CLIENT and chat.status.code == Status.STATUS_CODE_OK
    failed = [s for s in spans if s.status.code == Status.STATUS_CODE_ERROR]
    assert len(failed) == 2 and {s.kind for s in failed} == {Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER}


def test_the_calls_table_names_each_calls_genai_operation(run: Path) -> None:
    calls = calls_table(load_events(open_run(run))).set_index("call_id")["gen_ai_operation"]
    assert calls.astype(object).where(calls.notna(), None).to_dict() == {
        TASK: None,
        LLM_A: "chat",
        TOOL: "execute_tool",
        DB: None,
        AGENT: "invoke_agent",
        LLM_B: "chat",
        SESSION: None,
        TASK_B: None,
        TOOL_B: "execute_tool",
        CARD: None,
        A2A: "invoke_agent",
        LLM_B2: "chat",
    }


def test_the_command_writes_the_document_and_says_what_it_holds(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "traces.json"
    assert otlp.main([str(run), "-o", str(out)]) == 0
    assert otlp.summary(json.loads(out.read_text()))["spans"] == _event_count()
    assert f"{_event_count()} spans in 2 traces, 0 without their parent" in capsys.readouterr().err
    assert otlp.main([str(tmp_path / "nowhere")]) == 1
    assert "is not a run directory" in capsys.readouterr().err
