"""Chaos run: the whole bus under faults, bounded in time, on loopback only.

Starts a durable embedded PostgreSQL of its own, `ipai-bus serve` (2 workers), three
`ipai-bus route` processes, a flaky HTTP destination (some 500s, some 429s with Retry-After,
some slow answers, a 400 for every event marked poison) and an SMTP server of its own for the
`expense.paid` events (one in ten). Signed events are sent at a steady rate through the
receiver, singly and in batches: every second two senders send the same 20 new keys at once,
each in its own order. Senders retry whatever was not answered 200, as Odoo's dispatcher does.
Meanwhile, in turn: a router is killed (SIGKILL) and restarted, a receiver worker is killed
(gunicorn starts another), PostgreSQL is frozen (SIGSTOP) for a few seconds, PostgreSQL is
restarted, poison is injected (a stored event whose payload no reader can parse, a signed
event the destination refuses, and signed requests with values that cannot be stored), a
router and a receiver worker each get a burst of SIGTERMs (8, 0.3 ms apart) and must stop, the
HTTP destination answers 503 for 5 s, and the SMTP server trickles its replies (a byte every
0.5 s) or refuses with 451 for 10 s. Router 0 and the oldest receiver worker are spared the
kills, so their memory tells whether anything grows.

At the end it prints sent, stored, stored twice, delivered once, delivered more than once, dead
(and why), lost, how long delivery took to resume after each fault, how long each SIGTERM burst
took to stop its process, and the resident memory of router 0 and the oldest receiver worker
after the first 5 minutes and at the end; then PASS or FAIL against: nothing lost or stored
twice, only poison dead, delivery resumed within 5 s of each fault, memory within 10%.

    python bench/chaos.py --minutes 60 --rate 120
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
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
BATCH_EVENTS = 20
MEMORY_BASELINE_SECONDS = 300
MAIL_EVERY = 10  # one event in ten is expense.paid, routed to e-mail too


class FlakySink:
    """The destination: records every delivery by event id, misbehaves on purpose."""

    def __init__(self) -> None:
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.down_until = 0.0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = document["data"]
                roll = random.random()
                if time.monotonic() < sink.down_until:
                    self._answer(503, b"deploying, come back soon")
                elif data["payload"].get("poison"):
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


class MailSink:
    """The SMTP destination: records each message by its Message-ID (the event id); on demand
    it trickles every reply (a byte every 0.5 s) or refuses messages with 451 for a while."""

    def __init__(self) -> None:
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.trickle_until = 0.0
        self.refuse_until = 0.0
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._session, args=(client,), daemon=True).start()

    def _say(self, client: socket.socket, reply: bytes) -> None:
        if time.monotonic() >= self.trickle_until:
            client.sendall(reply)
            return
        for index in range(len(reply)):
            time.sleep(0.5)
            client.sendall(reply[index : index + 1])

    def _session(self, client: socket.socket) -> None:
        stream = client.makefile("rb")
        try:
            with client:
                self._say(client, b"220 chaos.example ESMTP\r\n")
                while line := stream.readline():
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        self._say(client, b"354 go ahead\r\n")
                        message_id = None
                        while (data := stream.readline()) not in (b".\r\n", b""):
                            if data.lower().startswith(b"message-id:"):
                                message_id = data.split(b"<", 1)[1].split(b"@", 1)[0].decode()
                        if time.monotonic() < self.refuse_until:
                            self._say(client, b"451 4.3.0 try again later\r\n")
                            continue
                        self._say(client, b"250 2.0.0 queued\r\n")
                        if message_id:  # counted once its 250 was written whole
                            with self.lock:
                                self.deliveries[message_id] += 1
                                self.times.append(time.monotonic())
                    elif verb == b"QUIT":
                        self._say(client, b"221 bye\r\n")
                        return
                    else:
                        self._say(client, b"250 ok\r\n")
        except OSError:
            return

    def first_delivery_after(self, moment: float) -> float | None:
        with self.lock:
            later = [t for t in self.times if t > moment]
        return min(later) if later else None


class Sender:
    """Signed events at a steady rate over keep-alive connections, singly and in overlapping
    batches; retries until 200."""

    def __init__(self, port: int, rate: float, clients: int = 8) -> None:
        self.port, self.rate, self.clients = port, rate, clients
        self.accepted: dict[str, str] = {}  # idempotency key -> event id
        self.answered_twice_differently = 0  # a key two answers gave two event ids
        self.poison_keys: set[str] = set()
        self.refused_invalid = 0
        self.retries = 0
        self.batches = 0
        self.queue: asyncio.Queue[tuple[str, object]] | None = None

    def request(self, key: str, document: object) -> bytes:
        body = json.dumps(document).encode()
        headers = signing.signature_headers(SECRET, body, idempotency_key=key)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        path = "/functions/v1/odoo-webhook" + ("/batch" if key.startswith("batch-") else "")
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def _accept(self, key: str, event_id: str) -> None:
        earlier = self.accepted.setdefault(key, event_id)
        self.answered_twice_differently += earlier != event_id

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
            document = self._event(number)
            if number % 5000 == 0:  # a signed event its destination refuses
                document["payload"]["poison"] = True
                self.poison_keys.add(key)
            if number % int(self.rate) == 0:  # once a second: two overlapping batches
                await self._put_overlapping_batches(number)
            if number % 2500 == 1:  # a value no database column can hold: refused with 400
                await self.queue.put(
                    (f"invalid-{number}", {**document, "occurred_at": "2026-01-22T07:26:26+24:00"})
                )
            await self.queue.put((key, document))
            delay = started + number / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    @staticmethod
    def _event(number: int) -> dict:
        return {
            "event_type": "expense.paid" if number % MAIL_EVERY == 0 else "expense.submitted",
            "aggregate_type": "hr.expense",
            "aggregate_id": str(number % 2000),
            "payload": {
                "expense_id": number,
                "amount": 100 + number % 900,
                "currency": "PHP",
                "employee_name": "Maria Santos",
            },
        }

    async def _put_overlapping_batches(self, number: int) -> None:
        assert self.queue is not None
        keys = [f"chaos-b{number}-{n}" for n in range(BATCH_EVENTS)]
        for sender in range(2):
            order = random.sample(keys, len(keys))
            events = [{**self._event(number + n), "idempotency_key": k} for n, k in enumerate(order)]
            await self.queue.put((f"batch-{number}-{sender}", {"events": events}))

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
                if status == 200 and key.startswith("batch-"):
                    self.batches += 1
                    for event, result in zip(document["events"], answer["results"]):
                        self._accept(event["idempotency_key"], result["event_id"])
                    break
                if status == 200:
                    self._accept(key, answer["event_id"])
                    break
                if status == 400 and key.startswith("invalid-"):
                    self.refused_invalid += 1
                    break
                self.retries += 1  # 503 and the like: the bus asks us to come back later
                await asyncio.sleep(0.5)
            self.queue.task_done()


class Bus:
    """The processes under test and the faults done to them."""

    def __init__(
        self, home: Path, sink: FlakySink, mail: MailSink, trace_router: str | None = None
    ) -> None:
        os.chmod(home, 0o711)  # under root the cluster's own user walks through it
        self.cluster = EmbeddedPostgres(home / "pg")
        self.url = self.cluster.ensure_running()
        migrate(self.url)
        self.port = free_port()
        routes = home / "routes.toml"
        routes.write_text(
            '[destinations.flaky]\ntype = "http"\nurl_env = "CHAOS_SINK_URL"\n'
            'secret_env = "CHAOS_SINK_SECRET"\n\n'
            f'[destinations.mail]\ntype = "email"\nhost = "127.0.0.1"\nport = {mail.port}\n'
            'security = "none"\nto = ["ap@example.ph"]\n\n'
            '[[routes]]\nmatch = "expense.paid"\ndestinations = ["flaky", "mail"]\n\n'
            '[[routes]]\nmatch = "*"\ndestinations = ["flaky"]\n'
        )
        self.sink, self.mail = sink, mail
        self.env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "IPAI_WEBHOOK_SECRET": SECRET,
            "IPAI_ROUTES_FILE": str(routes),
            "CHAOS_SINK_URL": sink.url,
            # Under the 5 s resume bound: a delivery in flight when a fault ends can only be
            # given up at its budget, then retried after the first delay (1 s).
            "IPAI_DELIVERY_TIMEOUT_SECONDS": "3",
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
        self.routers = [self._start("route", traced=trace_router)]  # router 0: its memory is read
        self.routers += [self._start("route") for _ in range(ROUTERS - 1)]
        self.stop_times: list[tuple[str, float | None]] = []  # a SIGTERM burst, how long to stop

    def _start(self, *args: str, traced: str | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{args[0]}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        command = ["-m", "ipai_bus_lib.ops.cli", *args]
        if traced:
            command = [str(Path(__file__).with_name("traced_router.py")), traced, "60"]
        return subprocess.Popen(
            [sys.executable, *command],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_router(self) -> str:
        index = random.randrange(1, len(self.routers))  # router 0 is spared: its memory is read
        self.routers[index].kill()
        self.routers[index].wait()
        time.sleep(1)
        self.routers[index] = self._start("route")
        return "router killed (SIGKILL) and restarted"

    def receiver_workers(self) -> list[psutil.Process]:
        """The receiver's workers, oldest first."""
        workers = psutil.Process(self.receiver.pid).children()
        return sorted(workers, key=lambda worker: worker.create_time())

    def kill_receiver_worker(self) -> str:
        workers = self.receiver_workers()
        if len(workers) > 1:
            workers[-1].kill()  # the newest: the oldest is spared, its memory is read
        return "receiver worker killed (SIGKILL)"

    def sigterm_burst_router(self) -> str:
        index = random.randrange(1, len(self.routers))
        self.stop_times.append(("router", _burst_and_wait(self.routers[index])))
        self.routers[index] = self._start("route")
        return "router: 8 SIGTERMs 0.3 ms apart, restarted"

    def sigterm_burst_receiver_worker(self) -> str:
        workers = self.receiver_workers()
        if len(workers) > 1:
            stopped = _burst_and_wait(workers[-1])
            self.stop_times.append(("receiver worker", stopped))
        return "receiver worker: 8 SIGTERMs 0.3 ms apart"

    def http_destination_outage(self) -> str:
        self.sink.down_until = time.monotonic() + 5
        time.sleep(5)
        return "HTTP destination answered 503 for 5 s"

    def smtp_trickles(self) -> str:
        self.mail.trickle_until = time.monotonic() + 10
        time.sleep(10)
        return "SMTP replies trickled 10 s (a byte per 0.5 s)"

    def smtp_refuses(self) -> str:
        self.mail.refuse_until = time.monotonic() + 10
        time.sleep(10)
        return "SMTP refused with 451 for 10 s"

    def memory(self) -> dict[str, int]:
        """Resident memory (bytes) of router 0 and of the oldest receiver worker."""
        workers = self.receiver_workers()
        return {
            "router 0": psutil.Process(self.routers[0].pid).memory_info().rss,
            "oldest receiver worker": workers[0].memory_info().rss if workers else 0,
        }

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


def _burst_and_wait(process: subprocess.Popen | psutil.Process, grace: float = 30) -> float | None:
    """Eight SIGTERMs 0.3 ms apart; seconds until the process exited (None: it did not)."""
    started = time.monotonic()
    for _ in range(8):
        try:
            process.send_signal(signal.SIGTERM)
        except (ProcessLookupError, psutil.NoSuchProcess):
            break
        time.sleep(0.0003)
    try:
        process.wait(timeout=grace)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        process.kill()
        return None
    return time.monotonic() - started


def settle(bus: Bus, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(bus.url)
        with conn.cursor() as cursor:
            cursor.execute("select status, count(*) from integration.event_state group by status")
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
        default="kill_router,http_destination_outage,kill_receiver_worker,sigterm_burst_router,"
        "freeze_database,smtp_trickles,restart_database,sigterm_burst_receiver_worker,"
        "inject_unreadable,smtp_refuses",
        help="the faults caused in turn (comma-separated Bus methods)",
    )
    parser.add_argument("--keep", help="keep the processes' logs in this directory")
    parser.add_argument(
        "--trace-router",
        metavar="DIRECTORY",
        help="run router 0 under tracemalloc, a snapshot a minute in DIRECTORY (slower)",
    )
    args = parser.parse_args()
    seconds = args.minutes * 60
    random.seed(12)
    sink, mail = FlakySink(), MailSink()
    with tempfile.TemporaryDirectory(prefix="ipai-chaos-") as home:
        bus = Bus(Path(home), sink, mail, trace_router=args.trace_router)
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

            memory: dict[str, dict[str, int]] = {}

            baseline_after = min(MEMORY_BASELINE_SECONDS, seconds / 2)

            def read_memory() -> None:
                if not stop.wait(baseline_after):
                    memory["baseline"] = bus.memory()

            chaos = threading.Thread(target=cause_faults, daemon=True)
            started = time.monotonic()
            chaos.start()
            threading.Thread(target=read_memory, daemon=True).start()
            asyncio.run(sender.run(seconds))
            stop.set()
            chaos.join()
            sent_for = time.monotonic() - started
            by_status = settle(bus, timeout=300)
            memory["end"] = bus.memory()
            print(f"settled {time.monotonic() - started - sent_for:.0f} s after sending stopped")
            passed = report(
                bus,
                sink,
                mail,
                sender,
                faults,
                by_status,
                injected_unreadable,
                sent_for,
                memory,
                baseline_after,
            )
            if any(by_status.get(s) for s in ("pending", "processing", "failed")):
                for log in sorted(Path(home).glob("*.log")):
                    print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        finally:
            bus.stop()
    sys.exit(0 if passed else 1)


def report(
    bus: Bus,
    sink: FlakySink,
    mail: MailSink,
    sender: Sender,
    faults: list[tuple[str, float]],
    by_status: dict[str, int],
    injected_unreadable: int,
    sent_for: float,
    memory: dict[str, dict[str, int]],
    baseline_after: float,
) -> bool:
    """Print the run's figures; True when it meets every criterion of the module's doc."""
    conn = psycopg2.connect(bus.url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select l.idempotency_key, s.id::text, s.status, s.last_error, s.event_type"
            " from integration.event_state s join integration.event_log l on l.event_id = s.id"
        )
        rows = cursor.fetchall()
        cursor.execute("select count(*) from integration.event_log")
        logged = cursor.fetchone()[0]
    conn.close()
    stored = {key: (event_id, status, error) for key, event_id, status, error, _ in rows}
    mailed = {key for key, *_, event_type in rows if event_type == "expense.paid"}
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
    mail_lost = [k for k in mailed & ours if k not in dead and not mail.deliveries.get(stored[k][0])]
    mail_more = sum(1 for k in mailed & ours if mail.deliveries.get(stored[k][0], 0) > 1)
    twice = sender.answered_twice_differently
    reasons = collections.Counter(_reason(error) for error in dead.values())
    print(
        f"chaos run: {sent_for / 60:.1f} min sending, {ROUTERS} routers (batch 100, 64 wide),"
        f" receiver 2 workers, {len(faults)} faults, durable PostgreSQL"
    )
    print(f"sent (accepted 200)        {len(sender.accepted):>8}   sender retries {sender.retries}")
    print(
        f"  of which in batches      {sum(k.startswith('chaos-b') for k in sender.accepted):>8}"
        f"   ({sender.batches} batch requests, each key sent by two senders at once)"
    )
    print(f"refused 400 (unstorable)   {sender.refused_invalid:>8}")
    print(
        f"stored                     {len(ours):>8}   event_log rows {logged}  "
        f"(+{injected_unreadable} unreadable injected by SQL)"
    )
    print(f"stored twice               {twice:>8}   (one key answered with two event ids)")
    print(f"delivered once (HTTP)      {once:>8}")
    print(f"delivered more than once   {more:>8}")
    print(
        f"e-mailed (expense.paid)    {len(mailed & ours) - len(mail_lost):>8}   more than once {mail_more}"
    )
    print(
        f"dead                       {len(dead):>8}   expected (poison) {len(expected_dead)}"
        f"   other {len(set(dead) - expected_dead)}"
    )
    for reason, count in reasons.most_common():
        print(f"    {count:>6}  {reason}")
    print(f"lost                       {len(lost) + len(undelivered) + len(mail_lost):>8}")
    print(f"outbox by status           {by_status}")
    kinds: dict[str, list[float | None]] = collections.defaultdict(list)
    for what, at in faults:
        first = (mail if "SMTP" in what else sink).first_delivery_after(at)
        kinds[what].append(None if first is None else first - at)
    print("delivery resumed after each fault (seconds after the fault ended):")
    slowest_resume = 0.0
    for what, values in kinds.items():
        shown = [v for v in values if v is not None]
        slowest_resume = max([slowest_resume, *shown]) if len(shown) == len(values) else float("inf")
        print(
            f"    {what:<46} n={len(values):<3} max {max(shown):5.2f}  "
            f"median {sorted(shown)[len(shown) // 2]:5.2f}"
            if shown
            else f"    {what}: none"
        )
    stops = [t for _, t in bus.stop_times]
    print(
        f"SIGTERM bursts             {len(stops):>8}   stopped {sum(t is not None for t in stops)}"
        + (f", slowest {max(t for t in stops if t is not None):.2f} s" if any(stops) else "")
    )
    growth = 0.0
    if "baseline" in memory:
        shown = []
        for name, before in memory["baseline"].items():
            after = memory["end"].get(name, 0)
            change = (after - before) / before if before else 0.0
            growth = max(growth, change)
            shown.append(f"{name} {before / 2**20:.0f} → {after / 2**20:.0f} MiB ({change:+.1%})")
        print(f"memory (RSS) after {baseline_after / 60:g} min → at end: " + "; ".join(shown))
    passed = (
        not lost
        and not undelivered
        and not mail_lost
        and twice == 0
        and set(dead) <= expected_dead
        and slowest_resume <= 5.0
        and all(t is not None for t in stops)
        and growth <= 0.10
    )
    print(
        "PASS" if passed else "FAIL",
        "(0 lost, 0 stored twice, only poison dead, resumed within"
        " 5 s, every SIGTERM burst stopped, memory within 10%)",
    )
    return passed


def _reason(error: str | None) -> str:
    text = (error or "").split(";")[0]
    return text[:90]


if __name__ == "__main__":
    main()
