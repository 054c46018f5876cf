"""Chaos run: the whole bus under faults, bounded in time, on loopback only.

Starts a durable embedded PostgreSQL of its own, `ipai-bus serve` (2 workers), three
`ipai-bus route` processes and a flaky HTTP destination (some 500s, some 429s with Retry-After,
some slow answers, a 400 for every event marked poison). Signed events are sent at a steady rate
through the receiver; senders retry whatever was not answered 200, as Odoo's dispatcher does.
Meanwhile, in turn: a router is killed (SIGKILL) and restarted, a receiver worker is killed
(gunicorn starts another), PostgreSQL is frozen (SIGSTOP) for a few seconds, PostgreSQL is
restarted, and poison is injected (a stored event whose payload no reader can parse, a signed
event the destination refuses, and signed requests with values that cannot be stored).

At the end it prints sent, stored, delivered once, delivered more than once, dead (and why),
lost, and how long delivery took to resume after each fault.

    python bench/chaos.py --minutes 10 --rate 180
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipai_bus_lib.core import signing  # noqa: E402
from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from ipai_bus_lib.storage.migrator import migrate  # noqa: E402
from tests.helpers import free_port, wait_for_receiver  # noqa: E402

SECRET = "chaos-secret-not-for-production"
FAULT_EVERY_SECONDS = 20
ROUTERS = 3


class FlakySink:
    """The destination: records every delivery by event id, misbehaves on purpose."""

    def __init__(self) -> None:
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.times: list[float] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = document["data"]
                roll = random.random()
                if data["payload"].get("poison"):
                    self._answer(400, b"this event is refused")
                elif roll < 0.05:
                    self._answer(500, b"flaky")
                elif roll < 0.07:
                    self._answer(429, b"slow down", {"Retry-After": "1"})
                else:
                    if roll < 0.08:
                        time.sleep(2.0)
                    with sink.lock:
                        sink.deliveries[data["event_id"]] += 1
                        sink.times.append(time.monotonic())
                    self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a router killed mid-answer: its event comes back and is sent again

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_delivery_after(self, moment: float) -> float | None:
        with self.lock:
            later = [t for t in self.times if t > moment]
        return min(later) if later else None


class Sender:
    """Signed events at a steady rate over keep-alive connections; retries until 200."""

    def __init__(self, port: int, rate: float, clients: int = 8) -> None:
        self.port, self.rate, self.clients = port, rate, clients
        self.accepted: dict[str, str] = {}  # idempotency key -> event id
        self.poison_keys: set[str] = set()
        self.refused_invalid = 0
        self.retries = 0
        self.queue: asyncio.Queue[tuple[str, dict]] | None = None

    def request(self, key: str, document: dict) -> bytes:
        body = json.dumps(document).encode()
        headers = signing.signature_headers(SECRET, body, idempotency_key=key)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return (
            f"POST /functions/v1/odoo-webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def run(self, seconds: float) -> None:
        self.queue = asyncio.Queue()
        producer = asyncio.create_task(self._produce(seconds))
        workers = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        await producer
        await self.queue.join()
        for worker in workers:
            worker.cancel()

    async def _produce(self, seconds: float) -> None:
        assert self.queue is not None
        started = time.monotonic()
        number = 0
        while time.monotonic() - started < seconds:
            number += 1
            key = f"chaos-{number}"
            payload = {
                "expense_id": number,
                "amount": 100 + number % 900,
                "currency": "PHP",
                "employee_name": "Maria Santos",
            }
            if number % 5000 == 0:  # a signed event its destination refuses
                payload["poison"] = True
                self.poison_keys.add(key)
            document = {
                "event_type": "expense.submitted",
                "aggregate_type": "hr.expense",
                "aggregate_id": str(number % 2000),
                "payload": payload,
            }
            if number % 2500 == 1:  # a value no database column can hold: refused with 400
                await self.queue.put(
                    (f"invalid-{number}", {**document, "occurred_at": "2026-01-22T07:26:26+24:00"})
                )
            await self.queue.put((key, document))
            delay = started + number / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _client(self) -> None:
        assert self.queue is not None
        connection = None
        while True:
            key, document = await self.queue.get()
            while True:
                try:
                    if connection is None:
                        connection = await asyncio.open_connection("127.0.0.1", self.port)
                    reader, writer = connection
                    writer.write(self.request(key, document))
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        )
                    )
                    answer = json.loads(await reader.readexactly(length))
                    status = int(head.split()[1])
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    connection = None
                    self.retries += 1
                    await asyncio.sleep(0.5)
                    continue
                if status == 200:
                    self.accepted[key] = answer["event_id"]
                    break
                if status == 400 and key.startswith("invalid-"):
                    self.refused_invalid += 1
                    break
                self.retries += 1  # 503 and the like: the bus asks us to come back later
                await asyncio.sleep(0.5)
            self.queue.task_done()


class Bus:
    """The processes under test and the faults done to them."""

    def __init__(self, home: Path, sink_url: str) -> None:
        os.chmod(home, 0o711)  # under root the cluster's own user walks through it
        self.cluster = EmbeddedPostgres(home / "pg")
        self.url = self.cluster.ensure_running()
        migrate(self.url)
        self.port = free_port()
        routes = home / "routes.toml"
        routes.write_text(
            '[destinations.flaky]\ntype = "http"\nurl_env = "CHAOS_SINK_URL"\n'
            'secret_env = "CHAOS_SINK_SECRET"\n\n[[routes]]\nmatch = "*"\n'
            'destinations = ["flaky"]\n'
        )
        self.env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "IPAI_WEBHOOK_SECRET": SECRET,
            "IPAI_ROUTES_FILE": str(routes),
            "CHAOS_SINK_URL": sink_url,
            "CHAOS_SINK_SECRET": "whsec_Y2hhb3Mtc2luay1zZWNyZXQtZm9yLXRlc3Rz",
            "IPAI_RETRY_DELAYS": "1,2,5",
            "IPAI_MAX_ATTEMPTS": "12",
            "IPAI_BREAKER_COOLDOWN_SECONDS": "2",
            "IPAI_ROUTER_LEASE_SECONDS": "15",
            # A destination that sometimes takes 2 s: deliver wider, so one slow
            # answer does not hold a whole batch back.
            "IPAI_ROUTER_BATCH_SIZE": "100",
            "IPAI_ROUTER_CONCURRENCY": "64",
        }
        self.logs = home
        self.receiver = self._start("serve", "--port", str(self.port), "--workers", "2")
        self.routers = [self._start("route") for _ in range(ROUTERS)]

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{args[0]}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_router(self) -> str:
        index = random.randrange(len(self.routers))
        self.routers[index].kill()
        self.routers[index].wait()
        time.sleep(1)
        self.routers[index] = self._start("route")
        return "router killed (SIGKILL) and restarted"

    def kill_receiver_worker(self) -> str:
        workers = psutil.Process(self.receiver.pid).children()
        if workers:
            random.choice(workers).kill()
        return "receiver worker killed (SIGKILL)"

    def freeze_database(self) -> str:
        pid = int((self.cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
        frozen = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for process in frozen:
            process.send_signal(signal.SIGSTOP)
        time.sleep(3)
        for process in frozen:
            process.send_signal(signal.SIGCONT)
        return "PostgreSQL frozen 3 s (SIGSTOP)"

    def restart_database(self) -> str:
        self.cluster.stop()
        time.sleep(1)
        self.cluster.ensure_running()
        return "PostgreSQL restarted"

    def inject_unreadable(self) -> str:
        conn = psycopg2.connect(self.url)
        with conn, conn.cursor() as cursor:
            cursor.execute(
                "select integration.insert_outbox_event('expense.submitted', 'hr.expense',"
                " 'poison', %s::jsonb, %s)",
                ('{"amount": %s}' % ("[" * 3000 + "]" * 3000), f"unreadable-{time.monotonic_ns()}"),
            )
        conn.close()
        return "unreadable event stored by SQL"

    def stop(self) -> None:
        for process in [*self.routers, self.receiver]:
            process.terminate()
        for process in [*self.routers, self.receiver]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.cluster.stop()


def settle(bus: Bus, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(bus.url)
        with conn.cursor() as cursor:
            cursor.execute("select status, count(*) from integration.outbox group by status")
            by_status = dict(cursor.fetchall())
        conn.close()
        unsettled = sum(by_status.get(s, 0) for s in ("pending", "processing", "failed"))
        if unsettled == 0 or time.monotonic() > deadline:
            return by_status
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=180, help="events sent per second")
    parser.add_argument(
        "--faults",
        default="kill_router,kill_receiver_worker,freeze_database,restart_database,inject_unreadable",
        help="the faults caused in turn (comma-separated Bus methods)",
    )
    parser.add_argument("--keep", help="keep the processes' logs in this directory")
    args = parser.parse_args()
    seconds = args.minutes * 60
    random.seed(12)
    sink = FlakySink()
    with tempfile.TemporaryDirectory(prefix="ipai-chaos-") as home:
        bus = Bus(Path(home), sink.url)
        try:
            wait_for_receiver(bus.port, process=bus.receiver)
            sender = Sender(bus.port, args.rate)
            faults: list[tuple[str, float]] = []
            injected_unreadable = 0
            stop = threading.Event()

            def cause_faults() -> None:
                nonlocal injected_unreadable
                actions = [getattr(bus, name) for name in args.faults.split(",")]
                turn = 0
                while not stop.wait(FAULT_EVERY_SECONDS):
                    action = actions[turn % len(actions)]
                    turn += 1
                    what = action()
                    injected_unreadable += action == bus.inject_unreadable
                    faults.append((what, time.monotonic()))

            chaos = threading.Thread(target=cause_faults, daemon=True)
            started = time.monotonic()
            chaos.start()
            asyncio.run(sender.run(seconds))
            stop.set()
            chaos.join()
            sent_for = time.monotonic() - started
            by_status = settle(bus, timeout=300)
            print(f"settled {time.monotonic() - started - sent_for:.0f} s after sending stopped")
            report(bus, sink, sender, faults, by_status, injected_unreadable, sent_for)
            if any(by_status.get(s) for s in ("pending", "processing", "failed")):
                for log in sorted(Path(home).glob("*.log")):
                    print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        finally:
            bus.stop()


def report(
    bus: Bus,
    sink: FlakySink,
    sender: Sender,
    faults: list[tuple[str, float]],
    by_status: dict[str, int],
    injected_unreadable: int,
    sent_for: float,
) -> None:
    conn = psycopg2.connect(bus.url)
    with conn.cursor() as cursor:
        cursor.execute("select idempotency_key, id::text, status, last_error from integration.outbox")
        rows = cursor.fetchall()
        cursor.execute("select count(*) from integration.event_log")
        logged = cursor.fetchone()[0]
    conn.close()
    stored = {key: (event_id, status, error) for key, event_id, status, error in rows}
    ours = {key for key in stored if key.startswith("chaos-")}
    dead = {key: error for key, (_, status, error) in stored.items() if status == "dead"}
    expected_dead = sender.poison_keys | {k for k in stored if k.startswith("unreadable-")}
    once = sum(1 for key in ours if sink.deliveries.get(stored[key][0]) == 1)
    more = sum(1 for key in ours if sink.deliveries.get(stored[key][0], 0) > 1)
    lost = [
        key
        for key in sender.accepted
        if key not in stored or (stored[key][1] != "completed" and key not in dead)
    ]
    undelivered = [
        key for key in ours if key not in dead and sink.deliveries.get(stored[key][0], 0) == 0
    ]
    reasons = collections.Counter(_reason(error) for error in dead.values())
    print(
        f"chaos run: {sent_for / 60:.1f} min sending, {ROUTERS} routers (batch 100, 64 wide),"
        f" receiver 2 workers, "
        f"{len(faults)} faults, durable PostgreSQL"
    )
    print(f"sent (accepted 200)        {len(sender.accepted):>8}   sender retries {sender.retries}")
    print(f"refused 400 (unstorable)   {sender.refused_invalid:>8}")
    print(
        f"stored                     {len(ours):>8}   event_log rows {logged}  "
        f"(+{injected_unreadable} unreadable injected by SQL)"
    )
    print(f"stored twice               {len(ours) - len(set(stored[k][0] for k in ours)):>8}")
    print(f"delivered once             {once:>8}")
    print(f"delivered more than once   {more:>8}")
    print(
        f"dead                       {len(dead):>8}   expected (poison) {len(expected_dead)}"
        f"   other {len(set(dead) - expected_dead)}"
    )
    for reason, count in reasons.most_common():
        print(f"    {count:>6}  {reason}")
    print(f"lost                       {len(lost) + len(undelivered):>8}")
    print(f"outbox by status           {by_status}")
    resumes = []
    for what, at in faults:
        first = sink.first_delivery_after(at)
        resumes.append((what, None if first is None else first - at))
    kinds = collections.defaultdict(list)
    for what, resume in resumes:
        kinds[what].append(resume)
    print("delivery resumed after each fault (seconds after the fault ended):")
    for what, values in kinds.items():
        shown = [v for v in values if v is not None]
        print(
            f"    {what:<42} n={len(values):<3} max {max(shown):5.2f}  "
            f"median {sorted(shown)[len(shown) // 2]:5.2f}"
            if shown
            else f"    {what}: none"
        )


def _reason(error: str | None) -> str:
    text = (error or "").split(";")[0]
    return text[:90]


if __name__ == "__main__":
    main()
