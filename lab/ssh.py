"""SSH to the nodes with their pinned host keys: paramiko/fabric connections and the ssh argv."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from fabric import Connection

from lab.errors import LabError
from vms.base import Node

BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
SSH_PORT = 22

# What a failed SSH exchange raises. paramiko raises a bare EOFError when the server closes the
# connection mid-handshake (an sshd restarting while a VM boots); click would take that for Ctrl-D.
SSH_ERRORS = (OSError, paramiko.SSHException, EOFError)


def client(node: Node, timeout: float = 10.0, port: int = SSH_PORT) -> paramiko.SSHClient:
    """A connected paramiko client that accepts only the node's pinned host key."""
    ssh = paramiko.SSHClient()
    key_type, blob = node.host_key.split()[:2]
    known_as = node.address if port == SSH_PORT else f"[{node.address}]:{port}"
    ssh.get_host_keys().add(known_as, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(
        node.address,
        port,
        username=node.ssh_user,
        key_filename=str(node.key_path),
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
        look_for_keys=False,
        allow_agent=False,
    )
    return ssh


def connection(node: Node, known_hosts: Path) -> Connection:
    """A fabric Connection for the controller; host keys come from the lab's known_hosts only."""
    conn = Connection(
        node.address,
        user=node.ssh_user,
        connect_kwargs={"key_filename": str(node.key_path), "look_for_keys": False, "allow_agent": False},
        connect_timeout=10,
    )
    conn.client.load_host_keys(str(known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def ssh_argv(node: Node, known_hosts: Path, command: list[str] | None = None) -> list[str]:
    argv = [
        "ssh",
        "-i",
        str(node.key_path),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
        f"{node.ssh_user}@{node.address}",
    ]
    if command:
        argv += ["--", *command]
    return argv


def run(
    node: Node, command: str, timeout: float = 60.0, connect_timeout: float = 10.0, port: int = SSH_PORT
) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `command` on the node; TimeoutError when it gives no exit
    status within `timeout` seconds (a hung command must not hang `lab status` or `up`)."""
    with client(node, connect_timeout, port) as ssh:
        _, stdout, stderr = ssh.exec_command(command, timeout=timeout)
        if not stdout.channel.status_event.wait(timeout):
            raise TimeoutError(f"{node.name}: `{command}` gave no exit status within {timeout:.0f} s")
        return stdout.channel.recv_exit_status(), stdout.read().decode(), stderr.read().decode()


# Ready = cloud-init's first boot finished, not merely sshd up: its config stage still changes
# sshd_config and restarts sshd (connections refused meanwhile). Then sync, so what first boot
# wrote (host keys, the login's key) survives a VM that is powered off hard.
READY_COMMAND = f"test -f {BOOT_FINISHED} || {{ echo 'first boot (cloud-init) still running' >&2; exit 1; }}; sync"


def wait_ready(node: Node, timeout: float, still_booting=lambda: None, port: int = SSH_PORT) -> float:
    """Block until the node answers SSH (on `port`) with its pinned key and its first boot
    finished; returns seconds waited.

    `still_booting` is called between attempts and may raise to give up early (e.g. the VM died).
    """
    started = time.monotonic()
    last_error = "no answer"
    while (left := timeout - (time.monotonic() - started)) > 0:
        try:
            code, _, err = run(node, READY_COMMAND, timeout=30, connect_timeout=min(10.0, max(left, 0.1)), port=port)
            if code == 0:
                return time.monotonic() - started
            last_error = err.strip() or f"exit {code}"
        except paramiko.BadHostKeyException as exc:
            raise LabError(
                f"{node.name} ({node.address}) offered a host key that is not the pinned one ({exc}); "
                "run `lab teardown` and `lab up`"
            ) from None
        except SSH_ERRORS as exc:
            last_error = str(exc) or type(exc).__name__
        still_booting()
        time.sleep(0.5)
    raise LabError(f"{node.name} ({node.address}) did not answer SSH within {timeout:.0f} s (last: {last_error})")


class _Stopped(LabError):
    """A node's machine is gone while it boots; the message already holds its console's last lines."""


def wait_all_ready(
    nodes: list[Node],
    timeout: float,
    alive: Callable[[Node], bool],
    console: Callable[[Node], Path],
    stopped: str,
    progress: Callable[[str], None],
) -> None:
    """`wait_ready` for every node at once. A node whose machine is no longer `alive` fails at once,
    saying it `stopped`; a failure says the last lines of the node's console log."""

    def console_tail(node: Node, lines: int) -> str:
        log = console(node)
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:] if log.is_file() else []
        return f"{' | '.join(tail)} (console log: {log})"

    def one(node: Node) -> None:
        def still_booting() -> None:
            if not alive(node):
                raise _Stopped(f"{node.name}: {stopped} while booting; {console_tail(node, 3)}")

        try:
            waited = wait_ready(node, timeout, still_booting)
        except _Stopped:
            raise
        except LabError as exc:
            raise LabError(f"{exc}; its console ends: {console_tail(node, 8)}") from None
        progress(f"{node.name}: SSH ready ({waited:.1f} s)")

    with ThreadPoolExecutor(len(nodes)) as pool:
        for future in [pool.submit(one, node) for node in nodes]:
            future.result()
