"""What the terminal shows during a run (rich): phases, tasks done, probe records, faults, and
the summary table at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from experiments.drive import Outcome
from lab.runlayout import Manifest, ProbeCpu, Tasks, node_prefix

if TYPE_CHECKING:
    from experiments.sweep import Cell, RunEntry


class Reporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._bar = None
        self._failed = 0
        self._records = ""

    def phase(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    def fault(self, node: str, what: str) -> None:
        self.console.print(
            f"[dim]{time.strftime('%H:%M:%S')}[/dim] [yellow]fault[/yellow] {node}: {what}", highlight=False
        )

    @contextmanager
    def tasks(self, total: int) -> Iterator[None]:
        columns = (
            TextColumn("tasks"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[records]}"),
        )
        with Progress(*columns, console=self.console) as progress:
            self._progress = progress
            self._bar = progress.add_task("tasks", total=total, failed=0, records="")
            try:
                yield
            finally:
                self._progress = None

    def task_done(self, outcome: Outcome) -> None:
        self._failed += not outcome.result.ok
        if self._progress is not None:
            self._progress.update(self._bar, advance=1, failed=self._failed)  # type: ignore[arg-type]

    def records(self, per_node: dict[str, int]) -> None:
        text = "probe records: " + ", ".join(f"{node} {count}" for node, count in per_node.items())
        if self._progress is not None:
            self._progress.update(self._bar, records=text)  # type: ignore[arg-type]

    def summary(self, manifest: Manifest, run_dir: Path) -> None:
        table = Table(
            "node",
            "clock offset (start)",
            "probes stopped",
            "records",
            "probe CPU while running",
            "files",
            title=f"run {manifest.run_id}",
        )
        for node, probes in manifest.probes.items():
            offset = manifest.clock_offsets.get(node, {}).get("start")
            clock = f"{offset.offset_ns / 1e3:+.0f} ± {offset.uncertainty_ns / 1e3:.0f} µs" if offset else "-"
            stopped = sum(p.state == "stopped" for p in probes.values())
            records = sum(p.records for p in probes.values())
            files = sum(1 for f in manifest.files if f.startswith(node_prefix(node)))
            cpu = manifest.probe_cpu_s.get(node, ProbeCpu())
            bpf = "" if cpu.bpf is None else f" + {cpu.bpf:.2f} s BPF"
            spent = "-" if cpu.running is None else f"{cpu.running:.2f} s{bpf}"
            table.add_row(node, clock, f"{stopped}/{len(probes)}", str(records), spent, str(files))
        self.console.print(table)
        tasks = manifest.tasks or Tasks(planned=0)
        wall = ((manifest.ended_at_ns or 0) - (manifest.started_at_ns or 0)) / 1e9
        self.console.print(
            f"tasks: {tasks.ok} ok, {tasks.failed} failed of {tasks.total} "
            f"(+{tasks.warmup} warm-up); {len(manifest.faults)} fault(s); {wall:.1f} s"
        )
        for fault in manifest.faults:
            self.console.print(f"  [yellow]fault[/yellow] {fault.node}: {fault.what}", highlight=False)
        self.console.print(f"run directory: [bold]{run_dir}[/bold]")


class SweepReporter:
    """A sweep's progress, printed between its runs (each run shows its own task bar): runs done of
    all, the cell, elapsed time and an estimate of the time left."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._started = time.monotonic()

    def starting(self, index: int, total: int, run: RunEntry, cell: Cell, eta_s: float | None) -> None:
        left = "estimate after the first run" if eta_s is None else f"~{_duration(eta_s)} left"
        self.console.rule(
            f"[bold]run {index}/{total}[/bold]: {run.name}  cell {cell.label} ({cell.summary}), "
            f"repetition {run.repetition}  [dim]{_duration(time.monotonic() - self._started)} elapsed, {left}",
            align="left",
        )

    def finished(self, run: RunEntry, done: int, total: int) -> None:
        colour = "green" if run.status == "complete" else "yellow"
        self.console.print(
            f"[dim]{time.strftime('%H:%M:%S')}[/dim] {run.name}: [{colour}]{run.status}[/{colour}] "
            f"in {_duration(run.duration_s or 0)}; {done}/{total} runs complete"
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
