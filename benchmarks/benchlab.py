"""What the benchmarks share: the lab a benchmark brings up (the repository's lab.yaml under its own
name and subnet, in a fresh directory, so a benchmark never touches the user's lab), the host's
CPU time by mode and by process, and its context switches."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
"""The venv's bin directory: ansible-playbook and what its modules run."""


MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# CPU this machine's kernel and processes ran. Not steal: time the hypervisor gave to others while
# this machine wanted to run, which varies with its neighbours, not with the work measured here.
BUSY_MODES = ("user", "nice", "system", "irq", "softirq")


def _process_cpu_s() -> dict[int, tuple[str, float]]:
    """pid -> (name, user + system CPU seconds) of every live process; kernel threads included."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:  # ended meanwhile
            continue
        fields = tail.split()
        name = head.split("(", 1)[1]
        if name.startswith("python"):
            name = _python_label(stat.parent / "cmdline", name)
        spent[int(stat.parent.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return spent


def _python_label(cmdline: Path, name: str) -> str:
    """Python processes told apart: `python:agent-b` for `... serve agent-b`, else the script."""
    try:
        args = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return name
    if "serve" in args and args.index("serve") + 1 < len(args):
        return f"python:{args[args.index('serve') + 1]}"
    script = next((a for a in args[1:] if a and not a.startswith("-")), "")
    return f"python:{Path(script).name}" if script else name


@dataclass(frozen=True)
class HostCpu:
    """The host's CPU time so far: by mode (/proc/stat), by process, and its context switches.
    `later - earlier` is what happened in between; per process, a process born meanwhile counts
    whole and one that ended meanwhile is missing."""

    modes: dict[str, float]
    processes: dict[int, tuple[str, float]]
    switches: int
    faults: dict[str, int]  # page faults, minor and major (/proc/vmstat): memory pressure shows here

    @classmethod
    def now(cls) -> HostCpu:
        lines = Path("/proc/stat").read_text().splitlines()
        ticks = os.sysconf("SC_CLK_TCK")
        modes = dict(zip(MODES, (int(v) / ticks for v in lines[0].split()[1:9]), strict=True))
        switches = next(int(line.split()[1]) for line in lines if line.startswith("ctxt "))
        vmstat = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        return cls(modes, _process_cpu_s(), switches, {k: int(vmstat[k]) for k in ("pgfault", "pgmajfault")})

    def __sub__(self, earlier: HostCpu) -> HostCpu:
        processes = {
            pid: (name, seconds - earlier.processes.get(pid, (name, 0.0))[1])
            for pid, (name, seconds) in self.processes.items()
        }
        return HostCpu(
            {m: v - earlier.modes[m] for m, v in self.modes.items()},
            processes,
            self.switches - earlier.switches,
            {k: v - earlier.faults[k] for k, v in self.faults.items()},
        )

    @property
    def busy_s(self) -> float:
        """CPU seconds busy: every mode but idle, iowait and steal."""
        return sum(self.modes[m] for m in BUSY_MODES)

    @property
    def steal_s(self) -> float:
        """CPU seconds the hypervisor took away: where it varies between blocks, so do their speeds."""
        return self.modes["steal"]

    def by_name(self) -> Counter[str]:
        """CPU seconds per process name, digits folded (kworker/1:2 and kworker/0:1 are one)."""
        spent: Counter[str] = Counter()
        for name, seconds in self.processes.values():
            spent[name if name.startswith("python:") else re.sub(r"\d+", "N", name)] += seconds
        return spent


def deploy_command(config: Path) -> tuple[list[str], dict[str, str]]:
    """`ansible-playbook deploy.yml` against a bench lab's inventory (run from REPO), and its environment."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}
    return [str(BIN / "ansible-playbook"), "deploy.yml", "-i", str(config.parent / "inventory")], env


def bench_lab(name: str, subnet_prefix: str, provider: str) -> Path:
    """lab.yaml for a benchmark lab (`subnet_prefix` like "10.81.0"), its inventory directory seeing the
    repository's group_vars; returns its path."""
    config = Path(tempfile.mkdtemp(prefix=f"lab-bench-{name}-")) / "lab.yaml"
    base = yaml.safe_load((REPO / "lab.yaml").read_text())
    base.update(name=name, provider=provider)
    base["network"] = {"subnet": f"{subnet_prefix}.0/24"}
    for index, node in enumerate(base["nodes"]):
        node["address"] = f"{subnet_prefix}.{11 + index}"
    config.write_text(yaml.safe_dump(base))
    # `lab up` writes the lab's inventory beside it; the role variables are the repository's
    (config.parent / "inventory").mkdir()
    (config.parent / "inventory" / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
    return config
