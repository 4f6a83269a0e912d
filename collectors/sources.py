"""Probes, their candidate sources in order of preference, and the parsers of their output.

A source is usable when the detection shows everything it needs; the first usable
candidate of a probe wins. Every network source filters by network namespace in the kernel
(see programs.py), which is why bpftrace programs on tracepoints are preferred over
libbpf-tools/BCC tools: those cannot filter by namespace, and their byte counts are in KiB.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from collectors import programs
from collectors.detect import Detection

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
AF_INET = 2
# programs.py's output: a buffered event of a probe, a probe's event count on one CPU.
BUFFER_ENTRY = re.compile(r"@([a-z]+)[01]\[(\d+), (\d+)\]: \((.*)\)")
EMITTED_ENTRY = re.compile(r"@([a-z]+)_emitted\[(\d+)\]: (\d+)")
MAP_ENTRY = re.compile(r"@\w+\[([^\]]*)\]: \((.*)\)")


class ParseError(ValueError):
    """An event tuple that does not have the shape its program stores."""


@dataclass(frozen=True)
class Event:
    """One parsed event: its kernel monotonic time, the 5-tuple and the probe's own fields.
    Fields named in `mono_fields` hold monotonic ns and are converted to wall clock too."""

    mono_ns: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    fields: dict[str, object]
    mono_fields: tuple[str, ...] = ()


Parser = Callable[[str], Event]
Requirement = Callable[[Detection], str | None]


@dataclass(frozen=True)
class Source:
    """One way to produce a probe's records. `part` builds the probe's share of the node's one
    bpftrace program (programs.program) for this node; None for tcpdump. `parse` turns one event
    tuple (the text between the parentheses) into an Event; `requires` names what is missing on
    this node, or returns None."""

    name: str
    tool: str
    requires: tuple[Requirement, ...]
    part: Callable[[Detection], programs.Part] | None = None
    parse: Parser | None = None
    tracepoints: tuple[str, ...] = ()  # those its part attaches to (see collectors/gate.py)

    def missing(self, detection: Detection) -> list[str]:
        return [reason for check in self.requires if (reason := check(detection)) is not None]


@functools.lru_cache(maxsize=4096)  # a node talks to few addresses; parsing one costs microseconds
def address(text: str) -> str:
    """An address as printed by bpftrace's ntop(), IPv4-mapped IPv6 turned back into IPv4."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def state_name(number: str) -> str:
    return TCP_STATES.get(int(number), f"UNKNOWN_{number}")


def _fields(text: str, count: int) -> list[str]:
    """The `count` fields of a printed tuple; the last may be a string holding ", "."""
    parts = text.split(", ", count - 1)
    if len(parts) != count:
        raise ParseError(f"expected {count} fields: ({text})")
    return parts


def _tuple(saddr: str, sport: str, daddr: str, dport: str) -> dict[str, object]:
    return {"saddr": address(saddr), "sport": int(sport), "daddr": address(daddr), "dport": int(dport)}


def parse_lifetime(text: str) -> Event:
    ts, birth, sport, dport, tx, rx, pid, saddr, daddr, comm = _fields(text, 10)
    return Event(
        mono_ns=int(ts),
        **_tuple(saddr, sport, daddr, dport),  # type: ignore[arg-type]
        fields={
            "pid": int(pid),
            "comm": comm,
            "tx_bytes": int(tx),
            "rx_bytes": int(rx),
            "duration_ns": int(ts) - int(birth),
            "start_ns": int(birth),
        },
        mono_fields=("start_ns",),
    )


def parse_state(text: str) -> Event:
    ts, sport, dport, old, new, saddr, daddr = _fields(text, 7)
    return Event(
        mono_ns=int(ts),
        **_tuple(saddr, sport, daddr, dport),  # type: ignore[arg-type]
        fields={"oldstate": state_name(old), "newstate": state_name(new)},
    )


def parse_connect(text: str) -> Event:
    ts, sport, dport, active, pid, saddr, daddr, comm = _fields(text, 8)
    fields: dict[str, object] = {"direction": "connect" if int(active) else "accept"}
    if int(active):
        fields.update(pid=int(pid), comm=comm)
    return Event(mono_ns=int(ts), **_tuple(saddr, sport, daddr, dport), fields=fields)  # type: ignore[arg-type]


def parse_rtt(text: str) -> Event:
    """One RTT window (programs.RTT_TRACEPOINT, RTT_KPROBE): stamped with its last segment."""
    last, srtt, cwnd, first, segments, low, high, family, sport, dport, s4, s6, d4, d6 = _fields(text, 14)
    v4 = int(family) == AF_INET
    return Event(
        mono_ns=int(last),
        **_tuple(s4 if v4 else s6, sport, d4 if v4 else d6, dport),  # type: ignore[arg-type]
        fields={
            "srtt_us": int(srtt),
            "snd_cwnd": int(cwnd),
            "first_ns": int(first),
            "segments": int(segments),
            "srtt_min_us": int(low),
            "srtt_max_us": int(high),
        },
        mono_fields=("first_ns",),
    )


def parse_retrans(text: str) -> Event:
    ts, sport, dport, state, saddr, daddr = _fields(text, 6)
    return Event(
        mono_ns=int(ts),
        **_tuple(saddr, sport, daddr, dport),  # type: ignore[arg-type]
        fields={"state": state_name(state)},
    )


# --- requirements -----------------------------------------------------------------------


def needs_tool(tool: str) -> Requirement:
    return lambda d: None if d.tools.get(tool) else f"{tool} is not installed"


def needs_btf(d: Detection) -> str | None:
    return None if d.btf else "kernel has no BTF (/sys/kernel/btf/vmlinux)"


def needs_tracepoint(tracepoint: str, field: str = "skaddr") -> Requirement:
    def check(d: Detection) -> str | None:
        if d.tracefs.path is None:
            return d.tracefs.error or "tracefs unavailable"
        if tracepoint not in d.tracepoints:
            return f"tracepoint {tracepoint} does not exist"
        if not d.has_tracepoint_field(tracepoint, field):
            return f"tracepoint {tracepoint} has no {field} field (needed for the netns filter)"
        return None

    return check


def needs_kprobes(d: Detection) -> str | None:
    return None if d.kprobes.available else f"no kprobes: {d.kprobes.reason}"


_BPFTRACE = (needs_tool("bpftrace"), needs_btf)
_SET_STATE = "sock:inet_sock_set_state"


def needs_sock_flags(d: Detection) -> str | None:
    return (
        None
        if d.sock_flags
        else "the kernel's BTF shows no sk_flags in struct sock (it tells whether a socket took the peer's FIN)"
    )


def _on_set_state(part: Callable[[Detection], programs.Part], parse: Parser, *requires: Requirement) -> Source:
    """lifetime, state and connect: statements in the program's one inet_sock_set_state block."""
    return Source(
        f"bpftrace tracepoint:{_SET_STATE}",
        "bpftrace",
        (*_BPFTRACE, needs_tracepoint(_SET_STATE), *requires),
        part,
        parse,
        (_SET_STATE,),
    )


# Probe name -> candidate sources, best first. "pcap" is handled by the runner per interface.
PROBES: dict[str, tuple[Source, ...]] = {
    "lifetime": (_on_set_state(lambda d: programs.lifetime(d.sock_flags or ""), parse_lifetime, needs_sock_flags),),
    "state": (_on_set_state(lambda _: programs.STATE, parse_state),),
    "connect": (_on_set_state(lambda _: programs.CONNECT, parse_connect),),
    "rtt": (
        Source(
            "bpftrace tracepoint:tcp:tcp_probe",
            "bpftrace",
            (*_BPFTRACE, needs_tracepoint("tcp:tcp_probe")),
            lambda _: programs.RTT_TRACEPOINT,
            parse_rtt,
            ("tcp:tcp_probe", _SET_STATE),  # windows end when their socket closes
        ),
        Source(
            "bpftrace kprobe:tcp_rcv_established",
            "bpftrace",
            (*_BPFTRACE, needs_kprobes),
            lambda _: programs.RTT_KPROBE,
            parse_rtt,
            (_SET_STATE,),
        ),
    ),
    "retrans": (
        Source(
            "bpftrace tracepoint:tcp:tcp_retransmit_skb",
            "bpftrace",
            (*_BPFTRACE, needs_tracepoint("tcp:tcp_retransmit_skb")),
            lambda _: programs.RETRANS,
            parse_retrans,
            ("tcp:tcp_retransmit_skb",),
        ),
    ),
    "pcap": (Source("tcpdump -s 96", "tcpdump", (needs_tool("tcpdump"),)),),
}


@dataclass(frozen=True)
class Choice:
    """The source picked for a probe, or why none could be."""

    probe: str
    source: Source | None
    unavailable: str | None = None

    def to_dict(self) -> dict[str, object]:
        if self.source is None:
            return {"unavailable": self.unavailable}
        return {"source": self.source.name, "tool": self.source.tool}


def choose(probe: str, detection: Detection) -> Choice:
    reasons = []
    for source in PROBES[probe]:
        missing = source.missing(detection)
        if not missing:
            return Choice(probe, source)
        reasons.append(f"{source.name}: {'; '.join(missing)}")
    return Choice(probe, None, unavailable=" | ".join(reasons))
