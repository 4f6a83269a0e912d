"""The probe runner: pick a source per probe, start them, keep status.json current, stop
everything cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from collectors import bpfstats, clock, programs
from collectors.children import BpftraceChild, Child, Records, RecordTags, TcpdumpChild
from collectors.detect import Detection
from collectors.gate import Gate, close_tracepoints
from collectors.sources import PROBES, Choice, Source, choose
from collectors.status import STARTING, UNAVAILABLE, CpuSpent, ProbeStatus, RunStatus, StatusFile

NETWORK_PROBES = ("lifetime", "state", "connect", "rtt", "retrans")
ALL_PROBES = (*NETWORK_PROBES, "pcap")
METRICS = {
    "lifetime": "connection lifetime and bytes",
    "state": "TCP state transitions",
    "connect": "active connects and passive accepts",
    "rtt": "smoothed RTT per socket window",
    "retrans": "retransmitted segments",
    "pcap": "packet headers",
}
SNAPLEN = 96
# tcpdump's libpcap buffer timeout: the longest a captured packet waits in the kernel's ring.
PCAP_BUFFER_TIMEOUT_S = 1.0
STATUS_INTERVAL_S = 0.5
# bpftrace compiles each program before attaching: ~1 s of CPU natively, tens of seconds on an
# emulated (TCG) guest whose vCPU other probes share; past this the run goes on without the late ones.
ATTACH_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0


class RunnerError(Exception):
    """A failure of the runner itself (not of a probe): reported in one line, exit code 1."""


@dataclass(frozen=True)
class RunConfig:
    node: str
    run_id: str
    out: Path
    netns_inode: int
    probes: tuple[str, ...]
    interfaces: tuple[str, ...]
    rtt_interval_ms: int
    rtt_max_per_s: int
    bpf_stats: bool = False  # the kernel's time in the probes' BPF programs (collectors/bpfstats.py)


def prepare_out_dir(out: Path) -> None:
    if (out / "status.json").exists():
        raise RunnerError(f"{out} already holds a run (status.json); give a fresh --out directory")
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "programs").mkdir(exist_ok=True)
    except OSError as e:
        raise RunnerError(f"cannot create the output directory {out}: {e.strerror}") from e


class Runner:
    def __init__(self, config: RunConfig, detection: Detection) -> None:
        self.config = config
        self.detection = detection
        self.offset = clock.measure()
        self.status_file = StatusFile(
            config.out / "status.json",
            RunStatus(
                node=config.node,
                run_id=config.run_id,
                pid=os.getpid(),
                netns_inode=config.netns_inode,
                config=config_dict(config),
                clock={
                    "mono_to_realtime_offset_ns": self.offset.offset_ns,
                    "uncertainty_ns": self.offset.uncertainty_ns,
                    "measured_at_ns": self.offset.measured_at_ns,
                },
                detection=detection.to_dict(),
            ),
        )
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.failure: str | None = None
        self._cpu_at_attach: float | None = None
        self._stats_fd: int | None = None  # BPF run-time statistics stay on while it is open
        self._tracepoints: set[str] = set()  # those the chosen bpftrace programs attach to
        self._gate: Gate | None = None

    # --- building probes ----------------------------------------------------------------

    def _add_status(self, probe: str, choice: Choice, output: str | None) -> ProbeStatus:
        status = ProbeStatus(probe=probe, metric=METRICS[probe.split(":")[0]], output=output)
        if choice.source is None:
            status.state = UNAVAILABLE
            status.unavailable_reason = choice.unavailable
        else:
            status.source, status.tool = choice.source.name, choice.source.tool
        self.status_file.status.probes[probe] = status
        return status

    def _bpftrace_child(self, chosen: list[tuple[str, Source]]) -> Child:
        """The one bpftrace for these probes: one program of their parts (programs.program)."""
        parts = {probe: source.part(self.detection) for probe, source in chosen if source.part is not None}
        name = "-".join(parts)
        program_path = self.config.out / "programs" / f"{name}.bt"
        program_path.write_text(programs.program(parts))
        argv = [
            str(self.detection.tools["bpftrace"]),
            "-B",
            "line",  # one write per line; "none" writes each printf in two pieces (two wake-ups)
            str(program_path),
            str(self.config.netns_inode),
            str(self.config.rtt_interval_ms * 1_000_000),
            str(self.config.rtt_max_per_s),
        ]
        records = []
        for probe, probe_source in chosen:
            assert probe_source.parse is not None
            status = self.status_file.status.probes[probe]
            tags = RecordTags(self.config.node, self.config.run_id, probe, self.offset)
            records.append(Records(status, probe_source.parse, tags, self.config.out / f"{probe}.jsonl"))
        return BpftraceChild(
            records,
            argv,
            self.config.out / "logs" / f"{name}.log",
            self.status_file,
            self.config.out / f"{name}.bpftrace",
            printed_by=next((probe for probe, part in parts.items() if part.prints_at_end), None),
            bpf_stats=self._stats_fd is not None,
        )

    def _bpftrace_children(self, probes: list[str]) -> list[Child]:
        """One bpftrace for every probe that has a usable source, or none."""
        chosen: list[tuple[str, Source]] = []
        for probe in probes:
            choice = choose(probe, self.detection)
            self._add_status(probe, choice, f"{probe}.jsonl")
            if (source := choice.source) is not None:
                chosen.append((probe, source))
                self._tracepoints.update(source.tracepoints)
        return [self._bpftrace_child(chosen)] if chosen else []

    def _pcap_children(self) -> list[Child]:
        choice = choose("pcap", self.detection)
        interfaces = self.config.interfaces or tuple(self.detection.interfaces)
        if choice.source is not None and not interfaces:
            choice = Choice("pcap", None, unavailable="no non-loopback interface to capture on")
        if choice.source is None:
            self._add_status("pcap", choice, None)
            return []
        children: list[Child] = []
        for interface in interfaces:
            probe = f"pcap:{interface}"
            output = f"pcap-{interface}.pcap"
            status = self._add_status(probe, choice, output)
            argv = [
                str(self.detection.tools["tcpdump"]),
                "-i",
                interface,
                "-s",
                str(SNAPLEN),
                "-n",
                # No --immediate-mode and no -U: libpcap hands packets over in blocks (at the
                # latest after PCAP_BUFFER_TIMEOUT_S) and tcpdump writes them buffered; a
                # wake-up and a write per packet cost the workload several percent of a core.
                # stop() waits out that timeout, so nothing captured before it is lost.
                "-Z",
                "root",
                "-w",
                "-",
            ]
            log = self.config.out / "logs" / f"pcap-{interface}.log"
            children.append(TcpdumpChild([status], argv, log, self.status_file, self.config.out / output))
        return children

    def build(self) -> None:
        self.children += self._bpftrace_children([p for p in self.config.probes if p != "pcap"])
        if "pcap" in self.config.probes:
            self.children += self._pcap_children()

    # --- running ------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, frame: object) -> None:
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        # Keep collecting if the SSH session that started the runner goes away.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _all_attached_or_ended(self) -> bool:
        return all(c.status.state != STARTING for c in self.children)

    def run(self) -> None:
        """Start every probe, then wait for SIGTERM/SIGINT and stop them. Whatever goes wrong
        in the runner itself, the probes are stopped and status.json says why."""
        self._install_signal_handlers()
        try:
            self._start()
            self._wait_for_stop()
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            raise
        finally:
            self.stop()

    def _start(self) -> None:
        self._stats_fd = bpfstats.enable() if self.config.bpf_stats else None
        self.build()
        self._gate = close_tracepoints(sorted(self._tracepoints))
        with self.status_file.lock:
            self.status_file.status.gate = {"gated": self._gate.gated, "errors": self._gate.errors}
        for child in self.children:  # fork every child before any thread exists
            child.spawn()
        for child in self.children:
            child.start_readers()
        self.status_file.write(force=True)

    def _wait_for_stop(self) -> None:
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while not self.stop_requested.wait(STATUS_INTERVAL_S):
            status = self.status_file.status
            if status.state == "starting" and (self._all_attached_or_ended() or time.monotonic() > deadline):
                with self.status_file.lock:
                    status.state = "running"
                self._cpu_at_attach = _own_cpu_s()
                self.status_file.touch()
            self.status_file.write()

    def stop(self) -> None:
        cpu_at_stop = _own_cpu_s()
        with self.status_file.lock:
            self.status_file.status.state = "stopping"
        self.status_file.write(force=True)
        if any(isinstance(c, TcpdumpChild) and c.running for c in self.children):
            time.sleep(PCAP_BUFFER_TIMEOUT_S + 0.25)  # the kernel hands over its last block
        for child in self.children:
            child.request_stop()
        for child in self.children:
            child.wait(STOP_TIMEOUT_S)
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
        if self._gate is not None:
            self._gate.close()
        at_stop = clock.measure()
        with self.status_file.lock:
            status = self.status_file.status
            status.clock["offset_at_stop_ns"] = at_stop.offset_ns
            status.state = "stopped" if self.failure is None else "failed"
            status.error = self.failure
            status.stopped_at_ns = time.time_ns()
            status.cpu_s = CpuSpent.split(self._cpu_at_attach, cpu_at_stop, _own_cpu_s())
        self.status_file.write(force=True)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 3)


def selection(detection: Detection) -> dict[str, dict[str, object]]:
    """Which source each probe would use on this node (part of `detect`'s output)."""
    return {probe: choose(probe, detection).to_dict() for probe in PROBES}


def config_dict(config: RunConfig) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
