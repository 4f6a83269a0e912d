"""How long `lab up` takes from nothing to N SSH-ready nodes: libvirt VMs (TCG here) and, in the
same run, nspawn containers, and how that grows with the number of nodes. Each lab is torn down
afterwards.

    python benchmarks/up_libvirt.py [--runs N] [--nodes 3,7,12] [--providers nspawn,libvirt]

Past the three nodes of the shipped lab.yaml (agent-a, agent-b, llm) each lab adds agent nodes
(worker-1, worker-2, ...), as a topology with more agents would.

The node image is built (and its VM disk made) before the clock starts; everything `lab up`
does after that is timed, including the upload of the base volume into the libvirt pool.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lab.config import Image
from vms import image

NODES = (("agent-a", ["agents"], 640), ("agent-b", ["agents", "tools"], 640), ("llm", ["llm"], 768))
LABS = {"libvirt": ("bv", "10.82.0", {"accelerator": "tcg"}), "nspawn": ("bn", "10.83.0", {})}


def write_lab(directory: Path, provider: str, count: int) -> Path:
    name, prefix, extra = LABS[provider]
    workers = [(f"worker-{k}", ["agents"], 640) for k in range(1, count - len(NODES) + 1)]
    config = {
        "name": name,
        "provider": provider,
        **extra,
        "network": {"subnet": f"{prefix}.0/24"},
        "nodes": [
            {"name": node, "groups": groups, "address": f"{prefix}.{11 + i}", "memory_mb": memory}
            for i, (node, groups, memory) in enumerate([*NODES, *workers])
        ],
    }
    path = directory / f"{provider}-{count}" / "lab.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def lab(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(config), *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=config.parent,
        env={**os.environ, "COLUMNS": "200"},
    )
    if result.returncode != 0:
        raise SystemExit(f"lab {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def measure(config: Path) -> tuple[float, dict[str, float]]:
    started = time.monotonic()
    out = lab(config, "up")
    seconds = time.monotonic() - started
    lab(config, "teardown")
    ready = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\S+): SSH ready \((\d+\.\d) s\)", out)}
    return seconds, ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--nodes", default="3", help="comma-separated node counts, each at least 3 (e.g. 3,7,12)")
    parser.add_argument("--providers", default=",".join(LABS), help=f"comma-separated, of {', '.join(LABS)}")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    providers = args.providers.split(",")
    if min(counts) < len(NODES) or max(counts) > 200 or not set(providers) <= set(LABS):
        parser.error(f"--nodes: counts from {len(NODES)} to 200; --providers: of {', '.join(LABS)}")
    node_image, _ = image.build(Image())
    image.disk_image(node_image)
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; image {node_image.hash}")
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as work:
        for provider in providers:
            for count in counts:
                config = write_lab(Path(work), provider, count)
                runs = [measure(config) for _ in range(args.runs)]
                report(provider, count, runs)


def report(provider: str, count: int, runs: list[tuple[float, dict[str, float]]]) -> None:
    totals = [total for total, _ in runs]
    waits = sorted(runs[-1][1].values())
    spread = f" (min {min(totals):.1f}, max {max(totals):.1f})" if len(totals) > 1 else ""
    median = statistics.median(totals)
    print(
        f"{provider:8} lab up -> {count:3} nodes SSH-ready: {median:6.1f} s{spread}, {median / count:.2f} s a node; "
        f"SSH waits (last run) {waits[0]:.1f}-{waits[-1]:.1f} s, median {statistics.median(waits):.1f} s"
    )


if __name__ == "__main__":
    main()
