"""`python3 -m collectors run ...` and `python3 -m collectors detect` (stdlib only: this runs
with the node's /usr/bin/python3)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from collectors.detect import detect
from collectors.runner import ALL_PROBES, RunConfig, Runner, RunnerError, prepare_out_dir, selection

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def _name(value: str) -> str:
    if not NAME.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} must be letters, digits, '.', '_', ':' or '-' (no spaces)")
    return value


def _netns(value: str) -> str:
    if value != "auto" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} must be 'auto' or an inode number")
    return value


def _probe_list(value: str) -> list[str]:
    probes = [p for p in value.split(",") if p]
    unknown = [p for p in probes if p not in ALL_PROBES]
    if unknown or not probes:
        named = ",".join(unknown) if unknown else repr(value)
        raise argparse.ArgumentTypeError(f"unknown probe {named}; choose from {','.join(ALL_PROBES)}")
    return probes


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive integer")
    return int(value)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python3 -m collectors", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("detect", help="print what attaches on this kernel, as JSON")
    run = commands.add_parser("run", help="run the probes until SIGTERM/SIGINT")
    run.add_argument("--node", required=True, type=_name, help="node name put in every record")
    run.add_argument("--run-id", required=True, type=_name, help="run id put in every record")
    run.add_argument("--out", required=True, type=Path, help="directory for JSONL, pcap, status.json")
    run.add_argument(
        "--iface",
        action="append",
        default=[],
        help="interface to capture (repeatable); default: every non-loopback one",
    )
    run.add_argument(
        "--netns-inode",
        default="auto",
        type=_netns,
        help="network namespace to observe; 'auto' = the runner's own",
    )
    run.add_argument(
        "--probes",
        type=_probe_list,
        default=list(ALL_PROBES),
        help=f"comma-separated subset of {','.join(ALL_PROBES)} (default: all)",
    )
    run.add_argument(
        "--rtt-interval-ms",
        type=_positive,
        default=100,
        help="length of one RTT window of a socket, aggregated in the kernel (default 100)",
    )
    run.add_argument(
        "--rtt-max-per-s",
        type=_positive,
        default=1000,
        help="most RTT window records per second in total (default 1000)",
    )
    run.add_argument(
        "--bpf-stats",
        action="store_true",
        help="measure the kernel's time in the probes' BPF programs (two clock reads per program "
        "run, ~0.2 µs on a VM's clock: off by default)",
    )
    return top


def cmd_detect() -> int:
    detection = detect()
    print(json.dumps({**detection.to_dict(), "probes": selection(detection)}, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise RunnerError("the probes need root (bpftrace, tcpdump): run as root")
    prepare_out_dir(args.out)
    detection = detect()
    config = RunConfig(
        node=args.node,
        run_id=args.run_id,
        out=args.out.resolve(),
        netns_inode=detection.netns_inode if args.netns_inode == "auto" else int(args.netns_inode),
        probes=tuple(dict.fromkeys(args.probes)),
        interfaces=tuple(args.iface),
        rtt_interval_ms=args.rtt_interval_ms,
        rtt_max_per_s=args.rtt_max_per_s,
        bpf_stats=args.bpf_stats,
    )
    (config.out / "runner.pid").write_text(f"{os.getpid()}\n")
    Runner(config, detection).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return cmd_detect() if args.command == "detect" else cmd_run(args)
    except (RunnerError, OSError) as e:
        print(f"collectors: error: {e}", file=sys.stderr)
        return 1
