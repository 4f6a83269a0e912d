"""Waiting for SSH: a server that hangs up mid-handshake is a node still booting, not an interrupt."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from lab.errors import LabError
from lab.ssh import run as ssh_run
from lab.ssh import wait_ready
from vms.base import Node

ADDRESS = "127.0.0.1"


def hang_up_after_banner(server: socket.socket, stop: threading.Event) -> None:
    """What an sshd restarted by cloud-init looks like: a banner, then the connection closes."""
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(5)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            conn.shutdown(socket.SHUT_WR)
            # read what the client sent until it closes too: closing with unread data would send a
            # reset, which the client reports as one instead of the hang-up
            while conn.recv(4096):
                pass


def test_a_hang_up_during_the_handshake_is_retried_then_reported(tmp_path):
    server = socket.create_server((ADDRESS, 0))  # a free port: nothing here depends on who holds port 22
    port = server.getsockname()[1]
    server.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=hang_up_after_banner, args=(server, stop), daemon=True)
    thread.start()
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(tmp_path / "id_rsa"))
    node = Node(
        "fake", ("agents",), ADDRESS, "admin", tmp_path / "id_rsa", f"ssh-rsa {key.get_base64()}", "nspawn", "container"
    )
    attempts = []
    try:
        expected = r"fake \(127\.0\.0\.1\) did not answer SSH within 3 s \(last: EOFError\)"
        with pytest.raises(LabError, match=expected):
            wait_ready(node, timeout=3, still_booting=lambda: attempts.append(1), port=port)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert len(attempts) >= 2  # it kept trying after the first hang-up


class ReadyNode(paramiko.ServerInterface):
    """An sshd whose node finished its first boot: the lab's login key gets in, every command exits 0."""

    def __init__(self, login: paramiko.PKey, answers: bool = True):
        self.login = login
        self.answers = answers

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "admin" and key.get_base64() == self.login.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        refused = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return paramiko.OPEN_SUCCEEDED if kind == "session" else refused

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.answers:  # else a command that hangs: no exit status ever comes
            threading.Timer(0.05, lambda: (channel.send_exit_status(0), channel.close())).start()
        return True


def serve_ssh(
    server: socket.socket, host_key: paramiko.PKey, login: paramiko.PKey, stop: threading.Event, answers: bool = True
) -> None:
    transports = []
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        transport.start_server(server=ReadyNode(login, answers))
        transports.append(transport)
    for transport in transports:
        transport.close()


def keys(directory, count: int) -> list[Path]:
    """`count` ed25519 private key files made by ssh-keygen: key0, key1, ..."""
    paths = [directory / f"key{i}" for i in range(count)]
    for path in paths:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paths


@pytest.mark.parametrize("pinned", ["served", "other"])
def test_a_node_on_any_port_is_ready_with_its_pinned_host_key_only(tmp_path, pinned):
    files = keys(tmp_path, 3)
    host_key, other, login = (paramiko.Ed25519Key.from_private_key_file(str(p)) for p in files)
    server = socket.create_server((ADDRESS, 0))
    server.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=serve_ssh, args=(server, host_key, login, stop), daemon=True)
    thread.start()
    key = host_key if pinned == "served" else other
    node = Node(
        "fake", ("agents",), ADDRESS, "admin", files[2], f"ssh-ed25519 {key.get_base64()}", "nspawn", "container"
    )
    try:
        if pinned == "served":
            assert wait_ready(node, timeout=10, port=server.getsockname()[1]) < 10
        else:
            with pytest.raises(LabError, match=r"fake \(127\.0\.0\.1\) offered a host key that is not the pinned one"):
                wait_ready(node, timeout=10, port=server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        server.close()


def test_a_command_that_hangs_times_out_instead_of_hanging_the_caller(tmp_path):
    files = keys(tmp_path, 2)
    host_key, login = (paramiko.Ed25519Key.from_private_key_file(str(p)) for p in files)
    server = socket.create_server((ADDRESS, 0))
    server.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=serve_ssh, args=(server, host_key, login, stop, False), daemon=True)
    thread.start()
    node = Node(
        "fake", ("agents",), ADDRESS, "admin", files[1], f"ssh-ed25519 {host_key.get_base64()}", "nspawn", "container"
    )
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match="gave no exit status within 1 s"):
            ssh_run(node, "systemctl list-units", timeout=1, port=server.getsockname()[1])
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        thread.join()
        server.close()
