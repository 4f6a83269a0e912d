"""A soak of the lab's life cycle: N cycles of `lab up`, a deploy every k-th cycle, a short baseline
experiment every m-th (after that cycle's deploy), and `lab teardown`, each followed by a snapshot of
what the host holds, so a cycle that fails or leaves something behind is named.

    sudo .venv/bin/python benchmarks/soak.py [--provider nspawn|libvirt] [--cycles 50]
                                             [--deploy-every 5] [--experiment-every 10] [--tasks 20]

The lab is the repository's lab.yaml under its own name and subnet in a fresh directory (benchlab),
so the user's lab is never touched. Per cycle it prints each step's seconds, then the failures and
the leaks: network links, network namespaces, mounts, processes, nspawn machines and libvirt objects
the host did not have before the first cycle, and files under the lab's .lab/ that were not there
after the previous teardown. A failed step keeps its output and the lab's own logs in
<lab dir>/soak/cycle-NN/ and the cycle still tears down, so the next one starts clean.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlab import REPO, bench_lab, deploy_command

from vms import LIBVIRT_SOCKET

RECAP = re.compile(r"^\S+\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
STEP_TIMEOUT_S = {"up": 1800, "deploy": 3600, "experiment": 1800, "teardown": 900}
LABS = {"nspawn": ("sk", "10.86.0"), "libvirt": ("sv", "10.87.0")}
"""Each provider's soak lab (name, subnet), so both can soak at once."""


@dataclass(frozen=True)
class Snapshot:
    """What the host holds that a lab makes: each kind a set of names."""

    kinds: dict[str, frozenset[str]]

    @classmethod
    def now(cls, name: str, lab_dir: Path) -> Snapshot:
        """What the host holds of the lab `name` in `lab_dir`: whatever names either (links, netns,
        mounts, processes, machines, libvirt objects), and every file under its .lab/. Another lab
        on the host, a second soak included, is not this one's leak."""
        ours = (f"{name}-", str(lab_dir))
        kinds = {
            "links": _lines(["ip", "-o", "link", "show"], lambda line: line.split(":")[1].strip().split("@")[0]),
            "netns": _lines(["ip", "netns", "list"], lambda line: line.split()[0]),
            "mounts": frozenset(_mount_points()),
            "processes": frozenset(_processes()),
            "machines": _lines(["machinectl", "list", "--no-legend", "--all"], lambda line: line.split()[0]),
            "libvirt": frozenset(_libvirt_objects()),
        }
        kept = {kind: frozenset(n for n in names if any(mark in n for mark in ours)) for kind, names in kinds.items()}
        return cls({**kept, "files": frozenset(_files(lab_dir / ".lab"))})

    def new_since(self, earlier: Snapshot, kinds: tuple[str, ...]) -> dict[str, list[str]]:
        """{kind: sorted names} of what this snapshot has and `earlier` had not, for `kinds`."""
        return {k: sorted(self.kinds[k] - earlier.kinds[k]) for k in kinds if self.kinds[k] - earlier.kinds[k]}


HOST_KINDS = ("links", "netns", "mounts", "processes", "machines", "libvirt")


def _lines(argv: list[str], name: Callable[[str], str]) -> frozenset[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(name(line) for line in out.splitlines() if line.strip())


def _mount_points() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _processes() -> list[str]:
    """Every process's command line (containers, VMs, the lab's NTP server, SSH and Ansible among them)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        if text:
            found.append(text[:200])
    return found


def _libvirt_objects() -> list[str]:
    if not LIBVIRT_SOCKET.exists():
        return []
    objects = []
    for kind, argv in (
        ("domain", ["virsh", "list", "--all", "--name"]),
        ("network", ["virsh", "net-list", "--all", "--name"]),
        ("pool", ["virsh", "pool-list", "--all", "--name"]),
    ):
        objects += [f"{kind} {name}" for name in _lines(argv, str.strip)]
    for pool in [o.split(" ", 1)[1] for o in objects if o.startswith("pool ")]:
        objects += [f"volume {pool}/{v}" for v in _lines(["virsh", "vol-list", pool, "--name"], str.strip)]
    return objects


def _files(state_dir: Path) -> list[str]:
    if not state_dir.is_dir():
        return []
    return [str(path.relative_to(state_dir)) for path in state_dir.rglob("*") if not path.is_dir()]


@dataclass
class Cycle:
    number: int
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    leaks: dict[str, list[str]] = field(default_factory=dict)

    def line(self) -> str:
        steps = ", ".join(f"{step} {s:.1f} s" for step, s in self.seconds.items())
        failed = "; ".join(self.failures) or "-"
        leaked = "; ".join(f"{kind}: {', '.join(names[:5])}" for kind, names in self.leaks.items()) or "-"
        return f"cycle {self.number:3d}: {steps}\n           failures: {failed}\n           leaks: {leaked}"


class Soak:
    def __init__(self, config: Path, tasks: int) -> None:
        self.config, self.tasks = config, tasks
        self.state_dir = config.parent / ".lab"
        self.out = config.parent / "soak"

    def step(self, cycle: Cycle, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> bool:
        """Run one step of the cycle: its seconds, and on failure its output kept and the failure named."""
        started = time.monotonic()
        try:
            result = subprocess.run(
                argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S[name], check=False
            )
            code, out = result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired as exc:
            code, out = None, f"{exc.stdout or ''}{exc.stderr or ''}\n(killed after {STEP_TIMEOUT_S[name]} s)"
        cycle.seconds[name] = time.monotonic() - started
        unhealthy = name == "deploy" and any(int(u) or int(f) for u, f in RECAP.findall(out))
        if code == 0 and not unhealthy:
            return True
        kept = self.out / f"cycle-{cycle.number:02d}"
        kept.mkdir(parents=True, exist_ok=True)
        (kept / f"{name}.out").write_text(out)
        if (self.state_dir / "logs").is_dir():
            shutil.copytree(self.state_dir / "logs", kept / "lab-logs", dirs_exist_ok=True)
        last = [line for line in out.splitlines() if line.strip()][-1:] or ["no output"]
        cycle.failures.append(f"{name} {'timed out' if code is None else f'exit {code}'}: {last[0][:200]}")
        return False

    def lab(self, cycle: Cycle, name: str, *args: str) -> bool:
        return self.step(cycle, name, [sys.executable, "-m", "lab", "--config", str(self.config), *args], REPO)

    def run(self, number: int, deploy: bool, experiment: bool) -> Cycle:
        cycle = Cycle(number)
        if self.lab(cycle, "up", "up") and (deploy or experiment):
            argv, env = deploy_command(self.config)
            if self.step(cycle, "deploy", argv, REPO, env) and experiment:
                self.lab(cycle, "experiment", "experiment", "baseline", "--tasks", str(self.tasks), "--warmup", "2")
        self.lab(cycle, "teardown", "teardown")
        return cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="nspawn", choices=list(LABS))
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--deploy-every", type=int, default=5, help="deploy in every k-th cycle (0: never)")
    parser.add_argument("--experiment-every", type=int, default=10, help="a baseline run every m-th cycle (0: never)")
    parser.add_argument("--tasks", type=int, default=20, help="measured tasks of each experiment")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("error: the soak brings labs up and down: run it as root (sudo)")
    name, subnet = LABS[args.provider]
    config = bench_lab(name, subnet, args.provider)
    soak = Soak(config, args.tasks)
    print(f"soak: {args.cycles} {args.provider} cycles in {config.parent}; host {os.cpu_count()} cores", flush=True)
    before = Snapshot.now(name, config.parent)
    files = before
    cycles = []
    for number in range(1, args.cycles + 1):
        experiment = bool(args.experiment_every) and number % args.experiment_every == 0
        deploy = bool(args.deploy_every) and number % args.deploy_every == 0
        cycle = soak.run(number, deploy, experiment)
        after = Snapshot.now(name, config.parent)
        cycle.leaks = {**after.new_since(before, HOST_KINDS), **after.new_since(files, ("files",))}
        files = after
        cycles.append(cycle)
        print(cycle.line(), flush=True)
    summarise(cycles)


def summarise(cycles: list[Cycle]) -> None:
    failed = [c.number for c in cycles if c.failures]
    leaked = [c.number for c in cycles if c.leaks]
    print(
        f"\n{len(cycles)} cycles: {len(failed)} with a failure {failed or ''}, {len(leaked)} with a leak {leaked or ''}"
    )
    for step in STEP_TIMEOUT_S:
        times = [c.seconds[step] for c in cycles if step in c.seconds]
        if times:
            print(
                f"  {step:10} {len(times):3d} runs: median {statistics.median(times):7.1f} s, "
                f"min {min(times):7.1f}, max {max(times):7.1f}"
            )


if __name__ == "__main__":
    main()
