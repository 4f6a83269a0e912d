"""Waiting for SSH: a server that hangs up mid-handshake is a node still booting, not an interrupt."""

from __future__ import annotations

import socket
import threading

import paramiko
import pytest

from lab.errors import LabError
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
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            conn.recv(4096)


def test_a_hang_up_during_the_handshake_is_retried_then_reported(tmp_path):
    server = socket.create_server((ADDRESS, 0))  # a free port: nothing here depends on who holds port 22
    port = server.getsockname()[1]
    server.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=hang_up_after_banner, args=(server, stop), daemon=True)
    thread.start()
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(tmp_path / "id_rsa"))
    node = Node("fake", ("agents",), ADDRESS, "admin", tmp_path / "id_rsa", f"ssh-rsa {key.get_base64()}", "nspawn", "container")
    attempts = []
    try:
        with pytest.raises(LabError, match=r"fake \(127\.0\.0\.1\) did not answer SSH within 3 s \(last: EOFError\)"):
            wait_ready(node, timeout=3, still_booting=lambda: attempts.append(1), port=port)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert len(attempts) >= 2  # it kept trying after the first hang-up
