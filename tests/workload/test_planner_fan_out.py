"""The planner's fan-out (workload/agents.py FanOut) over real A2A: three workers' A2A sides served in
process on loopback, their loops stood in for, reached through the same hand-off carriers Agent A uses.
The subtasks of one call go to the workers in turn and run at once; a failed subtask is reported in
the answer without failing the others; each hand-off is its own logged `agent` call to its worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette

from workload.agents import FanOut, HandOffTo
from workload.config import ServiceConfig
from workload.handoff import FAN_OUT_TOOL, STREAM_OP, a2a_routes
from workload.knobs import Knobs
from workload.local import free_port, read_events
from workload.loop import MalformedDecision, Outcome, ToolFailed, Usage
from workload.telemetry import Telemetry, TelemetryMiddleware, set_run

pytestmark = pytest.mark.integration
WORKERS = ("w1", "w2", "w3")
HOLD_S = 0.5
"""How long a stood-in worker works on a subtask: long enough that subtasks run at once overlap."""


def _worker(name: str, spans: list[tuple[str, str, float, float]]):
    async def subtask(request: str) -> Outcome:
        if "fail" in request:
            raise MalformedDecision("the model's decision was malformed twice")
        start = time.monotonic()
        await asyncio.sleep(HOLD_S)
        spans.append((name, request, start, time.monotonic()))
        return Outcome(f"{name} answered {request}", 2, 1, 0, False, Usage(2, 100, 20))

    return subtask


@asynccontextmanager
async def _serving(name: str, directory: Path, spans: list) -> AsyncIterator[str]:
    port = free_port()
    config = ServiceConfig(node=name, port=port, telemetry_dir=directory)
    routes = a2a_routes(config, _worker(name, spans), "worker", f"Logistics agent on {name}")
    app = TelemetryMiddleware(Starlette(routes=routes), Telemetry("test", "worker", None, directory / name))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await serving


def test_a_fan_out_hands_each_subtask_to_the_next_worker_and_runs_them_at_once(tmp_path: Path) -> None:
    spans: list[tuple[str, str, float, float]] = []
    telemetry = Telemetry("test", "planner", "planner", tmp_path)
    found: dict[str, object] = {}

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            peers = {f"worker@{w}": await stack.enter_async_context(_serving(w, tmp_path, spans)) for w in WORKERS}
            config = ServiceConfig(node="planner", peers=peers)
            fan_out = FanOut([HandOffTo(config, telemetry, peer) for peer in config.instances("worker")])
            set_run({"agent": 1}, Knobs(hand_off="a2a"))
            (tool,) = await fan_out.load()
            found["tool"] = tool
            async with telemetry.call("task", "planner", "test", task_id="t1"):
                found["first"] = await tool.run({"requests": ["a", "b", "c", "d"]})
                found["second"] = await tool.run({"requests": ["e", "please fail"]})

    asyncio.run(scenario())
    tool = found["tool"]
    assert tool.name == FAN_OUT_TOOL and tool.hand_offs({"requests": ["x", "y"]}) == 2  # type: ignore[attr-defined]
    text, usage = found["first"]  # type: ignore[misc]
    # in turn: a to w1, b to w2, c to w3, d to w1 again; answers in the order asked
    assert text.split("\n\n") == [
        "Question 1: a\nAnswer: w1 answered a",
        "Question 2: b\nAnswer: w2 answered b",
        "Question 3: c\nAnswer: w3 answered c",
        "Question 4: d\nAnswer: w1 answered d",
    ]
    assert usage == Usage(8, 400, 80)
    first = [s for s in spans if s[1] in "abcd"]
    assert max(start for *_, start, _ in first) < min(end for *_, end in first)  # all four at once
    # the next call goes on where the last one stopped (e to w2); a failed subtask is reported, the rest kept
    text, usage = found["second"]  # type: ignore[misc]
    assert text.startswith("Question 1: e\nAnswer: w2 answered e\n\nQuestion 2: please fail\nAnswer: error: worker: ")
    assert usage == Usage(2, 100, 20)

    hand_offs = [
        e for e in read_events(tmp_path) if e["side"] == "client" and e["kind"] == "agent" and e["op"] == STREAM_OP
    ]
    assert sorted(e["peer"] for e in hand_offs) == sorted(
        ["worker@w1", "worker@w2", "worker@w3", "worker@w1", "worker@w2", "worker@w3"]
    )
    assert all(e["status"] == "ok" for e in hand_offs)  # a failed task is an answer over A2A, not a failed hop


def test_a_fan_out_with_bad_arguments_fails_the_call_for_the_model_to_see(tmp_path: Path) -> None:
    config = ServiceConfig(node="planner", peers={"worker@w1": "http://127.0.0.1:1/mcp"})
    fan_out = FanOut([HandOffTo(config, Telemetry("test", "planner", "planner", tmp_path), "worker@w1")])
    for arguments in ({"requests": []}, {"requests": "track TRK1"}, {}):
        with pytest.raises(ToolFailed, match="^bad arguments: "):
            asyncio.run(fan_out.ask([], arguments))
