"""The probe runner with real probes on this kernel: namespace A is the observed node, B its
peer, C a third namespace whose traffic (to B and on its own loopback) must never show up."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from experiments.node_script import alive

# Fixtures `netns` and `start_runner` come from conftest.py (a Namespaces, a RunnerProcess
# factory); they are typed Any here because test modules cannot import from a conftest.
Namespaces = Any
RunnerProcess = Any

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NETWORK_PROBES = ("lifetime", "state", "connect", "rtt", "retrans")
CLIENT_SIZES = (1000, 65536, 300_000)  # A -> B:5001
PASSIVE_SIZE = 20_000  # B -> A:5002
CLOSED_FIRST_SIZE = 3000  # A:5007 -> B, A closing first
RETRANS_SIZE = 200_000  # A -> B:5005 while B drops it for a while
OTHER_PORTS = (5003, 5004)  # C's loopback flow, C -> B
HELD_SIZE = 50_000  # A -> B:5006, open until after the runner stopped
RTT_INTERVAL_MS = 100  # the runner's default
SLACK_NS = 50_000_000


@dataclass
class ObservedRun:
    runner: RunnerProcess
    exit_code: int
    status: dict  # type: ignore[type-arg]
    active: list[dict]  # type: ignore[type-arg]  # A's client flows, as the clients saw them
    passive: dict  # type: ignore[type-arg]  # B's client flow into A
    retrans_flow: dict  # type: ignore[type-arg]
    held_flow: dict  # type: ignore[type-arg]  # still open when the runner stopped
    closed_first: dict  # type: ignore[type-arg]  # B reads late from A, whose server closed first
    window: tuple[int, int]  # wall-clock ns around the traffic
    a_addr: str
    b_addr: str
    before_stop: dict  # type: ignore[type-arg]  # status.json while the probes still ran
    files_before_stop: set[str]


Sender = tuple[subprocess.Popen[str], subprocess.Popen[str]]  # B's server, A's client


def paused_sender(netns: Namespaces, command: str, port: int, size: int, said: str) -> Sender:
    """A client in A sending to B (traffic.py `command`) that waits for a line once it said `said`."""
    server = netns.serve(netns.b, netns.b_addr, port, 1)
    client = netns.popen(
        netns.a,
        [netns.python, netns.traffic, command, netns.b_addr, str(port), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdout is not None and client.stdout.readline().strip() == said
    return server, client


def drop_while_sending(netns: Namespaces) -> dict:  # type: ignore[type-arg]
    """A sends to B while B's firewall drops the segments for a while: A retransmits."""
    server, client = paused_sender(netns, "send-on-go", 5005, RETRANS_SIZE, "connected")
    assert client.stdin is not None
    table = "inet collectors_test"
    netns.exec(netns.b, "nft", "add", "table", table)
    netns.exec(netns.b, "nft", "add", "chain", table, "input", "{ type filter hook input priority 0 ; }")
    netns.exec(netns.b, "nft", "add", "rule", table, "input", "tcp", "dport", "5005", "drop")
    try:
        client.stdin.write("go\n")
        client.stdin.flush()
        time.sleep(1.5)  # RTO starts at 200 ms: several retransmissions
    finally:
        netns.exec(netns.b, "nft", "delete", "table", table)
    out, _ = client.communicate(timeout=30)
    server.wait(timeout=30)
    return json.loads(out)


def release(held: Sender) -> dict:  # type: ignore[type-arg]
    server, client = held
    out, _ = client.communicate("go\n", timeout=30)
    server.wait(timeout=30)
    return json.loads(out)


def other_namespace_traffic(netns: Namespaces) -> None:
    loopback = netns.serve(netns.c, "127.0.0.1", OTHER_PORTS[0], 1)
    netns.send(netns.c, "127.0.0.1", OTHER_PORTS[0], 4000)
    to_b = netns.serve(netns.b, netns.b2_addr, OTHER_PORTS[1], 1)
    netns.send(netns.c, netns.b2_addr, OTHER_PORTS[1], 5000)
    for server in (loopback, to_b):
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def observed(netns: Namespaces, start_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> ObservedRun:
    runner = start_runner(tmp_path_factory.mktemp("observed") / "out", "--bpf-stats")
    runner.wait_running()
    start = time.time_ns()
    server = netns.serve(netns.b, netns.b_addr, 5001, len(CLIENT_SIZES))
    active = [netns.send(netns.a, netns.b_addr, 5001, size) for size in CLIENT_SIZES]
    server.wait(timeout=30)
    a_server = netns.serve(netns.a, netns.a_addr, 5002, 1)
    passive = netns.send(netns.b, netns.a_addr, 5002, PASSIVE_SIZE)
    a_server.wait(timeout=30)
    other_namespace_traffic(netns)
    closing = netns.serve_close_first(netns.a, netns.a_addr, 5007, CLOSED_FIRST_SIZE)
    closed_first = netns.send(netns.b, netns.a_addr, 5007, 0, command="recv-late")
    closing.wait(timeout=30)
    retrans_flow = drop_while_sending(netns)
    held = paused_sender(netns, "send-and-hold", 5006, HELD_SIZE, "sent")  # B's ACKs reached A; still open
    time.sleep(0.5)  # let the last events reach the runner
    end = time.time_ns()
    before_stop = runner.wait_for(lambda s: s["probes"]["state"]["records"] > 0, 10, "entries to be counted")
    files_before_stop = {p.name for p in runner.out.iterdir()}
    exit_code = runner.stop()
    held_flow = release(held)
    return ObservedRun(
        runner,
        exit_code,
        runner.status(),
        active,
        passive,
        retrans_flow,
        held_flow,
        closed_first,
        (start - SLACK_NS, end + SLACK_NS),
        netns.a_addr,
        netns.b_addr,
        before_stop,
        files_before_stop,
    )


def four_tuple(record: dict) -> tuple:  # type: ignore[type-arg]
    return (record["saddr"], record["sport"], record["daddr"], record["dport"])


def test_runner_stops_cleanly_on_sigterm(observed: ObservedRun) -> None:
    assert observed.exit_code == 0, observed.runner.stderr()
    assert observed.status["state"] == "stopped"
    assert observed.status["node"] == "node-a" and observed.status["run_id"] == "test-run"
    assert "mono_to_realtime_offset_ns" in observed.status["clock"]
    cpu = observed.status["cpu_s"]  # the runner's own CPU, for the cost of observing
    assert cpu["attach"] > 0 and cpu["running"] >= 0 and cpu["stopping"] >= 0, cpu


def test_status_lists_every_probe_started(observed: ObservedRun) -> None:
    probes = observed.status["probes"]
    assert set(NETWORK_PROBES) <= set(probes)
    for name in NETWORK_PROBES:
        probe = probes[name]
        assert probe["started"], probe
        assert probe["state"] == "stopped" and probe["exit_code"] == 0, probe
        assert probe["attach_error"] is None and probe["parse_errors"] == 0, probe
        assert probe["records"] == len(observed.runner.records(name)), probe
        reporting = probes[probe["shared_with"]] if probe["shared_with"] else probe
        assert reporting["cpu_s"]["attach"] > 0, probe  # bpftrace compiles its program: never free
        assert reporting["cpu_s"]["running"] >= 0 and reporting["cpu_s"]["stopping"] >= 0, probe
        assert reporting["bpf_runs"] > 0 and reporting["bpf_run_ns"] > 0, probe  # the kernel's side of the cost


def test_the_probes_tracepoints_are_gated(observed: ObservedRun) -> None:
    """Their perf events, which nobody reads, are skipped (collectors/gate.py) while probes run."""
    gate = observed.status["gate"]
    assert gate == {"gated": ["sock:inet_sock_set_state", "tcp:tcp_probe", "tcp:tcp_retransmit_skb"], "errors": {}}


BPFTRACE_PROBES = ("lifetime", "state", "connect", "rtt", "retrans")


def test_every_bpftrace_probe_shares_one_bpftrace(observed: ObservedRun) -> None:
    """One process for all of them, its CPU reported once (by the first)."""
    probes = observed.status["probes"]
    assert len({probes[p]["pid"] for p in BPFTRACE_PROBES}) == 1
    assert probes["lifetime"]["shared_with"] is None and probes["lifetime"]["cpu_s"] is not None
    for probe in BPFTRACE_PROBES[1:]:
        assert probes[probe]["shared_with"] == "lifetime", probe
        assert probes[probe]["cpu_s"] is None and probes[probe]["bpf_runs"] is None, probe


def test_bpftrace_output_is_decoded_at_the_stop(observed: ObservedRun) -> None:
    """While the probes run, the runner only copies and counts what bpftrace prints."""
    raw = "-".join(BPFTRACE_PROBES) + ".bpftrace"
    assert [name for name in observed.files_before_stop if name.endswith(".bpftrace")] == [raw]
    assert not (observed.runner.out / raw).exists()  # decoded, then removed
    counted = observed.before_stop["probes"]["state"]["records"]
    assert 0 < counted <= len(observed.runner.records("state"))


def test_a_socket_handed_to_time_wait_before_the_peers_fin_counts_no_fin(observed: ObservedRun) -> None:
    """A's server sends and closes having read nothing; its socket goes FIN_WAIT2 -> CLOSE into time
    wait before B's FIN, which the time-wait socket takes. rx_bytes is 0, not 2^64 - 1: the FIN is
    subtracted only from a socket the kernel marked SOCK_DONE (the old guess from state
    transitions subtracted it here, on Debian's 6.1 guests and on this host's kernel alike)."""
    lifetimes = {four_tuple(r): r for r in observed.runner.records("lifetime")}
    flow = observed.closed_first
    server_side = lifetimes[(observed.a_addr, flow["dport"], flow["saddr"], flow["sport"])]
    assert (server_side["tx_bytes"], server_side["rx_bytes"]) == (CLOSED_FIRST_SIZE, 0), server_side
    assert "invalid" not in server_side and flow["received"] == CLOSED_FIRST_SIZE


def test_lifetime_has_every_connection_with_exact_bytes(observed: ObservedRun) -> None:
    lifetimes = {four_tuple(r): r for r in observed.runner.records("lifetime")}
    for flow in observed.active:
        record = lifetimes[four_tuple(flow)]
        assert (record["tx_bytes"], record["rx_bytes"]) == (flow["sent"], flow["received"])
        assert record["comm"].startswith("python") and record["pid"] > 0
        assert 0 < record["duration_ns"] < 10_000_000_000
        assert record["start_ns"] + record["duration_ns"] == record["ts_ns"]
    passive = observed.passive
    server_side = lifetimes[(observed.a_addr, passive["dport"], passive["saddr"], passive["sport"])]
    assert server_side["rx_bytes"] == passive["sent"]
    assert server_side["tx_bytes"] == passive["received"]
    retrans = lifetimes[four_tuple(observed.retrans_flow)]
    assert retrans["tx_bytes"] == RETRANS_SIZE  # payload counted once despite retransmissions


def test_state_records_include_handshakes(observed: ObservedRun) -> None:
    transitions = {(four_tuple(r), r["oldstate"], r["newstate"]) for r in observed.runner.records("state")}
    for flow in observed.active:
        assert (four_tuple(flow), "SYN_SENT", "ESTABLISHED") in transitions
        assert (four_tuple(flow), "ESTABLISHED", "FIN_WAIT1") in transitions
    passive = observed.passive
    accepted = (observed.a_addr, passive["dport"], passive["saddr"], passive["sport"])
    assert (accepted, "SYN_RECV", "ESTABLISHED") in transitions


def test_connects_and_accepts(observed: ObservedRun) -> None:
    records = {four_tuple(r): r for r in observed.runner.records("connect")}
    for flow in observed.active:
        record = records[four_tuple(flow)]
        assert record["direction"] == "connect" and record["comm"].startswith("python")
    passive = observed.passive
    accepted = records[(observed.a_addr, passive["dport"], passive["saddr"], passive["sport"])]
    assert accepted["direction"] == "accept" and "pid" not in accepted


def test_rtt_windows_for_every_flow(observed: ObservedRun) -> None:
    sampled = {four_tuple(r) for r in observed.runner.records("rtt")}
    for flow in observed.active:
        assert four_tuple(flow) in sampled
    for record in observed.runner.records("rtt"):
        assert 0 < record["srtt_min_us"] <= record["srtt_us"] <= record["srtt_max_us"] < 1_000_000, record
        assert record["snd_cwnd"] > 0 and record["segments"] >= 1, record
        # a window holds the segments of one interval, from its first to its last
        assert 0 <= record["ts_ns"] - record["first_ns"] < RTT_INTERVAL_MS * 1_000_000, record


def test_rtt_windows_do_not_overlap(observed: ObservedRun) -> None:
    by_flow: dict[tuple, list[dict]] = {}  # type: ignore[type-arg]
    for record in observed.runner.records("rtt"):
        by_flow.setdefault(four_tuple(record), []).append(record)
    for windows in by_flow.values():
        windows.sort(key=lambda r: r["first_ns"])
        for earlier, later in pairwise(windows):
            assert earlier["ts_ns"] < later["first_ns"], (earlier, later)


def test_rtt_window_still_open_at_the_stop_is_recorded(observed: ObservedRun) -> None:
    held = [r for r in observed.runner.records("rtt") if four_tuple(r) == four_tuple(observed.held_flow)]
    assert held, "the open connection's last window was lost at the stop"
    assert sum(r["segments"] for r in held) >= 1


def test_retransmissions_are_recorded(observed: ObservedRun) -> None:
    flow = four_tuple(observed.retrans_flow)
    retransmits = [r for r in observed.runner.records("retrans") if four_tuple(r) == flow]
    assert retransmits, observed.runner.records("retrans")
    assert all(r["state"] == "ESTABLISHED" for r in retransmits)


def test_other_namespaces_are_absent(observed: ObservedRun) -> None:
    for probe in NETWORK_PROBES:
        for record in observed.runner.records(probe):
            assert record["sport"] not in OTHER_PORTS and record["dport"] not in OTHER_PORTS
            assert {record["saddr"], record["daddr"]} <= {
                observed.a_addr,
                observed.b_addr,
                "0.0.0.0",
            }, record


def test_records_are_tagged_and_wall_clock(observed: ObservedRun) -> None:
    start, end = observed.window
    for probe in NETWORK_PROBES:
        for record in observed.runner.records(probe):
            assert record["node"] == "node-a" and record["run_id"] == "test-run"
            assert record["probe"] == probe
            assert start <= record["ts_ns"] <= end, (probe, record, observed.window)
            assert start <= record.get("start_ns", start) <= end


def pcap_packets(path: Path) -> list[tuple[int, int]]:
    """(captured length, original length) of every packet in a classic pcap file."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    packets, offset = [], 24
    while offset + 16 <= len(data):
        _, _, caplen, origlen = struct.unpack(endian + "IIII", data[offset : offset + 16])
        packets.append((caplen, origlen))
        offset += 16 + caplen
    return packets


def test_pcap_has_header_only_packets(observed: ObservedRun) -> None:
    probe = observed.status["probes"]["pcap:lab0"]
    assert probe["started"] and probe["state"] == "stopped"
    packets = pcap_packets(observed.runner.out / probe["output"])
    assert probe["packets"] == len(packets) > 20
    assert max(caplen for caplen, _ in packets) <= 96
    assert max(origlen for _, origlen in packets) > 96  # payloads were cut off


def test_killed_probe_is_reported_and_runner_survives(start_runner: Any, tmp_path: Path) -> None:
    """The bpftrace killed: both its probes say so, the packet capture and the runner run on."""
    runner = start_runner(tmp_path / "out", "--probes", "state,retrans,pcap", "--iface", "lab0")
    status = runner.wait_running()
    victim = status["probes"]["state"]["pid"]
    assert status["probes"]["retrans"]["pid"] == victim
    os.kill(victim, signal.SIGKILL)
    status = runner.wait_for(lambda s: s["probes"]["state"]["state"] == "exited", 20, "the killed probe to be reported")
    killed = status["probes"]["state"]
    assert killed["exit_code"] == -signal.SIGKILL
    assert killed["cpu_s"]["attach"] > 0 and killed["cpu_s"]["stopping"] is None  # it never got to stop
    assert "SIGKILL" in killed["error"] and status["probes"]["retrans"]["state"] == "exited"
    assert status["probes"]["pcap:lab0"]["state"] == "running"
    assert runner.proc.poll() is None
    assert runner.stop() == 0
    final = runner.status()
    assert final["state"] == "stopped"
    assert final["probes"]["retrans"]["state"] == "exited"
    assert final["probes"]["pcap:lab0"]["state"] == "stopped"


def test_probes_die_with_a_killed_runner(start_runner: Any, tmp_path: Path) -> None:
    """A runner killed outright (OOM killer, kill -9) leaves no bpftrace or tcpdump behind."""
    runner = start_runner(tmp_path / "out", "--probes", "state,retrans,pcap", "--iface", "lab0")
    probes = runner.wait_running()["probes"]
    pids = {name: probe["pid"] for name, probe in probes.items()}
    assert all(pids.values()) and all(alive(pid) for pid in pids.values()), pids
    runner.proc.send_signal(signal.SIGKILL)
    runner.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    assert not [name for name, pid in pids.items() if alive(pid)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 32 MiB file system of its own (tmpfs) for the runner's output, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "lab-test-small", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_full_disk_loses_only_what_arrived_while_it_was_full(
    netns: Namespaces, start_runner: Any, small_disk: Path
) -> None:
    """The file system under a run fills (fill_disk, or a node's disk running out) while the probes
    run: the runner keeps running, says what it could not write, and what came before and after is kept."""
    runner = start_runner(small_disk / "out", "--probes", "lifetime,connect,pcap", "--iface", "lab0")
    runner.wait_running()

    def connections(port: int, count: int) -> list[dict]:  # type: ignore[type-arg]
        server = netns.serve(netns.b, netns.b_addr, port, count)
        sent = [netns.send(netns.a, netns.b_addr, port, 2000) for _ in range(count)]
        server.wait(timeout=30)
        return sent

    before = connections(5011, 5)
    time.sleep(1.5)  # the runner copies what bpftrace printed; tcpdump's buffer times out
    filler = small_disk / "filler"
    subprocess.run(["fallocate", "--length", str(os.statvfs(small_disk).f_bavail * 4096), str(filler)], check=True)
    connections(5012, 20)
    time.sleep(3)  # the probes try to write into the full disk
    filler.unlink()
    after = connections(5013, 5)
    time.sleep(1.5)
    assert runner.stop() == 0, runner.stderr()
    status = runner.status()
    assert status["state"] == "stopped"
    for probe in ("lifetime", "connect"):
        kept = {r["sport"] for r in runner.records(probe) if r["dport"] in (5011, 5013)}
        assert {f["sport"] for f in before + after} <= kept, (probe, status["probes"][probe])
    lifetime, pcap = status["probes"]["lifetime"], status["probes"]["pcap:lab0"]
    assert lifetime["unwritten_bytes"] > 0 and lifetime["lost_events"] > 0, lifetime
    assert lifetime["write_error"] == "lifetime-connect.bpftrace: No space left on device", lifetime
    # the capture's runner holds what the disk refused until there is room: whether any of it was lost
    # depends on how many blocks tcpdump handed over while the disk was full
    assert pcap["write_error"] == "pcap-lab0.pcap: No space left on device", pcap
    # the capture reads whole to its end and holds the connections after the disk had room again
    read = subprocess.run(["tcpdump", "-n", "-r", str(runner.out / pcap["output"])], capture_output=True, text=True)
    assert read.returncode == 0 and "truncated" not in read.stderr, read.stderr
    assert pcap_packets(runner.out / pcap["output"]) and f"{netns.b_addr}.5013 " in read.stdout
