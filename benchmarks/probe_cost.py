"""Per-packet cost of each probe, without a lab: a TCP ping-pong over loopback in a private network
namespace, with the probe runner (`python -m collectors run`) watching that namespace with one probe
at a time, against no probe, in alternating rounds. Prints the CPU time per round trip (two data
segments) of the ping-pong process (what the kernel does in line: BPF programs, packet taps) and of
the whole host (adds the probes' user space), and the difference per round trip against none.

    sudo .venv/bin/python benchmarks/probe_cost.py [--round-trips 100000] [--rounds 3]
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
VARIANTS = ("none", "rtt", "lifetime,state,connect,retrans", "pcap", "lifetime,state,connect,rtt,retrans,pcap")


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


def measure(probes: str, round_trips: int, settle_s: float) -> tuple[float, float]:
    """(process CPU µs, host CPU µs) per round trip with these probes watching."""
    with tempfile.TemporaryDirectory() as out:
        runner = None if probes == "none" else start_runner(probes, Path(out) / "probes")
        try:
            time.sleep(settle_s)
            before = HostCpu.now()
            result = subprocess.run(
                in_netns(sys.executable, __file__, "--ping-pong", str(round_trips)),
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
    return float(result.stdout) / round_trips * 1e6, busy / round_trips * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="each variant this many times, interleaved")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet around each measurement")
    parser.add_argument("--ping-pong", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ping_pong:
        ping_pong(args.ping_pong)
        return
    if os.geteuid() != 0:
        raise SystemExit("probe_cost.py needs root (a network namespace, bpftrace, tcpdump): run it with sudo")
    subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)  # left by an interrupted run
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(in_netns("ip", "link", "set", "lo", "up"), check=True)
        figures: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                figures[variant].append(measure(variant, args.round_trips, args.settle))
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    report(figures, args)


def report(figures: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    median = {v: (statistics.median(p for p, _ in f), statistics.median(h for _, h in f)) for v, f in figures.items()}
    none_process, none_host = median["none"]
    print(f"loopback ping-pong, {args.round_trips} round trips (2 data segments each), median of {args.rounds} rounds")
    print(f"{'probes':<42}{'process µs/rt':>15}{'+process':>10}{'host µs/rt':>12}{'+host':>8}{'host ratio':>12}")
    for variant, (process, host) in median.items():
        print(
            f"{variant:<42}{process:>15.2f}{process - none_process:>10.2f}{host:>12.2f}{host - none_host:>8.2f}"
            f"{host / none_host:>12.3f}"
        )


if __name__ == "__main__":
    main()
