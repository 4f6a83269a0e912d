"""Agent A (on `agent-a`) and Agent B (on `agent-b`), both LangGraph graphs whose LLM
decides which MCP tool to call. MCP tools enter LangGraph through
langchain-mcp-adapters; the LLM through its OpenAI-compatible API (ChatOpenAI).

A tool decision is the model's own output, constrained by the server to the JSON schema
`{"tool": <one of the server's tools>, "arguments": <that tool's input schema>}`, so a
small model's calls are always well-formed. Agent B is reached over MCP (its
`handle_subtask` tool): the agent-to-agent hop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, TypedDict

import httpx
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import BaseTool
from langchain_mcp_adapters.tools import load_mcp_tools
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from mcp.server.fastmcp import Context
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workload.config import LLM_MAX_TOKENS, ServiceConfig
from workload.telemetry import (Kind, LabTransport, Telemetry, TraceContext, current_context, describe_error,
                                new_trace_id, set_context, timeout_for)
from workload.tools import adopt_caller_context, new_mcp
from workload.web import error_response, health_endpoint, read_model


class HopError(RuntimeError):
    """A failed call to a peer; the message names the peer."""

    def __init__(self, peer: str, exc: BaseException) -> None:
        super().__init__(f"{peer}: {describe_error(exc)}")


def _mcp_http_client(headers: dict[str, str] | None = None, timeout: httpx.Timeout | None = None,
                     auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    """httpx client factory for langchain-mcp-adapters: tags and measures each request."""
    return httpx.AsyncClient(transport=LabTransport(), headers=headers, timeout=timeout, auth=auth)


# The libraries' own timeouts are set out of the way (langchain-openai's 120 s between streamed
# chunks, the MCP client's read timeouts): each hop's timeout is the lab's, from the caller's
# H_TIMEOUTS or the service config, applied around the call.
LIBRARY_TIMEOUT_S = 86_400.0


class ToolBox:
    """The tools of one MCP server, as LangChain tools; every call is a logged hop."""

    def __init__(self, peer: str, url: str, telemetry: Telemetry, timeout_s: float, kind: Kind = "tool") -> None:
        self.peer, self.kind, self.telemetry, self.timeout_s = peer, kind, telemetry, timeout_s
        self.connection: dict[str, Any] = {"transport": "streamable_http", "url": url, "timeout": LIBRARY_TIMEOUT_S,
                                           "sse_read_timeout": LIBRARY_TIMEOUT_S, "httpx_client_factory": _mcp_http_client}
        self.tools: dict[str, BaseTool] = {}
        self._lock = asyncio.Lock()

    async def ensure_loaded(self) -> None:
        async with self._lock:
            if self.tools:
                return
            try:
                async with self.telemetry.call(self.kind, self.peer, "tools/list"), asyncio.timeout(self.timeout_s):
                    tools = await load_mcp_tools(None, connection=self.connection,  # type: ignore[arg-type]
                                                 server_name=self.peer, handle_tool_errors=False)
            except Exception as exc:
                raise HopError(self.peer, exc) from exc
            self.tools = {t.name: t for t in tools}

    def describe(self) -> str:
        return "\n".join(f"- {name}: {tool.description}" for name, tool in self.tools.items())

    def choice_schema(self) -> dict[str, Any]:
        """JSON schema of one call of one of these tools, with that tool's own arguments."""
        options = []
        for name, tool in self.tools.items():
            args = {k: v for k, v in dict(tool.args_schema).items() if k in ("type", "properties", "required")}  # type: ignore[arg-type]
            options.append({"type": "object", "additionalProperties": False, "required": ["tool", "arguments"],
                            "properties": {"tool": {"const": name}, "arguments": {**args, "additionalProperties": False}}})
        return {"anyOf": options}

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        await self.ensure_loaded()
        if name not in self.tools:
            raise HopError(self.peer, LookupError(f"unknown tool {name!r}"))
        seconds = timeout_for(self.kind, self.timeout_s)
        try:
            async with self.telemetry.call(self.kind, self.peer, name):
                async with asyncio.timeout(seconds):
                    result = await self.tools[name].ainvoke(arguments)
        except TimeoutError as exc:
            raise HopError(self.peer, TimeoutError(f"no answer within {seconds:g} s ({self.kind} timeout)")) from exc
        except Exception as exc:
            raise HopError(self.peer, exc) from exc
        return _text(result)


def _text(result: Any) -> str:
    """Plain text of a LangChain tool result (a string or a list of content blocks)."""
    if isinstance(result, str):
        return result
    if isinstance(result, (list, tuple)):
        return "\n".join(_text(part) for part in result)
    if isinstance(result, dict):
        return str(result.get("text", json.dumps(result)))
    return str(result)


class LLM:
    """The LLM server behind ChatOpenAI; every request is a logged `llm` hop."""

    def __init__(self, config: ServiceConfig, telemetry: Telemetry, max_tokens: int = LLM_MAX_TOKENS) -> None:
        self.telemetry = telemetry
        self.model = config.llm_model
        self.timeout_s = config.timeouts.llm_s
        self.chat = ChatOpenAI(base_url=config.llm_url, api_key="not-needed", model=config.llm_model,  # type: ignore[arg-type]
                               temperature=0, max_tokens=max_tokens, max_retries=0, timeout=LIBRARY_TIMEOUT_S,
                               stream_chunk_timeout=LIBRARY_TIMEOUT_S, streaming=True,
                               http_async_client=httpx.AsyncClient(transport=LabTransport(), timeout=LIBRARY_TIMEOUT_S))

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """One logged LLM request within the caller's LLM timeout."""
        seconds = timeout_for("llm", self.timeout_s)
        try:
            async with self.telemetry.call("llm", "llm", self.model), asyncio.timeout(seconds):
                yield
        except TimeoutError as exc:
            raise HopError("llm", TimeoutError(f"no answer within {seconds:g} s (llm timeout)")) from exc
        except Exception as exc:
            raise HopError("llm", exc) from exc

    async def choose(self, system: str, user: str, schema: dict[str, Any]) -> dict[str, Any]:
        """The model's tool choice, constrained to `schema`."""
        response_format = {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}
        async with self._call():
            message = await self.chat.bind(response_format=response_format).ainvoke([SystemMessage(system), HumanMessage(user)])
        try:
            return json.loads(_text(message.content))
        except ValueError as exc:
            raise HopError("llm", exc) from exc

    async def write(self, system: str, user: str) -> str:
        """Free text from the model, streamed."""
        parts: list[str] = []
        async with self._call():
            async for chunk in self.chat.astream([SystemMessage(system), HumanMessage(user)]):
                parts.append(_text(chunk.content))
        return "".join(parts).strip()


DECIDE_PROMPT = ("You are {who}. Pick the one tool that helps most with the request, and its arguments.\n"
                 "Tools:\n{tools}\nReply as JSON {{\"tool\": ..., \"arguments\": {{...}}}}.")
ANSWER_PROMPT = ("You are a customer-support agent. Answer the customer's question in one or two sentences, "
                 "using only the order database record for statuses, dates, amounts and carriers; copy them exactly.")
REPORT_PROMPT = ("You are a logistics assistant. Summarise the tool result for the request in one sentence, "
                 "copying hub names and numbers exactly.")


REPORT_INPUT_CHARS = 400


class AgentState(TypedDict, total=False):
    question: str
    scenario: str
    facts: str
    choice: dict[str, Any]
    result: str
    report: str
    answer: str


def _decide_node(llm: LLM, box: ToolBox, who: str) -> Any:
    async def decide(state: AgentState) -> AgentState:
        await box.ensure_loaded()
        request = state["question"] + (f"\nKnown facts: {state['facts']}" if state.get("facts") else "")
        choice = await llm.choose(DECIDE_PROMPT.format(who=who, tools=box.describe()), request, box.choice_schema())
        return {"choice": choice}
    return decide


def _tool_node(box: ToolBox) -> Any:
    async def use_tool(state: AgentState) -> AgentState:
        return {"result": await box.call(state["choice"]["tool"], state["choice"]["arguments"])}
    return use_tool


def build_agent_a_graph(llm: LLM, tool_db: ToolBox, agent_b: ToolBox) -> Any:
    """decide (LLM) -> tool-db -> [multihop: Agent B] -> answer (LLM, streamed)."""

    async def delegate(state: AgentState) -> AgentState:
        report = await agent_b.call("handle_subtask", {"question": state["question"], "facts": state["result"]})
        return {"report": report}

    async def answer(state: AgentState) -> AgentState:
        note = f"\nLogistics note (hubs and delay risk only): {state['report']}" if state.get("report") else ""
        facts = f"Question: {state['question']}\nOrder database record: {state['result']}{note}"
        return {"answer": await llm.write(ANSWER_PROMPT, facts)}

    graph = StateGraph(AgentState)
    graph.add_node("decide", _decide_node(llm, tool_db, "Agent A, an order-support agent"))
    graph.add_node("use_tool", _tool_node(tool_db))
    graph.add_node("delegate", delegate)
    graph.add_node("answer", answer)
    graph.add_edge(START, "decide")
    graph.add_edge("decide", "use_tool")
    graph.add_conditional_edges("use_tool", lambda s: "delegate" if s["scenario"] == "multihop" else "answer",
                                ["delegate", "answer"])
    graph.add_edge("delegate", "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def build_agent_b_graph(llm: LLM, tool_synth: ToolBox) -> Any:
    """decide (LLM) -> tool-synth -> report (LLM, streamed)."""

    async def report(state: AgentState) -> AgentState:
        # the head of the result: its synthetic padding sizes the traffic, not the prompt
        text = f"Request: {state['question']}\nTool {state['choice']['tool']} returned: {state['result'][:REPORT_INPUT_CHARS]}"
        return {"report": await llm.write(REPORT_PROMPT, text)}

    graph = StateGraph(AgentState)
    graph.add_node("decide", _decide_node(llm, tool_synth, "Agent B, a logistics agent checking carriers and parcels"))
    graph.add_node("use_tool", _tool_node(tool_synth))
    graph.add_node("report", report)
    graph.add_edge(START, "decide")
    graph.add_edge("decide", "use_tool")
    graph.add_edge("use_tool", "report")
    graph.add_edge("report", END)
    return graph.compile()


class AgentTask(BaseModel):
    """What Agent A takes: the user's words only, plus which scenario to run."""

    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    text: str = Field(min_length=1, max_length=2000)
    scenario: Literal["simple", "multihop"]


def build_agent_a(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    t = config.timeouts
    llm = LLM(config, telemetry)
    tool_db = ToolBox("tool-db", config.peers["tool-db"], telemetry, t.tool_s)
    agent_b = ToolBox("agent-b", config.peers["agent-b"], telemetry, t.agent_s, kind="agent")
    graph = build_agent_a_graph(llm, tool_db, agent_b)

    async def task(request: Request) -> JSONResponse:
        body = await read_model(request, AgentTask)
        if isinstance(body, JSONResponse):
            return body
        ctx = current_context()
        if ctx is None or ctx.task_id is None:  # a caller without lab headers
            set_context(TraceContext(body.task_id, ctx.trace_id if ctx else new_trace_id(), ctx.call_id if ctx else None))
        seconds = timeout_for("task", t.task_s)
        try:
            async with asyncio.timeout(seconds):
                state = await graph.ainvoke({"question": body.text, "scenario": body.scenario})
        except TimeoutError:
            return error_response(504, f"task timed out after {seconds:g} s (task timeout)", task_id=body.task_id)
        except HopError as exc:
            return error_response(502, str(exc), task_id=body.task_id)
        return JSONResponse({"ok": True, "task_id": body.task_id, "answer": state["answer"], "error": None,
                             "tool": state["choice"]["tool"]})

    async def ready() -> str | None:
        return await _tools_problem(tool_db, agent_b)

    return Starlette(routes=[Route("/task", task, methods=["POST"]),
                             Route("/healthz", health_endpoint("agent-a", config, ready))])


def build_agent_b(config: ServiceConfig, telemetry: Telemetry) -> Any:
    llm = LLM(config, telemetry)
    tool_synth = ToolBox("tool-synth", config.peers["tool-synth"], telemetry, config.timeouts.tool_s)
    graph = build_agent_b_graph(llm, tool_synth)
    mcp = new_mcp("agent-b", "Agent B: a logistics agent that checks parcels and carriers for Agent A.")

    @mcp.tool()
    async def handle_subtask(question: str, facts: str, ctx: Context) -> str:
        """Check the parcel or carrier behind a customer question, given the order facts; returns a short report."""
        adopt_caller_context(ctx)
        try:
            async with asyncio.timeout(timeout_for("agent", config.timeouts.agent_s)):
                state = await graph.ainvoke({"question": question, "facts": facts})
        except (HopError, TimeoutError) as exc:
            raise ToolError(f"agent-b: {describe_error(exc)}") from exc
        return state["report"]

    async def ready() -> str | None:
        return await _tools_problem(tool_synth)

    mcp.custom_route("/healthz", methods=["GET"])(health_endpoint("agent-b", config, ready))
    return mcp.streamable_http_app()


async def _tools_problem(*boxes: ToolBox) -> str | None:
    for box in boxes:
        try:
            await box.ensure_loaded()
        except HopError as exc:
            return str(exc)
    return None
