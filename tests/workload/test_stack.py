"""The workload for real on loopback: PostgreSQL, the CPU LLM, MCP servers, baseline, agents."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import LATEST_PROTOCOL_VERSION

from workload import driver
from workload.knobs import Knobs
from workload.local import LocalPostgres, LocalStack, free_port, read_events, read_served_events, wait_http
from workload.tasks import Task, answer_is_correct, make_dataset
from workload.telemetry import H_TIMEOUTS

pytestmark = pytest.mark.integration
HTTP_KINDS = ("task", "agent", "tool", "service")
MCP_SERVERS = ("tool-db", "tool-synth", "agent-b")


async def _mcp(
    url: str, tool: str | None = None, arguments: dict | None = None, headers: dict | None = None
) -> tuple[list[str], object]:
    """List the server's tools with the official MCP client and optionally call one."""
    async with (
        httpx.AsyncClient(timeout=30, headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
    ):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = [t.name for t in (await session.list_tools()).tools]
            result = await session.call_tool(tool, arguments or {}) if tool else None
            return names, result


@pytest.mark.parametrize("endpoint", ["/mcp", "/mcp-sse"])
def test_official_mcp_client_lists_and_calls_every_tool_server(stack: LocalStack, seed: int, endpoint: str) -> None:
    order = make_dataset(seed).orders[4]
    auth = stack.headers
    names, result = asyncio.run(_mcp(stack.url("tool-db") + endpoint, "get_order", {"order_id": order.order_id}, auth))
    assert sorted(names) == ["get_customer", "get_order", "get_shipment"]
    assert not result.isError
    assert result.structuredContent["status"] == order.status and result.structuredContent["total"] == order.total

    names, result = asyncio.run(_mcp(stack.url("tool-synth") + endpoint, "track_parcel", {"tracking_no": "TRK1"}, auth))
    assert sorted(names) == ["carrier_status", "track_parcel"]
    assert len(result.structuredContent["backends"]) == stack.synth["fanout"]
    assert abs(len(json.dumps(result.structuredContent)) - stack.synth["response_bytes"]) < 200

    names, _ = asyncio.run(_mcp(stack.url("agent-b") + endpoint, headers=auth))
    assert names == ["ask_logistics_agent"]

    _, result = asyncio.run(_mcp(stack.url("tool-db") + endpoint, "drop_tables", {}, auth))
    assert result.isError and "drop_tables" in result.content[0].text
    _, result = asyncio.run(
        _mcp(stack.url("tool-db") + endpoint, "get_order", {"order_id": "1; DROP TABLE orders"}, auth)
    )
    assert result.isError


MCP_ACCEPT = {"accept": "application/json, text/event-stream"}


def _initialize(http: httpx.Client, path: str) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LATEST_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    return http.post(path, json=body, headers=MCP_ACCEPT)


@pytest.mark.parametrize("service", MCP_SERVERS)
def test_every_mcp_server_answers_stateless_json_and_stateful_sse_at_once(stack: LocalStack, service: str) -> None:
    """On the wire: /mcp answers initialize with plain JSON and no session; /mcp-sse with an SSE
    stream and a session id, which lives until the client's DELETE."""
    with httpx.Client(base_url=stack.url(service), timeout=30, headers=stack.headers) as http:
        plain = _initialize(http, "/mcp")
        assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
        assert "mcp-session-id" not in plain.headers and plain.json()["result"]["serverInfo"]["name"] == service

        stateful = _initialize(http, "/mcp-sse")
        assert stateful.status_code == 200 and stateful.headers["content-type"].startswith("text/event-stream")
        [data] = [line for line in stateful.text.splitlines() if line.startswith("data:")]
        assert json.loads(data.removeprefix("data:"))["result"]["serverInfo"]["name"] == service
        session = {"mcp-session-id": stateful.headers["mcp-session-id"]}
        assert http.delete("/mcp-sse", headers=session).status_code == 200
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        assert http.post("/mcp-sse", json=ping, headers={**session, **MCP_ACCEPT}).status_code == 404


def test_a_tool_error_inside_an_sse_answer_marks_the_servers_record(stack: LocalStack) -> None:
    """A failed tool inside an HTTP 200 marks the server's record as failed, whether the answer was
    JSON or an SSE stream."""

    def failed() -> list[dict]:
        return [
            e
            for e in read_events(stack.telemetry_dir)
            if e["service"] == "tool-db" and e["op"] == "tools/call get_order" and e["status"] == "error"
        ]

    before = len(failed())
    for endpoint in ("/mcp", "/mcp-sse"):
        asyncio.run(
            _mcp(stack.url("tool-db") + endpoint, "get_order", {"order_id": "1; DROP TABLE orders"}, stack.headers)
        )
    deadline = time.monotonic() + 10  # a server logs its side once the response has gone out
    while len(failed()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    new = failed()[before:]
    assert len(new) == 2 and all(e["error"].startswith("tool error: ") for e in new), new


def test_baseline_answers_every_task_correctly(runs: dict, tasks: list[Task]) -> None:
    for result, task in zip(runs["baseline"], tasks, strict=True):
        assert result.ok, result.error
        assert answer_is_correct(task, result.answer), (task.expected, result.answer)


def _by_trace(events: list[dict]) -> dict[str, list[dict]]:
    traces: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        traces[event["trace_id"]].append(event)
    return traces


def _task_events(events: list[dict], result: driver.TaskResult) -> list[dict]:
    root = next(e for e in events if e["call_id"] == result.call_id and e["service"] == "driver")
    return _by_trace(events)[root["trace_id"]]


HOUSEKEEPING = ("tools/list", "initialize", "agent-card")


@pytest.mark.parametrize("scenario", ["simple", "multihop"])
def test_agentic_tasks_loop_as_the_agents_report(
    stack: LocalStack, runs: dict, events: list[dict], scenario: str
) -> None:
    """What the model decided varies; what the telemetry shows must match what the loop reported:
    every LLM call (Agent B's too), every tool call and every hand-off; simple has no Agent B, and in
    multihop tool-synth is reached only through it. These runs use the default JSON-schema decisions."""
    for result in runs[scenario]:
        _check_loop(stack, events, result, scenario)


def test_native_tool_calls_run_the_same_loop(stack: LocalStack, tasks: list[Task]) -> None:
    """With the tool_calling knob at native the requests carry the tools and llama.cpp's server
    (its Jinja chat template) answers them; what the shipped model then does is its own (README,
    "Decision modes"), and the loop and what the telemetry shows agree the same way."""
    entry = stack.entry
    knobs = Knobs(tool_calling="native")
    results = asyncio.run(driver.run_tasks("simple", tasks[:2], entry, telemetry_dir=stack.telemetry_dir, knobs=knobs))
    events = read_served_events(stack.telemetry_dir, (r.call_id for r in results))
    for result in results:
        _check_loop(stack, events, result, "simple")


def _check_loop(stack: LocalStack, events: list[dict], result: driver.TaskResult, scenario: str) -> None:
    assert result.ok, result.error
    assert result.answer and result.loop
    mine = [e for e in _task_events(events, result) if e["side"] == "client"]
    llm = [e for e in mine if e["kind"] == "llm"]
    chosen = [e for e in mine if e["service"] == "agent-a" and e["kind"] in ("tool", "agent")]
    chosen = [e for e in chosen if e["op"] not in HOUSEKEEPING]
    assert len(llm) == result.loop["llm_calls"] >= result.loop["steps"] >= 1, (llm, result.loop)
    assert len(chosen) == result.loop["tool_calls"], (chosen, result.loop)
    assert sum(e["kind"] == "agent" for e in chosen) == result.loop["delegations"]
    assert result.loop["prompt_tokens"] > 0 and result.loop["completion_tokens"] > 0
    if scenario == "multihop":
        assert not any(e["service"] == "agent-a" and e["peer"] == "tool-synth" for e in mine)
        synth = [e for e in mine if e["service"] == "tool-synth" and e["kind"] == "service"]
        calls = [e for e in mine if e["service"] == "agent-b" and e["op"] in ("track_parcel", "carrier_status")]
        assert len(synth) == stack.synth["fanout"] * len(calls)
    else:
        assert not any(e["service"] == "agent-b" for e in mine)


@pytest.mark.parametrize("scenario", ["baseline", "simple", "multihop"])
def test_every_hop_logs_the_task_with_linked_ids_and_sockets(
    stack: LocalStack, postgres: LocalPostgres, runs: dict, events: list[dict], scenario: str
) -> None:
    llm_addr = f"127.0.0.1:{stack.ports['llm']}"
    for result in runs[scenario]:
        mine = _task_events(events, result)
        assert {e["task_id"] for e in mine} == {result.task_id}
        ids = {e["call_id"] for e in mine}
        root = [e for e in mine if e["parent_id"] is None]
        assert {e["service"] for e in root} == {"driver", "baseline-gateway" if scenario == "baseline" else "agent-a"}
        assert all(e["parent_id"] in ids for e in mine if e["parent_id"] is not None)
        for e in mine:
            assert e["status"] == "ok", e
            assert e["start_ns"] <= e["end_ns"] and e["local"] and e["remote"] and e["conns"]
        servers = defaultdict(list)
        for e in mine:
            if e["side"] == "server":
                servers[e["call_id"]].append(e)
        for client in (e for e in mine if e["side"] == "client"):
            if client["kind"] in HTTP_KINDS:  # the server side saw the very same sockets, mirrored
                seen = servers[client["call_id"]]
                assert seen, client
                assert {(s["remote"], s["local"]) for s in seen} == {tuple(c) for c in client["conns"]}
                assert all(s["parent_id"] == client["parent_id"] for s in seen)
            elif client["kind"] == "llm":
                assert client["remote"] == llm_addr and client["resp_bytes"] > 0
            else:
                assert client["kind"] == "db" and client["remote"] == f"127.0.0.1:{postgres.port}"


GUARDED = {
    "llm": ("POST", "/v1/chat/completions"),
    "agent-a": ("POST", "/task"),
    "agent-b": ("POST", "/"),
    "tool-db": ("POST", "/mcp"),
    "tool-synth": ("GET", "/parcels/TRK1"),
    "baseline-gateway": ("POST", "/task"),
    "baseline-order": ("GET", "/orders/O1"),
    "baseline-shipping": ("GET", "/shipments/O1"),
}


@pytest.mark.parametrize("service", GUARDED)
def test_every_endpoint_wants_the_stacks_token(stack: LocalStack, service: str) -> None:
    """No token: 401 with a bare Bearer challenge (RFC 6750); a wrong one: 401, invalid_token. Health
    and the Agent Card stay open, and the right token gets past (the request's own faults aside)."""
    method, path = GUARDED[service]
    url = stack.url(service) + path
    body = {"model": "lab-model", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    bare = httpx.request(method, url, json=body, timeout=60)
    assert bare.status_code == 401, bare.text
    wrong = httpx.request(method, url, json=body, timeout=60, headers={"authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401, wrong.text
    if service != "llm":  # the lab's own services say which token and where to find it
        assert bare.headers["www-authenticate"] == 'Bearer realm="lab"'
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert "lab status" in bare.json()["error"]
    right = httpx.request(method, url, json=body, timeout=120, headers=stack.headers)
    assert right.status_code != 401, right.text
    health = "/health" if service == "llm" else "/healthz"
    assert httpx.get(stack.url(service) + health, timeout=10).status_code == 200
    if service == "agent-b":
        assert httpx.get(stack.url(service) + "/.well-known/agent-card.json", timeout=10).status_code == 200


def test_malformed_tasks_fail_clearly_and_are_logged(stack: LocalStack) -> None:
    bad = {"task_id": "bad 1", "text": "", "scenario": "simple"}
    response = httpx.post(stack.url("agent-a") + "/task", json=bad, timeout=10, headers=stack.headers)
    assert response.status_code == 400 and "malformed task" in response.json()["error"]
    response = httpx.post(
        stack.url("baseline-gateway") + "/task", content=b"{not json", timeout=10, headers=stack.headers
    )
    assert response.status_code == 400 and response.json()["ok"] is False
    # an entry agent runs only its workloads' toolsets: Agent A simple and multihop, the planner fanout
    for service, scenario, runs in (("agent-a", "fanout", "simple, multihop"), ("planner", "simple", "fanout")):
        task = {"task_id": "t1", "text": "What is the status of order ORD-00001?", "scenario": scenario}
        response = httpx.post(stack.url(service) + "/task", json=task, timeout=10, headers=stack.headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == f"{service} runs {runs}, not {scenario!r}"
    time.sleep(0.2)
    server = [json.loads(line) for line in (stack.telemetry_dir / "agent-a.jsonl").read_text().splitlines()]
    assert any(e["status"] == "error" and e["error"] == "HTTP 400" for e in server)


@pytest.mark.parametrize("dead", ["llm", "tool-db"])
def test_dead_peer_fails_the_task_fast_with_an_error_event(stack: LocalStack, tasks: list[Task], dead: str) -> None:
    name, port = f"agent-a-no-{dead}", free_port()
    config = stack.config("agent-a", port=port)
    dead_url = f"http://127.0.0.1:{free_port()}"
    if dead == "llm":
        config["llm_url"] = dead_url + "/v1"
    else:
        config["peers"] = {**config["peers"], "tool-db": dead_url + "/mcp"}
    proc = stack.start_service("agent-a", name=name, **config)
    wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc, want_ok=False)
    entry = driver.Entry({"agent-a": f"http://127.0.0.1:{port}"}, token=stack.token)
    start = time.monotonic()
    [result] = driver.run("simple", tasks[:1], entry, telemetry_dir=stack.telemetry_dir)
    assert time.monotonic() - start < 30
    assert not result.ok and result.error.startswith(f"{dead}: "), result.error
    wanted = {
        ("driver", "client", "task"),
        ("agent-a", "server", "task"),
        ("agent-a", "client", "llm" if dead == "llm" else "tool"),
    }
    deadline = time.monotonic() + 10  # a server logs its side once the response has gone out
    while True:
        failed = [e for e in _task_events(read_events(stack.telemetry_dir), result) if e["status"] == "error"]
        if {(e["service"], e["side"], e["kind"]) for e in failed} >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {(e["service"], e["side"], e["kind"]) for e in failed} >= wanted
    assert all(e["error"] for e in failed)


def test_the_callers_timeouts_reach_every_hop(stack: LocalStack, tasks: list[Task]) -> None:
    """A scenario's timeouts travel with the task (x-lab-timeouts) to Agent A and over MCP into Agent
    B: a tiny one fails that hop with the timeout named, though the services were started with their
    own (60 s and 120 s)."""
    entry = stack.entry
    hop_timeouts = {"llm": 0.01, "tool": 60.0, "agent": 300.0}
    [result] = asyncio.run(
        driver.run_tasks("simple", tasks[:1], entry, telemetry_dir=stack.telemetry_dir, hop_timeouts=hop_timeouts)
    )
    assert not result.ok and result.error.startswith("llm: ") and "within 0.01 s (llm timeout)" in result.error
    headers = {H_TIMEOUTS: "llm=0.01,tool=60,agent=300", **stack.headers}
    _, reply = asyncio.run(
        _mcp(stack.url("agent-b") + "/mcp", "ask_logistics_agent", {"request": "Track parcel TRK1"}, headers)
    )
    assert reply.isError and "agent-b: " in reply.content[0].text, reply
    assert "within 0.01 s (llm timeout)" in reply.content[0].text, reply


def _run_with(stack: LocalStack, scenario: str, tasks: list[Task], knobs: Knobs) -> list[list[dict]]:
    """Run the tasks one after the other with these knobs; each task's events (its servers' own
    events included, once they are written)."""
    entry = stack.entry
    results = asyncio.run(driver.run_tasks(scenario, tasks, entry, telemetry_dir=stack.telemetry_dir, knobs=knobs))
    assert all(r.ok for r in results), [r.error for r in results]
    time.sleep(0.5)  # servers log their side after the response went out
    events = read_events(stack.telemetry_dir)
    return [_task_events(events, result) for result in results]


def _connections(events: list[dict], service: str, kind: str) -> set[tuple[str, str]]:
    return {
        tuple(c)
        for e in events
        if e["side"] == "client" and e["service"] == service and e["kind"] == kind
        for c in e["conns"]
    }


def test_a_persistent_mcp_session_is_initialised_once_and_keeps_its_connection(
    stack: LocalStack, tasks: list[Task]
) -> None:
    """mcp_session per_call (langchain-mcp-adapters' default) initialises a session for every tool
    call; persistent once for the agent's life, and against a stateless JSON server its tool calls
    share a pooled connection. Every call is still tagged and measured (its JSON-RPC _meta names it)."""
    per_call = _run_with(stack, "simple", tasks[:3], Knobs(mcp_session="per_call", mcp_server="stateless_json"))
    persistent = _run_with(stack, "simple", tasks[:3], Knobs(mcp_session="persistent", mcp_server="stateless_json"))

    def initializes(task: list[dict]) -> int:
        return sum(e["side"] == "server" and e["service"] in MCP_SERVERS and e["op"] == "initialize" for e in task)

    def tool_calls(task: list[dict]) -> list[dict]:
        return [e for e in task if e["side"] == "client" and e["kind"] == "tool" and e["op"] not in HOUSEKEEPING]

    assert [initializes(t) for t in per_call] == [len(tool_calls(t)) for t in per_call]
    assert sum(initializes(t) for t in persistent) <= 2  # at most the first calls to tool-db and tool-synth open them
    called = [e for t in persistent for e in tool_calls(t)]
    assert called and all(e["conns"] and e["req_bytes"] > 0 and e["resp_bytes"] > 0 for e in called)
    # per call: a session, and a connection, for every tool call; persistent: one session per server,
    # whose connections (at most two: its pooled POSTs) serve every task
    per_call_conns = set().union(*(_connections(t, "agent-a", "tool") for t in per_call))
    assert len(per_call_conns) >= sum(len(tool_calls(t)) for t in per_call)
    kept = set().union(*(_connections(t, "agent-a", "tool") for t in persistent))
    assert all(sum(c[1] == server for c in kept) <= 2 for server in {c[1] for c in kept}), kept


def test_per_task_sessions_close_with_their_task(stack: LocalStack, tasks: list[Task]) -> None:
    for task in _run_with(stack, "multihop", tasks[:3], Knobs(mcp_session="per_task", hand_off="mcp")):
        inits = [e for e in task if e["side"] == "server" and e["op"] == "initialize"]
        called = {e["service"] for e in task if e["side"] == "server" and e["op"].startswith("tools/call")}
        assert sorted(e["service"] for e in inits) == sorted(called)  # one session per server the task used


@pytest.mark.parametrize("policy", ["per_call", "per_task", "persistent"])
def test_a_task_runs_with_either_mcp_server_mode_and_its_calls_join(
    stack: LocalStack, tasks: list[Task], policy: str
) -> None:
    """The agents send to the endpoint of the run's mcp_server knob, over tool servers and Agent B
    alike. stateful_sse sessions add their GET event stream and a DELETE (but a persistent one,
    which may have been opened by an earlier task and is never closed); stateless_json ones have
    neither. Every server-side MCP record joins a client call of the task, and a stateful session's
    SSE answers, each closed by the client once the reply is in, cost it more connections."""
    sockets = {}
    for mode in ("stateless_json", "stateful_sse"):
        [task] = _run_with(stack, "multihop", tasks[:1], Knobs(mcp_session=policy, mcp_server=mode, hand_off="mcp"))
        served = [
            e for e in task if e["side"] == "server" and e["kind"] in ("tool", "agent")
        ]  # not tool-synth's fan-out
        assert {e["call_id"] for e in served} <= {e["call_id"] for e in task if e["side"] == "client"}
        called = {e["peer"] for e in task if e["side"] == "client" and e["kind"] in ("tool", "agent")}
        assert {e["service"] for e in served if e["op"].startswith("tools/call")} == called & set(MCP_SERVERS)
        assert all(e["status"] == "ok" for e in served), [e for e in served if e["status"] != "ok"]
        session_ops = {(e["event"], e["op"]) for e in served if e["op"].split()[0] in ("GET", "DELETE")}
        if mode == "stateless_json":
            assert session_ops == set()
        elif policy != "persistent":
            assert session_ops == {("stream", "GET /mcp-sse"), ("call", "DELETE /mcp-sse")}
        sockets[mode] = {tuple(c) for e in served for c in e["conns"]}
    if policy != "persistent":
        assert len(sockets["stateful_sse"]) > len(sockets["stateless_json"]), sockets


def test_the_llm_hop_keeps_its_connection_as_vllms_does(stack: LocalStack, tasks: list[Task]) -> None:
    """Behind its keep-alive front the CPU LLM keeps a connection after streamed answers too, so
    Agent A's LLM calls of a task share one pooled connection; with http_reuse per_call each has its own."""

    def llm_calls(task: list[dict]) -> int:
        return sum(e["side"] == "client" and e["service"] == "agent-a" and e["kind"] == "llm" for e in task)

    pooled = _run_with(stack, "simple", tasks[:2], Knobs())
    assert all(len(_connections(t, "agent-a", "llm")) == 1 for t in pooled), [
        _connections(t, "agent-a", "llm") for t in pooled
    ]
    fresh = _run_with(stack, "simple", tasks[:2], Knobs(http_reuse="per_call"))
    assert all(len(_connections(t, "agent-a", "llm")) == llm_calls(t) for t in fresh)


def _ports_of_streamed_requests(base_url: str, count: int, headers: dict[str, str]) -> list[int]:
    """The client port of each of `count` streamed completions sent in a row through one pooled client."""
    ports = []
    with httpx.Client(timeout=120, headers=headers) as client:
        for _ in range(count):
            body = {
                "model": "lab-model",
                "max_tokens": 4,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
                ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])
                response.read()
                assert response.status_code == 200
            time.sleep(0.2)  # let a closing server's FIN arrive, so the pool never reuses a dead connection
    return ports


def test_llama_cpp_closes_after_a_streamed_answer_and_the_front_does_not(stack: LocalStack) -> None:
    """What the front is for, measured on the real servers: three streamed answers in a row take
    three connections from llama.cpp's own server and one through the front."""
    port = free_port()
    proc = stack.spawn(
        "llm-no-front",
        [sys.executable, "-m", "workload.llm", "serve", "--no-front", "--host", "127.0.0.1", "--port", str(port)],
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc)
        assert len(set(_ports_of_streamed_requests(f"http://127.0.0.1:{port}", 3, stack.headers))) == 3
    finally:
        proc.terminate()
        proc.wait(30)
    assert len(set(_ports_of_streamed_requests(stack.url("llm"), 3, stack.headers))) == 1
