"""The agents' loops beside their traffic (analysis/agentloop.py, the new results.jsonl fields in the tasks
table and the headline) on hand-built tables with known answers, and a run from before those fields
existed analysed and reported all the same."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analysis import agentloop, metrics, schema
from analysis.join import RESULT_RENAMES, tasks_table
from analysis.jsonl import RESULTS_SCHEMA
from analysis.pipeline import analyze_run
from lab.runlayout import Manifest, ScenarioRecord, write_manifest

MS = 1_000_000
LOOP_FIELDS = {  # one task of the new results.jsonl
    "kind": "order_total",
    "min_tool_calls": 1,
    "steps": 3,
    "tool_calls": 2,
    "delegations": 1,
    "llm_calls": 5,
    "prompt_tokens": 4000,
    "completion_tokens": 200,
    "max_steps_reached": False,
}


def _result(call_id: str, **fields: object) -> dict:
    """A results.jsonl line as older runs wrote it, plus `fields`."""
    return {
        "task_id": f"t-{call_id}",
        "scenario": "multihop",
        "ok": True,
        "correct": True,
        "answer": "x",
        "error": None,
        "start_ns": 0,
        "end_ns": 1,
        "call_id": call_id,
        "repetition": 1,
        "warmup": False,
        **fields,
    }


def _roots(call_ids: list[str]) -> pd.DataFrame:
    """The driver's task calls of the calls table (join.calls_table), one per task."""
    return pd.DataFrame(
        {
            "trace_id": [f"T{c}" for c in call_ids],
            "task_id": [f"t-{c}" for c in call_ids],
            "call_id": call_ids,
            "op": "multihop",
            "start_ns": 0,
            "end_ns": 10,
            "status": "ok",
            "kind": "task",
        }
    )


# --- the tasks table --------------------------------------------------------------------------


def test_the_new_result_fields_become_task_columns_and_an_older_line_reads_them_as_missing() -> None:
    results = pa.Table.from_pylist([_result("a", **LOOP_FIELDS), _result("b")], schema=RESULTS_SCHEMA).to_pandas()
    tasks = tasks_table(_roots(["a", "b"]), results, "multihop").set_index("call_id")
    new, old = tasks.loc["a"], tasks.loc["b"]
    assert new["task_kind"] == "order_total" and new["reported_tool_calls"] == 2 and new["reported_llm_calls"] == 5
    assert new["steps"] == 3 and new["prompt_tokens"] == 4000 and new["max_steps_reached"] is False
    renamed = [RESULT_RENAMES.get(f, f) for f in LOOP_FIELDS]
    assert all(pd.isna(old[c]) for c in renamed), old[renamed]
    assert set(renamed) <= set(schema.TABLES["tasks"].columns)


def test_a_run_without_results_has_the_columns_all_missing() -> None:
    tasks = tasks_table(_roots(["a"]), RESULTS_SCHEMA.empty_table().to_pandas(), "baseline")
    assert (
        tasks["ok"].tolist() == [True] and tasks["warmup"].tolist() == [False] and tasks["repetition"].tolist() == [0]
    )
    assert tasks[["steps", "task_kind", "reported_tool_calls"]].isna().all().all()


def test_the_agents_counts_stay_missing_beside_the_telemetrys() -> None:
    """task_metrics counts calls by kind as `<kind>_calls`: the agents' own counts (reported_llm_calls,
    reported_tool_calls, min_tool_calls) must not be taken for them and zero-filled."""
    results = pa.Table.from_pylist([_result("a")], schema=RESULTS_SCHEMA).to_pandas()
    tasks = tasks_table(_roots(["a"]), results, "multihop")
    calls = pd.DataFrame(
        {
            "call_id": ["l1"],
            "parent_id": "a",
            "trace_id": "Ta",
            "kind": "llm",
            "duration_ns": 5,
            "server_busy_ns": np.nan,
            "client_service": "agent-a",
        }
    )
    used = pd.DataFrame({"call_id": ["l1"], "conn_id": [1], "trace_id": ["Ta"], "start_ns": [0], "server_ep": [9]})
    packets = pd.DataFrame({"trace_id": ["Ta"], "ts_ns": [1], "wire_len": [60], "payload": [0]})
    retrans = pd.DataFrame({"trace_id": pd.Series([], dtype=object)})
    out = metrics.task_metrics(tasks, calls, used, packets, retrans)
    assert out["llm_calls"].tolist() == [1]
    assert out[["reported_llm_calls", "reported_tool_calls", "min_tool_calls"]].isna().all().all()


def test_the_loop_summary_means_the_tasks_that_report_and_is_unknown_without_any() -> None:
    counted = pd.DataFrame(
        {
            "steps": [2.0, 4.0, np.nan],  # a baseline-like task without a loop is left out, not a zero
            "reported_llm_calls": [3.0, 5.0, np.nan],
            "reported_tool_calls": [1.0, 3.0, np.nan],
            "delegations": [0.0, 1.0, np.nan],
            "prompt_tokens": [1000.0, 3000.0, np.nan],
            "completion_tokens": [10.0, 30.0, np.nan],
            "max_steps_reached": pd.Series([False, True, None], dtype=object),
        }
    )
    out = metrics.loop_summary(counted)
    assert out["steps_per_task"] == 3 and out["prompt_tokens_per_task"] == 2000 and out["delegations_per_task"] == 0.5
    assert out["max_steps_share"] == 0.5
    older = metrics.loop_summary(pd.DataFrame({"ok": [True]}))
    assert set(older) == set(out) and all(math.isnan(v) for v in older.values())


# --- breakdowns -------------------------------------------------------------------------------


def _tasks() -> pd.DataFrame:
    """Six measured tasks: two correct, one wrong, one failed (no answer), one not checked, one of an older kind."""
    return pd.DataFrame(
        {
            "ok": [True, True, True, False, True, True],
            "correct": pd.Series([True, True, False, False, None, True], dtype=object),
            "task_kind": ["order_status", "order_total", "order_total", "order_status", "order_total", None],
            "min_tool_calls": [1.0, 1.0, 1.0, 1.0, 1.0, np.nan],
            "steps": [2.0, 2.0, 6.0, 10.0, 3.0, np.nan],
            "reported_tool_calls": [1.0, 3.0, 5.0, 9.0, 2.0, np.nan],
            "new_flows": [4, 6, 10, 20, 5, 7],
            "bytes": [1000, 3000, 9000, 20000, 2000, 4000],
        }
    )


def test_tasks_are_told_apart_by_their_answer() -> None:
    assert agentloop.outcome(_tasks()).tolist() == ["correct", "correct", "wrong", "failed", "not checked", "correct"]


def test_traffic_by_answer_counts_shares_and_means_per_outcome() -> None:
    out = agentloop.by_answer(_tasks())
    assert out.index.tolist() == ["correct", "wrong", "failed", "not checked"]
    assert out["tasks"].tolist() == [3, 1, 1, 1] and out.loc["correct", "share"] == pytest.approx(0.5)
    correct = out.loc["correct"]
    assert correct["new_flows"] == pytest.approx(17 / 3) and correct["bytes"] == pytest.approx(8000 / 3)
    assert correct["steps"] == 2 and correct["reported_tool_calls"] == 2  # the older task has none: not a zero
    assert out.loc["failed", "steps"] == 10 and out.loc["wrong", "bytes"] == 9000


def test_traffic_by_kind_gives_accuracy_depth_against_the_minimum_and_traffic() -> None:
    out = agentloop.by_kind(_tasks())
    assert out.index.tolist() == ["not recorded", "order_status", "order_total"]
    assert out["tasks"].tolist() == [1, 2, 3]
    total = out.loc["order_total"]
    assert total["correct"] == 0.5  # of the two checked: one right, one wrong
    assert total["steps"] == pytest.approx(11 / 3) and total["reported_tool_calls"] == pytest.approx(10 / 3)
    assert total["min_tool_calls"] == 1 and total["bytes"] == pytest.approx(14000 / 3) and total["new_flows"] == 7
    assert out.loc["order_status", "correct"] == 0.5 and math.isnan(out.loc["not recorded", "steps"])


def test_spread_gives_quantiles_of_the_tasks_that_have_a_value_and_drops_empty_columns() -> None:
    tasks = pd.DataFrame({"steps": [1.0, 2.0, 3.0, 4.0, 5.0, np.nan], "delegations": np.nan})
    out = agentloop.spread(tasks, ["steps", "delegations", "prompt_tokens"])
    assert out.index.tolist() == ["steps"]
    assert out.loc["steps"].to_dict() == pytest.approx({"tasks": 5, "mean": 3, "p10": 1.4, "p50": 3, "p90": 4.6})


# --- context growth ---------------------------------------------------------------------------


def _llm(call_id: str, trace: str, agent: str | None, parent: str, at_ms: int, req: int, **extra: object) -> dict:
    return {
        "call_id": call_id,
        "trace_id": trace,
        "agent_id": agent,
        "parent_id": parent,
        "kind": extra.get("kind", "llm"),
        "client_service": extra.get("client_service", agent),
        "start_ns": at_ms * MS,
        "req_bytes": req,
    }


def _calls() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # task 1: Agent A's three steps; Agent B handed two subtasks (h1, h2), each a conversation of its own
            _llm("a1", "T1", "agent-a", "task1", 0, 1000),
            _llm("b1", "T1", "agent-b", "h1", 5, 800),
            _llm("b2", "T1", "agent-b", "h1", 7, 900),
            _llm("a2", "T1", "agent-a", "task1", 10, 1500),
            _llm("b3", "T1", "agent-b", "h2", 12, 820),
            _llm("a3", "T1", "agent-a", "task1", 20, 2200),
            _llm("t1", "T1", "agent-a", "task1", 11, 99, kind="tool"),  # not an LLM call
            _llm("s1", "T1", None, "task1", 3, 99, client_service=None),  # only the LLM server logged it
            # task 2: agent_id not logged, the service names the agent
            _llm("c1", "T2", None, "task2", 30, 1100, client_service="agent-a"),
            _llm("c2", "T2", None, "task2", 40, 1700, client_service="agent-a"),
            _llm("w1", "W", "agent-a", "warm", 0, 5000),  # a warm-up task
        ]
    )


def test_each_agents_llm_calls_are_numbered_per_conversation() -> None:
    steps = agentloop.llm_steps(_calls(), pd.Series(["T1", "T2"])).set_index(["trace_id", "agent", "parent_id"])
    assert steps.loc[("T1", "agent-a", "task1"), "step"].tolist() == [1, 2, 3]
    assert steps.loc[("T1", "agent-b", "h1"), "step"].tolist() == [1, 2]
    assert steps.loc[("T1", "agent-b", "h2"), "step"] == 1
    assert steps.loc[("T2", "agent-a", "task2"), "req_bytes"].tolist() == [1100, 1700]
    assert len(steps) == 8


def test_context_growth_gives_count_median_p90_and_growth_per_agent_and_step() -> None:
    out = agentloop.context_growth(agentloop.llm_steps(_calls(), pd.Series(["T1", "T2"])))
    out = out.set_index(["agent", "step"])
    assert out["calls"].to_dict() == {
        ("agent-a", 1): 2,
        ("agent-a", 2): 2,
        ("agent-a", 3): 1,
        ("agent-b", 1): 2,
        ("agent-b", 2): 1,
    }
    first, second = out.loc[("agent-a", 1)], out.loc[("agent-a", 2)]
    assert first["req_bytes_p50"] == 1050 and first["req_bytes_p90"] == pytest.approx(1090) and first["growth"] == 1
    assert second["req_bytes_p50"] == 1600 and second["growth"] == pytest.approx(1600 / 1050)
    assert out.loc[("agent-b", 2), "growth"] == pytest.approx(900 / 810)
    assert agentloop.context_growth(agentloop.llm_steps(_calls(), pd.Series(["none"]))).empty


# --- a whole run, older and newer -------------------------------------------------------------


def _event(call_id: str, service: str, kind: str, trace: str, parent: str | None, at_ms: int, req: int) -> dict:
    return {
        "event": "call",
        "node": "controller" if service == "driver" else "agent-a",
        "service": service,
        "agent_id": None if service == "driver" else service,
        "task_id": f"t-{trace}",
        "call_id": call_id,
        "parent_id": parent,
        "trace_id": trace,
        "kind": kind,
        "side": "client",
        "peer": "llm" if kind == "llm" else "agent-a",
        "op": "multihop",
        "start_ns": 1_700_000_000_000_000_000 + at_ms * MS,
        "end_ns": 1_700_000_000_000_000_000 + (at_ms + (100 if kind == "task" else 10)) * MS,
        "req_bytes": req,
        "resp_bytes": 100,
        "status": "ok",
        "error": None,
        "local": None,
        "remote": None,
        "conns": [],
    }


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _run(root: Path, fields: list[dict]) -> Path:
    """A run of two agentic tasks without captures or probes: the driver's task calls, Agent A's LLM calls
    (two steps each) and results.jsonl whose lines carry `fields` (none: a run from before them)."""
    root.mkdir()
    write_manifest(Manifest(run_id=root.name, scenario=ScenarioRecord(name="multihop")), root)
    traces = ["T1", "T2"]
    driver = [_event(f"task{i}", "driver", "task", t, None, 200 * i, 50) for i, t in enumerate(traces)]
    agent = [
        _event(f"llm{i}{step}", "agent-a", "llm", t, f"task{i}", 200 * i + 10 * step + 1, 1000 * (step + 1))
        for i, t in enumerate(traces)
        for step in range(2)
    ]
    _write(root / "telemetry" / "driver.jsonl", driver)
    _write(root / "nodes" / "agent-a" / "telemetry" / "agent-a.jsonl", agent)
    _write(root / "results.jsonl", [_result(f"task{i}", **extra) for i, extra in enumerate(fields)])
    return root


@pytest.mark.parametrize("newer", [False, True])
def test_a_run_with_or_without_the_loop_fields_is_analysed_and_reported(tmp_path: Path, newer: bool) -> None:
    fields = [LOOP_FIELDS, {**LOOP_FIELDS, "steps": 5, "max_steps_reached": True}] if newer else [{}, {}]
    result = analyze_run(_run(tmp_path / ("newer" if newer else "older"), fields))
    tasks = result.per_task
    assert len(tasks) == 2 and tasks["llm_calls"].tolist() == [2, 2]
    assert tasks["steps"].notna().all() if newer else tasks["steps"].isna().all()
    steps = result.summary["steps_per_task"]
    assert steps == 4 if newer else math.isnan(steps)
    growth = agentloop.context_growth(agentloop.pooled_steps([result])).set_index("step")
    assert growth["req_bytes_p50"].tolist() == [1000, 2000] and growth.loc[2, "growth"] == 2
    page = (result.run.path / "report.html").read_text()
    assert "<h2>Agent loop, accuracy and traffic</h2>" in page and "Context growth" in page
    assert ("order_total" in page) == newer and ("hand-offs to Agent B per task" in page)
    assert (result.run.path / "plots" / "context_growth.png").is_file()
    written = pd.read_parquet(result.run.path / "tables" / "tasks.parquet")
    assert {"steps", "task_kind", "max_steps_reached"} <= set(written.columns)
