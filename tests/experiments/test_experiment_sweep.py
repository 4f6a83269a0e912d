"""Sweep files and sweep state: grid expansion, dotted keys, errors naming the file, the cell and the
key, the seeded order, the refusal of a changed file, and which runs a resumed sweep keeps (run
directories written with the controller's own Manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiments.scenario import Scenario
from experiments.sweep import (
    STATE,
    RunEntry,
    SweepChanged,
    SweepInterrupted,
    SweepState,
    eta,
    execute,
    expand_grid,
    finished,
    load_sweep,
    reconcile,
    run_order,
    run_sweep,
    set_dotted,
)
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.runlayout import Fault, Manifest, write_manifest
from tests.conftest import REPO, write_lab
from workload.knobs import Knobs

LAB = load_config(REPO / "lab.yaml")
SMALL = {
    "scenario": "baseline",
    "overrides": {"tasks.count": 4, "warmup": 0},
    "grid": {"load.concurrency": [1, 2]},
    "repetitions": 2,
    "seed": 3,
}


def sweep_file(directory: Path, stem: str = "small", **data: Any) -> Path:
    path = directory / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data or SMALL, sort_keys=False))
    return path


def problem(tmp_path: Path, **data: Any) -> str:
    path = sweep_file(tmp_path, **data)
    with pytest.raises(ConfigError) as info:
        load_sweep(path, LAB)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def test_the_grid_is_every_combination_first_key_slowest():
    assert expand_grid({"a": [1, 2], "b.c": ["x", "y", "z"]}) == [
        {"a": 1, "b.c": "x"},
        {"a": 1, "b.c": "y"},
        {"a": 1, "b.c": "z"},
        {"a": 2, "b.c": "x"},
        {"a": 2, "b.c": "y"},
        {"a": 2, "b.c": "z"},
    ]
    assert expand_grid({}) == [{}]


def test_a_dotted_key_sets_one_value_and_creates_what_is_missing():
    data: dict[str, Any] = {"load": {"concurrency": 4}, "tasks": {"count": 200, "seed": 1}}
    set_dotted(data, "tasks.count", 4)
    set_dotted(data, "timeouts.llm_s", 90)
    set_dotted(data, "load", {"rate_per_s": 2})
    assert data == {"load": {"rate_per_s": 2}, "tasks": {"count": 4, "seed": 1}, "timeouts": {"llm_s": 90}}
    with pytest.raises(ValueError, match="workload is 'baseline', not a mapping"):
        set_dotted({"workload": "baseline"}, "workload.kind", 1)


def test_the_shipped_sweep_has_nine_cells_over_workload_and_load():
    sweep = load_sweep(REPO / "experiments" / "sweeps" / "load.yaml", LAB)
    assert sweep.name == "load" and sweep.repetitions == 3 and len(sweep.cells) == 9
    assert [c.label for c in sweep.cells[:2]] == ["c01", "c02"]
    first, last = sweep.cells[0], sweep.cells[-1]
    assert first.params == {"workload": "baseline", "load.concurrency": 1}
    assert first.scenario.name == "load-c01" and first.scenario.workload == "baseline"
    assert first.scenario.tasks.count == 7 and first.scenario.warmup == 1 and first.scenario.timeouts.llm_s == 240
    assert last.scenario.workload == "multihop" and last.scenario.load.concurrency == 4
    assert last.scenario.repetitions == 1
    assert first.summary == "workload=baseline, load.concurrency=1"


def test_the_shipped_knob_sweep_flips_one_knob_at_a_time_in_each_workload():
    """experiments/sweeps/knobs.yaml: every knob at its default, then each flipped alone (#18's figures)."""
    sweep = load_sweep(REPO / "experiments" / "sweeps" / "knobs.yaml", LAB)
    assert len(sweep.cells) == 18 and {c.scenario.tasks.count for c in sweep.cells} == {20}
    defaults = Knobs()
    for cell in sweep.cells:
        flipped = {k for k, v in cell.scenario.knobs.model_dump().items() if v != getattr(defaults, k)}
        assert len(flipped) <= 1 and flipped == set(cell.params["knobs"]), cell.summary
    assert [c.scenario.workload for c in sweep.cells[::6]] == ["baseline", "simple", "multihop"]


def test_a_base_scenario_path_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"workload": "simple", "tasks": {"count": 2}}))
    path = sweep_file(tmp_path, scenario="mine.yaml", grid={"knobs.http_reuse": ["pooled", "per_call"]})
    sweep = load_sweep(path, LAB)
    assert [c.scenario.knobs.http_reuse for c in sweep.cells] == ["pooled", "per_call"]
    assert all(c.scenario.workload == "simple" for c in sweep.cells)


def test_a_bad_value_names_the_file_the_cell_and_the_key(tmp_path):
    message = problem(tmp_path, **{**SMALL, "grid": {"load.concurrency": [1, 0]}})
    assert "cell c02 (load.concurrency=0): load.concurrency:" in message and "greater than or equal to 1" in message


def test_a_misspelt_key_names_the_allowed_ones(tmp_path):
    message = problem(tmp_path, **{**SMALL, "grid": {"load.concurency": [1, 2]}})
    assert "cell c01 (load.concurency=1): load: unknown key 'concurency'" in message
    assert "allowed: concurrency, rate_per_s" in message


def test_a_node_that_is_not_in_the_lab(tmp_path):
    bad = [{"node": "agent-c", "delay_ms": 5}]
    message = problem(tmp_path, **{**SMALL, "grid": {"impairments": [[], bad]}})
    assert "cell c02" in message and "impairments[0].node: no node 'agent-c'" in message


def test_keys_of_the_sweep_itself(tmp_path):
    assert "grid.repetitions: use the sweep's own `repetitions`" in problem(
        tmp_path, **{**SMALL, "grid": {"repetitions": [1, 2]}}
    )
    assert "grid.scenario: the base scenario is the sweep's own `scenario`; vary the grid key `workload`" in problem(
        tmp_path, **{**SMALL, "grid": {"scenario": ["baseline", "simple"]}}
    )
    assert "no values; give at least one" in problem(tmp_path, **{**SMALL, "grid": {"warmup": []}})
    assert "a value appears twice" in problem(tmp_path, **{**SMALL, "grid": {"warmup": [1, 1]}})
    assert "unknown key 'repetition'" in problem(tmp_path, **{**SMALL, "repetition": 2})
    assert "name: use 1-32 letters" in problem(tmp_path, **{**SMALL, "name": "a/b"})
    assert "no base scenario; add `scenario: baseline`" in problem(tmp_path, grid={"warmup": [0]})
    assert "scenario: no scenario 'nope'" in problem(tmp_path, **{**SMALL, "scenario": "nope"})


def test_inline_keys_alone_make_a_scenario(tmp_path):
    path = sweep_file(tmp_path, overrides={"workload": "baseline", "tasks": {"count": 3}}, grid={"warmup": [0, 1]})
    assert [c.scenario.warmup for c in load_sweep(path, LAB).cells] == [0, 1]


def test_the_order_is_seeded_and_holds_every_run_once():
    labels = [f"c{i:02d}" for i in range(1, 10)]
    order = run_order(labels, 3, seed=1)
    assert order == run_order(labels, 3, seed=1) != run_order(labels, 3, seed=2)
    assert sorted(order) == [(label, rep) for label in labels for rep in (1, 2, 3)]
    assert order != sorted(order)


# --- state, resume -----------------------------------------------------------------------------------


def fake_run(runs: Path, name: str, stamp: str, complete: bool = True, interrupted: bool = False) -> Path:
    """A run directory as the controller leaves it: finished, or cut short (Ctrl-C)."""
    run_dir = runs / f"{stamp}-{name}"
    run_dir.mkdir(parents=True)
    total = 4 if complete else 1
    faults = (
        [Fault(when_ns=1, node="controller", what="interrupted (Ctrl-C) after 1 task(s); stopping")]
        if interrupted
        else []
    )
    manifest = Manifest(
        run_id=run_dir.name,
        scenario={"name": name},
        lab={},
        provider="nspawn",
        accelerator="container",
        image="x",
        started_at_ns=1,
        ended_at_ns=2,
        tasks={"planned": 4, "total": total, "ok": total, "failed": 0, "warmup": 0},
        faults=faults,
    )
    write_manifest(manifest, run_dir)
    return run_dir


def test_which_run_directories_finished(tmp_path):
    assert finished(fake_run(tmp_path, "a", "20260101T000000Z"))
    assert not finished(fake_run(tmp_path, "b", "20260101T000000Z", complete=False, interrupted=True))
    assert not finished(fake_run(tmp_path, "c", "20260101T000000Z", interrupted=True))
    (tmp_path / "d").mkdir()
    assert not finished(tmp_path / "d")  # no manifest: killed before it wrote one


def test_reconcile_keeps_the_first_finished_directory_and_supersedes_the_rest(tmp_path):
    cut = fake_run(tmp_path, "s-c01-r1", "20260101T000000Z", complete=False, interrupted=True)
    done = fake_run(tmp_path, "s-c01-r1", "20260101T000100Z")
    fake_run(tmp_path, "x-s-c01-r1", "20260101T000200Z")  # another sweep's run whose name ends the same
    run = RunEntry("s-c01-r1", "c01", 1)
    reconcile(run, tmp_path)
    assert (run.status, run.run_dir, run.superseded) == ("complete", str(done), [str(cut)])
    other = RunEntry("s-c02-r1", "c02", 1)
    fake_run(tmp_path, "s-c02-r1", "20260101T000300Z", complete=False)
    reconcile(other, tmp_path)
    assert other.status == "incomplete" and other.superseded == []


class Controller:
    """Runs as the controller leaves them: each a run directory with its manifest; Ctrl-C at the
    `stop_at`-th run, after its data is written."""

    def __init__(self, runs: Path, stop_at: int | None = None) -> None:
        self.runs, self.stop_at, self.ran = runs, stop_at, []

    def __call__(self, scenario: Scenario, file: Path) -> Path:
        self.ran.append(scenario.name)
        stamp = f"20260101T{len(self.ran):06d}Z"
        if len(self.ran) == self.stop_at:
            fake_run(self.runs, scenario.name, stamp, complete=False, interrupted=True)
            raise KeyboardInterrupt
        return fake_run(self.runs, scenario.name, stamp)


class Quiet:
    def starting(self, *args: Any) -> None:
        pass

    def finished(self, *args: Any) -> None:
        pass


def test_an_interrupted_sweep_resumes_with_what_is_missing(tmp_path):
    runs = tmp_path / "runs"
    sweep = load_sweep(sweep_file(tmp_path), LAB)
    first = Controller(runs, stop_at=2)
    with pytest.raises(SweepInterrupted, match=r"1 of 4 runs complete.*run `lab sweep .*small.yaml` again to resume"):
        execute(sweep, runs, first, Quiet())
    state = SweepState.read(runs / "sweeps" / "small")
    assert [r.status for r in state.runs] == ["complete", "incomplete", "pending", "pending"]
    assert state.runs[1].error == "interrupted (Ctrl-C)" and state.sha256 == sweep.sha256 and state.seed == 3
    assert [r.name for r in state.runs] == [f"small-{c}-r{rep}" for c, rep in sweep.order()]

    second = Controller(runs)
    outcome = execute(sweep, runs, second, Quiet())
    assert second.ran == [r.name for r in state.runs[1:]]  # the complete run is not run again
    after = outcome.state
    assert all(r.status == "complete" for r in after.runs) and after.runs[0].run_dir == state.runs[0].run_dir
    assert after.runs[1].superseded == [state.runs[1].run_dir] and Path(state.runs[1].run_dir).is_dir()
    assert json.loads((outcome.directory / STATE).read_text())["runs"][1]["superseded"] == after.runs[1].superseded
    third = Controller(runs)
    execute(sweep, runs, third, Quiet())
    assert third.ran == []


def test_a_changed_file_is_refused_and_fresh_starts_beside_it(tmp_path):
    runs = tmp_path / "runs"
    path = sweep_file(tmp_path)
    execute(load_sweep(path, LAB), runs, Controller(runs), Quiet())
    sweep_file(tmp_path, **{**SMALL, "repetitions": 3})
    changed = load_sweep(path, LAB)
    with pytest.raises(SweepChanged, match=r"changed since the sweep in .*small was planned \(4 of 4 runs complete\)"):
        execute(changed, runs, Controller(runs), Quiet())
    fresh = Controller(runs)
    outcome = execute(changed, runs, fresh, Quiet(), fresh=True)
    assert outcome.directory.name == "small.2" and len(fresh.ran) == 6
    assert all(name.startswith("small.2-c0") for name in fresh.ran)
    resumed = Controller(runs)
    assert execute(changed, runs, resumed, Quiet()).directory.name == "small.2" and resumed.ran == []


def test_a_run_that_cannot_start_stops_the_sweep_and_says_how_to_resume(tmp_path):
    runs = tmp_path / "runs"

    def refused(scenario: Scenario, file: Path) -> Path:
        raise LabError("preflight failed: agent-b: not healthy")

    with pytest.raises(LabError, match=r"not healthy; the sweep small stopped at small-c\d+-r\d \(0 of 4"):
        execute(load_sweep(sweep_file(tmp_path), LAB), runs, refused, Quiet())
    state = SweepState.read(runs / "sweeps" / "small")
    assert state.runs[0].status == "failed" and "not healthy" in (state.runs[0].error or "")


def test_time_left_is_the_mean_run_times_the_runs_left():
    state = SweepState("s", "f", "h", 1, 2, [], [RunEntry(f"s-c01-r{i}", "c01", i) for i in (1, 2, 3, 4)], "now")
    assert eta(state) is None
    state.runs[0].status, state.runs[0].duration_s = "complete", 10.0
    state.runs[1].status, state.runs[1].duration_s = "complete", 30.0
    assert eta(state) == 40.0


def test_nothing_runs_when_a_cell_is_invalid(tmp_path):
    lab = load_config(write_lab(tmp_path, "sw", "10.84.0"))
    path = sweep_file(tmp_path, **{**SMALL, "grid": {"load.concurrency": [1, -1]}})
    with pytest.raises(ConfigError, match="cell c02"):
        run_sweep(lab, path, reporter=None, progress=Quiet())  # type: ignore[arg-type]
    assert not (tmp_path / "runs").exists()
