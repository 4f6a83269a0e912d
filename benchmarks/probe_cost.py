"""Per-packet and per-connection cost of each probe, without a lab: over loopback in a private network
namespace, with the probe runner (`python -m collectors run`) watching that namespace with one probe
set at a time, against none, in alternating rounds, two workloads:

- a TCP ping-pong on one connection: the CPU per round trip (two data segments);
- connection churn: connect, one byte each way, close, again and again: the CPU per connection
  (ten state transitions across its two ends, eight packets), which is what a task's new
  connections cost the probes that work per connection (lifetime, state, connect).

Each prints the CPU time of the workload process (what the kernel does in line: BPF programs,
packet taps) and of the whole host (adds the probes' user space: bpftrace draining its maps,
tcpdump), and the difference against none.

    sudo .venv/bin/python benchmarks/probe_cost.py [--round-trips 100000] [--connections 10000] [--rounds 3]
        [--only pcap ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlab import REPO, HostCpu

NETNS = "lab-probe-cost"


def variants() -> tuple[str, ...]:
    """The probe sets measured, "none" first. Imported here, not at the top: the workload processes
    run this file too, and their start-up counts in the host's CPU."""
    from experiments.scenario import DEFAULT_PROBES, PROBES

    return (
        "none",
        "rtt",
        "lifetime,connect,retrans",
        "lifetime,state,connect,retrans",
        "pcap",
        ",".join(DEFAULT_PROBES),  # what a scenario runs unless it says otherwise
        ",".join(PROBES),
    )


# workload -> the flag that runs it in the namespace, and the unit of its figures
WORKLOADS = {"round trips": ("--ping-pong", "µs/rt"), "connections": ("--churn", "µs/conn")}


def ping_pong(round_trips: int) -> None:
    """Runs inside the namespace: prints the process CPU seconds the round trips took."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        for end in (client, peer):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.process_time()
        for _ in range(round_trips):
            client.sendall(b"q" * 64)
            peer.recv(64)
            peer.sendall(b"r" * 64)
            client.recv(64)
        print(time.process_time() - started)
        client.close()
        peer.close()


def churn(connections: int) -> None:
    """Runs inside the namespace: prints the process CPU seconds the connections took."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        started = time.process_time()
        for _ in range(connections):
            client = socket.create_connection(address)
            peer, _ = server.accept()
            client.sendall(b"q")
            peer.recv(1)
            peer.sendall(b"r")
            client.recv(1)
            client.close()
            peer.close()
        print(time.process_time() - started)


def in_netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def start_runner(probes: str, out: Path) -> subprocess.Popen[bytes]:
    runner = subprocess.Popen(
        in_netns(
            sys.executable,
            "-m",
            "collectors",
            "run",
            "--node",
            "bench",
            "--run-id",
            "probe-cost",
            "--out",
            str(out),
            "--probes",
            probes,
            "--iface",
            "lo",
        ),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            state = json.loads((out / "status.json").read_text())["state"]
        except (OSError, ValueError, KeyError):
            state = "starting"
        if state == "running":
            return runner
        if state in ("failed", "stopped") or runner.poll() is not None:
            break
        time.sleep(0.2)
    runner.terminate()
    raise SystemExit(f"the runner with --probes {probes} did not start: {runner.communicate()[1].decode()[-500:]}")


def measure(probes: str, workload: str, count: int, settle_s: float) -> tuple[float, float]:
    """(process CPU µs, host CPU µs) per round trip or connection with these probes watching."""
    with tempfile.TemporaryDirectory() as out:
        runner = None if probes == "none" else start_runner(probes, Path(out) / "probes")
        try:
            time.sleep(settle_s)
            before = HostCpu.now()
            result = subprocess.run(
                in_netns(sys.executable, __file__, WORKLOADS[workload][0], str(count)),
                capture_output=True,
                text=True,
                check=True,
            )
            busy = (HostCpu.now() - before).busy_s
        finally:
            if runner is not None:
                runner.terminate()
                runner.wait(timeout=60)
        time.sleep(settle_s)  # freeing the probes' maps happens after they exit
    return float(result.stdout) / count * 1e6, busy / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="each variant this many times, interleaved")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet around each measurement")
    parser.add_argument(
        "--only",
        action="append",
        metavar="PROBES",
        help="measure this probe set (comma-separated, repeatable) against none, instead of the usual sets",
    )
    parser.add_argument("--ping-pong", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--churn", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ping_pong:
        ping_pong(args.ping_pong)
        return
    if args.churn:
        churn(args.churn)
        return
    if os.geteuid() != 0:
        raise SystemExit("probe_cost.py needs root (a network namespace, bpftrace, tcpdump): run it with sudo")
    subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)  # left by an interrupted run
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(in_netns("ip", "link", "set", "lo", "up"), check=True)
        counts = {"round trips": args.round_trips, "connections": args.connections}
        measured = ("none", *args.only) if args.only else variants()
        figures: dict[str, dict[str, list[tuple[float, float]]]] = {w: {v: [] for v in measured} for w in WORKLOADS}
        for _ in range(args.rounds):
            for variant in measured:
                for workload in WORKLOADS:
                    figures[workload][variant].append(measure(variant, workload, counts[workload], args.settle))
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    print(
        f"loopback, median of {args.rounds} rounds: a ping-pong of {args.round_trips} round trips (2 data segments "
        f"each), and {args.connections} connections (connect, a byte each way, close)"
    )
    for workload in WORKLOADS:
        report(workload, figures[workload])


def report(workload: str, figures: dict[str, list[tuple[float, float]]]) -> None:
    median = {v: (statistics.median(p for p, _ in f), statistics.median(h for _, h in f)) for v, f in figures.items()}
    none_process, none_host = median["none"]
    unit = WORKLOADS[workload][1]
    print(f"\nper {workload[:-1]}")
    print(f"{'probes':<42}{'process ' + unit:>17}{'+process':>10}{'host ' + unit:>14}{'+host':>8}{'host ratio':>12}")
    for variant, (process, host) in median.items():
        print(
            f"{variant:<42}{process:>17.2f}{process - none_process:>10.2f}{host:>14.2f}{host - none_host:>8.2f}"
            f"{host / none_host:>12.3f}"
        )


if __name__ == "__main__":
    main()
