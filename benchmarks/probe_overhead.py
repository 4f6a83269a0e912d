"""Probe overhead: throughput and p99 latency of a scenario (the baseline chain by default) with every
probe running on every node against none, measured in one run on a deployed lab. Blocks of tasks alternate
off/on (off, on, on, off, ...) so slow drift of the machine cancels; probes start before an
"on" block and stop after it, outside the timed window. Tasks are driven as `lab experiment` drives
them: a client and a connection per task.

    sudo .venv/bin/python benchmarks/probe_overhead.py [--config lab.yaml] [--tasks 1000] [--pairs 10] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from benchlab import BUSY_MODES, HostCpu

from experiments import controller, services
from experiments import drive as tasks
from experiments.manifest import probe_cpu
from experiments.remote import NodeSession, parallel
from experiments.scenario import DEFAULT_PROBES, Scenario
from lab import inventory, state
from lab.config import load_config
from lab.errors import LabError
from lab.validation import validate
from workload.driver import SCENARIOS, Entry, TaskResult

QUIET_STEAL = 0.02


@dataclass
class Block:
    probes: bool
    seconds: float
    latencies_s: list[float]
    failed: int
    host: HostCpu  # CPU the whole host spent (every node, the controller, the kernel), its context switches
    observing_s: float  # CPU the runners and probe processes spent while running (0 with probes off)
    stopping_s: float  # ... and once asked to stop: flushing, decoding bpftrace's output (after the timed window)
    bpf_s: (
        float | None
    )  # the kernel's time in the probes' BPF programs (0 with probes off), None if not every node said
    by_process: Counter[str]  # CPU while running of each probe process (its probes joined by '+'), every node


def drive(scenario: Scenario, entry: Entry, seed: int, count: int | None = None) -> tuple[float, list[TaskResult]]:
    """The scenario's tasks (seeded by `seed`, `count` of them if given) driven as `lab experiment`
    drives them: each task its own client and connection, `concurrency` in flight."""
    chosen = {"seed": seed} | ({"count": count} if count else {})
    scenario = scenario.model_copy(update={"tasks": scenario.tasks.model_copy(update=chosen)})
    results: list[TaskResult] = []
    with tempfile.TemporaryDirectory() as telemetry:
        started = time.monotonic()
        tasks.drive(
            tasks.plan(scenario), scenario, entry, Path(telemetry), lambda outcome: results.append(outcome.result)
        )
        return time.monotonic() - started, results


def block(
    sessions: list[NodeSession], scenario: Scenario, entry: Entry, probes: bool, args: argparse.Namespace, index: int
) -> Block:
    """One timed block of tasks. Starting and stopping probes costs the kernel work that outlasts the
    call (preallocating and later freeing the maps), so every block begins after `--settle` seconds
    of quiet: the figures are the probes' steady-state cost."""
    if probes:
        rtt = (args.rtt_interval_ms, args.rtt_max_per_s)
        answers = parallel(lambda s: s.start_probes(args.probes, rtt, args.bpf_stats), sessions)
        broken = {
            n: a if isinstance(a, Exception) else a["error"]
            for n, a in answers.items()
            if isinstance(a, Exception) or a["error"]
        }
        if broken:
            raise SystemExit(f"probes did not start: {broken}")
    time.sleep(args.settle)
    try:
        before = HostCpu.now()
        seconds, results = drive(scenario, entry, seed=100 + index)
        host = HostCpu.now() - before
    finally:
        stopped = parallel(lambda s: s.stop_probes({}), sessions) if probes else {}
        if probes:
            parallel(lambda s: s.step("cleanup", run_dir=s.run_dir), sessions)
    spent = [observing_s(answer) for answer in stopped.values()]
    in_bpf = [bpf for _, _, bpf in spent]
    by_process: Counter[str] = Counter()
    for answer in stopped.values():
        by_process.update(running_by_process(answer["status"]))
    return Block(
        probes,
        seconds,
        [(r.end_ns - r.start_ns) / 1e9 for r in results if r.ok],
        sum(not r.ok for r in results),
        host,
        sum(running for running, _, _ in spent),
        sum(stopping for _, stopping, _ in spent),
        None if None in in_bpf else sum(in_bpf),
        by_process,
    )  # type: ignore[arg-type]


def running_by_process(status: dict) -> dict[str, float]:
    """CPU seconds each probe process and the runner spent while running, named by its probes
    (those that share a process joined by '+'; pcap per interface)."""
    probes = status.get("probes", {})
    spent = {"runner": (status.get("cpu_s") or {}).get("running") or 0.0}
    for name, probe in probes.items():
        if probe.get("pid") and not probe.get("shared_with"):
            label = "+".join([name, *(n for n, p in probes.items() if p.get("shared_with") == name)])
            spent[label] = (probe.get("cpu_s") or {}).get("running") or 0.0
    return spent


def observing_s(stopped: dict | Exception) -> tuple[float, float, float | None]:
    """A node's CPU spent observing: in the runner and probe processes from the probes' attach to
    the stop (the settle time included) and from then on, and in the probes' BPF programs (None
    without BPF probes or where the kernel keeps no statistics)."""
    cpu = probe_cpu(None if isinstance(stopped, Exception) else stopped["status"])
    if cpu.running is None or cpu.stopping is None:
        raise SystemExit(f"a node did not report the CPU its probes used: {stopped}")
    return cpu.running, cpu.stopping, cpu.bpf


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def cpu_per_task(b: Block) -> float:
    return b.host.busy_s / len(b.latencies_s)


def pairs(blocks: list[Block]) -> list[tuple[Block, Block]]:
    """The blocks as run, two by two: (off, on) of each pair."""
    return [(off, on) if on.probes else (on, off) for off, on in zip(blocks[::2], blocks[1::2], strict=True)]


def pair_ratios(blocks: list[Block], measure: Callable[[Block], float]) -> list[float]:
    """`measure` of the on block over the off block, for each pair (sorted)."""
    return sorted(measure(on) / measure(off) for off, on in pairs(blocks))


def quiet_pairs(blocks: list[Block]) -> list[Block]:
    """The pairs in which the hypervisor took at most QUIET_STEAL of either block's time."""
    return [b for pair in pairs(blocks) if all(b.host.steal_s <= QUIET_STEAL * b.seconds for b in pair) for b in pair]


def throughput(b: Block) -> float:
    return len(b.latencies_s) / b.seconds


def block_p99(b: Block) -> float:
    return p99(b.latencies_s)


def spread(ratios: list[float]) -> str:
    interval = (
        f", mean {statistics.mean(ratios):.3f} ± {1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5:.3f} (95 %)"
        if len(ratios) > 1
        else ""
    )
    return f"median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}{interval}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("lab.yaml"))
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per block")
    parser.add_argument("--pairs", type=int, default=10, help="off/on pairs of blocks")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workload", choices=SCENARIOS, default="baseline")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before each block")
    parser.add_argument(
        "--rtt-interval-ms",
        type=int,
        default=Scenario.model_fields["rtt_interval_ms"].default,
        help="the rtt probe's window per socket (default: the scenarios' default)",
    )
    parser.add_argument(
        "--rtt-max-per-s",
        type=int,
        default=Scenario.model_fields["rtt_max_per_s"].default,
        help="the rtt probe's lines per second per node (default: the scenarios' default)",
    )
    parser.add_argument(
        "--probes",
        type=lambda v: v.split(","),
        default=list(DEFAULT_PROBES),
        help="comma-separated probes (default: the scenarios' default)",
    )
    parser.add_argument(
        "--bpf-stats",
        action="store_true",
        help="also measure the kernel's time in the probes' BPF programs (its clock reads cost CPU too)",
    )
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: give at least 1 (one off block and one on block)")
    if args.settle < 0:
        parser.error(f"--settle {args.settle}: seconds of quiet cannot be negative; give 0 or more")
    try:  # bad arguments, lab.yaml or lab state: one line naming what and how to fix it
        scenario = validate(
            Scenario,
            {
                "name": "overhead",
                "workload": args.workload,
                "tasks": {"count": args.tasks},
                "load": {"concurrency": args.concurrency},
                "task_timeout_s": 300,
                "probes": args.probes,
                "rtt_interval_ms": args.rtt_interval_ms,
                "rtt_max_per_s": args.rtt_max_per_s,
            },
            Path("probe_overhead.py's arguments"),
        )
        lab = load_config(args.config)
        run_id = controller.new_run_id("overhead")
        sessions = controller.connect(state.require(lab), lab, run_id)
    except LabError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        checks = controller.preflight(sessions, lab, scenario)
        entry = services.entry(checks, scenario.workload, inventory.api_token(lab))
        # One block's worth of tasks first, not counted: a first block ran ~20 % slower (caches,
        # connection set-up in the services) and, always "off", made the probes look cheaper.
        seconds, results = drive(scenario, entry, seed=99)
        print(f"warm-up: {len(results) / seconds:7.1f} tasks/s (not counted)", flush=True)
        order = [probes for pair in range(args.pairs) for probes in ((False, True) if pair % 2 == 0 else (True, False))]
        blocks = []
        for index, probes in enumerate(order):
            block_sessions = [replace(s, run_id=f"{run_id}-{index}") for s in sessions]
            blocks.append(block(block_sessions, scenario, entry, probes, args, index))
            b = blocks[-1]
            print(
                f"block {index}: probes {'on ' if probes else 'off'} {throughput(b):7.1f} tasks/s  "
                f"p99 {block_p99(b) * 1e3:6.1f} ms  CPU {cpu_per_task(b) * 1e3:6.2f} ms/task  "
                f"steal {b.host.steal_s / b.seconds:4.0%}  failed {b.failed}",
                flush=True,
            )
    finally:
        for session in sessions:
            session.close()
    report(blocks, args)


def report(blocks: list[Block], args: argparse.Namespace) -> None:
    """Pooled figures for off and on, and the spread of the on/off throughput ratio over the pairs
    (each pair ran back to back, so the machine's drift hits both alike)."""

    def figures(chosen: list[Block]) -> tuple[float, float, float, float, float]:
        latencies = [x for b in chosen for x in b.latencies_s]
        seconds = sum(b.seconds for b in chosen)
        return (
            len(latencies) / seconds,
            p99(latencies),
            sum(b.host.busy_s for b in chosen) / len(latencies),
            sum(b.host.switches for b in chosen) / len(latencies),
            sum(b.host.steal_s for b in chosen) / seconds,
        )

    (off_tput, off_p99, off_cpu, off_switches, off_steal), (on_tput, on_p99, on_cpu, on_switches, on_steal) = (
        figures([b for b in blocks if not b.probes]),
        figures([b for b in blocks if b.probes]),
    )
    print(
        f"\n{args.workload}, {args.pairs} off/on pairs of {args.tasks} tasks, {args.concurrency} in flight, "
        f"probes {','.join(args.probes)}, "
        f"rtt window {args.rtt_interval_ms} ms per socket, at most {args.rtt_max_per_s} lines/s, "
        f"BPF statistics {'on' if args.bpf_stats else 'off'}"
    )
    print(f"{'probes':<8}{'tasks/s':>10}{'p99 ms':>10}{'host CPU ms/task':>18}{'switches/task':>15}{'steal':>8}")
    for name, tput, tail, cpu, switches, steal in (
        ("off", off_tput, off_p99, off_cpu, off_switches, off_steal),
        ("on", on_tput, on_p99, on_cpu, on_switches, on_steal),
    ):
        print(f"{name:<8}{tput:>10.1f}{tail * 1e3:>10.1f}{cpu * 1e3:>18.3f}{switches:>15.1f}{steal:>8.1%}")
    print(
        f"host CPU per task on/off {on_cpu / off_cpu:.3f} (steal excluded); "
        f"per pair: {spread(pair_ratios(blocks, cpu_per_task))}"
    )
    where_it_went(blocks)
    tasks_on = sum(len(b.latencies_s) for b in blocks if b.probes)
    in_bpf = [b.bpf_s for b in blocks]
    for what, seconds in (
        ("runners and probe processes while running", sum(b.observing_s for b in blocks)),
        ("the probes' BPF programs in the kernel", None if None in in_bpf else sum(in_bpf)),  # type: ignore[arg-type]
        ("runners and probes stopping (decoding included), after the timed window", sum(b.stopping_s for b in blocks)),
    ):
        print(
            f"{what}: not measured (--bpf-stats) or not reported by every node"
            if seconds is None
            else f"{what}: {seconds / tasks_on * 1e3:.3f} ms CPU per task "
            f"({seconds / tasks_on / off_cpu:.1%} of a task's host CPU with probes off)"
        )
    by_process = sum((b.by_process for b in blocks), Counter())
    print(
        "runners and probe processes while running, by process (every node), per task: "
        + ", ".join(f"{name} {seconds / tasks_on * 1e6:.0f} µs" for name, seconds in by_process.most_common())
    )
    print(f"throughput on/off per pair: {spread(pair_ratios(blocks, throughput))}")
    print(f"p99 on/off per pair: {spread(pair_ratios(blocks, block_p99))}")
    if quiet := quiet_pairs(blocks):  # a tail is where the hypervisor's pauses show first
        print(
            f"in the {len(quiet) // 2} pairs with at most {QUIET_STEAL:.0%} steal in both blocks: throughput on/off "
            f"median {statistics.median(pair_ratios(quiet, throughput)):.3f}, p99 on/off median "
            f"{statistics.median(pair_ratios(quiet, block_p99)):.3f}"
        )
    print(f"throughput on/off {on_tput / off_tput:.3f} (aim >= 0.98); p99 on/off {on_p99 / off_p99:.3f} (aim <= 1.03)")


def where_it_went(blocks: list[Block], shown: int = 10) -> None:
    """Host CPU per task with probes on minus off, by mode and by the processes that changed most:
    what the probes cost outside their own processes (the kernel's packet taps and tracepoints,
    the workload's processes running slower) shows here."""

    def per_task(chosen: list[Block]) -> tuple[Counter[str], Counter[str]]:
        tasks = sum(len(b.latencies_s) for b in chosen)
        modes: Counter[str] = Counter()
        names: Counter[str] = Counter()
        for b in chosen:
            modes.update({m: b.host.modes[m] / tasks for m in BUSY_MODES})
            names.update({n: s / tasks for n, s in b.host.by_name().items()})
        return modes, names

    (off_modes, off_names), (on_modes, on_names) = (
        per_task([b for b in blocks if not b.probes]),
        per_task([b for b in blocks if b.probes]),
    )
    print(
        "host CPU per task, on - off, by mode: "
        + ", ".join(f"{m} {(on_modes[m] - off_modes[m]) * 1e6:+.0f} µs" for m in BUSY_MODES)
    )
    for kind in ("pgfault", "pgmajfault"):
        off_faults, on_faults = (
            sum(b.host.faults[kind] for b in chosen) / sum(len(b.latencies_s) for b in chosen)
            for chosen in ([b for b in blocks if not b.probes], [b for b in blocks if b.probes])
        )
        print(f"  {kind} per task: off {off_faults:.2f}, on {on_faults:.2f}")
    changed = sorted(set(on_names) | set(off_names), key=lambda n: -abs(on_names[n] - off_names[n]))[:shown]
    print("  by process: " + ", ".join(f"{n} {(on_names[n] - off_names[n]) * 1e6:+.0f} µs" for n in changed))


if __name__ == "__main__":
    main()
