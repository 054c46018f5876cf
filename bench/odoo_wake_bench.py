"""What waking the dispatch cron costs the user's request: Odoo's own ``ir.cron._trigger()``
against the addon's waker (utils/cron_waker.py), on real Odoo 18 and a durable PostgreSQL.

Both write a trigger row in the transaction and NOTIFY the cron workers' ``cron_trigger``
channel after commit, so the cron wakes alike; what differs is the NOTIFY's connection. Each
round commits a transaction that writes the trigger row and then wakes the cron (a) as
``_trigger()`` does, through ``_notifydb()``, or (b) through the addon's kept connection, or
(c) not at all (the baseline). Rounds alternate the three.

    ODOO_PATH=~/odoo18 python bench/odoo_wake_bench.py --runs 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from odoo_expense_bench import ODOO_PATH, create_database, odoo, odoo_cluster  # noqa: E402

SHELL_SCRIPT = """
import json, time
from functools import partial
from odoo.addons.ipai_enterprise_bridge.utils.cron_waker import wake_cron_workers
cron = env.ref('ipai_enterprise_bridge.ir_cron_dispatch_events')
Trigger = env['ir.cron.trigger']

def odoo_trigger():
    cron._trigger()  # the trigger row, and _notifydb() after commit

def kept_connection():
    Trigger.create({'cron_id': cron.id, 'call_at': env.cr.now()})
    env.cr.postcommit.add(partial(wake_cron_workers, env.cr.dbname))

def no_wake():
    Trigger.create({'cron_id': cron.id, 'call_at': env.cr.now()})

ways = {'odoo': odoo_trigger, 'kept': kept_connection, 'none': no_wake}
timings = {name: [] for name in ways}
for name in ways:  # warm up: the kept connection opens once per process
    ways[name](); env.cr.commit()
for _ in range(%(runs)d):
    for name, way in ways.items():
        started = time.perf_counter()
        way()
        env.cr.commit()
        timings[name].append((time.perf_counter() - started) * 1000)
env['ir.cron.trigger'].search([('cron_id', '=', cron.id)]).unlink()
env.cr.commit()
print('RESULT', json.dumps(timings))
"""


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered):6.2f} ms   p90 {p90:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with odoo_cluster("ipai-wake-bench-") as port:
        database = create_database(port, "ipai_enterprise_bridge")
        output = odoo(database, "shell", "--log-level=warn", stdin=SHELL_SCRIPT % vars(args))
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    timings = json.loads(line.removeprefix("RESULT "))
    baseline = statistics.median(timings["none"])
    print(
        f"Odoo 18 at {ODOO_PATH}; {args.runs} commits each way, alternating; "
        f"{os.cpu_count()} cores; PostgreSQL durable (fsync on)"
    )
    for name, title in (
        ("none", "trigger row, no wake-up (baseline)"),
        ("odoo", "ir.cron._trigger() (NOTIFY via _notifydb)"),
        ("kept", "addon's waker (NOTIFY on a kept connection)"),
    ):
        added = statistics.median(timings[name]) - baseline
        print(f"  {title:46} {summary(timings[name])}   added {added:+6.2f} ms")


if __name__ == "__main__":
    main()
