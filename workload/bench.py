"""Figures of the workload on this machine, all on loopback:

    python -m workload.bench [--tasks 6] [--concurrency 1] [--model NAME_OR_GGUF]
                             [--backend auto|cpu|vllm] [--threads 2]

Per scenario: tasks/min, answer accuracy, mean LLM calls, tool calls (MCP and
agent-to-agent) and TCP flows per task, from the telemetry the hops wrote. For the LLM
server, named as it names itself (llama.cpp with the threads it was given, or vLLM): time
to first token and decode tokens/s of streamed completions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx

from workload import driver
from workload.config import bearer
from workload.db import seed_database
from workload.llm import BACKENDS, DEFAULT_MODEL, DEFAULT_THREADS, speed
from workload.local import LocalPostgres, LocalStack, read_events
from workload.tasks import Task, answer_is_correct, make_tasks

LLM_PROMPT = "Explain in a short paragraph what a TCP retransmission is and why it happens."


@dataclass
class ScenarioFigures:
    scenario: str
    tasks: int
    ok: int
    correct: int
    tasks_per_min: float
    llm_calls: float
    tool_calls: float
    flows: float


def scenario_figures(
    scenario: str, tasks: list[Task], results: list[driver.TaskResult], wall_s: float, events: list[dict]
) -> ScenarioFigures:
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        by_trace[event["trace_id"]].append(event)
    roots = {e["call_id"]: e["trace_id"] for e in events if e["service"] == "driver"}
    llm, tools, flows = [], [], []
    for result in results:
        mine = [e for e in by_trace[roots[result.call_id]] if e["side"] == "client"]
        llm.append(sum(e["kind"] == "llm" for e in mine))
        tools.append(sum(e["kind"] in ("tool", "agent") for e in mine))
        flows.append(len({tuple(c) for e in mine for c in e["conns"]}))
    n = len(results)
    return ScenarioFigures(
        scenario,
        n,
        sum(r.ok for r in results),
        sum(answer_is_correct(t, r.answer) for t, r in zip(tasks, results, strict=True)),
        60 * n / wall_s,
        sum(llm) / n,
        sum(tools) / n,
        sum(flows) / n,
    )


def llm_figures(base_url: str, token: str, runs: int = 3, max_tokens: int = 128) -> tuple[float, float]:
    """(mean time to first token in s, mean decode tokens/s) of streamed chat completions."""
    speeds = [
        speed.measure(
            base_url,
            "lab-model",
            max_tokens,
            120,
            "You are a helpful assistant.",
            f"{LLM_PROMPT} (variant {i})",
            token,
        )
        for i in range(runs)
    ]
    return sum(s.ttft_s for s in speeds) / runs, sum(s.tokens_per_s for s in speeds) / runs


def llm_label(base_url: str, threads: int, token: str) -> str:
    """The backend of the LLM server at `base_url` as the server itself names it (the owner of its
    model in /v1/models), with the threads it was started with where they apply (llama.cpp)."""
    response = httpx.get(f"{base_url}/v1/models", timeout=30, headers=bearer(token))
    response.raise_for_status()
    owner = response.json()["data"][0]["owned_by"]
    if owner == "llamacpp":
        return f"llama.cpp on the CPU, {threads} thread{'' if threads == 1 else 's'}"
    return owner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workload.bench")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="auto: vLLM with a GPU, llama.cpp otherwise"
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="llama.cpp's threads")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="workload-bench-"))
    workdir.chmod(0o755)
    pg = LocalPostgres(workdir / "pg")
    seed_database(pg.start(), args.seed)
    stack = LocalStack(workdir / "stack", pg.dsn)
    stack.directory.mkdir()
    try:
        stack.start_llm(args.model, args.backend, args.threads)
        stack.start()
        label = llm_label(stack.url("llm"), args.threads, stack.token)
        ttft, rate = llm_figures(stack.url("llm"), stack.token)
        tasks = make_tasks(args.seed, args.tasks)
        figures = []
        for scenario in driver.SCENARIOS:
            start = time.perf_counter()
            results = driver.run(scenario, tasks, stack.entry, args.concurrency, stack.telemetry_dir)  # type: ignore[arg-type]
            wall = time.perf_counter() - start
            figures.append(scenario_figures(scenario, tasks, results, wall, read_events(stack.telemetry_dir)))
    finally:
        stack.stop()
        pg.stop()
    print(f"LLM ({args.model}, {label}): time to first token {ttft * 1000:.0f} ms, decode {rate:.1f} tokens/s")
    print(
        f"{'scenario':10} {'tasks':>5} {'ok':>3} {'correct':>7} {'tasks/min':>9} {'LLM calls':>9} "
        f"{'tool calls':>10} {'flows':>6}   (means per task; concurrency {args.concurrency})"
    )
    for f in figures:
        print(
            f"{f.scenario:10} {f.tasks:5d} {f.ok:3d} {f.correct:7d} {f.tasks_per_min:9.1f} {f.llm_calls:9.2f} "
            f"{f.tool_calls:10.2f} {f.flows:6.2f}"
        )
    print(f"telemetry and logs kept in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
