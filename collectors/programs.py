"""bpftrace programs, one per probe.

Conventions shared by every program (the runner relies on them):

- positional parameter ``$1`` is the network-namespace inode to keep; every event whose
  socket lives in another namespace is dropped in the kernel, so nodes that share a kernel
  (nspawn containers) each count only their own flows;
- ``BEGIN`` prints ``READY <nsecs>``; bpftrace runs ``BEGIN`` only after every probe
  attached, so that line is the runner's proof of a successful attach;
- each event is one line ``E <nsecs> <fields...>`` (``nsecs`` is CLOCK_MONOTONIC);
  the runner converts it to wall-clock time;
- addresses are printed as IPv6 (IPv4 arrives v4-mapped) or as both an IPv4 and an IPv6
  rendering plus the socket family; the runner keeps the one that applies;
- ``END`` clears every map so bpftrace prints nothing on exit, except maps it prints on
  purpose (the RTT probe's windows still open at the stop): the tuples of all entries
  ``@map[key]: (a, b, ...)`` with one key, in the order printed, hold the fields of one E line.
"""

from __future__ import annotations

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

# Connection lifetime and bytes, modelled on libbpf-tools tcplife but filtered by netns and
# with payload-exact byte counts:
#   tx_bytes = bytes_sent - bytes_retrans (payload sent, each byte once; SYN/FIN carry none)
#   rx_bytes = bytes_received minus the FIN's sequence number when this socket (not its
#              time-wait successor) processed the peer's FIN: ESTABLISHED->CLOSE_WAIT,
#              FIN_WAIT1->CLOSING, or FIN_WAIT2->CLOSE without first being handed to a
#              time-wait socket (FIN_WAIT2->FIN_WAIT2).
LIFETIME = (
    READY
    + _SET_STATE
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
      printf("E %llu %llu %s %d %s %d %llu %llu %d %s\\n", nsecs, @birth[$k],
             ntop(args->saddr_v6), args->sport, ntop(args->daddr_v6), args->dport,
             $tp->bytes_sent - $tp->bytes_retrans, $tp->bytes_received - (uint64)@fin[$k],
             @pid[$k], @comm[$k]);
    }}
    delete(@birth[$k]); delete(@pid[$k]); delete(@comm[$k]); delete(@fin[$k]); delete(@tw[$k]);
  }}
}}
END {{ clear(@birth); clear(@pid); clear(@comm); clear(@fin); clear(@tw); }}
"""
)

# Every TCP state transition of this namespace's sockets.
STATE = (
    READY
    + _SET_STATE
    + """{
  printf("E %llu %s %d %s %d %d %d\\n", nsecs, ntop(args->saddr_v6), args->sport,
         ntop(args->daddr_v6), args->dport, args->oldstate, args->newstate);
}
"""
)

# Active connects (SYN_SENT -> ESTABLISHED, with the pid/comm that called connect()) and
# passive accepts (SYN_RECV -> ESTABLISHED, in softirq: no meaningful pid).
CONNECT = (
    READY
    + _SET_STATE
    + f"""{{
  $k = (uint64)args->skaddr;
  if (args->newstate == {SYN_SENT}) {{
    @pid[$k] = pid;
    @comm[$k] = comm;
  }}
  if (args->oldstate == {SYN_SENT} && args->newstate == {ESTABLISHED}) {{
    printf("E %llu %s %d %s %d connect %d %s\\n", nsecs, ntop(args->saddr_v6), args->sport,
           ntop(args->daddr_v6), args->dport, @pid[$k], @comm[$k]);
  }}
  if (args->oldstate == {SYN_RECV} && args->newstate == {ESTABLISHED}) {{
    printf("E %llu %s %d %s %d accept\\n", nsecs, ntop(args->saddr_v6), args->sport,
           ntop(args->daddr_v6), args->dport);
  }}
  if (args->newstate != {SYN_SENT}) {{
    delete(@pid[$k]); delete(@comm[$k]);
  }}
}}
END {{ clear(@pid); clear(@comm); }}
"""
)

# RTT windows, aggregated in the kernel: every received segment of a socket updates its open
# window (last smoothed RTT and cwnd, segment count, lowest and highest smoothed RTT); one
# line per window leaves the kernel, so the cost in user space does not grow with the packet
# rate and no spike between two lines is lost. A window holds the segments of at most `$2` ns
# (from its first segment); it is printed when the next segment opens a new one, when the
# socket closes, or (still open) by END. `$3` caps the lines per second for the whole
# namespace (approximate: the counter is not atomic across CPUs); a window that would pass
# the cap stays open and keeps aggregating.
# E line: last_ns srtt_us snd_cwnd first_ns segments srtt_min_us srtt_max_us (the @win tuple)
#         family saddr4 saddr6 sport daddr4 daddr6 dport (the @addr tuple, for END's print).
# The addresses are read from the socket when a line is printed and kept in @addr only for
# END: a tuple holding them would not fit the 512-byte BPF stack next to the printf.
_RTT_PRINT = """$s = (struct sock *){sk};
    printf("E %llu %llu %llu %llu %llu %llu %llu %llu %s %s %llu %s %s %llu\\n",
           $w.0, $w.1, $w.2, $w.3, $w.4, $w.5, $w.6, (uint64)$s->__sk_common.skc_family,
           ntop(2, $s->__sk_common.skc_rcv_saddr), ntop($s->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8),
           (uint64)({sport}), ntop(2, $s->__sk_common.skc_daddr),
           ntop($s->__sk_common.skc_v6_daddr.in6_u.u6_addr8), (uint64)({dport}));"""
_RTT_WINDOW = """
  $k = (uint64){sk};
  $now = nsecs;
  $w = @win[$k];
  $n = $w.4;
  if ($n > 0 && $now - $w.3 >= $2 && @lines < $3) {{
    @lines = @lines + 1;
    {print_window}
    $n = 0;
  }}
  if ($w.0 == 0) {{
    $sk = (struct sock *){sk};
    @addr[$k] = ((uint64)$sk->__sk_common.skc_family, ntop(2, $sk->__sk_common.skc_rcv_saddr),
                 ntop($sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8), (uint64)({sport}),
                 ntop(2, $sk->__sk_common.skc_daddr),
                 ntop($sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8), (uint64)({dport}));
  }}
  $srtt = (uint64)({srtt});
  @win[$k] = ($now, $srtt, (uint64)({cwnd}), $n == 0 ? $now : $w.3, $n + 1,
              ($n == 0 || $srtt < $w.5) ? $srtt : $w.5, ($n == 0 || $srtt > $w.6) ? $srtt : $w.6);
}}
interval:s:1 {{ @lines = 0; }}
tracepoint:sock:inet_sock_set_state /args->newstate == {close}/ {{
  $w = @win[(uint64)args->skaddr];
  if ($w.4 > 0) {{
    {print_at_close}
  }}
  delete(@win[(uint64)args->skaddr]);
  delete(@addr[(uint64)args->skaddr]);
}}
END {{ clear(@lines); print(@win); print(@addr); clear(@win); clear(@addr); }}
"""


def _rtt_window(sk: str, sport: str, dport: str, srtt: str, cwnd: str) -> str:
    return _RTT_WINDOW.format(
        sk=sk, sport=sport, dport=dport, srtt=srtt, cwnd=cwnd, close=CLOSE,
        print_window=_RTT_PRINT.format(sk=sk, sport=sport, dport=dport),
        print_at_close=_RTT_PRINT.format(sk="args->skaddr", sport="args->sport", dport="args->dport"),
    )


# tcp:tcp_probe carries skaddr since Linux 6.10; srtt there is already in microseconds.
RTT_TRACEPOINT = (
    READY
    + "tracepoint:tcp:tcp_probe\n/"
    + _NETNS.format(sk="args->skaddr")
    + "/\n{"
    + _rtt_window("args->skaddr", "args->sport", "args->dport", "args->srtt", "args->snd_cwnd")
)

# Older kernels (Debian bookworm's 6.1): the same window from tcp_rcv_established(), where
# tcp_probe is called, through a kprobe.
_SK = "((struct sock *)arg0)"
RTT_KPROBE = (
    READY
    + "kprobe:tcp_rcv_established\n/"
    + _NETNS.format(sk="arg0")
    + "/\n{"
    + _rtt_window(
        "arg0",
        f"{_SK}->__sk_common.skc_num",
        f"(({_SK}->__sk_common.skc_dport >> 8) | (({_SK}->__sk_common.skc_dport << 8) & 0xff00))",
        "((struct tcp_sock *)arg0)->srtt_us >> 3",
        "((struct tcp_sock *)arg0)->snd_cwnd",
    )
)

RETRANS = (
    READY
    + """tracepoint:tcp:tcp_retransmit_skb
/"""
    + _NETNS.format(sk="args->skaddr")
    + """/
{
  printf("E %llu %s %d %s %d %d\\n", nsecs, ntop(args->saddr_v6), args->sport,
         ntop(args->daddr_v6), args->dport, args->state);
}
"""
)
