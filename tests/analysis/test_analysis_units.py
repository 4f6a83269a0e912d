"""Every metric, join and reader on small hand-built tables with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, wrpcap

from analysis import metrics
from analysis.join import (
    Codebook,
    attribute,
    call_conns,
    calls_table,
    connections,
    hop_kind,
    match_calls,
    own,
    pair_key,
)
from analysis.jsonl import PROBE_SCHEMAS, TELEMETRY_SCHEMA, read_jsonl
from analysis.load import _offset, load_run
from analysis.pcap import ACK, SYN, PcapError, read_pcap
from analysis.rundir import RunDir, facts, open_run
from lab.runlayout import LAYOUT_VERSION, MANIFEST, Manifest, ScenarioRecord, write_manifest

MS = 1_000_000


# --- metrics ----------------------------------------------------------------------------------


def test_percentiles_interpolate_and_ignore_nan() -> None:
    values = np.arange(1, 1001, dtype=float)  # 1..1000
    p = metrics.percentiles(np.append(values, np.nan))
    assert p["p50"] == pytest.approx(500.5) and p["p90"] == pytest.approx(900.1)
    assert p["p99"] == pytest.approx(990.01) and p["p99.9"] == pytest.approx(999.001)
    assert all(math.isnan(v) for v in metrics.percentiles([]).values())


def test_flows_per_task_counts_used_opened_and_distinct_servers() -> None:
    used = pd.DataFrame(
        {  # task A opens c1 and c2 (same server), task B reuses c1 and opens c3
            "call_id": ["a1", "a2", "b1", "b2", "x"],
            "conn_id": [1, 2, 1, 3, 4],
            "trace_id": ["A", "A", "B", "B", None],
            "start_ns": [0, 1, 5, 6, 7],
            "server_ep": [10, 10, 10, 20, 30],
        }
    )
    out = metrics.flows_per_task(used)
    assert out.loc["A"].to_dict() == {"flows": 2, "peers": 1, "new_flows": 2}
    assert out.loc["B"].to_dict() == {"flows": 2, "peers": 2, "new_flows": 1}
    assert list(out.index) == ["A", "B"]


def test_traffic_sums_packets_and_bytes_per_group() -> None:
    packets = pd.DataFrame({"hop": ["x", "x", "y"], "wire_len": [100, 60, 1500], "payload": [34, 0, 1448]})
    out = metrics.traffic(packets, ["hop"])
    assert out.loc["x"].tolist() == [2, 160, 34] and out.loc["y"].tolist() == [1, 1500, 1448]


def test_bursts_split_on_gaps_longer_than_the_threshold() -> None:
    ts = [0, 0.5, 0.9, 5, 5.2, 20]  # ms: bursts of 3, 2, 1
    packets = pd.DataFrame({"trace_id": ["T"] * 6 + ["U"], "ts_ns": [int(t * MS) for t in ts] + [0]})
    out = metrics.bursts(packets, "trace_id", gap_ns=MS)
    assert out[out["trace_id"] == "T"]["size"].tolist() == [3, 2, 1]
    assert out[out["trace_id"] == "U"]["size"].tolist() == [1]
    assert out["start_ns"].tolist()[:3] == [0, 5 * MS, 20 * MS]


def test_interarrival_cv_is_zero_for_a_regular_stream_and_known_for_an_irregular_one() -> None:
    regular = pd.DataFrame({"g": "r", "ts_ns": np.arange(0, 100, 10)})
    irregular = pd.DataFrame({"g": "i", "ts_ns": [0, 1, 4]})  # gaps 1 and 3: mean 2, sample std sqrt(2)
    lone = pd.DataFrame({"g": "l", "ts_ns": [0, 5]})
    cv = metrics.interarrival_cv(pd.concat([regular, irregular, lone]), "g")
    assert cv["r"] == 0 and cv["i"] == pytest.approx(math.sqrt(2) / 2) and math.isnan(cv["l"])


def test_window_counts_include_empty_windows() -> None:
    # windows of 10 ms: [0,10): 3 packets, [10,20): 0, [20,30): 1
    packets = pd.DataFrame({"g": "a", "ts_ns": [0, 2 * MS, 9 * MS, 25 * MS]})
    out = metrics.window_counts(packets, "g", window_ns=10 * MS).loc["a"]
    assert out["pkts_per_window_mean"] == pytest.approx(4 / 3) and out["pkts_per_window_max"] == 3
    assert out["peak_to_mean"] == pytest.approx(2.25)


def test_latency_breakdown_splits_self_time_by_kind_and_network() -> None:
    s = 1_000_000_000
    calls = pd.DataFrame(
        [
            # the task (10 s), seen by driver and entry (entry busy 9.9 s): 0.1 s network
            {"call_id": "t", "parent_id": None, "kind": "task", "duration_ns": 10 * s, "server_busy_ns": 9.9 * s},
            {"call_id": "l", "parent_id": "t", "kind": "llm", "duration_ns": 6 * s, "server_busy_ns": np.nan},
            # agent hop of 3 s, agent-b busy 2.5 s; inside it one tool call of 1 s (0.8 s at the server) and a db query
            {"call_id": "a", "parent_id": "t", "kind": "agent", "duration_ns": 3 * s, "server_busy_ns": 2.5 * s},
            {"call_id": "x", "parent_id": "a", "kind": "tool", "duration_ns": 1 * s, "server_busy_ns": 0.8 * s},
            {"call_id": "d", "parent_id": "x", "kind": "db", "duration_ns": 0.5 * s, "server_busy_ns": np.nan},
        ]
    ).assign(trace_id="T", has_client=True)
    out = metrics.latency_breakdown(calls).loc["T"] / s
    assert out["llm_ns"] == pytest.approx(6)
    assert out["network_ns"] == pytest.approx(0.1 + 0.5 + 0.2)
    assert out["handoff_ns"] == pytest.approx(3 - 1 - 0.5)  # self 2 s less 0.5 s network
    assert out["tools_ns"] == pytest.approx((1 - 0.5 - 0.2) + 0.5)  # tool self less network, plus the query
    assert out["other_ns"] == pytest.approx(10 - 9 - 0.1)
    assert out.sum() == pytest.approx(10)


def test_retrans_rate_is_retransmits_over_data_segments() -> None:
    packets = pd.DataFrame({"hop": ["x"] * 4 + ["y"], "payload": [100, 100, 0, 100, 0]})
    retrans = pd.DataFrame({"hop": ["x", "z"]})
    out = metrics.retrans_rate(retrans, packets, ["hop"])
    assert out.loc["x", "retrans_rate"] == pytest.approx(1 / 3)
    assert out.loc["z", "retransmits"] == 1 and math.isnan(out.loc["z", "retrans_rate"])


def test_task_metrics_keep_one_row_per_task_when_other_traces_used_connections() -> None:
    # a persistent MCP session opened under its own trace "S" before the tasks: its connection and
    # packets must not add rows, nor turn the task columns (warmup) into objects
    tasks = pd.DataFrame({"trace_id": ["A", "B"], "warmup": [True, False], "ok": True, "duration_ns": [5, 6]})
    calls = pd.DataFrame(
        {
            "call_id": ["a", "b", "s"],
            "parent_id": None,
            "trace_id": ["A", "B", "S"],
            "kind": "tool",
            "duration_ns": 1,
            "server_busy_ns": np.nan,
            "client_service": "x",
        }
    )
    used = pd.DataFrame(
        {
            "call_id": ["s", "a", "b"],
            "conn_id": [1, 1, 1],
            "trace_id": ["S", "A", "B"],
            "start_ns": [0, 1, 2],
            "server_ep": 9,
        }
    )
    packets = pd.DataFrame({"trace_id": ["S", "A", "B"], "ts_ns": [0, 1, 2], "wire_len": 60, "payload": 0})
    out = metrics.task_metrics(tasks, calls, used, packets, pd.DataFrame({"trace_id": pd.Series([], dtype=object)}))
    assert out["trace_id"].tolist() == ["A", "B"] and out["warmup"].dtype == bool
    assert out["new_flows"].tolist() == [0, 0] and out["flows"].tolist() == [1, 1]
    assert out.loc[~out["warmup"], "trace_id"].tolist() == ["B"]


# --- joins ------------------------------------------------------------------------------------


def _event(call_id: str, side: str, node: str, start: int, end: int, local: str, remote: str, **extra: object) -> dict:
    return {
        "event": "call",
        "node": node,
        "service": extra.pop("service", "svc"),
        "call_id": call_id,
        "side": side,
        "trace_id": extra.pop("trace_id", "T"),
        "task_id": "t1",
        "kind": extra.pop("kind", "service"),
        "peer": "p",
        "op": "GET /",
        "start_ns": start,
        "end_ns": end,
        "local": local,
        "remote": remote,
        "conns": [[local, remote]],
        "node_dir": node,
        **extra,
    }


def _events(rows: list[dict]) -> pd.DataFrame:
    frame = pa.Table.from_pylist(rows, schema=TELEMETRY_SCHEMA).to_pandas()
    return frame.assign(node_dir=[r["node_dir"] for r in rows])


def _obs(book: Codebook, rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["node", "saddr", "sport", "daddr", "dport", "start_ns", "end_ns"])
    frame = frame.assign(tx_bytes=100, rx_bytes=50, closed=True, direction=None)
    local = book.endpoints(frame["saddr"], frame["sport"], frame["node"])
    remote = book.endpoints(frame["daddr"], frame["dport"], frame["node"])
    return frame.assign(key=pair_key(local, remote))


def test_both_ends_of_a_connection_are_one_connection_and_loopback_is_scoped_by_node() -> None:
    book = Codebook()
    obs = _obs(
        book,
        [
            ("a", "10.0.0.1", 40000, "10.0.0.2", 80, 0, 100 * MS),  # client end on a
            ("b", "10.0.0.2", 80, "10.0.0.1", 40000, 1 * MS, 101 * MS),  # server end on b: same connection
            ("a", "10.0.0.1", 40000, "10.0.0.2", 80, 500 * MS, 600 * MS),  # the port reused later: a new one
            ("a", "127.0.0.1", 5000, "127.0.0.1", 6000, 0, 10 * MS),  # loopback on a ...
            ("b", "127.0.0.1", 5000, "127.0.0.1", 6000, 0, 10 * MS),  # ... and on b are different connections
        ],
    )
    flows, conns = connections(obs)
    assert len(conns) == 4
    ids = flows.sort_values(["node", "start_ns"]).groupby("node")["conn_id"].apply(list)
    assert len(set(flows.loc[flows["sport"].isin([40000, 80]), "conn_id"])) == 2
    assert conns["observations"].sort_values().tolist() == [1, 1, 1, 2] and len(ids) == 2


def test_calls_join_to_connections_by_tuple_and_time_and_the_first_call_owns_it() -> None:
    book = Codebook()
    obs = _obs(
        book,
        [
            ("b", "10.0.0.2", 80, "10.0.0.1", 40000, 5 * MS, 500 * MS),
            ("b", "10.0.0.2", 22, "10.0.0.9", 50000, 0, 500 * MS),  # ssh, no call
            ("b", "10.0.0.2", 80, "10.0.0.7", 41000, 0, 500 * MS),
        ],
    )  # lab port, no call
    _, conns = connections(obs)
    events = _events(
        [
            _event("c1", "client", "a", 0, 50 * MS, "10.0.0.1:40000", "10.0.0.2:80", trace_id="T1", kind="llm"),
            _event("c1", "server", "b", 6 * MS, 45 * MS, "10.0.0.2:80", "10.0.0.1:40000", trace_id="T1", kind="llm"),
            _event("c2", "client", "a", 100 * MS, 150 * MS, "10.0.0.1:40000", "10.0.0.2:80", trace_id="T2", kind="llm"),
            _event("c3", "client", "a", 900 * MS, 950 * MS, "10.0.0.1:40000", "10.0.0.2:80", trace_id="T3", kind="llm"),
        ]
    )
    calls = calls_table(events)
    cc = call_conns(events, book)
    used = match_calls(conns, cc, calls)
    assert sorted(used["call_id"]) == ["c1", "c2"]  # c3 came after the connection closed
    owned = own(conns, used, np.unique(cc["server_ep"]))
    web = owned[owned["call_id"].notna()].iloc[0]
    assert web["call_id"] == "c1" and web["trace_id"] == "T1" and web["hop"] == "agent→llm" and web["calls"] == 2
    assert sorted(owned["label"]) == ["matched", "unmatched: lab service port, no call", "unmatched: ssh"]
    merged = calls.set_index("call_id")
    assert merged.loc["c1", "server_busy_ns"] == 39 * MS and merged.loc["c1", "duration_ns"] == 50 * MS


def test_an_event_stream_the_server_holds_open_counts_as_no_server_time() -> None:
    """A stateful MCP session's GET stream outlasts the tool call it was opened in: the server's
    time for that call is its POSTs' (the latency breakdown's network is the client's time beyond it)."""
    events = _events(
        [
            _event("c1", "client", "a", 0, 100 * MS, "10.0.0.1:40000", "10.0.0.2:80", kind="tool"),
            _event("c1", "server", "b", 5 * MS, 25 * MS, "10.0.0.2:80", "10.0.0.1:40000", kind="tool"),
            _event(
                "c1", "server", "b", 10 * MS, 120 * MS, "10.0.0.2:80", "10.0.0.1:40002", kind="tool", event="stream"
            ),
            _event("c1", "server", "b", 30 * MS, 90 * MS, "10.0.0.2:80", "10.0.0.1:40004", kind="tool"),
        ]
    )
    [call] = calls_table(events).to_dict("records")
    assert call["server_busy_ns"] == 80 * MS and call["duration_ns"] == 100 * MS


def test_records_go_to_the_call_whose_interval_contains_them_else_to_the_owner() -> None:
    book = Codebook()
    _, conns = connections(_obs(book, [("a", "10.0.0.1", 40000, "10.0.0.2", 80, 0, 300 * MS)]))
    events = _events(
        [
            _event("c1", "client", "a", 0, 100 * MS, "10.0.0.1:40000", "10.0.0.2:80", trace_id="T1"),
            _event("c2", "client", "a", 200 * MS, 250 * MS, "10.0.0.1:40000", "10.0.0.2:80", trace_id="T2"),
        ]
    )
    calls = calls_table(events)
    cc = call_conns(events, book)
    conns = own(conns, match_calls(conns, cc, calls), np.unique(cc["server_ep"]))
    packets = pd.DataFrame(
        {
            "node": "a",
            "saddr": ["10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.5"],
            "sport": [80, 40000, 40000, 40000, 1],
            "daddr": ["10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.2", "10.0.0.6"],
            "dport": [40000, 80, 80, 80, 2],
            "ts_ns": [210 * MS, 50 * MS, 150 * MS, 299 * MS, 10 * MS],
        }
    )
    local = book.endpoints(packets["saddr"], packets["sport"], packets["node"])
    remote = book.endpoints(packets["daddr"], packets["dport"], packets["node"])
    out = attribute(packets.assign(key=pair_key(local, remote)), conns, cc, calls)
    assert out["call_id"].tolist()[:4] == ["c2", "c1", "c1", "c1"]  # 150 and 299 ms: between calls -> owner c1
    assert out["in_call"].tolist() == [True, True, False, False, False]
    assert out["trace_id"].tolist()[:4] == ["T2", "T1", "T1", "T1"]
    assert pd.isna(out.loc[4, "conn_id"]) and out.loc[4, "hop"] == "unmatched"


def test_hop_kinds_follow_the_call_kind() -> None:
    kinds = pd.Series(["llm", "tool", "agent", "service", "db", "task", None])
    assert hop_kind(kinds).tolist() == [
        "agent→llm",
        "agent→tool",
        "agent→agent",
        "service→service",
        "→db",
        "client→entry",
        "unmatched",
    ]


# --- readers and the run directory ------------------------------------------------------------


def test_pcap_reader_decodes_tcp_headers_of_ipv4_and_ipv6(tmp_path: Path) -> None:
    packets = [
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=7) / TCP(sport=40000, dport=80, flags="S", seq=1000),
        Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=40000, flags="SA", ack=1001) / (b"x" * 500),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=1, dport=2),
        Ether() / IPv6(src="::1", dst="fd00::2") / TCP(sport=1, dport=2, flags="A") / (b"y" * 10),
    ]
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i / 1000
    wrpcap(str(tmp_path / "x.pcap"), packets)
    data = (tmp_path / "x.pcap").read_bytes()
    capture = read_pcap(data)
    out = capture.packets
    assert capture.non_tcp == 1 and not capture.truncated and len(out) == 3
    assert out["saddr"].tolist() == ["10.0.0.1", "10.0.0.2", "::1"] and out["dport"].tolist() == [80, 40000, 2]
    assert out["flags"].tolist() == [SYN, SYN | ACK, ACK] and out["payload"].tolist() == [0, 500, 10]
    assert out["seq"].iloc[0] == 1000 and out["ack"].iloc[1] == 1001 and out["ip_id"].tolist()[::2] == [7, -1]
    assert out["ts_ns"].iloc[1] == 1_700_000_000_001_000_000
    truncated = read_pcap(data[:-5])
    assert truncated.truncated and len(truncated.packets) == 2
    with pytest.raises(PcapError):
        read_pcap(b"\x0a\x0d\x0d\x0a" + bytes(40))


def _run(tmp_path: Path, manifest: dict | None = None) -> RunDir:
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return open_run(tmp_path)


def test_jsonl_reader_keeps_what_it_can_and_says_what_it_dropped(tmp_path: Path) -> None:
    run = _run(tmp_path, {})
    record = {
        "ts_ns": 1,
        "node": "n",
        "run_id": "r",
        "probe": "rtt",
        "saddr": "a",
        "sport": 1,
        "daddr": "b",
        "dport": 2,
        "srtt_us": 50,
        "snd_cwnd": 10,
    }
    path = tmp_path / "rtt.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(record)[:20])
    assert read_jsonl(path, PROBE_SCHEMAS["rtt"], run).num_rows == 1
    path.write_text(json.dumps(record) + "\nnot json\n" + json.dumps(record) + "\n")
    assert read_jsonl(path, PROBE_SCHEMAS["rtt"], run)["srtt_us"].to_pylist() == [50, 50]
    assert read_jsonl(tmp_path / "none.jsonl", PROBE_SCHEMAS["rtt"], run).num_rows == 0
    read = [p.what.split(":")[0].split(" ")[0] for p in run.problems if p.where != "manifest.json"]
    assert read == ["truncated", "1", "missing"]


def test_manifest_file_checks_report_missing_resized_and_changed_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("hello")
    (tmp_path / "b").write_text("hello")
    run = _run(
        tmp_path,
        {"files": {"a": {"bytes": 9, "sha256": "0"}, "b": {"bytes": 5, "sha256": "0" * 64}, "c": {"bytes": 1}}},
    )
    problems = {p.where: p.what for p in run.problems}
    assert problems["a"].startswith("size 5 B") and "sha256" in problems["b"] and problems["c"].startswith("missing")
    (tmp_path / "bare").mkdir()
    assert [(p.where, p.what.split(":")[0]) for p in open_run(tmp_path / "bare").problems] == [
        ("manifest.json", "missing")
    ]


def test_facts_name_the_served_llm_and_fall_back_to_the_configured_one(tmp_path: Path) -> None:
    lab = {"llm": {"backend": "auto", "model": "big", "cpu_model": "package:small"}}
    served = {"backend": "llamacpp", "served": {"meta": {"n_params": 494_000_000, "ftype": "Q4_K_M"}}}
    run = _run(tmp_path, {"lab": lab, "versions": {"llm": served}})
    assert facts(run)["llm backend"] == "llamacpp"
    assert facts(run)["model"] == "package:small (0.49 B parameters, Q4_K_M)"
    (tmp_path / "old").mkdir()
    unserved = _run(tmp_path / "old", {"lab": lab, "versions": {"kernel": "6.1"}})
    assert facts(unserved)["llm backend"] == "auto" and facts(unserved)["model"] == "big"


def test_clock_offsets_are_interpolated_between_start_and_end(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        {
            "started_at_ns": 1000,
            "ended_at_ns": 2000,
            "clock_offsets": {
                "n": {"start": {"offset_ns": 100, "uncertainty_ns": 1}, "end": {"offset_ns": 300, "uncertainty_ns": 1}},
                "m": {"start": {"offset_ns": -50, "uncertainty_ns": 1}},
            },
        },
    )
    assert _offset(run, "n", np.array([1000, 1500, 2000, 5000])).tolist() == [100, 200, 300, 300]
    assert _offset(run, "m", np.array([1, 2])).tolist() == [-50, -50]
    assert _offset(run, "controller", np.array([1])).tolist() == [0]


def test_every_time_column_of_a_probe_moves_to_the_controller_clock(tmp_path: Path) -> None:
    probes = tmp_path / "nodes" / "n" / "probes"
    probes.mkdir(parents=True)
    window = {
        "ts_ns": 5000,
        "node": "n",
        "run_id": "r",
        "probe": "rtt",
        "saddr": "a",
        "sport": 1,
        "daddr": "b",
        "dport": 2,
        "srtt_us": 50,
        "snd_cwnd": 10,
        "first_ns": 4000,
        "segments": 3,
        "srtt_min_us": 40,
        "srtt_max_us": 60,
    }
    (probes / "rtt.jsonl").write_text(json.dumps(window) + "\n")
    run = _run(tmp_path, {"clock_offsets": {"n": {"start": {"offset_ns": 100, "uncertainty_ns": 1}}}})
    rtt = load_run(run).probes["rtt"]
    assert (rtt["first_ns"].tolist(), rtt["ts_ns"].tolist()) == ([3900], [4900])


def test_a_version_1_run_is_analysed_and_said_to_be_one(tmp_path: Path) -> None:
    """A manifest from before the layout was versioned: read, its version and missing fields noted."""
    old = {"run_id": "r1", "scenario": "baseline", "provider": "nspawn", "tasks": {}, "files": {}}
    run = _run(tmp_path, old)
    notes = [p.what for p in run.problems if p.where == MANIFEST]
    assert notes[0].startswith("layout version 1") and notes[1].startswith("not recorded: accelerator, analysis")
    assert run.run_id == "r1" and run.scenario == run.workload == "baseline" and run.manifest.tasks is None
    assert facts(run)["accelerator"] == "unknown" and facts(run)["LLM speed (preflight)"] == "not measured"


def test_a_current_run_has_no_manifest_notes(tmp_path: Path) -> None:
    write_manifest(Manifest(run_id="r2", scenario=ScenarioRecord(name="simple")), tmp_path)
    run = open_run(tmp_path)
    assert run.manifest.layout_version == LAYOUT_VERSION
    assert [p for p in run.problems if p.where == MANIFEST] == []


@pytest.mark.parametrize(
    ("workload", "knobs", "said"),
    [
        ("simple", {"tool_calling": "native"}, "native: OpenAI tool calls"),
        ("multihop", {"tool_calling": "json_schema"}, "json_schema: replies constrained"),
        ("simple", {"max_steps": 6}, "json_schema (recorded before the tool_calling knob existed)"),
        ("baseline", {"http_reuse": "pooled"}, "no LLM"),
    ],
)
def test_the_facts_say_how_the_model_stated_its_decisions(
    tmp_path: Path, workload: str, knobs: dict, said: str
) -> None:
    record = ScenarioRecord(name=workload, config={"workload": workload, "knobs": knobs})
    write_manifest(Manifest(run_id="r3", scenario=record), tmp_path)
    assert facts(open_run(tmp_path))["decisions"].startswith(said)


def test_the_facts_say_which_node_ran_which_service(tmp_path: Path) -> None:
    placement = {"baseline-gateway": "agent-a", "baseline-order": "agent-b", "tool-synth": "agent-b"}
    write_manifest(Manifest(run_id="r4", scenario=ScenarioRecord(name="baseline"), placement=placement), tmp_path)
    assert facts(open_run(tmp_path))["placement"] == "agent-a: baseline-gateway; agent-b: baseline-order, tool-synth"
    old = tmp_path / "old"
    old.mkdir()
    write_manifest(Manifest(run_id="r5", scenario=ScenarioRecord(name="baseline")), old)
    assert facts(open_run(old))["placement"].startswith("not recorded")
