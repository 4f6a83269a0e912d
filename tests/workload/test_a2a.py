"""The A2A hand-off for real: Agent B's Agent Card and JSON-RPC endpoint on the loopback stack, the
official a2a-sdk client against it, Agent A's A2A hand-off tool, and a multihop task that uses it,
each checked against the telemetry both sides wrote. One test runs Agent B's A2A side in process with
a stand-in for its loop, to fail it on purpose."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, new_text_message
from a2a.types import AgentCard, Role, SendMessageRequest, StreamResponse, TaskState
from google.protobuf.json_format import MessageToDict
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Tool as McpTool
from starlette.applications import Starlette

from workload import driver
from workload.config import ServiceConfig
from workload.handoff import (
    CARD_OP,
    HAND_OFF_DESCRIPTION,
    HAND_OFF_TOOL,
    SEND_OP,
    STREAM_OP,
    A2AHandOff,
    a2a_routes,
)
from workload.knobs import Knobs
from workload.local import LocalStack, free_port, read_events, read_served_events
from workload.loop import MalformedDecision, Outcome, Tool, ToolFailed, Usage
from workload.mcp_client import USAGE_META, HopError
from workload.tasks import Task, make_dataset
from workload.telemetry import H_KNOBS, Telemetry, TelemetryMiddleware, current_context, current_knobs, set_run

pytestmark = pytest.mark.integration
SHORT = Knobs(max_steps=2)
"""Agent B's loop in at most two LLM calls (a tool call, then the answer): keeps the CPU LLM's work small."""
CARD_PATH = "/.well-known/agent-card.json"


def _request(seed: int) -> str:
    return f"Track parcel {make_dataset(seed).shipments[0].tracking_no}: at which hub was it last scanned?"


def test_agent_b_serves_its_agent_card_and_the_same_hand_off_over_mcp(stack: LocalStack, tmp_path: Path) -> None:
    response = httpx.get(stack.url("agent-b") + CARD_PATH, timeout=10)
    assert response.status_code == 200
    card = response.json()
    rpc_url = stack.url("agent-b") + "/"
    assert card["name"] == "Agent B" and card["version"] and card["capabilities"]["streaming"] is True
    assert {s["id"] for s in card["skills"]} == {"parcel_tracking", "carrier_status"}
    assert all(s["name"] and s["description"] and s["tags"] for s in card["skills"])
    assert {(i["url"], i["protocolBinding"], i["protocolVersion"]) for i in card["supportedInterfaces"]} == {
        (rpc_url, "JSONRPC", "1.0"),
        (rpc_url, "JSONRPC", "0.3"),
    }
    assert (card["url"], card["protocolVersion"]) == (rpc_url, "0.3")  # what an A2A 0.3 client reads
    bearer = card["securitySchemes"]["bearer"]  # A2A 1.0's form, and 0.3's beside it
    assert bearer["httpAuthSecurityScheme"] == {"scheme": "Bearer"}
    assert (bearer["type"], bearer["scheme"]) == ("http", "Bearer")
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]
    parsed = asyncio.run(_resolve(stack.url("agent-b")))
    assert parsed.capabilities.streaming and parsed.name == "Agent B"

    # the model sees the same tool whichever protocol carries it
    mcp_tool = asyncio.run(_mcp_tool(stack.url("agent-b") + "/mcp", stack.headers))
    telemetry = Telemetry("test", "agent-a", None, tmp_path)
    a2a_tool = A2AHandOff("agent-b", stack.url("agent-b"), telemetry, 10, stack.token).tool()
    assert (mcp_tool.name, mcp_tool.description, mcp_tool.inputSchema) == (
        a2a_tool.name,
        a2a_tool.description,
        a2a_tool.args_schema,
    )


async def _resolve(base_url: str) -> AgentCard:
    async with httpx.AsyncClient(timeout=10) as http:
        return await A2ACardResolver(http, base_url).get_agent_card()


async def _mcp_tool(url: str, headers: dict[str, str]) -> McpTool:
    async with (
        httpx.AsyncClient(timeout=30, headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        [tool] = (await session.list_tools()).tools
        return tool


async def _send(base_url: str, text: str, streaming: bool, auth: dict[str, str]) -> list[StreamResponse]:
    """One message to the agent with the official client, as the card says to send it."""
    async with httpx.AsyncClient(timeout=300, headers={H_KNOBS: SHORT.header(), **auth}) as http:
        client = await ClientFactory(ClientConfig(httpx_client=http, streaming=streaming)).create_from_url(base_url)
        message = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
        return [event async for event in client.send_message(message)]


def _usage(metadata: object) -> dict:
    return MessageToDict(metadata)[USAGE_META]  # type: ignore[arg-type]


def test_the_official_client_completes_a_task_by_stream_and_by_send(stack: LocalStack, seed: int) -> None:
    """message/stream (A2A 1.0: SendStreamingMessage): the task, `working`, the answer as an artifact,
    then `completed` with Agent B's usage; message/send (SendMessage): the finished task in one answer."""
    events = asyncio.run(_send(stack.url("agent-b"), _request(seed), True, stack.headers))
    assert events[0].HasField("task") and events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states[0] == TaskState.TASK_STATE_WORKING and states[-1] == TaskState.TASK_STATE_COMPLETED, states
    [artifact] = [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]
    assert artifact.name == "answer" and get_artifact_text(artifact).strip()
    assert events[-1].HasField("status_update")
    usage = _usage(events[-1].status_update.metadata)
    assert 1 <= usage["llm_calls"] <= 3 and usage["prompt_tokens"] > 0 and usage["steps"] >= 1

    [event] = asyncio.run(_send(stack.url("agent-b"), _request(seed), False, stack.headers))
    assert event.HasField("task") and event.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [a.name for a in event.task.artifacts] == ["answer"] and get_artifact_text(event.task.artifacts[0])
    assert _usage(event.task.metadata)["llm_calls"] >= 1


def test_agent_as_hand_off_tool_reaches_agent_b_over_a2a(stack: LocalStack, seed: int, tmp_path: Path) -> None:
    """Agent A's A2A hand-off tool, called directly: the card once, then one logged `agent` call whose
    server side has the same call id and whose children are Agent B's own LLM calls."""
    telemetry = Telemetry("loopback", "agent-a", "agent-a", tmp_path)
    hand_off = A2AHandOff("agent-b", stack.url("agent-b"), telemetry, 300, stack.token)

    async def hand_over() -> tuple[Tool, str, str, Usage]:
        set_run({"agent": 300}, SHORT)
        [tool] = await hand_off.load()
        async with telemetry.call("task", "agent-a", "test", task_id="a2a-direct") as root:
            answer, usage = await tool.run({"request": _request(seed)})
        return tool, root.call_id, answer, usage

    tool, root_id, answer, usage = asyncio.run(hand_over())
    assert (tool.name, tool.description, tool.hand_off) == (HAND_OFF_TOOL, HAND_OFF_DESCRIPTION, True)
    assert answer and usage.llm_calls >= 1 and usage.prompt_tokens > 0 and usage.completion_tokens > 0

    mine = read_events(tmp_path)
    [card] = [e for e in mine if e["op"] == CARD_OP]
    [call] = [e for e in mine if e["op"] == STREAM_OP]
    assert (card["kind"], card["peer"], card["status"]) == ("agent", "agent-b", "ok")
    assert (call["kind"], call["peer"], call["status"], call["parent_id"]) == ("agent", "agent-b", "ok", root_id)
    assert call["req_bytes"] > 0 and call["resp_bytes"] > 0 and call["conns"]
    served = read_served_events(stack.telemetry_dir, [card["call_id"], call["call_id"]])
    server = {e["call_id"]: e for e in served if e["side"] == "server" and e["service"] == "agent-b"}
    assert server[card["call_id"]]["op"] == f"GET {CARD_PATH}"
    hop = server[call["call_id"]]
    assert (hop["kind"], hop["op"], hop["status"], hop["task_id"]) == ("agent", STREAM_OP, "ok", "a2a-direct")
    assert (hop["parent_id"], hop["trace_id"]) == (root_id, call["trace_id"])
    assert [hop["remote"], hop["local"]] in call["conns"]
    llm = [e for e in served if e["service"] == "agent-b" and e["kind"] == "llm" and e["parent_id"] == call["call_id"]]
    assert len(llm) == usage.llm_calls
    assert all(e["task_id"] == "a2a-direct" and e["trace_id"] == call["trace_id"] for e in llm)
    assert sum(e["input_tokens"] for e in llm) == usage.prompt_tokens


def test_a_multihop_task_hands_off_over_a2a(stack: LocalStack, tasks: list[Task]) -> None:
    """Through Agent A with hand_off a2a: every hand-off the model chose is an `agent` call of op
    SendStreamingMessage to agent-b, served with the same call id, Agent B's LLM calls its children;
    Agent B has no MCP traffic, and the task's LLM calls (Agent B's too) are those the loop reported."""
    task = next(t for t in tasks if t.kind == "parcel_hub")  # the parcel is tool-synth's, only Agent B has it
    knobs = Knobs(hand_off="a2a", max_steps=4)
    [result] = asyncio.run(
        driver.run_tasks("multihop", [task], stack.entry, telemetry_dir=stack.telemetry_dir, knobs=knobs)
    )
    assert result.ok and result.loop, result.error
    events = read_served_events(stack.telemetry_dir, [result.call_id])
    root = next(e for e in events if e["call_id"] == result.call_id and e["side"] == "client")
    hand_offs = [
        e for e in events if e["trace_id"] == root["trace_id"] and e["kind"] == "agent" and e["side"] == "client"
    ]
    assert len(hand_offs) == result.loop["delegations"]
    assert all((e["service"], e["peer"], e["op"]) == ("agent-a", "agent-b", STREAM_OP) for e in hand_offs)
    events = read_served_events(stack.telemetry_dir, [result.call_id, *(e["call_id"] for e in hand_offs)])
    mine = [e for e in events if e["trace_id"] == root["trace_id"]]
    for call in hand_offs:
        [served] = [e for e in mine if e["side"] == "server" and e["call_id"] == call["call_id"]]
        assert (served["service"], served["kind"], served["op"], served["status"]) == (
            "agent-b",
            "agent",
            STREAM_OP,
            "ok",
        )
        assert any(e["service"] == "agent-b" and e["kind"] == "llm" and e["parent_id"] == call["call_id"] for e in mine)
    assert not any(e["service"] == "agent-b" and e["op"].startswith("tools/call") for e in mine)
    assert sum(e["kind"] == "llm" and e["side"] == "client" for e in mine) == result.loop["llm_calls"]


# --- Agent B's A2A side in process, its loop stood in for, to make it fail ---


async def _stand_in(request: str) -> Outcome:
    """Answers with the ids and knobs it ran under; fails as Agent B's loop does when asked to."""
    if "fail" in request:
        raise MalformedDecision("the model's decision was malformed twice")
    if "slow" in request:
        await asyncio.sleep(3)
    ctx = current_context()
    answer = (
        f"parent={ctx.call_id if ctx else None} task={ctx.task_id if ctx else None} steps={current_knobs().max_steps}"
    )
    return Outcome(answer, 2, 1, 0, False, Usage(2, 100, 20))


@asynccontextmanager
async def _serving(directory: Path) -> AsyncIterator[int]:
    port = free_port()
    config = ServiceConfig(node="test", port=port, telemetry_dir=directory)
    app = TelemetryMiddleware(
        Starlette(routes=a2a_routes(config, _stand_in)), Telemetry("test", "agent-b", None, directory)
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await serving


def test_agent_bs_a2a_side_reports_failures_and_timeouts_and_answers_a2a_0_3(tmp_path: Path) -> None:
    telemetry = Telemetry("test", "agent-a", "agent-a", tmp_path)
    outcomes: dict[str, object] = {}

    async def scenario() -> None:
        async with _serving(tmp_path) as port:
            for streaming in (True, False):
                tool = A2AHandOff("agent-b", f"http://127.0.0.1:{port}", telemetry, 60, streaming=streaming).tool()
                set_run({"agent": 1}, Knobs(max_steps=3))
                async with telemetry.call("task", "agent-a", "test", task_id=f"t-{streaming}") as root:
                    outcomes[f"ok-{streaming}"] = (root.call_id, await tool.run({"request": "track TRK1"}))
                    for case, error in (("please fail", ToolFailed), ("be slow", HopError), ("", ToolFailed)):
                        with pytest.raises(error) as raised:
                            await tool.run({"request": case})
                        outcomes[f"{case}-{streaming}"] = str(raised.value)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                for method, text in (("message/send", "hi"), ("message/stream", "hi"), ("message/send", "")):
                    outcomes[f"{method} {text}"] = (await http.post("/", json=_v0_3(method, text))).text

    asyncio.run(scenario())
    for streaming in (True, False):
        root_id, (answer, usage) = outcomes[f"ok-{streaming}"]  # type: ignore[misc]
        assert answer == f"parent={_hand_off_of(tmp_path, root_id)} task=t-{streaming} steps=3"
        assert usage == Usage(2, 100, 20)
        assert (
            outcomes[f"please fail-{streaming}"]
            == "agent-b: MalformedDecision: the model's decision was malformed twice"
        )
        assert outcomes[f"be slow-{streaming}"] == "agent-b: TimeoutError: no answer within 1 s (agent timeout)"
        assert outcomes[f"-{streaming}"].startswith("bad arguments: ")
    assert '"state":"completed"' in outcomes["message/send hi"] and "parent=" in outcomes["message/send hi"]
    assert '"kind":"status-update"' in outcomes["message/stream hi"] and '"final":true' in outcomes["message/stream hi"]
    assert '"state":"rejected"' in outcomes["message/send "] and "bad request" in outcomes["message/send "]
    # the server's records: a failed or rejected task marks the call an error, with the reason
    served = [e for e in read_events(tmp_path) if e["side"] == "server"]
    assert {e["op"] for e in served} == {f"GET {CARD_PATH}", STREAM_OP, SEND_OP, "message/send", "message/stream"}
    failed = sorted((e["op"], e["error"]) for e in served if e["status"] == "error")
    malformed = "agent-b: MalformedDecision: the model's decision was malformed twice"
    assert failed == [
        (SEND_OP, f"task TASK_STATE_FAILED: {malformed}"),
        (STREAM_OP, f"task TASK_STATE_FAILED: {malformed}"),
        ("message/send", "task rejected: agent-b: bad request: String should have at least 1 character"),
    ]


def _v0_3(method: str, text: str) -> dict:
    """A JSON-RPC request of A2A 0.3, as a client on an a2a-sdk before 1.0 sends it."""
    message = {
        "role": "user",
        "kind": "message",
        "messageId": str(uuid.uuid4()),
        "parts": [{"kind": "text", "text": text}],
    }
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message}}


def _hand_off_of(directory: Path, root_id: str) -> str:
    """The call id of the first hand-off (a message, not the card) made within the root call."""
    return next(
        e["call_id"]
        for e in read_events(directory)
        if e["parent_id"] == root_id and e["kind"] == "agent" and e["op"] in (STREAM_OP, SEND_OP)
    )
