"""Probe processes (bpftrace, tcpdump): spawn, read their output, record their fate."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from collectors import bpfstats
from collectors.clock import ClockOffset
from collectors.sources import BUFFER_ENTRY, EMITTED_ENTRY, MAP_ENTRY, Event, ParseError, Parser
from collectors.status import EXITED, FAILED, RUNNING, STOPPED, CpuSpent, ProbeStatus, StatusFile

PR_SET_PDEATHSIG = 1
# stderr lines that are not errors (bpftrace warns when it cannot raise RLIMIT_MEMLOCK,
# which kernels >= 5.11 no longer need).
NOISE = re.compile(r"RLIMIT_MEMLOCK")
STDERR_TAIL = 8
READ_INTERVAL_S = 0.05  # a reader wakes at most this often; lines wait in the pipe meanwhile
PIPE_BYTES = 1 << 20  # the pipe's size: 20 MB/s of lines at that interval before bpftrace waits
READ_BYTES = 1 << 16  # per read: below malloc's mmap threshold, so no mmap and page faults per read
# Entries per bpftrace map (each map is allocated whole: ~50 MB of kernel memory per node):
# a buffer map holds the events between two flushes (programs.FLUSH_AT, checked every
# programs.FLUSH_TICK_MS: a burst of 12 k events in one tick, 120 k events/s, still fits);
# the lifetime, connect and RTT maps one entry per open socket.
MAP_KEYS_MAX = 16384
DECODE_STATUS_LINES = 50_000  # status.json is rewritten this often while decoding
BPFTRACE_LOST = re.compile(r"Lost (\d+) events")
TCPDUMP_CAPTURED = re.compile(r"(\d+) packets? captured")
TCPDUMP_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")
PCAP_FILE_HEADER, PCAP_RECORD_HEADER = 24, 16
PCAP_MAGIC_LE = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")  # microsecond, nanosecond timestamps
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder for every record


# Resolved here, not in the child: a dlopen() between fork and exec can deadlock on a lock
# another of the runner's threads held at the fork.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the runner dies without stopping it."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU a live process has used so far (/proc/PID/stat), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 3)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class RecordTags:
    """What every record of one probe carries besides the event itself."""

    node: str
    run_id: str
    probe: str
    clock: ClockOffset


class UnitFile:
    """A probe's output file as the runner copies it from the probe's stdout, chunk by chunk as
    read: it only ever holds whole units (`whole`: lines, pcap records). A write the disk refuses
    (full) is cut back to the last whole unit and counted in the process's probe `status`
    (unwritten_bytes, write_error), and the copy goes on: what the probe writes once there is room
    again is kept, and the file still reads from start to end."""

    def __init__(self, path: Path, status: ProbeStatus, status_file: StatusFile) -> None:
        self.path = path
        self.status = status
        self.status_file = status_file
        self._file = path.open("ab", buffering=0)
        self._size = os.fstat(self._file.fileno()).st_size
        self._pending = b""  # the start of a unit the probe has not finished writing

    def whole(self, data: bytes) -> int:
        """How many bytes at the start of `data` are whole units."""
        raise NotImplementedError

    def append(self, chunk: bytes) -> bytes:
        """Write the whole units `chunk` completes; those units (written or not)."""
        data = self._pending + chunk
        end = self.whole(data)
        units, self._pending = data[:end], data[end:]
        if units:
            self._write(units)
        return units

    def _put(self, data: bytes) -> OSError | None:
        """Append `data`; the error that stopped it (the file then ends with what got in), or None."""
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)  # unbuffered: a short write, then the error
                self._size += written
                view = view[written:]
        except OSError as e:
            return e
        return None

    def _write(self, units: bytes) -> None:
        """Append whole units, or none of them (counted as unwritten)."""
        before = self._size
        if (error := self._put(units)) is None:
            return
        self._cut(before)
        with self.status_file.lock:
            self.status.unwritten_bytes += len(units)
        self._failed(error)

    def _cut(self, size: int) -> None:
        with contextlib.suppress(OSError):  # shrinking a file needs no room
            os.ftruncate(self._file.fileno(), size)
        self._size = size

    def _failed(self, error: OSError) -> None:
        with self.status_file.lock:
            self.status.write_error = self.status.write_error or f"{self.path.name}: {error.strerror}"
        self.status_file.touch()

    def close(self) -> None:
        self._file.close()


class LineFile(UnitFile):
    def whole(self, data: bytes) -> int:
        return data.rfind(b"\n") + 1

    def close(self) -> None:
        if self._pending and not self._file.closed:  # a last line without its newline
            self._write(self._pending + b"\n")
            self._pending = b""
        super().close()


class PcapFile(UnitFile):
    """A classic pcap stream: a 24-byte file header, then records of a 16-byte header (whose third
    field is the captured length, in the file header's byte order) and the captured bytes.

    Walking the records costs ~0.5 µs each, which the workload would pay while it is measured, so
    chunks are appended as they come, and the records are walked only after a refused write: the
    file is cut back to its last whole record (walked from the last place known whole), what was
    not written waits in memory, and whole records only are written until one write goes through."""

    def __init__(self, path: Path, status: ProbeStatus, status_file: StatusFile) -> None:
        super().__init__(path, status, status_file)
        self._header = b""  # the file header, once known
        self._order = "<"  # its byte order
        self._whole_to = 0  # the file holds whole records (and the file header) up to here
        self._in_step = True  # the file is tcpdump's stream as it came, from _whole_to on

    def append(self, chunk: bytes) -> bytes:
        if not self._in_step:  # since a refused write: whole records only
            written = self.status.unwritten_bytes
            units = super().append(chunk)
            if units and self.status.unwritten_bytes == written:
                self._in_step, self._whole_to = True, self._size
            return units
        data, self._pending = self._pending + chunk, b""
        start = self._size
        if (error := self._put(data)) is not None:
            self._out_of_step(start, data, error)
        return data

    def _out_of_step(self, start: int, data: bytes, error: OSError) -> None:
        """`data`, appended at `start`, met a full disk: cut the file back to its last whole record
        and keep what follows it in memory, to be written whole once there is room."""
        with self.path.open("rb") as file:
            self._header = self._header or file.read(PCAP_FILE_HEADER)[:PCAP_FILE_HEADER]
            if len(self._header) < PCAP_FILE_HEADER:
                self._header = b""  # not in the file yet: whole() reads it from the pending bytes
            else:
                self._order = "<" if self._header[:4] in PCAP_MAGIC_LE else ">"
            whole = self._last_whole(file, self._size)
            file.seek(whole)
            self._pending = file.read(max(0, start - whole)) + data[max(0, whole - start) :]
        self._cut(whole)
        self._whole_to, self._in_step = whole, False
        self._failed(error)

    def _last_whole(self, file: IO[bytes], end: int) -> int:
        """The offset up to which the file's first `end` bytes are whole records."""
        if not self._header:
            return 0
        at = max(self._whole_to, PCAP_FILE_HEADER)
        while True:
            file.seek(at)
            header = file.read(PCAP_RECORD_HEADER)
            if len(header) < PCAP_RECORD_HEADER:
                return at
            (captured,) = struct.unpack_from(self._order + "I", header, 8)
            if at + PCAP_RECORD_HEADER + captured > end:
                return at
            at += PCAP_RECORD_HEADER + captured

    def whole(self, data: bytes) -> int:
        at = 0
        if not self._header:
            if len(data) < PCAP_FILE_HEADER:
                return 0
            self._header, at = data[:PCAP_FILE_HEADER], PCAP_FILE_HEADER
            self._order = "<" if self._header[:4] in PCAP_MAGIC_LE else ">"
        while len(data) - at >= PCAP_RECORD_HEADER:
            (captured,) = struct.unpack_from(self._order + "I", data, at + 8)
            if len(data) - at - PCAP_RECORD_HEADER < captured:
                break
            at += PCAP_RECORD_HEADER + captured
        return at

    def close(self) -> None:
        if self._in_step and self._pending and not self._file.closed:  # the start of a record, as tcpdump ended
            self._put(self._pending)
        super().close()


class Child:
    """One probe process, serving one probe or several (`statuses`): every one of them shares
    its fate; the first reports the process's CPU, the others name it in `shared_with`.
    Subclasses say what its output means (`read_stdout`, `on_stderr`)."""

    capture_stdout = False

    def __init__(
        self,
        statuses: list[ProbeStatus],
        argv: list[str],
        log_path: Path,
        status_file: StatusFile,
        env: dict[str, str] | None = None,
    ) -> None:
        self.statuses = statuses
        self.status = statuses[0]
        for other in statuses[1:]:
            other.shared_with = self.status.probe
        self.argv = argv
        self.env = env
        self.status_file = status_file
        self.log = log_path.open("a", buffering=1)
        self._log_lock = threading.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._stopping = False
        self._cpu_at_attach: float | None = None
        self._cpu_at_stop: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process. Call from the main thread before any reader thread runs:
        the parent-death signal is tied to the thread that forks."""
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.capture_stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=self.env,
                start_new_session=True,  # a Ctrl-C meant for the runner must not reach probes
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            with self.status_file.lock:
                for status in self.statuses:
                    status.argv = self.argv
                    status.state = FAILED
                    status.attach_error = f"cannot start {self.argv[0]}: {e.strerror}"
            self.close()
            return
        if self._proc.stdout is not None:
            with contextlib.suppress(OSError):  # room for the lines of a burst between two reads
                fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        with self.status_file.lock:
            for status in self.statuses:
                status.argv = self.argv
                status.pid = self._proc.pid
        self.status_file.touch()

    def start_readers(self) -> None:
        if self._proc is None:
            return
        self._supervisor = threading.Thread(target=self._supervise, name=self.status.probe, daemon=True)
        self._supervisor.start()

    def request_stop(self) -> None:
        self._stopping = True
        if self.running and self._proc is not None:
            self._cpu_at_stop = process_cpu_s(self._proc.pid)
        self._signal(signal.SIGINT)

    @property
    def running(self) -> bool:
        """Not yet reaped. Only the supervisor reaps (os.wait4, for the CPU the process used),
        so an exited process stays a zombie until then and its pid cannot be reused."""
        return self._proc is not None and self._proc.returncode is None

    def wait(self, timeout: float) -> None:
        """Wait for the process to end after request_stop(); SIGKILL it past the timeout."""
        if self._supervisor is None or self._proc is None:
            return
        self._supervisor.join(timeout)
        if self._supervisor.is_alive():
            self._signal(signal.SIGKILL)
            self._supervisor.join()

    def _signal(self, signum: int) -> None:
        # os.kill, not Popen.send_signal: that polls first, and could reap the process before
        # the supervisor's wait4 reads how much CPU it used.
        if self.running:
            os.kill(self._proc.pid, signum)  # type: ignore[union-attr]

    # --- output -------------------------------------------------------------------------

    def _supervise(self) -> None:
        assert self._proc is not None
        readers = [threading.Thread(target=self._read_lines, args=(self._proc.stderr, self.on_stderr), daemon=True)]
        if self.capture_stdout:
            readers.append(threading.Thread(target=self.read_stdout, args=(self._proc.stdout,), daemon=True))
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        _, wait_status, usage = os.wait4(self._proc.pid, 0)
        self._proc.returncode = os.waitstatus_to_exitcode(wait_status)
        self._finish(self._proc.returncode, usage.ru_utime + usage.ru_stime)

    @staticmethod
    def _chunks(stream: IO[bytes] | None) -> Iterator[bytes]:
        """What the process writes, taking what gathered in the pipe every READ_INTERVAL_S: a
        wake-up per write would cost the workload more than reading does."""
        assert stream is not None
        fd = stream.fileno()
        while chunk := os.read(fd, READ_BYTES):
            yield chunk
            if len(chunk) < READ_BYTES:  # the pipe is drained
                time.sleep(READ_INTERVAL_S)

    @classmethod
    def _read_lines(cls, stream: IO[bytes] | None, handle: Callable[[str], None]) -> None:
        pending = b""
        for chunk in cls._chunks(stream):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                handle(line.decode(errors="replace"))
        if pending:
            handle(pending.decode(errors="replace"))

    def read_stdout(self, stream: IO[bytes] | None) -> None:
        """Read stdout until it closes (when `capture_stdout`)."""

    def _finish(self, code: int, cpu_s: float) -> None:
        tail = "; ".join(self._stderr_tail)
        reason = describe_exit(code) + (f": {tail}" if tail else "")
        stopped_at = time.time_ns()
        with self.status_file.lock:
            self.status.cpu_s = CpuSpent.split(self._cpu_at_attach, self._cpu_at_stop, cpu_s)
            for status in self.statuses:
                status.exit_code = code
                status.stopped_at_ns = stopped_at
                if self._stopping:
                    status.state = STOPPED
                elif not status.started:
                    status.state = FAILED
                    status.attach_error = reason
                else:
                    status.state = EXITED
                    status.error = f"probe ended on its own: {reason}"
        self.close()
        self.status_file.touch()

    def close(self) -> None:
        self.log.close()

    def log_line(self, stream: str, line: str) -> None:
        with self._log_lock, contextlib.suppress(OSError):  # a full disk loses the line, not the reader
            self.log.write(f"{stream}: {line}\n")

    def on_stderr(self, line: str) -> None:
        self.log_line("stderr", line)
        if line.strip() and not NOISE.search(line):
            self._stderr_tail.append(line.strip())

    def mark_started(self) -> None:
        self._cpu_at_attach = process_cpu_s(self._proc.pid) if self._proc else None
        started_at = time.time_ns()
        with self.status_file.lock:
            for status in self.statuses:
                status.started = True
                status.started_at_ns = started_at
                status.state = RUNNING
        self.status_file.touch()


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
"""A record's integers are signed 64-bit (what JSON readers and the analysis' tables hold): a
value outside is a u64 that wrapped, written as null with the reason in the record's `invalid`."""


class Records:
    """One probe's records from a bpftrace process: it parses the probe's entries, writes each
    batch in time order and counts what arrived."""

    def __init__(self, status: ProbeStatus, parse: Parser, tags: RecordTags, out_path: Path) -> None:
        self.status = status
        self.parse = parse
        self.tags = tags
        self.out_path = out_path
        self.out: IO[str] | None = None  # open while decoding
        self.log_line: Callable[[str, str], None] = lambda stream, line: None  # the process's log
        self.emitted: dict[int, int] = {}  # cpu -> events the program stored
        self.received = 0
        self._batch: list[Event] = []
        self._batch_keys: set[tuple[int, int]] = set()
        self._previous_keys: set[tuple[int, int]] = set()

    def buffered(self, key: tuple[int, int], text: str) -> None:
        if key in self._previous_keys:
            return  # printed by the previous batch too: its clear() was discarded at the stop
        self._batch_keys.add(key)
        self.received += 1
        if event := self.parse_event(text):
            self._batch.append(event)

    def write_batch(self) -> None:
        """Write the batch in time order (a buffer map prints in key order: CPU, then seq)."""
        for event in sorted(self._batch, key=lambda e: e.mono_ns):
            self.record(event)
        if self._batch_keys:
            self._previous_keys = self._batch_keys
        self._batch, self._batch_keys = [], set()

    def parse_event(self, text: str) -> Event | None:
        try:
            return self.parse(text)
        except (ParseError, ValueError) as e:
            self.log_line("parse-error", f"{self.status.probe}: {e}: ({text})")
            self.status.parse_errors += 1
            return None

    def record(self, event: Event) -> None:
        record: dict[str, object] = {
            "ts_ns": self.tags.clock.to_wall(event.mono_ns),
            "node": self.tags.node,
            "run_id": self.tags.run_id,
            "probe": self.tags.probe,
            "saddr": event.saddr,
            "sport": event.sport,
            "daddr": event.daddr,
            "dport": event.dport,
        }
        invalid = []
        for name, value in event.fields.items():
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                invalid.append(f"{name}={value} is out of range (a kernel counter that went below zero)")
                value = None
            is_mono = name in event.mono_fields and isinstance(value, int)
            record[name] = self.tags.clock.to_wall(value) if is_mono else value  # type: ignore[arg-type]
        if invalid:
            record["invalid"] = "; ".join(invalid)
            self.status.invalid_values += 1
        assert self.out is not None
        self.out.write(_ENCODE(record) + "\n")
        self.status.records += 1

    @property
    def lost(self) -> int:
        """Events stored in the kernel that never arrived (a full buffer map). A killed
        bpftrace never prints its counts: then nothing is known lost."""
        return max(0, sum(self.emitted.values()) - self.received)


class BpftraceChild(Child):
    """bpftrace running a program of programs.py for one probe or several (`records`, by
    probe). While it runs, its stdout goes to a file as it comes (`raw_path`): the runner
    only watches for READY and counts entries, because parsing costs it ~8 µs an entry, which
    the workload would pay while it is being measured. Once bpftrace ended, `decode` turns
    that file into records (batches of buffer-map entries between F lines, the event counts
    and maps END prints, "Lost N events") and removes it; a runner killed before that leaves
    it in place."""

    capture_stdout = True

    def __init__(
        self,
        records: list[Records],
        argv: list[str],
        log_path: Path,
        status_file: StatusFile,
        raw_path: Path,
        printed_by: str | None = None,
        bpf_stats: bool = False,
    ) -> None:
        env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX=str(MAP_KEYS_MAX))
        super().__init__([r.status for r in records], argv, log_path, status_file, env)
        self.records = {r.status.probe: r for r in records}
        for r in records:
            r.log_line = self.log_line
        self.raw_path = raw_path
        self.bpf_stats = bpf_stats  # the kernel counts BPF run time: report this process's
        self.raw = LineFile(raw_path, self.status, status_file)
        self.printed_by = printed_by  # the probe whose maps END prints (programs.Part.prints_at_end)
        self.printed_at_end: dict[str, list[str]] = {}  # map key -> tuples, see programs.py
        self._entry_marks = {probe: (f"@{probe}0[".encode(), f"@{probe}1[".encode()) for probe in self.records}

    def request_stop(self) -> None:
        if (
            self.bpf_stats
            and self.running
            and self._proc is not None
            and (spent := bpfstats.program_time(self._proc.pid))
        ):
            with self.status_file.lock:
                self.status.bpf_run_ns, self.status.bpf_runs = spent.run_ns, spent.runs
        super().request_stop()

    # --- while running: copy --------------------------------------------------------------

    def read_stdout(self, stream: IO[bytes] | None) -> None:
        for chunk in self._chunks(stream):
            lines = self.raw.append(chunk)
            if not self.status.started and any(line.startswith(b"READY") for line in lines.split(b"\n")):
                self.mark_started()
            counted = {probe: chunk.count(a) + chunk.count(b) for probe, (a, b) in self._entry_marks.items()}
            if any(counted.values()):
                with self.status_file.lock:
                    for probe, entries in counted.items():  # entries so far; the records once decoded
                        self.records[probe].status.records += entries
                self.status_file.touch()

    # --- once ended: decode ---------------------------------------------------------------

    def decode(self) -> None:
        """Write the records of everything bpftrace printed, then remove its output."""
        self.raw.close()
        with self.status_file.lock:
            for r in self.records.values():
                r.status.records = 0
        with contextlib.ExitStack() as files:
            for r in self.records.values():
                r.out = files.enter_context(r.out_path.open("a"))
            raw = files.enter_context(self.raw_path.open("rb"))
            for number, line in enumerate(raw, 1):
                self._decode_line(line.rstrip(b"\n").decode(errors="replace"))
                if number % DECODE_STATUS_LINES == 0:
                    self.status_file.write()  # progress, which the controller waits for
            self._write_batches()  # a batch cut short by the process's end
            if self.printed_by is not None:  # the RTT windows still open at the stop
                owner = self.records[self.printed_by]
                for tuples in self.printed_at_end.values():
                    if event := owner.parse_event(", ".join(tuples)):
                        owner.record(event)
        for r in self.records.values():
            r.out = None
            if r.lost:
                self.log_line("lost", f"{r.lost} {r.status.probe} events did not fit the buffer maps")
                with self.status_file.lock:
                    r.status.lost_events += r.lost
        self.raw_path.unlink()

    def _decode_line(self, line: str) -> None:
        if (entry := BUFFER_ENTRY.fullmatch(line)) and entry[1] in self.records:
            self.records[entry[1]].buffered((int(entry[2]), int(entry[3])), entry[4])
        elif line == "F":
            self._write_batches()
        elif (emitted := EMITTED_ENTRY.fullmatch(line)) and emitted[1] in self.records:
            self.records[emitted[1]].emitted[int(emitted[2])] = int(emitted[3])
        elif entry := MAP_ENTRY.fullmatch(line):
            self.printed_at_end.setdefault(entry[1], []).append(entry[2])
        elif lost := BPFTRACE_LOST.search(line):
            with self.status_file.lock:
                self.status.lost_events += int(lost.group(1))
            self.log_line("stdout", line)
        elif line.strip() and not line.startswith("READY"):
            self.log_line("stdout", line)

    def _write_batches(self) -> None:
        for r in self.records.values():
            r.write_batch()

    def _finish(self, code: int, cpu_s: float) -> None:
        try:
            self.decode()
        except OSError as e:  # the output stays for a later look; the probe says why
            self.log_line("decode-error", str(e))
            self._stderr_tail.append(f"cannot decode {self.raw_path.name}: {e}")
        finally:
            super()._finish(code, cpu_s)

    def close(self) -> None:
        self.raw.close()
        super().close()


class TcpdumpChild(Child):
    """tcpdump writing a pcap to its stdout (`-w -`), which the runner copies to `pcap_path`
    (PcapFile: a full disk costs the records that arrived meanwhile, not the rest of the capture);
    "listening on" means attached; counts come at exit."""

    capture_stdout = True

    def __init__(
        self, statuses: list[ProbeStatus], argv: list[str], log_path: Path, status_file: StatusFile, pcap_path: Path
    ) -> None:
        super().__init__(statuses, argv, log_path, status_file)
        self.pcap = PcapFile(pcap_path, self.status, status_file)

    def read_stdout(self, stream: IO[bytes] | None) -> None:
        for chunk in self._chunks(stream):
            self.pcap.append(chunk)

    def close(self) -> None:
        self.pcap.close()
        super().close()

    def on_stderr(self, line: str) -> None:
        super().on_stderr(line)
        if "listening on" in line:
            self.mark_started()
        elif captured := TCPDUMP_CAPTURED.search(line):
            self.status.packets = int(captured.group(1))
        elif dropped := TCPDUMP_DROPPED.search(line):
            self.status.packets_dropped = int(dropped.group(1))
