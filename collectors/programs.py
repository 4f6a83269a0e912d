"""bpftrace programs, one per probe.

Conventions shared by every program (the runner relies on them):

- positional parameter ``$1`` is the network-namespace inode to keep; every event whose
  socket lives in another namespace is dropped in the kernel, so nodes that share a kernel
  (nspawn containers) each count only their own flows;
- ``BEGIN`` prints ``READY <nsecs>``; bpftrace runs ``BEGIN`` only after every probe
  attached, so that line is the runner's proof of a successful attach;
- events leave the kernel in batches, not one printf each: bpftrace 0.17 wakes its reader
  for every printf (a perf buffer with wakeup_events = 1), which costs ~10 µs in the
  traced TCP path and a context switch per event. An event is a tuple stored in one of two
  buffer maps, ``@buf0[cpu, seq]`` or ``@buf1[cpu, seq]``, where ``seq`` counts the
  events of that CPU (``@emitted[cpu]``). Every FLUSH_MS, if anything was stored, the
  program switches buffers (``@flip``) and prints and clears the one it filled, between
  two ``F`` lines; END prints both buffers the same way, then ``@emitted``. The runner
  drops an entry whose key the previous batch held: bpftrace discards pending output when
  it is stopped, so a batch can be printed while its clear() is lost, and END prints it
  again. ``@emitted`` minus what arrived is what was lost (a full buffer map);
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

FLUSH_MS = 100

# The namespace test, applied to a `struct sock *`.
_NETNS = "((struct sock *){sk})->__sk_common.skc_net.net->ns.inum == $1"

READY = 'BEGIN { printf("READY %llu\\n", nsecs); }\n'

# TCP states (include/net/tcp_states.h).
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2 = 1, 2, 3, 4, 5
CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING = 7, 8, 9, 11

_SET_STATE = (
    "tracepoint:sock:inet_sock_set_state\n"
    "/args->protocol == 6 && " + _NETNS.format(sk="args->skaddr") + "/\n"
)
_ADDRESSES = "ntop(args->saddr_v6), ntop(args->daddr_v6)"
_PORTS = "(uint64)args->sport, (uint64)args->dport"


def _emit(fields: str) -> str:
    """Store one event (a tuple expression) in the buffer being filled."""
    return f"""$event = ({fields});
    $seq = @emitted[cpu] + 1;
    @emitted[cpu] = $seq;
    if (@flip == 0) {{ @buf0[cpu, $seq] = $event; }} else {{ @buf1[cpu, $seq] = $event; }}
    @pending = 1;"""


_FLUSH = f"""interval:ms:{FLUSH_MS} /@pending/ {{
  @pending = 0;
  printf("F\\n");
  if (@flip == 0) {{ @flip = 1; print(@buf0); clear(@buf0); }}
  else {{ @flip = 0; print(@buf1); clear(@buf1); }}
  printf("F\\n");
}}
"""


def _end(extra: str = "") -> str:
    """END: the last batch (both buffers), the event counts, then the program's own maps."""
    return f"""END {{
  printf("F\\n"); print(@buf0); print(@buf1); printf("F\\n"); print(@emitted);
  clear(@buf0); clear(@buf1); clear(@emitted); clear(@flip); clear(@pending);{extra}
}}
"""


def _batched(probes: str, extra_end: str = "") -> str:
    return READY + probes + _FLUSH + _end(extra_end)


# Connection lifetime and bytes, modelled on libbpf-tools tcplife but filtered by netns and
# with payload-exact byte counts:
#   tx_bytes = bytes_sent - bytes_retrans (payload sent, each byte once; SYN/FIN carry none)
#   rx_bytes = bytes_received minus the FIN's sequence number when this socket (not its
#              time-wait successor) processed the peer's FIN: ESTABLISHED->CLOSE_WAIT,
#              FIN_WAIT1->CLOSING, or FIN_WAIT2->CLOSE without first being handed to a
#              time-wait socket (FIN_WAIT2->FIN_WAIT2).
# Event: (ns, birth_ns, sport, dport, tx_bytes, rx_bytes, pid, saddr, daddr, comm)
LIFETIME = _batched(
    _SET_STATE
    + f"""{{
  $k = (uint64)args->skaddr;
  if (args->newstate >= {ESTABLISHED} && args->newstate <= {SYN_RECV} && @birth[$k] == 0) {{
    @birth[$k] = nsecs;
  }}
  if (args->newstate == {SYN_SENT} ||
      ((args->newstate == {FIN_WAIT1} || args->newstate == {LAST_ACK}) && @pid[$k] == 0)) {{
    @pid[$k] = pid;
    @comm[$k] = comm;
  }}
  if (args->newstate == {CLOSE_WAIT} || args->newstate == {CLOSING}) {{
    @fin[$k] = 1;
  }}
  if (args->oldstate == {FIN_WAIT2} && args->newstate == {FIN_WAIT2}) {{
    @tw[$k] = 1;
  }}
  if (args->oldstate == {FIN_WAIT2} && args->newstate == {CLOSE} && @tw[$k] == 0) {{
    @fin[$k] = 1;
  }}
  if (args->newstate == {CLOSE}) {{
    if (@birth[$k] != 0) {{
      $tp = (struct tcp_sock *)args->skaddr;
      {_emit(f"nsecs, @birth[$k], {_PORTS}, $tp->bytes_sent - $tp->bytes_retrans, "
             f"$tp->bytes_received - (uint64)@fin[$k], (uint64)@pid[$k], {_ADDRESSES}, @comm[$k]")}
    }}
    delete(@birth[$k]); delete(@pid[$k]); delete(@comm[$k]); delete(@fin[$k]); delete(@tw[$k]);
  }}
}}
""",
    " clear(@birth); clear(@pid); clear(@comm); clear(@fin); clear(@tw);",
)

# Every TCP state transition of this namespace's sockets.
# Event: (ns, sport, dport, oldstate, newstate, saddr, daddr)
STATE = _batched(
    _SET_STATE
    + f"""{{
  {_emit(f"nsecs, {_PORTS}, (uint64)args->oldstate, (uint64)args->newstate, {_ADDRESSES}")}
}}
"""
)

# Active connects (SYN_SENT -> ESTABLISHED, with the pid/comm that called connect()) and
# passive accepts (SYN_RECV -> ESTABLISHED, in softirq: no meaningful pid, pid 0 and no comm).
# Event: (ns, sport, dport, active (1 connect, 0 accept), pid, saddr, daddr, comm)
CONNECT = _batched(
    _SET_STATE
    + f"""{{
  $k = (uint64)args->skaddr;
  if (args->newstate == {SYN_SENT}) {{
    @pid[$k] = pid;
    @comm[$k] = comm;
  }}
  if (args->newstate == {ESTABLISHED} &&
      (args->oldstate == {SYN_SENT} || args->oldstate == {SYN_RECV})) {{
    {_emit(f"nsecs, {_PORTS}, (uint64)(args->oldstate == {SYN_SENT}), (uint64)@pid[$k], "
           f"{_ADDRESSES}, @comm[$k]")}
  }}
  if (args->newstate != {SYN_SENT}) {{
    delete(@pid[$k]); delete(@comm[$k]);
  }}
}}
""",
    " clear(@pid); clear(@comm);",
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
tracepoint:sock:inet_sock_set_state /args->newstate == {close}/ {{
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
    return _RTT_EMIT.format(sk=sk, emit=_emit(_RTT_FIELDS.format(sport=sport, dport=dport)))


def _rtt_window(sk: str, sport: str, dport: str, srtt: str, cwnd: str) -> str:
    return _RTT_WINDOW.format(
        sk=sk, sport=sport, dport=dport, srtt=srtt, cwnd=cwnd, close=CLOSE,
        emit_window=_rtt_emit(sk, sport, dport),
        emit_at_close=_rtt_emit("args->skaddr", "args->sport", "args->dport"),
    )


# tcp:tcp_probe carries skaddr since Linux 6.10; srtt there is already in microseconds.
RTT_TRACEPOINT = _batched(
    "tracepoint:tcp:tcp_probe\n/"
    + _NETNS.format(sk="args->skaddr")
    + "/\n{"
    + _rtt_window("args->skaddr", "args->sport", "args->dport", "args->srtt", "args->snd_cwnd"),
    _RTT_END,
)

# Older kernels (Debian bookworm's 6.1): the same window from tcp_rcv_established(), where
# tcp_probe is called, through a kprobe.
_SK = "((struct sock *)arg0)"
RTT_KPROBE = _batched(
    "kprobe:tcp_rcv_established\n/"
    + _NETNS.format(sk="arg0")
    + "/\n{"
    + _rtt_window(
        "arg0",
        f"{_SK}->__sk_common.skc_num",
        f"(({_SK}->__sk_common.skc_dport >> 8) | (({_SK}->__sk_common.skc_dport << 8) & 0xff00))",
        "((struct tcp_sock *)arg0)->srtt_us >> 3",
        "((struct tcp_sock *)arg0)->snd_cwnd",
    ),
    _RTT_END,
)

# Event: (ns, sport, dport, state, saddr, daddr)
RETRANS = _batched(
    "tracepoint:tcp:tcp_retransmit_skb\n/"
    + _NETNS.format(sk="args->skaddr")
    + f"""/
{{
  {_emit(f"nsecs, {_PORTS}, (uint64)args->state, {_ADDRESSES}")}
}}
"""
)
