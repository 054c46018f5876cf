"""What tracing costs the router: deliveries/s to an HTTP sink with span export off and on, in
alternating rounds in one process, on a durable embedded PostgreSQL.

"Off" is the default (no OTEL_* variables: trace contexts are passed on, nothing is recorded);
"on" records a process, POST and settle span per event and exports them by OTLP/HTTP to a
receiver in a child process that decodes and counts them (OpenTelemetry's BatchSpanProcessor
drops spans when its queue is full; the count says whether it kept up).

    python bench/tracing_bench.py                 # 4 rounds of 5,000 events, about a minute
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.router_bench import FORWARD_SECRET, Sink, drain_rate, make_router, scratch_bus  # noqa: E402
from ipai_bus_lib.core import tracing  # noqa: E402
from ipai_bus_lib.delivery.destinations import HttpForwardDestination  # noqa: E402
from tests.helpers import free_port  # noqa: E402


def otlp_counter(port: int, connection) -> None:
    """An OTLP/HTTP receiver that counts the spans it is sent (child process)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    counted = multiprocessing.Value("q", 0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            request = ExportTraceServiceRequest.FromString(
                self.rfile.read(int(self.headers["Content-Length"]))
            )
            spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with counted.get_lock():
                counted.value += spans
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            body = str(counted.value).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    connection.send("ready")
    server.serve_forever()


def spans_counted(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10) as answer:
        return int(answer.read())


def round_rate(conn, url: str, events: int, run: str, export: bool) -> float:
    if export:
        os.environ.pop("OTEL_SDK_DISABLED", None)
    else:
        os.environ["OTEL_SDK_DISABLED"] = "true"
    tracing.reconfigure()
    assert tracing.tracer().enabled == export
    sink = Sink()
    try:
        destination = HttpForwardDestination("sink", sink.url, FORWARD_SECRET)
        router = make_router(url, destination, batch_size=200, concurrency=32)
        return drain_rate(conn, url, router, events, run)
    finally:
        sink.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    parent, child = multiprocessing.Pipe()
    counter = multiprocessing.Process(target=otlp_counter, args=(port, child), daemon=True)
    counter.start()
    assert parent.recv() == "ready"
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    os.environ["OTEL_SERVICE_NAME"] = "tracing-bench"
    rates: dict[bool, list[float]] = {False: [], True: []}
    with scratch_bus("ipai-tracing-bench-") as (url, conn):
        for number in range(args.rounds):
            for export in (False, True):
                rate = round_rate(conn, url, args.events, f"r{number}{int(export)}", export)
                rates[export].append(rate)
                print(
                    f"round {number + 1} export {'on ' if export else 'off'}  {rate:8.0f} deliveries/s",
                    flush=True,
                )
    tracing.flush(10)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    expected = 3 * args.events * args.rounds
    print(f"{'HTTP sink, batch 200, 32 wide, export off':<48} {off:8.0f} deliveries/s (median)")
    print(f"{'the same, spans exported by OTLP/HTTP':<48} {on:8.0f} deliveries/s (median)")
    print(f"ratio on/off: {on / off:.2f}; spans received {spans_counted(port)} of {expected}")
    counter.terminate()


if __name__ == "__main__":
    main()
