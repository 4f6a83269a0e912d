"""`lab export` on real runs: the three loopback runs (conftest.py) into one dataset and back, the
column registry held to the tables the analysis writes, and the refusals that need a run."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis import datasheet, schema
from analysis.codeversion import code_digest
from analysis.export import export
from lab.errors import ExportTargetError, NotARunError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def dataset(loop_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three runs exported: multihop through a sweep directory (its run_dir relative to the lab's
    directory), simple through a sweep entry with an absolute path, baseline named directly."""
    lab_dir = loop_runs["multihop"].parent
    sweep = tmp_path_factory.mktemp("sweep")
    entries = [{"cell": "m", "run_dir": loop_runs["multihop"].name}, {"cell": "s", "run_dir": str(loop_runs["simple"])}]
    (sweep / "sweep.json").write_text(json.dumps({"runs": entries + [{"cell": "not run yet"}]}))
    out = tmp_path_factory.mktemp("export") / "dataset"
    export([sweep, loop_runs["baseline"]], out, lab_dir)
    return out


@pytest.mark.parametrize("scenario", ["baseline", "simple", "multihop"])
def test_every_table_round_trips_with_its_rows_and_run_id(
    dataset: Path, loop_runs: dict[str, Path], scenario: str
) -> None:
    run = loop_runs[scenario]
    run_id = json.loads((run / "manifest.json").read_text())["run_id"]
    for name in schema.TABLES:
        exported = pd.read_parquet(dataset / "tables" / f"{name}.parquet")
        mine = exported[exported["run_id"] == run_id].drop(columns="run_id")
        original = pd.read_parquet(run / "tables" / f"{name}.parquet").drop(columns="run_id", errors="ignore")
        assert len(mine) == len(original), name
        assert list(exported.columns)[0] == "run_id" and set(original.columns) <= set(exported.columns), name
    assert (dataset / "runs" / run_id / "manifest.json").read_bytes() == (run / "manifest.json").read_bytes()


def test_row_counts_are_the_runs_summed_and_the_checksums_hold(dataset: Path, loop_runs: dict[str, Path]) -> None:
    for name in schema.TABLES:
        total = sum(len(pd.read_parquet(run / "tables" / f"{name}.parquet")) for run in loop_runs.values())
        assert len(pd.read_parquet(dataset / "tables" / f"{name}.parquet")) == total, name
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=dataset, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (dataset / "SHA256SUMS").read_text().splitlines()}
    written = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    assert listed == written - {"SHA256SUMS"}
    for line in (dataset / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((dataset / name).read_bytes()).hexdigest() == digest


def test_the_datasheet_describes_every_column_and_every_run(dataset: Path, loop_runs: dict[str, Path]) -> None:
    sheet = json.loads((dataset / "datasheet.json").read_text())
    page = (dataset / "DATASHEET.md").read_text()
    assert "Datasheets for Datasets" in page and "Gebru" in page
    for name in schema.TABLES:
        columns = pd.read_parquet(dataset / "tables" / f"{name}.parquet").columns
        described = {c["name"]: c for c in sheet["tables"][name]["columns"]}
        assert list(described) == list(columns), name
        assert all(c["unit"] in schema.UNITS and c["description"] and c["dtype"] for c in described.values())
        section = page.split(f"### Table `{name}`")[1].split("\n### ")[0]
        assert all(f"| `{column}` |" in section for column in columns), name
    assert sheet["limitations"]["undescribed_columns"] == []
    for run in loop_runs.values():
        manifest = json.loads((run / "manifest.json").read_text())
        facts = next(r for r in sheet["runs"] if r["run_id"] == manifest["run_id"])
        assert (
            facts["facts"]["provider"] == manifest["provider"] and facts["clock_offsets"] == manifest["clock_offsets"]
        )
        assert f"### Run `{manifest['run_id']}`" in page


def test_the_registry_describes_exactly_the_columns_the_analysis_writes(
    dataset: Path, loop_runs: dict[str, Path]
) -> None:
    """Fails when pipeline.write_tables gains, renames or drops a table or a column that analysis/schema.py
    does not follow: describe it there (unit and how it was measured)."""
    for run in loop_runs.values():  # the export analysed each run with this code, or found it had
        assert json.loads((run / "analysis.json").read_text())["code"] == code_digest()
        assert {p.stem for p in (run / "tables").glob("*.parquet")} == set(schema.TABLES)
    for name, table in schema.TABLES.items():
        written = set().union(
            *(pd.read_parquet(run / "tables" / f"{name}.parquet").columns for run in loop_runs.values())
        )
        assert not written - set(table.columns), f"{name}: columns missing from analysis/schema.py"
        assert not set(table.columns) - written, f"{name}: analysis/schema.py describes columns no table has"


def test_a_failed_export_leaves_no_directory_and_force_keeps_the_old_one_until_the_end(
    loop_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(datasheet, "markdown", broken)
    runs = list(loop_runs.values())
    with pytest.raises(RuntimeError, match="disk full"):
        export(runs, tmp_path / "new", tmp_path)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("earlier export")
    with pytest.raises(RuntimeError, match="disk full"):
        export(runs, old, tmp_path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "keep.txt").read_text() == "earlier export"


def test_force_replaces_a_directory_that_is_not_empty(loop_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    with pytest.raises(ExportTargetError, match=f"{out} exists and is not empty.*--force"):
        export([loop_runs["baseline"]], out, tmp_path)
    export([loop_runs["baseline"]], out, tmp_path, force=True)
    assert not (out / "stale.txt").exists() and (out / "SHA256SUMS").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_a_run_given_twice_or_a_dir_holding_the_runs_is_refused(loop_runs: dict[str, Path]) -> None:
    run = loop_runs["baseline"]
    with pytest.raises(NotARunError, match="given twice"):
        export([run, run.parent / ".." / run.parent.name / run.name], run.parent / "x", run.parent)
    with pytest.raises(ExportTargetError, match=f"{run.parent} holds {run}, which replacing it would delete"):
        export([run], run.parent, run.parent, force=True)
    assert (run / "manifest.json").is_file()
