"""Console benchmark: how fast the overview and the events pages answer over a million events.

A durable embedded PostgreSQL gets 1,000,000 outbox rows and their 1,000,000 event_log copies,
accepted over the last 30 days (about 23 a minute, as a busy bus keeps them), most completed,
some pending, failed and dead. `ipai-bus console` serves them; each page is fetched over HTTP
by a signed-in operator, and the median and 95th percentile of its answer times are printed.

    python bench/console_bench.py --events 1000000
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from ipai_bus_lib.storage.migrator import migrate  # noqa: E402
from tests.helpers import console_sign_in, free_port  # noqa: E402
from tests.readiness import http_answers, wait_for_server  # noqa: E402

PASSWORD = "console-benchmark-password-0123"
# Every event into the log; the outbox keeps those not delivered (a delivered one leaves it).
FILL = """
create temp table filled on commit drop as
select gen_random_uuid() as id, t.event_type, 'EQ-' || (g %% 5000) as aggregate_id,
       jsonb_build_object('booking_id', g, 'equipment_name', 'Projector ' || (g %% 5000)) as payload,
       'bench-' || g as idempotency_key, s.status, moment
  from generate_series(1, %(events)s) g
  cross join lateral (select now() - (g::float / %(events)s) * interval '30 days' as moment) m
  cross join lateral (select (array['asset.reserved', 'asset.checked_out', 'asset.checked_in',
                                     'expense.submitted', 'expense.approved'])[1 + g %% 5]
                             as event_type) t
  cross join lateral (select case when g %% 1000 = 1 then 'dead' when g %% 1000 = 2 then 'failed'
                                  when g <= 2000 then 'pending' else 'completed' end as status) s;
insert into integration.event_log (event_id, source, event_type, aggregate_type, aggregate_id,
    payload, idempotency_key, received_at)
select id, 'odoo', event_type, 'maintenance.equipment', aggregate_id, payload, idempotency_key,
       moment
  from filled;
insert into integration.outbox (id, source, event_type, aggregate_type, aggregate_id, payload,
    idempotency_key, status, attempts, last_error, created_at, updated_at, available_at)
select id, 'odoo', event_type, 'maintenance.equipment', aggregate_id, payload, idempotency_key,
       status, case when status = 'pending' then 0 else 1 end,
       case when status in ('failed', 'dead') then 'hook: HTTP 500: upstream down' end,
       moment, moment, moment
  from filled where status <> 'completed';
"""


def waiting_in(url: str) -> int:
    """How many of the filled events are still in the outbox (not delivered)."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        cursor.execute("select count(*) from integration.outbox")
        [(count,)] = cursor.fetchall()
    conn.close()
    return count


def fill(url: str, events: int) -> float:
    started = time.perf_counter()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("begin")
        cursor.execute(FILL, {"events": events})
        cursor.execute("commit")
        cursor.execute("vacuum analyze integration.outbox")
        cursor.execute("vacuum analyze integration.event_log")
    conn.close()
    return time.perf_counter() - started


def signed_in(base: str) -> requests.Session:
    session, answer = console_sign_in(base, "bench", PASSWORD)
    assert answer.status_code == 303, answer.text
    return session


def timed(session: requests.Session, url: str, runs: int) -> tuple[float, float]:
    session.get(url).raise_for_status()  # warm the caches once
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = session.get(url)
        times.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ipai-console-bench-") as home:
        os.chmod(home, 0o711)  # under root the cluster's own user walks through it
        cluster = EmbeddedPostgres(Path(home) / "pg")
        url = cluster.ensure_running()
        console = None
        try:
            migrate(url)
            seconds = fill(url, args.events)
            password = Path(home) / "console-password"
            password.write_text(PASSWORD + "\n")
            port = free_port()
            env = {**os.environ, "DATABASE_URL": url, "IPAI_CONSOLE_PASSWORD_FILE": str(password)}
            console = subprocess.Popen(
                [sys.executable, "-m", "ipai_bus_lib.ops.cli", "console", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            wait_for_server("the console", http_answers(base + "/login"), process=console)
            session = signed_in(base)
            first_page = session.get(base + "/events").text
            older = re.search(r'rel="next" href="([^"]+)"', first_page)[1].replace("&amp;", "&")
            some_event = re.search(r'href="/events/([0-9a-f-]{36})"', first_page)[1]
            print(
                f"{args.events:,} events in event_log, the undelivered {waiting_in(url):,} of them in the outbox"
                f" (filled in {seconds:.0f} s); PostgreSQL durable (fsync on);"
                f" {os.cpu_count()} cores; {args.runs} requests a page over HTTP"
            )
            pages = [
                ("overview", "/"),
                ("events, first page", "/events"),
                ("events, next page (keyset)", older),
                ("events: status completed", "/events?status=completed"),
                ("events: status dead", "/events?status=dead"),
                ("events: type asset.*", "/events?type=asset.*"),
                ("events: one record", "/events?record=EQ-1234"),
                ("events: a day a week ago", _day_a_week_ago()),
                ("one event", f"/events/{some_event}"),
                ("dead letters", "/dead"),
                ("destinations", "/destinations"),
            ]
            for name, path in pages:
                median, p95 = timed(session, base + path, args.runs)
                print(f"  {name:<30} median {median:7.1f} ms   p95 {p95:7.1f} ms")
        finally:
            if console is not None:
                console.terminate()
                console.wait(timeout=20)
            cluster.stop()


def _day_a_week_ago() -> str:
    from datetime import datetime, timedelta

    since = (datetime.now() - timedelta(days=7)).replace(microsecond=0)
    until = since + timedelta(days=1)
    return f"/events?since={since.isoformat()}&until={until.isoformat()}"


if __name__ == "__main__":
    main()
