"""Time the kernel spends in the probes' BPF programs: the part of observing that no process's
CPU time shows. BPF_ENABLE_STATS turns run-time accounting on for as long as its fd stays open;
each program's totals then appear in the fdinfo of the process that loaded it. It costs two
clock reads per run of every BPF program on the kernel: measured at ~0.2 µs a run on this
project's VM host (a paravirtual clock), about 1.5 % of the baseline's host CPU with three nodes'
probes, so the runner turns it on only when asked (`--bpf-stats`)."""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from collectors.gate import SYSCALLS

BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0


@dataclass(frozen=True)
class ProgramTime:
    run_ns: int  # summed over the process's BPF programs
    runs: int


def enable() -> int | None:
    """Turn on run-time statistics until the returned fd is closed; None where the kernel refuses
    (older than 5.8, or no CAP_SYS_ADMIN) or the architecture's syscall number is not known here,
    and the probes' kernel time is then unknown."""
    number = SYSCALLS.get(platform.machine(), (None,))[0]
    if number is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(BPF_STATS_RUN_TIME, 0)  # union bpf_attr: enable_stats.type, padded
    fd = libc.syscall(number, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd if fd >= 0 else None


def program_time(pid: int) -> ProgramTime | None:
    """The run time of every BPF program `pid` holds open, from /proc/PID/fdinfo; None if it has
    none or the statistics are off."""
    run_ns = runs = programs = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return None
    for fd in fds:
        try:
            info = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                if ":\t" in line
            )
        except OSError:
            continue
        if "prog_id" in info and "run_time_ns" in info:
            programs += 1
            run_ns += int(info["run_time_ns"])
            runs += int(info["run_cnt"])
    return ProgramTime(run_ns, runs) if programs else None
