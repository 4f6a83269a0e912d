"""What every column of every table means: the one place the datasheet of an export
(analysis/export.py) takes units and descriptions from. `tests/analysis/test_export.py`
compares it with the tables `pipeline.write_tables` writes, so a column added, renamed or
dropped there fails the tests until it is described here.

Times are the controller's clock: each node's probe and telemetry times are shifted by that
node's clock offset (manifest `clock_offsets`, interpolated between start and end; load.py).
Ids marked "run-local" (key, endpoint codes, conn_id) are numbered per run and mean nothing
across runs: join on (run_id, id).
"""

from __future__ import annotations

from dataclasses import dataclass

UNITS = {
    "ns (epoch)": "an instant: nanoseconds since the Unix epoch, controller clock",
    "ns": "a duration in nanoseconds",
    "µs": "a duration in microseconds",
    "ms": "a duration in milliseconds",
    "bytes": "bytes",
    "packets": "TCP packets (segments as captured)",
    "segments": "TCP segments of the sender's maximum segment size",
    "count": "a number of things, named in the description",
    "tokens": "LLM tokens as the LLM server counted them (its usage report)",
    "share": "a fraction between 0 and 1",
    "ratio": "a dimensionless ratio",
    "id": "an identifier",
    "address": "an IPv4 or IPv6 address as text",
    "port": "a TCP port",
    "bitmask": "bits, named in the description",
    "flag": "true or false",
    "text": "free text or a label from a fixed set, named in the description",
}


@dataclass(frozen=True)
class Column:
    unit: str
    description: str


@dataclass(frozen=True)
class Table:
    row: str  # what one row is
    source: str  # which probe, telemetry or join made it
    columns: dict[str, Column]


RUN_ID = Column("id", "the run the row comes from (its manifest's run_id); added by the export to every table")

_TUPLE = {
    "saddr": Column("address", "local address of the socket, as the observing node saw it"),
    "sport": Column("port", "local port of the socket"),
    "daddr": Column("address", "remote address of the socket"),
    "dport": Column("port", "remote port of the socket"),
}
_KEY = Column(
    "id", "connection key, run-local: the unordered pair of its two endpoints (loopback addresses scoped by node)"
)
_ATTRIBUTION = {
    "key": _KEY,
    "conn_id": Column(
        "id", "the connection (connections.conn_id), run-local; null when no observed connection holds it"
    ),
    "call_id": Column(
        "id", "the call it belongs to: the call whose interval on that connection contains it, else the owner"
    ),
    "in_call": Column("flag", "true when inside a call's interval on the connection, false when given to the owner"),
    "trace_id": Column("id", "the task (trace) of that call"),
    "hop": Column(
        "text",
        "hop kind of that call: agent→llm, agent→tool, agent→agent, service→service, →db, client→entry, or unmatched",
    ),
}
_PROBE_RECORD = {
    "node": Column("text", "the node whose probe wrote the record"),
    "run_id": Column(
        "id", "the run id the collectors runner tagged the record with; the export sets it to the manifest's run_id"
    ),
    "probe": Column("text", "the probe that wrote the record"),
    **_TUPLE,
    "invalid": Column("text", "fields the probe runner could not write as values (null when none)"),
}
_BREAKDOWN = {
    f"{part}_ns": Column(
        "ns",
        f"time of the task spent in {what} (self time of its calls: a call's duration less "
        "its children's; parallel children can make the parts sum to more than the task)",
    )
    for part, what in (
        ("llm", "LLM calls"),
        ("tools", "MCP tools, services and the database"),
        ("handoff", "agent-to-agent hand-offs"),
        ("network", "the network and queues: the client's time beyond the server's busy time"),
        ("other", "the entry's own work around the task"),
    )
}
_CALL_KINDS = {
    f"{kind}_calls": Column("count", f"{what} in the task's trace (telemetry, both sides merged)")
    for kind, what in (
        ("llm", "LLM requests"),
        ("tool", "MCP tool calls"),
        ("agent", "agent-to-agent calls"),
        ("service", "service-to-service requests (the baseline chain)"),
        ("db", "database queries"),
        ("task", "task calls (the driver's, one per task)"),
    )
}
_AS_COUNTED = "as the agents counted them (results.jsonl); null for the baseline's tasks, failed tasks and older runs"
_LOOP = {
    "task_kind": Column(
        "text",
        "the task's kind (workload.tasks KINDS: order_status, order_total, ...; results.jsonl `kind`); "
        "null in runs from before kinds were recorded",
    ),
    "min_tool_calls": Column(
        "count", "tool calls the kind's minimal plan makes (workload.tasks Task.min_tool_calls; results.jsonl)"
    ),
    "steps": Column("count", f"Agent A's LLM decisions (steps of its tool loop), {_AS_COUNTED}"),
    "reported_tool_calls": Column(
        "count",
        f"tool calls Agent A made, hand-offs to Agent B included (results.jsonl `tool_calls`), {_AS_COUNTED}; "
        "tool_calls is the telemetry's count of every agent's MCP calls",
    ),
    "delegations": Column("count", f"subtasks Agent A handed to Agent B, {_AS_COUNTED}"),
    "reported_llm_calls": Column(
        "count",
        f"LLM calls of every agent in the task, Agent B's included (results.jsonl `llm_calls`), {_AS_COUNTED}; "
        "llm_calls is the telemetry's count",
    ),
    "prompt_tokens": Column("tokens", f"prompt tokens summed over every agent's LLM calls in the task, {_AS_COUNTED}"),
    "completion_tokens": Column("tokens", f"completion tokens summed over the same calls, {_AS_COUNTED}"),
    "max_steps_reached": Column("flag", f"Agent A stopped at its step limit, {_AS_COUNTED}"),
}

TABLES: dict[str, Table] = {
    "tasks": Table(
        row="one task: a trace the driver submitted",
        source="the driver's task call (telemetry/driver.jsonl) joined with results.jsonl; per-task metrics "
        "from the tables below (metrics.task_metrics)",
        columns={
            "trace_id": Column("id", "the task's trace; every call made for the task carries it"),
            "task_id": Column("id", "the task in the scenario's task set"),
            "call_id": Column("id", "the driver's task call"),
            "start_ns": Column("ns (epoch)", "when the driver submitted the task"),
            "end_ns": Column("ns (epoch)", "when the driver had the answer"),
            "scenario": Column("text", "scenario the task ran in (results.jsonl; else the task call's op)"),
            "ok": Column(
                "flag",
                "the driver's verdict in results.jsonl (an answer without error, not a check of "
                "its content); the task call's status where results.jsonl lacks the task",
            ),
            "correct": Column(
                "flag",
                "the answer states every fact the task expects (workload.tasks.answer_is_correct; results.jsonl); "
                "null for runs from before answers were checked",
            ),
            "answer": Column("text", "the answer the entry returned (results.jsonl)"),
            "error": Column("text", "the error the driver recorded, null when none"),
            "repetition": Column("count", "repetition of the task set, from 0"),
            "warmup": Column("flag", "a warm-up task: excluded from every per-task mean"),
            **_LOOP,
            "duration_ns": Column("ns", "end_ns - start_ns"),
            **_CALL_KINDS,
            "flows": Column(
                "count",
                "distinct TCP connections the task's calls used (probe connections matched "
                "to telemetry calls by 4-tuple and time)",
            ),
            "peers": Column("count", "distinct server endpoints the task's calls reached (fan-out)"),
            "new_flows": Column("count", "connections the task opened: those it was the first to use"),
            "packets": Column("packets", "captured TCP packets attributed to the task (pcap, one copy per packet)"),
            "bytes": Column("bytes", "their original lengths on the wire (pcap orig_len, link header included)"),
            "payload_bytes": Column("bytes", "their TCP payload bytes"),
            "retransmits": Column("count", "retransmitted segments attributed to the task (retrans probe)"),
            "iat_cv": Column(
                "ratio", "coefficient of variation of the task's packet inter-arrival times (null below 3 packets)"
            ),
            "pkts_per_window_mean": Column(
                "packets",
                "mean packets per 10 ms window from the task's first packet to its last, empty windows included",
            ),
            "pkts_per_window_max": Column("packets", "most packets in one 10 ms window"),
            "peak_to_mean": Column("ratio", "pkts_per_window_max / pkts_per_window_mean"),
            "bursts": Column("count", "bursts: runs of the task's packets less than 1 ms apart"),
            "burst_mean": Column("packets", "mean burst size"),
            **_BREAKDOWN,
        },
    ),
    "calls": Table(
        row="one call (call_id), its client and server sides merged",
        source="telemetry JSONL the driver and every service wrote (workload.telemetry), clock-corrected",
        columns={
            "call_id": Column("id", "the call"),
            "trace_id": Column("id", "its task (trace)"),
            "task_id": Column("id", "its task in the task set"),
            "parent_id": Column("id", "the call that made it (null for the driver's task call)"),
            "agent_id": Column(
                "id", "the agent whose client side logged the call (null outside agents and for server-only calls)"
            ),
            "kind": Column("text", "llm, tool, agent, service, db or task"),
            "peer": Column("text", "whom the client called, as it named the server"),
            "op": Column("text", "the operation: tool name, route, model request, query"),
            "client_service": Column("text", "the calling service (null when only the server side logged)"),
            "client_node": Column("text", "the node whose telemetry holds the client side (controller: the driver)"),
            "start_ns": Column("ns (epoch)", "start of the client's interval, else of the server's"),
            "end_ns": Column("ns (epoch)", "end of the client's interval, else of the server's"),
            "req_bytes": Column("bytes", "request body size the client logged (application bytes, not the wire)"),
            "resp_bytes": Column("bytes", "response body size the client logged"),
            "status": Column("text", "ok, or error when either side logged an error"),
            "error": Column("text", "the error either side logged"),
            "server_service": Column("text", "the serving service (null when no server side logged)"),
            "server_node": Column("text", "the node whose telemetry holds the server side"),
            "server_start_ns": Column("ns (epoch)", "first start of the server side's events"),
            "server_end_ns": Column("ns (epoch)", "last end of the server side's events"),
            "server_busy_ns": Column("ns", "the server's working time (an event stream it only holds open counts 0)"),
            "duration_ns": Column("ns", "end_ns - start_ns"),
            "hop": Column(
                "text", "hop kind from kind: agent→llm, agent→tool, agent→agent, service→service, →db, client→entry"
            ),
            "gen_ai_operation": Column(
                "text",
                "the call's gen_ai.operation.name in the OpenTelemetry GenAI semantic conventions "
                "(analysis/genai.py): chat (llm), execute_tool (tool), invoke_agent (agent); null for task, "
                "service and db calls and for the requests a hop logs as calls of their own (an MCP session's "
                "initialize and tools/list, an A2A Agent Card read)",
            ),
        },
    ),
    "flows": Table(
        row="one connection end: one node's view of one TCP connection",
        source="lifetime probe (closed connections), connect probe (established, never closed before the stop), "
        "packets and rtt records (connections older than the run)",
        columns={
            "node": Column("text", "the observing node"),
            **_TUPLE,
            "start_ns": Column(
                "ns (epoch)", "first SYN_SENT/SYN_RECV/ESTABLISHED, or the first record of an older connection"
            ),
            "end_ns": Column("ns (epoch)", "close; the probes' stop for a connection still open"),
            "tx_bytes": Column(
                "bytes",
                "payload bytes sent, each once (bytes_sent - bytes_retrans; lifetime probe; null when not closed)",
            ),
            "rx_bytes": Column("bytes", "payload bytes received (bytes_received less the FIN; lifetime probe)"),
            "closed": Column("flag", "closed while the probes ran"),
            "direction": Column("text", "connect (active), accept (passive), seen (older than the run), or null"),
            "key": _KEY,
            "local_ep": Column("id", "local endpoint code, run-local: address code << 16 | port"),
            "remote_ep": Column("id", "remote endpoint code, run-local"),
            "conn_id": Column("id", "the connection it is an end of (connections.conn_id), run-local"),
            "bytes": Column("bytes", "tx_bytes + rx_bytes"),
            "seen": Column("flag", "known only from packets or RTT records (opened before the run)"),
        },
    ),
    "connections": Table(
        row="one TCP connection: its ends (flows) with the same key and overlapping lifetimes",
        source="flows grouped; owner call by the 4-tuples the telemetry names while the connection was alive "
        "(±10 ms); packets from the captures",
        columns={
            "conn_id": Column("id", "the connection, run-local"),
            "key": _KEY,
            "start_ns": Column("ns (epoch)", "earliest start of its ends"),
            "end_ns": Column("ns (epoch)", "latest end of its ends"),
            "closed": Column("flag", "every end closed while the probes ran"),
            "bytes": Column(
                "bytes",
                "payload bytes both ways: the largest tx+rx of its ends, else the payload of its captured packets",
            ),
            "observations": Column("count", "ends observed (2 when both endpoints are on observed nodes)"),
            "node": Column("text", "the first node that observed it"),
            "before_run": Column("flag", "opened before the run (seen only in packets or RTT records)"),
            "lifetime_ns": Column("ns", "end_ns - start_ns"),
            "call_id": Column("id", "owner: the first call that used it (null: unmatched)"),
            "trace_id": Column("id", "the owner's task"),
            "hop": Column("text", "the owner's hop kind, or unmatched"),
            "calls": Column("count", "calls that used it (keep-alive reuse)"),
            "lab": Column("flag", "opened during the run with a lab server endpoint: the matched share's denominator"),
            "label": Column(
                "text", "matched, or why unmatched: opened before the run, lab service port no call, ssh, other"
            ),
            "packets": Column("packets", "captured packets attributed to it"),
        },
    ),
    "call_connections": Table(
        row="one (call, connection) pair: a call that used a connection while it was alive",
        source="telemetry events' 4-tuples (conns, local/remote) matched to connections by key and time (±10 ms)",
        columns={
            "call_id": Column("id", "the call"),
            "conn_id": Column("id", "the connection, run-local"),
            "server_ep": Column("id", "the server endpoint code, run-local: address code << 16 | port"),
            "trace_id": Column("id", "the call's task"),
            "start_ns": Column("ns (epoch)", "the call's start"),
            "kind": Column("text", "the call's kind"),
        },
    ),
    "packets": Table(
        row="one captured TCP packet (a packet between two observed nodes once: the first node's copy)",
        source="tcpdump -s 96 on every node interface (headers only), decoded by analysis.pcap",
        columns={
            "ts_ns": Column("ns (epoch)", "capture time"),
            "saddr": Column("address", "IP source"),
            "sport": Column("port", "TCP source port"),
            "daddr": Column("address", "IP destination"),
            "dport": Column("port", "TCP destination port"),
            "seq": Column("id", "TCP sequence number"),
            "ack": Column("id", "TCP acknowledgement number"),
            "flags": Column("bitmask", "TCP flags: FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10"),
            "payload": Column("bytes", "TCP payload length (from the IP length; the capture keeps headers only)"),
            "wire_len": Column("bytes", "original frame length (pcap orig_len)"),
            "ip_id": Column("id", "IPv4 identification field (-1 for IPv6)"),
            "node": Column("text", "the capturing node"),
            "iface": Column("text", "the captured interface"),
            **_ATTRIBUTION,
        },
    ),
    "rtt": Table(
        row="one RTT window: the received segments of one socket within at most the probe's interval (100 ms)",
        source="rtt probe: bpftrace on tracepoint tcp:tcp_probe (kprobe tcp_rcv_established on older kernels), "
        "aggregated in the kernel",
        columns={
            "ts_ns": Column("ns (epoch)", "the window's last segment"),
            **_PROBE_RECORD,
            "srtt_us": Column("µs", "the kernel's smoothed RTT at the window's last segment"),
            "snd_cwnd": Column("segments", "congestion window at the window's last segment"),
            "first_ns": Column("ns (epoch)", "the window's first segment"),
            "segments": Column("count", "segments received in the window"),
            "srtt_min_us": Column("µs", "lowest smoothed RTT in the window"),
            "srtt_max_us": Column("µs", "highest smoothed RTT in the window"),
            **_ATTRIBUTION,
        },
    ),
    "retrans": Table(
        row="one retransmitted segment",
        source="retrans probe: bpftrace on tracepoint tcp:tcp_retransmit_skb",
        columns={
            "ts_ns": Column("ns (epoch)", "the retransmission"),
            **_PROBE_RECORD,
            "state": Column("text", "the socket's TCP state"),
            **_ATTRIBUTION,
        },
    ),
    "hops": Table(
        row="one hop kind",
        source="packets, connections and rtt grouped by hop (metrics.hop_metrics); warm-up tasks excluded from "
        "the per-task figures",
        columns={
            "hop": Column("text", "hop kind"),
            "packets_per_task": Column("packets", "captured packets of measured tasks on this hop, per task"),
            "bytes_per_task": Column("bytes", "their wire bytes per task"),
            "payload_bytes_per_task": Column("bytes", "their TCP payload bytes per task"),
            "connections": Column("count", "connections of this hop kind"),
            "calls_per_conn": Column("count", "mean calls per connection that carried any (reuse)"),
            "lifetime_ms_p50": Column("ms", "median connection lifetime"),
            "rtt_us_p50": Column("µs", "median smoothed RTT over the rtt windows' last segments"),
            "rtt_us_p99": Column("µs", "99th percentile of the same"),
            "rtt_us_max": Column("µs", "highest smoothed RTT any segment saw (the windows' in-kernel maxima)"),
        },
    ),
    "bursts": Table(
        row="one burst: a run of one measured task's packets less than 1 ms apart",
        source="packets of the measured (non-warm-up) tasks (metrics.bursts)",
        columns={
            "trace_id": Column("id", "the task"),
            "start_ns": Column("ns (epoch)", "the burst's first packet"),
            "size": Column("packets", "packets in the burst"),
        },
    ),
    "timescales": Table(
        row="one group (a link: node/interface, a node, or the whole lab) at one window length",
        source="each capture point's packets during the measured tasks, counted in consecutive windows "
        "(analysis/timescales.py: Gusella 1991; Leland et al. 1994)",
        columns={
            "group": Column("text", "'link NODE/IFACE', 'node NODE', or 'lab (each packet once)'"),
            "timescale_ms": Column("ms", "the window length T"),
            "windows": Column("count", "windows of length T from the first measured task's start to the last's end"),
            "pkts_mean": Column("packets", "mean packets per window"),
            "idc_pkts": Column("ratio", "index of dispersion of packet counts: variance over mean (Poisson: 1)"),
            "idc_bytes": Column("bytes", "index of dispersion of wire bytes per window: variance over mean"),
            "peak_to_mean": Column("ratio", "the busiest window's packets over the mean"),
        },
    ),
    "burstiness": Table(
        row="one group (a link, a node, or the whole lab)",
        source="the timescales table and the group's packet trains (analysis/timescales.py)",
        columns={
            "group": Column("text", "as in the timescales table"),
            "hurst": Column("ratio", "H = (1 + slope) / 2 of log IDC against log T (0.5: no long-range dependence)"),
            "peak_to_mean_10ms": Column("ratio", "peak-to-mean of packets per 10 ms window"),
            "peak_to_mean_1s": Column("ratio", "peak-to-mean of packets per 1 s window"),
            "on_ms_p50": Column("ms", "median ON period: packets following each other within 1 ms"),
            "on_ms_p90": Column("ms", "90th percentile ON period"),
            "off_ms_p50": Column("ms", "median OFF period: a gap over 1 ms between two ON periods"),
            "off_ms_p90": Column("ms", "90th percentile OFF period"),
        },
    ),
}
