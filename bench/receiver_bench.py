"""Receiver benchmark: verified events/s and latency over HTTP vs. direct inserts, same run.

Starts a durable embedded PostgreSQL of its own (fsync on) and `ipai-bus serve` on loopback, then:
  1. direct: N threads, each with its own psycopg2 connection, calling insert_outbox_event;
  2. receiver: N concurrent keep-alive HTTP clients (asyncio, one process) posting signed events.
  3. with --batch N: the receiver's batch path, N events per signed request, a few clients;
  4. with --flood: the receiver run again while 500 idle and 32 slow connections are held open;
  5. with --backlog N: N events taken in by batch, then drained by `ipai-bus route` (its own
     process) to an HTTP sink; the resident memory of each receiver worker and of the router
     once the backlog is gone.
Prints the rates, p50/p99 latency (per request), the ratios against direct inserts, and checks
that every event sent was stored.

    python bench/receiver_bench.py --events 4000 --clients 16 --flood
    python bench/receiver_bench.py --events 30000 --clients 16 --batch 500
    python bench/receiver_bench.py --events 2000 --backlog 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_bench import FORWARD_SECRET, Sink, any_unsettled  # noqa: E402

from ipai_bus_lib.core import signing  # noqa: E402
from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from ipai_bus_lib.storage.migrator import migrate  # noqa: E402
from tests.helpers import free_port, wait_for_receiver  # noqa: E402
from tests.test_receiver_flood import hostile_clients  # noqa: E402

SECRET = "benchmark-secret-not-for-production"
INSERT = (
    "select * from integration.insert_outbox_event(p_event_type => %s, p_aggregate_type => %s,"
    " p_aggregate_id => %s, p_payload => %s::jsonb, p_idempotency_key => %s)"
)


def payload_of(number: int) -> dict:
    return {
        "expense_id": number,
        "employee_name": "Maria Santos",
        "amount": 1250.5,
        "currency": "PHP",
        "description": "Taxi to client",
        "state": "submitted",
    }


def body_of(number: int, run: str) -> bytes:
    return json.dumps(
        {
            "event_type": "expense.submitted",
            "aggregate_type": "hr.expense",
            "aggregate_id": str(number),
            "payload": payload_of(number),
            "occurred_at": "2026-01-22T07:26:26Z",
            "source": run,
        }
    ).encode()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_direct(url: str, events: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    share = events // clients

    def worker(index: int) -> None:
        conn = psycopg2.connect(url)
        conn.autocommit = True  # the fastest direct call: one round trip per event
        mine = []
        for number in range(index * share, (index + 1) * share):
            payload = json.dumps(payload_of(number))
            started = time.perf_counter()
            with conn.cursor() as cursor:
                cursor.execute(
                    INSERT, ("expense.submitted", "hr.expense", str(number), payload, f"direct-{number}")
                )
                cursor.fetchone()
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return share * clients / (time.perf_counter() - started), latencies


def signed_requests(events: int, port: int, run: str = "http") -> list[bytes]:
    return [
        http_request(port, "/functions/v1/odoo-webhook", body_of(number, run), f"{run}-{number}")
        for number in range(events)
    ]


def signed_batch_requests(events: int, port: int, batch: int, run: str = "batch") -> list[bytes]:
    requests = []
    for first in range(0, events, batch):
        elements = [
            {**json.loads(body_of(number, run)), "idempotency_key": f"{run}-{number}"}
            for number in range(first, min(first + batch, events))
        ]
        body = json.dumps({"events": elements}, separators=(",", ":")).encode()
        requests.append(http_request(port, "/functions/v1/odoo-webhook/batch", body, f"{run}-b{first}"))
    return requests


def http_request(port: int, path: str, body: bytes, key: str) -> bytes:
    headers = signing.signature_headers(SECRET, body, idempotency_key=key)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def stored_events(url: str, source: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "select count(*), (select count(*) from integration.event_log where source = %s)"
                " from integration.outbox where source = %s",
                (source, source),
            )
            outbox, log = cursor.fetchone()
        return outbox if outbox == log else -1
    finally:
        conn.close()


async def run_http(port: int, requests: list[bytes], clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(reversed(requests))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head!r} {answer!r}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(requests) / (time.perf_counter() - started), latencies


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                children.append(int(entry.name))
    return sorted(children)


def backlog_memory(url: str, port: int, server: subprocess.Popen, events: int) -> None:
    """Take ``events`` in by batch (500 a request), drain them with `ipai-bus route` to an HTTP
    sink, and print each process's resident memory before and after."""
    workers = child_pids(server.pid)
    before = [resident_mib(pid) for pid in workers]
    requests = signed_batch_requests(events, port, 500, run="backlog")
    started = time.perf_counter()
    asyncio.run(run_http(port, requests, 4))
    ingest_seconds = time.perf_counter() - started
    after_ingest = [resident_mib(pid) for pid in workers]
    sink = Sink()
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as routes:
        routes.write(
            '[destinations.sink]\ntype = "http"\nurl_env = "SINK_URL"\nsecret_env = "SINK_SECRET"\n'
            '[[routes]]\nmatch = "*"\ndestinations = ["sink"]\n'
        )
        routes.flush()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "IPAI_ROUTES_FILE": routes.name,
            "SINK_URL": sink.url,
            "SINK_SECRET": FORWARD_SECRET,
        }
        router = subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", "route"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            router_idle = resident_mib(router.pid)
            started = time.perf_counter()
            probe = psycopg2.connect(url)
            probe.autocommit = True
            while any_unsettled(probe):
                time.sleep(0.2)
            probe.close()
            drain_seconds = time.perf_counter() - started
            time.sleep(1.0)  # past the idle hand-back of freed memory
            router_after = resident_mib(router.pid)
            after_drain = [resident_mib(pid) for pid in workers]
        finally:
            router.terminate()
            router.wait(timeout=30)
    delivered = len({event_id for event_id, _ in sink.finish()})
    print(
        f"backlog of {events}: taken in by batch in {ingest_seconds:.1f} s, drained by `ipai-bus route`"
        f" (HTTP sink) in {drain_seconds:.1f} s; {delivered} delivered (with the earlier parts' events)"
    )
    for number, (ahead, ingested, idle) in enumerate(zip(before, after_ingest, after_drain)):
        print(
            f"  receiver worker {number} resident memory: {ahead:.0f} MiB before the backlog ->"
            f" {ingested:.0f} MiB after it -> {idle:.0f} MiB idle while the router drained it"
        )
    print(
        f"  router resident memory: {router_idle:.0f} MiB idle -> {router_after:.0f} MiB after draining it"
    )


def report(name: str, rate: float, latencies: list[float]) -> None:
    print(
        f"{name:<42} {rate:>9.0f} events/s   p50 {percentile(latencies, 0.5) * 1000:6.2f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:6.2f} ms   (n={len(latencies)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="receiver worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per receiver worker")
    parser.add_argument(
        "--flood", action="store_true", help="also measure under 500 idle and 32 slow connections"
    )
    parser.add_argument("--batch", type=int, default=0, help="also measure batches of this many events")
    parser.add_argument("--batch-clients", type=int, default=4, help="concurrent batch clients")
    parser.add_argument(
        "--backlog", type=int, default=0, help="also drain a backlog of this many events; memory after"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ipai-bench-") as home:
        cluster = EmbeddedPostgres(Path(home))  # durable defaults: fsync and synchronous commit on
        url = cluster.ensure_running()
        migrate(url)
        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "IPAI_WEBHOOK_SECRET": SECRET}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ipai_bus_lib.ops.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_receiver(port, process=server)
            print(
                f"machine: {os.cpu_count()} cores; {args.events} events; {args.clients} "
                f"concurrent clients; receiver {args.workers} workers x {args.threads} threads;"
                " PostgreSQL durable (fsync on)"
            )
            direct_rate, direct_latencies = run_direct(url, args.events, args.clients)
            report("direct insert_outbox_event", direct_rate, direct_latencies)
            prepared = signed_requests(args.events, port)
            http_rate, http_latencies = asyncio.run(run_http(port, prepared, args.clients))
            report("receiver (verify+outbox+log)", http_rate, http_latencies)
            print(f"ratio receiver/direct: {http_rate / direct_rate:.2f}")
            if args.batch:
                batches = signed_batch_requests(args.events, port, args.batch)
                request_rate, batch_latencies = asyncio.run(run_http(port, batches, args.batch_clients))
                batch_rate = request_rate * args.events / len(batches)
                report(
                    f"receiver batch ({args.batch}/request, {args.batch_clients} clients)",
                    batch_rate,
                    batch_latencies,
                )
                stored = stored_events(url, "batch")
                print(
                    f"ratio batch/single-event receiver: {batch_rate / http_rate:.2f};"
                    f" batch/direct: {batch_rate / direct_rate:.2f};"
                    f" stored with audit copies: {stored} of {args.events}"
                )
            if args.flood:
                flooded = signed_requests(args.events, port, run="flood")
                with hostile_clients(port, idle=500, slow=32):
                    time.sleep(1.0)
                    flood_rate, flood_latencies = asyncio.run(run_http(port, flooded, args.clients))
                report("receiver under flood (500 idle, 32 slow)", flood_rate, flood_latencies)
                print(f"ratio flood/no flood: {flood_rate / http_rate:.2f}")
            if args.backlog:
                backlog_memory(url, port, server, args.backlog)
        finally:
            server.terminate()
            server.wait(timeout=20)
            cluster.stop()


if __name__ == "__main__":
    main()
