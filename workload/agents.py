"""Agent A (on `agent-a`) and Agent B (on `agent-b`): LangGraph tool loops (workload/loop.py) in
which the LLM decides, step by step, which MCP tools to call and when to answer. MCP tools enter
through langchain-mcp-adapters; the LLM through its OpenAI-compatible API (ChatOpenAI).

Which agents a task meets is its workload's topology; the same task set runs in both:
- simple: Agent A alone, with every tool (tool-db's and tool-synth's);
- multihop: Agent A with tool-db's tools and a hand-off to Agent B, a logistics agent with
  tool-synth's: the tool `ask_logistics_agent`, carried over A2A (workload/handoff.py) or MCP as the
  run's `hand_off` knob says. Whether and when to hand off is the model's decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol

import httpx
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from mcp.server.fastmcp import Context
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workload.config import LLM_MAX_TOKENS, ServiceConfig
from workload.handoff import (
    HAND_OFF_DESCRIPTION,
    HAND_OFF_TOOL,
    SUBTASK_FAILURES,
    A2AHandOff,
    HandOffRequest,
    a2a_routes,
    usage_report,
)
from workload.loop import Agent, MalformedDecision, Outcome, Tool, Usage
from workload.mcp_client import LIBRARY_TIMEOUT_S, USAGE_META, HopError, ToolBox, hop_failures, task_sessions
from workload.telemetry import (
    CallEvent,
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
                api_key=config.api_token or "not-needed",  # type: ignore[arg-type]
                model=config.llm_model,
                temperature=0,
                max_tokens=max_tokens,
                max_retries=0,
                timeout=LIBRARY_TIMEOUT_S,
                stream_chunk_timeout=LIBRARY_TIMEOUT_S,
                streaming=streaming,
                stream_usage=True,
                http_async_client=client,
            )
            for streaming in (True, False)
        }

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[CallEvent]:
        """One logged LLM request within the caller's LLM timeout."""
        seconds = timeout_for("llm", self.timeout_s)
        with hop_failures("llm", "llm", seconds):
            async with self.telemetry.call("llm", "llm", self.model) as event, asyncio.timeout(seconds):
                yield event

    async def chat(self, messages: list[BaseMessage], bind: dict[str, Any]) -> tuple[AIMessage, Usage]:
        """The model's reply to the conversation, with `bind`'s fields in the request (tools, or a
        response format), streamed unless the llm_stream knob is off, and its token usage."""
        chat = self.chats[current_knobs().llm_stream]
        async with self._call() as event:
            message = await chat.bind(**bind).ainvoke(messages)
            usage = getattr(message, "usage_metadata", None) or {}
            event.input_tokens, event.output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
        return message, Usage(1, event.input_tokens or 0, event.output_tokens or 0)


AGENT_A = "Agent A, a customer-support agent for an online shop"
AGENT_B = "Agent B, a logistics agent who checks parcels and carriers"


class AgentTask(BaseModel):
    """What Agent A takes: the user's words only, plus which workload (topology) to run."""

    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    text: str = Field(min_length=1, max_length=2000)
    scenario: Literal["simple", "multihop"]


class ToolSource(Protocol):
    async def load(self) -> list[Tool]:
        """Its tools for the loop, for this task (loaded on first use); HopError if it cannot be reached."""
        ...


class HandOffTo:
    """A hand-off to another agent as one of the loop's tools, carried as the run's hand_off knob says."""

    def __init__(self, a2a: A2AHandOff, mcp: ToolBox) -> None:
        self.carriers: dict[str, ToolSource] = {"a2a": a2a, "mcp": mcp}

    async def load(self) -> list[Tool]:
        return await self.carriers[current_knobs().hand_off].load()


class Toolset:
    """An agent's tool sources (MCP servers, hand-offs), loaded on first use, as the loop's tools."""

    def __init__(self, *sources: ToolSource) -> None:
        self.sources = sources

    async def tools(self) -> list[Tool]:
        return [tool for source in self.sources for tool in await source.load()]

    async def problem(self) -> str | None:
        """For /healthz: None once every server listed its tools, else what failed."""
        try:
            await self.tools()
        except HopError as exc:
            return str(exc)
        return None


def _adopt_task(task_id: str) -> None:
    """Make the task the current context when the caller sent no lab headers."""
    ctx = current_context()
    if ctx is None or ctx.task_id is None:
        set_context(TraceContext(task_id, ctx.trace_id if ctx else new_trace_id(), ctx.call_id if ctx else None))


def build_agent_a(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    t = config.timeouts
    llm = LLM(config, telemetry)
    tool_db = ToolBox("tool-db", config.peers["tool-db"], telemetry, t.tool_s, config.api_token)
    tool_synth = ToolBox("tool-synth", config.peers["tool-synth"], telemetry, t.tool_s, config.api_token)
    agent_b_mcp = ToolBox("agent-b", config.peers["agent-b"], telemetry, t.agent_s, config.api_token, kind="agent")
    agent_b_a2a = A2AHandOff("agent-b", config.rest_url("agent-b"), telemetry, t.agent_s, config.api_token)
    toolsets = {
        "simple": Toolset(tool_db, tool_synth),
        "multihop": Toolset(tool_db, HandOffTo(agent_b_a2a, agent_b_mcp)),
    }

    async def task(request: Request) -> JSONResponse:
        body = await read_model(request, AgentTask)
        if isinstance(body, JSONResponse):
            return body
        _adopt_task(body.task_id)
        seconds = timeout_for("task", t.task_s)
        try:
            async with asyncio.timeout(seconds), task_sessions():
                agent = Agent(AGENT_A, llm, await toolsets[body.scenario].tools(), current_knobs().tool_calling)
                outcome = await agent.run(body.text, current_knobs().max_steps)
        except TimeoutError:
            return error_response(504, f"task timed out after {seconds:g} s (task timeout)", task_id=body.task_id)
        except HopError as exc:
            return error_response(502, str(exc), task_id=body.task_id)
        except MalformedDecision as exc:
            return error_response(502, f"llm: {exc}", task_id=body.task_id)
        return JSONResponse(
            {"ok": True, "task_id": body.task_id, "answer": outcome.answer, "error": None, **outcome.record()}
        )

    async def ready() -> str | None:
        return await Toolset(tool_db, tool_synth, agent_b_mcp, agent_b_a2a).problem()

    return Starlette(
        routes=[Route("/task", task, methods=["POST"]), Route("/healthz", health_endpoint("agent-a", config, ready))]
    )


def build_agent_b(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    """Agent B, reached by a hand-off over A2A (its card and JSON-RPC endpoint) and over MCP (the tool
    `ask_logistics_agent`) at once: both run `subtask`."""
    llm = LLM(config, telemetry)
    toolset = Toolset(
        ToolBox("tool-synth", config.peers["tool-synth"], telemetry, config.timeouts.tool_s, config.api_token)
    )
    mcp = McpServer("agent-b", "Agent B: a logistics agent that checks parcels and carriers for Agent A.")

    async def subtask(request: str) -> Outcome:
        """Agent B's loop on a handed-off request, in the caller's context, within its agent timeout;
        raises one of SUBTASK_FAILURES."""
        seconds = timeout_for("agent", config.timeouts.agent_s)
        try:
            async with asyncio.timeout(seconds), task_sessions():
                agent = Agent(AGENT_B, llm, await toolset.tools(), current_knobs().tool_calling)
                return await agent.run(request, current_knobs().max_steps)
        except TimeoutError as exc:
            raise TimeoutError(f"no answer within {seconds:g} s (agent timeout)") from exc

    @mcp.tool(name=HAND_OFF_TOOL, description=HAND_OFF_DESCRIPTION)
    async def ask_logistics_agent(request: HandOffRequest, ctx: Context) -> CallToolResult:
        adopt_caller_context(ctx)
        try:
            outcome = await subtask(request)
        except SUBTASK_FAILURES as exc:
            raise ToolError(f"agent-b: {describe_error(exc)}") from exc
        return CallToolResult(
            content=[TextContent(type="text", text=outcome.answer)], _meta={USAGE_META: usage_report(outcome)}
        )

    return mcp.app(
        *a2a_routes(config, subtask),
        Route("/healthz", health_endpoint("agent-b", config, toolset.problem), methods=["GET"]),
    )
