"""Odoo catch-up benchmark: how long the Odoo side takes to hand a backlog of queued events to a
local receiver, from the first dispatch cron run to the last acknowledgement.

A throw-away durable embedded PostgreSQL holds both the bus database (with `ipai-bus serve` on
loopback) and a fresh Odoo 18 database with ipai_enterprise_bridge. `odoo-bin shell` queues the
backlog and commits it, then runs the dispatch cron as Odoo 18's cron runner does: again at once
while the job reports work remaining through the progress API, committing as it goes. The bus's
outbox is counted at the end.

    ODOO_PATH=~/odoo18 python bench/odoo_catchup_bench.py --events 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from odoo_expense_bench import ODOO_PATH, PASSWORD, ROLE, create_database, odoo  # noqa: E402

from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from ipai_bus_lib.storage.migrator import migrate  # noqa: E402
from tests.helpers import free_port, wait_for_receiver  # noqa: E402

SECRET = "catch-up-benchmark-secret-not-for-production"
PREVIOUS_BATCH_PER_MINUTE = 100  # the dispatcher before: 100 events per cron minute

SHELL_SCRIPT = """
import json, time
from datetime import datetime, timedelta
from odoo.addons.ipai_enterprise_bridge.utils.ipai_webhook import ipai_event, send_ipai_events
params = env['ir.config_parameter'].sudo()
params.set_param('ipai.webhook.url', %(url)r)
params.set_param('ipai.webhook.secret', %(secret)r)
bookings = []
for number in range(%(records)d):  # a busy morning: many pieces of equipment, each booked
    equipment = env['maintenance.equipment'].create({'name': f'Catch-up projector {number}'})
    bookings.append(env['ipai.equipment.booking'].create({
        'equipment_id': equipment.id, 'date_from': datetime(2026, 4, 1, 1),
        'date_to': datetime(2026, 4, 1, 9)}))
payloads = [booking._ipai_payload() for booking in bookings]
start = datetime(2026, 4, 1)
for first in range(0, %(events)d, 1000):
    send_ipai_events(env, [ipai_event('asset.reserved', bookings[n %% len(bookings)],
                                      payloads[n %% len(bookings)],
                                      aggregate_id=bookings[n %% len(bookings)].equipment_id.id,
                                      stamp=start + timedelta(seconds=n))
                           for n in range(first, min(first + 1000, %(events)d))])
env.cr.commit()
cron = env.ref('ipai_enterprise_bridge.ir_cron_dispatch_events')
outbox = env['ipai.event.outbox']
runs = 0
started = time.perf_counter()
while True:  # what ir.cron._run_job does, run after run while work remains
    runs += 1
    progress = env['ir.cron.progress'].create({'cron_id': cron.id})
    env.cr.commit()
    outbox.with_context(ir_cron_progress_id=progress.id)._cron_dispatch_events()
    env.cr.commit()
    if not progress.remaining:
        break
elapsed = time.perf_counter() - started
sent = outbox.search_count([('state', '=', 'sent')])
print('RESULT', json.dumps({'elapsed': elapsed, 'runs': runs, 'sent': sent}))
"""


def bus_database(admin_url: str) -> str:
    """On a fresh cluster: Odoo's role, and a migrated database named bus (its URL)."""
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    conn.cursor().execute(f"create role {ROLE} login createdb password %s", (PASSWORD,))
    conn.cursor().execute("create database bus")
    conn.close()
    bus_url = admin_url.rsplit("/", 1)[0] + "/bus"
    migrate(bus_url)
    return bus_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument(
        "--records",
        type=int,
        default=200,
        help="records the backlog is about (each record's events go in order)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipai-catchup-") as home:
        cluster = EmbeddedPostgres(Path(home))  # durable defaults
        admin_url = cluster.ensure_running()
        receiver = None
        try:
            bus_url = bus_database(admin_url)
            port = free_port()
            receiver = subprocess.Popen(
                [sys.executable, "-m", "ipai_bus_lib.ops.cli", "serve", "--port", str(port)],
                env={**os.environ, "DATABASE_URL": bus_url, "IPAI_WEBHOOK_SECRET": SECRET},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for_receiver(port, process=receiver)
            database = create_database(str(cluster.port()), "ipai_enterprise_bridge")
            output = odoo(
                database,
                "shell",
                "--no-http",
                "--log-level=warn",
                stdin=SHELL_SCRIPT
                % {
                    "url": f"http://127.0.0.1:{port}/functions/v1/odoo-webhook",
                    "secret": SECRET,
                    "events": args.events,
                    "records": args.records,
                },
            )
            line = next(line for line in output.splitlines() if line.startswith("RESULT "))
            result = json.loads(line[len("RESULT ") :])
            conn = psycopg2.connect(bus_url)
            with conn.cursor() as cursor:
                cursor.execute(
                    "select count(*), count(distinct idempotency_key) from integration.outbox"
                )
                stored, distinct = cursor.fetchone()
            conn.close()
        finally:
            if receiver is not None:
                receiver.terminate()
                receiver.wait(timeout=30)
            cluster.stop()
    elapsed = result["elapsed"]
    print(
        f"Odoo 18 at {ODOO_PATH}; {args.events} queued events about {args.records} records;"
        " receiver 2 workers on loopback;"
        f" {os.cpu_count()} cores; PostgreSQL durable (fsync on)"
    )
    print(
        f"handed over: {result['sent']} sent in Odoo, {stored} stored at the bus "
        f"({distinct} distinct keys) in {result['runs']} cron runs"
    )
    print(
        f"first cron run to last acknowledgement: {elapsed:.1f} s ({args.events / elapsed:.0f} events/s)"
    )
    minutes = args.events / PREVIOUS_BATCH_PER_MINUTE
    print(
        f"previous dispatcher (100 events per cron minute): {minutes:.0f} min for the same "
        f"backlog; ratio {minutes * 60 / elapsed:.0f}x"
    )


if __name__ == "__main__":
    main()
