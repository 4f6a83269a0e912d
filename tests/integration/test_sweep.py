"""`lab sweep` end to end on the deployed nspawn lab: a small sweep (2 cells x 2 repetitions of the
baseline) interrupted with Ctrl-C during its second run, then resumed: the complete run is kept, the
interrupted one recorded as superseded, every run complete and one sweep report written."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.sweep import finished, run_dirs_of
from tests.conftest import lab_cli, start_lab_cli

pytestmark = pytest.mark.integration

NAME = "sweep-it"


def sweep_runs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.glob(f"*-{NAME}-c*-r*") if p.is_dir())


def wait_for(condition, what: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s} s")


def test_a_sweep_interrupted_after_its_first_run_resumes_and_completes(deployed_lab, tmp_path):
    config = deployed_lab.config
    runs = config.parent / "runs"
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "scenario": "baseline",
                "overrides": {"tasks.count": 4, "warmup": 0},
                "grid": {"load.concurrency": [1, 2]},
                "repetitions": 2,
                "seed": 3,
            }
        )
    )
    started = time.monotonic()
    sweep = start_lab_cli(config, "sweep", str(path))
    wait_for(lambda: any(finished(p) for p in sweep_runs(runs)), "no run of the sweep finished")
    wait_for(lambda: len(sweep_runs(runs)) == 2, "the sweep's second run did not start")
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, output
    assert f"lab sweep {path}` again to resume" in " ".join(output.split()), output

    state_file = runs / "sweeps" / NAME / "sweep.json"
    interrupted = json.loads(state_file.read_text())
    by_status = {s: [r for r in interrupted["runs"] if r["status"] == s] for s in ("complete", "incomplete")}
    [first], [cut] = by_status["complete"], by_status["incomplete"]
    assert interrupted["runs"][:2] == [first, cut]  # in the planned order
    assert not finished(Path(cut["run_dir"])) and "interrupted" in cut["error"]

    result = lab_cli(config, "sweep", str(path), timeout=900)
    print(f"sweep of 4 baseline runs, interrupted once and resumed: {time.monotonic() - started:.1f} s wall")
    state = json.loads(state_file.read_text())
    assert [r["status"] for r in state["runs"]] == ["complete"] * 4, state["runs"]
    assert state["runs"][0]["run_dir"] == first["run_dir"]  # kept, not run again
    resumed = state["runs"][1]
    assert resumed["superseded"] == [cut["run_dir"]] and resumed["run_dir"] != cut["run_dir"]
    assert Path(cut["run_dir"]).is_dir()  # superseded, never deleted
    assert all(finished(Path(r["run_dir"])) for r in state["runs"])
    assert len(sweep_runs(runs)) == 5 and all(len(run_dirs_of(runs, r["name"])) >= 1 for r in state["runs"])
    assert {tuple(c["params"].items()) for c in state["cells"]} == {
        (("load.concurrency", 1),),
        (("load.concurrency", 2),),
    }
    assert state["report"] and Path(state["report"]).is_file() and f"sweep report: {state['report']}" in result.stdout
    page = Path(state["report"]).read_text()
    assert "bootstrap interval" in page and "<h2>Validation</h2>" in page and "Beside published figures" in page
    summary = json.loads((Path(state["report"]).parent / "sweep-summary.json").read_text())
    by_cell = {c["label"]: c for c in summary["cells"]}
    for cell in state["cells"]:
        ran = sorted(Path(r["run_dir"]).name for r in state["runs"] if r["cell"] == cell["label"])
        assert sorted(by_cell[cell["label"]]["runs"]) == ran and by_cell[cell["label"]]["params"] == cell["params"]
    exported = tmp_path / "dataset"
    lab_cli(config, "export", str(state_file.parent), str(exported), timeout=600)
    tables = pd.read_parquet(exported / "tables" / "tasks.parquet")
    assert sorted(tables["run_id"].unique()) == sorted(Path(r["run_dir"]).name for r in state["runs"])  # no cut run
