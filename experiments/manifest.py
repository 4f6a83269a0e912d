"""What the controller puts into manifest.json (its shape: lab/runlayout.py): probe summaries and
their CPU, faults, checksums, versions."""

from __future__ import annotations

import importlib.metadata
import platform
import threading
import time
from pathlib import Path
from typing import Any

from experiments import node_script
from lab.runlayout import MANIFEST, Fault, ProbeCpu, ProbeSummary

CONTROLLER_PACKAGES = ("agentic-lab", "fabric", "paramiko", "pydantic", "httpx", "rich")


class Faults:
    """Faults from any thread, each recorded once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Fault] = []

    def add(self, node: str, what: str) -> bool:
        with self._lock:
            if any(f.node == node and f.what == what for f in self._items):
                return False
            self._items.append(Fault(when_ns=time.time_ns(), node=node, what=what))
            return True

    @property
    def items(self) -> list[Fault]:
        with self._lock:
            return list(self._items)


CPU_PHASES = ("attach", "running", "stopping")


def probe_summary(status: dict | None) -> dict[str, ProbeSummary]:
    """{probe: {state, source, started, records, lost, error}} from a runner's status.json;
    a packet capture's records are its packets."""
    if not status:
        return {}
    return {name: _probe(probe) for name, probe in status.get("probes", {}).items()}


def _probe(probe: dict) -> ProbeSummary:
    capture = probe.get("packets") is not None
    return ProbeSummary(
        state=probe.get("state"),
        source=probe.get("source"),
        started=probe.get("started", False),
        records=probe["packets"] if capture else probe.get("records", 0),
        lost=(probe.get("packets_dropped") if capture else probe.get("lost_events")) or 0,
        invalid_values=probe.get("invalid_values", 0),
        unwritten_bytes=probe.get("unwritten_bytes", 0),
        error=probe.get("attach_error")
        or probe.get("error")
        or probe.get("unavailable_reason")
        or probe.get("write_error"),
    )


def probe_cpu(status: dict | None) -> ProbeCpu:
    """CPU seconds spent observing on a node, by phase (collectors.status.CpuSpent: attach, running,
    stopping), summed over the runner and its probe processes (each once: a probe that shares
    another's process reports none), and `bpf`: the kernel's time in
    the probes' BPF programs, which no process's CPU includes. Every phase is None until each
    process has exited and reported its CPU; a phase a process never reached counts as 0; `bpf`
    is None where no probe reported it."""
    status = status or {}
    probes = [p for p in status.get("probes", {}).values() if p.get("pid") and not p.get("shared_with")]
    spent = [status.get("cpu_s"), *(p.get("cpu_s") for p in probes)]
    in_bpf = [p["bpf_run_ns"] for p in probes if p.get("bpf_run_ns") is not None]
    bpf = round(sum(in_bpf) / 1e9, 3) if in_bpf else None
    if None in spent:
        return ProbeCpu(bpf=bpf)
    return ProbeCpu(bpf=bpf, **{phase: round(sum(s[phase] or 0 for s in spent), 3) for phase in CPU_PHASES})


def probe_faults(summary: dict[str, ProbeSummary]) -> list[str]:
    """One line per probe that did not run to the end or wrote values it could not read."""
    lines = []
    for name, p in summary.items():
        if p.invalid_values:
            lines.append(
                f"probe {name} wrote {p.invalid_values} record(s) with a value it could not read "
                "(null there, the reason in the record's `invalid`)"
            )
        if p.unwritten_bytes:
            lines.append(
                f"probe {name} could not write {p.unwritten_bytes} bytes of its output ({p.error}); "
                "the records in them are lost, the rest is whole"
            )
        if p.state not in ("running", "stopped", "starting"):
            lines.append(f"probe {name} {p.state}: {p.error or 'no reason given'}")
    return lines


def checksums(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{relpath: {bytes, sha256}} of every file in the run directory but the manifest."""
    files = node_script.checksums(run_dir)
    files.pop(MANIFEST, None)
    return files


def controller_versions() -> dict[str, Any]:
    packages = {}
    for name in CONTROLLER_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "kernel": platform.release(), "packages": packages}
