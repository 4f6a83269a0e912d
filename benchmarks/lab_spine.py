"""Figures for the lab spine, each the median of three runs on this machine:
image build cold (empty cache, packages downloaded) and warm (same recipe, a no-op),
`lab up` to all nodes SSH-ready, and `lab teardown`.

    sudo .venv/bin/python benchmarks/lab_spine.py [--provider nspawn] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlab import REPO, bench_lab


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=cwd)
    return time.monotonic() - started


def lab(config: Path, *args: str, env: dict[str, str] | None = None) -> float:
    return timed([sys.executable, "-m", "lab", "--config", str(config), *args], env=env, cwd=config.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", default="nspawn", choices=["nspawn", "libvirt"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = bench_lab("bn", "10.81.0", args.provider)

    figures: dict[str, list[float]] = {
        "image build, cold": [],
        "image build, warm": [],
        "lab up to SSH-ready": [],
        "lab teardown": [],
    }
    for _ in range(args.runs):
        cold_cache = tempfile.mkdtemp(prefix="lab-cache-")
        env = {**os.environ, "LAB_CACHE": cold_cache}
        figures["image build, cold"].append(lab(config, "image", "build", env=env))
        figures["image build, warm"].append(lab(config, "image", "build", env=env))
        subprocess.run(["rm", "-rf", cold_cache], check=True)
    for _ in range(args.runs):
        figures["lab up to SSH-ready"].append(lab(config, "up"))
        figures["lab teardown"].append(lab(config, "teardown"))

    print(f"provider {args.provider}, {os.cpu_count()} cores, median of {args.runs} runs")
    print(f"{'what':<24} {'median s':>9}   runs")
    for what, values in figures.items():
        print(f"{what:<24} {statistics.median(values):>9.2f}   {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
