"""The one sender (core/sender.py) against real HTTP servers on loopback: keep-alive, a kept
connection the server closed, no server, a server that never answers, a bad URL, a non-JSON
answer. The receiver-facing behaviour (what gets stored) is in test_batch_ingest and test_cli."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ipai_bus_lib.core import signing
from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.errors import ConfigurationError
from ipai_bus_lib.core.sender import ReceiverUnreachable, SignedSender

from .helpers import PRIMARY_SECRET, free_port

ENVELOPE = Envelope("test.sent", "res.partner", "7", {"n": 1})


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 JSON; records each request's path, headers and connection."""

    protocol_version = "HTTP/1.1"
    close_after_each = False
    answer_body = b'{"ok": true, "event_id": "e1"}'
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, dict(self.headers), self.client_address, body))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.answer_body)))
        if self.close_after_each:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(self.answer_body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def server(handler=Recorder):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/functions/v1/odoo-webhook"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_posts_signed_events_and_batches_over_one_kept_alive_connection():
    with server() as (httpd, url), SignedSender(url, PRIMARY_SECRET) as sender:
        assert sender.post_event(ENVELOPE, "k-1") == (200, {"ok": True, "event_id": "e1"})
        sender.post_batch([(ENVELOPE, "k-2"), (ENVELOPE, "k-3")])
        sender.post_event(ENVELOPE, "k-4")
    (path1, single, peer1, body1), (path2, batch, peer2, body2), (_, _, peer3, _) = httpd.seen
    assert peer1 == peer2 == peer3, "one connection for all three"
    assert (path1, path2) == ("/functions/v1/odoo-webhook", "/functions/v1/odoo-webhook/batch")
    assert single["x-idempotency-key"] == "k-1" and "x-idempotency-key" not in batch
    assert json.loads(body2)["events"][1]["idempotency_key"] == "k-3"
    for headers, body in ((single, body1), (batch, body2)):
        stamp = headers["x-ipai-timestamp"]
        assert headers["x-ipai-signature"] == signing.sign(PRIMARY_SECRET, body, timestamp_ms=int(stamp))


def test_a_connection_the_server_closed_is_replaced_and_the_request_sent_again():
    class Closing(Recorder):
        close_after_each = True

    with server(Closing) as (httpd, url), SignedSender(url, PRIMARY_SECRET) as sender:
        statuses = [sender.post_event(ENVELOPE, f"k-{n}")[0] for n in range(3)]
    assert statuses == [200, 200, 200] and len(httpd.seen) == 3
    assert len({peer for _, _, peer, _ in httpd.seen}) == 3, "a new connection each time"


def test_a_kept_connection_closed_without_a_word_is_replaced_and_the_request_sent_again():
    """An idle keep-alive the server dropped (as the receiver's front does after idle_seconds):
    the next request meets a closed socket, and goes again on a new connection, once."""

    class Dropping(Recorder):
        def do_POST(self):  # noqa: N802
            super().do_POST()
            self.close_connection = True  # closes after answering, without Connection: close

    with server(Dropping) as (httpd, url), SignedSender(url, PRIMARY_SECRET) as sender:
        statuses = []
        for n in range(3):
            statuses.append(sender.post_event(ENVELOPE, f"k-{n}")[0])
            time.sleep(0.05)  # the server's close reaches the client's socket
    assert statuses == [200, 200, 200]
    assert [body for *_, body in httpd.seen] == [ENVELOPE.to_bytes()] * 3, "each sent once"


def test_no_server_is_unreachable_with_the_reason():
    url = f"http://127.0.0.1:{free_port()}/functions/v1/odoo-webhook"
    with pytest.raises(ReceiverUnreachable) as caught, SignedSender(url, PRIMARY_SECRET) as sender:
        sender.post_event(ENVELOPE, "k")
    assert not caught.value.timed_out and "refused" in caught.value.reason.lower()
    assert str(caught.value).startswith(f"no receiver at {url}: ")


def test_a_server_that_never_answers_times_out():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    try:
        with pytest.raises(ReceiverUnreachable) as caught:
            SignedSender(url, PRIMARY_SECRET, timeout=0.3).post_event(ENVELOPE, "k")
    finally:
        listener.close()
    assert caught.value.timed_out and caught.value.reason == "no answer within 0.3 s"


@pytest.mark.parametrize("url", ["", "bus.example.ph/hook", "ftp://bus.example.ph/hook", "http://"])
def test_a_url_that_is_not_http_is_a_configuration_error(url):
    with pytest.raises(ConfigurationError, match="must start with http:// or https://"):
        SignedSender(url, PRIMARY_SECRET)


def test_an_answer_that_is_not_json_says_so_with_its_status():
    class Proxy(Recorder):
        status = 502
        answer_body = b"<html>Bad gateway</html>"

    with server(Proxy) as (_, url), SignedSender(url, PRIMARY_SECRET) as sender:
        assert sender.post_event(ENVELOPE, "k") == (502, {"ok": False, "error": "HTTP 502 (not JSON)"})
