"""The agents' real task loop against vLLM on a GPU node, everything on loopback.

Runs what `python -m workload.bench` runs (workload.local: a throwaway PostgreSQL from
LAB_PG_BIN, every service as a subprocess, workload.driver submitting tasks), but with the LLM
server started as on a GPU node: `python -m workload.llm serve --backend vllm --model DIR
--tool-call-parser hermes --max-model-len 8192 --gpu-memory-utilization 0.9` (the server
command of benchmarks/gpu_llm.py). For each scenario (baseline, simple, multihop) and each
concurrency it submits the same `--tasks` tasks and reads the figures from the task results
and the telemetry every hop wrote (one JSONL event per call, with the TCP connections it used):

- ok share and answer accuracy (workload.tasks.answer_is_correct), by task kind;
- decision accuracy ("plan covered"): the tools the agents called, and the servers accepted,
  include every tool of the task's minimal plan; the loop's own figures per task (steps, tool
  calls, hand-offs, prompt and completion tokens) with their spread, and the tasks that reached
  the step bound; decisions are stated as `--tool-calling` says (the knob of workload/knobs.py);
- tasks/min (wall clock of the run), task time p50/p90;
- the LLM's share of task time: the summed duration of the task's LLM calls over the task's
  duration (per task p50/p90, and pooled: all LLM time over all task time);
- connections per task: distinct TCP connections the task's calls used (every hop), and how
  many of them were new (first used by this task); for the LLM hop alone, connections per task
  and requests per connection over the whole run (the agents keep a pooled client to the LLM).

`--warmup` tasks (multihop, which makes both agents' decisions) run first and are not
counted: the first decision of a JSON schema pays vLLM's grammar compilation (about 1 s).
Connections are told apart by their (local, remote) addresses within one run only: a later run
may reuse an earlier run's ports.

    # the model: vLLM takes a Hugging Face directory; the shipped GGUF converts to one
    # (transformers 4.x and gguf on the CPU; see benchmarks/gpu_llm.py)
    python benchmarks/gpu_llm.py --convert-gguf qwen2.5-coder-0.5b-instruct-q4_k_m-1d9614638d18.gguf \
        --model /models/qwen05b-hf
    # `vllm` on PATH (its own environment, as on the lab's LLM node); the workload's packages importable
    VLLM_USE_FLASHINFER_SAMPLER=0 LAB_PG_BIN=/usr/lib/postgresql/15/bin \\
        python benchmarks/gpu_agents.py --model /models/qwen05b-hf --tasks 60 --concurrency 1 4 16 \\
        --budget-s 150 --out gpu-agents.json --logs gpu-agents-logs

The agents' openai package decides whether the LLM hop reuses connections: openai 2.54 stops
reading a streamed answer at `data: [DONE]` and closes the response before the end of its
HTTP/1.1 body, so httpx drops the connection and every LLM request opens a new one; openai 3.57
reads the body to its end and the pooled connection carries the next request. The report
records the agents' versions (`environment.agents`): where vLLM and the workload share one
environment, the agents import whichever openai vLLM's install left there.

As root, PostgreSQL runs as `postgres` or `nobody` (workload.local). `--backend cpu --model
FILE.gguf` runs the same loop on llama.cpp, to try the client side without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, get_args

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_llm  # benchmarks/ is no package; gpu_llm puts the repo root on sys.path
from gpu_llm import BenchError, fraction, percentile, positive_int

from workload import driver
from workload.db import seed_database
from workload.knobs import Knobs, ToolCalling
from workload.local import LocalPostgres, LocalStack, read_events
from workload.loop import LOOP_FIELDS
from workload.tasks import Task, answer_is_correct, make_tasks

NOT_DECISIONS = ("tools/list", "initialize")
"""Ops of `tool` calls that are MCP housekeeping, not a tool the LLM chose."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu_agents.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="vllm: Hugging Face model directory; cpu: a GGUF file")
    p.add_argument("--backend", choices=["vllm", "cpu"], default="vllm")
    p.add_argument("--tasks", type=positive_int, default=30, help="tasks per scenario and concurrency")
    p.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 4])
    p.add_argument("--scenarios", nargs="+", choices=driver.SCENARIOS, default=list(driver.SCENARIOS))
    p.add_argument("--warmup", type=int, default=3, help="multihop tasks run first and not counted")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-model-len", type=positive_int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=fraction, default=0.9)
    p.add_argument("--tool-call-parser", default="hermes", help="vLLM tool parser (hermes: Qwen2.5)")
    p.add_argument(
        "--tool-calling",
        choices=get_args(ToolCalling),
        default=Knobs().tool_calling,
        help="how the model states decisions (workload/knobs.py): OpenAI tool calls, or JSON-schema output",
    )
    p.add_argument("--startup-timeout", type=positive_int, default=900, help="seconds to wait for the LLM server")
    p.add_argument(
        "--budget-s",
        type=float,
        default=0,
        help="start no further run once this many seconds have gone since the server was ready (0: no limit)",
    )
    p.add_argument("--out", type=Path, help="write the figures as JSON here (rewritten after each run)")
    p.add_argument("--logs", type=Path, help="copy the services' and the LLM server's logs here")
    return p.parse_args(argv)


# ---------------------------------------------------------------- figures


def spread(values: list[float], digits: int = 1) -> dict[str, float | None]:
    """Mean, p50 and p90 of per-task values."""
    if not values:
        return {"mean": None, "p50": None, "p90": None}
    return {
        "mean": round(sum(values) / len(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
    }


def first_users(events: list[dict[str, Any]], since_ns: int) -> dict[tuple[str, ...], str]:
    """Each TCP connection (local, remote) used since `since_ns` -> the trace of the first client call
    that used it. Only this run's calls count: a later connection may reuse an earlier run's ports."""
    first: dict[tuple[str, ...], str] = {}
    mine = (e for e in events if e["side"] == "client" and e["start_ns"] >= since_ns)
    for event in sorted(mine, key=lambda e: e["start_ns"]):
        for conn in event["conns"]:
            first.setdefault(tuple(conn), event["trace_id"])
    return first


def task_rows(
    tasks: list[Task], results: list[driver.TaskResult], events: list[dict[str, Any]], first: dict[tuple[str, ...], str]
) -> list[dict[str, Any]]:
    """One row per task, from its trace: time, LLM time, decisions, connections."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["side"] == "client":
            by_trace[event["trace_id"]].append(event)
    roots = {e["call_id"]: e for e in events if e["service"] == "driver" and e["side"] == "client"}
    rows = []
    for task, result in zip(tasks, results, strict=True):
        root = roots[result.call_id]
        mine = by_trace[root["trace_id"]]
        llm = [e for e in mine if e["kind"] == "llm"]
        decided = [e for e in mine if e["kind"] == "tool" and e["op"] not in NOT_DECISIONS]
        conns = {tuple(c) for e in mine for c in e["conns"]}
        llm_conns = {tuple(c) for e in llm for c in e["conns"]}
        called = {e["op"] for e in decided if e["status"] == "ok"}
        loop = result.loop or {}
        reported = {field: loop.get(field) for field in LOOP_FIELDS}
        rows.append(
            {
                **reported,  # first: where a field is also counted from the telemetry (llm_calls), that count wins
                "task_id": task.task_id,
                "kind": task.kind,
                "ok": result.ok,
                "error": result.error,
                "correct": answer_is_correct(task, result.answer),
                "expected": task.expected,
                "answer": (result.answer or "")[:400],
                "task_ms": (root["end_ns"] - root["start_ns"]) / 1e6,
                "llm_calls": len(llm),
                "llm_ms": sum(e["end_ns"] - e["start_ns"] for e in llm) / 1e6,
                "tool_calls_ok": sum(e["status"] == "ok" for e in decided),
                "tool_calls_failed": sum(e["status"] != "ok" for e in decided),
                "plan_covered": set(sum(task.plan, ())) <= called,
                "tools_chosen": [f"{e['service']}:{e['op']}:{e['status']}" for e in decided],
                "connections": len(conns),
                "new_connections": sum(first.get(c) == root["trace_id"] for c in conns),
                "llm_connections": len(llm_conns),
                "llm_new_connections": sum(first.get(c) == root["trace_id"] for c in llm_conns),
                "llm_conn_ids": sorted("|".join(c) for c in llm_conns),
            }
        )
    return rows


def run_figures(scenario: str, concurrency: int, wall_s: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    agentic = scenario != "baseline"
    llm_requests = sum(r["llm_calls"] for r in rows)
    llm_conns = {c for r in rows for c in r["llm_conn_ids"]}
    task_ms = sum(r["task_ms"] for r in rows)
    errors = Counter((r["error"] or "")[:160] for r in rows if not r["ok"])
    looped = [r for r in rows if r["steps"] is not None]
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "tasks": n,
        "wall_s": round(wall_s, 2),
        "ok": sum(r["ok"] for r in rows),
        "correct": sum(r["correct"] for r in rows),
        "ok_share": round(sum(r["ok"] for r in rows) / n, 3),
        "accuracy": round(sum(r["correct"] for r in rows) / n, 3),
        "correct_by_kind": {
            kind: f"{sum(r['correct'] for r in rows if r['kind'] == kind)}/{sum(r['kind'] == kind for r in rows)}"
            for kind in sorted({r["kind"] for r in rows})
        },
        "tasks_per_min": round(60 * n / wall_s, 1),
        # decision accuracy: the tools the agents called (and the servers accepted) cover the task's minimal plan
        "plan_covered": sum(r["plan_covered"] for r in rows) if agentic else None,
        "decision_accuracy": round(sum(r["plan_covered"] for r in rows) / n, 3) if agentic else None,
        "tool_calls_failed": sum(r["tool_calls_failed"] for r in rows),
        **{f"{field}_per_task": spread([r[field] for r in looped], 2) for field in SPREAD_FIELDS},
        "max_steps_reached": sum(bool(r["max_steps_reached"]) for r in looped),
        "task_ms": spread([r["task_ms"] for r in rows]),
        "llm_ms": spread([r["llm_ms"] for r in rows]),
        "llm_share": spread([r["llm_ms"] / r["task_ms"] for r in rows if r["task_ms"] > 0], 3),
        "llm_share_pooled": round(sum(r["llm_ms"] for r in rows) / task_ms, 3) if task_ms else None,
        "llm_calls_per_task": round(llm_requests / n, 2),
        "connections_per_task": spread([r["connections"] for r in rows], 2),
        "new_connections_per_task": spread([r["new_connections"] for r in rows], 2),
        "llm_connections_per_task": spread([r["llm_connections"] for r in rows], 2),
        "llm_new_connections_per_task": spread([r["llm_new_connections"] for r in rows], 2),
        "llm_requests": llm_requests,
        "llm_connections": len(llm_conns),
        "llm_requests_per_connection": round(llm_requests / len(llm_conns), 2) if llm_conns else None,
        "errors": dict(errors.most_common(5)),
    }


SPREAD_FIELDS = ("steps", "tool_calls", "delegations", "prompt_tokens", "completion_tokens")
"""The agents' own per-task figures (workload.loop.LOOP_FIELDS) given with their spread."""


def table(report: dict[str, Any]) -> str:
    agents = report["environment"].get("agents", {})
    lines = [
        (
            f"LLM: {report['model']} on {report['backend']} ({report['environment'].get('gpu')}), "
            f"{report['tool_calling']} decisions; "
            f"server ready after {report['startup_s']} s; the agents' openai {agents.get('openai')}"
        ),
        (
            f"{'scenario':9} {'conc':>4} {'ok':>6} {'correct':>7} {'plan':>5} {'steps':>5} {'tools':>5} {'hand':>4} "
            f"{'tasks/min':>9} "
            f"{'task ms p50/p90':>16} {'LLM share p50/p90 (pooled)':>27} {'conns/task':>10} {'new':>5} "
            f"{'LLM req/conn':>12}"
        ),
    ]
    for r in report["runs"]:
        if "skipped" in r:
            lines.append(f"{r['scenario']:9} {r['concurrency']:>4} skipped: {r['skipped']}")
            continue
        plan = "-" if r["plan_covered"] is None else str(r["plan_covered"])
        depth = [r[f"{f}_per_task"]["mean"] for f in ("steps", "tool_calls", "delegations")]
        steps, tools, hands = ("-" if d is None else str(d) for d in depth)
        share = (
            f"{r['llm_share']['p50']}/{r['llm_share']['p90']} ({r['llm_share_pooled']})"
            if r["llm_calls_per_task"]
            else "-"
        )
        lines.append(
            f"{r['scenario']:9} {r['concurrency']:>4} {r['ok']:>3}/{r['tasks']:<2} {r['correct']:>7} {plan:>5} "
            f"{steps:>5} {tools:>5} {hands:>4} {r['tasks_per_min']:>9} "
            f"{r['task_ms']['p50']:>7}/{r['task_ms']['p90']:<8} "
            f"{share:>27} {r['connections_per_task']['mean']:>10} {r['new_connections_per_task']['mean']:>5} "
            f"{r['llm_requests_per_connection'] or '-':>12}"
        )
        for error, count in r["errors"].items():
            lines.append(f"    {count} x {error}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the run


def client_versions() -> dict[str, str | None]:
    """The agents' LLM client libraries as the services import them (same PYTHONPATH as this process)."""
    versions: dict[str, str | None] = {}
    for name in ("openai", "langchain-openai", "httpx", "httpx2"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write(report: dict[str, Any], out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gpu-agents-"))
    work.chmod(0o755)
    stack = LocalStack(work / "stack", "")
    stack.directory.mkdir()
    server = argparse.Namespace(
        backend=args.backend,
        port=stack.ports["llm"],
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tool_call_parser=args.tool_call_parser,
    )
    argv = gpu_llm.server_argv(server, args.model, dummy=False)
    log_path = work / "llm-server.log"
    report: dict[str, Any] = {
        "model": str(args.model),
        "backend": args.backend,
        "server_argv": argv,
        "tasks_per_run": args.tasks,
        "warmup_tasks": args.warmup,
        "tool_calling": args.tool_calling,
        "runs": [],
    }
    started = time.monotonic()
    proc = gpu_llm.start_server(argv, log_path)  # the engine starts while PostgreSQL and the services do
    pg = LocalPostgres(work / "pg")
    try:
        report["environment"] = {**gpu_llm.environment(), "agents": client_versions()}
        stack.db_dsn = pg.start()
        seed_database(stack.db_dsn, args.seed)
        stack.start()
        gpu_llm.wait_ready(proc, stack.url("llm"), args.startup_timeout, log_path)
        report["startup_s"] = round(time.monotonic() - started, 1)
        print(f"LLM server and services ready after {report['startup_s']} s", flush=True)
        knobs = Knobs(tool_calling=args.tool_calling)
        if args.warmup > 0:
            warmup = make_tasks(args.seed + 1, args.warmup)
            driver.run("multihop", warmup, stack.entry, 1, stack.telemetry_dir, knobs=knobs)
        tasks = make_tasks(args.seed, args.tasks)
        ready = time.monotonic()
        for concurrency in args.concurrency:
            for scenario in args.scenarios:
                if args.budget_s and time.monotonic() - ready > args.budget_s:
                    report["runs"].append(
                        {
                            "scenario": scenario,
                            "concurrency": concurrency,
                            "skipped": f"past --budget-s {args.budget_s:g}",
                        }
                    )
                    continue
                start, since_ns = time.perf_counter(), time.time_ns()
                results = driver.run(
                    scenario,  # type: ignore[arg-type]
                    tasks,
                    stack.entry,
                    concurrency,
                    stack.telemetry_dir,
                    knobs=knobs,
                )
                wall = time.perf_counter() - start
                events = read_events(stack.telemetry_dir)
                rows = task_rows(tasks, results, events, first_users(events, since_ns))
                figures = run_figures(scenario, concurrency, wall, rows)
                report["runs"].append({**figures, "per_task": rows})
                print(
                    f"{scenario} at concurrency {concurrency}: {figures['ok']}/{figures['tasks']} ok, "
                    f"{figures['tasks_per_min']} tasks/min",
                    flush=True,
                )
                write(report, args.out)
    finally:
        stack.stop()
        gpu_llm.stop_server(proc)
        if (pg.directory / "data" / "postmaster.pid").exists():
            pg.stop()
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in [log_path, *stack.directory.glob("*.log"), work / "pg" / "log"]:
                if log.is_file():
                    shutil.copyfile(log, args.logs / f"{log.parent.name}-{log.name}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = measure(args)
    except (BenchError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write(report, args.out)
    print(table({**report, "runs": [{k: v for k, v in r.items() if k != "per_task"} for r in report["runs"]]}))
    if args.out:
        print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
