"""The protocol choices that shape the lab's traffic, chosen per run (a scenario's `knobs`), sent
with every task and passed on by every hop (workload.telemetry.H_KNOBS), so a run can flip one
without a redeploy and the manifest and report say which were in force.

The defaults are what the widely used clients and servers do:
- `mcp_session: per_call`: langchain-mcp-adapters (`MultiServerMCPClient.get_tools()`,
  `load_mcp_tools(None, connection=...)`) opens a new MCP session (initialize, then the call) for
  every tool call; the MCP Python SDK's `ClientSession` used directly keeps one session for as
  long as the caller holds it (`per_task`, or `persistent` for the agent process's life).
- `http_reuse: pooled`, `http_keepalive_s: 5`: httpx's connection pool and its 5 s keep-alive
  expiry, which OpenAI's Python client (and so langchain-openai) and the MCP client use as they
  come; `per_call` sends `Connection: close` so each request has a connection of its own.
- `llm_stream: true`: agents stream the LLM's answers (langchain-openai with `streaming=True`),
  as chat front ends do.
- `max_steps: 6`: the agents' step bound. LangGraph's own bound (`recursion_limit`) is 25 graph
  steps, about 12 LLM decisions of a tool loop; 6 is twice the deepest task's minimal plan (three
  tool calls in two steps, then the answer) and keeps a CPU LLM's task within its timeout.
- `mcp_server: stateful_sse`: what the MCP Python SDK's FastMCP does unless its author opts out
  (mcp 1.30.0, `mcp/server/fastmcp/server.py`: `stateless_http=False`, `json_response=False`): a
  session per client (an `mcp-session-id` header from initialize on) and an SSE stream answering
  each POST; its client (the SDK's `streamable_http_client`, under langchain-mcp-adapters) then
  holds a GET stream open for what the server may send and ends the session with a DELETE.
  `stateless_json` is both opt-outs (`stateless_http=True, json_response=True`): no session, one
  JSON answer per POST. Every MCP server answers both at once (`MCP_PATH_SUFFIX`), so the knob
  needs no redeploy.
- `hand_off: a2a`: Agent A hands work to Agent B over the A2A protocol (a2a-sdk: Agent B's Agent Card
  at `/.well-known/agent-card.json`, then JSON-RPC SendStreamingMessage, A2A 0.3's `message/stream`),
  the protocol made for agent-to-agent calls; `mcp` wraps Agent B as an MCP tool
  (`ask_logistics_agent`), as langchain users often do with a sub-agent. Agent B answers both at
  once, so the knob needs no redeploy.
- `tool_calling: json_schema`: how the model states its decisions. `native` is OpenAI tool calling
  as LangChain's `ChatOpenAI.bind_tools` and the OpenAI SDK send it (`tools` with each tool's JSON
  schema, `parallel_tool_calls: true`, OpenAI's default, which llama.cpp's server needs said
  explicitly), each result sent back as a `tool` message; the server turns the model's reply into
  `tool_calls` (vLLM with `--enable-auto-tool-choice --tool-call-parser hermes` for Qwen2.5,
  llama.cpp through the model's Jinja chat template). It is what deployments with a capable model
  do, but the shipped small models cannot drive it (README, "Decision modes"): on llama.cpp both
  write their calls as bare JSON without the template's `<tool_call>` tags, so none is parsed, and
  on vLLM the 0.5B repeats the same call until the step bound. `json_schema` (the default) lists
  the tools in the system prompt and constrains each reply to a decision schema
  (`response_format`), which every backend here serves. Set `native` for a model that calls tools.
"""

from __future__ import annotations

import functools
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

McpServerMode = Literal["stateless_json", "stateful_sse"]
ToolCalling = Literal["native", "json_schema"]
MCP_PATH_SUFFIX: dict[McpServerMode, str] = {"stateless_json": "", "stateful_sse": "-sse"}
"""Where an MCP server answers each mode: stateless JSON at its endpoint (`/mcp`), stateful SSE at
the same path with this suffix (`/mcp-sse`)."""


class Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mcp_session: Literal["per_call", "per_task", "persistent"] = "per_call"
    """How long an agent keeps an MCP session to a server: one per tool call, one per task, or one
    for as long as the agent runs."""
    http_reuse: Literal["pooled", "per_call"] = "pooled"
    """HTTP connections of agents, tool servers and the baseline: pooled keep-alive, or a new one per request."""
    http_keepalive_s: float = Field(default=5.0, gt=0, le=3600)
    """How long a pooled connection may stay idle before the client drops it."""
    llm_stream: bool = True
    """Whether agents ask the LLM for streamed (SSE) answers."""
    mcp_server: McpServerMode = "stateful_sse"
    """How the MCP servers answer: stateful with SSE responses (FastMCP's default), or stateless
    with one JSON answer per POST."""

    hand_off: Literal["a2a", "mcp"] = "a2a"
    """How Agent A reaches Agent B: over A2A (message stream of task events), or as an MCP tool."""

    max_steps: int = Field(default=6, ge=1, le=50)
    """The most LLM decisions an agent makes for one task (or one handed-off subtask); at the last it
    must answer. Every step resends the conversation, so the bound caps a task's traffic."""

    tool_calling: ToolCalling = "json_schema"
    """How the model states its decisions: OpenAI tool calls the server parses, or JSON constrained
    to the lab's decision schema."""

    def header(self) -> str:
        return json.dumps(self.model_dump(), separators=(",", ":"))


DEFAULT = Knobs()


@functools.lru_cache(maxsize=64)
def from_header(text: str | None) -> Knobs:
    """The knobs a caller sent; the defaults where it sent none. A header that does not parse is
    ignored the same way (a service must not fail a task over it; the caller's manifest says what
    it sent)."""
    if not text:
        return DEFAULT
    try:
        return Knobs.model_validate_json(text)
    except ValidationError:
        return DEFAULT
