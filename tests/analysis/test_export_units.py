"""`lab export` without real runs: reading a sweep, the refusals, runs whose tables no common type
holds, and the column registry's own consistency (test_export.py holds it to real tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import otlp, schema
from analysis.codeversion import code_digest
from analysis.export import export, sweep_runs, tables_stale
from lab import runlayout
from lab.errors import ColumnTypeError, ExportTargetError, NotARunError, SweepFileError
from tests.conftest import lab_cli
from workload.telemetry import CallEvent, EventWriter


def _run(root: Path, run_id: str, answer: Any = "42") -> Path:
    """A run directory as analysed by this code: manifest, analysis.json and one row in every table."""
    path = root / run_id
    (path / "tables").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"run_id": run_id, "provider": "nspawn"}))
    (path / "analysis.json").write_text(json.dumps({"code": code_digest(), "problems": []}))
    for name, table in schema.TABLES.items():
        row = {column: [answer if column == "answer" else 1] for column in table.columns}
        pd.DataFrame(row).to_parquet(path / "tables" / f"{name}.parquet", index=False)
    return path


def test_a_sweep_lists_its_runs_relative_to_the_lab_or_absolute(tmp_path: Path) -> None:
    sweep = tmp_path / "runs" / "sweeps" / "load"
    sweep.mkdir(parents=True)
    entries = {
        "a": {"run_dir": "runs/r1", "status": "complete"},
        "b": {"run_dir": "/data/r2"},
        "c": {"status": "pending"},
        "d": {"run_dir": "runs/r3", "status": "incomplete"},  # an attempt that did not finish: not exported
    }
    (sweep / "sweep.json").write_text(json.dumps({"runs": entries}))
    assert sweep_runs(sweep, tmp_path) == [tmp_path / "runs" / "r1", Path("/data/r2")]
    (sweep / "sweep.json").write_text(json.dumps({"runs": list(entries.values())}))
    assert sweep_runs(sweep, tmp_path) == [tmp_path / "runs" / "r1", Path("/data/r2")]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{broken", "is not JSON"), ('{"cells": []}', "has no `runs` list"), ('{"runs": [{}]}', "no entry of `runs`")],
)
def test_a_broken_sweep_file_is_refused_naming_it(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "sweep.json").write_text(content)
    with pytest.raises(SweepFileError, match=f"{tmp_path / 'sweep.json'}.*{message}"):
        export([tmp_path], tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_directory_without_a_manifest_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(NotARunError, match=f"{tmp_path / 'notes'} is not a run directory"):
        export([tmp_path / "notes"], tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "message"), [("{", "is not JSON"), ("[]", "is not a JSON object")])
def test_a_broken_manifest_is_refused_naming_it(tmp_path: Path, content: str, message: str) -> None:
    run = _run(tmp_path, "r1")
    (run / "manifest.json").write_text(content)
    with pytest.raises(NotARunError, match=f"{run / 'manifest.json'} {message}"):
        export([run], tmp_path / "out", tmp_path)


def test_a_sweep_inside_dir_is_refused(tmp_path: Path) -> None:
    sweep = tmp_path / "out" / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"runs": [{"run_dir": str(_run(tmp_path, "r1"))}]}))
    with pytest.raises(ExportTargetError, match=f"{tmp_path / 'out'} holds {sweep}"):
        export([sweep], tmp_path / "out", tmp_path, force=True)


def test_a_file_as_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(ExportTargetError, match="exists and is not a directory"):
        export([_run(tmp_path, "r1")], tmp_path / "out", tmp_path, force=True)


def test_runs_with_the_same_id_are_refused(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", "r1")
    with pytest.raises(NotARunError, match="same run_id 'r1'"):
        export([first, _run(tmp_path / "b", "r1")], tmp_path / "out", tmp_path)


def test_fresh_tables_are_exported_as_they_are_and_an_empty_dir_is_filled(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "r1"), _run(tmp_path, "r2")]
    assert not tables_stale(runs[0])
    (tmp_path / "out").mkdir()
    sheet = export(runs, tmp_path / "out", tmp_path)
    assert [r["reanalysed_for_export"] for r in sheet["runs"]] == [False, False]
    tasks = pd.read_parquet(tmp_path / "out" / "tables" / "tasks.parquet")
    assert list(tasks["run_id"]) == ["r1", "r2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r1", "r2"]


def _task_call(run: Path) -> None:
    """The driver's telemetry: one task call."""
    writer = EventWriter(runlayout.driver_telemetry(run))
    event = CallEvent(
        "controller", "driver", None, "t1", "1" * 16, None, "a" * 32, "task", "client", "agent-a", "simple", 1
    )
    writer.write(event)
    writer.close()


def test_each_runs_traces_are_written_listed_and_described(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "r1"), _run(tmp_path, "r2")]
    _task_call(runs[0])
    sheet = export(runs, tmp_path / "out", tmp_path)
    out = tmp_path / "out"
    assert otlp.summary(json.loads((out / "otlp" / "r1.json").read_text())) == {
        "spans": 1,
        "traces": 1,
        "extra_roots": 0,
    }
    assert otlp.spans_of(json.loads((out / "otlp" / "r2.json").read_text())) == []  # no telemetry: no span
    listed = {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert {"otlp/r1.json", "otlp/r2.json"} <= listed
    assert [r["traces"]["file"] for r in sheet["runs"]] == ["otlp/r1.json", "otlp/r2.json"]
    assert "otlp/<run_id>.json" in sheet["files"]
    assert "Traces: `otlp/r1.json`, 1 spans in 1 traces." in (out / "DATASHEET.md").read_text()


def test_traces_that_cannot_be_written_leave_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> dict:
        raise OSError("disk full")

    monkeypatch.setattr(otlp, "run_traces", broken)
    with pytest.raises(OSError, match="disk full"):
        export([_run(tmp_path, "r1")], tmp_path / "out", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


def test_tables_of_other_analysis_code_are_stale(tmp_path: Path) -> None:
    run = _run(tmp_path, "r1")
    (run / "analysis.json").write_text(json.dumps({"code": "an older digest"}))
    assert tables_stale(run)
    (run / "analysis.json").write_text(json.dumps({"code": code_digest()}))
    (run / "tables" / "rtt.parquet").unlink()
    assert tables_stale(run)


def test_a_column_no_common_type_holds_is_refused_naming_the_table(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "r1", answer="forty-two"), _run(tmp_path, "r2", answer=42)]
    with pytest.raises(ColumnTypeError, match="table tasks: .*--reanalyse"):
        export(runs, tmp_path / "out", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1", "r2"]


def test_the_registry_uses_known_units_and_describes_every_column() -> None:
    for table in schema.TABLES.values():
        assert table.row and table.source
        for name, column in table.columns.items():
            assert column.unit in schema.UNITS and column.description, name
    assert schema.RUN_ID.unit in schema.UNITS


def test_the_command_prints_one_line_naming_the_path(tmp_path: Path) -> None:
    result = lab_cli(tmp_path / "lab.yaml", "export", str(tmp_path / "nowhere"), str(tmp_path / "out"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {tmp_path / 'nowhere'} is not a run directory" in result.stderr
