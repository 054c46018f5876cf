-- A batch's deliveries are recorded in one row per destination, not one row per event.
--
-- The router wrote a delivery_attempts row for every attempt: a heap tuple, a primary key from
-- the sequence and an index entry each, 7.3 µs of wall time per delivered event against 4.5 µs
-- for one row of arrays per (settled batch, destination) found by a GIN index
-- (the experiment of 2026-12-04, 60,000 attempts a variant, alternating). Deliveries are
-- most of the attempts, so only they move: failed, dead, deferred and unrouted attempts, which
-- carry an error, stay rows of delivery_attempts.
--
-- Readers ask integration.attempts_of(ids) for an event's whole history: both tables, in the
-- columns delivery_attempts has. The rows written before this migration stay where they are.

create table integration.delivered_batch (
    id bigint generated always as identity primary key,
    worker text not null,
    destination text not null,
    attempted_at timestamptz not null default now(),
    event_ids uuid[] not null,
    attempts integer[] not null,
    http_status integer[] not null,
    durations_ms real[] not null,
    constraint delivered_batch_one_entry_per_event check (
        cardinality(event_ids) between 1 and 10000
        and array_position(event_ids, null) is null
        and cardinality(attempts) = cardinality(event_ids)
        and array_position(attempts, null) is null
        and cardinality(http_status) = cardinality(event_ids)
        and cardinality(durations_ms) = cardinality(event_ids))
);
comment on table integration.delivered_batch is
    'The attempts that delivered: one row per destination per settled batch, entry i of each array about event_ids[i]. Other outcomes are rows of delivery_attempts; integration.attempts_of reads both.';
-- fastupdate off: a pending list would be read whole by every look-up until the next vacuum.
create index delivered_batch_event_idx on integration.delivered_batch
    using gin (event_ids) with (fastupdate = off);

alter table integration.delivered_batch enable row level security;
create policy delivered_batch_router_read on integration.delivered_batch
    for select to ipai_bus_router using (true);
create policy delivered_batch_router_write on integration.delivered_batch
    for insert to ipai_bus_router with check (true);
create policy delivered_batch_operator_read on integration.delivered_batch
    for select to ipai_bus_operator using (true);
-- From the API roles too: a Supabase project's default privileges may grant them new tables.
revoke all on integration.delivered_batch from public, anon, authenticated, service_role;
grant select, insert on integration.delivered_batch to ipai_bus_router;
grant usage on sequence integration.delivered_batch_id_seq to ipai_bus_router;
grant select on integration.delivered_batch to ipai_bus_operator;

-- An SQL function the planner inlines (no SET, not SECURITY DEFINER), so a caller's ids become
-- index conditions and each reader sees what its own role may read.
create function integration.attempts_of(p_event_ids uuid[])
returns table (event_id uuid, attempted_at timestamptz, attempt integer, worker text,
               destination text, outcome text, http_status integer, error text,
               duration_ms real)
language sql stable
as $$
    select a.event_id, a.attempted_at, a.attempt, a.worker, a.destination, a.outcome,
           a.http_status, a.error, a.duration_ms
      from integration.delivery_attempts a
     where a.event_id = any(p_event_ids)
    union all
    select d.event_id, b.attempted_at, d.attempt, b.worker, b.destination, 'delivered',
           d.http_status, null, d.duration_ms
      from integration.delivered_batch b
     cross join lateral unnest(b.event_ids, b.attempts, b.http_status, b.durations_ms)
           as d(event_id, attempt, http_status, duration_ms)
     where b.event_ids && p_event_ids and d.event_id = any(p_event_ids)
$$;
comment on function integration.attempts_of(uuid[]) is
    'Every recorded attempt of the events p_event_ids, in delivery_attempts'' columns: the rows of delivery_attempts and the entries of delivered_batch.';
revoke all on function integration.attempts_of(uuid[])
    from public, anon, authenticated, service_role;
grant execute on function integration.attempts_of(uuid[]) to ipai_bus_router, ipai_bus_operator;

create or replace view integration.event_state with (security_invoker = true) as
select l.event_id as id, l.id as log_id, l.source, l.event_type, l.aggregate_type,
       l.aggregate_id, l.received_at,
       case when o.id is null then 'completed'
            when o.id in (select f.id from integration.in_flight f) then 'processing'
            else o.status end as status,
       case when o.id is null then (select max(a.attempt)
                                      from integration.attempts_of(array[l.event_id]) a)
            when o.id in (select f.id from integration.in_flight f) then o.attempts + 1
            else o.attempts end as attempts,
       o.last_error
  from integration.event_log l
  left join integration.outbox o on o.id = l.event_id;

create or replace function integration.purge_completed(p_older_than interval, p_actor text)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
begin
    perform integration.require(p_older_than >= interval '1 hour',
        'purge_completed: older_than must be at least 1 hour');
    perform integration.require(length(btrim(p_actor)) between 1 and 200,
        'purge_completed: actor must name who purges');
    delete from integration.event_key k
     where not exists (select 1 from integration.outbox o where o.id = k.event_id)
       and not exists (select 1 from integration.attempts_of(array[k.event_id]) a
                        where a.attempted_at >= now() - p_older_than)
       and exists (select 1 from integration.event_log l
                    where l.event_id = k.event_id and l.received_at < now() - p_older_than);
    get diagnostics v_count = row_count;
    insert into integration.operator_actions (action, actor, detail)
    values ('purge', p_actor, jsonb_build_object('older_than', p_older_than::text,
                                                 'deleted', v_count));
    return v_count;
end;
$$;

comment on table integration.delivery_attempts is
    'Every delivery attempt that did not deliver (failed, dead, deferred, unrouted: when, which worker, which destination, the HTTP status, the error, how long it took), and the deliveries recorded before delivered_batch. Read an event''s whole history with integration.attempts_of. Rows of purged events stay for the audit trail.';
comment on view integration.event_state is
    'Every accepted event and its status: the outbox''s while it has the event, else completed (delivered; attempts is then its last attempt''s number, its history is integration.attempts_of).';
comment on function integration.ack_outbox(uuid[], text) is
    'Completes the events p_worker delivered: their outbox rows go (event_log and the recorded attempts keep their record); returns how many it held. Rows whose lease was taken over by another worker are left to that worker.';
