"""Driving the tasks from the controller: the plan (warm-up, repetitions, open-loop arrival
times) and its execution through `workload.driver`, one result reported as each task ends."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.scenario import Scenario
from workload.driver import Entry, TaskResult, run_tasks
from workload.loop import LOOP_FIELDS
from workload.tasks import Task, answer_is_correct, make_dataset, make_tasks


@dataclass(frozen=True)
class Planned:
    task: Task
    repetition: int
    """0 for warm-up tasks, 1..repetitions for measured ones."""
    at_s: float | None
    """Open loop: when to submit, in seconds after the phase started; None in a closed loop."""

    @property
    def warmup(self) -> bool:
        return self.repetition == 0


@dataclass(frozen=True)
class Outcome:
    planned: Planned
    result: TaskResult

    def record(self) -> dict:
        """One line of results.jsonl: `ok` when the task answered, `correct` when the answer states every
        fact the task expects (workload.tasks.answer_is_correct); the task's kind and minimal plan, and
        what the agents' loop reported (null for the baseline and for failed tasks)."""
        task, loop = self.planned.task, self.result.loop or {}
        return {
            **{k: v for k, v in asdict(self.result).items() if k != "loop"},
            **{field: loop.get(field) for field in LOOP_FIELDS},
            "kind": task.kind,
            "min_tool_calls": task.min_tool_calls,
            "correct": self.result.ok and answer_is_correct(task, self.result.answer),
            "repetition": self.planned.repetition,
            "warmup": self.planned.warmup,
        }


def arrivals(count: int, rate_per_s: float, seed: int) -> list[float]:
    """Poisson arrivals: exponential gaps of mean 1/rate, the same for the same seed."""
    rng = random.Random(f"arrivals-{seed}")
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate_per_s)
        times.append(now)
    return times


def plan(scenario: Scenario) -> list[list[Planned]]:
    """Phases run one after the other: the warm-up (if any), then each repetition of the task set."""
    dataset = make_dataset(scenario.tasks.dataset_seed)
    measured = make_tasks(scenario.tasks.seed, scenario.tasks.count, dataset)
    warmup = [
        t.model_copy(update={"task_id": f"warmup-{t.task_id}"})
        for t in make_tasks(scenario.tasks.seed, scenario.warmup, dataset)
    ]
    phases = [(0, warmup)] if warmup else []
    phases += [(r, measured) for r in range(1, scenario.repetitions + 1)]
    return [
        [
            Planned(task, repetition, at)
            for task, at in zip(tasks, _times(len(tasks), scenario, repetition), strict=True)
        ]
        for repetition, tasks in phases
    ]


def _times(count: int, scenario: Scenario, repetition: int) -> list[float | None]:
    rate = scenario.load.rate_per_s
    return arrivals(count, rate, scenario.tasks.seed + repetition) if rate else [None] * count


async def _phase(
    phase: list[Planned], scenario: Scenario, entry: Entry, telemetry_dir: Path, done: Callable[[Outcome], None]
) -> None:
    slots = asyncio.Semaphore(scenario.load.concurrency or len(phase))
    started = time.monotonic()

    async def one(planned: Planned) -> None:
        if planned.at_s is not None:
            await asyncio.sleep(max(0.0, started + planned.at_s - time.monotonic()))
        async with slots:
            [result] = await run_tasks(
                scenario.workload,
                [planned.task],
                entry,
                1,
                telemetry_dir,
                timeout_s=scenario.task_timeout_s,
                hop_timeouts=scenario.timeouts.by_hop(),
                knobs=scenario.knobs,
            )
        done(Outcome(planned, result))

    await asyncio.gather(*(one(p) for p in phase))


async def _all(
    phases: list[list[Planned]], scenario: Scenario, entry: Entry, telemetry_dir: Path, done: Callable[[Outcome], None]
) -> None:
    for phase in phases:
        await _phase(phase, scenario, entry, telemetry_dir, done)


def drive(
    phases: list[list[Planned]], scenario: Scenario, entry: Entry, telemetry_dir: Path, done: Callable[[Outcome], None]
) -> None:
    """Submit every planned task; `done` gets each outcome as its task ends (Ctrl-C keeps those already done)."""
    asyncio.run(_all(phases, scenario, entry, telemetry_dir, done))
