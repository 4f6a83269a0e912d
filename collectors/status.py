"""status.json: what the runner and each probe are doing, rewritten atomically while running."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Probe states.
UNAVAILABLE = "unavailable"  # no source works on this node; see unavailable_reason
STARTING = "starting"  # spawned, not attached yet
RUNNING = "running"  # attached and producing
FAILED = "failed"  # exited before attaching; see attach_error
EXITED = "exited"  # exited on its own after attaching; see error and exit_code
STOPPED = "stopped"  # stopped by the runner


@dataclass
class CpuSpent:
    """User + system CPU seconds of one process by phase: until its probes attached (bpftrace
    compiles and loads its program), while they ran (the cost of observing), and while stopping
    (flushing, bpftrace freeing its maps; for the runner, decoding bpftrace's output). A phase
    the process did not reach stays None."""

    attach: float | None = None
    running: float | None = None
    stopping: float | None = None

    @classmethod
    def split(cls, attached: float | None, stop_requested: float | None, total: float) -> CpuSpent:
        """From the process's running totals when it attached, when it was asked to stop, and at exit."""
        if attached is None:
            return cls(attach=round(total, 3))
        if stop_requested is None:  # ended on its own
            return cls(attach=attached, running=round(total - attached, 3))
        return cls(attached, round(stop_requested - attached, 3), round(total - stop_requested, 3))


@dataclass
class ProbeStatus:
    probe: str
    metric: str
    source: str | None = None
    tool: str | None = None
    output: str | None = None
    state: str = STARTING
    unavailable_reason: str | None = None
    argv: list[str] | None = None
    pid: int | None = None
    started: bool = False
    started_at_ns: int | None = None
    attach_error: str | None = None
    error: str | None = None
    exit_code: int | None = None
    stopped_at_ns: int | None = None
    records: int = 0  # written; while a bpftrace probe runs, the entries it printed so far
    parse_errors: int = 0
    invalid_values: int = 0  # records written with a value nulled (children.INT64_MIN/MAX)
    lost_events: int = 0
    # Output the runner could not write (a full disk): bytes dropped at whole lines, and the first
    # error. A bpftrace probe's events in them also count in lost_events; the process's probe holds it.
    unwritten_bytes: int = 0
    write_error: str | None = None
    cpu_s: CpuSpent | None = None  # the probe process's CPU, known once it exited
    # The kernel's time in the probe's BPF programs and their runs, read when the stop began
    # (collectors.bpfstats); None where the kernel keeps no statistics or the probe died first.
    bpf_run_ns: int | None = None
    bpf_runs: int | None = None
    # The probe whose process this one shares (one bpftrace serves several probes): that probe
    # reports the process's CPU and BPF time, this one leaves them None.
    shared_with: str | None = None
    # packet captures only
    packets: int | None = None
    packets_dropped: int | None = None


@dataclass
class RunStatus:
    node: str
    run_id: str
    pid: int
    netns_inode: int
    config: dict[str, object]
    clock: dict[str, int]
    detection: dict[str, object]
    state: str = "starting"  # starting -> running -> stopping -> stopped (or failed)
    error: str | None = None  # why the runner itself failed
    started_at_ns: int = field(default_factory=time.time_ns)
    updated_at_ns: int = 0
    stopped_at_ns: int | None = None
    cpu_s: CpuSpent | None = None  # the runner's own CPU (reading; decoding the probes' output is in `stopping`)
    # Tracepoints whose perf events the runner closed while it runs (collectors/gate.py):
    # {"gated": [...], "errors": {tracepoint: reason}}
    gate: dict[str, object] = field(default_factory=dict)
    probes: dict[str, ProbeStatus] = field(default_factory=dict)


class StatusFile:
    """Holds the run status; any thread may change it under `lock` and call `touch()`;
    `write()` persists it (temporary file + rename, so a reader never sees half a file)."""

    def __init__(self, path: Path, status: RunStatus) -> None:
        self.path = path
        self.status = status
        self.lock = threading.Lock()
        self._dirty = True

    def touch(self) -> None:
        self._dirty = True

    def write(self, force: bool = False) -> None:
        """Persist if anything changed (or `force`). Threads take turns: they share one temporary file."""
        with self.lock:
            if not (self._dirty or force):
                return
            self._dirty = False
            self.status.updated_at_ns = time.time_ns()
            tmp = self.path.with_suffix(".json.tmp")
            try:
                tmp.write_text(json.dumps(asdict(self.status), indent=2) + "\n")
                os.replace(tmp, self.path)
            except OSError:  # a full disk: the last status stays, this one is written once there is room
                tmp.unlink(missing_ok=True)
                self._dirty = True
