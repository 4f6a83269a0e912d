"""What the running kernel and the node offer to the probes: tracefs, tracepoints, kprobes,
BTF and tools. Everything here is read-only except mounting tracefs when it is missing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRACEFS_PATHS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
SYS_CLASS_NET = Path("/sys/class/net")
# Tracepoints the sources may use.
TRACEPOINTS = ("sock:inet_sock_set_state", "tcp:tcp_probe", "tcp:tcp_retransmit_skb")
# A function every TCP kernel has, used to test that a kprobe really attaches.
KPROBE_TEST_FUNCTION = "tcp_sendmsg"
TOOLS = ("bpftrace", "tcpdump")


@dataclass
class Tracefs:
    path: str | None
    mounted_by_us: bool = False
    error: str | None = None


@dataclass
class Kprobes:
    available: bool
    reason: str


@dataclass
class Detection:
    kernel: str
    netns_inode: int
    tracefs: Tracefs
    btf: bool
    # tracepoint "category:name" -> its field names; absent tracepoints are not listed
    tracepoints: dict[str, list[str]]
    kprobes: Kprobes
    # tool name -> absolute path, or None when not installed
    tools: dict[str, str | None]
    bpftrace_version: str | None
    interfaces: list[str] = field(default_factory=list)
    # where struct sock keeps its flags word (sock_flags_member), None when BTF shows neither place
    sock_flags: str | None = None

    def has_tracepoint_field(self, tracepoint: str, name: str) -> bool:
        return name in self.tracepoints.get(tracepoint, [])

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def find_or_mount_tracefs() -> Tracefs:
    for path in TRACEFS_PATHS:
        if (path / "events").is_dir():
            return Tracefs(path=str(path))
    target = TRACEFS_PATHS[0]
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(target)], capture_output=True, text=True)
    if result.returncode == 0 and (target / "events").is_dir():
        return Tracefs(path=str(target), mounted_by_us=True)
    reason = result.stderr.strip() or f"mount exited with {result.returncode}"
    return Tracefs(path=None, error=f"tracefs is not mounted and mounting it failed: {reason}")


def tracepoint_fields(tracefs: Path, tracepoint: str) -> list[str] | None:
    """The field names of a tracepoint from its format file, or None when it does not exist."""
    category, name = tracepoint.split(":")
    try:
        text = (tracefs / "events" / category / name / "format").read_text()
    except OSError:
        return None
    fields = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:") or "common_" in line:
            continue
        declaration = line.split(";")[0].removeprefix("field:")
        fields.append(declaration.split()[-1].split("[")[0])
    return fields


def _append(path: Path, text: str) -> None:
    """One write to a tracefs control file. Not open("a"): that seeks to the end first, which
    kprobe_events refuses (EINVAL), so every kernel with kprobes looked like one without."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def detect_kprobes(tracefs: Path | None) -> Kprobes:
    """Kprobes are usable when a test probe on a TCP function can be created and removed."""
    events = tracefs / "kprobe_events" if tracefs else None
    if events is None or not events.exists():
        if KPROBE_PMU.exists():
            return Kprobes(True, "kprobe PMU present (perf_event_open), not test-attached")
        return Kprobes(False, "kernel has no kprobe support: no kprobe_events in tracefs, no kprobe PMU")
    name = f"collectors_test_{os.getpid()}"
    try:
        _append(events, f"p:{name} {KPROBE_TEST_FUNCTION}\n")
        _append(events, f"-:{name}\n")
    except OSError as e:
        return Kprobes(False, f"test kprobe on {KPROBE_TEST_FUNCTION} failed: {e.strerror}")
    return Kprobes(True, f"test kprobe on {KPROBE_TEST_FUNCTION} attached")


def bpftrace_version(path: str | None) -> str | None:
    if path is None:
        return None
    result = subprocess.run([path, "--version"], capture_output=True, text=True)
    return result.stdout.strip().removeprefix("bpftrace ") or None


SOCK_FLAGS_PLACES = ("sk_flags", "__sk_common.skc_flags")


def sock_flags_member(bpftrace: str | None) -> str | None:
    """The path of sk_flags inside struct sock on this kernel, the one of SOCK_FLAGS_PLACES that a
    dry run (no attach, ~0.3 s) compiles: `__sk_common.skc_flags` on Debian's 6.1 and on 6.18 (seen),
    `sk_flags` where a kernel keeps it in struct sock itself."""
    if bpftrace is None:
        return None
    for place in SOCK_FLAGS_PLACES:
        program = f"tracepoint:sock:inet_sock_set_state {{ $f = ((struct sock *)args->skaddr)->{place}; }}"
        if subprocess.run([bpftrace, "-d", "-e", program], capture_output=True).returncode == 0:
            return place
    return None


def non_loopback_interfaces() -> list[str]:
    try:
        names = sorted(os.listdir(SYS_CLASS_NET))
    except OSError:
        return []
    return [n for n in names if n != "lo" and (SYS_CLASS_NET / n).exists()]


def detect() -> Detection:
    tracefs = find_or_mount_tracefs()
    tracefs_path = Path(tracefs.path) if tracefs.path else None
    tracepoints: dict[str, list[str]] = {}
    if tracefs_path is not None:
        for tracepoint in TRACEPOINTS:
            fields = tracepoint_fields(tracefs_path, tracepoint)
            if fields is not None:
                tracepoints[tracepoint] = fields
    tools = {tool: shutil.which(tool, path=_tool_path()) for tool in TOOLS}
    return Detection(
        kernel=platform.release(),
        netns_inode=own_netns_inode(),
        tracefs=tracefs,
        btf=BTF_PATH.exists(),
        tracepoints=tracepoints,
        kprobes=detect_kprobes(tracefs_path),
        tools=tools,
        bpftrace_version=bpftrace_version(tools["bpftrace"]),
        interfaces=non_loopback_interfaces(),
        sock_flags=sock_flags_member(tools["bpftrace"]),
    )


def _tool_path() -> str:
    """PATH plus the sbin directories, which a non-login SSH command often lacks."""
    extra = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    return os.pathsep.join([os.environ.get("PATH", ""), *extra])
