"""The offset that turns the kernel's CLOCK_MONOTONIC (bpftrace's `nsecs`) into wall-clock time."""

from __future__ import annotations

import time
from dataclasses import dataclass

SAMPLES = 9


@dataclass(frozen=True)
class ClockOffset:
    """wall-clock ns = monotonic ns + offset_ns, known to within +/- uncertainty_ns."""

    offset_ns: int
    uncertainty_ns: int
    measured_at_ns: int

    def to_wall(self, monotonic_ns: int) -> int:
        return monotonic_ns + self.offset_ns


def measure(samples: int = SAMPLES) -> ClockOffset:
    """Bracket a monotonic reading between two real-time readings; keep the tightest pair."""
    best: ClockOffset | None = None
    for _ in range(samples):
        before = time.clock_gettime_ns(time.CLOCK_REALTIME)
        monotonic = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        after = time.clock_gettime_ns(time.CLOCK_REALTIME)
        half_width = (after - before + 1) // 2
        if best is None or half_width < best.uncertainty_ns:
            best = ClockOffset((before + after) // 2 - monotonic, half_width, after)
    assert best is not None
    return best
