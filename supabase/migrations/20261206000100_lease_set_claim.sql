-- A claim writes one lease per batch instead of rewriting every event it hands out.
--
-- Until now a claim updated each claimed outbox row (status, attempts, lease columns): a new row
-- version and three index entries per event, the largest step of the router's database time
-- (22-24 µs per event against 8-10 µs for one lease row per batch, bench/storage_designs.py).
-- Now an event is in flight while a lease names it (integration.outbox_lease: one row per claim,
-- the worker, the expiry and the ids it hands out) and it has not been settled under that lease.
-- The outbox row itself is written only when something happens to the event: delivered (the row
-- goes), failed or handed back (settled_lease records under which lease), lease expired.
--
-- What the rows store changes in two ways; readers see the old shape in integration.outbox_state:
--   * status is pending, failed or dead: 'processing' is what outbox_state says of an event
--     in flight, with the lease's worker and expiry as locked_by and lease_expires_at;
--   * attempts counts the finished attempts; outbox_state (and the claim) count the one in
--     flight too, so every reader sees the same numbers as before.
-- Claims are serialised by a transaction advisory lock: one claim writes its lease and commits
-- before the next looks at what is held, so two workers never get the same event. The lock is
-- held for the claim's statement only (the router claims in autocommit).

create table integration.outbox_lease (
    id bigint generated always as identity primary key,
    worker text not null,
    ids uuid[] not null,
    open integer not null,
    claimed_at timestamptz not null default now(),
    expires_at timestamptz not null
) with (autovacuum_vacuum_threshold = 100, autovacuum_vacuum_scale_factor = 0);
comment on table integration.outbox_lease is
    'One row per claim: the events it handed to worker until expires_at. An event is in flight while a lease names it and it was not settled under that lease (outbox.settled_lease); open counts the ones still unsettled, and the row goes when none is left.';
alter table integration.outbox_lease enable row level security;
create policy outbox_lease_router_read on integration.outbox_lease
    for select to ipai_bus_router using (true);
create policy outbox_lease_operator_read on integration.outbox_lease
    for select to ipai_bus_operator using (true);
grant select on integration.outbox_lease to ipai_bus_router, ipai_bus_operator;

alter table integration.outbox add column settled_lease bigint;
comment on column integration.outbox.settled_lease is
    'The lease under which the event was last failed or handed back: a lease naming it holds it only when that lease is newer.';

-- The events in flight today move to leases of the same worker and expiry; their attempt in
-- flight is no longer stored in the row.
insert into integration.outbox_lease (worker, ids, open, claimed_at, expires_at)
select o.locked_by, array_agg(o.id order by o.seq), count(*), min(coalesce(o.locked_at, now())),
       o.lease_expires_at
  from integration.outbox o
 where o.status = 'processing'
 group by o.locked_by, o.lease_expires_at;
update integration.outbox
   set status = case when attempts > 1 then 'failed' else 'pending' end,
       attempts = greatest(attempts - 1, 0)
 where status = 'processing';

drop function public.claim_outbox(text, integer, integer);
drop function integration.claim_outbox(text, integer, integer);
alter table integration.outbox drop constraint outbox_processing_has_lease;
alter table integration.outbox drop constraint outbox_status_known;
alter table integration.outbox add constraint outbox_status_known
    check (status in ('pending', 'failed', 'dead'));
alter table integration.outbox drop column locked_at, drop column locked_by,
    drop column lease_expires_at;  -- outbox_lease_idx goes with them
comment on table integration.outbox is
    'The events that still need something: pending (in flight while a lease names it, see integration.outbox_state) -> delivered: the row goes (see integration.event_state); failed = retry scheduled at available_at; dead = gave up (see last_error).';

-- ---------------------------------------------------------------------------------------------
-- What readers see.
-- ---------------------------------------------------------------------------------------------

-- Each view is driven from the leases (a few batches) to the outbox by primary key, whatever
-- the planner believes of the outbox's size: a join the other way round, nested, would compare
-- every outbox row with every leased id.
-- A function, for the planner's sake: its ROWS estimate stands where a lease table just created
-- or emptied would be guessed at hundreds of rows of ten ids each, and a query asking "in
-- flight?" of a page of 50 events would then scan the whole event log instead.
create function integration.in_flight_rows()
returns table (id uuid, lease_id bigint, worker text, claimed_at timestamptz, expires_at timestamptz)
language plpgsql stable rows 1000
set search_path = pg_catalog, pg_temp
as $$
begin
    return query
    select h.id, l.id, l.worker, l.claimed_at, l.expires_at
      from integration.outbox_lease l
     cross join lateral unnest(l.ids) as h(id)
     cross join lateral (select o.settled_lease from integration.outbox o
                          where o.id = h.id offset 0) o
     where coalesce(o.settled_lease, 0) < l.id;
end;
$$;
revoke all on function integration.in_flight_rows() from public;
grant execute on function integration.in_flight_rows() to ipai_bus_router, ipai_bus_operator;

create view integration.in_flight with (security_invoker = true) as
select f.id, f.lease_id, f.worker, f.claimed_at, f.expires_at
  from integration.in_flight_rows() f;
comment on view integration.in_flight is
    'The events a worker holds: named by its lease and not settled under it (expires_at in the past: the worker died; the next claim takes them back).';

create view integration.outbox_state with (security_invoker = true) as
select o.id, o.source, o.event_type, o.aggregate_type, o.aggregate_id, o.payload,
       o.idempotency_key, o.signature_digest, o.occurred_at, 'processing'::text as status,
       o.attempts + 1 as attempts, o.max_attempts, o.available_at, l.claimed_at as locked_at,
       l.worker as locked_by, l.expires_at as lease_expires_at, o.last_error, o.created_at,
       o.updated_at, o.seq, o.traceparent, o.tracestate
  from integration.outbox_lease l
 cross join lateral unnest(l.ids) as h(id)
 cross join lateral (select * from integration.outbox o where o.id = h.id offset 0) o
 where coalesce(o.settled_lease, 0) < l.id
union all
select o.id, o.source, o.event_type, o.aggregate_type, o.aggregate_id, o.payload,
       o.idempotency_key, o.signature_digest, o.occurred_at, o.status, o.attempts,
       o.max_attempts, o.available_at, null::timestamptz, null::text, null::timestamptz,
       o.last_error, o.created_at, o.updated_at, o.seq, o.traceparent, o.tracestate
  from integration.outbox o
 where o.id not in (select f.id from integration.in_flight f);  -- a hashed subplan
comment on view integration.outbox_state is
    'The outbox as its readers know it: status processing (with locked_by, lease_expires_at) for an event in flight, attempts counting the attempt in flight.';
-- Waiting: stored pending or failed and not in flight (due or not; held back by order or not).
create view integration.outbox_waiting with (security_invoker = true) as
select o.* from integration.outbox o
 where o.status in ('pending', 'failed')
   and o.id not in (select f.id from integration.in_flight f);  -- a hashed subplan
comment on view integration.outbox_waiting is
    'The events waiting for a claim: stored pending or failed, and no lease holds them.';
grant select on integration.in_flight, integration.outbox_state, integration.outbox_waiting
    to ipai_bus_router, ipai_bus_operator;

-- Whether an event is in flight is one hashed look-up of the (few) leased ids, built once per
-- query: the log can be a million rows.
create or replace view integration.event_state with (security_invoker = true) as
select l.event_id as id, l.id as log_id, l.source, l.event_type, l.aggregate_type,
       l.aggregate_id, l.received_at,
       case when o.id is null then 'completed'
            when o.id in (select f.id from integration.in_flight f) then 'processing'
            else o.status end as status,
       case when o.id is null then (select max(a.attempt) from integration.delivery_attempts a
                                     where a.event_id = l.event_id)
            when o.id in (select f.id from integration.in_flight f) then o.attempts + 1
            else o.attempts end as attempts,
       o.last_error
  from integration.event_log l
  left join integration.outbox o on o.id = l.event_id;

create or replace function public.outbox_depth()
returns table (status text, events bigint)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$ select o.status, count(*) from integration.outbox_state o group by o.status; $$;

-- ---------------------------------------------------------------------------------------------
-- Settling: each settled event is counted off its lease; a lease with nothing left goes.
-- ---------------------------------------------------------------------------------------------

create function integration.count_settled(p_leases bigint[])
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if coalesce(cardinality(p_leases), 0) = 0 then
        return;
    end if;
    update integration.outbox_lease l
       set open = l.open - s.settled
      from (select lease, count(*) as settled from unnest(p_leases) as t(lease) group by lease) s
     where l.id = s.lease;
    delete from integration.outbox_lease l where l.id = any(p_leases) and l.open <= 0;
end;
$$;
comment on function integration.count_settled(bigint[]) is
    'Counts settled events off their leases (one entry per event) and drops the leases with none left.';
revoke all on function integration.count_settled(bigint[]) from public;

create function integration.named_by_leases_of(p_worker text, p_ids uuid[])
returns table (lease_id bigint, id uuid)
language plpgsql
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan  -- p_ids a constant: looked up in a hash
as $$
begin
    return query
    with held as (
        select l.id, l.ids from integration.outbox_lease l
         where l.worker = p_worker
           for no key update  -- a claim taking the lease back waits, and then finds it settled
    )
    select l.id, h.id from held l cross join lateral unnest(l.ids) as h(id)
     where h.id = any(p_ids);
end;
$$;
comment on function integration.named_by_leases_of(text, uuid[]) is
    'Which of p_ids the leases of p_worker name, and which lease (locked until commit, so settling and taking back take turns). A lease holds an event it names unless the event was settled under it or a later one (outbox.settled_lease).';
revoke all on function integration.named_by_leases_of(text, uuid[]) from public;

create or replace function integration.ack_outbox(p_ids uuid[], p_worker text)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
as $$
declare
    v_leases bigint[];
begin
    perform integration.require(p_ids is not null, 'ack_outbox: ids are required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'ack_outbox: worker must be a non-empty name');
    with gone as (
        delete from integration.outbox o
         using integration.named_by_leases_of(p_worker, p_ids) n
         where o.id = n.id and coalesce(o.settled_lease, 0) < n.lease_id
        returning n.lease_id
    )
    select array_agg(lease_id) into v_leases from gone;
    perform integration.count_settled(v_leases);
    return coalesce(cardinality(v_leases), 0);
end;
$$;

create or replace function integration.fail_outbox(
    p_id uuid, p_worker text, p_error text,
    p_retry_delay_seconds integer[] default array[30, 90, 300],
    p_retry_at timestamptz default null, p_give_up boolean default false)
returns text
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
as $$
declare
    v_lease bigint;
    v_status text;
begin
    perform integration.require(p_id is not null, 'fail_outbox: id is required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'fail_outbox: worker must be a non-empty name');
    perform integration.require(length(p_error) >= 1, 'fail_outbox: error text is required');
    perform integration.require(cardinality(p_retry_delay_seconds) >= 1
            and 0 <= all(p_retry_delay_seconds) and array_position(p_retry_delay_seconds, null) is null,
        'fail_outbox: retry_delay_seconds must be a non-empty array of non-negative seconds');

    select n.lease_id into v_lease from integration.named_by_leases_of(p_worker, array[p_id]) n
     order by n.lease_id desc limit 1;
    if v_lease is null then
        return null;  -- p_worker does not hold the event
    end if;
    update integration.outbox o
       set status = case when p_give_up or o.attempts + 1 >= o.max_attempts then 'dead' else 'failed' end,
           attempts = o.attempts + 1,
           available_at = case
               when p_give_up or o.attempts + 1 >= o.max_attempts then o.available_at
               else coalesce(p_retry_at, now() + make_interval(secs => p_retry_delay_seconds[
                        least(o.attempts + 1, cardinality(p_retry_delay_seconds))]))
           end,
           last_error = left(p_error, 4000),
           settled_lease = v_lease,
           updated_at = now()
     where o.id = p_id and coalesce(o.settled_lease, 0) < v_lease
    returning o.status into v_status;
    if v_status is not null then
        perform integration.count_settled(array[v_lease]);
    end if;
    return v_status;  -- null when p_worker did not hold the event
end;
$$;

create or replace function integration.release_outbox(
    p_ids uuid[], p_worker text, p_available_at timestamptz default null)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
as $$
declare
    v_leases bigint[];
begin
    perform integration.require(p_ids is not null, 'release_outbox: ids are required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'release_outbox: worker must be a non-empty name');
    with handed_back as (
        update integration.outbox o
           set available_at = coalesce(p_available_at, now()), settled_lease = n.lease_id,
               updated_at = now()
          from integration.named_by_leases_of(p_worker, p_ids) n
         where o.id = n.id and coalesce(o.settled_lease, 0) < n.lease_id
        returning n.lease_id
    )
    select array_agg(lease_id) into v_leases from handed_back;
    perform integration.count_settled(v_leases);
    return coalesce(cardinality(v_leases), 0);
end;
$$;
comment on function integration.release_outbox(uuid[], text, timestamptz) is
    'Hands events p_worker holds back unstarted, due at p_available_at (default now); the attempt does not count. Returns how many it held.';

create or replace function integration.extend_leases(
    p_ids uuid[], p_worker text, p_lease_seconds integer default 60)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
as $$
declare
    v_count integer;
begin
    perform integration.require(p_ids is not null, 'extend_leases: ids are required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'extend_leases: worker must be a non-empty name');
    perform integration.require(p_lease_seconds between 1 and 86400,
        'extend_leases: lease_seconds must be between 1 and 86400');
    with held as (
        select f.lease_id from integration.in_flight f
         where f.worker = p_worker and f.id = any(p_ids)
    ), renewed as (
        update integration.outbox_lease l
           set expires_at = now() + make_interval(secs => p_lease_seconds)
         where l.id in (select lease_id from held)
    )
    select count(*) into v_count from held;
    return v_count;
end;
$$;
comment on function integration.extend_leases(uuid[], text, integer) is
    'Renews the leases that p_worker still holds on p_ids (the whole claim each names); returns how many of p_ids it holds.';

-- ---------------------------------------------------------------------------------------------
-- Claiming.
-- ---------------------------------------------------------------------------------------------

create function integration.take_back_expired_leases()
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_lease record;
    v_count integer := 0;
    v_taken integer;
begin
    for v_lease in
        delete from integration.outbox_lease l
         where l.id in (select e.id from integration.outbox_lease e where e.expires_at <= now()
                           for update skip locked)  -- one being settled now: the next claim
        returning l.id, l.worker, l.ids
    loop
        -- The attempt in flight counts: dead once it was the last, else due again at once.
        update integration.outbox o
           set attempts = o.attempts + 1,
               status = case when o.attempts + 1 >= o.max_attempts then 'dead' else 'failed' end,
               last_error = case when o.attempts + 1 >= o.max_attempts
                   then coalesce(o.last_error || E'\n', '')
                        || format('lease of worker %s expired on attempt %s of %s',
                                  v_lease.worker, o.attempts + 1, o.max_attempts)
                   else o.last_error end,
               updated_at = now()
         where o.id = any(v_lease.ids) and coalesce(o.settled_lease, 0) < v_lease.id;
        get diagnostics v_taken = row_count;
        v_count := v_count + v_taken;
    end loop;
    return v_count;
end;
$$;
comment on function integration.take_back_expired_leases() is
    'Ends the leases that ran out (their worker died or stalled): each event they held counts the attempt, goes dead if it was the last, else is due again.';
revoke all on function integration.take_back_expired_leases() from public;

create function integration.claim_outbox(
    p_worker text, p_limit integer default 25, p_lease_seconds integer default 60)
returns setof integration.outbox_state
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
set enable_bitmapscan = off
as $$
begin
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'claim_outbox: worker must be a non-empty name of at most 200 characters');
    perform integration.require(p_limit between 1 and 10000,
        'claim_outbox: limit must be between 1 and 10000');
    perform integration.require(p_lease_seconds between 1 and 86400,
        'claim_outbox: lease_seconds must be between 1 and 86400');
    perform integration.require(current_setting('transaction_isolation') = 'read committed',
        'claim_outbox: claim at READ COMMITTED (each step must see the leases committed before it)');
    -- One claim at a time, till commit: the next one sees this one's lease.
    perform pg_advisory_xact_lock(7461392051);
    perform integration.take_back_expired_leases();

    return query
    with held as materialized (
        select h.id from integration.outbox_lease l cross join lateral unnest(l.ids) as h(id)
    ), picked as materialized (
        select d.id, d.source, d.event_type, d.aggregate_type, d.aggregate_id, d.payload,
               d.idempotency_key, d.signature_digest, d.occurred_at, d.attempts,
               d.max_attempts, d.available_at, d.last_error, d.created_at, d.updated_at, d.seq,
               d.traceparent, d.tracestate
          from integration.outbox d
         where d.status in ('pending', 'failed') and d.available_at <= now()
           -- Not integration.in_flight: that looks every leased id up in the outbox, and a
           -- claim, on the hot path, needs the look-up only for the few settled ones.
           and (d.id not in (select id from held)
                or (d.settled_lease is not null
                    and not exists (select 1 from integration.outbox_lease l
                                     where l.id > d.settled_lease and d.id = any(l.ids))))
           and not exists (
               select 1 from integration.outbox earlier
                where earlier.source = d.source
                  and earlier.aggregate_type = d.aggregate_type
                  and earlier.aggregate_id = d.aggregate_id
                  and earlier.seq < d.seq
                  and earlier.status in ('pending', 'processing', 'failed')  -- the index's predicate
               offset 0)
         order by d.available_at, d.seq
         limit p_limit
    ), leased as (
        insert into integration.outbox_lease (worker, ids, open, expires_at)
        select p_worker, array_agg(p.id order by p.available_at, p.seq), count(*),
               now() + make_interval(secs => p_lease_seconds)
          from picked p
        having count(*) > 0
        returning worker, claimed_at, expires_at
    )
    select p.id, p.source, p.event_type, p.aggregate_type, p.aggregate_id, p.payload,
           p.idempotency_key, p.signature_digest, p.occurred_at, 'processing'::text,
           p.attempts + 1, p.max_attempts, p.available_at, l.claimed_at, l.worker,
           l.expires_at, p.last_error, p.created_at, p.updated_at, p.seq, p.traceparent,
           p.tracestate
      from picked p cross join leased l
     order by p.available_at, p.seq;
end;
$$;
comment on function integration.claim_outbox(text, integer, integer) is
    'Hands up to p_limit due events (pending, failed whose retry time came, or held by a lease that ran out) to p_worker under one lease, in order, one per record at a time; rows as integration.outbox_state shows them (attempts counts this one). Claims take turns (an advisory lock), so no two workers get the same event.';
revoke all on function integration.claim_outbox(text, integer, integer) from public;
grant execute on function integration.claim_outbox(text, integer, integer) to ipai_bus_router;

create function public.claim_outbox(
    p_worker text, p_limit integer default 25, p_lease_seconds integer default 60)
returns setof integration.outbox_state
language sql security definer
set search_path = pg_catalog, pg_temp
as $$ select * from integration.claim_outbox(p_worker, p_limit, p_lease_seconds); $$;
-- A Supabase project grants new functions in public to its API roles by default: not this one.
revoke all on function public.claim_outbox(text, integer, integer) from public, anon, authenticated;
grant execute on function public.claim_outbox(text, integer, integer)
    to service_role, ipai_bus_poller;

-- An operator's retry leaves an event in flight alone, as it always did a processing one.
create or replace function integration.retry_events(p_ids uuid[], p_actor text, p_reason text default null)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
as $$
declare
    v_ids uuid[];
begin
    perform integration.require(p_ids is not null, 'retry_events: ids are required');
    perform integration.require(length(btrim(p_actor)) between 1 and 200,
        'retry_events: actor must name who retries');
    with retried as (
        update integration.outbox o
           set status = 'pending', attempts = 0, available_at = now(), updated_at = now()
         where o.id = any(p_ids) and o.status in ('failed', 'dead')
           and not exists (select 1 from integration.in_flight f where f.id = o.id)
        returning o.id
    )
    select coalesce(array_agg(id), '{}') into v_ids from retried;
    if cardinality(v_ids) > 0 then
        insert into integration.operator_actions (action, actor, reason, event_ids)
        values ('retry', p_actor, p_reason, v_ids);
        perform pg_notify('integration_outbox', 'retry');
    end if;
    return cardinality(v_ids);
end;
$$;
