"""Probe overhead: throughput and p99 latency of a scenario (the baseline chain by default) with every
probe running on every node against none, measured in one run on a deployed lab. Blocks of tasks alternate
off/on (off, on, on, off, ...) so slow drift of the machine cancels; probes start before an
"on" block and stop after it, outside the timed window.

    sudo .venv/bin/python benchmarks/probe_overhead.py [--config lab.yaml] [--tasks 1000] [--pairs 10] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import get_args

from benchlab import host_busy_s, host_context_switches

from experiments import controller, services
from experiments.manifest import probe_cpu
from experiments.remote import NodeSession, parallel
from experiments.scenario import PROBES, Scenario
from lab import state
from lab.config import load_config
from lab.errors import LabError
from lab.validation import validate
from workload.driver import Entry, TaskResult, run
from workload.driver import (
    Scenario as Workload,  # the driver's name for a workload kind
)
from workload.tasks import make_dataset, make_tasks


@dataclass
class Block:
    probes: bool
    seconds: float
    latencies_s: list[float]
    failed: int
    busy_s: float  # CPU time the whole host spent (every node, the controller, the kernel)
    observing_s: float  # CPU the runners and probe processes spent while running (0 with probes off)
    bpf_s: float | None  # the kernel's time in the probes' BPF programs (0 with probes off), None if not every node said
    switches: int  # the host's context switches during the block


def drive(workload: Workload, entry: Entry, count: int, concurrency: int, seed: int) -> tuple[float, list[TaskResult]]:
    tasks = make_tasks(seed, count, make_dataset(1))
    with tempfile.TemporaryDirectory() as telemetry:
        started = time.monotonic()
        results = run(workload, tasks, entry, concurrency, Path(telemetry), timeout_s=300)
        return time.monotonic() - started, results


def block(sessions: list[NodeSession], entry: Entry, probes: bool, args: argparse.Namespace, index: int) -> Block:
    """One timed block of tasks. Starting and stopping probes costs the kernel work that outlasts the
    call (preallocating and later freeing the maps), so every block begins after `--settle` seconds
    of quiet: the figures are the probes' steady-state cost."""
    if probes:
        rtt = (args.rtt_interval_ms, args.rtt_max_per_s)
        answers = parallel(lambda s: s.start_probes(args.probes, rtt), sessions)
        broken = {n: a if isinstance(a, Exception) else a["error"] for n, a in answers.items()
                  if isinstance(a, Exception) or a["error"]}
        if broken:
            raise SystemExit(f"probes did not start: {broken}")
    time.sleep(args.settle)
    try:
        busy, switches = host_busy_s(), host_context_switches()
        seconds, results = drive(args.workload, entry, args.tasks, args.concurrency, seed=100 + index)
        busy, switches = host_busy_s() - busy, host_context_switches() - switches
    finally:
        stopped = parallel(lambda s: s.stop_probes({}), sessions) if probes else {}
        if probes:
            parallel(lambda s: s.step("cleanup", run_dir=s.run_dir), sessions)
    spent = [observing_s(answer) for answer in stopped.values()]
    in_bpf = [bpf for _, bpf in spent]
    return Block(probes, seconds, [(r.end_ns - r.start_ns) / 1e9 for r in results if r.ok], sum(not r.ok for r in results),
                 busy, sum(running for running, _ in spent), None if None in in_bpf else sum(in_bpf), switches)  # type: ignore[arg-type]


def observing_s(stopped: dict | Exception) -> tuple[float, float | None]:
    """A node's CPU spent observing from the probes' attach to the stop (the settle time included):
    in the runner and probe processes, and in the probes' BPF programs (None without BPF probes or
    where the kernel keeps no statistics)."""
    cpu = probe_cpu(None if isinstance(stopped, Exception) else stopped["status"])
    if cpu["running"] is None:
        raise SystemExit(f"a node did not report the CPU its probes used: {stopped}")
    return cpu["running"], cpu["bpf"]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("lab.yaml"))
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per block")
    parser.add_argument("--pairs", type=int, default=10, help="off/on pairs of blocks")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workload", choices=get_args(Workload), default="baseline")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before each block")
    parser.add_argument("--rtt-interval-ms", type=int, default=Scenario.model_fields["rtt_interval_ms"].default,
                        help="the rtt probe's window per socket (default: the scenarios' default)")
    parser.add_argument("--rtt-max-per-s", type=int, default=Scenario.model_fields["rtt_max_per_s"].default,
                        help="the rtt probe's lines per second per node (default: the scenarios' default)")
    parser.add_argument("--probes", type=lambda v: v.split(","), default=list(PROBES), help="comma-separated subset (default: all)")
    args = parser.parse_args()
    try:  # bad arguments, lab.yaml or lab state: one line naming what and how to fix it
        scenario = validate(Scenario, {"name": "overhead", "workload": args.workload, "tasks": {"count": args.tasks},
                                       "probes": args.probes, "rtt_interval_ms": args.rtt_interval_ms,
                                       "rtt_max_per_s": args.rtt_max_per_s}, Path("probe_overhead.py's arguments"))
        lab = load_config(args.config)
        run_id = controller.new_run_id("overhead")
        sessions = controller.connect(state.require(lab), lab, run_id)
    except LabError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        entry = services.entry(controller.preflight(sessions, lab, scenario))
        drive(args.workload, entry, min(args.tasks, 20), args.concurrency, seed=99)  # warm-up, not counted
        order = [probes for pair in range(args.pairs) for probes in ((False, True) if pair % 2 == 0 else (True, False))]
        blocks = []
        for index, probes in enumerate(order):
            block_sessions = [replace(s, run_id=f"{run_id}-{index}") for s in sessions]
            blocks.append(block(block_sessions, entry, probes, args, index))
            b = blocks[-1]
            print(f"block {index}: probes {'on ' if probes else 'off'} {len(b.latencies_s) / b.seconds:7.1f} tasks/s  "
                  f"p99 {p99(b.latencies_s) * 1e3:6.1f} ms  failed {b.failed}", flush=True)
    finally:
        for session in sessions:
            session.close()
    report(blocks, args)


def report(blocks: list[Block], args: argparse.Namespace) -> None:
    """Pooled figures for off and on, and the spread of the on/off throughput ratio over the pairs
    (each pair ran back to back, so the machine's drift hits both alike)."""
    def figures(chosen: list[Block]) -> tuple[float, float, float, float]:
        latencies = [x for b in chosen for x in b.latencies_s]
        return (len(latencies) / sum(b.seconds for b in chosen), p99(latencies),
                sum(b.busy_s for b in chosen) / len(latencies), sum(b.switches for b in chosen) / len(latencies))

    (off_tput, off_p99, off_cpu, off_switches), (on_tput, on_p99, on_cpu, on_switches) = (
        figures([b for b in blocks if not b.probes]), figures([b for b in blocks if b.probes]))
    ratios = sorted(figures([on])[0] / figures([off])[0] for on, off in
                    ((max(pair, key=lambda b: b.probes), min(pair, key=lambda b: b.probes))
                     for pair in zip(blocks[::2], blocks[1::2])))
    print(f"\n{args.workload}, {args.pairs} off/on pairs of {args.tasks} tasks, {args.concurrency} in flight, probes {','.join(args.probes)}, "
          f"rtt window {args.rtt_interval_ms} ms per socket, at most {args.rtt_max_per_s} lines/s")
    print(f"{'probes':<8}{'tasks/s':>10}{'p99 ms':>10}{'host CPU ms/task':>18}{'switches/task':>15}")
    print(f"{'off':<8}{off_tput:>10.1f}{off_p99 * 1e3:>10.1f}{off_cpu * 1e3:>18.3f}{off_switches:>15.1f}")
    print(f"{'on':<8}{on_tput:>10.1f}{on_p99 * 1e3:>10.1f}{on_cpu * 1e3:>18.3f}{on_switches:>15.1f}")
    print(f"host CPU per task on/off {on_cpu / off_cpu:.3f}")
    tasks_on = sum(len(b.latencies_s) for b in blocks if b.probes)
    in_bpf = [b.bpf_s for b in blocks]
    for what, seconds in (("runners and probe processes while running", sum(b.observing_s for b in blocks)),
                          ("the probes' BPF programs in the kernel", None if None in in_bpf else sum(in_bpf))):  # type: ignore[arg-type]
        print(f"{what}: not reported by every node (no BPF probe, or a kernel without BPF statistics)" if seconds is None else
              f"{what}: {seconds / tasks_on * 1e3:.3f} ms CPU per task ({seconds / tasks_on / off_cpu:.1%} of a task's host CPU with probes off)")
    spread = f", mean {statistics.mean(ratios):.3f} ± {1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5:.3f} (95 %)" \
        if len(ratios) > 1 else ""
    print(f"throughput on/off per pair: median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}{spread}")
    print(f"throughput on/off {on_tput / off_tput:.3f} (aim >= 0.97); p99 on/off {on_p99 / off_p99:.3f} (aim <= 1.03)")


if __name__ == "__main__":
    main()
