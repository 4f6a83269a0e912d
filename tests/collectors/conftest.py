"""Fixtures for the collector tests: network namespaces joined by veth pairs, and the probe
runner started inside one of them with the node's own python3 (no venv)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_root

REPO = Path(__file__).resolve().parents[2]
TRAFFIC = Path(__file__).with_name("traffic.py")
# The runner must work with the distribution's interpreter, as on a node.
NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
# Addresses of the test namespaces (only these and loopback ever carry traffic).
A_ADDR, B_ADDR = "10.231.0.1", "10.231.0.2"  # observed node A <-> peer B
C_ADDR, B2_ADDR = "10.231.0.5", "10.231.0.6"  # third namespace C <-> B


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Namespaces:
    """Three namespaces: a (the observed node) <-> b (its peer) <-> c (a third party)."""

    a: str
    b: str
    c: str
    a_addr: str = A_ADDR
    b_addr: str = B_ADDR
    c_addr: str = C_ADDR
    b2_addr: str = B2_ADDR
    python: str = NODE_PYTHON
    traffic: str = str(TRAFFIC)

    def inode(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    def popen(self, ns: str, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kwargs)  # type: ignore[call-overload]

    def exec(self, ns: str, *argv: str) -> str:
        return run("ip", "netns", "exec", ns, *argv)

    def serve(self, ns: str, address: str, port: int, count: int) -> subprocess.Popen[str]:
        server = self.popen(
            ns,
            [NODE_PYTHON, str(TRAFFIC), "serve", address, str(port), str(count)],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        return server

    def send(self, ns: str, address: str, port: int, nbytes: int, command: str = "send") -> dict[str, object]:
        out = self.exec(ns, NODE_PYTHON, str(TRAFFIC), command, address, str(port), str(nbytes))
        return json.loads(out)

    def serve_close_first(self, ns: str, address: str, port: int, nbytes: int) -> subprocess.Popen[str]:
        """One connection: NBYTES sent and closed at once, nothing read (traffic.py serve-close-first)."""
        server = self.popen(
            ns,
            [NODE_PYTHON, str(TRAFFIC), "serve-close-first", address, str(port), str(nbytes)],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        return server


def _link(ns1: str, addr1: str, ns2: str, addr2: str, name1: str, name2: str) -> None:
    run(
        "ip",
        "link",
        "add",
        name1,
        "netns",
        ns1,
        "type",
        "veth",
        "peer",
        "name",
        name2,
        "netns",
        ns2,
    )
    for ns, name, addr in ((ns1, name1, addr1), (ns2, name2, addr2)):
        run("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", name)
        run("ip", "-n", ns, "link", "set", name, "up")


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespaces]:
    require_root("collector integration tests", ("ip", "bpftrace", "tcpdump", "nft"))
    tag = f"ct{os.getpid() % 100000}"
    spaces = Namespaces(a=f"{tag}a", b=f"{tag}b", c=f"{tag}c")
    try:
        for ns in (spaces.a, spaces.b, spaces.c):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        _link(spaces.a, A_ADDR, spaces.b, B_ADDR, "lab0", "peera0")
        _link(spaces.c, C_ADDR, spaces.b, B2_ADDR, "other0", "peerc0")
        yield spaces
    finally:
        for ns in (spaces.a, spaces.b, spaces.c):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class RunnerProcess:
    """`python3 -m collectors run` inside a namespace, as the controller would start it."""

    def __init__(self, spaces: Namespaces, ns: str, out: Path, *extra: str) -> None:
        self.out = out
        env = dict(os.environ, PYTHONPATH=str(REPO))
        argv = [
            NODE_PYTHON,
            "-m",
            "collectors",
            "run",
            "--node",
            "node-a",
            "--run-id",
            "test-run",
            "--out",
            str(out),
            *extra,
        ]
        self.proc = spaces.popen(ns, argv, cwd=REPO, env=env, stderr=subprocess.PIPE)

    def status(self) -> dict:  # type: ignore[type-arg]
        try:
            return json.loads((self.out / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def wait_for(self, predicate: object, timeout: float, what: str) -> dict:  # type: ignore[type-arg]
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited ({self.proc.returncode}): {self.stderr()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; status: {json.dumps(self.status())}")

    def wait_running(self) -> dict:  # type: ignore[type-arg]
        return self.wait_for(lambda s: s.get("state") == "running", 90, "probes to attach")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def records(self, probe: str) -> list[dict]:  # type: ignore[type-arg]
        path = self.out / f"{probe}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def start_runner(netns: Namespaces) -> Iterator[Callable[..., RunnerProcess]]:
    """Start runners inside namespace a; any still running at the end are killed."""
    started: list[RunnerProcess] = []

    def start(out: Path, *extra: str) -> RunnerProcess:
        runner = RunnerProcess(netns, netns.a, out, *extra)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.kill()
