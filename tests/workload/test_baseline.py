"""The baseline for real on loopback: PostgreSQL, tool-synth and the three baseline services (no LLM,
no agents), every task kind answered through the REST calls of its minimal tool plan."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from workload import driver
from workload.config import TOOL_ENDPOINTS
from workload.local import LocalPostgres, LocalStack, read_events, read_served_events
from workload.tasks import KINDS, LOGISTICS_TOOLS, Task, answer_is_correct, hub_of, make_dataset, make_tasks

pytestmark = pytest.mark.integration
CHAIN = ("tool-synth", "baseline-shipping", "baseline-order", "baseline-gateway")
SYNTH = {"response_bytes": 2048, "latency_ms": 10, "fanout": 2}


@dataclass(frozen=True)
class Answered:
    tasks: list[Task]
    results: list[driver.TaskResult]
    events: list[dict]

    def of(self, task: Task, **match: str) -> list[dict]:
        """The task's events whose fields have these values."""
        return [e for e in self.events if e["task_id"] == task.task_id and match.items() <= e.items()]

    def gateway_calls(self, task: Task, peer: str) -> list[dict]:
        return self.of(task, service="baseline-gateway", side="client", peer=peer)


def overlap(a: dict, b: dict) -> bool:
    return a["start_ns"] < b["end_ns"] and b["start_ns"] < a["end_ns"]


@pytest.fixture(scope="module")
def chain(workdir: Path, postgres: LocalPostgres) -> Iterator[LocalStack]:
    services = LocalStack(workdir / "baseline", postgres.dsn, synth=SYNTH)
    try:
        services.start(services=CHAIN)
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="module")
def answered(chain: LocalStack, seed: int) -> Answered:
    """Two tasks of every kind through the driver, and every event of theirs once each call was served."""
    tasks = make_tasks(seed, 2 * len(KINDS))
    results = driver.run("baseline", tasks, chain.entry, concurrency=2, telemetry_dir=chain.telemetry_dir)
    gateway = [e for e in read_events(chain.telemetry_dir) if e["service"] == "baseline-gateway"]
    calls = [*(r.call_id for r in results), *(e["call_id"] for e in gateway if e["side"] == "client")]
    return Answered(tasks, results, read_served_events(chain.telemetry_dir, calls))


def test_every_kind_is_answered_correctly(answered: Answered) -> None:
    assert {t.kind for t in answered.tasks} == set(KINDS)
    for task, result in zip(answered.tasks, answered.results, strict=True):
        assert result.ok, (task.kind, result.error)
        assert answer_is_correct(task, result.answer), (task.kind, task.expected, result.answer)


def test_the_gateway_makes_one_served_rest_call_per_tool_call_of_the_plan(answered: Answered) -> None:
    served = {e["call_id"]: e for e in answered.events if e["side"] == "server"}
    for task in answered.tasks:
        calls = answered.of(task, service="baseline-gateway", side="client")
        assert len(calls) == task.min_tool_calls, task.kind
        assert {c["op"] for c in calls} == {f"GET {TOOL_ENDPOINTS[t][1]}" for step in task.plan for t in step}
        assert all(c["status"] == "ok" and served[c["call_id"]]["status"] == "ok" for c in calls), calls


def test_logistics_steps_call_tool_synth_over_rest_at_once(answered: Answered, seed: int) -> None:
    shipments = {s.order_id: s for s in make_dataset(seed).shipments}
    for task in answered.tasks:
        tools = [t for step in task.plan for t in step if t in LOGISTICS_TOOLS]
        synth = answered.of(task, service="tool-synth", side="server", peer="baseline-gateway")
        if not tools:
            assert not synth, task.kind
            continue
        shipment = shipments[task.order_id]
        ops = {
            "track_parcel": f"GET /parcels/{shipment.tracking_no}",
            "carrier_status": f"GET /carriers/{shipment.carrier}",
        }
        assert sorted(e["op"] for e in synth) == sorted(ops[t] for t in tools), task.kind
        backends = answered.of(task, service="tool-synth", side="client", peer="synth-backend")
        assert len(backends) == SYNTH["fanout"] * len(tools)
        if len(tools) == 2:
            assert overlap(*answered.gateway_calls(task, "tool-synth"))


def test_compare_totals_reads_both_orders_at_once(answered: Answered) -> None:
    task = next(t for t in answered.tasks if t.kind == "compare_totals")
    assert overlap(*answered.gateway_calls(task, "baseline-order"))
    reads = answered.of(task, service="baseline-order", side="server")
    assert sorted(e["op"] for e in reads) == sorted(f"GET /orders/{o}" for o in (task.order_id, task.other_order_id))
    assert len(answered.of(task, service="baseline-order", kind="db", op="get_order")) == 2


def test_tool_synth_rest_endpoints_do_the_tools_work(chain: LocalStack) -> None:
    for path, ref in (("/parcels/TRK1", "parcel:TRK1"), ("/carriers/GLS", "carrier:GLS")):
        response = httpx.get(chain.url("tool-synth") + path, timeout=10, headers=chain.headers)
        assert response.status_code == 200
        assert response.json()["hub"] == hub_of(ref)
        assert len(response.json()["backends"]) == SYNTH["fanout"]
        assert abs(len(response.content) - SYNTH["response_bytes"]) < 64
    too_long = chain.url("tool-synth") + "/parcels/" + "x" * 65
    assert httpx.get(too_long, timeout=10, headers=chain.headers).status_code == 400


def test_a_failed_peer_is_named_and_a_bad_task_refused(chain: LocalStack) -> None:
    task = {"task_id": "missing", "kind": "customer_city", "text": "?", "order_id": "ORD-99999"}
    response = httpx.post(chain.url("baseline-gateway") + "/task", json=task, timeout=10, headers=chain.headers)
    assert response.status_code == 502
    assert response.json()["error"].startswith("baseline-order: HTTPStatusError")
    assert response.json()["task_id"] == "missing"
    compare = {**task, "kind": "compare_totals", "order_id": "ORD-00001"}
    response = httpx.post(chain.url("baseline-gateway") + "/task", json=compare, timeout=10, headers=chain.headers)
    assert response.status_code == 400 and "other_order_id" in response.json()["error"]
