"""The benchmark driver (runs on the controller): submits tasks of one scenario over HTTP,
each as a `task` call with its ids in the headers, and returns per-task results."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from workload.catalog import CATALOG
from workload.config import bearer
from workload.knobs import Knobs
from workload.loop import LOOP_FIELDS
from workload.tasks import Task
from workload.telemetry import Telemetry, describe_error, lab_http_client, set_run

SCENARIOS: tuple[str, ...] = tuple(CATALOG.workloads)
"""The workloads of the catalog (workload/topologies/)."""


@dataclass(frozen=True)
class Entry:
    """Where tasks enter: the base URL of each workload's entry service (the catalog's `entry`), and
    the lab's bearer token they want (None: they take any caller)."""

    urls: dict[str, str]
    token: str | None = field(default=None, repr=False)

    def url(self, service: str) -> str:
        if service not in self.urls:
            raise ValueError(f"no address for {service!r}, the entry of this workload; known: {', '.join(self.urls)}")
        return self.urls[service].rstrip("/")


@dataclass
class TaskResult:
    task_id: str
    scenario: str
    ok: bool
    answer: str | None
    error: str | None
    start_ns: int
    end_ns: int
    call_id: str
    loop: dict[str, Any] | None = None
    """What the agents' loop reported (workload.loop.Outcome.record: steps, tool calls, hand-offs,
    LLM calls and tokens); None for the baseline and for a task that failed."""


def _request(scenario: str, task: Task, entry: Entry) -> tuple[str, str, dict]:
    """(peer, url, body): a service without an LLM reads the structured task; an agent only its words."""
    peer = CATALOG.workloads[scenario].entry
    if CATALOG.services[peer].agent:
        body = {"task_id": task.task_id, "text": task.text, "scenario": scenario}
    else:
        body = task.model_dump(exclude={"expected"})
    return peer, f"{entry.url(peer)}/task", body


async def _submit(
    client: httpx.AsyncClient, telemetry: Telemetry, scenario: str, task: Task, entry: Entry, timeout_s: float
) -> TaskResult:
    peer, url, body = _request(scenario, task, entry)
    answer, error, loop = None, None, None
    start = time.time_ns()
    try:
        async with telemetry.call("task", peer, scenario, task_id=task.task_id) as call:
            try:
                response = await asyncio.wait_for(client.post(url, json=body), timeout_s)
                data = response.json()
            except (httpx.HTTPError, ValueError, TimeoutError) as exc:
                raise RuntimeError(f"{peer}: {describe_error(exc)}") from exc
            if response.status_code != 200 or not data.get("ok"):
                raise RuntimeError(data.get("error") or f"{peer}: HTTP {response.status_code}")
            answer = data.get("answer")
            loop = {k: data[k] for k in LOOP_FIELDS if k in data} or None
    except RuntimeError as exc:
        error = str(exc)
    return TaskResult(task.task_id, scenario, error is None, answer, error, start, time.time_ns(), call.call_id, loop)


async def run_tasks(
    scenario: str,
    tasks: list[Task],
    entry: Entry,
    concurrency: int = 1,
    telemetry_dir: Path = Path("telemetry"),
    node: str = "controller",
    timeout_s: float = 300.0,
    hop_timeouts: dict[str, float] | None = None,
    knobs: Knobs | None = None,
) -> list[TaskResult]:
    """Submit every task (at most `concurrency` at once); results in task order. `timeout_s` is
    how long the driver waits for a task, and the task's own deadline at the agent; `hop_timeouts`
    (llm, tool, agent: seconds) and `knobs` travel with it to every hop (telemetry.PROPAGATED).

    Writes the driver's own events to `<telemetry_dir>/driver.jsonl`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    telemetry = Telemetry(node, "driver", None, telemetry_dir)
    slots = asyncio.Semaphore(concurrency)
    set_run({**(hop_timeouts or {}), "task": timeout_s}, knobs)

    async def one(client: httpx.AsyncClient, task: Task) -> TaskResult:
        async with slots:
            return await _submit(client, telemetry, scenario, task, entry, timeout_s)

    try:
        async with lab_http_client(timeout_s, headers=bearer(entry.token)) as client:
            return list(await asyncio.gather(*(one(client, t) for t in tasks)))
    finally:
        telemetry.writer.close()


def run(
    scenario: str,
    tasks: list[Task],
    entry: Entry,
    concurrency: int = 1,
    telemetry_dir: Path = Path("telemetry"),
    node: str = "controller",
    timeout_s: float = 300.0,
    knobs: Knobs | None = None,
) -> list[TaskResult]:
    """Synchronous wrapper of `run_tasks` for tests and benchmarks (the controller uses experiments.drive)."""
    return asyncio.run(run_tasks(scenario, tasks, entry, concurrency, telemetry_dir, node, timeout_s, knobs=knobs))
