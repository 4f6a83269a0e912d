"""The run-directory contract: paths, the layout version, manifests of both versions, and the node
script's names held to the module's (it is sent to the nodes as text and cannot import it)."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from experiments import controller, node_script
from experiments.manifest import Faults, checksums, controller_versions, probe_cpu, probe_summary
from experiments.progress import Reporter
from lab import runlayout
from lab.errors import ManifestError, ManifestMissingError
from lab.runlayout import (
    LAYOUT_VERSION,
    ClockOffset,
    Conditions,
    Impairment,
    LlmSpeed,
    Manifest,
    Offload,
    ScenarioRecord,
    Tasks,
    read_manifest,
    write_manifest,
)

RUN = Path("runs/20260101T000000Z-simple")
STATUS = {
    "cpu_s": {"attach": 0.5, "running": 1.0, "stopping": 0.25},
    "probes": {
        "rtt": {"pid": 10, "state": "stopped", "source": "bpftrace", "started": True, "records": 12},
        "pcap:host0": {"state": "stopped", "packets": 40, "packets_dropped": 0},
    },
}
# A manifest as the controller wrote it before the layout was versioned (sample runs of 2026-12-01).
VERSION_1 = {
    "run_id": "20261201T052922Z-baseline-orphaned",
    "scenario": {"name": "baseline", "file": "scenarios/baseline.yaml", "config": {"workload": "baseline"}},
    "lab": {"name": "lab"},
    "provider": "nspawn",
    "accelerator": "container",
    "image": "debian-12",
    "started_at_ns": 1,
    "versions": {"controller": {"python": "3.11"}, "nodes": {"agent-a": {"kernel": "6.1"}}},
    "git": {"commit": "abc", "dirty": False},
    "ended_at_ns": None,
    "clock_offsets": {"agent-a": {"start": {"offset_ns": 5, "uncertainty_ns": 2, "samples": 15}}},
    "probes": {"agent-a": {"rtt": {"state": "running", "source": "bpftrace", "started": True, "records": 0}}},
    "probe_cpu_s": {"agent-a": {"attach": None, "running": None, "stopping": None, "bpf": None}},
    "impairments_applied": [],
    "llm_speed": None,
    "tasks": {},
    "faults": [],
    "files": {},
    "analysis": None,
}


def test_paths_are_the_documented_layout() -> None:
    assert runlayout.manifest_path(RUN) == RUN / "manifest.json"
    assert runlayout.results_path(RUN) == RUN / "results.jsonl"
    assert runlayout.driver_telemetry(RUN) == RUN / "telemetry/driver.jsonl"
    assert runlayout.probe_file(RUN, "llm", "rtt") == RUN / "nodes/llm/probes/rtt.jsonl"
    assert runlayout.status_file(RUN, "llm") == RUN / "nodes/llm/probes/status.json"
    assert runlayout.capture_file(RUN, "llm", "host0") == RUN / "nodes/llm/probes/pcap-host0.pcap"
    assert runlayout.capture_iface(runlayout.capture_file(RUN, "llm", "enp1s0")) == "enp1s0"
    assert runlayout.telemetry_dir(runlayout.node_dir(RUN, "llm")) == RUN / "nodes/llm/telemetry"
    assert runlayout.table_path(RUN, "flows") == RUN / runlayout.table_relpath("flows") == RUN / "tables/flows.parquet"
    assert runlayout.plots_dir(RUN) == RUN / "plots"
    assert runlayout.report_path(RUN) == RUN / "report.html"
    assert runlayout.analysis_path(RUN) == RUN / "analysis.json"
    assert runlayout.exported_manifest_relpath("r1") == "runs/r1/manifest.json"
    assert str(runlayout.probe_file(RUN, "llm", "rtt")).startswith(str(RUN / runlayout.node_prefix("llm")))


def test_globs_find_what_the_layout_names(tmp_path: Path) -> None:
    for iface in ("lo", "host0"):
        path = runlayout.capture_file(tmp_path, "llm", iface)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    service = runlayout.telemetry_file(runlayout.telemetry_dir(runlayout.node_dir(tmp_path, "llm")), "llm")
    service.parent.mkdir(parents=True)
    service.write_text("")
    assert [runlayout.capture_iface(p) for p in runlayout.capture_files(tmp_path, "llm")] == ["host0", "lo"]
    assert runlayout.node_telemetry_files(tmp_path, "llm") == [service]


def test_the_node_script_names_its_run_directory_as_the_layout_does(tmp_path: Path) -> None:
    """A node's run directory becomes nodes/<node>/ once pulled: the same names, checked here because
    node_script (stdlib only, sent as text) cannot import lab.runlayout."""
    assert node_script.PROBES == runlayout.PROBES
    assert node_script.STATUS == runlayout.STATUS
    assert node_script.RUNNER_PID == runlayout.RUNNER_PID
    assert node_script.RUNNER_LOG == runlayout.RUNNER_LOG
    assert node_script.TELEMETRY == runlayout.TELEMETRY
    assert "lab" not in {line.split()[1].split(".")[0] for line in _imports(node_script.__file__)}
    node_root = tmp_path / "node-run"
    (node_root / node_script.PROBES).mkdir(parents=True)
    (node_root / node_script.PROBES / node_script.STATUS).write_text("{}")
    copied = node_script.copy_telemetry(tmp_path, node_root / node_script.TELEMETRY, {})
    assert copied == {}
    pulled = {runlayout.node_prefix("llm") + relpath for relpath in node_script.checksums(node_root)}
    assert pulled == {str(runlayout.status_file(Path(), "llm"))}


def _imports(path: str) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line.startswith(("import ", "from "))]


def _controller_manifest(tmp_path: Path) -> Manifest:
    """Every field filled the way experiments/controller.py fills it."""
    faults = Faults()
    faults.add("agent-a", "probe rtt exited")
    (tmp_path / "results.jsonl").write_text("{}\n")
    return Manifest(
        run_id="20260101T000000Z-simple",
        scenario=ScenarioRecord(name="simple", file="scenarios/simple.yaml", config={"workload": "simple"}),
        lab={"name": "lab", "nodes": [{"name": "agent-a", "vcpus": 2}]},
        provider="libvirt",
        accelerator="kvm",
        image="debian-12",
        started_at_ns=1,
        git=runlayout.Git.of(Path(__file__).parent),
        versions={"controller": controller_versions(), "nodes": {"agent-a": {"kernel": "6.1", "libraries": {}}}},
        llm_speed=LlmSpeed(
            node="llm", ttft_s=0.1, tokens_per_s=20.0, prompt_chars=1073, max_tokens=96, call_s_with_margin=5.0
        ),
        ended_at_ns=2,
        clock_offsets={"agent-a": {"start": ClockOffset(offset_ns=5, uncertainty_ns=2, samples=15, measured_at_ns=1)}},
        probes={"agent-a": probe_summary(STATUS)},
        probe_cpu_s={"agent-a": probe_cpu(STATUS)},
        impairments_applied=[
            Impairment(node="agent-a", to="llm", iface="host0", requested={"rate_mbit": 50.0}, qdisc="htb")
        ],
        conditions={"controller": {"start": Conditions(cpu={"user": 1, "idle": 9}, cpus=4, loadavg=0.5, iface="br")}},
        offload={"agent-a": Offload(before={"gso": "on"}, after={"gso": "off"}, restored={"gso": "on"})},
        tasks=Tasks(planned=3, total=3, ok=2, failed=1),
        faults=faults.items,
        files=checksums(tmp_path),
    )


def test_a_manifest_the_controller_writes_reads_back_the_same(tmp_path: Path) -> None:
    written = _controller_manifest(tmp_path)
    write_manifest(written, tmp_path)
    data = json.loads(runlayout.manifest_path(tmp_path).read_text())
    assert data["layout_version"] == LAYOUT_VERSION == 2
    assert set(data) == set(Manifest.model_fields)
    read = read_manifest(tmp_path)
    assert read.version == LAYOUT_VERSION and read.notes == []
    assert read.manifest == written
    assert read.manifest.files["results.jsonl"].bytes == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_a_version_1_manifest_is_read_and_said_to_be_one(tmp_path: Path) -> None:
    runlayout.manifest_path(tmp_path).write_text(json.dumps(VERSION_1))
    read = read_manifest(tmp_path)
    assert read.version == runlayout.UNVERSIONED == 1
    assert read.notes[0].startswith("layout version 1")
    assert read.notes[1:] == ["not recorded: conditions, injected, offload, placement"]
    m = read.manifest
    assert m.tasks is None  # {}: stopped before its tasks were driven
    assert (
        m.clock_offsets["agent-a"]["start"].offset_ns == 5
        and m.clock_offsets["agent-a"]["start"].measured_at_ns is None
    )
    assert m.probes["agent-a"]["rtt"].state == "running" and m.conditions == {} and m.offload == {}


def test_older_shapes_and_malformed_fields_are_noted_not_fatal(tmp_path: Path) -> None:
    old = {**VERSION_1, "scenario": "baseline", "git": "abc", "probes": {"agent-a": {"rtt": "broken"}}, "extra": 1}
    runlayout.manifest_path(tmp_path).write_text(json.dumps(old))
    read = read_manifest(tmp_path)
    assert read.manifest.scenario == ScenarioRecord(name="baseline")
    assert read.manifest.git == runlayout.Git() and read.manifest.probes == {}
    assert [n.split(":")[0] for n in read.notes[1:3]] == ["git", "probes"]
    assert read.notes[-1] == "not recorded: conditions, git, injected, offload, placement, probes"


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, ManifestMissingError, "is missing"),
        ("{", ManifestError, "is not JSON"),
        ("[]", ManifestError, "is not a JSON object"),
        (json.dumps({"layout_version": LAYOUT_VERSION + 1}), ManifestError, "layout_version 3 is not one this code"),
    ],
)
def test_a_manifest_that_cannot_be_read_names_the_file_and_the_fix(
    tmp_path: Path, content: str | None, error: type[ManifestError], message: str
) -> None:
    if content is not None:
        runlayout.manifest_path(tmp_path).write_text(content)
    with pytest.raises(error, match=message) as raised:
        read_manifest(tmp_path)
    assert str(runlayout.manifest_path(tmp_path)) in str(raised.value)


def test_the_controllers_summary_and_impairment_records_use_the_typed_manifest(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    manifest = _controller_manifest(tmp_path)
    Reporter(console).summary(manifest, tmp_path)
    shown = console.export_text()
    assert "+0 ± 0 µs" in shown and "2 ok, 1 failed of 3" in shown and "fault agent-a: probe rtt exited" in shown
    Reporter(console).summary(Manifest(run_id="r"), tmp_path)  # stopped before any task: no tasks recorded
    link = {"to": "llm", "delay_ms": 5.0, "jitter_ms": None, "loss_pct": None, "rate_mbit": 50.0}
    applied = controller._applied("agent-b", link, {"netem": False, "iface": "host0", "qdisc": "htb"})
    assert applied.not_applied == ["delay_ms"] and applied.applied_by == {"delay_ms": None, "rate_mbit": "htb"}
