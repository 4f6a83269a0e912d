"""Small host-side helpers shared by providers: commands, bridges, processes, mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lab.errors import LabError

KILL_WAIT_S = 10.0


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {(result.stderr or result.stdout).strip()}")
    return result


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} needs root (it creates bridges, mounts and containers); run it with sudo")


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ensure_bridge(name: str, address: str) -> bool:
    """Create the bridge with the host's address on it; True when it was created now."""
    created = not link_exists(name)
    if created:
        run("ip", "link", "add", name, "type", "bridge")
    assigned = [line.split()[3] for line in run("ip", "-o", "-4", "addr", "show", "dev", name).stdout.splitlines()]
    if address not in assigned:
        run("ip", "addr", "add", address, "dev", name)
    run("ip", "link", "set", name, "up")
    return created


def delete_link(name: str) -> bool:
    if not link_exists(name):
        return False
    run("ip", "link", "del", name)
    return True


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` as one argument."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv:
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours still answers kill(0); reap it
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        # another's zombie is dead too, whether or not its parent (or a PID 1 that reaps nothing) ever reaps it
        return _state(pid) not in ("Z", "X", "gone")


def stop_process(pid: int, grace: float, reap_s: float = KILL_WAIT_S) -> bool:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. True when it had to be killed; LabError
    when it outlives SIGKILL by `reap_s` (stuck in the kernel, e.g. on I/O), rather than waiting forever."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + reap_s
    while alive(pid):
        if time.monotonic() > deadline:
            raise LabError(
                f"process {pid} still exists {reap_s:.0f} s after SIGKILL (state: {_state(pid)}); "
                f"it is stuck in the kernel: look at `cat /proc/{pid}/stack`, then run the command again"
            )
        time.sleep(0.1)
    return True


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
