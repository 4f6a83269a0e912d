"""The agents' loops beside their traffic: how far each task's loop went (steps, LLM and tool calls,
hand-offs, tokens: results.jsonl, as the agents counted them), the traffic of tasks answered correctly
or not and of each task kind, and how an agent's prompt grows step by step (the body of each of its
LLM requests, telemetry: the conversation so far is sent again with every call).

Every function but `pooled_tasks` takes plain DataFrames: the per-task table (metrics.task_metrics)
or the calls table (join.calls_table). A column a run does not have (one from before it was recorded,
or the baseline's, which has no LLM) reads as unknown, never as zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis

QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
OUTCOMES = ("correct", "wrong", "failed", "not checked")
"""A task's answer: stated every expected fact; answered but missed one; no answer (`ok` false: an
error or a timeout); answered in a run from before answers were checked."""
NOT_RECORDED = "not recorded"  # the kind of a task in a run from before kinds were recorded
CONVERSATION = ["trace_id", "agent", "parent_id"]
"""One agent's LLM calls for one incoming call: Agent A's for the task, Agent B's for each hand-off."""

# the per-task means of the answer and kind tables (connections opened, wire bytes, the loop's depth)
BY_ANSWER = ["new_flows", "bytes", "steps", "reported_tool_calls"]
BY_KIND = ["correct", "steps", "reported_tool_calls", "min_tool_calls", "new_flows", "bytes"]


def numeric(tasks: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`columns` of `tasks` as floats: a flag as 0 or 1, a missing column or value as NaN."""
    return tasks.reindex(columns=columns).apply(pd.to_numeric, errors="coerce").astype(np.float64)


def spread(tasks: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per column that any task has a value of (rows): those tasks, their mean, p10, median and p90."""
    values = numeric(tasks, columns).dropna(axis=1, how="all")
    out = values.quantile(list(QUANTILES.values())).T.set_axis(list(QUANTILES), axis=1)
    out.insert(0, "mean", values.mean())
    out.insert(0, "tasks", values.notna().sum())
    return out


def outcome(tasks: pd.DataFrame) -> pd.Series:
    """Each task's OUTCOMES entry, from `ok` and `correct` (null: not checked)."""
    correct = numeric(tasks, ["correct"])["correct"]
    found = np.select(
        [~tasks["ok"].astype(bool), correct == 1, correct == 0], ["failed", "correct", "wrong"], "not checked"
    )
    return pd.Series(found, index=tasks.index)


def _grouped(tasks: pd.DataFrame, by: pd.Series, columns: list[str]) -> pd.DataFrame:
    """Per value of `by`: its tasks, their share of all, and the mean of each column (over the tasks
    that have a value)."""
    out = numeric(tasks, columns).groupby(by).mean()
    counts = by.value_counts()
    out.insert(0, "share", counts / counts.sum())
    out.insert(0, "tasks", counts)
    return out


def by_answer(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per answer outcome (OUTCOMES order, those that occur): tasks, share and the BY_ANSWER means."""
    found = outcome(tasks)
    out = _grouped(tasks, found, BY_ANSWER)
    out.index.name = "answer"
    return out.reindex([o for o in OUTCOMES if o in out.index])


def by_kind(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per task kind (NOT_RECORDED where the run lacks it): tasks, share and the BY_KIND means, `correct`
    being the share answered correctly among the checked tasks."""
    kind = tasks.reindex(columns=["task_kind"])["task_kind"].astype(object).fillna(NOT_RECORDED)
    out = _grouped(tasks, kind, BY_KIND)
    out.index.name = "task kind"
    return out.sort_index()


def llm_steps(calls: pd.DataFrame, traces: pd.Series) -> pd.DataFrame:
    """The LLM requests of `traces` that a client logged (an agent), each with its agent (`agent_id`, else
    its service), its body size and its `step`: 1 for the first LLM call of its conversation
    (CONVERSATION), 2 for the second, ..."""
    mine = calls[(calls["kind"] == "llm") & calls["client_service"].notna() & calls["trace_id"].isin(traces)]
    agent = mine.reindex(columns=["agent_id"])["agent_id"].fillna(mine["client_service"])
    ordered = mine.assign(agent=agent).sort_values("start_ns")
    ordered["step"] = ordered.groupby(CONVERSATION, dropna=False).cumcount() + 1
    return ordered[["trace_id", "agent", "parent_id", "step", "req_bytes"]].reset_index(drop=True)


def context_growth(steps: pd.DataFrame) -> pd.DataFrame:
    """`steps` (llm_steps): per agent and step, the LLM requests, their body bytes' median and p90, and
    the median over the agent's first step's median (the growth)."""
    grouped = steps.groupby(["agent", "step"])["req_bytes"]
    out = grouped.agg(calls="count", req_bytes_p50="median")
    out["req_bytes_p90"] = grouped.quantile(0.9)
    first = out.xs(1, level="step")["req_bytes_p50"] if len(out) else pd.Series(dtype=np.float64)
    out["growth"] = out["req_bytes_p50"] / out.index.get_level_values("agent").map(first).to_numpy(np.float64)
    return out.reset_index()


def measured(result: RunAnalysis) -> pd.DataFrame:
    """The run's measured (non-warm-up) tasks; their packets and bytes unknown (NaN) without a capture."""
    tasks = result.per_task[~result.per_task["warmup"]]
    return tasks.assign(packets=np.nan, bytes=np.nan) if result.joined.packets.empty else tasks


def pooled_tasks(runs: list[RunAnalysis]) -> pd.DataFrame:
    """The measured tasks of every run of a group (one run, or a sweep cell's repetitions)."""
    return pd.concat([measured(r) for r in runs], ignore_index=True)


def pooled_steps(runs: list[RunAnalysis]) -> pd.DataFrame:
    """llm_steps of the measured tasks of every run of a group."""
    return pd.concat([llm_steps(r.joined.calls, measured(r)["trace_id"]) for r in runs], ignore_index=True)
