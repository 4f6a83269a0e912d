"""The agent loop both agents run: a LangGraph graph of two nodes, `model` and `tools`.

On every step the model gets the system prompt (with the tool schemas), the user's request and the
whole conversation so far (each earlier decision and every tool result, in full, resent as real
agents resend them) and decides: call one or more tools, or answer. The calls of one decision run at
once; their results join the conversation and the model decides again, until it answers or the
step bound (the run's `max_steps` knob) is reached, when it must answer with what it has.

Decisions are the model's own output constrained to a JSON schema (`decision_schema`): the
lab's CPU server has no tool parser, and a constrained decision is always well-formed JSON, so a
small model's choice of tools, arguments and when to stop is what varies, not its formatting. A
decision cut off by the token limit is sent back once with what was wrong; a second one fails the
task. A tool that ran and failed (unknown order, bad argument) is an observation the model sees;
a hop that failed (timeout, refused connection) fails the task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

MAX_PARALLEL_CALLS = 4
"""The most tool calls one decision may make (they run at once)."""


class MalformedDecision(ValueError):
    """The model's decision was not the JSON the schema asks for, twice in a row."""


class ToolFailed(RuntimeError):
    """A tool ran and failed; its message goes back to the model as the call's result."""


@dataclass
class Usage:
    """What a loop (and the agents it handed work to) cost: LLM calls and tokens."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.llm_calls += other.llm_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    @classmethod
    def of(cls, data: Any) -> Usage:
        """From a dict such as a hand-off's reported usage; zero for anything else."""
        if not isinstance(data, dict):
            return cls()
        return cls(*(int(data.get(k) or 0) for k in ("llm_calls", "prompt_tokens", "completion_tokens")))


class Model(Protocol):
    async def decide(self, messages: list[BaseMessage], schema: dict[str, Any]) -> tuple[str, Usage]:
        """The model's raw reply to the conversation, constrained to `schema`, and what it cost."""
        ...


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: its name, description and argument schema, and how to run it.
    `run` returns the result text and the usage of any agent behind it (a hand-off)."""

    name: str
    description: str
    args_schema: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[tuple[str, Usage]]]
    hand_off: bool = False


@dataclass
class Outcome:
    """One finished loop."""

    answer: str
    steps: int
    tool_calls: int
    delegations: int
    max_steps_reached: bool
    usage: Usage = field(default_factory=Usage)

    def record(self) -> dict[str, Any]:
        """The per-task fields an agent reports with its answer."""
        return {
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "delegations": self.delegations,
            "max_steps_reached": self.max_steps_reached,
            "llm_calls": self.usage.llm_calls,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
        }


LOOP_FIELDS = (
    "steps",
    "tool_calls",
    "delegations",
    "max_steps_reached",
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
)
"""The per-task fields of Outcome.record."""

SYSTEM_PROMPT = (
    "You are {who}. You know nothing about the shop's orders, customers, parcels or carriers but what "
    "your tools return, so call the tools that find what the request asks, one lookup after another "
    "where one needs the result of another, and answer once the tool results hold every fact asked for.\n"
    'Each turn, reply with JSON: either {{"calls": [{{"tool": NAME, "arguments": {{...}}}}, ...]}} to call '
    'tools (the calls of one turn run at once), or {{"answer": TEXT}} to answer. In the answer, copy ids, '
    "names, statuses, dates, amounts and hubs exactly as the tools returned them.\nTools:\n{tools}"
)
LAST_STEP = "You have no tool calls left: answer now with what the tool results say."


def describe(tools: list[Tool]) -> str:
    return "\n".join(f"- {t.name}{json.dumps(t.args_schema.get('properties', {}))}: {t.description}" for t in tools)


def decision_schema(tools: list[Tool], can_call: bool = True) -> dict[str, Any]:
    """The JSON schema of one decision: tool calls (each with that tool's own argument schema) or an
    answer; only an answer when `can_call` is false."""
    answer = {
        "type": "object",
        "additionalProperties": False,
        "required": ["answer"],
        "properties": {"answer": {"type": "string", "minLength": 1}},
    }
    if not can_call:
        return answer
    call = {
        "anyOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["tool", "arguments"],
                "properties": {
                    "tool": {"const": t.name},
                    "arguments": {**_argument_schema(t.args_schema), "additionalProperties": False},
                },
            }
            for t in tools
        ]
    }
    calls = {
        "type": "object",
        "additionalProperties": False,
        "required": ["calls"],
        "properties": {"calls": {"type": "array", "minItems": 1, "maxItems": MAX_PARALLEL_CALLS, "items": call}},
    }
    return {"anyOf": [calls, answer]}


def _argument_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k in ("type", "properties", "required")}


def parse_decision(raw: str, tools: list[Tool], can_call: bool) -> dict[str, Any]:
    """The decision in `raw`, checked against what the schema allows; ValueError saying what is wrong."""
    try:
        decision = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(decision, dict):
        raise ValueError("not a JSON object")
    if isinstance(decision.get("answer"), str) and decision["answer"].strip():
        return {"answer": decision["answer"].strip()}
    calls = decision.get("calls")
    if not can_call:
        raise ValueError('no "answer" text')
    if not isinstance(calls, list) or not 1 <= len(calls) <= MAX_PARALLEL_CALLS:
        raise ValueError(f'neither an "answer" nor 1 to {MAX_PARALLEL_CALLS} "calls"')
    names = {t.name for t in tools}
    for call in calls:
        if not isinstance(call, dict) or call.get("tool") not in names or not isinstance(call.get("arguments"), dict):
            raise ValueError(f"a call that names no known tool with arguments: {json.dumps(call)[:200]}")
    return {"calls": calls}


class LoopState(TypedDict):
    messages: list[BaseMessage]
    steps: int
    tool_calls: int
    delegations: int
    malformed: int
    pending: list[dict[str, Any]]
    answer: str | None
    usage: Usage


class Agent:
    """One agent: who it is, its tools and its model, run as a LangGraph tool loop."""

    def __init__(self, who: str, model: Model, tools: list[Tool]) -> None:
        self.who, self.model, self.tools = who, model, {t.name: t for t in tools}
        graph = StateGraph(LoopState)
        graph.add_node("model", self._model_step)
        graph.add_node("tools", self._tools_step)
        graph.add_edge(START, "model")
        graph.add_conditional_edges("model", lambda s: END if s["answer"] is not None else "tools", ["tools", END])
        graph.add_edge("tools", "model")
        self.graph = graph.compile()

    async def run(self, request: str, max_steps: int) -> Outcome:
        """Loop on `request` until the model answers; at most `max_steps` LLM decisions (plus one
        retry of a malformed one)."""
        system = SystemMessage(SYSTEM_PROMPT.format(who=self.who, tools=describe(list(self.tools.values()))))
        state: LoopState = {
            "messages": [system, HumanMessage(request)],
            "steps": 0,
            "tool_calls": 0,
            "delegations": 0,
            "malformed": 0,
            "pending": [],
            "answer": None,
            "usage": Usage(),
        }
        # each step is two graph nodes; a malformed decision adds one model visit
        final = await self.graph.ainvoke(
            state, {"recursion_limit": 2 * max_steps + 4, "configurable": {"max_steps": max_steps}}
        )
        return Outcome(
            answer=final["answer"] or "",
            steps=final["steps"],
            tool_calls=final["tool_calls"],
            delegations=final["delegations"],
            max_steps_reached=_forced(final),
            usage=final["usage"],
        )

    async def _model_step(self, state: LoopState, config: RunnableConfig) -> dict[str, Any]:
        max_steps = config["configurable"]["max_steps"]
        can_call = state["steps"] + 1 < max_steps
        messages = state["messages"] if can_call else [*state["messages"], HumanMessage(LAST_STEP)]
        tools = list(self.tools.values())
        raw, cost = await self.model.decide(messages, decision_schema(tools, can_call))
        usage = Usage(**vars(state["usage"]))
        usage.add(cost)
        try:
            decision = parse_decision(raw, tools, can_call)
        except ValueError as exc:
            if state["malformed"]:
                raise MalformedDecision(f"the model's decision was malformed twice: {exc}") from exc
            retry = HumanMessage(f"That reply was not valid: {exc}. Reply with JSON exactly as instructed.")
            return {"messages": [*messages, AIMessage(raw), retry], "malformed": 1, "usage": usage, "answer": None}
        update: dict[str, Any] = {
            "messages": [*messages, AIMessage(json.dumps(decision))],
            "steps": state["steps"] + 1,
            "malformed": 0,
            "usage": usage,
        }
        if "answer" in decision:
            return {**update, "answer": decision["answer"]}
        return {**update, "pending": decision["calls"], "answer": None}

    async def _tools_step(self, state: LoopState) -> dict[str, Any]:
        if not state["pending"]:  # a malformed decision: back to the model with the note
            return {}
        calls = state["pending"]
        results = await asyncio.gather(*(self._run(call) for call in calls))
        usage = Usage(**vars(state["usage"]))
        lines = []
        for call, (text, cost) in zip(calls, results, strict=True):
            usage.add(cost)
            lines.append(f"{call['tool']}({json.dumps(call['arguments'])}) returned: {text}")
        hand_offs = sum(self.tools[c["tool"]].hand_off for c in calls)
        return {
            "messages": [*state["messages"], HumanMessage("Tool results:\n" + "\n".join(lines))],
            "tool_calls": state["tool_calls"] + len(calls),
            "delegations": state["delegations"] + hand_offs,
            "pending": [],
            "usage": usage,
        }

    async def _run(self, call: dict[str, Any]) -> tuple[str, Usage]:
        try:
            return await self.tools[call["tool"]].run(call["arguments"])
        except ToolFailed as exc:
            return f"error: {exc}", Usage()


def _forced(state: dict[str, Any]) -> bool:
    """Whether the last decision was the forced answer (the LAST_STEP note is in the conversation)."""
    return any(isinstance(m, HumanMessage) and m.content == LAST_STEP for m in state["messages"])
