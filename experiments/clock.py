"""Clock offset of a node against the controller, NTP-style over one SSH channel.

A tiny loop on the node answers each line with its `time.time_ns()`; the controller notes
its own clock before sending and after receiving. The sample with the shortest round trip
bounds the offset best: offset = t_node - (t_send + t_recv) / 2, uncertainty = rtt / 2.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

import paramiko

from lab.runlayout import ClockOffset

ECHO_LOOP = "import sys,time\nprint('ready',flush=True)\nfor _ in sys.stdin: print(time.time_ns(),flush=True)"
SAMPLES = 15


@dataclass(frozen=True)
class Sample:
    sent_ns: int
    node_ns: int
    received_ns: int

    @property
    def rtt_ns(self) -> int:
        return self.received_ns - self.sent_ns


def best_offset(samples: list[Sample]) -> ClockOffset:
    if not samples:
        raise ValueError("no clock samples")
    best = min(samples, key=lambda s: s.rtt_ns)
    return ClockOffset(
        offset_ns=best.node_ns - (best.sent_ns + best.received_ns) // 2,
        uncertainty_ns=(best.rtt_ns + 1) // 2,
        samples=len(samples),
        measured_at_ns=best.sent_ns,
    )


def measure(transport: paramiko.Transport, samples: int = SAMPLES, timeout_s: float = 30.0) -> ClockOffset:
    """Run the echo loop on the node over one new channel of `transport` and take `samples` ping-pongs."""
    channel = transport.open_session(timeout=timeout_s)
    try:
        channel.settimeout(timeout_s)
        channel.exec_command(f"python3 -u -c {shlex.quote(ECHO_LOOP)}")
        replies = channel.makefile("rb")
        if replies.readline().strip() != b"ready":
            raise RuntimeError("the clock echo loop did not start (is python3 on the node?)")
        taken = []
        for _ in range(samples):
            sent = time.time_ns()
            channel.sendall(b"\n")
            answer = replies.readline()
            received = time.time_ns()
            taken.append(Sample(sent, int(answer), received))
        channel.shutdown_write()
        return best_offset(taken)
    finally:
        channel.close()
