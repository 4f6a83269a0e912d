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
from workload.mcp_client import LIBRARY_TIMEOUT_S, HopError, ToolBox, task_sessions
from workload.telemetry import (
    LabTransport,
    Telemetry,
    TraceContext,
    current_context,
    current_knobs,
    describe_error,
    new_trace_id,
    set_context,
    timeout_for,
)
from workload.tools import McpServer, adopt_caller_context
from workload.web import error_response, health_endpoint, read_model


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
        client = httpx.AsyncClient(transport=LabTransport(), timeout=LIBRARY_TIMEOUT_S)
        # one per value of the llm_stream knob, over one connection pool
        self.chats = {
            streaming: ChatOpenAI(
                base_url=config.llm_url,
                api_key="not-needed",  # type: ignore[arg-type]
                model=config.llm_model,
                temperature=0,
                max_tokens=max_tokens,
                max_retries=0,
                timeout=LIBRARY_TIMEOUT_S,
                stream_chunk_timeout=LIBRARY_TIMEOUT_S,
                streaming=streaming,
                http_async_client=client,
            )
            for streaming in (True, False)
        }

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
        chat = self.chats[current_knobs().llm_stream]
        async with self._call():
            message = await chat.bind(response_format=response_format).ainvoke(
                [SystemMessage(system), HumanMessage(user)]
            )
        try:
            return json.loads(_text(message.content))
        except ValueError as exc:
            raise HopError("llm", exc) from exc

    async def write(self, system: str, user: str) -> str:
        """Free text from the model, streamed unless the llm_stream knob is off."""
        messages = [SystemMessage(system), HumanMessage(user)]
        parts: list[str] = []
        async with self._call():
            if current_knobs().llm_stream:
                async for chunk in self.chats[True].astream(messages):
                    parts.append(_text(chunk.content))
            else:
                parts.append(_text((await self.chats[False].ainvoke(messages)).content))
        return "".join(parts).strip()


DECIDE_PROMPT = (
    "You are {who}. Pick the one tool that helps most with the request, and its arguments.\n"
    'Tools:\n{tools}\nReply as JSON {{"tool": ..., "arguments": {{...}}}}.'
)
ANSWER_PROMPT = (
    "You are a customer-support agent. Answer the customer's question in one or two sentences, "
    "using only the order database record for statuses, dates, amounts and carriers; copy them exactly."
)
REPORT_PROMPT = (
    "You are a logistics assistant. Summarise the tool result for the request in one sentence, "
    "copying hub names and numbers exactly."
)


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
    graph.add_conditional_edges(
        "use_tool", lambda s: "delegate" if s["scenario"] == "multihop" else "answer", ["delegate", "answer"]
    )
    graph.add_edge("delegate", "answer")
    graph.add_edge("answer", END)
    return graph.compile()


def build_agent_b_graph(llm: LLM, tool_synth: ToolBox) -> Any:
    """decide (LLM) -> tool-synth -> report (LLM, streamed)."""

    async def report(state: AgentState) -> AgentState:
        # the head of the result: its synthetic padding sizes the traffic, not the prompt
        text = (
            f"Request: {state['question']}\n"
            f"Tool {state['choice']['tool']} returned: {state['result'][:REPORT_INPUT_CHARS]}"
        )
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
            set_context(
                TraceContext(body.task_id, ctx.trace_id if ctx else new_trace_id(), ctx.call_id if ctx else None)
            )
        seconds = timeout_for("task", t.task_s)
        try:
            async with asyncio.timeout(seconds), task_sessions():
                state = await graph.ainvoke({"question": body.text, "scenario": body.scenario})
        except TimeoutError:
            return error_response(504, f"task timed out after {seconds:g} s (task timeout)", task_id=body.task_id)
        except HopError as exc:
            return error_response(502, str(exc), task_id=body.task_id)
        return JSONResponse(
            {
                "ok": True,
                "task_id": body.task_id,
                "answer": state["answer"],
                "error": None,
                "tool": state["choice"]["tool"],
            }
        )

    async def ready() -> str | None:
        return await _tools_problem(tool_db, agent_b)

    return Starlette(
        routes=[Route("/task", task, methods=["POST"]), Route("/healthz", health_endpoint("agent-a", config, ready))]
    )


def build_agent_b(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    llm = LLM(config, telemetry)
    tool_synth = ToolBox("tool-synth", config.peers["tool-synth"], telemetry, config.timeouts.tool_s)
    graph = build_agent_b_graph(llm, tool_synth)
    mcp = McpServer("agent-b", "Agent B: a logistics agent that checks parcels and carriers for Agent A.")

    @mcp.tool()
    async def handle_subtask(question: str, facts: str, ctx: Context) -> str:
        """Check the parcel or carrier behind a customer question, given the order facts; returns a short report."""
        adopt_caller_context(ctx)
        try:
            async with asyncio.timeout(timeout_for("agent", config.timeouts.agent_s)), task_sessions():
                state = await graph.ainvoke({"question": question, "facts": facts})
        except (HopError, TimeoutError) as exc:
            raise ToolError(f"agent-b: {describe_error(exc)}") from exc
        return state["report"]

    async def ready() -> str | None:
        return await _tools_problem(tool_synth)

    return mcp.app(Route("/healthz", health_endpoint("agent-b", config, ready), methods=["GET"]))


async def _tools_problem(*boxes: ToolBox) -> str | None:
    for box in boxes:
        try:
            await box.ensure_loaded()
        except HopError as exc:
            return str(exc)
    return None
