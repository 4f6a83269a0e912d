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
- ``END`` clears every map so bpftrace prints nothing on exit.
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

# RTT samples, rate limited twice so a bulk transfer cannot flood the node: `$2` is the
# minimum interval between two samples of one socket (ns), `$3` the most samples per second
# for the whole namespace (approximate: the counter is not atomic across CPUs).
# Output: E nsecs family saddr4 saddr6 sport daddr4 daddr6 dport srtt_us snd_cwnd
_RTT_EMIT = """
      printf("E %llu %d %s %s %d %s %s %d %u %u\\n", nsecs, $sk->__sk_common.skc_family,
             ntop(2, $sk->__sk_common.skc_rcv_saddr),
             ntop($sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8), {sport},
             ntop(2, $sk->__sk_common.skc_daddr),
             ntop($sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8), {dport}, {srtt}, {cwnd});
"""
_RTT_FORGET = f"""
interval:s:1 {{ @sampled = 0; }}
tracepoint:sock:inet_sock_set_state /args->newstate == {CLOSE}/ {{
  delete(@last[(uint64)args->skaddr]);
}}
END {{ clear(@last); clear(@sampled); }}
"""

# tcp:tcp_probe carries skaddr since Linux 6.10; srtt there is already in microseconds.
RTT_TRACEPOINT = (
    READY
    + """tracepoint:tcp:tcp_probe
/"""
    + _NETNS.format(sk="args->skaddr")
    + """/
{
  $k = (uint64)args->skaddr;
  if (nsecs - @last[$k] >= $2 && @sampled < $3) {
      @last[$k] = nsecs;
      @sampled = @sampled + 1;
      $sk = (struct sock *)args->skaddr;"""
    + _RTT_EMIT.format(
        sport="args->sport", dport="args->dport", srtt="args->srtt", cwnd="args->snd_cwnd"
    )
    + """  }
}
"""
    + _RTT_FORGET
)

# Older kernels (Debian bookworm's 6.1): the same sample from tcp_rcv_established(), where
# tcp_probe is called, through a kprobe.
RTT_KPROBE = (
    READY
    + """kprobe:tcp_rcv_established
/"""
    + _NETNS.format(sk="arg0")
    + """/
{
  $k = (uint64)arg0;
  if (nsecs - @last[$k] >= $2 && @sampled < $3) {
      @last[$k] = nsecs;
      @sampled = @sampled + 1;
      $sk = (struct sock *)arg0;
      $tp = (struct tcp_sock *)arg0;
      $dp = $sk->__sk_common.skc_dport;"""
    + _RTT_EMIT.format(
        sport="$sk->__sk_common.skc_num",
        dport="(($dp >> 8) | (($dp << 8) & 0xff00))",
        srtt="$tp->srtt_us >> 3",
        cwnd="$tp->snd_cwnd",
    )
    + """  }
}
"""
    + _RTT_FORGET
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
