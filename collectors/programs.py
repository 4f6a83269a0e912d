"""The node's bpftrace program: one for every probe that is on (`program`), built from each
probe's `Part`. One process compiles once (minutes under TCG, each process parsing the kernel's
BTF again) and wakes once per flush tick and heartbeat; lifetime, state and connect share one
BPF program on TCP state transitions. The price: a probe whose part fails to compile or attach
takes the others with it, and the BPF run time and the process's CPU are one figure for them all
(turn probes on one at a time to cost each, as benchmarks/probe_cost.py does).

Conventions shared by every program (the runner relies on them):

- positional parameter ``$1`` is the network-namespace inode to keep; every event whose
  socket lives in another namespace is dropped in the kernel, so nodes that share a kernel
  (nspawn containers) each count only their own flows; ``$2`` and ``$3`` are the RTT windows'
  length (ns) and cap per second (passed whether or not rtt is on);
- ``BEGIN`` prints ``READY <nsecs>``; bpftrace runs ``BEGIN`` only after every probe
  attached, so that line is the runner's proof of a successful attach;
- events leave the kernel in batches, not one printf each: bpftrace 0.17 wakes its reader
  for every printf (a perf buffer with wakeup_events = 1), which costs ~10 µs in the
  traced TCP path and a context switch per event. An event of probe P is a tuple stored in
  one of P's two buffer maps, ``@P0[cpu, seq]`` or ``@P1[cpu, seq]``, where ``seq`` counts
  P's events on that CPU (``@P_emitted[cpu]``); ``@pending`` counts the events stored since
  the last flush. Every FLUSH_TICK_MS the program looks: once FLUSH_AT events are pending or
  FLUSH_EVERY_MS passed since the last flush with any pending, it switches buffers
  (``@flip``) and prints and clears the ones it filled, between two ``F`` lines (a flush
  costs bpftrace a walk of every buffer map and a wake-up, whatever it holds); END prints
  every buffer the same way, then each ``@P_emitted``. The runner drops an entry whose key
  the previous batch held: bpftrace discards pending output when it is stopped, so a batch
  can be printed while its clear() is lost, and END prints it again. ``@P_emitted`` minus
  what arrived is what was lost (a full buffer map);
- a tuple holds the event's CLOCK_MONOTONIC ns first, then its integers, then its
  addresses (ntop), then at most one string, last (a comm may hold ", "): integers first
  keep bpftrace's tuple layout free of padding;
- addresses are printed as IPv6 (IPv4 arrives v4-mapped) or as both an IPv4 and an IPv6
  rendering plus the socket family; the runner keeps the one that applies;
- ``END`` clears every other map so bpftrace prints nothing more on exit, except maps it
  prints on purpose (the RTT probe's windows still open at the stop): the tuples of all
  entries ``@map[key]: (a, b, ...)`` with one key, in the order printed, hold the fields
  of one event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FLUSH_TICK_MS = 100
FLUSH_EVERY_MS = 1000
FLUSH_AT = 4096  # a quarter of a buffer map (children.MAP_KEYS_MAX): a burst still fits the next tick

# The namespace test, applied to a `struct sock *`.
_NETNS = "((struct sock *){sk})->__sk_common.skc_net.net->ns.inum == $1"

READY = 'BEGIN { printf("READY %llu\\n", nsecs); }\n'

# TCP states (include/net/tcp_states.h).
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1 = 1, 2, 3, 4
CLOSE, LAST_ACK = 7, 9

_SET_STATE = "tracepoint:sock:inet_sock_set_state\n/args->protocol == 6 && " + _NETNS.format(sk="args->skaddr") + "/\n"
_ADDRESSES = "ntop(args->saddr_v6), ntop(args->daddr_v6)"
_PORTS = "(uint64)args->sport, (uint64)args->dport"


def _emit(probe: str, fields: str) -> str:
    """Store one event of `probe` (a tuple expression) in its buffer being filled."""
    return f"""$e_{probe} = ({fields});
    $s_{probe} = @{probe}_emitted[cpu] + 1;
    @{probe}_emitted[cpu] = $s_{probe};
    if (@flip == 0) {{ @{probe}0[cpu, $s_{probe}] = $e_{probe}; }} else {{ @{probe}1[cpu, $s_{probe}] = $e_{probe}; }}
    @pending = @pending + 1;"""


def _print_and_clear(probes: Sequence[str], buffer: int) -> str:
    return " ".join(f"print(@{p}{buffer}); clear(@{p}{buffer});" for p in probes)


def _flush(probes: Sequence[str]) -> str:
    return f"""interval:ms:{FLUSH_TICK_MS} /@pending/ {{
  if (@pending >= {FLUSH_AT} || nsecs - @flushed >= {FLUSH_EVERY_MS * 1_000_000}) {{
    @pending = 0;
    @flushed = nsecs;
    printf("F\\n");
    if (@flip == 0) {{ @flip = 1; {_print_and_clear(probes, 0)} }}
    else {{ @flip = 0; {_print_and_clear(probes, 1)} }}
    printf("F\\n");
  }}
}}
"""


def _end(probes: Sequence[str], extra: str) -> str:
    """END: the last batch (both buffers), the event counts, then the program's own maps."""
    last = " ".join(f"print(@{p}0); print(@{p}1);" for p in probes)
    counts = " ".join(f"print(@{p}_emitted);" for p in probes)
    cleared = " ".join(f"clear(@{p}0); clear(@{p}1); clear(@{p}_emitted);" for p in probes)
    return f"""END {{
  printf("F\\n"); {last} printf("F\\n"); {counts}
  {cleared} clear(@flip); clear(@pending); clear(@flushed);{extra}
}}
"""


# bpftrace 0.17 notices SIGINT/SIGTERM only when the signal interrupts its epoll_wait() or
# when it next handles an async event: a signal that lands while it is busy printing would
# leave an idle bpftrace running until killed, without its END output. An empty printf every
# second is such an event (nothing reaches stdout).
_HEARTBEAT = 'interval:s:1 { printf(""); }\n'


@dataclass(frozen=True)
class Part:
    """One probe's share of the node's program."""

    on_set_state: str = ""
    """Statements in the one block on inet_sock_set_state (this namespace's TCP sockets; `$k` is
    the socket's address)."""
    blocks: str = ""
    """Probe blocks of its own."""
    end: str = ""
    """END's statements for its own maps: clear them, or print those it prints on purpose."""
    prints_at_end: bool = False
    """Whether END prints its maps (`@map[key]: (...)`, the tuples of one key making one event)."""


def program(parts: Mapping[str, Part]) -> str:
    """The one bpftrace program for these probes (name -> its part)."""
    probes = list(parts)
    shared = "".join(part.on_set_state for part in parts.values())
    set_state = _SET_STATE + "{\n  $k = (uint64)args->skaddr;" + shared + "}\n" if shared else ""
    blocks = set_state + "".join(part.blocks for part in parts.values())
    return READY + blocks + _flush(probes) + _HEARTBEAT + _end(probes, "".join(part.end for part in parts.values()))


# Connection lifetime and bytes, modelled on libbpf-tools tcplife but filtered by netns and
# with payload-exact byte counts:
#   tx_bytes = bytes_sent - bytes_retrans (payload sent, each byte once; SYN/FIN carry none)
#   rx_bytes = bytes_received minus the FIN's sequence number when this socket processed the
#              peer's FIN. tcp_fin() marks exactly that socket SOCK_DONE, after its rcv_nxt (and
#              so bytes_received) moved past the FIN; a FIN that a time-wait successor took is
#              counted by neither. (The flag replaced a guess from state transitions, which took
#              FIN_WAIT2 -> CLOSE for "processed the FIN" unless a FIN_WAIT2 -> FIN_WAIT2 step came
#              first; a socket orphaned in FIN_WAIT2 and handed to time wait before the peer's FIN
#              closes that way without one, on Debian's 6.1 and on 6.18 alike: its rx_bytes came
#              out one short, or 2^64 - 1 when it had received nothing.)
# Event: (ns, birth_ns, sport, dport, tx_bytes, rx_bytes, pid, saddr, daddr, comm)
SOCK_DONE = 1  # enum sock_flags (include/net/sock.h): a bit of sk_flags


def lifetime(sock_flags: str) -> Part:
    """`sock_flags`: where struct sock keeps sk_flags on this kernel (detect.sock_flags_member)."""
    return Part(
        f"""
  if (args->newstate >= {ESTABLISHED} && args->newstate <= {SYN_RECV} && @birth[$k] == 0) {{
    @birth[$k] = nsecs;
  }}
  if (args->newstate == {SYN_SENT} ||
      ((args->newstate == {FIN_WAIT1} || args->newstate == {LAST_ACK}) && @pid[$k] == 0)) {{
    @pid[$k] = pid;
    @comm[$k] = comm;
  }}
  if (args->newstate == {CLOSE}) {{
    if (@birth[$k] != 0) {{
      $tp = (struct tcp_sock *)args->skaddr;
      $fin = (((struct sock *)args->skaddr)->{sock_flags} >> {SOCK_DONE}) & 1;
      {
            _emit(
                "lifetime",
                f"nsecs, @birth[$k], {_PORTS}, $tp->bytes_sent - $tp->bytes_retrans, "
                f"$tp->bytes_received - $fin, (uint64)@pid[$k], {_ADDRESSES}, @comm[$k]",
            )
        }
    }}
    delete(@birth[$k]); delete(@pid[$k]); delete(@comm[$k]);
  }}
""",
        end=" clear(@birth); clear(@pid); clear(@comm);",
    )


# Every TCP state transition of this namespace's sockets.
# Event: (ns, sport, dport, oldstate, newstate, saddr, daddr)
STATE = Part(
    f"""
  {_emit("state", f"nsecs, {_PORTS}, (uint64)args->oldstate, (uint64)args->newstate, {_ADDRESSES}")}
"""
)

# Active connects (SYN_SENT -> ESTABLISHED, with the pid/comm that called connect()) and
# passive accepts (SYN_RECV -> ESTABLISHED, in softirq: no meaningful pid, pid 0 and no comm).
# The connect() caller is kept from SYN_SENT to the socket's next transition, whichever it is
# (ESTABLISHED, or CLOSE for a refused connect): only that one deletes it, so the other
# transitions of a connection's life run no map operation here.
# Event: (ns, sport, dport, active (1 connect, 0 accept), pid, saddr, daddr, comm)
CONNECT = Part(
    f"""
  if (args->newstate == {SYN_SENT}) {{
    @connect_pid[$k] = pid;
    @connect_comm[$k] = comm;
  }}
  if (args->newstate == {ESTABLISHED} &&
      (args->oldstate == {SYN_SENT} || args->oldstate == {SYN_RECV})) {{
    {
        _emit(
            "connect",
            f"nsecs, {_PORTS}, (uint64)(args->oldstate == {SYN_SENT}), "
            f"(uint64)@connect_pid[$k], {_ADDRESSES}, @connect_comm[$k]",
        )
    }
  }}
  if (args->oldstate == {SYN_SENT}) {{
    delete(@connect_pid[$k]); delete(@connect_comm[$k]);
  }}
""",
    end=" clear(@connect_pid); clear(@connect_comm);",
)


# RTT windows, aggregated in the kernel: every received segment of a socket updates its open
# window (last smoothed RTT and cwnd, segment count, lowest and highest smoothed RTT); one
# event per window leaves the kernel, so the cost does not grow with the packet rate and no
# spike between two windows is lost. A window holds the segments of at most `$2` ns (from its
# first segment); it is emitted when the next segment opens a new one, when the socket
# closes, or printed (still open) by END. `$3` caps the windows per second for the whole
# namespace (approximate: the counter is not atomic across CPUs); a window that would pass
# the cap stays open and keeps aggregating.
# Event: (last_ns, srtt_us, snd_cwnd, first_ns, segments, srtt_min_us, srtt_max_us (the
#         @win tuple), family, sport, dport, saddr4, saddr6, daddr4, daddr6 (the @addr tuple)).
# The addresses are read from the socket when a window is emitted and kept in @addr only for
# END: a tuple holding them next to @win's would not fit the 512-byte BPF stack.
_RTT_EMIT = """$s = (struct sock *){sk};
    {emit}"""
_RTT_FIELDS = (
    "$w.0, $w.1, $w.2, $w.3, $w.4, $w.5, $w.6, (uint64)$s->__sk_common.skc_family, "
    "(uint64)({sport}), (uint64)({dport}), "
    "ntop(2, $s->__sk_common.skc_rcv_saddr), ntop($s->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8), "
    "ntop(2, $s->__sk_common.skc_daddr), ntop($s->__sk_common.skc_v6_daddr.in6_u.u6_addr8)"
)
_RTT_WINDOW = """
  $k = (uint64){sk};
  $now = nsecs;
  $w = @win[$k];
  $n = $w.4;
  if ($n > 0 && $now - $w.3 >= $2 && @lines < $3) {{
    @lines = @lines + 1;
    {emit_window}
    $n = 0;
  }}
  if ($w.0 == 0) {{
    $sk = (struct sock *){sk};
    @addr[$k] = ((uint64)$sk->__sk_common.skc_family, (uint64)({sport}), (uint64)({dport}),
                 ntop(2, $sk->__sk_common.skc_rcv_saddr),
                 ntop($sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8),
                 ntop(2, $sk->__sk_common.skc_daddr),
                 ntop($sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8));
  }}
  $srtt = (uint64)({srtt});
  @win[$k] = ($now, $srtt, (uint64)({cwnd}), $n == 0 ? $now : $w.3, $n + 1,
              ($n == 0 || $srtt < $w.5) ? $srtt : $w.5, ($n == 0 || $srtt > $w.6) ? $srtt : $w.6);
}}
interval:s:1 {{ @lines = 0; }}
"""
# A window ends with its socket: a block of its own on inet_sock_set_state, since emitting the
# window's tuple beside the shared block's events would pass the 512-byte BPF stack.
_RTT_CLOSE = """tracepoint:sock:inet_sock_set_state /args->newstate == {close}/ {{
  $w = @win[(uint64)args->skaddr];
  if ($w.4 > 0) {{
    {emit_at_close}
  }}
  delete(@win[(uint64)args->skaddr]);
  delete(@addr[(uint64)args->skaddr]);
}}
"""
_RTT_END = " clear(@lines); print(@win); print(@addr); clear(@win); clear(@addr);"


def _rtt_emit(sk: str, sport: str, dport: str) -> str:
    return _RTT_EMIT.format(sk=sk, emit=_emit("rtt", _RTT_FIELDS.format(sport=sport, dport=dport)))


def _rtt(probe: str, sk: str, sport: str, dport: str, srtt: str, cwnd: str) -> Part:
    """The RTT windows, fed by `probe` (a tracepoint or kprobe on every received segment)."""
    window = _RTT_WINDOW.format(
        sk=sk, sport=sport, dport=dport, srtt=srtt, cwnd=cwnd, emit_window=_rtt_emit(sk, sport, dport)
    )
    close = _RTT_CLOSE.format(close=CLOSE, emit_at_close=_rtt_emit("args->skaddr", "args->sport", "args->dport"))
    return Part(blocks=f"{probe}\n/{_NETNS.format(sk=sk)}/\n{{{window}{close}", end=_RTT_END, prints_at_end=True)


# tcp:tcp_probe carries skaddr since Linux 6.10; srtt there is already in microseconds.
RTT_TRACEPOINT = _rtt(
    "tracepoint:tcp:tcp_probe", "args->skaddr", "args->sport", "args->dport", "args->srtt", "args->snd_cwnd"
)

# Older kernels (Debian bookworm's 6.1): the same window from tcp_rcv_established(), where
# tcp_probe is called, through a kprobe.
_SK = "((struct sock *)arg0)"
RTT_KPROBE = _rtt(
    "kprobe:tcp_rcv_established",
    "arg0",
    f"{_SK}->__sk_common.skc_num",
    f"(({_SK}->__sk_common.skc_dport >> 8) | (({_SK}->__sk_common.skc_dport << 8) & 0xff00))",
    "((struct tcp_sock *)arg0)->srtt_us >> 3",
    "((struct tcp_sock *)arg0)->snd_cwnd",
)

# Event: (ns, sport, dport, state, saddr, daddr)
RETRANS = Part(
    blocks="tracepoint:tcp:tcp_retransmit_skb\n/"
    + _NETNS.format(sk="args->skaddr")
    + f"""/
{{
  {_emit("retrans", f"nsecs, {_PORTS}, (uint64)args->state, {_ADDRESSES}")}
}}
"""
)
