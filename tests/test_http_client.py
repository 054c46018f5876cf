"""The destinations' HTTP client against raw loopback servers: every shape of answer it reads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ipai_bus_lib.delivery.destinations.base import DeliveryFailed
from ipai_bus_lib.delivery.destinations.http_client import (
    MAX_ANSWER_BYTES,
    KeepAliveClient,
    post_json,
)


@contextmanager
def raw_server(*answers: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server answering each request it reads with the next of ``answers`` (closing
    the connection after an answer that says so, or after the last one)."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []
    queue = list(answers)

    def serve() -> None:
        while queue:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while queue:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        )
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    requests.append(head + b"\r\n\r\n" + body)
                    answer = queue.pop(0)
                    conn.sendall(answer)
                    if _ends_the_connection(answer):
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", requests
    finally:
        listener.close()
        thread.join(timeout=5)


def _ends_the_connection(answer: bytes) -> bool:
    head = answer.partition(b"\r\n\r\n")[0].lower()
    framed = b"content-length" in head or b"chunked" in head or head.startswith(b"http/1.1 204")
    return b"connection: close" in head or head.startswith(b"http/1.0") or not framed


def post_twice(*answers: bytes) -> tuple[list, list[bytes]]:
    client = KeepAliveClient(timeout=5)
    results = []
    with raw_server(*answers) as (url, requests):
        for _ in answers:
            try:
                results.append(post_json(client, url, b'{"n": 1}', {"X-Test": "yes"}))
            except DeliveryFailed as failure:
                results.append(failure)
        client.close()
    return results, requests


def test_the_request_is_one_well_formed_post_with_the_headers_and_body():
    results, requests = post_twice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert results == [200]
    head, _, body = requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook HTTP/1.1"
    assert b"Content-Type: application/json" in lines and b"X-Test: yes" in lines
    assert b"Content-Length: 8" in lines and body == b'{"n": 1}'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    ],
    ids=["content-length", "no content", "chunked", "chunked with extension and trailer"],
)
def test_keep_alive_answers_leave_the_connection_open_for_the_next_request(answer):
    results, requests = post_twice(answer, answer)
    assert results == [results[0], results[0]] and results[0] in (200, 204)
    assert len(requests) == 2, "both requests went over one connection"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nread until the server closes",
    ],
    ids=["connection close", "HTTP/1.0", "no length"],
)
def test_an_answer_that_ends_the_connection_is_read_and_the_next_post_reconnects(answer):
    results, requests = post_twice(answer, answer)
    assert results == [200, 200] and len(requests) == 2


def test_error_answers_are_classified_with_their_text_and_retry_after():
    results, _ = post_twice(
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow",
        b"HTTP/1.1 422 Nope\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n",
    )
    throttled, refused = results
    assert throttled.http_status == 429 and throttled.retry_after_seconds == 7.0
    assert "HTTP 429: slow" in str(throttled)
    assert refused.retryable is False and "HTTP 422: bad" in str(refused)


@pytest.mark.parametrize(
    "answer, reason",
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended inside its body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not hexadecimal"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\n", "head is too large"),
    ],
    ids=["not http", "short body", "bad chunk", "huge head"],
)
def test_a_malformed_answer_is_a_retryable_failure_that_names_the_problem(answer, reason):
    results, _ = post_twice(answer + b"")
    [failure] = results
    assert isinstance(failure, DeliveryFailed) and failure.retryable
    assert reason in str(failure)


def test_a_long_answer_is_read_up_to_the_limit_and_the_connection_dropped():
    big = b"x" * (MAX_ANSWER_BYTES * 2)
    answer = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    results, _ = post_twice(answer)
    assert results[0].http_status == 500 and len(str(results[0])) < 400


def test_an_interim_answer_is_skipped_and_the_final_one_read():
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    results, requests = post_twice(early_hints + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert results == [200] and len(requests) == 1


@pytest.mark.parametrize(
    "answer, outcome",
    [
        (
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n"
            + b"x" * (MAX_ANSWER_BYTES + 4096),
            "HTTP 500: xxx",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"7" * 4096,
            "a chunk size is too large",
        ),
    ],
    ids=["a chunk claiming 4 GiB", "a chunk size that never ends"],
)
def test_a_peer_cannot_make_the_client_buffer_without_limit(answer, outcome):
    results, _ = post_twice(answer)
    [failure] = results
    assert isinstance(failure, DeliveryFailed) and outcome in str(failure)
    assert len(str(failure)) < 400
