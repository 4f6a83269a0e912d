"""Tiny TCP traffic generator run inside network namespaces by the collector tests.

    serve ADDR PORT COUNT       accept COUNT connections; read each to EOF, reply half as much
    send ADDR PORT NBYTES       connect, send NBYTES, half-close, read the reply to EOF
    send-on-go ADDR PORT NBYTES as send, but print "connected" and wait for a line on stdin
    send-and-hold ADDR PORT NBYTES
                                as send, but print "sent" and wait for a line on stdin before
                                the half-close: the connection stays open meanwhile
    serve-close-first ADDR PORT NBYTES
                                accept one connection, send NBYTES and close at once, reading
                                nothing: its socket is orphaned in FIN_WAIT2 before the peer's FIN
    recv-late ADDR PORT 0       connect, read to EOF half a second later, close a second after

Clients print one JSON line: their local and remote address and port, bytes sent and received.
Every socket operation has a timeout, so a broken test cannot hang here.
"""

from __future__ import annotations

import json
import socket
import sys
import time

TIMEOUT_S = 20.0


def read_to_eof(sock: socket.socket) -> int:
    total = 0
    while chunk := sock.recv(65536):
        total += len(chunk)
    return total


def serve(address: str, port: int, count: int) -> None:
    with socket.create_server((address, port), reuse_port=False) as server:
        server.settimeout(TIMEOUT_S)
        print("listening", flush=True)
        for _ in range(count):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(TIMEOUT_S)
                conn.sendall(b"r" * (read_to_eof(conn) // 2))


def serve_close_first(address: str, port: int, nbytes: int) -> None:
    with socket.create_server((address, port), reuse_port=False) as server:
        server.settimeout(TIMEOUT_S)
        print("listening", flush=True)
        conn, _ = server.accept()
        conn.sendall(b"c" * nbytes)
        conn.close()


def recv_late(address: str, port: int) -> None:
    with socket.create_connection((address, port), timeout=TIMEOUT_S) as sock:
        local, remote = sock.getsockname(), sock.getpeername()
        time.sleep(0.5)
        received = read_to_eof(sock)
        time.sleep(1.0)  # the peer's socket is long handed to time wait when this FIN arrives
    print(
        json.dumps(
            {
                "saddr": local[0],
                "sport": local[1],
                "daddr": remote[0],
                "dport": remote[1],
                "sent": 0,
                "received": received,
            }
        )
    )


def wait_for_line(said: str) -> None:
    print(said, flush=True)
    sys.stdin.readline()


def send(address: str, port: int, nbytes: int, wait_for_go: bool, hold: bool) -> None:
    with socket.create_connection((address, port), timeout=TIMEOUT_S) as sock:
        local, remote = sock.getsockname(), sock.getpeername()
        if wait_for_go:
            wait_for_line("connected")
        sock.sendall(b"q" * nbytes)
        if hold:
            wait_for_line("sent")
        sock.shutdown(socket.SHUT_WR)
        received = read_to_eof(sock)
    print(
        json.dumps(
            {
                "saddr": local[0],
                "sport": local[1],
                "daddr": remote[0],
                "dport": remote[1],
                "sent": nbytes,
                "received": received,
            }
        )
    )


def main(argv: list[str]) -> None:
    command, address, port, number = argv[0], argv[1], int(argv[2]), int(argv[3])
    if command == "serve":
        serve(address, port, number)
    elif command == "serve-close-first":
        serve_close_first(address, port, number)
    elif command == "recv-late":
        recv_late(address, port)
    else:
        send(address, port, number, wait_for_go=command == "send-on-go", hold=command == "send-and-hold")


if __name__ == "__main__":
    main(sys.argv[1:])
