-- IPAI integration bus, router: per-aggregate ordering on the claim path, a record of every
-- delivery attempt, destination circuit-breaker state, and deferral without spending an attempt.

-- ---------------------------------------------------------------------------------------------
-- Acceptance order. created_at can tie; seq cannot.
-- ---------------------------------------------------------------------------------------------

alter table integration.outbox add column seq bigint generated always as identity;

-- The due index in claim order, so a claim reads it in order and stops after its batch.
drop index integration.outbox_due_idx;
create index outbox_due_idx on integration.outbox (available_at, seq)
    where status in ('pending', 'failed');

-- A queue table churns: every event is updated three times and then sits completed. Vacuum it
-- often, so index entries of rows that left the queue are cleaned up in seconds, not hours.
alter table integration.outbox set (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000);

-- The events that still block later ones of their aggregate: not yet completed or dead.
create index outbox_aggregate_active_idx
    on integration.outbox (aggregate_type, aggregate_id, seq)
    where status in ('pending', 'processing', 'failed');

-- ---------------------------------------------------------------------------------------------
-- Delivery attempts: one row per (event, destination) try, so an operator sees why it failed.
-- ---------------------------------------------------------------------------------------------

create table integration.delivery_attempts (
    id           bigint generated always as identity primary key,
    event_id     uuid not null,
    attempt      integer not null,
    worker       text not null,
    destination  text not null,
    outcome      text not null,
    http_status  integer,
    error        text,
    duration_ms  real not null default 0,
    attempted_at timestamptz not null default now(),
    constraint delivery_attempts_outcome_known
        check (outcome in ('delivered', 'failed', 'dead', 'deferred', 'unrouted'))
);

comment on table integration.delivery_attempts is
    'Every delivery attempt: when, which worker, which destination, the outcome, the HTTP status, '
    'the error and how long it took. Rows of purged events stay for the audit trail.';

create index delivery_attempts_event_idx on integration.delivery_attempts (event_id, destination);
create index delivery_attempts_time_idx on integration.delivery_attempts (attempted_at);

-- ---------------------------------------------------------------------------------------------
-- Destination health, written by routers when a circuit breaker opens or closes.
-- ---------------------------------------------------------------------------------------------

create table integration.destination_state (
    destination  text primary key,
    state        text not null default 'closed',
    failures     integer not null default 0,
    open_until   timestamptz,
    last_error   text,
    updated_at   timestamptz not null default now(),
    constraint destination_state_known check (state in ('closed', 'open'))
);

comment on table integration.destination_state is
    'Circuit breakers: an open destination is paused until open_until; its events wait without '
    'spending attempts.';

-- ---------------------------------------------------------------------------------------------
-- claim_outbox, now in acceptance order per aggregate: an event waits while an earlier event of
-- its aggregate is pending, processing or scheduled for retry. Dead and completed ones do not
-- block. Same signature as before, so callers do not change.
-- ---------------------------------------------------------------------------------------------

-- Planned afresh on every call (force_custom_plan; every statement takes a parameter): a queue
-- table swings from empty to large within seconds, and a plan cached while it was empty (nested
-- sequential scans) made each later claim read the table once per row. Bitmap scans are off: they cannot stop early and never mark the index entries of rows
-- that left the queue as dead, so between two vacuums every claim would re-read all of them.
create or replace function integration.claim_outbox(
    p_worker        text,
    p_limit         integer default 25,
    p_lease_seconds integer default 60
) returns setof integration.outbox
    language plpgsql
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

    update integration.outbox o
       set status = 'dead', locked_at = null, locked_by = null, lease_expires_at = null,
           last_error = coalesce(o.last_error || E'\n', '')
               || format('lease of worker %s expired on attempt %s of %s', o.locked_by,
                         o.attempts, o.max_attempts),
           updated_at = now()
     where o.id in (select e.id from integration.outbox e
                     where e.status = 'processing' and e.lease_expires_at <= now()
                       and e.attempts >= e.max_attempts
                     order by e.lease_expires_at
                     limit p_limit  -- also makes the statement parameterised: planned per call
                     for update skip locked);

    return query
    with expired as (
        select e.id, e.lease_expires_at as due from integration.outbox e
         where e.status = 'processing' and e.lease_expires_at <= now()
         order by e.lease_expires_at
         limit p_limit
         for update skip locked
    ), due as (
        select d.id, d.available_at as due from integration.outbox d
         where d.status in ('pending', 'failed') and d.available_at <= now()
           and not exists (
               select 1 from integration.outbox earlier
                where earlier.aggregate_type = d.aggregate_type
                  and earlier.aggregate_id = d.aggregate_id
                  and earlier.seq < d.seq
                  and earlier.status in ('pending', 'processing', 'failed'))
         order by d.available_at, d.seq
         limit p_limit
         for update skip locked
    ), picked as (
        select c.id from (select * from expired union all select * from due) c
         order by c.due
         limit p_limit
    )
    update integration.outbox o
       set status = 'processing',
           attempts = o.attempts + 1,
           locked_at = now(),
           locked_by = p_worker,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds),
           updated_at = now()
      from picked
     where o.id = picked.id
    returning o.*;
end;
$$;

-- The same for the functions of the first migration: their plans must follow the table's size.
alter function integration.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz,
                                               text, integer)
    set plan_cache_mode = force_custom_plan;
alter function integration.insert_event_log(uuid) set plan_cache_mode = force_custom_plan;
alter function integration.ack_outbox(uuid[], text) set plan_cache_mode = force_custom_plan;
alter function integration.fail_outbox(uuid, text, text, integer[], timestamptz, boolean)
    set plan_cache_mode = force_custom_plan;

-- ---------------------------------------------------------------------------------------------
-- release_outbox gains the time the events come due again (a paused destination's reopening);
-- the attempt the claim counted is still given back.
-- ---------------------------------------------------------------------------------------------

drop function public.release_outbox(uuid[], text);
drop function integration.release_outbox(uuid[], text);

create function integration.release_outbox(
    p_ids uuid[], p_worker text, p_available_at timestamptz default null
) returns integer
    language plpgsql
    set plan_cache_mode = force_custom_plan
as $$
declare
    v_count integer;
begin
    perform integration.require(p_ids is not null, 'release_outbox: ids are required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'release_outbox: worker must be a non-empty name');
    update integration.outbox o
       set status = case when o.attempts > 1 then 'failed' else 'pending' end,
           attempts = greatest(o.attempts - 1, 0),
           available_at = coalesce(p_available_at, now()),
           locked_at = null, locked_by = null, lease_expires_at = null, updated_at = now()
     where o.id = any(p_ids) and o.status = 'processing' and o.locked_by = p_worker;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

create function public.release_outbox(
    p_ids uuid[], p_worker text, p_available_at timestamptz default null
) returns integer
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select integration.release_outbox(p_ids, p_worker, p_available_at); $$;

-- ---------------------------------------------------------------------------------------------
-- record_delivery_attempts: many attempts in one call (the router writes a batch at a time).
-- ---------------------------------------------------------------------------------------------

create function integration.record_delivery_attempts(
    p_worker       text,
    p_event_ids    uuid[],
    p_attempts     integer[],
    p_destinations text[],
    p_outcomes     text[],
    p_http_status  integer[],
    p_errors       text[],
    p_durations_ms real[]
) returns integer
    language plpgsql
as $$
declare
    v_count integer;
begin
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'record_delivery_attempts: worker must be a non-empty name');
    perform integration.require(
        cardinality(p_event_ids) = cardinality(p_attempts)
        and cardinality(p_event_ids) = cardinality(p_destinations)
        and cardinality(p_event_ids) = cardinality(p_outcomes)
        and cardinality(p_event_ids) = cardinality(p_http_status)
        and cardinality(p_event_ids) = cardinality(p_errors)
        and cardinality(p_event_ids) = cardinality(p_durations_ms),
        'record_delivery_attempts: every array must have one entry per attempt');
    perform integration.require(
        array_position(p_outcomes, null) is null and
        p_outcomes <@ array['delivered', 'failed', 'dead', 'deferred', 'unrouted'],
        'record_delivery_attempts: outcome must be delivered, failed, dead, deferred or unrouted');
    insert into integration.delivery_attempts
        (event_id, attempt, worker, destination, outcome, http_status, error, duration_ms)
    select e, a, p_worker, d, o, h, left(err, 4000), coalesce(ms, 0)
      from unnest(p_event_ids, p_attempts, p_destinations, p_outcomes, p_http_status, p_errors,
                  p_durations_ms) as t(e, a, d, o, h, err, ms);
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Access, as for the first migration's objects.
-- ---------------------------------------------------------------------------------------------

revoke all on function integration.release_outbox(uuid[], text, timestamptz),
    integration.record_delivery_attempts(text, uuid[], integer[], text[], text[], integer[],
                                          text[], real[])
    from public;
grant execute on function integration.release_outbox(uuid[], text, timestamptz),
    integration.record_delivery_attempts(text, uuid[], integer[], text[], text[], integer[],
                                          text[], real[])
    to service_role;
revoke all on function public.release_outbox(uuid[], text, timestamptz) from public, anon,
    authenticated;
grant execute on function public.release_outbox(uuid[], text, timestamptz) to service_role;

alter table integration.delivery_attempts enable row level security;
alter table integration.destination_state enable row level security;
create policy delivery_attempts_service_role_all on integration.delivery_attempts
    for all to service_role using (true) with check (true);
create policy delivery_attempts_authenticated_read on integration.delivery_attempts
    for select to authenticated using (true);
create policy destination_state_service_role_all on integration.destination_state
    for all to service_role using (true) with check (true);
create policy destination_state_authenticated_read on integration.destination_state
    for select to authenticated using (true);
revoke all on integration.delivery_attempts, integration.destination_state from public, anon;
grant select, insert on integration.delivery_attempts to service_role;
grant select, insert, update, delete on integration.destination_state to service_role;
grant select on integration.delivery_attempts, integration.destination_state to authenticated;
