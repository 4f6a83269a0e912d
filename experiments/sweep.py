"""Sweeps (`lab sweep FILE`): a grid over scenario keys, N repetitions per cell, each repetition a
normal run directory, run in a seeded random order, resumable, and one report at the end.

The state lives in `runs/sweeps/<name>/sweep.json`: the plan (cells, order, seed, the sweep file's
sha256) and every run's status and run directory. Which runs are complete is read from their run
directories' manifests, so a sweep whose controller was killed outright resumes as well.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from analysis.sweep import Cell as ReportCell
from analysis.sweep import write_sweep_report
from experiments import controller
from experiments.progress import Reporter
from experiments.scenario import Scenario, scenario_path
from lab.config import LabConfig
from lab.errors import ConfigError, LabError, ManifestError
from lab.runlayout import read_manifest
from lab.validation import read_yaml, validate

STATE = "sweep.json"
STATE_VERSION = 1
RESERVED = {
    "name": "the sweep names its runs",
    "repetitions": "use the sweep's own `repetitions`",
    "scenario": "the base scenario is the sweep's own `scenario`; vary the grid key `workload` instead",
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
RUN_ID_STAMP = r"\d{8}T\d{6}Z"  # experiments.controller.new_run_id


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    """The sweep's name (default: the file's stem): its directory and the prefix of its runs' names."""
    scenario: str | None = None
    """The base scenario: a name in experiments/scenarios/ or a .yaml path (relative to the sweep file)."""
    overrides: dict[str, Any] = {}
    """Scenario keys (dotted paths allowed) set over the base in every cell."""
    grid: dict[str, list[Any]] = {}
    """Dotted scenario key -> the values it takes; the cells are every combination."""
    repetitions: int = Field(default=1, ge=1, le=1000)
    seed: int = Field(default=1, ge=0)
    """Seeds the order of the runs: the same seed gives the same order."""

    @field_validator("name")
    @classmethod
    def _short_name(cls, name: str | None) -> str | None:
        if name is not None and not NAME.fullmatch(name):
            raise ValueError("use 1-32 letters, digits, '-' or '_', starting with a letter or digit")
        return name

    @field_validator("grid")
    @classmethod
    def _values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: no values; give at least one or remove the key")
            if len(set(map(_canonical, values))) < len(values):
                raise ValueError(f"{key}: a value appears twice; give each once")
        return grid


@dataclass(frozen=True)
class Cell:
    label: str
    params: dict[str, Any]
    """The cell's grid values by dotted key."""
    scenario: Scenario

    @property
    def summary(self) -> str:
        return describe(self.params) or "no grid"


@dataclass(frozen=True)
class Sweep:
    name: str
    file: Path
    sha256: str
    seed: int
    repetitions: int
    cells: list[Cell]

    def order(self) -> list[tuple[str, int]]:
        """Every (cell label, repetition) once, shuffled by the seed."""
        return run_order([c.label for c in self.cells], self.repetitions, self.seed)


def run_order(labels: list[str], repetitions: int, seed: int) -> list[tuple[str, int]]:
    runs = [(label, rep) for label in labels for rep in range(1, repetitions + 1)]
    random.Random(seed).shuffle(runs)
    return runs


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings (creating missing ones); the value replaces whatever was there."""
    *parents, last = key.split(".")
    node = data
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ValueError(f"{where} is {child!r}, not a mapping; set {where} itself or a key inside a mapping")
        node = child
    node[last] = value


def load_sweep(path: Path, lab: LabConfig) -> Sweep:
    """The sweep file with every cell's scenario validated; the first problem is a ConfigError naming
    the file, the cell and the key."""
    data = read_yaml(path, "pass the path of a sweep .yaml file (see experiments/sweeps/)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping (scenario, overrides, grid, repetitions, seed)")
    spec = validate(SweepFile, data, path)
    name = spec.name or path.stem
    if not NAME.fullmatch(name):
        raise ConfigError(f"{path}: the file's stem '{name}' is no sweep name; add `name:` (letters, digits, - or _)")
    _check_keys(spec, path)
    combinations = expand_grid(spec.grid)
    width = max(2, len(str(len(combinations))))
    cells = []
    for index, params in enumerate(combinations, start=1):
        label = f"c{index:0{width}d}"
        cells.append(Cell(label, params, _cell_scenario(spec, path, lab, f"{name}-{label}", label, params)))
    return Sweep(name, path, hashlib.sha256(path.read_bytes()).hexdigest(), spec.seed, spec.repetitions, cells)


def _check_keys(spec: SweepFile, path: Path) -> None:
    for section, keys in (("overrides", spec.overrides), ("grid", spec.grid)):
        for key in keys:
            top = key.split(".")[0]
            if top in RESERVED:
                raise ConfigError(f"{path}: {section}.{key}: {RESERVED[top]}; remove it from {section}")
    if spec.scenario is None and "workload" not in {*spec.overrides, *spec.grid}:
        raise ConfigError(
            f"{path}: no base scenario; add `scenario: baseline` (a name or a .yaml path) or give every "
            "scenario key a run needs (workload, tasks) under `overrides`"
        )


def _cell_scenario(
    spec: SweepFile, path: Path, lab: LabConfig, name: str, label: str, params: dict[str, Any]
) -> Scenario:
    where = f"{path}: cell {label} ({describe(params) or 'no grid'})"
    data = _base_scenario(spec.scenario, path, where) if spec.scenario is not None else {}
    for key, value in [*spec.overrides.items(), *params.items()]:
        try:
            set_dotted(data, key, value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    scenario = validate(Scenario, {**data, "name": name, "repetitions": 1}, where)
    scenario.check_nodes(lab, where)
    return scenario


def _base_scenario(name_or_path: str, sweep_file: Path, where: str) -> dict[str, Any]:
    relative = Path(name_or_path)
    if relative.suffix in (".yaml", ".yml") and not relative.is_absolute():
        name_or_path = str(sweep_file.parent / relative)
    try:
        file = scenario_path(name_or_path)
        data = read_yaml(file, "give the base scenario as a name or a .yaml path relative to the sweep file")
    except ConfigError as exc:
        raise ConfigError(f"{where}: scenario: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: scenario: {file} is not a mapping of scenario keys")
    return data


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_canonical(value)}" for key, value in params.items())


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- the state file and which runs are complete --------------------------------------------------


@dataclass
class RunEntry:
    name: str
    """The run's scenario name, `<sweep>-<cell>-r<repetition>`; its run directory is `<run-id stamp>-<name>`."""
    cell: str
    repetition: int
    status: str = "pending"
    """pending | complete | incomplete (a run directory that did not finish) | failed (stopped before one existed)"""
    run_dir: str | None = None
    superseded: list[str] = field(default_factory=list)
    """The run's other directories (attempts that did not finish): kept, never deleted."""
    duration_s: float | None = None
    error: str | None = None


@dataclass
class SweepState:
    name: str
    file: str
    sha256: str
    seed: int
    repetitions: int
    cells: list[dict[str, Any]]
    """[{label, params, scenario}]: the plan, each cell's full scenario as it was validated."""
    runs: list[RunEntry]
    """In the order they run."""
    created_at: str
    version: int = STATE_VERSION
    report: str | None = None

    @classmethod
    def plan(cls, sweep: Sweep) -> SweepState:
        return cls(
            name=sweep.name,
            file=str(sweep.file.resolve()),
            sha256=sweep.sha256,
            seed=sweep.seed,
            repetitions=sweep.repetitions,
            cells=_planned_cells(sweep),
            runs=[RunEntry(f"{sweep.name}-{cell}-r{rep}", cell, rep) for cell, rep in sweep.order()],
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    @classmethod
    def read(cls, directory: Path) -> SweepState:
        data = json.loads((directory / STATE).read_text())
        return cls(**{**data, "runs": [RunEntry(**run) for run in data["runs"]]})

    def write(self, directory: Path) -> Path:
        path = directory / STATE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def complete(self) -> list[RunEntry]:
        return [run for run in self.runs if run.status == "complete"]


def _planned_cells(sweep: Sweep) -> list[dict[str, Any]]:
    return [{"label": c.label, "params": c.params, "scenario": c.scenario.model_dump(mode="json")} for c in sweep.cells]


def finished(run_dir: Path) -> bool:
    """A run that drove every planned task and wrote its final manifest, without a Ctrl-C."""
    try:
        manifest = read_manifest(run_dir).manifest
    except (OSError, ManifestError):
        return False
    interrupted = any(f.node == "controller" and f.what.startswith("interrupted") for f in manifest.faults)
    tasks = manifest.tasks
    return manifest.ended_at_ns is not None and tasks is not None and tasks.total == tasks.planned and not interrupted


def run_dirs_of(runs_root: Path, name: str) -> list[Path]:
    """Every run directory of the run named `name`, oldest first."""
    pattern = re.compile(rf"{RUN_ID_STAMP}-{re.escape(name)}")
    return sorted(p for p in runs_root.glob(f"*-{name}") if pattern.fullmatch(p.name) and p.is_dir())


def reconcile(run: RunEntry, runs_root: Path) -> None:
    """The run's status and directory from what is on disk: its first finished directory is kept,
    every other one recorded as superseded."""
    dirs = run_dirs_of(runs_root, run.name)
    done = [d for d in dirs if finished(d)]
    if done:
        run.status, run.error, chosen = "complete", None, done[0]
    elif dirs:
        run.status, chosen = "incomplete", dirs[-1]
    else:
        run.run_dir, run.superseded = None, []
        if run.status == "complete":  # its directory was removed: run it again
            run.status = "pending"
        return
    run.run_dir = str(chosen)
    run.superseded = [str(d) for d in dirs if d != chosen]


# --- where a sweep's state lives ------------------------------------------------------------------


def sweep_dirs(runs_root: Path, name: str) -> list[Path]:
    """This name's sweep directories, oldest first: `<name>`, then `<name>.2`, `<name>.3` (--fresh)."""
    base = runs_root / "sweeps"
    found = [(1, base / name)] if (base / name / STATE).is_file() else []
    for path in base.glob(f"{name}.*"):
        suffix = path.name.removeprefix(f"{name}.")
        if suffix.isdigit() and (path / STATE).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


class SweepChanged(ConfigError):
    """The sweep file (or a base scenario it names) is not what the sweep directory was planned from."""


def open_state(sweep: Sweep, runs_root: Path, fresh: bool) -> tuple[Path, SweepState]:
    """The sweep directory and its state: the newest one of this name to resume, or a new one
    (the first, or the next `<name>.N` with `fresh`)."""
    existing = sweep_dirs(runs_root, sweep.name)
    if existing and not fresh:
        directory = existing[-1]
        state = SweepState.read(directory)
        _check_unchanged(sweep, state, directory)
        return directory, state
    generation = len(existing) + 1
    name = sweep.name if generation == 1 else f"{sweep.name}.{generation}"
    planned = Sweep(name, sweep.file, sweep.sha256, sweep.seed, sweep.repetitions, _renamed(sweep.cells, name))
    directory = runs_root / "sweeps" / name
    directory.mkdir(parents=True, exist_ok=True)
    state = SweepState.plan(planned)
    state.write(directory)
    return directory, state


def _renamed(cells: list[Cell], sweep_name: str) -> list[Cell]:
    return [Cell(c.label, c.params, c.scenario.model_copy(update={"name": f"{sweep_name}-{c.label}"})) for c in cells]


def _check_unchanged(sweep: Sweep, state: SweepState, directory: Path) -> None:
    if state.sha256 == sweep.sha256 and _same_scenarios(sweep, state):
        return
    what = "changed" if state.sha256 != sweep.sha256 else "is the same, but a base scenario it names changed,"
    raise SweepChanged(
        f"{sweep.file}: {what} since the sweep in {directory} was planned ({len(state.complete())} of "
        f"{len(state.runs)} runs complete); to finish that sweep, restore the file as it was; to start "
        f"a new sweep beside it (the old one stays), run `lab sweep {sweep.file} --fresh` or give the "
        "file another `name:`"
    )


def _same_scenarios(sweep: Sweep, state: SweepState) -> bool:
    def without_name(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k != "name"}

    planned = [(c["label"], c["params"], without_name(c["scenario"])) for c in state.cells]
    now = [(c["label"], c["params"], without_name(c["scenario"])) for c in _planned_cells(sweep)]
    return planned == now


# --- running it -------------------------------------------------------------------------------------


RunOne = Callable[[Scenario, Path], Path]
"""Runs one scenario (experiments.controller.run with the lab and a reporter bound); returns its run directory."""


class SweepInterrupted(LabError):
    """Ctrl-C: the current run's data is safe, the state written; the message says how to resume."""


class SweepProgress(Protocol):
    """What the sweep shows between runs (experiments.progress.SweepReporter)."""

    def starting(self, index: int, total: int, run: RunEntry, cell: Cell, eta_s: float | None) -> None: ...

    def finished(self, run: RunEntry, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class Outcome:
    directory: Path
    state: SweepState


def execute(sweep: Sweep, runs_root: Path, run_one: RunOne, progress: SweepProgress, fresh: bool = False) -> Outcome:
    """Plan or resume, then every run not yet complete, in the plan's order; the state is written
    after each. Raises SweepInterrupted on Ctrl-C and LabError when a run cannot start."""
    directory, state = open_state(sweep, runs_root, fresh)
    for run in state.runs:
        reconcile(run, runs_root)
    state.write(directory)
    cells = {c["label"]: c for c in state.cells}
    for index, run in enumerate(state.runs, start=1):
        if run.status == "complete":
            continue
        cell = cells[run.cell]
        scenario = Scenario.model_validate({**cell["scenario"], "name": run.name})
        progress.starting(index, len(state.runs), run, Cell(run.cell, cell["params"], scenario), eta(state))
        began = time.monotonic()
        try:
            run_one(scenario, sweep.file)
        except KeyboardInterrupt:
            _record(run, runs_root, began, "interrupted (Ctrl-C)")
            state.write(directory)
            raise SweepInterrupted(
                f"sweep {directory.name} interrupted at {run.name}; {len(state.complete())} of {len(state.runs)} runs "
                f"complete, the state is in {directory / STATE}; run `lab sweep {sweep.file}` again to resume"
            ) from None
        except LabError as exc:
            _record(run, runs_root, began, str(exc))
            state.write(directory)
            raise LabError(
                f"{exc}; the sweep {directory.name} stopped at {run.name} ({len(state.complete())} of "
                f"{len(state.runs)} runs complete); run `lab sweep {sweep.file}` again to resume"
            ) from exc
        _record(run, runs_root, began, None)
        state.write(directory)
        progress.finished(run, len(state.complete()), len(state.runs))
    return Outcome(directory, state)


def _record(run: RunEntry, runs_root: Path, began: float, error: str | None) -> None:
    """After an attempt: its duration, its directory and status; an attempt that left no run
    directory of its own failed before one existed."""
    run.duration_s = round(time.monotonic() - began, 1)
    before = run.run_dir
    reconcile(run, runs_root)
    if run.status != "complete":
        run.error = error or "the run did not finish (see its manifest's faults)"
        if run.run_dir == before:
            run.status = "failed"


def eta(state: SweepState) -> float | None:
    """Seconds left: the mean duration of the runs complete so far times the runs not complete."""
    durations = [r.duration_s for r in state.complete() if r.duration_s is not None]
    if not durations:
        return None
    return sum(durations) / len(durations) * (len(state.runs) - len(state.complete()))


def run_sweep(
    lab: LabConfig, file: Path, reporter: Reporter, progress: SweepProgress, fresh: bool = False
) -> SweepState:
    """`lab sweep FILE`: every cell validated, the runs not yet complete run through the controller,
    then the sweep report over every cell's complete runs (its path in the returned state's `report`)."""
    sweep = load_sweep(file, lab)
    root = controller.runs_root(lab)
    outcome = execute(
        sweep, root, lambda scenario, path: controller.run(lab, scenario, path, reporter), progress, fresh
    )
    state = outcome.state
    cells = []
    for cell in state.cells:
        runs = [Path(r.run_dir) for r in state.complete() if r.cell == cell["label"] and r.run_dir]
        if runs:
            cells.append(ReportCell(cell["label"], cell["params"], runs))
    state.report = str(write_sweep_report(cells, outcome.directory))
    state.write(outcome.directory)
    return state
