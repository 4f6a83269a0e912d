"""Unit tests of the collectors: parsers, source selection, detection helpers, CLI errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collectors import clock, detect, programs, sources
from collectors.children import BpftraceChild, PcapFile, Records, RecordTags
from collectors.cli import main
from collectors.detect import Detection, Kprobes, Tracefs
from collectors.runner import RunConfig, Runner, RunnerError, prepare_out_dir
from collectors.sources import choose
from collectors.status import ProbeStatus, RunStatus, StatusFile
from tests.conftest import require_root

NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
SET_STATE_FIELDS = ["skaddr", "oldstate", "newstate", "sport", "dport", "saddr_v6", "daddr_v6"]


def detection(
    *,
    tcp_probe_fields: tuple[str, ...] = ("srtt", "skaddr"),
    kprobes: bool = False,
    bpftrace: bool = True,
    interfaces: tuple[str, ...] = ("eth0",),
    sock_flags: str | None = "sk_flags",
) -> Detection:
    return Detection(
        kernel="6.1.0-test",
        netns_inode=4026531840,
        tracefs=Tracefs(path="/sys/kernel/tracing"),
        btf=True,
        tracepoints={
            "sock:inet_sock_set_state": SET_STATE_FIELDS,
            "tcp:tcp_probe": list(tcp_probe_fields),
            "tcp:tcp_retransmit_skb": ["skaddr", "state"],
        },
        kprobes=Kprobes(kprobes, "test"),
        tools={
            "bpftrace": "/usr/bin/bpftrace" if bpftrace else None,
            "tcpdump": "/usr/bin/tcpdump",
        },
        bpftrace_version="v0.17.0",
        interfaces=list(interfaces),
        sock_flags=sock_flags,
    )


# --- parsers ----------------------------------------------------------------------------


def test_parse_lifetime_turns_v4_mapped_addresses_back_and_keeps_comm_separators() -> None:
    event = sources.parse_lifetime("2000, 500, 40000, 80, 1200, 34, 77, ::ffff:10.0.0.1, ::ffff:10.0.0.2, my, worker")
    assert (event.saddr, event.sport, event.daddr, event.dport) == (
        "10.0.0.1",
        40000,
        "10.0.0.2",
        80,
    )
    assert event.mono_ns == 2000 and event.mono_fields == ("start_ns",)
    assert event.fields == {
        "pid": 77,
        "comm": "my, worker",
        "tx_bytes": 1200,
        "rx_bytes": 34,
        "duration_ns": 1500,
        "start_ns": 500,
    }


def test_parse_lifetime_accepts_an_empty_comm() -> None:
    assert sources.parse_lifetime("2, 1, 1, 2, 0, 0, 0, ::1, ::1, ").fields["comm"] == ""


def test_parse_state_names_the_states() -> None:
    event = sources.parse_state("1, 1, 2, 2, 1, ::ffff:10.0.0.1, ::ffff:10.0.0.2")
    assert event.fields == {"oldstate": "SYN_SENT", "newstate": "ESTABLISHED"}


def test_parse_connect_has_pid_only_for_active_connects() -> None:
    connect = sources.parse_connect("1, 1, 2, 1, 42, ::ffff:10.0.0.1, ::ffff:10.0.0.2, curl")
    accept = sources.parse_connect("1, 2, 1, 0, 0, ::ffff:10.0.0.2, ::ffff:10.0.0.1, ")
    assert connect.fields == {"direction": "connect", "pid": 42, "comm": "curl"}
    assert accept.fields == {"direction": "accept"}


def test_parse_rtt_picks_the_address_of_the_socket_family() -> None:
    v4 = sources.parse_rtt("9, 120, 10, 4, 3, 100, 130, 2, 5, 6, 10.0.0.1, ::, 10.0.0.2, ::")
    v6 = sources.parse_rtt("9, 120, 10, 4, 3, 100, 130, 10, 5, 6, 0.0.0.0, fd00::1, 0.0.0.0, fd00::2")
    assert (v4.saddr, v4.sport, v4.daddr, v4.dport) == ("10.0.0.1", 5, "10.0.0.2", 6)
    assert (v6.saddr, v6.daddr) == ("fd00::1", "fd00::2")
    assert v4.mono_ns == 9 and v4.mono_fields == ("first_ns",)
    assert v4.fields == {
        "srtt_us": 120,
        "snd_cwnd": 10,
        "first_ns": 4,
        "segments": 3,
        "srtt_min_us": 100,
        "srtt_max_us": 130,
    }


def test_parse_retrans() -> None:
    event = sources.parse_retrans("5, 1, 2, 1, ::ffff:10.0.0.1, ::ffff:10.0.0.2")
    assert event.fields == {"state": "ESTABLISHED"}


@pytest.mark.parametrize("text", ["1, 2", "1, 1, 2, 2, 1, ::1", "x, 1, 2, 2, 1, ::1, ::1"])
def test_malformed_tuples_are_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        sources.parse_state(text)


def test_a_wrapped_counter_is_written_as_null_with_its_reason(tmp_path: Path) -> None:
    """rx_bytes of 2^64 - 1 (what Debian 6.1's guests wrote before the FIN flag came from the
    socket) is no byte count: the record keeps null there, says why, and the status counts it."""
    status = ProbeStatus(probe="lifetime", metric="connection lifetime and bytes")
    records = Records(
        status,
        sources.parse_lifetime,
        RecordTags("n", "r", "lifetime", clock.ClockOffset(1000, 0, 0)),
        tmp_path / "lifetime.jsonl",
    )
    with open(tmp_path / "lifetime.jsonl", "w") as records.out:
        records.record(
            sources.parse_lifetime(
                f"200, 100, 41000, 8301, 120, {2**64 - 1}, 7, ::ffff:10.0.0.1, ::ffff:10.0.0.2, curl"
            )
        )
    [record] = [json.loads(line) for line in (tmp_path / "lifetime.jsonl").read_text().splitlines()]
    assert record["rx_bytes"] is None and record["tx_bytes"] == 120
    assert record["invalid"] == f"rx_bytes={2**64 - 1} is out of range (a kernel counter that went below zero)"
    assert status.invalid_values == 1 and status.records == 1


def state_entry(buffer: int, cpu: int, seq: int, ns: int) -> str:
    return f"@state{buffer}[{cpu}, {seq}]: ({ns}, 40000, 80, 2, 1, ::ffff:10.0.0.1, ::ffff:10.0.0.2)"


def state_child(tmp_path: Path) -> tuple[BpftraceChild, Path]:
    status = ProbeStatus(probe="state", metric="TCP state transitions")
    run = RunStatus(node="n", run_id="r", pid=1, netns_inode=1, config={}, clock={}, detection={})
    out = tmp_path / "state.jsonl"
    records = Records(status, sources.parse_state, RecordTags("n", "r", "state", clock.ClockOffset(1000, 0, 0)), out)
    child = BpftraceChild(
        [records],
        ["bpftrace"],
        tmp_path / "state.log",
        StatusFile(tmp_path / "status.json", run),
        tmp_path / "state.bpftrace",
    )
    return child, out


def printed(child: BpftraceChild, lines: list[str]) -> None:
    """What bpftrace wrote while running: it reaches the raw file, parsed only at the end."""
    child.raw.append("".join(f"{line}\n" for line in lines).encode())


def test_batches_are_written_in_time_order_and_a_batch_printed_twice_once(tmp_path: Path) -> None:
    """The output of bpftrace stopped between a batch's print() and its clear(): END prints
    that buffer again, after the other one."""
    child, out = state_child(tmp_path)
    lines = [
        "READY 1",
        "F",
        state_entry(0, 0, 1, 30),
        state_entry(0, 1, 1, 10),
        "F",
        "F",
        state_entry(1, 0, 2, 40),
        state_entry(1, 1, 2, 50),  # clear() and F discarded
        "F",
        state_entry(0, 1, 3, 60),
        state_entry(1, 0, 2, 40),
        state_entry(1, 1, 2, 50),
        "F",
        "@state_emitted[0]: 2",
        "@state_emitted[1]: 3",
    ]
    printed(child, lines)
    child._finish(0, 0.0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ts_ns"] for r in records] == [1010, 1030, 1040, 1050, 1060]
    assert (child.status.records, child.status.lost_events) == (5, 0)
    assert not child.raw_path.exists()  # decoded, so removed


def test_events_that_did_not_fit_the_buffer_are_counted_lost(tmp_path: Path) -> None:
    child, _ = state_child(tmp_path)
    printed(child, ["F", state_entry(0, 0, 1, 30), state_entry(0, 0, 3, 40), "F", "@state_emitted[0]: 4"])
    child._finish(0, 0.0)
    assert (child.status.records, child.status.lost_events) == (2, 2)
    assert "2 state events did not fit" in (tmp_path / "state.log").read_text()


# --- source selection -------------------------------------------------------------------


def test_tracepoints_with_netns_filter_are_preferred() -> None:
    for probe in ("lifetime", "state", "connect", "rtt", "retrans"):
        choice = choose(probe, detection(kprobes=True))
        assert choice.source is not None and choice.source.name.startswith("bpftrace tracepoint:")


def test_rtt_falls_back_to_a_kprobe_when_tcp_probe_has_no_socket_address() -> None:
    choice = choose("rtt", detection(tcp_probe_fields=("srtt",), kprobes=True))
    assert choice.source is not None and choice.source.name == "bpftrace kprobe:tcp_rcv_established"


def test_unavailable_probe_says_why_for_every_candidate() -> None:
    choice = choose("rtt", detection(tcp_probe_fields=("srtt",), kprobes=False))
    assert choice.source is None and choice.unavailable is not None
    assert "no skaddr field" in choice.unavailable and "no kprobes" in choice.unavailable


def test_runner_reports_unavailable_probes_in_status(tmp_path: Path) -> None:
    prepare_out_dir(tmp_path)
    config = RunConfig(
        node="n",
        run_id="r",
        out=tmp_path,
        netns_inode=1,
        probes=("lifetime", "pcap"),
        interfaces=(),
        rtt_interval_ms=10,
        rtt_max_per_s=100,
    )
    runner = Runner(config, detection(bpftrace=False, interfaces=()))
    runner.build()
    probes = runner.status_file.status.probes
    assert runner.children == []
    assert probes["lifetime"].state == "unavailable"
    assert "bpftrace is not installed" in str(probes["lifetime"].unavailable_reason)
    assert probes["pcap"].unavailable_reason == "no non-loopback interface to capture on"
    runner.status_file.write()
    written = json.loads((tmp_path / "status.json").read_text())
    assert written["probes"]["lifetime"]["state"] == "unavailable"


def test_lifetime_needs_the_kernels_sock_flags_and_says_so() -> None:
    """Without sk_flags in BTF the FIN cannot be told apart: lifetime is unavailable, the other
    set_state probes still run."""
    unknown = detection(sock_flags=None)
    assert "no sk_flags in struct sock" in str(choose("lifetime", unknown).unavailable)
    assert choose("state", unknown).source is not None


def test_a_probe_that_cannot_start_fails_alone(tmp_path: Path) -> None:
    prepare_out_dir(tmp_path)
    config = RunConfig(
        node="n",
        run_id="r",
        out=tmp_path,
        netns_inode=1,
        probes=("state", "retrans"),
        interfaces=(),
        rtt_interval_ms=10,
        rtt_max_per_s=100,
    )
    broken = detection()
    broken.tools["bpftrace"] = str(tmp_path / "no-such-bpftrace")
    runner = Runner(config, broken)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    runner.stop_requested.set()  # stop as soon as everything is started
    try:
        runner.run()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped" and status["error"] is None
    for probe in ("state", "retrans"):
        assert status["probes"][probe]["state"] == "failed"
        assert "cannot start" in status["probes"][probe]["attach_error"]


def test_out_dir_of_a_previous_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text("{}")
    with pytest.raises(RunnerError, match="already holds a run"):
        prepare_out_dir(tmp_path)


# --- detection helpers, clock, command line ----------------------------------------------


def test_tracepoint_fields_are_read_from_the_format_file(tmp_path: Path) -> None:
    directory = tmp_path / "events" / "tcp" / "tcp_probe"
    directory.mkdir(parents=True)
    (directory / "format").write_text(
        "name: tcp_probe\nformat:\n"
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
        "\tfield:__u8 saddr[28];\toffset:8;\tsize:28;\tsigned:0;\n"
        "\tfield:const void * skaddr;\toffset:128;\tsize:8;\tsigned:0;\n"
    )
    assert detect.tracepoint_fields(tmp_path, "tcp:tcp_probe") == ["saddr", "skaddr"]
    assert detect.tracepoint_fields(tmp_path, "tcp:missing") is None


def test_kprobes_unavailable_without_kprobe_events_or_pmu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "KPROBE_PMU", tmp_path / "no-pmu")
    result = detect.detect_kprobes(tmp_path)
    assert not result.available and "no kprobe support" in result.reason


def test_clock_offset_converts_monotonic_to_wall_clock() -> None:
    offset = clock.measure()
    converted = offset.to_wall(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    assert abs(converted - time.time_ns()) < 5_000_000
    assert offset.uncertainty_ns < 5_000_000


def test_unknown_probe_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--node", "a", "--run-id", "r", "--out", "/tmp/x", "--probes", "rtt,bogus"])
    assert exit_info.value.code == 2
    assert "unknown probe bogus" in capsys.readouterr().err


def test_detect_prints_json_with_a_choice_per_probe() -> None:
    require_root("detection (it mounts tracefs and test-attaches a kprobe)", [])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [NODE_PYTHON, "-m", "collectors", "detect"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["netns_inode"] == os.stat("/proc/self/ns/net").st_ino
    assert set(report["probes"]) == {"lifetime", "state", "connect", "rtt", "retrans", "pcap"}


@pytest.mark.parametrize(
    "probes",
    [
        ("lifetime", "state", "connect", "rtt", "retrans"),
        ("lifetime", "connect", "rtt:kprobe", "retrans"),
        ("connect",),
        ("state", "lifetime"),
        ("rtt",),
        ("rtt:kprobe",),
        ("retrans",),
    ],
    ids=["all", "default-kprobe", "connect", "state-lifetime", "rtt_tracepoint", "rtt_kprobe", "retrans"],
)
def test_every_program_compiles(probes: tuple[str, ...], tmp_path: Path) -> None:
    """Dry run (no attach), so the kprobe variant is checked even where kprobes are missing; the
    programs are built as the runner builds them, with this kernel's place of sk_flags."""
    require_root("bpftrace programs", ["bpftrace"])
    flags = detect.sock_flags_member(shutil.which("bpftrace"))
    assert flags is not None, "bpftrace -lv finds no sk_flags in this kernel's struct sock"
    parts = {
        "lifetime": programs.lifetime(flags),
        "state": programs.STATE,
        "connect": programs.CONNECT,
        "rtt": programs.RTT_TRACEPOINT,
        "rtt:kprobe": programs.RTT_KPROBE,
        "retrans": programs.RETRANS,
    }
    path = tmp_path / "p.bt"
    path.write_text(programs.program({probe.split(":")[0]: parts[probe] for probe in probes}))
    result = subprocess.run(["bpftrace", "-d", str(path), "1", "1000000", "100"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)


def pcap_record(n: int) -> bytes:
    return struct.pack("<IIII", 1, n, 40 + n, 1500) + bytes([n]) * (40 + n)


class Disk:
    """A file on a disk the test fills and frees: a write to a full disk gets 10 bytes in, then ENOSPC."""

    def __init__(self, file: Any) -> None:
        self.file, self.full, self.refused = file, False, 0

    def write(self, data: Any) -> int:
        if not self.full:
            return self.file.write(data)
        if self.refused % 2 == 0 and len(data) > 10:
            self.refused += 1
            return self.file.write(data[:10])
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def pcap_file(tmp_path: Path) -> tuple[PcapFile, ProbeStatus, Disk]:
    status = ProbeStatus(probe="pcap:lab0", metric="packet headers")
    run = RunStatus(node="n", run_id="r", pid=1, netns_inode=1, config={}, clock={}, detection={})
    pcap = PcapFile(tmp_path / "out.pcap", status, StatusFile(tmp_path / "status.json", run))
    disk = Disk(pcap._file)
    pcap._file = disk  # type: ignore[assignment]
    return pcap, status, disk


def test_a_pcap_copied_in_any_chunks_is_the_same_file(tmp_path: Path) -> None:
    """With room on the disk the runner copies tcpdump's stream as it comes, whatever the reads cut."""
    stream = PCAP_HEADER + b"".join(pcap_record(n) for n in range(30))
    pcap, status, _ = pcap_file(tmp_path)
    at, size = 0, 1
    while at < len(stream):
        pcap.append(stream[at : at + size])
        at, size = at + size, size * 2 + 1  # 1, 3, 7, ... bytes: cuts inside headers and payloads
    pcap.close()
    assert (tmp_path / "out.pcap").read_bytes() == stream
    assert status.unwritten_bytes == 0 and status.write_error is None


def test_a_full_disk_costs_a_pcap_the_records_that_came_while_it_was_full(tmp_path: Path) -> None:
    """The disk fills in the middle of a record and stays full for two more chunks: the file is cut
    back to its last whole record, the records that could not be written are counted, and the
    capture goes on whole once there is room; the file reads to its end."""
    r = [pcap_record(n) for n in range(9)]
    pcap, status, disk = pcap_file(tmp_path)
    pcap.append(PCAP_HEADER + r[1] + r[2][:30])
    disk.full = True
    pcap.append(r[2][30:] + r[3] + r[4][:5])  # 10 bytes get in, then ENOSPC: cut back to r1's end
    assert (tmp_path / "out.pcap").read_bytes() == PCAP_HEADER + r[1] and status.unwritten_bytes == 0
    pcap.append(r[4][5:] + r[5] + r[6][:3])  # still full: r2 to r5 are given up
    assert status.unwritten_bytes == len(r[2] + r[3] + r[4] + r[5])
    disk.full = False
    pcap.append(r[6][3:] + r[7][:20])
    pcap.append(r[7][20:] + r[8])  # back in step: appended as it comes
    pcap.close()
    assert (tmp_path / "out.pcap").read_bytes() == PCAP_HEADER + r[1] + r[6] + r[7] + r[8]
    assert status.write_error == "out.pcap: No space left on device"


def test_a_pcap_whose_file_header_met_a_full_disk_still_starts_with_it(tmp_path: Path) -> None:
    pcap, status, disk = pcap_file(tmp_path)
    disk.full = True
    pcap.append(PCAP_HEADER + pcap_record(1))
    assert (tmp_path / "out.pcap").read_bytes() == b""
    disk.full = False
    pcap.append(pcap_record(2))
    pcap.close()
    assert (tmp_path / "out.pcap").read_bytes() == PCAP_HEADER + pcap_record(1) + pcap_record(2)
    assert status.unwritten_bytes == 0 and status.write_error == "out.pcap: No space left on device"
