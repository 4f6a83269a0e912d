"""One SSH connection per node (fabric, pinned host keys): the node script's steps, the clock
offset and the SFTP pull with size and sha256 checks."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

from experiments import clock, node_script, services
from lab.errors import LabError
from lab.runlayout import ClockOffset
from lab.ssh import SSH_ERRORS, connection
from vms.base import Node

SCRIPT = Path(node_script.__file__).read_text()
T = TypeVar("T")


class NodeError(Exception):
    """A step failed on one node; recorded as a fault of that node, the others go on."""


@dataclass
class NodeSession:
    node: Node
    conn: Connection
    run_id: str

    @property
    def run_dir(self) -> str:
        return f"{services.RUNS_DIR}/{self.run_id}"

    def step(self, name: str, timeout: float = 120, **args: Any) -> dict:
        """Run one step of the node script as root; its result, or NodeError naming what failed."""
        command = f"sudo -n /usr/bin/python3 -c {shlex.quote(SCRIPT)} {name} {shlex.quote(json.dumps(args))}"
        try:
            result = self.conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except SSH_ERRORS as exc:
            raise NodeError(f"{name}: no answer over SSH ({type(exc).__name__}: {exc})") from None
        except CommandTimedOut:
            raise NodeError(f"{name}: no answer within {timeout:.0f} s") from None
        lines = result.stdout.strip().splitlines()
        if result.exited != 0 or not lines:
            raise NodeError(
                f"{name}: exited {result.exited}: {(result.stderr.strip().splitlines() or ['no output'])[-1]}"
            )
        answer = json.loads(lines[-1])
        if not answer["ok"]:
            raise NodeError(answer["error"])
        return answer["result"]

    def start_probes(self, probes: list[str], rtt: tuple[int, int], bpf_stats: bool = False) -> dict:
        """Start this node's probe runner on the lab interface and loopback; wait until it runs."""
        return self.step(
            "start",
            timeout=node_script.START_TIMEOUT_S + 30,
            run_dir=self.run_dir,
            node=self.node.name,
            address=self.node.address,
            run_id=self.run_id,
            probes=probes,
            collectors=services.COLLECTORS,
            telemetry=services.TELEMETRY_DIR,
            rtt=rtt,
            bpf_stats=bpf_stats,
        )

    def stop_probes(self, offsets: dict[str, int]) -> dict:
        """Stop the runner so its probes flush; copy the services' telemetry from `offsets` on. A runner
        still decoding (long runs on slow nodes) is asked again until it stopped or the node killed it."""
        while True:
            answer = self.step(
                "stop",
                timeout=node_script.STOP_STEP_S + 60,
                run_dir=self.run_dir,
                telemetry=services.TELEMETRY_DIR,
                offsets=offsets,
                wait_s=node_script.STOP_STEP_S,
            )
            if answer["runner"] != "stopping":
                return answer

    def clock(self) -> ClockOffset:
        try:
            return clock.measure(self.conn.transport)
        except (*SSH_ERRORS, ValueError, RuntimeError) as exc:
            raise NodeError(f"clock offset: {type(exc).__name__}: {exc}") from None

    def pull(self, files: dict[str, dict], target: Path) -> list[str]:
        """Copy every listed file over SFTP; returns the files whose size or sha256 did not match twice."""
        bad = []
        try:
            sftp = self.conn.sftp()
            for relpath, expected in files.items():
                local = target / relpath
                local.parent.mkdir(parents=True, exist_ok=True)
                for _ in range(2):
                    sftp.get(f"{self.run_dir}/{relpath}", str(local))
                    if node_script.file_digest(local) == (expected["bytes"], expected["sha256"]):
                        break
                else:
                    bad.append(relpath)
        except SSH_ERRORS as exc:
            raise NodeError(f"pull: {type(exc).__name__}: {exc}") from None
        return bad

    def close(self) -> None:
        self.conn.close()


def open_session(node: Node, known_hosts: Path, run_id: str) -> NodeSession:
    """Connect with the node's pinned host key, or a LabError that says why not."""
    conn = connection(node, known_hosts)
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        raise LabError(
            f"{node.name} ({node.address}) offered a host key that is not the pinned one in {known_hosts}; "
            "run `lab teardown` and `lab up`"
        ) from None
    except SSH_ERRORS as exc:
        raise LabError(
            f"{node.name} ({node.address}) is not reachable over SSH ({type(exc).__name__}: {exc}); check `lab status`"
        ) from None
    return NodeSession(node, conn, run_id)


def parallel(fn: Callable[[NodeSession], T], sessions: list[NodeSession]) -> dict[str, T | Exception]:
    """`fn` on every node at once; each node's result or the exception it raised."""

    def guarded(session: NodeSession) -> T | Exception:
        try:
            return fn(session)
        except Exception as exc:  # noqa: BLE001 - one node's failure is that node's result, never the others'
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(sessions))) as pool:
        return dict(zip((s.node.name for s in sessions), pool.map(guarded, sessions), strict=True))
