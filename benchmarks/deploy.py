"""Figures for `ansible-playbook deploy.yml`, each the median of --runs runs on this machine:
the controller's wheelhouse built into an empty directory (pip's own cache as it is), the first
deploy to fresh nodes (wheelhouse cached) and the second, no-op deploy (`changed=0`).

    sudo .venv/bin/python benchmarks/deploy.py [--provider nspawn|libvirt] [--runs 3]

With --provider libvirt the nodes are VMs (KVM where usable, else TCG: the accelerator is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlab import REPO, bench_lab, deploy_command

CHANGED = re.compile(r"^\S+\s+: ok=\d+\s+changed=(\d+)", re.MULTILINE)


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:3])} ... exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        )
    return time.monotonic() - started, result.stdout


def lab(config: Path, *args: str) -> str:
    return run([sys.executable, "-m", "lab", "--config", str(config), *args], config.parent)[1]


def deploy(config: Path) -> tuple[float, int]:
    """Wall time of one deploy and the total `changed` it reported."""
    argv, env = deploy_command(config)
    seconds, out = run(argv, REPO, env)
    return seconds, sum(int(n) for n in CHANGED.findall(out))


def wheelhouse_cold() -> float:
    out = Path(tempfile.mkdtemp(prefix="lab-wheelhouse-"))
    try:
        return run(
            [
                sys.executable,
                str(REPO / "ansible" / "wheelhouse.py"),
                "--out",
                str(out),
                "--profile",
                "services",
                "--profile",
                "llm-cpu",
            ],
            REPO,
        )[0]
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="nspawn", choices=["nspawn", "libvirt"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = bench_lab("bd", "10.85.0", args.provider)

    figures: dict[str, list[float]] = {
        "wheelhouse, empty directory": [],
        "first deploy": [],
        "second deploy (no-op)": [],
    }
    changed_second: list[int] = []
    accelerator = "?"
    for _ in range(args.runs):
        figures["wheelhouse, empty directory"].append(wheelhouse_cold())
    try:
        for _ in range(args.runs):
            lab(config, "up")
            accelerator = json.loads((config.parent / ".lab" / "state.json").read_text())["accelerator"]
            (config.parent / "inventory" / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
            figures["first deploy"].append(deploy(config)[0])
            seconds, changed = deploy(config)
            figures["second deploy (no-op)"].append(seconds)
            changed_second.append(changed)
            lab(config, "teardown")
            (config.parent / "inventory" / "group_vars").unlink()
    finally:
        lab(config, "teardown")
        shutil.rmtree(config.parent, ignore_errors=True)

    print(
        f"provider {args.provider} ({accelerator}), {os.cpu_count()} cores, median of {args.runs} runs; "
        f"second deploys reported changed={changed_second}"
    )
    print(f"{'what':<30} {'median s':>9}   runs")
    for what, values in figures.items():
        print(f"{what:<30} {statistics.median(values):>9.1f}   {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
