"""Odoo benchmark: the time one expense report submission spends, with ipai_enterprise_bridge
installed and without it, median over many runs, and their ratio.

Two fresh Odoo 18 databases on a throw-away embedded PostgreSQL: one with hr_expense and
maintenance only, one with the addon too. In each, `odoo-bin shell` creates reports and times
`action_submit_sheet()` plus the flush and the pre-commit hooks a real commit would run (the
addon writes its outbox rows and wakes its cron there), then rolls back. No HTTP call happens on that path: posting is the dispatch cron's job.

    ODOO_PATH=~/odoo18 python bench/odoo_expense_bench.py --runs 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipai_bus_lib.embedded import EmbeddedPostgres  # noqa: E402

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
    started = time.perf_counter()
    sheet.action_submit_sheet()
    env.flush_all()
    env.cr.precommit.run()  # what the commit runs: mail tracking, and the addon's cron trigger
    elapsed = time.perf_counter() - started
    if run >= 20:  # the first runs warm caches
        timings.append(elapsed)
queued = env['ipai.event.outbox'].search_count([]) if 'ipai.event.outbox' in env else 0
print('RESULT', json.dumps({'median': statistics.median(timings), 'queued': queued,
                            'p90': sorted(timings)[int(0.9 * len(timings))]}))
env.cr.rollback()
"""


def odoo(database: dict, *args: str, stdin: str | None = None) -> str:
    command = [str(ODOO_PATH / ".venv" / "bin" / "python"), str(ODOO_PATH / "odoo-bin"), args[0],
               f"--addons-path={ODOO_PATH / 'addons'},{REPO / 'addons'}", "-d", database["name"],
               "--db_host", "127.0.0.1", "--db_port", database["port"], "--db_user", ROLE,
               "--db_password", PASSWORD, *args[1:]]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=1800,
                            cwd=ODOO_PATH)
    if result.returncode != 0:
        raise SystemExit(f"odoo-bin {args[0]} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def measure(port: str, modules: str, runs: int) -> dict:
    database = {"name": f"bench_{uuid.uuid4().hex[:8]}", "port": port}
    odoo(database, "server", "-i", modules, "--without-demo=all", "--stop-after-init",
         "--log-level=warn")
    output = odoo(database, "shell", "--no-http", "--log-level=warn",
                  stdin=SHELL_SCRIPT % {"runs": runs})
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipai-odoo-bench-") as home:
        cluster = EmbeddedPostgres(Path(home))  # durable defaults
        url = cluster.ensure_running()
        try:
            conn = psycopg2.connect(url)
            conn.autocommit = True
            conn.cursor().execute(f"create role {ROLE} login createdb password %s", (PASSWORD,))
            conn.close()
            port = str(cluster.port())
            without = measure(port, "hr_expense,maintenance", args.runs)
            with_addon = measure(port, "ipai_enterprise_bridge", args.runs)
        finally:
            cluster.stop()
    print(f"Odoo 18 at {ODOO_PATH}; {args.runs} submissions of a 2-line report each")
    print(f"without the addon   median {without['median'] * 1000:7.2f} ms   "
          f"p90 {without['p90'] * 1000:7.2f} ms")
    print(f"with the addon      median {with_addon['median'] * 1000:7.2f} ms   "
          f"p90 {with_addon['p90'] * 1000:7.2f} ms   ({with_addon['queued']} events queued)")
    added = with_addon["median"] / without["median"] - 1
    print(f"ratio with/without: {with_addon['median'] / without['median']:.3f} "
          f"({added * 100:+.1f}% added); HTTP calls on that path: none")


if __name__ == "__main__":
    main()
