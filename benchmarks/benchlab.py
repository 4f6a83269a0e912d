"""What the benchmarks share: the lab a benchmark brings up (the repository's lab.yaml under its own
name and subnet, in a fresh directory, so a benchmark never touches the user's lab), the host's
busy CPU time and its context switches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def host_busy_s() -> float:
    """CPU seconds this host has been busy (user, nice, system, irq, softirq, steal) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def host_context_switches() -> int:
    """Context switches on this host since boot: a probe that wakes a process per event shows here."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    raise RuntimeError("/proc/stat has no ctxt line")


def bench_lab(name: str, subnet_prefix: str, provider: str) -> Path:
    """lab.yaml for a benchmark lab (`subnet_prefix` like "10.81.0"); returns its path."""
    config = Path(tempfile.mkdtemp(prefix=f"lab-bench-{name}-")) / "lab.yaml"
    base = yaml.safe_load((REPO / "lab.yaml").read_text())
    base.update(name=name, provider=provider)
    base["network"] = {"subnet": f"{subnet_prefix}.0/24"}
    for index, node in enumerate(base["nodes"]):
        node["address"] = f"{subnet_prefix}.{11 + index}"
    config.write_text(yaml.safe_dump(base))
    return config
