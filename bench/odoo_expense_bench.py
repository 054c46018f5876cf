"""Odoo benchmark: the time one expense report submission spends, with ipai_enterprise_bridge
installed and without it, median over many runs, and their ratio.

Two fresh Odoo 18 databases on a throw-away embedded PostgreSQL (durable): one with hr_expense
and maintenance only, one with the addon too. Each is measured two ways:

- as the user submits: one Odoo server (loopback, no cron threads) serves both databases and
  the benchmark presses "Submit" through the web client's JSON-RPC route, alternating between
  the two databases, so the request, the transaction and its commit are all timed;
- inside the transaction only: `odoo-bin shell` times `action_submit_sheet()` from an empty
  cache, plus the flush and the pre-commit hooks a commit would run, then rolls back. No
  request, no commit: the strictest view of what the addon adds.

No HTTP call to the bus happens on either path: posting is the dispatch cron's job.

    ODOO_PATH=~/odoo18 python bench/odoo_expense_bench.py --runs 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from tests.readiness import http_answers, wait_for_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ODOO_PATH = Path(os.environ.get("ODOO_PATH", "~/odoo18")).expanduser()
ROLE, PASSWORD = "ipai_odoo_bench", "ipai-odoo-bench-password"

SHELL_SCRIPT = """
import json, statistics, time
from odoo import Command
employee = env['hr.employee'].create({'name': 'Bench Employee'})
product = env['product.product'].search([('can_be_expensed', '=', True)], limit=1)
timings = []
for run in range(%(runs)d + 20):
    sheet = env['hr.expense.sheet'].create({
        'name': f'Bench {run}', 'employee_id': employee.id,
        'expense_line_ids': [Command.create({'name': f'Line {n}', 'employee_id': employee.id,
                                             'product_id': product.id,
                                             'total_amount_currency': 100 + n})
                             for n in range(2)]})
    env.flush_all()
    env.invalidate_all()  # each request starts with an empty cache
    started = time.perf_counter()
    sheet.action_submit_sheet()
    env.cr.flush()  # what a commit runs first: the ORM flush, then the pre-commit hooks
    elapsed = time.perf_counter() - started
    if run >= 20:  # the first runs warm caches
        timings.append(elapsed)
queued = env['ipai.event.outbox'].search_count([]) if 'ipai.event.outbox' in env else 0
print('RESULT', json.dumps({'median': statistics.median(timings), 'queued': queued,
                            'p90': sorted(timings)[int(0.9 * len(timings))]}))
env.cr.rollback()
"""


def odoo_command(database: dict, *args: str) -> list[str]:
    return [
        str(ODOO_PATH / ".venv" / "bin" / "python"),
        str(ODOO_PATH / "odoo-bin"),
        args[0],
        f"--addons-path={ODOO_PATH / 'addons'},{REPO / 'addons'}",
        "--db_host",
        "127.0.0.1",
        "--db_port",
        database["port"],
        "--db_user",
        ROLE,
        "--db_password",
        PASSWORD,
        *(["-d", database["name"]] if "name" in database else []),
        *args[1:],
    ]


def odoo(database: dict, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        odoo_command(database, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ODOO_PATH,
    )
    if result.returncode != 0:
        raise SystemExit(f"odoo-bin {args[0]} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def create_database(port: str, modules: str) -> dict:
    database = {"name": f"bench_{uuid.uuid4().hex[:8]}", "port": port}
    odoo(
        database, "server", "-i", modules, "--without-demo=all", "--stop-after-init", "--log-level=warn"
    )
    return database


def in_transaction(database: dict, runs: int) -> dict:
    output = odoo(
        database, "shell", "--no-http", "--log-level=warn", stdin=SHELL_SCRIPT % {"runs": runs}
    )
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


class WebClient:
    """What the browser does: a session on one database, JSON-RPC calls."""

    def __init__(self, base_url: str, database: str):
        self.base_url, self.session = base_url, requests.Session()
        uid = self.rpc("/web/session/authenticate", db=database, login="admin", password="admin")["uid"]
        self.employee = self.call(
            "/web/dataset/call_kw", "hr.employee", "search", [("user_id", "=", uid)], limit=1
        )[0]
        self.product = self.call(
            "/web/dataset/call_kw",
            "product.product",
            "search",
            [("can_be_expensed", "=", True)],
            limit=1,
        )[0]

    def rpc(self, route: str, **params):
        answer = self.session.post(
            self.base_url + route,
            json={"jsonrpc": "2.0", "method": "call", "params": params},
            timeout=60,
        ).json()
        if "error" in answer:
            raise SystemExit(f"{route}: {answer['error']['data']['message']}")
        return answer["result"]

    def call(self, route: str, model: str, method: str, *args, **kwargs):
        return self.rpc(route, model=model, method=method, args=list(args), kwargs=kwargs)

    def new_report(self, number: int) -> int:
        employee, product = self.employee, self.product
        return self.call(
            "/web/dataset/call_kw",
            "hr.expense.sheet",
            "create",
            {
                "name": f"Bench {number}",
                "employee_id": employee,
                "expense_line_ids": [
                    (
                        0,
                        0,
                        {
                            "name": f"Line {n}",
                            "employee_id": employee,
                            "product_id": product,
                            "total_amount_currency": 100 + n,
                        },
                    )
                    for n in range(2)
                ],
            },
        )

    def timed_submit(self, sheet_id: int) -> float:
        started = time.perf_counter()
        self.call("/web/dataset/call_button", "hr.expense.sheet", "action_submit_sheet", [sheet_id])
        return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_the_user_submits(port: str, databases: list[dict], runs: int) -> list[dict]:
    """Median time of the Submit button's request, alternating between the databases."""
    http_port = free_port()
    server = subprocess.Popen(
        odoo_command(
            {"port": port},
            "server",
            "--http-interface",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--workers",
            "0",
            "--max-cron-threads",
            "0",
            "--db-filter",
            "^bench_",
            "--log-level=warn",
        ),
        cwd=ODOO_PATH,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base_url = f"http://127.0.0.1:{http_port}"
        wait_for_http(base_url, server)
        clients = [WebClient(base_url, database["name"]) for database in databases]
        warmup = 20
        sheets = [[client.new_report(n) for n in range(runs + warmup)] for client in clients]
        timings: list[list[float]] = [[] for _ in clients]
        for n in range(runs + warmup):
            for client, client_sheets, client_timings in zip(clients, sheets, timings):
                elapsed = client.timed_submit(client_sheets[n])
                if n >= warmup:
                    client_timings.append(elapsed)
        return [
            {"median": statistics.median(values), "p90": sorted(values)[int(0.9 * len(values))]}
            for values in timings
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_http(base_url: str, server: subprocess.Popen) -> None:
    wait_for_server(
        "Odoo",
        http_answers(base_url + "/web/health"),
        process=server,
    )


def report(title: str, without: dict, with_addon: dict) -> None:
    print(title)
    print(
        f"  without the addon   median {without['median'] * 1000:7.2f} ms   "
        f"p90 {without['p90'] * 1000:7.2f} ms"
    )
    print(
        f"  with the addon      median {with_addon['median'] * 1000:7.2f} ms   "
        f"p90 {with_addon['p90'] * 1000:7.2f} ms"
    )
    added = with_addon["median"] / without["median"] - 1
    print(
        f"  ratio with/without: {with_addon['median'] / without['median']:.3f} "
        f"({added * 100:+.1f}% added)"
    )


@contextlib.contextmanager
def odoo_cluster(prefix: str = "ipai-odoo-bench-") -> Iterator[str]:
    """A throw-away durable embedded PostgreSQL with Odoo's role; yields its port."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        os.chmod(home, 0o711)  # the embedded server's user must reach its data directory
        cluster = EmbeddedPostgres(Path(home))  # durable defaults
        url = cluster.ensure_running()
        try:
            conn = psycopg2.connect(url)
            conn.autocommit = True
            conn.cursor().execute(f"create role {ROLE} login createdb password %s", (PASSWORD,))
            conn.close()
            yield str(cluster.port())
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with odoo_cluster() as port:
        databases = [
            create_database(port, "hr_expense,maintenance"),
            create_database(port, "ipai_enterprise_bridge"),
        ]
        requests_timed = as_the_user_submits(port, databases, args.runs)
        transactions_timed = [in_transaction(database, args.runs) for database in databases]
    print(
        f"Odoo 18 at {ODOO_PATH}; {args.runs} submissions of a 2-line report each; "
        f"{os.cpu_count()} cores; PostgreSQL durable (fsync on)"
    )
    report("as the user submits (JSON-RPC request, transaction and commit):", *requests_timed)
    report("inside the transaction only (empty cache, no request, no commit):", *transactions_timed)
    print(
        f"events queued by the addon in the transaction run: {transactions_timed[1]['queued']}; "
        "HTTP calls to the bus on the request path: none"
    )


if __name__ == "__main__":
    main()
