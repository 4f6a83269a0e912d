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
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from mcp.server.fastmcp import Context
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workload.config import LLM_MAX_TOKENS, ServiceConfig
from workload.handoff import (
    FAN_OUT_DESCRIPTION,
    FAN_OUT_TOOL,
    HAND_OFF_DESCRIPTION,
    HAND_OFF_TOOL,
    SUBTASK_FAILURES,
    A2AHandOff,
    FanOutArguments,
    HandOffRequest,
    a2a_routes,
    usage_report,
)
from workload.loop import Agent, MalformedDecision, Outcome, Tool, ToolFailed, Usage
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
PLANNER = "Agent A, a customer-support agent for an online shop who leads a team of logistics agents"
WORKER = "a logistics agent in Agent A's team, who checks parcels and carriers"


class AgentTask(BaseModel):
    """What an entry agent takes: the user's words only, plus which workload (topology) to run."""

    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    text: str = Field(min_length=1, max_length=2000)
    scenario: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")


class ToolSource(Protocol):
    async def load(self) -> list[Tool]:
        """Its tools for the loop, for this task (loaded on first use); HopError if it cannot be reached."""
        ...


class HandOffTo:
    """A hand-off to another agent as one of the loop's tools, carried as the run's hand_off knob says."""

    def __init__(self, config: ServiceConfig, telemetry: Telemetry, peer: str) -> None:
        """`peer`: the agent's name among the config's peers (an agent, or an instance `<service>@<node>`)."""
        t = config.timeouts
        self.carriers: dict[str, ToolSource] = {
            "a2a": A2AHandOff(peer, config.rest_url(peer), telemetry, t.agent_s, config.api_token),
            "mcp": ToolBox(peer, config.peers[peer], telemetry, t.agent_s, config.api_token, kind="agent"),
        }

    async def load(self) -> list[Tool]:
        return await self.carriers[current_knobs().hand_off].load()


class FanOut:
    """A planner's hand-off to a team of agents (every instance of a `pick: each` agent) as one tool:
    the subtasks of one call go to the agents in turn, all at once, each carried as the run's hand_off
    knob says; with more subtasks than agents, an agent gets several. A subtask that fails is reported
    in the answer; a failed hop fails the call."""

    def __init__(self, agents: list[HandOffTo]) -> None:
        self.agents = agents
        self.turn = 0

    async def load(self) -> list[Tool]:
        loaded = await asyncio.gather(*(agent.load() for agent in self.agents))
        team = [tools[0] for tools in loaded]
        schema = FanOutArguments.model_json_schema()
        run = functools.partial(self.ask, team)
        return [Tool(FAN_OUT_TOOL, FAN_OUT_DESCRIPTION, schema, run, hand_off=True, fan_out="requests")]

    async def ask(self, team: list[Tool], arguments: dict[str, Any]) -> tuple[str, Usage]:
        try:
            requests = FanOutArguments.model_validate(arguments).requests
        except ValidationError as exc:
            raise ToolFailed(f"bad arguments: {exc.errors()[0]['msg']}") from exc
        first, self.turn = self.turn, self.turn + len(requests)
        answers = await asyncio.gather(
            *(_answer(team[(first + i) % len(team)], request) for i, request in enumerate(requests))
        )
        usage = Usage()
        for _, cost in answers:
            usage.add(cost)
        text = "\n\n".join(
            f"Question {i}: {q}\nAnswer: {a}" for i, (q, (a, _)) in enumerate(zip(requests, answers, strict=True), 1)
        )
        return text, usage


async def _answer(agent: Tool, request: str) -> tuple[str, Usage]:
    try:
        return await agent.run({"request": request})
    except ToolFailed as exc:
        return f"error: {exc}", Usage()


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


def _tool_server(config: ServiceConfig, telemetry: Telemetry, peer: str) -> ToolBox:
    return ToolBox(peer, config.peers[peer], telemetry, config.timeouts.tool_s, config.api_token)


def build_agent_a(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    tool_db, tool_synth = _tool_server(config, telemetry, "tool-db"), _tool_server(config, telemetry, "tool-synth")
    agent_b = HandOffTo(config, telemetry, "agent-b")
    toolsets = {"simple": Toolset(tool_db, tool_synth), "multihop": Toolset(tool_db, agent_b)}
    ready = Toolset(tool_db, tool_synth, *agent_b.carriers.values())
    return _entry_agent("agent-a", AGENT_A, config, telemetry, toolsets, ready)


def build_planner(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    """The fanout workload's entry: Agent A with tool-db's tools and a hand-off to every worker at once."""
    tool_db = _tool_server(config, telemetry, "tool-db")
    team = [HandOffTo(config, telemetry, peer) for peer in config.instances("worker")]
    ready = Toolset(tool_db, *(carrier for member in team for carrier in member.carriers.values()))
    return _entry_agent("planner", PLANNER, config, telemetry, {"fanout": Toolset(tool_db, FanOut(team))}, ready)


def _entry_agent(
    service: str, who: str, config: ServiceConfig, telemetry: Telemetry, toolsets: dict[str, Toolset], ready: Toolset
) -> Starlette:
    """An agent tasks enter at: POST /task runs its loop with the toolset of the task's workload.
    /healthz is ready once every source of `ready` answered (each hand-off by both its carriers)."""
    t = config.timeouts
    llm = LLM(config, telemetry)

    async def task(request: Request) -> JSONResponse:
        body = await read_model(request, AgentTask)
        if isinstance(body, JSONResponse):
            return body
        if body.scenario not in toolsets:
            known = ", ".join(toolsets)
            return error_response(400, f"{service} runs {known}, not {body.scenario!r}", task_id=body.task_id)
        _adopt_task(body.task_id)
        seconds = timeout_for("task", t.task_s)
        try:
            async with asyncio.timeout(seconds), task_sessions():
                agent = Agent(who, llm, await toolsets[body.scenario].tools(), current_knobs().tool_calling)
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

    return Starlette(
        routes=[
            Route("/task", task, methods=["POST"]),
            Route("/healthz", health_endpoint(service, config, ready.problem)),
        ]
    )


def build_agent_b(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    """Agent B, the multihop workload's logistics agent."""
    return _logistics_agent("agent-b", AGENT_B, "Agent B", config, telemetry)


def build_worker(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    """A logistics agent of the planner's team (fanout): one on each node of the workers group."""
    return _logistics_agent("worker", WORKER, f"Logistics agent on {config.node}", config, telemetry)


def _logistics_agent(service: str, who: str, name: str, config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    """A logistics agent with tool-synth's tools, reached by a hand-off over A2A (its card and JSON-RPC
    endpoint) and over MCP (the tool `ask_logistics_agent`) at once: both run `subtask`."""
    llm = LLM(config, telemetry)
    toolset = Toolset(_tool_server(config, telemetry, "tool-synth"))
    mcp = McpServer(service, f"{name}: a logistics agent that checks parcels and carriers for Agent A.")

    async def subtask(request: str) -> Outcome:
        """The loop on a handed-off request, in the caller's context, within its agent timeout;
        raises one of SUBTASK_FAILURES."""
        seconds = timeout_for("agent", config.timeouts.agent_s)
        try:
            async with asyncio.timeout(seconds), task_sessions():
                agent = Agent(who, llm, await toolset.tools(), current_knobs().tool_calling)
                return await agent.run(request, current_knobs().max_steps)
        except TimeoutError as exc:
            raise TimeoutError(f"no answer within {seconds:g} s (agent timeout)") from exc

    @mcp.tool(name=HAND_OFF_TOOL, description=HAND_OFF_DESCRIPTION)
    async def ask_logistics_agent(request: HandOffRequest, ctx: Context) -> CallToolResult:
        adopt_caller_context(ctx)
        try:
            outcome = await subtask(request)
        except SUBTASK_FAILURES as exc:
            raise ToolError(f"{service}: {describe_error(exc)}") from exc
        return CallToolResult(
            content=[TextContent(type="text", text=outcome.answer)], _meta={USAGE_META: usage_report(outcome)}
        )

    return mcp.app(
        *a2a_routes(config, subtask, service, name),
        Route("/healthz", health_endpoint(service, config, toolset.problem), methods=["GET"]),
    )
