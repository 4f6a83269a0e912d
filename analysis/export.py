"""`lab export RUN|SWEEP... DIR`: the tables of several runs as one reusable dataset.

DIR gets `tables/<table>.parquet` (every run's rows, with a `run_id` column), each run's
`runs/<run_id>/manifest.json` and its telemetry as OTLP/JSON traces (`otlp/<run_id>.json`,
analysis/otlp.py), a datasheet (`DATASHEET.md` and `datasheet.json`, after Gebru
et al., "Datasheets for Datasets") and `SHA256SUMS`. Everything is written into a temporary
sibling of DIR that is renamed to DIR at the end, so DIR is never half-written.

A run is analysed again when a table is missing or its analysis.json names other analysis code
(codeversion.code_digest) than this one; --reanalyse forces it. Always re-analysing would cost
each run its full analysis and rewrite its report for nothing; comparing modification times
would miss a run copied after its analysis (the copy looks newer than any code).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis import datasheet, otlp, schema
from analysis.codeversion import code_digest
from analysis.pipeline import analyze_run
from analysis.rundir import RunDir
from lab import runlayout
from lab.errors import ColumnTypeError, ExportTargetError, ManifestError, NotARunError, SweepFileError

SWEEP_FILE = "sweep.json"
CHECKSUMS = "SHA256SUMS"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Exported:
    """One run as the export saw it: its manifest, what its analysis found wrong and its traces."""

    run: RunDir
    problems: list[dict[str, str]]
    reanalysed: bool
    traces: dict[str, int] = field(default_factory=dict)
    """What its OTLP document holds (otlp.summary), once written."""


def sweep_runs(sweep: Path, lab_dir: Path) -> list[Path]:
    """The run directories a sweep lists: the `run_dir` of every complete entry of sweep.json's `runs`
    (a list, or a mapping of cell to entry; experiments/sweep.py writes it), relative to the lab's
    directory (lab.yaml's) unless absolute. Runs not run yet or unfinished (`status` other than
    complete) are left out."""
    path = sweep / SWEEP_FILE
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SweepFileError(f"{path} is not JSON ({exc}): restore it, or export the run directories it names") from exc
    entries = data.get("runs") if isinstance(data, dict) else None
    if isinstance(entries, dict):
        entries = list(entries.values())
    if not isinstance(entries, list):
        raise SweepFileError(f"{path} has no `runs` list: is it a sweep that `lab sweep` wrote?")
    dirs = [
        entry["run_dir"]
        for entry in entries
        if isinstance(entry, dict) and entry.get("run_dir") and entry.get("status", "complete") == "complete"
    ]
    if not dirs:
        raise SweepFileError(f"{path}: no entry of `runs` has a run_dir yet; run (or resume) the sweep first")
    return [lab_dir / d for d in dirs]


def resolve_inputs(paths: list[Path], lab_dir: Path) -> list[Path]:
    """Sweeps expanded into their runs; every path checked to be a run directory, none twice."""
    runs: list[Path] = []
    for path in paths:
        runs.extend(sweep_runs(path, lab_dir) if (path / SWEEP_FILE).is_file() else [path])
    seen: dict[Path, Path] = {}
    for run in runs:
        if not runlayout.manifest_path(run).is_file():
            raise NotARunError(
                f"{run} is not a run directory (no manifest.json): name the runs/<run-id>/ directories "
                f"`lab experiment` wrote, or a sweep directory holding {SWEEP_FILE}"
            )
        if run.resolve() in seen:
            raise NotARunError(f"{run} is given twice (also as {seen[run.resolve()]}): name each run once")
        seen[run.resolve()] = run
    return runs


def check_target(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse a DIR that is a file, is not empty (unless `force`), or holds a run or sweep being exported."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportTargetError(f"{out} exists and is not a directory: name a new or empty directory")
    for path in inputs:
        if path.resolve().is_relative_to(out.resolve()):
            raise ExportTargetError(f"{out} holds {path}, which replacing it would delete: name another DIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportTargetError(f"{out} exists and is not empty: name a new or empty directory, or pass --force")


def export(
    paths: list[Path],
    out: Path,
    lab_dir: Path,
    force: bool = False,
    reanalyse: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Write the dataset of `paths` (run or sweep directories) into `out`; returns the datasheet."""
    runs = resolve_inputs(paths, lab_dir)
    check_target(out, [*paths, *runs], force)
    opened = [_open(run) for run in runs]
    _unique_ids(opened)
    exported = [_analysed(run, reanalyse, log) for run in opened]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tables = {name: _write_table(name, exported, tmp) for name in schema.TABLES}
        for item in exported:
            target = tmp / runlayout.exported_manifest_relpath(item.run.run_id)
            target.parent.mkdir(parents=True)
            shutil.copyfile(runlayout.manifest_path(item.run.path), target)
            item.traces = otlp.write(item.run, tmp / runlayout.exported_traces_relpath(item.run.run_id))
        sheet = datasheet.build(exported, tables)
        (tmp / "datasheet.json").write_text(json.dumps(sheet, indent=2, ensure_ascii=False, default=str) + "\n")
        (tmp / "DATASHEET.md").write_text(datasheet.markdown(sheet))
        write_checksums(tmp)
        tmp.chmod(0o755)
        _publish(tmp, out, [*paths, *runs], force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {len(exported)} run(s) to {out}")
    return sheet


def _open(path: Path) -> RunDir:
    try:
        read = runlayout.read_manifest(path)
    except ManifestError as exc:
        raise NotARunError(str(exc)) from exc
    run = RunDir(path, read.manifest)
    for note in read.notes:
        run.note(runlayout.MANIFEST, note)
    return run


def _analysed(run: RunDir, reanalyse: bool, log: Callable[[str], None]) -> Exported:
    stale = reanalyse or tables_stale(run.path)
    if stale:
        log(f"analysing {run.path}")
        analyze_run(run.path)
    summary = json.loads(runlayout.analysis_path(run.path).read_text())
    return Exported(run, list(summary.get("problems") or []), stale)


def tables_stale(run: Path) -> bool:
    """True when a table or analysis.json is missing, or analysis.json names other analysis code."""
    if not all(runlayout.table_path(run, name).is_file() for name in schema.TABLES):
        return True
    try:
        summary = json.loads(runlayout.analysis_path(run).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return True
    return not isinstance(summary, dict) or summary.get("code") != code_digest()


def _unique_ids(runs: list[RunDir]) -> None:
    owner: dict[str, Path] = {}
    for run in runs:
        run_id = run.run_id
        if not _SAFE_ID.fullmatch(run_id):
            raise NotARunError(
                f"{runlayout.manifest_path(run.path)}: run_id {run_id!r} is not a plain name (letters, digits, . _ -)"
            )
        if run_id in owner:
            raise NotARunError(
                f"{run.path} and {owner[run_id]} have the same run_id {run_id!r} (a copy?): export one of them"
            )
        owner[run_id] = run.path


def _write_table(name: str, exported: list[Exported], tmp: Path) -> pa.Table:
    """Every run's table with its run_id first, in one file; types widened where runs differ (an all-null
    or integer column beside a float one)."""
    parts = [_read(item.run, name) for item in exported]
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise ColumnTypeError(
            f"table {name}: {exc}; the runs' {runlayout.table_relpath(name)} were written by different analysis code: "
            "export again with --reanalyse"
        ) from exc
    runlayout.tables_dir(tmp).mkdir(exist_ok=True)
    pq.write_table(table, runlayout.table_path(tmp, name))
    return table


def _read(run: RunDir, name: str) -> pa.Table:
    table = pq.read_table(runlayout.table_path(run.path, name)).replace_schema_metadata(None)
    if "run_id" in table.column_names:  # the probe records' own run_id (rtt, retrans)
        table = table.drop_columns(["run_id"])
    return table.add_column(0, "run_id", pa.array([run.run_id] * table.num_rows, pa.string()))


def write_checksums(root: Path) -> None:
    """SHA256SUMS of every file under `root`, in `sha256sum -c` format (two spaces, relative paths)."""
    lines = [
        f"{_sha256(path)}  {path.relative_to(root).as_posix()}\n"
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    ]
    (root / CHECKSUMS).write_text("".join(lines))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _publish(tmp: Path, out: Path, inputs: list[Path], force: bool) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` (empty, or any with `force`) is replaced."""
    check_target(out, inputs, force)  # again: something may have appeared there meanwhile
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.replaced-{time.time_ns()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old)
