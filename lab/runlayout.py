"""The run-directory contract: where each file of a run lives and what manifest.json holds, for the
controller that writes a run directory and the analysis that reads it.

    runs/<run-id>/
      manifest.json                       Manifest below; `layout_version` says which layout this is
      results.jsonl                       one line per task
      telemetry/driver.jsonl              the controller's own telemetry events
      nodes/<node>/probes/                the collectors runner's --out: status.json, <probe>.jsonl,
                                          pcap-<iface>.pcap, runner.pid, logs/runner.log, ...
      nodes/<node>/telemetry/<service>.jsonl
      tables/<table>.parquet, plots/<plot>.png, report.html, analysis.json   written by the analysis

A node's own run directory (experiments/node_script.py, stdlib only, cannot import this module) has
the shape of nodes/<node>/; tests/lab/test_runlayout.py holds its names to these.

Layout versions: 1, the manifests written before this module (no `layout_version`, some fields
missing in older ones); 2, the current one. Both read.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lab.errors import ManifestError, ManifestMissingError

LAYOUT_VERSION = 2
UNVERSIONED = 1
"""The layout of a manifest without `layout_version`: every run directory written before it existed."""

RUNS = "runs"
"""Beside lab.yaml: every run directory; in an export, one directory per run holding its manifest."""
OTLP = "otlp"
"""In an export: each run's telemetry as OTLP/JSON traces."""
MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
TELEMETRY = "telemetry"
DRIVER = "driver"
"""The controller's telemetry service name: its events are telemetry/driver.jsonl."""
NODES = "nodes"
PROBES = "probes"
STATUS = "status.json"
RUNNER_PID = "runner.pid"
RUNNER_LOG = "logs/runner.log"
CAPTURE_PREFIX, CAPTURE_SUFFIX = "pcap-", ".pcap"
TABLES = "tables"
PLOTS = "plots"
REPORT = "report.html"
ANALYSIS = "analysis.json"


# --- paths ---------------------------------------------------------------------------------


def manifest_path(run_dir: Path) -> Path:
    return run_dir / MANIFEST


def results_path(run_dir: Path) -> Path:
    return run_dir / RESULTS


def telemetry_dir(root: Path) -> Path:
    """Telemetry of the run's controller (root: the run directory) or of a node (root: its node directory)."""
    return root / TELEMETRY


def telemetry_file(directory: Path, service: str) -> Path:
    return directory / f"{service}.jsonl"


def driver_telemetry(run_dir: Path) -> Path:
    return telemetry_file(telemetry_dir(run_dir), DRIVER)


def nodes_dir(run_dir: Path) -> Path:
    return run_dir / NODES


def node_dir(run_dir: Path, node: str) -> Path:
    """What a node's run directory becomes once pulled: its probes/ and telemetry/."""
    return nodes_dir(run_dir) / node


def node_prefix(node: str) -> str:
    """How the manifest's `files` keys of a node's files begin."""
    return f"{NODES}/{node}/"


def probes_dir(run_dir: Path, node: str) -> Path:
    return node_dir(run_dir, node) / PROBES


def probe_file(run_dir: Path, node: str, probe: str) -> Path:
    return probes_dir(run_dir, node) / f"{probe}.jsonl"


def status_file(run_dir: Path, node: str) -> Path:
    return probes_dir(run_dir, node) / STATUS


def capture_file(run_dir: Path, node: str, iface: str) -> Path:
    return probes_dir(run_dir, node) / f"{CAPTURE_PREFIX}{iface}{CAPTURE_SUFFIX}"


def capture_files(run_dir: Path, node: str) -> list[Path]:
    """A node's packet captures, one per interface, sorted."""
    return sorted(probes_dir(run_dir, node).glob(f"{CAPTURE_PREFIX}*{CAPTURE_SUFFIX}"))


def capture_iface(path: Path) -> str:
    return path.name.removeprefix(CAPTURE_PREFIX).removesuffix(CAPTURE_SUFFIX)


def node_telemetry_files(run_dir: Path, node: str) -> list[Path]:
    """Every service's telemetry a node's run directory holds, sorted."""
    return sorted(telemetry_dir(node_dir(run_dir, node)).glob("*.jsonl"))


def tables_dir(root: Path) -> Path:
    """A run's tables, or an export's."""
    return root / TABLES


def table_path(root: Path, name: str) -> Path:
    return tables_dir(root) / f"{name}.parquet"


def table_relpath(name: str) -> str:
    return f"{TABLES}/{name}.parquet"


def plots_dir(root: Path) -> Path:
    """A run's plots, or a comparison's or a sweep's."""
    return root / PLOTS


def report_path(root: Path) -> Path:
    """A run's report, or a comparison's or a sweep's."""
    return root / REPORT


def analysis_path(run_dir: Path) -> Path:
    return run_dir / ANALYSIS


def exported_manifest_relpath(run_id: str) -> str:
    """Where an export (`lab export`) keeps a run's manifest, relative to the export's directory."""
    return f"{RUNS}/{run_id}/{MANIFEST}"


def exported_traces_relpath(run_id: str) -> str:
    """Where an export keeps a run's telemetry as one OTLP/JSON trace document (analysis/otlp.py)."""
    return f"{OTLP}/{run_id}.json"


# --- the manifest ----------------------------------------------------------------------------


class Record(BaseModel):
    """A part of the manifest: fields this code does not know (a newer writer's) are ignored on reading."""

    model_config = ConfigDict(extra="ignore")


class ScenarioRecord(Record):
    name: str
    file: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    """The scenario as validated (experiments.scenario.Scenario, dumped as JSON)."""


class Git(Record):
    commit: str | None = None
    dirty: bool | None = None

    @classmethod
    def of(cls, repo: Path) -> Git:
        """The checkout's HEAD and whether it has uncommitted changes (None where git cannot tell)."""

        def git(*args: str) -> str | None:
            result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
            return result.stdout.strip() if result.returncode == 0 else None

        status = git("status", "--porcelain")
        return cls(commit=git("rev-parse", "HEAD"), dirty=bool(status) if status is not None else None)


class Versions(Record):
    controller: dict[str, Any] = Field(default_factory=dict)
    """python, kernel, packages {name: version}."""
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """node -> kernel, python, bpftrace, tcpdump, workload, libraries {name: version}."""
    llm: dict[str, Any] | None = None
    """node, backend, model, served (its /v1/models entry): agentic runs only."""


class ClockOffset(Record):
    offset_ns: int
    """node clock - controller clock"""
    uncertainty_ns: int
    samples: int | None = None
    measured_at_ns: int | None = None


class ProbeSummary(Record):
    """One probe on one node, from its runner's status.json (a capture's records are its packets)."""

    state: str | None = None
    source: str | None = None
    started: bool = False
    records: int = 0
    lost: int = 0
    invalid_values: int = 0
    unwritten_bytes: int = 0
    """Output the node could not write (a full disk), dropped at whole records."""
    error: str | None = None


class ProbeCpu(Record):
    """CPU seconds spent observing on a node, by phase; None until every process reported (manifest.probe_cpu)."""

    attach: float | None = None
    running: float | None = None
    stopping: float | None = None
    bpf: float | None = None


class Impairment(Record):
    node: str
    to: str | None = None
    iface: str | None = None
    requested: dict[str, float] = Field(default_factory=dict)
    applied_by: dict[str, str | None] = Field(default_factory=dict)
    not_applied: list[str] = Field(default_factory=list)
    reason: str | None = None
    qdisc: str | None = None


class Injected(Record):
    """A fault the scenario injected (experiments.scenario.Injection): when the node was told, and
    what it did or why it could not."""

    kind: str
    node: str
    at_s: float
    for_s: float | None = None
    service: str | None = None
    when_ns: int | None = None
    done_ns: int | None = None
    """When the node answered that it had done it: a lasting fault (for_s) ends about for_s after."""
    done: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    def text(self) -> str:
        what = (
            f"{self.kind}{f' {self.service}' if self.service else ''}{f' for {self.for_s:g} s' if self.for_s else ''}"
        )
        outcome = f"failed: {self.error}" if self.error else ", ".join(f"{k} {v}" for k, v in self.done.items())
        return f"injected {what} at {self.at_s:g} s ({outcome or 'done'})"


class Conditions(Record):
    """What can distort a host's timing and capture (experiments.node_script.conditions)."""

    cpu: dict[str, int] = Field(default_factory=dict)
    """/proc/stat's counters: user ... steal."""
    cpus: int | None = None
    loadavg: float | None = None
    iface: str | None = None
    offload: dict[str, str] = Field(default_factory=dict)


class Offload(Record):
    """The lab interface's gso/tso/gro before `offload: off`, after it and once restored."""

    before: dict[str, str] = Field(default_factory=dict)
    after: dict[str, str] = Field(default_factory=dict)
    restored: dict[str, str] | None = None


class LlmSpeed(Record):
    node: str
    ttft_s: float
    tokens_per_s: float
    prompt_chars: int
    max_tokens: int
    call_s_with_margin: float


class Tasks(Record):
    planned: int
    total: int = 0
    ok: int = 0
    failed: int = 0
    warmup: int = 0


class Fault(Record):
    when_ns: int
    node: str
    what: str


class FileEntry(Record):
    bytes: int | None = None
    sha256: str | None = None


class Manifest(Record):
    """manifest.json: everything needed to reproduce and to trust a run, and the faults it met.
    Fields a version-1 manifest may lack have defaults; the reader says which were missing."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    layout_version: int = LAYOUT_VERSION
    run_id: str | None = None
    scenario: ScenarioRecord | None = None
    lab: dict[str, Any] = Field(default_factory=dict)
    """lab.yaml as validated (lab.config.LabConfig, dumped as JSON)."""
    provider: str | None = None
    accelerator: str | None = None
    image: str | None = None
    started_at_ns: int | None = None
    versions: Versions = Field(default_factory=Versions)
    placement: dict[str, str] = Field(default_factory=dict)
    """service -> the node it ran on, for every service the workload reaches (the nodes' own configs at
    preflight): where a hop crosses the lab network and where it stays on a node's loopback."""
    git: Git = Field(default_factory=Git)
    ended_at_ns: int | None = None
    clock_offsets: dict[str, dict[str, ClockOffset]] = Field(default_factory=dict)
    """node -> start|end -> offset."""
    probes: dict[str, dict[str, ProbeSummary]] = Field(default_factory=dict)
    probe_cpu_s: dict[str, ProbeCpu] = Field(default_factory=dict)
    impairments_applied: list[Impairment] = Field(default_factory=list)
    injected: list[Injected] = Field(default_factory=list)
    """The faults the scenario injected while the tasks ran, in the order they were."""
    conditions: dict[str, dict[str, Conditions]] = Field(default_factory=dict)
    """node or `controller` -> start|end -> conditions."""
    offload: dict[str, Offload] = Field(default_factory=dict)
    llm_speed: LlmSpeed | None = None
    tasks: Tasks | None = None
    """None until the tasks are driven."""
    faults: list[Fault] = Field(default_factory=list)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    """relpath -> size and sha256 of every file in the run directory but the manifest."""
    analysis: dict[str, Any] | None = None

    @field_validator("scenario", mode="before")
    @classmethod
    def _named_only(cls, value: Any) -> Any:
        """The earliest manifests held the scenario's name alone."""
        return {"name": value} if isinstance(value, str) else value

    @field_validator("tasks", mode="before")
    @classmethod
    def _not_driven(cls, value: Any) -> Any:
        """Version 1 wrote {} for a run stopped before its tasks were driven."""
        return value or None


def write_manifest(manifest: Manifest, run_dir: Path) -> Path:
    """Atomically: a reader never sees half a manifest."""
    path = manifest_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class ManifestRead:
    manifest: Manifest
    version: int
    notes: list[str]
    """What the reader could not take as written: fields missing or of the wrong shape (read as absent)."""


def read_manifest(run_dir: Path) -> ManifestRead:
    """The manifest of any layout version; a field missing or malformed is noted, not fatal.
    Raises ManifestError when there is no manifest or it is not a JSON object."""
    path = manifest_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestMissingError(f"{path} is missing: is {run_dir} a run directory `lab experiment` wrote?") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not JSON ({exc}): restore it from a copy of the run") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not a JSON object: restore it from a copy of the run")
    return parse_manifest(data, path)


def parse_manifest(data: dict[str, Any], path: Path | str = MANIFEST) -> ManifestRead:
    version = data.get("layout_version", UNVERSIONED)
    if not isinstance(version, int) or not UNVERSIONED <= version <= LAYOUT_VERSION:
        raise ManifestError(
            f"{path}: layout_version {version!r} is not one this code reads "
            f"({UNVERSIONED}..{LAYOUT_VERSION}); analyse it with the lab version that wrote it"
        )
    notes = []
    if version < LAYOUT_VERSION:
        notes.append(f"layout version {version} (written before the layout was versioned); read as such")
    data = {**data, "layout_version": version}
    while True:
        try:
            manifest = Manifest.model_validate(data)
            break
        except ValidationError as exc:
            bad = {str(error["loc"][0]): error["msg"] for error in exc.errors()}
            notes += [f"{field}: {msg}; read as absent" for field, msg in bad.items()]
            data = {k: v for k, v in data.items() if k not in bad}
    missing = sorted(set(Manifest.model_fields) - set(data))
    if missing:
        notes.append(f"not recorded: {', '.join(missing)}")
    return ManifestRead(manifest, version, notes)
