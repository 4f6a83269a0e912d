"""The agent loop both agents run: a LangGraph graph of two nodes, `model` and `tools`.

On every step the model gets the system prompt, the tools, the user's request and the whole
conversation so far (each earlier decision and every tool result, in full, resent as real agents
resend them) and decides: call one or more tools, or answer. The calls of one decision run at once;
their results join the conversation and the model decides again, until it answers or the step bound
(the run's `max_steps` knob) is reached, when it must answer with what it has.

How the model states a decision is the run's `tool_calling` knob (`DECISIONS`; why the default is
`json_schema`: workload/knobs.py):
- `native`: OpenAI tool calling, as LangChain's `bind_tools` and the OpenAI SDK do it: the request
  carries the tools' schemas (`tools`, `parallel_tool_calls`), the server renders them with the
  model's chat template and parses its reply into `tool_calls` (vLLM's `--tool-call-parser`,
  llama.cpp's Jinja templates); results go back as `tool` messages with the call's id.
- `json_schema`: for a server without a tool parser: the tools are listed in the system prompt and
  the reply is constrained to the decision's JSON schema (`response_format`), so a small model's
  choice of tools, arguments and when to stop is what varies, not its formatting.

A decision that cannot be read (cut off by the token limit, an unknown tool, arguments that are not
JSON) is sent back once with what was wrong; a second one fails the task. A tool that ran and failed
(unknown order, bad argument) is an observation the model sees; a hop that failed (timeout, refused
connection) fails the task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from workload.knobs import ToolCalling

MAX_PARALLEL_CALLS = 4
"""The most tool calls a `json_schema` decision may make (they run at once); a native decision's
calls all run, as LangGraph's ToolNode runs them."""


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
    async def chat(self, messages: list[BaseMessage], bind: dict[str, Any]) -> tuple[AIMessage, Usage]:
        """The model's reply to the conversation, asked with `bind` (the request's extra fields:
        `tools`, or a `response_format`), and what it cost."""
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
    fan_out: str | None = None
    """A hand-off to several agents at once: its argument listing the subtasks, each one hand-off."""

    def hand_offs(self, arguments: dict[str, Any]) -> int:
        """How many subtasks a call with these arguments hands to other agents."""
        if not self.hand_off:
            return 0
        if self.fan_out is None:
            return 1
        subtasks = arguments.get(self.fan_out)
        return len(subtasks) if isinstance(subtasks, list) else 0


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

ROLE_PROMPT = (
    "You are {who}. You know nothing about the shop's orders, customers, parcels or carriers but what "
    "your tools return, so call the tools that find what the request asks, one lookup after another "
    "where one needs the result of another, and answer once the tool results hold every fact asked for. "
    "In the answer, copy ids, names, statuses, dates, amounts and hubs exactly as the tools returned them."
)
JSON_PROMPT = (
    '\nEach turn, reply with JSON: either {{"calls": [{{"tool": NAME, "arguments": {{...}}}}, ...]}} to call '
    'tools (the calls of one turn run at once), or {{"answer": TEXT}} to answer.\nTools:\n{tools}'
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


@dataclass(frozen=True)
class Call:
    id: str
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """What the model decided: an answer, or calls to run; `said` is the decision as it joins the
    conversation."""

    said: AIMessage
    answer: str | None = None
    calls: tuple[Call, ...] = ()


class JsonSchemaDecisions:
    """Decisions as JSON constrained to `decision_schema`; tool results go back as one user message."""

    retry = "Reply with JSON exactly as instructed."

    def system(self, who: str, tools: list[Tool]) -> str:
        return ROLE_PROMPT.format(who=who) + JSON_PROMPT.format(tools=describe(tools))

    def request(self, tools: list[Tool], can_call: bool) -> dict[str, Any]:
        schema = decision_schema(tools, can_call)
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "decision", "schema": schema}}}

    def read(self, reply: AIMessage, tools: list[Tool], can_call: bool, step: int) -> Decision:
        decision = parse_decision(reply.text, tools, can_call)
        said = AIMessage(json.dumps(decision))
        if "answer" in decision:
            return Decision(said, answer=decision["answer"])
        calls = (Call(f"call-{step}-{i}", c["tool"], c["arguments"]) for i, c in enumerate(decision["calls"]))
        return Decision(said, calls=tuple(calls))

    def results(self, calls: tuple[Call, ...], texts: list[str]) -> list[BaseMessage]:
        lines = (f"{c.tool}({json.dumps(c.arguments)}) returned: {t}" for c, t in zip(calls, texts, strict=True))
        return [HumanMessage("Tool results:\n" + "\n".join(lines))]


class NativeDecisions:
    """OpenAI tool calling: the tools in the request, the server's parser reads the model's calls,
    each result goes back as a `tool` message with its call's id. At the last step the request says
    `tool_choice: none`."""

    retry = "Call a tool by its name with JSON arguments, or answer in plain text."

    def system(self, who: str, tools: list[Tool]) -> str:
        return ROLE_PROMPT.format(who=who)

    def request(self, tools: list[Tool], can_call: bool) -> dict[str, Any]:
        specs = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": _argument_schema(t.args_schema),
                },
            }
            for t in tools
        ]
        if not can_call:
            return {"tools": specs, "tool_choice": "none"}
        return {"tools": specs, "tool_choice": "auto", "parallel_tool_calls": True}

    def read(self, reply: AIMessage, tools: list[Tool], can_call: bool, step: int) -> Decision:
        if reply.invalid_tool_calls:
            bad = reply.invalid_tool_calls[0]
            raise ValueError(f"a tool call whose arguments are not JSON: {bad.get('name')}({bad.get('args')})"[:240])
        if not reply.tool_calls:
            answer = reply.text.strip()
            if not answer:
                raise ValueError("neither tool calls nor an answer")
            return Decision(reply, answer=answer)
        if not can_call:
            raise ValueError("a tool call after the last step; answer instead")
        names = {t.name for t in tools}
        unknown = [c["name"] for c in reply.tool_calls if c["name"] not in names]
        if unknown:
            raise ValueError(f"a call of {unknown[0]!r}, which is no tool of yours (tools: {', '.join(sorted(names))})")
        calls = tuple(
            Call(c.get("id") or f"call-{step}-{i}", c["name"], c["args"]) for i, c in enumerate(reply.tool_calls)
        )
        said = reply.model_copy(
            update={"tool_calls": [{**c, "id": k.id} for c, k in zip(reply.tool_calls, calls, strict=True)]}
        )
        return Decision(said, calls=calls)

    def results(self, calls: tuple[Call, ...], texts: list[str]) -> list[BaseMessage]:
        return [ToolMessage(t, tool_call_id=c.id, name=c.tool) for c, t in zip(calls, texts, strict=True)]


DECISIONS: dict[ToolCalling, JsonSchemaDecisions | NativeDecisions] = {
    "native": NativeDecisions(),
    "json_schema": JsonSchemaDecisions(),
}


class LoopState(TypedDict):
    messages: list[BaseMessage]
    steps: int
    tool_calls: int
    delegations: int
    malformed: int
    pending: tuple[Call, ...]
    answer: str | None
    usage: Usage


class Agent:
    """One agent: who it is, its tools and its model, run as a LangGraph tool loop whose decisions
    take the form `tool_calling` names."""

    def __init__(self, who: str, model: Model, tools: list[Tool], tool_calling: ToolCalling = "json_schema") -> None:
        self.who, self.model, self.tools = who, model, {t.name: t for t in tools}
        self.decisions = DECISIONS[tool_calling]
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
        system = SystemMessage(self.decisions.system(self.who, list(self.tools.values())))
        state: LoopState = {
            "messages": [system, HumanMessage(request)],
            "steps": 0,
            "tool_calls": 0,
            "delegations": 0,
            "malformed": 0,
            "pending": (),
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
        reply, cost = await self.model.chat(messages, self.decisions.request(tools, can_call))
        usage = Usage(**vars(state["usage"]))
        usage.add(cost)
        try:
            decision = self.decisions.read(reply, tools, can_call, state["steps"] + 1)
        except ValueError as exc:
            if state["malformed"]:
                raise MalformedDecision(f"the model's decision was malformed twice: {exc}") from exc
            # the unreadable reply is shown as text: a native call of an unknown tool has no result to pair with
            said = AIMessage(reply.text or json.dumps(reply.tool_calls or reply.invalid_tool_calls)[:2000])
            retry = HumanMessage(f"That reply was not valid: {exc}. {self.decisions.retry}")
            return {"messages": [*messages, said, retry], "malformed": 1, "usage": usage, "answer": None}
        update: dict[str, Any] = {
            "messages": [*messages, decision.said],
            "steps": state["steps"] + 1,
            "malformed": 0,
            "usage": usage,
        }
        return {**update, "pending": decision.calls, "answer": decision.answer}

    async def _tools_step(self, state: LoopState) -> dict[str, Any]:
        if not state["pending"]:  # a malformed decision: back to the model with the note
            return {}
        calls = state["pending"]
        results = await asyncio.gather(*(self._run(call) for call in calls))
        usage = Usage(**vars(state["usage"]))
        for _, cost in results:
            usage.add(cost)
        hand_offs = sum(self.tools[c.tool].hand_offs(c.arguments) for c in calls)
        return {
            "messages": [*state["messages"], *self.decisions.results(calls, [text for text, _ in results])],
            "tool_calls": state["tool_calls"] + len(calls),
            "delegations": state["delegations"] + hand_offs,
            "pending": (),
            "usage": usage,
        }

    async def _run(self, call: Call) -> tuple[str, Usage]:
        try:
            return await self.tools[call.tool].run(call.arguments)
        except ToolFailed as exc:
            return f"error: {exc}", Usage()


def _forced(state: dict[str, Any]) -> bool:
    """Whether the last decision was the forced answer (the LAST_STEP note is in the conversation)."""
    return any(isinstance(m, HumanMessage) and m.content == LAST_STEP for m in state["messages"])
