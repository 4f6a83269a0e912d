"""The agent loop's bounds and rules (workload/loop.py), driven by a scripted model: which replies
the model gives is the test's input, what the loop does with them is under test. The real model in
the loop is tested on the container lab (tests/integration/test_experiment.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from workload.loop import (
    LAST_STEP,
    Agent,
    MalformedDecision,
    Tool,
    ToolFailed,
    Usage,
    decision_schema,
    parse_decision,
)


class Script:
    """Replies in order (JSON text, or AIMessages as a server's tool parser makes them); records
    what the model was shown and what the request asked."""

    def __init__(self, *replies: Any) -> None:
        self.replies = [
            r if isinstance(r, AIMessage) else AIMessage(r if isinstance(r, str) else json.dumps(r)) for r in replies
        ]
        self.seen: list[tuple[list[BaseMessage], dict[str, Any]]] = []

    async def chat(self, messages: list[BaseMessage], bind: dict[str, Any]) -> tuple[AIMessage, Usage]:
        self.seen.append((list(messages), bind))
        return self.replies[len(self.seen) - 1], Usage(1, 100 * len(self.seen), 10)

    def schema(self, i: int) -> dict[str, Any]:
        return self.seen[i][1]["response_format"]["json_schema"]["schema"]


def json_agent(model: Script, tools: list[Tool]) -> Agent:
    return Agent("a tester", model, tools, "json_schema")


def native(*calls: tuple[str, dict[str, Any]], content: str = "", ids: bool = True) -> AIMessage:
    """A reply with tool calls as langchain-openai reads them from a server's `tool_calls`."""
    tool_calls = [
        {"name": name, "args": args, "id": f"srv-{i}" if ids else None, "type": "tool_call"}
        for i, (name, args) in enumerate(calls)
    ]
    return AIMessage(content, tool_calls=tool_calls)


def tool(name: str, reply: str = "{}", fail: str | None = None, hand_off: bool = False, **kw: Any) -> Tool:
    async def run(arguments: dict[str, Any]) -> tuple[str, Usage]:
        if fail:
            raise ToolFailed(fail)
        return reply, Usage(**kw)

    schema = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
    return Tool(name, f"the {name} tool", schema, run, hand_off)


def call(name: str, order: str = "ORD-00001") -> dict[str, Any]:
    return {"tool": name, "arguments": {"order_id": order}}


def test_the_model_decides_until_it_answers_and_sees_the_whole_conversation_each_step() -> None:
    model = Script(
        {"calls": [call("get_order")]},
        {"calls": [call("get_customer")]},
        {"answer": "Lyon"},
    )
    agent = json_agent(model, [tool("get_order", '{"customer_id": "C-0001"}'), tool("get_customer", "Lyon")])
    outcome = asyncio.run(agent.run("Where is the buyer?", max_steps=6))
    assert (outcome.answer, outcome.steps, outcome.tool_calls, outcome.delegations) == ("Lyon", 3, 2, 0)
    assert not outcome.max_steps_reached
    assert outcome.usage == Usage(3, 600, 30)
    sizes = [len(messages) for messages, _ in model.seen]
    assert sizes == [2, 4, 6]  # system + request, then each decision and its results resent
    last = "\n".join(str(m.content) for m in model.seen[2][0])
    assert '{"customer_id": "C-0001"}' in last and "Lyon" in last


def test_at_max_steps_the_model_must_answer() -> None:
    model = Script({"calls": [call("get_order")]}, {"calls": [call("get_order")]}, {"answer": "done"})
    outcome = asyncio.run(json_agent(model, [tool("get_order")]).run("q", max_steps=3))
    assert (outcome.steps, outcome.tool_calls, outcome.max_steps_reached) == (3, 2, True)
    assert model.schema(-1) == decision_schema([], can_call=False)
    assert model.seen[-1][0][-1].content == LAST_STEP
    assert "calls" in json.dumps(model.schema(0))


def test_a_tool_error_goes_back_to_the_model() -> None:
    model = Script({"calls": [call("get_order", "ORD-99999")]}, {"answer": "no such order"})
    failing = tool("get_order", fail="ORD-99999 not found")
    outcome = asyncio.run(json_agent(model, [failing]).run("q", max_steps=4))
    assert outcome.answer == "no such order" and outcome.tool_calls == 1
    assert "error: ORD-99999 not found" in str(model.seen[1][0][-1].content)


def test_a_malformed_decision_is_sent_back_once_then_fails_the_task() -> None:
    model = Script('{"calls": [{"tool": "get_ord', {"answer": "ok"})
    outcome = asyncio.run(json_agent(model, [tool("get_order")]).run("q", max_steps=4))
    assert (outcome.answer, outcome.steps, outcome.usage.llm_calls) == ("ok", 1, 2)
    assert "not valid: not JSON" in str(model.seen[1][0][-1].content)
    twice = Script('{"answer": ""}', '{"calls": [{"tool": "nope", "arguments": {}}]}')
    with pytest.raises(MalformedDecision, match="malformed twice: a call that names no known tool"):
        asyncio.run(json_agent(twice, [tool("get_order")]).run("q", max_steps=4))


def test_the_calls_of_one_decision_run_at_once_and_hand_offs_count_with_their_usage() -> None:
    started = {name: asyncio.Event() for name in ("a", "b")}

    def waiting(name: str, other: str) -> Tool:
        async def run(arguments: dict[str, Any]) -> tuple[str, Usage]:
            started[name].set()
            await asyncio.wait_for(started[other].wait(), 5)  # only returns if the other one runs meanwhile
            return name, Usage(2, 50, 5)

        return Tool(name, "waits", {"type": "object", "properties": {}}, run, hand_off=name == "b")

    model = Script({"calls": [{"tool": "a", "arguments": {}}, {"tool": "b", "arguments": {}}]}, {"answer": "x"})
    outcome = asyncio.run(json_agent(model, [waiting("a", "b"), waiting("b", "a")]).run("q", max_steps=3))
    assert (outcome.tool_calls, outcome.delegations) == (2, 1)
    assert outcome.usage == Usage(2 + 4, 100 + 200 + 100, 20 + 10)


def test_decisions_are_checked_against_the_tools() -> None:
    tools = [tool("get_order")]
    assert parse_decision('{"answer": " yes "}', tools, True) == {"answer": "yes"}
    with pytest.raises(ValueError, match='no "answer"'):
        parse_decision(json.dumps({"calls": [call("get_order")]}), tools, False)
    with pytest.raises(ValueError, match="1 to 4"):
        parse_decision(json.dumps({"calls": [call("get_order")] * 5}), tools, True)
    schema = decision_schema(tools)
    item = schema["anyOf"][0]["properties"]["calls"]["items"]["anyOf"][0]
    assert item["properties"]["tool"] == {"const": "get_order"}
    assert item["properties"]["arguments"]["required"] == ["order_id"]


def test_native_tool_calls_carry_the_tools_and_their_results_go_back_by_call_id() -> None:
    model = Script(
        native(("get_order", {"order_id": "ORD-00001"}), ("get_order", {"order_id": "ORD-00002"})),
        native(("get_customer", {"order_id": "C-0001"}), ids=False),
        AIMessage("Lyon"),
    )
    tools = [tool("get_order", '{"customer_id": "C-0001"}'), tool("get_customer", "Lyon")]
    outcome = asyncio.run(Agent("a tester", model, tools, "native").run("Where is the buyer?", max_steps=6))
    assert (outcome.answer, outcome.steps, outcome.tool_calls) == ("Lyon", 3, 3)
    first = model.seen[0][1]
    assert first["parallel_tool_calls"] is True and first["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in first["tools"]] == ["get_order", "get_customer"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["order_id"]
    assert "Tools:" not in str(model.seen[0][0][0].content)  # the tools travel in the request, not the prompt
    last = model.seen[2][0]
    results = [m for m in last if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in results] == ["srv-0", "srv-1", "call-2-0"]  # a missing id is given one
    said = [m for m in last if isinstance(m, AIMessage)]
    assert [c["id"] for c in said[1].tool_calls] == ["call-2-0"]
    assert results[2].content == "Lyon"


def test_a_native_last_step_says_tool_choice_none() -> None:
    model = Script(native(("get_order", {"order_id": "ORD-00001"})), AIMessage("shipped"))
    outcome = asyncio.run(Agent("a tester", model, [tool("get_order")], "native").run("q", max_steps=2))
    assert (outcome.answer, outcome.max_steps_reached) == ("shipped", True)
    assert model.seen[1][1]["tool_choice"] == "none" and "parallel_tool_calls" not in model.seen[1][1]


def test_an_unreadable_native_decision_is_sent_back_once_then_fails_the_task() -> None:
    model = Script(native(("get_parcel", {"order_id": "x"})), AIMessage("ok"))
    outcome = asyncio.run(Agent("a tester", model, [tool("get_order")], "native").run("q", max_steps=4))
    assert (outcome.answer, outcome.steps, outcome.usage.llm_calls) == ("ok", 1, 2)
    note = str(model.seen[1][0][-1].content)
    assert "'get_parcel', which is no tool of yours (tools: get_order)" in note
    assert not any(isinstance(m, ToolMessage) for m in model.seen[1][0])
    broken = AIMessage(
        "", invalid_tool_calls=[{"name": "get_order", "args": '{"order_id": ', "id": "1", "error": None}]
    )
    twice = Script(broken, AIMessage(""))
    with pytest.raises(MalformedDecision, match="malformed twice: neither tool calls nor an answer"):
        asyncio.run(Agent("a tester", twice, [tool("get_order")], "native").run("q", max_steps=4))
    assert "arguments are not JSON" in str(twice.seen[1][0][-1].content)
