"""Item 4 of "delivery never halts": connection floods and slow clients do not stall the receiver.

Anyone who can open TCP connections can hold them idle or feed them a byte at a time; the
receiver must keep answering signed requests from everyone else at once, with no proxy in front.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .helpers import WEBHOOK_PATH, counts, event_body, post, receiver_process, signed

pytestmark = pytest.mark.slow


@contextmanager
def hostile_clients(
    port: int, *, idle: int, slow: int, interval: float = 0.5
) -> Iterator[list[socket.socket]]:
    """``idle`` connections that send nothing, and ``slow`` ones that trickle a request: half
    its head a byte at a time, half a whole head and then its body a byte at a time."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle + slow)]
    trickled = sockets[idle:]
    stop = threading.Event()
    head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for number, sock in enumerate(trickled):
        if number % 2:  # slow body: the head at once, announcing a body that never comes
            sock.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode())

    def trickle() -> None:
        while not stop.wait(interval):
            for sock in trickled:
                try:
                    sock.send(b"x")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield sockets
    finally:
        stop.set()
        thread.join(5)
        for sock in sockets:
            sock.close()


def test_legitimate_requests_are_answered_within_a_second_under_a_flood(clean_bus, tmp_path):
    with receiver_process(clean_bus, tmp_path, workers=2, threads=8) as receiver:
        port = int(receiver.base_url.rsplit(":", 1)[1])
        with hostile_clients(port, idle=500, slow=32):
            time.sleep(1.0)  # the flood is in place: every connection accepted and held
            latencies = []
            for number in range(20):
                body = event_body(f"flood-{number}")
                started = time.monotonic()
                answer = post(receiver.base_url, body, signed(body, key=f"flood-{number}"))
                latencies.append(time.monotonic() - started)
                assert answer.status_code == 200, answer.text
        assert "Traceback" not in receiver.log()
    assert max(latencies) < 1.0, f"slowest legitimate answer {max(latencies):.2f} s"
    assert counts(clean_bus) == (20, 20)


def test_idle_and_slow_connections_are_closed_by_their_deadlines(clean_bus, tmp_path):
    """A connection that has not sent a whole head within 10 s is closed: holders free up."""
    with receiver_process(clean_bus, tmp_path, workers=1) as receiver:
        port = int(receiver.base_url.rsplit(":", 1)[1])
        with hostile_clients(port, idle=4, slow=2, interval=1.0) as sockets:
            for sock in sockets:
                sock.settimeout(15)
            started = time.monotonic()
            closed = [_closed_by_server(sock) for sock in sockets[:4]]
            elapsed = time.monotonic() - started
    assert all(closed) and 8 < elapsed < 13, f"closed after {elapsed:.1f} s"


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
