"""Gates (collectors.gate) on the running kernel: a gate program is attached and detached, it stops
perf events on its tracepoint from receiving events on every CPU, and other BPF programs on the
tracepoint (bpftrace's) still run."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors import gate
from collectors.gate import GateError, close_tracepoints
from tests.conftest import cannot_run, require_root

TRACEPOINT = "sock:inet_sock_set_state"
CONNECTIONS = 20
PERF_EVENT_IOC_QUERY_BPF = 0xC008240A  # _IOWR('$', 10, struct perf_event_query_bpf *)
BPF_TRACE_MAX_PROGS = 64
TCP_SYN_SENT = 2
# Counts connect()s to PORT (each moves a socket to SYN_SENT within the connect() call) and exits
# at a connect() to STOP. Not SIGINT: bpftrace 0.17 only notices it if it lands in epoll_wait().
BPFTRACE_PROGRAM = """
BEGIN { printf("READY\\n"); }
tracepoint:sock:inet_sock_set_state /args->newstate == SYN_SENT && args->dport == PORT/ {
  @n = count();
}
tracepoint:sock:inet_sock_set_state /args->newstate == SYN_SENT && args->dport == STOP/ { exit(); }
END { print(@n); clear(@n); }
"""


@pytest.fixture
def tracefs() -> Path:
    require_root("gate tests", ())
    try:
        path = gate.find_tracefs()
        gate.tracepoint_id(path, TRACEPOINT)
    except GateError as exc:
        cannot_run("gate tests", str(exc))
    return path


@pytest.fixture
def tracepoint_counter(tracefs: Path) -> Iterator[int]:
    """A counting perf event on TRACEPOINT for this thread: it counts exactly the events that
    reach perf_tp_event() while this thread runs, on whichever CPU."""
    _, perf_nr = gate.syscall_numbers()
    tp_id = gate.tracepoint_id(tracefs, TRACEPOINT)
    fd = gate.open_tracepoint_event(perf_nr, tp_id, pid=0, cpu=-1, sample_period=0, disabled=False)
    yield fd
    os.close(fd)


def connect_many(server: socket.socket, count: int = CONNECTIONS) -> None:
    """Open and close `count` loopback connections to a listening `server` (the kernel completes
    the handshakes from its backlog; nothing needs to accept them)."""
    for _ in range(count):
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def loopback_server() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0), backlog=4 * CONNECTIONS)


def events_during_connections(counter: int) -> int:
    before = read_count(counter)
    with loopback_server() as server:
        connect_many(server)
    return read_count(counter) - before


def wait_ready(bpftrace: subprocess.Popen[str]) -> None:
    """Read bpftrace's output up to the READY its BEGIN prints: its probes are attached then."""
    assert bpftrace.stdout is not None and bpftrace.stderr is not None
    for line in bpftrace.stdout:
        if line.strip() == "READY":
            return
    raise AssertionError(f"bpftrace exited ({bpftrace.wait()}): {bpftrace.stderr.read()}")


def finish(bpftrace: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """bpftrace's output once it exits; killed past `timeout` (it missed the STOP connect)."""
    try:
        return bpftrace.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        bpftrace.kill()
        out, err = bpftrace.communicate()
        return out, f"{err} (killed: no exit() {timeout} s after the STOP connect)"


def read_count(fd: int) -> int:
    value: int = struct.unpack("=Q", os.read(fd, 8))[0]
    return value


def prog_id(prog_fd: int) -> int:
    fdinfo = Path(f"/proc/self/fdinfo/{prog_fd}").read_text()
    fields = dict(line.split(":", 1) for line in fdinfo.splitlines() if ":" in line)
    assert fields["prog_type"].strip() == str(gate.BPF_PROG_TYPE_TRACEPOINT)
    return int(fields["prog_id"])


def attached_prog_ids(perf_fd: int) -> list[int]:
    """The ids of every BPF program on the perf event's tracepoint (PERF_EVENT_IOC_QUERY_BPF)."""
    query = bytearray(struct.pack("=II", BPF_TRACE_MAX_PROGS, 0) + bytes(4 * BPF_TRACE_MAX_PROGS))
    fcntl.ioctl(perf_fd, PERF_EVENT_IOC_QUERY_BPF, query, True)
    count = struct.unpack_from("=I", query, 4)[0]
    return list(struct.unpack_from(f"={count}I", query, 8))


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# --- without the kernel ---------------------------------------------------------------------


def test_attribute_layouts_match_the_kernel_uapi() -> None:
    assert ctypes.sizeof(gate.ProgLoadAttr) == gate.BPF_ATTR_SIZE
    assert gate.ProgLoadAttr.insns.offset == 8  # type: ignore[attr-defined]
    assert gate.ProgLoadAttr.kern_version.offset == 40  # type: ignore[attr-defined]
    assert gate.ProgLoadAttr.prog_name.offset == 48  # type: ignore[attr-defined]
    assert ctypes.sizeof(gate.PerfEventAttr) == gate.PERF_ATTR_SIZE_VER5
    assert gate.PerfEventAttr.config.offset == 8  # type: ignore[attr-defined]
    assert gate.PerfEventAttr.flags.offset == 40  # type: ignore[attr-defined]
    assert gate.PerfEventAttr.wakeup_events.offset == 48  # type: ignore[attr-defined]


def test_unknown_machine_is_reported_for_every_tracepoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate.platform, "machine", lambda: "riscv64")
    result = close_tracepoints([TRACEPOINT, "tcp:tcp_probe"])
    assert result.gated == [] and result.fds == {}
    assert set(result.errors) == {TRACEPOINT, "tcp:tcp_probe"}
    assert "riscv64" in result.errors[TRACEPOINT]


# --- on this kernel -------------------------------------------------------------------------


def test_gate_is_attached_to_the_tracepoint_until_closed(tracefs: Path) -> None:
    with close_tracepoints([TRACEPOINT]) as result:
        assert result.gated == [TRACEPOINT] and result.errors == {}
        fds = result.fds[TRACEPOINT]
        assert prog_id(fds.prog) in attached_prog_ids(fds.perf)
    assert result.fds == {}
    assert not is_open(fds.prog) and not is_open(fds.perf)
    result.close()  # a second close is harmless


def test_missing_tracepoint_is_reported_and_the_others_are_gated(tracefs: Path) -> None:
    with close_tracepoints(["sock:no_such_tracepoint", TRACEPOINT, "no_colon"]) as result:
        assert result.gated == [TRACEPOINT]
        assert set(result.errors) == {"sock:no_such_tracepoint", "no_colon"}
        assert "sock:no_such_tracepoint" in result.errors["sock:no_such_tracepoint"]
        assert "no_colon" in result.errors["no_colon"]


def test_gate_stops_perf_events_on_every_cpu(tracepoint_counter: int) -> None:
    """perf_tp_event() is skipped while the gate is attached, whichever CPU the event is on:
    one gate program attached with cpu 0 acts for all of them."""
    allowed = os.sched_getaffinity(0)
    try:
        for cpu in sorted(allowed):
            os.sched_setaffinity(0, {cpu})
            if events_during_connections(tracepoint_counter) == 0:
                cannot_run(
                    "the gate's every-CPU test", f"{TRACEPOINT} reaches no perf event here: already gated by another"
                )
            with close_tracepoints([TRACEPOINT]) as result:
                assert result.gated == [TRACEPOINT], result.errors
                assert events_during_connections(tracepoint_counter) == 0, f"on CPU {cpu}"
            assert events_during_connections(tracepoint_counter) > 0, f"on CPU {cpu} after close"
    finally:
        os.sched_setaffinity(0, allowed)


def test_bpftrace_still_counts_events_through_a_gate(tracefs: Path) -> None:
    require_root("gate tests", ("bpftrace",))
    with loopback_server() as server, loopback_server() as stop:
        program = BPFTRACE_PROGRAM.replace("SYN_SENT", str(TCP_SYN_SENT))
        program = program.replace("PORT", str(server.getsockname()[1]))
        program = program.replace("STOP", str(stop.getsockname()[1]))
        bpftrace = subprocess.Popen(
            ["bpftrace", "-e", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_ready(bpftrace)
            with close_tracepoints([TRACEPOINT]) as result:
                assert result.gated == [TRACEPOINT], result.errors
                connect_many(server)
                connect_many(stop, 1)
                out, err = finish(bpftrace)
        finally:
            if bpftrace.poll() is None:
                bpftrace.kill()
                bpftrace.wait()
    count = int(out.split("@n:")[1].split()[0]) if "@n:" in out else 0
    assert count == CONNECTIONS, f"bpftrace saw {count} of {CONNECTIONS} connects: {out!r} {err!r}"
