"""Odoo outage benchmark: the bus is away while finance work goes on; seconds from the bus
answering again to the last queued event stored, and whether every record's events arrived in
the order Odoo queued them.

A throw-away durable embedded PostgreSQL holds the bus database and a fresh Odoo 18 database
with ipai_finance_ppm. Odoo 18 serves it with one cron thread, as a small deployment does. The
receiver is stopped; during the outage `odoo-bin shell` creates the tasks and moves them through
their steps in rounds spread over it (each round commits, which wakes the dispatch cron, which
finds the bus away and probes). Then the receiver starts again on the same port.

    ODOO_PATH=~/odoo18 python bench/odoo_outage_bench.py --outage-seconds 300 --tasks 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from odoo_catchup_bench import bus_database  # noqa: E402
from odoo_expense_bench import ODOO_PATH, PASSWORD, ROLE, create_database, odoo, odoo_command  # noqa: E402

from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from tests.helpers import free_port, wait_for_receiver  # noqa: E402
from tests.readiness import http_answers, wait_for_server  # noqa: E402

SECRET = "outage-benchmark-secret-not-for-production"
STEPS = ("in_progress", "submitted", "approved")  # after "created": four events a task

SETUP_SCRIPT = """
params = env['ir.config_parameter'].sudo()
params.set_param('ipai.webhook.url', %(url)r)
params.set_param('ipai.webhook.secret', %(secret)r)
project = env['project.project'].create({'name': 'Outage drill', 'ipai_is_finance_ppm': True})
for sequence, (name, step) in enumerate([('To prepare', False), ('Preparing', 'in_progress'),
        ('For review', 'submitted'), ('Approved', 'approved'), ('Filed', 'filed')]):
    env['project.task.type'].create({'name': name, 'sequence': sequence,
        'ipai_finance_step': step, 'project_ids': [(4, project.id)]})
env.cr.commit()
print('PROJECT', project.id)
"""

# One round of the users' work: create the tasks, or move each to the next step.
ROUND_SCRIPT = """
project = env['project.project'].browse(%(project)d)
stages = {s.ipai_finance_step or 'draft': s for s in env['project.task.type'].search(
    [('project_ids', 'in', project.id)])}
if %(step)r == 'created':
    form = env.ref('ipai_finance_ppm.bir_form_1601c')
    for number in range(%(tasks)d):
        env['project.task'].create({'name': f'Drill task {number}', 'project_id': project.id,
            'stage_id': stages['draft'].id, 'ipai_bir_form_id': form.id})
        env.cr.commit()  # one user action each: each wakes the dispatcher
else:
    for task in env['project.task'].search([('project_id', '=', project.id)], order='id'):
        task.stage_id = stages[%(step)r]
        env.cr.commit()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-seconds", type=float, default=300)
    parser.add_argument("--tasks", type=int, default=100, help="each makes four events")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipai-outage-") as home:
        os.chmod(home, 0o711)  # under root the cluster's own user walks through it
        cluster = EmbeddedPostgres(Path(home) / "pg")  # durable defaults
        admin_url = cluster.ensure_running()
        processes: list[subprocess.Popen] = []
        try:
            bus_url = bus_database(admin_url)
            port = free_port()
            database = create_database(str(cluster.port()), "ipai_finance_ppm")
            url = f"http://127.0.0.1:{port}/functions/v1/odoo-webhook"
            setup = odoo(
                database,
                "shell",
                "--no-http",
                "--log-level=warn",
                stdin=SETUP_SCRIPT % {"url": url, "secret": SECRET},
            )
            project = int(
                next(line for line in setup.splitlines() if line.startswith("PROJECT ")).split()[1]
            )
            processes.append(odoo_server(database, Path(home) / "odoo.log"))
            outage_started = time.monotonic()
            rounds = ("created", *STEPS)
            for number, step in enumerate(rounds):  # the work, spread over the outage
                odoo(
                    database,
                    "shell",
                    "--no-http",
                    "--log-level=warn",
                    stdin=ROUND_SCRIPT % {"project": project, "step": step, "tasks": args.tasks},
                )
                pause = outage_started + args.outage_seconds * (number + 1) / (len(rounds) + 1)
                time.sleep(max(0.0, pause - time.monotonic()))
            time.sleep(max(0.0, outage_started + args.outage_seconds - time.monotonic()))
            expected = args.tasks * len(rounds)
            link = odoo_rows(database, "select probes, away_since is not null from ipai_bus_link")[0]
            attempts = odoo_rows(database, "select coalesce(sum(attempts), 0) from ipai_event_outbox")[
                0
            ][0]
            back_at = time.time()
            processes.append(receiver(bus_url, port))
            wait_for_receiver(port, process=processes[-1])
            stored = wait_for_bus(bus_url, expected, timeout=900)
            drained = stored["last_received"] - back_at
            order = per_record_order(database, bus_url)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=60)
            cluster.stop()
    in_order = sum(order.values())
    print(
        f"Odoo 18 at {ODOO_PATH}, one cron thread; bus away {args.outage_seconds:g} s while "
        f"{args.tasks} BIR tasks were created and moved through {len(STEPS)} steps "
        f"({expected} events); {os.cpu_count()} cores, durable PostgreSQL"
    )
    print(
        f"while away: {link[0]} probes (the bus link), {attempts} attempts counted on events;"
        f" away at the end of the outage: {link[1]}"
    )
    print(
        f"bus answering again → last event stored: {drained:.1f} s "
        f"({stored['count']} stored, {stored['distinct']} distinct keys)"
    )
    print(f"per-record order at the bus: {in_order}/{len(order)} records in Odoo's order")
    if stored["count"] != expected or in_order != len(order):
        sys.exit(1)


def odoo_server(database: dict, log_path: Path) -> subprocess.Popen:
    """Odoo serving the database with one cron thread (threaded mode), as deployed small."""
    http_port = free_port()
    process = subprocess.Popen(
        odoo_command(
            database,
            "server",
            "--http-interface",
            "127.0.0.1",
            f"--http-port={http_port}",
            f"--gevent-port={free_port()}",
            "--workers=0",
            "--max-cron-threads=1",
            "--log-level=warn",
        ),
        stdout=open(log_path, "w"),  # noqa: SIM115 - the server's life
        stderr=subprocess.STDOUT,
        cwd=ODOO_PATH,
    )
    wait_for_server(
        "Odoo", http_answers(f"http://127.0.0.1:{http_port}/web/login"), process=process, log=log_path
    )
    return process


def receiver(bus_url: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ipai_bus_lib.ops.cli", "serve", "--port", str(port)],
        env={**os.environ, "DATABASE_URL": bus_url, "IPAI_WEBHOOK_SECRET": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def odoo_rows(database: dict, sql: str) -> list[tuple]:
    conn = psycopg2.connect(
        host="127.0.0.1", port=database["port"], dbname=database["name"], user=ROLE, password=PASSWORD
    )
    with conn.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    conn.close()
    return rows


def wait_for_bus(bus_url: str, expected: int, timeout: float) -> dict:
    """Poll the bus until ``expected`` events are stored; when the last one was received."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(bus_url)
    conn.autocommit = True
    try:
        while True:
            with conn.cursor() as cursor:
                cursor.execute(
                    "select count(*), count(distinct idempotency_key),"
                    " extract(epoch from max(received_at)) from integration.event_log"
                )
                count, distinct, last = cursor.fetchone()
            if count >= expected or time.monotonic() > deadline:
                return {"count": count, "distinct": distinct, "last_received": float(last or 0)}
            time.sleep(0.1)
    finally:
        conn.close()


def per_record_order(database: dict, bus_url: str) -> dict[str, bool]:
    """Each record: are its events in the bus's order (seq) those Odoo queued (id order)?"""
    queued = defaultdict(list)
    for aggregate, key in odoo_rows(
        database, "select aggregate_id, bus_key from ipai_event_outbox order by id"
    ):
        queued[aggregate].append(key)
    conn = psycopg2.connect(bus_url)
    with conn.cursor() as cursor:
        cursor.execute("select aggregate_id, idempotency_key from integration.outbox order by seq")
        stored = defaultdict(list)
        for aggregate, key in cursor.fetchall():
            stored[aggregate].append(key)
    conn.close()
    return {aggregate: stored.get(aggregate) == keys for aggregate, keys in queued.items()}


if __name__ == "__main__":
    main()
