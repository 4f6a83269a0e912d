"""The lab's telemetry in the OpenTelemetry GenAI, MCP and A2A semantic conventions' terms: which GenAI
operation (`gen_ai.operation.name`) a call or one telemetry event is, which MCP or A2A request an event
of a tool or agent hop was, and the low-cardinality `error.type` of an event's one-line error.

The JSONL events keep their own field names (workload.telemetry.CallEvent); these names are derived
from them, by the calls table (`gen_ai_operation`) and by the OTLP export (analysis/otlp.py) alike.
Conventions: https://opentelemetry.io/docs/specs/semconv/gen-ai/ (GenAI and agent spans, MCP, A2A;
Development status upstream).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

CHAT = "chat"
EXECUTE_TOOL = "execute_tool"
INVOKE_AGENT = "invoke_agent"
OPERATIONS = {"llm": CHAT, "tool": EXECUTE_TOOL, "agent": INVOKE_AGENT}
"""The GenAI operation of a call of each telemetry kind; task, service and db calls are none."""
HOP_KINDS = ("tool", "agent")
"""Kinds whose calls go over a protocol with requests of its own: MCP for tools; MCP or A2A for the
hand-off from Agent A to Agent B."""
TOOLS_CALL = "tools/call"
SESSION_OPS = ("initialize", "tools/list")
"""What the lab's MCP client logs as calls of their own besides tool calls (workload/mcp_client.py):
opening a kept session and listing the server's tools."""
CARD_OP = "agent-card"
"""What the lab's A2A client logs reading the peer's Agent Card as (workload/handoff.py CARD_OP)."""
A2A_MESSAGES = {
    "SendMessage": "SendMessage",
    "SendStreamingMessage": "SendStreamingMessage",
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
}
"""The A2A requests that hand a message to an agent, as clients and servers log them (A2A 1.0's
methods, and 0.3's JSON-RPC names), to the protocol's operation name (`a2a.method.name`). The lab
sends no other A2A request."""
_HTTP = re.compile(r"(GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) (/\S*)")
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class Request:
    """What one event of a tool or agent hop was, in its protocol's terms."""

    mcp_method: str | None = None
    a2a_method: str | None = None
    tool: str | None = None
    """The tool an MCP tools/call named."""

    @property
    def does_work(self) -> bool:
        """A tool call or an A2A message: the request that runs the tool or the agent."""
        return self.mcp_method == TOOLS_CALL or self.a2a_method is not None


def request(kind: str, side: str, op: str) -> Request:
    """The MCP or A2A request an event of a tool or agent hop was. A server's op names the JSON-RPC
    request it served (`tools/call get_order`, `SendStreamingMessage`); a client logs a tool call by the
    tool's name, an A2A message by its method, its MCP session's own requests by theirs (SESSION_OPS)
    and the Agent Card read as CARD_OP. An HTTP op (an MCP session's GET stream and DELETE, the card's
    GET) or another kind's event is no such request."""
    if kind not in HOP_KINDS or not op or http_request(op) or (side == "client" and op == CARD_OP):
        return Request()
    if op in A2A_MESSAGES:
        return Request(a2a_method=A2A_MESSAGES[op])
    if side == "client":
        return Request(mcp_method=op) if op in SESSION_OPS else Request(mcp_method=TOOLS_CALL, tool=op)
    method, _, target = op.partition(" ")
    return Request(mcp_method=method, tool=(target or None) if method == TOOLS_CALL else None)


def event_operation(kind: str, side: str, op: str) -> str | None:
    """One event's GenAI operation: its kind's, except on a tool or agent hop, where only the request
    that does the work (request().does_work) is one: an MCP session's own requests (initialize,
    notifications/initialized, tools/list, its GET stream and DELETE) and the Agent Card read are none."""
    if kind in HOP_KINDS and not request(kind, side, op).does_work:
        return None
    return OPERATIONS.get(kind)


def call_operations(calls: pd.DataFrame) -> pd.Series:
    """Each call's GenAI operation (event_operation of its client side; by kind alone where only the
    server logged), as text: null for task, service and db calls and for a hop's own requests."""
    ops = calls["op"].where(calls["op"].notna(), None)
    found = [
        event_operation(kind, "client", op) if op else OPERATIONS.get(kind)
        for kind, op in zip(calls["kind"], ops, strict=True)
    ]
    return pd.Series(found, index=calls.index, dtype="string")


def http_request(op: str) -> tuple[str, str] | None:
    """(method, path) of an op that names an HTTP request, e.g. `POST /task`; None for any other op."""
    match = _HTTP.fullmatch(op)
    return (match.group(1), match.group(2)) if match else None


def error_type(error: str | None) -> str | None:
    """`error.type` of an event's error: the HTTP status code (`HTTP 503` -> `503`), the JSON-RPC error
    code, `tool_error` for an MCP tool result marked isError, the state an A2A task failed in
    (`TASK_STATE_FAILED`, `TASK_STATE_REJECTED`), the exception type that
    workload.telemetry.describe_error puts first, else `_OTHER`; None without an error."""
    if not error:
        return None
    if found := re.match(r"HTTP (\d{3})\b", error):
        return found.group(1)
    if found := re.match(r"JSON-RPC error (-?\d+)", error):
        return found.group(1)
    if error.startswith("tool error"):
        return "tool_error"
    if found := re.match(r"task (\w+):", error):  # an A2A task that ended failed or rejected: its state
        return found.group(1)
    name = error.split(":", 1)[0].strip()
    return name if _IDENTIFIER.fullmatch(name) else "_OTHER"
