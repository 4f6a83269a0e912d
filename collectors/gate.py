"""Gates: a BPF program that returns 0, attached to each tracepoint the probes use, so the kernel
stops feeding that tracepoint's perf events, which nobody reads.

When a classic tracepoint has BPF programs, perf_trace_run_bpf_submit() runs them all through
trace_call_bpf(), which ANDs their return values; only if the result is non-zero does the kernel
go on to perf_tp_event(), which walks every perf event attached to the tracepoint (filter match,
sample preparation, clock reads). bpftrace 0.17 makes every tracepoint program return 1, so each
event pays for perf_tp_event() although no one reads those perf events' samples (~0.5 % of all
CPU in our experiments). One more program returning 0 makes the AND zero: every program, the
gate included, still runs first, so the probes and their output are unaffected.

The trade-off: while a gate is attached, `perf record -e <that tracepoint>` (or any other perf
event on it) on the same kernel sees no events; on nspawn nodes that is the host's kernel. The
gate lasts while its fds are open: `Gate.close()` or the end of the process removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

# (bpf, perf_event_open) syscall numbers per architecture
SYSCALLS = {"x86_64": (321, 298), "aarch64": (280, 241)}
TRACEFS_PATHS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_ATTR_SIZE = 128  # what we pass of union bpf_attr; the kernel wants the unused tail zeroed
# struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm}: r0 = 0; exit
GATE_INSNS = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
LICENSE = b"GPL"
PROG_NAME = b"lab_gate"  # what `bpftool prog` shows

PERF_TYPE_TRACEPOINT = 2
PERF_ATTR_SIZE_VER5 = 112
PERF_FLAG_FD_CLOEXEC = 8
PERF_ATTR_DISABLED = 1  # bit 0 of perf_event_attr's flag bits
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408


class GateError(Exception):
    """One tracepoint could not be gated; the message is a one-line reason."""


class ProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD member of union bpf_attr (include/uapi/linux/bpf.h), zero-padded."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("_unused", ctypes.c_uint8 * (BPF_ATTR_SIZE - 64)),
    ]


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr (include/uapi/linux/perf_event.h) up to PERF_ATTR_SIZE_VER5."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),  # the bit fields: disabled, inherit, pinned, ...
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("_unused", ctypes.c_uint8 * (PERF_ATTR_SIZE_VER5 - 56)),
    ]


class GateFds(NamedTuple):
    prog: int  # the gate program
    perf: int  # the tracepoint perf event it is attached through


class Gate:
    """Gate programs attached by `close_tracepoints`, until `close()` (or the `with` block ends).

    `gated` lists the tracepoints that were gated, `errors` says why the others were not.
    """

    def __init__(self) -> None:
        self.gated: list[str] = []
        self.errors: dict[str, str] = {}
        self.fds: dict[str, GateFds] = {}  # emptied by close()

    def close(self) -> None:
        """Detach and free every gate (closing the perf event detaches the program)."""
        for fds in self.fds.values():
            for fd in (fds.perf, fds.prog):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fds.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def close_tracepoints(tracepoints: Iterable[str]) -> Gate:
    """Attach a gate to each tracepoint ("category:name"). Never raises for a tracepoint that
    cannot be gated: the probes work without a gate, only slower; `Gate.errors` says why."""
    gate = Gate()
    wanted = list(dict.fromkeys(tracepoints))
    try:
        bpf_nr, perf_nr = syscall_numbers()
        tracefs = find_tracefs()
    except GateError as exc:
        gate.errors = dict.fromkeys(wanted, str(exc))
        return gate
    for tracepoint in wanted:
        try:
            gate.fds[tracepoint] = _attach(tracefs, tracepoint, bpf_nr, perf_nr)
        except GateError as exc:
            gate.errors[tracepoint] = str(exc)
        else:
            gate.gated.append(tracepoint)
    return gate


def syscall_numbers() -> tuple[int, int]:
    """The (bpf, perf_event_open) syscall numbers of this machine."""
    machine = platform.machine()
    if machine not in SYSCALLS:
        known = ", ".join(SYSCALLS)
        raise GateError(f"no bpf/perf_event_open syscall numbers for {machine!r} (know {known})")
    return SYSCALLS[machine]


def find_tracefs() -> Path:
    for path in TRACEFS_PATHS:
        if (path / "events").is_dir():
            return path
    raise GateError(f"no tracefs: no events/ in {' or '.join(map(str, TRACEFS_PATHS))}")


def tracepoint_id(tracefs: Path, tracepoint: str) -> int:
    category, _, name = tracepoint.partition(":")
    if not category or not name or "/" in tracepoint:
        raise GateError(f"not a tracepoint name: {tracepoint!r} (want category:name)")
    path = tracefs / "events" / category / name / "id"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        raise GateError(f"no tracepoint {tracepoint} (no {path})") from None


def load_gate_program(bpf_nr: int) -> int:
    """Load `r0 = 0; exit` as a tracepoint program; its fd."""
    insns = ctypes.create_string_buffer(GATE_INSNS, len(GATE_INSNS))
    license_ = ctypes.create_string_buffer(LICENSE)
    attr = ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt=len(GATE_INSNS) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        prog_name=PROG_NAME,
    )
    args = (BPF_PROG_LOAD, ctypes.addressof(attr), BPF_ATTR_SIZE)
    return _syscall("bpf(BPF_PROG_LOAD)", bpf_nr, *args)


def open_tracepoint_event(
    perf_nr: int,
    tp_id: int,
    *,
    pid: int = -1,
    cpu: int = 0,
    sample_period: int = 1,
    disabled: bool = True,
) -> int:
    """perf_event_open() on a tracepoint; its fd. pid -1 with cpu 0 is how libbpf attaches BPF:
    the program joins the tracepoint's own program array and so runs on every CPU."""
    attr = PerfEventAttr(
        type=PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(PerfEventAttr),
        config=tp_id,
        sample_period=sample_period,
        flags=PERF_ATTR_DISABLED if disabled else 0,
    )
    args = (ctypes.addressof(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    return _syscall("perf_event_open", perf_nr, *args)


def _attach(tracefs: Path, tracepoint: str, bpf_nr: int, perf_nr: int) -> GateFds:
    tp_id = tracepoint_id(tracefs, tracepoint)
    prog = load_gate_program(bpf_nr)
    opened = [prog]
    try:
        perf = open_tracepoint_event(perf_nr, tp_id)
        opened.append(perf)
        _ioctl(perf, PERF_EVENT_IOC_SET_BPF, prog, "PERF_EVENT_IOC_SET_BPF")
        _ioctl(perf, PERF_EVENT_IOC_ENABLE, 0, "PERF_EVENT_IOC_ENABLE")
    except GateError:
        for fd in opened:
            os.close(fd)
        raise
    return GateFds(prog=prog, perf=perf)


def _syscall(what: str, number: int, *args: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    # as longs: syscall() is variadic and reads every argument as one
    result: int = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    if result < 0:
        raise GateError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def _ioctl(fd: int, request: int, arg: int, what: str) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise GateError(f"ioctl({what}): {exc.strerror}") from None
