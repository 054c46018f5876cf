"""Design bench: what the database spends per event to claim, acknowledge and record an attempt,
for today's outbox functions and for candidate designs, on one PostgreSQL in one run.

This is the measurement behind the router's cost work (issue 15: 1.5 times PgQueuer). The
router is CPU-bound on 2 cores (its Python about 15 µs per event, PostgreSQL the rest), so what
a design saves in database time per event is what it can add to the rate. Only the happy path is modelled:
a batch of 1,000 is claimed while the one before it is settled (as the router pipelines them),
then acknowledged with one attempt row per event. Leases expiring, failures and hand-backs are
not, and the candidates live in a scratch schema (`design`), never in the bus's own.

Candidates (the bus now has the lease-set claim and the acknowledgement by DELETE, and its
uniqueness lives in integration.event_key; the candidates stay as the measured design space):
  * lease-set claim: the claim writes one lease row naming the batch's ids instead of updating
    each outbox row (in-flight = named by a live lease; claims serialised by an advisory lock);
  * without the uniqueness indexes: (source, idempotency_key) and the signature digest checked
    in a narrow insert-only table at ingest, so the router's updates do not maintain them;
  * acknowledge by DELETE: a completed event leaves the outbox (the event_log keeps its copy),
    so the acknowledgement writes no index at all.

    python bench/storage_designs.py --events 30000
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_bench import scratch_bus  # noqa: E402

BATCH = 1000
SCRATCH = """
drop schema if exists design cascade;
create schema design;
create table design.lease (id bigint generated always as identity primary key,
    worker text not null, ids uuid[] not null, expires_at timestamptz not null);
-- Today's indexes come with it (including all): the candidates write attempts as the bus does.
create table design.delivery_attempts (like integration.delivery_attempts including all);
"""


def outbox_like_today(table: str, *, uniqueness: bool) -> str:
    """An outbox with today's columns and indexes, with or without the two uniqueness ones."""
    ddl = f"""
create table {table} (like integration.outbox including defaults including constraints
    including generated);
-- What an acknowledgement by UPDATE needs (the outbox had them until its rows left at the ack).
alter table {table} add column completed_at timestamptz;
alter table {table} drop constraint outbox_status_known;
alter table {table} alter column seq add generated always as identity;
alter table {table} add primary key (id);
create index on {table} (source, aggregate_type, aggregate_id, seq)
    where status in ('pending', 'processing', 'failed');
create index on {table} (available_at, seq) where status in ('pending', 'failed');
create index on {table} (updated_at) where status = 'dead';
"""
    if uniqueness:
        ddl += f"""
alter table {table} add unique (source, idempotency_key);
create unique index on {table} (signature_digest) where signature_digest is not null;
"""
    return ddl


def lease_set_claim(table: str) -> str:
    """Due events that no live lease names, in order, with today's per-record ordering rule."""
    return f"""
create function {table}_claim(p_worker text, p_limit int, p_lease_seconds int)
returns setof {table} language plpgsql set plan_cache_mode = force_custom_plan as $$
begin
    perform pg_advisory_xact_lock(hashtext('{table}'));
    return query
    with picked as materialized (
        select d.* from {table} d
         where d.status in ('pending', 'failed') and d.available_at <= now()
           and d.id not in (select unnest(l.ids) from design.lease l)
           and not exists (
               select 1 from {table} earlier
                where earlier.source = d.source and earlier.aggregate_type = d.aggregate_type
                  and earlier.aggregate_id = d.aggregate_id and earlier.seq < d.seq
                  and earlier.status in ('pending', 'processing', 'failed'))
         order by d.available_at, d.seq
         limit p_limit
    ), leased as (
        insert into design.lease (worker, ids, expires_at)
        select p_worker, array_agg(id), now() + make_interval(secs => p_lease_seconds)
          from picked having count(*) > 0
    )
    select * from picked;
end $$;
"""


PREFILL_TODAY = (
    "select count(*) from generate_series(1, %(n)s) g, lateral integration.insert_outbox_event("
    "'asset.reserved', 'maintenance.equipment', %(run)s || g, '{\"booking_id\": 1}',"
    " %(run)s || '-' || g)"
)
PREFILL_DESIGN = (
    "insert into {table} (event_type, aggregate_type, aggregate_id, payload, idempotency_key,"
    " signature_digest) select 'asset.reserved', 'maintenance.equipment', %(run)s || g,"
    " '{{\"booking_id\": 1}}', %(run)s || '-' || g, md5(%(run)s || g)"
    " from generate_series(1, %(n)s) g"
)
RECORD_ATTEMPTS = (
    "insert into design.delivery_attempts"
    " (event_id, attempt, worker, destination, outcome, http_status, error, duration_ms)"
    " select e, a, 'bench', 'noop', 'delivered', null, null, 0"
    " from unnest(%s::uuid[], %s::int[]) as t(e, a)"
)
TODAY_RECORD_ATTEMPTS = (
    "select integration.record_delivery_attempts('bench', %s::uuid[], %s::int[], %s, %s,"
    " %s::int[], %s, %s::real[])"
)


class Design:
    """One way to claim and settle; ``table`` None means the bus's own functions."""

    def __init__(self, label: str, table: str | None, acknowledge: str = "update") -> None:
        self.label, self.table, self.acknowledge = label, table, acknowledge

    def prefill(self, cursor, events: int) -> None:
        run = f"{uuid.uuid4().hex[:8]}-"
        if self.table is None:
            cursor.execute(
                "set session_replication_role = replica; truncate integration.outbox, integration.outbox_lease, integration.event_key,"
                " integration.event_log, integration.delivery_attempts;"
                " set session_replication_role = origin"
            )
            cursor.execute(PREFILL_TODAY, {"n": events, "run": run})
            cursor.execute("vacuum analyze integration.outbox")
        else:
            cursor.execute(f"truncate {self.table}, design.lease, design.delivery_attempts")
            cursor.execute(PREFILL_DESIGN.format(table=self.table), {"n": events, "run": run})
            cursor.execute(f"vacuum analyze {self.table}")

    def claim(self, cursor) -> list[tuple]:
        if self.table is None:
            cursor.execute(
                "select id, attempts from integration.claim_outbox('bench', %s, 60)", (BATCH,)
            )
        else:
            cursor.execute(f"select id, attempts + 1 from {self.table}_claim('bench', %s, 60)", (BATCH,))
        return cursor.fetchall()

    def acknowledge_batch(self, cursor, ids: list) -> None:
        if self.table is None:
            cursor.execute("select integration.ack_outbox(%s::uuid[], 'bench')", (ids,))
            return
        if self.acknowledge == "delete":
            cursor.execute(f"delete from {self.table} where id = any(%s::uuid[])", (ids,))
        else:
            cursor.execute(
                f"update {self.table} set status = 'completed', completed_at = now(),"
                " updated_at = now(), attempts = attempts + 1 where id = any(%s::uuid[])",
                (ids,),
            )
        cursor.execute("delete from design.lease where ids[1] = %s::uuid", (ids[0],))

    def record_attempts(self, cursor, ids: list, attempts: list) -> None:
        if self.table is None:
            n = len(ids)
            cursor.execute(
                TODAY_RECORD_ATTEMPTS,
                (ids, attempts, ["noop"] * n, ["delivered"] * n, [None] * n, [None] * n, [0.0] * n),
            )
        else:
            cursor.execute(RECORD_ATTEMPTS, (ids, attempts))


def drain(design: Design, cursor, events: int) -> tuple[float, dict[str, float]]:
    """Claim one batch ahead and settle the one before, until nothing is due; seconds per step."""
    spent = {"claim": 0.0, "acknowledge": 0.0, "attempts": 0.0}

    def timed(step: str, work, *args):
        started = time.perf_counter()
        result = work(cursor, *args)
        spent[step] += time.perf_counter() - started
        return result

    started, settled = time.perf_counter(), 0
    ahead = timed("claim", design.claim)
    while ahead:
        following = timed("claim", design.claim)
        ids, attempts = [row[0] for row in ahead], [row[1] for row in ahead]
        timed("acknowledge", design.acknowledge_batch, ids)
        timed("attempts", design.record_attempts, ids, attempts)
        settled += len(ahead)
        ahead = following
    if settled != events:
        raise RuntimeError(f"{design.label}: settled {settled} of {events}")
    return time.perf_counter() - started, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    designs = [
        Design("today: lease-set claim, ack deletes", None),
        Design("lease-set claim, ack update", "design.outbox_kept", "update"),
        Design("lease-set claim, ack update, no uniq idx", "design.outbox_narrow", "update"),
        Design("lease-set claim, ack delete, no uniq idx", "design.outbox_leaving", "delete"),
    ]
    with scratch_bus("ipai-design-bench-") as (_, conn):
        cursor = conn.cursor()
        cursor.execute("set synchronous_commit = off")  # as the router's session
        cursor.execute(SCRATCH)
        for design, uniqueness in zip(designs[1:], (True, False, False)):
            cursor.execute(outbox_like_today(design.table, uniqueness=uniqueness))
            cursor.execute(lease_set_claim(design.table))
        print(
            f"{args.events} events, batches of {BATCH}, one connection, PostgreSQL durable;"
            " database time per event:"
        )
        for _ in range(args.rounds):
            for design in designs:
                design.prefill(cursor, args.events)
                seconds, spent = drain(design, cursor, args.events)
                per = {step: value / args.events * 1e6 for step, value in spent.items()}
                print(
                    f"{design.label:<42} {args.events / seconds:7.0f} events/s   claim"
                    f" {per['claim']:5.1f} µs  ack {per['acknowledge']:5.1f} µs  attempts"
                    f" {per['attempts']:5.1f} µs  total {sum(per.values()):5.1f} µs"
                )


if __name__ == "__main__":
    main()
