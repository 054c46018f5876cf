-- IPAI integration bus: the durable outbox, the immutable audit log, the queue functions and their
-- access rules. This file is the one source of the schema; `ipai-bus migrate` and `supabase db push`
-- both apply it. Once landed it is never edited: later changes go in a new migration file.
--
-- Expects the roles anon, authenticated and service_role (Supabase has them; on a plain PostgreSQL
-- the library's migration runner creates them first).

create schema if not exists integration;
grant usage on schema integration to service_role, authenticated;

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

create table integration.outbox (
    id               uuid primary key default gen_random_uuid(),
    source           text not null default 'odoo',
    event_type       text not null,
    aggregate_type   text not null,
    aggregate_id     text not null,
    payload          jsonb not null,
    idempotency_key  text not null,
    -- sha256 of the signed message ("{timestamp}.{body}"): binds an accepted signature to one key.
    signature_digest text,
    occurred_at      timestamptz,
    status           text not null default 'pending',
    attempts         integer not null default 0,
    max_attempts     integer not null default 4,
    available_at     timestamptz not null default now(),
    locked_at        timestamptz,
    locked_by        text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    completed_at     timestamptz,
    constraint outbox_source_idempotency_key unique (source, idempotency_key),
    constraint outbox_status_known
        check (status in ('pending', 'processing', 'completed', 'failed', 'dead')),
    constraint outbox_source_shape check (source ~ '^[A-Za-z0-9_.-]{1,64}$'),
    constraint outbox_event_type_shape
        check (event_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' and length(event_type) <= 255),
    constraint outbox_aggregate_type_shape
        check (length(aggregate_type) between 1 and 255),
    constraint outbox_aggregate_id_shape check (length(aggregate_id) between 1 and 255),
    constraint outbox_payload_is_object check (jsonb_typeof(payload) = 'object'),
    constraint outbox_idempotency_key_shape check (idempotency_key ~ '^[ -~]{1,255}$'),
    constraint outbox_attempts_range check (attempts >= 0 and max_attempts between 1 and 100),
    constraint outbox_processing_has_lease
        check (status <> 'processing' or (locked_by is not null and lease_expires_at is not null))
);

comment on table integration.outbox is
    'Every accepted event and its delivery state: pending -> processing -> completed; '
    'failed = retry scheduled at available_at; dead = gave up (see last_error).';

-- The claim path: due rows by time, and leases that ran out. Partial indexes stay small because
-- completed rows, the vast majority, are in neither.
create index outbox_due_idx on integration.outbox (available_at)
    where status in ('pending', 'failed');
create index outbox_lease_idx on integration.outbox (lease_expires_at)
    where status = 'processing';
create index outbox_dead_idx on integration.outbox (updated_at) where status = 'dead';
create unique index outbox_signature_digest_key on integration.outbox (signature_digest)
    where signature_digest is not null;

create table integration.event_log (
    id               bigint generated always as identity primary key,
    event_id         uuid not null unique,
    source           text not null,
    event_type       text not null,
    aggregate_type   text not null,
    aggregate_id     text not null,
    payload          jsonb not null,
    idempotency_key  text not null,
    signature_digest text,
    occurred_at      timestamptz,
    received_at      timestamptz not null default now()
);

comment on table integration.event_log is
    'Immutable audit copy of every accepted event. Never updated, deleted or purged.';

create index event_log_received_at_idx on integration.event_log (received_at);
create index event_log_event_type_idx on integration.event_log (event_type, received_at);

create function integration.refuse_event_log_change() returns trigger
    language plpgsql
as $$
begin
    raise exception 'integration.event_log is append-only: % is not allowed', tg_op
        using errcode = 'insufficient_privilege',
              hint = 'The audit log keeps every accepted event; correct data with a new event.';
end;
$$;

create trigger event_log_append_only
    before update or delete on integration.event_log
    for each row execute function integration.refuse_event_log_change();
create trigger event_log_no_truncate
    before truncate on integration.event_log
    for each statement execute function integration.refuse_event_log_change();

-- ---------------------------------------------------------------------------------------------
-- Queue functions. Arguments are checked first, so a bad call raises a clear error (SQLSTATE
-- 22023, invalid_parameter_value) and writes nothing.
-- ---------------------------------------------------------------------------------------------

create function integration.require(condition boolean, message text) returns void
    language plpgsql
as $$
begin
    if condition is not true then
        raise exception '%', message using errcode = 'invalid_parameter_value';
    end if;
end;
$$;

create function integration.insert_outbox_event(
    p_event_type       text,
    p_aggregate_type   text,
    p_aggregate_id     text,
    p_payload          jsonb,
    p_idempotency_key  text,
    p_source           text default 'odoo',
    p_occurred_at      timestamptz default null,
    p_signature_digest text default null,
    p_max_attempts     integer default 4
) returns table (event_id uuid, duplicate boolean)
    language plpgsql
as $$
declare
    v_id uuid;
begin
    perform integration.require(p_event_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$'
                                    and length(p_event_type) <= 255,
        'insert_outbox_event: event_type must be lowercase dotted words, e.g. expense.submitted');
    perform integration.require(length(p_aggregate_type) between 1 and 255,
        'insert_outbox_event: aggregate_type must be 1-255 characters');
    perform integration.require(length(p_aggregate_id) between 1 and 255,
        'insert_outbox_event: aggregate_id must be 1-255 characters');
    perform integration.require(jsonb_typeof(p_payload) = 'object',
        'insert_outbox_event: payload must be a JSON object');
    perform integration.require(p_idempotency_key ~ '^[ -~]{1,255}$',
        'insert_outbox_event: idempotency_key must be 1-255 printable ASCII characters');
    perform integration.require(p_source ~ '^[A-Za-z0-9_.-]{1,64}$',
        'insert_outbox_event: source must be 1-64 characters of [A-Za-z0-9_.-]');
    perform integration.require(p_max_attempts between 1 and 100,
        'insert_outbox_event: max_attempts must be between 1 and 100');

    begin
        insert into integration.outbox as o
            (source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
             signature_digest, occurred_at, max_attempts)
        values (p_source, p_event_type, p_aggregate_type, p_aggregate_id, p_payload,
                p_idempotency_key, p_signature_digest, p_occurred_at, p_max_attempts)
        on conflict (source, idempotency_key) do nothing
        returning o.id into v_id;
    exception when unique_violation then
        -- Not the idempotency key (that is the arbiter above): the signature digest. The same
        -- signed message was already accepted under another key, so this request is a replay.
        raise exception 'replayed signature' using errcode = 'IB001',
            detail = 'a request with this signature was already accepted under another idempotency key';
    end;

    if v_id is not null then
        perform pg_notify('integration_outbox', v_id::text);
        return query select v_id, false;
        return;
    end if;

    return query
        select o.id, true from integration.outbox o
        where o.source = p_source and o.idempotency_key = p_idempotency_key;
end;
$$;

comment on function integration.insert_outbox_event is
    'Stores one event; idempotent on (source, idempotency_key). Returns the event id and whether '
    'it was a duplicate (then nothing is written). NOTIFYs integration_outbox on a new event. '
    'Raises IB001 when the signature digest was already accepted under another key.';

create function integration.insert_event_log(p_event_id uuid) returns bigint
    language plpgsql
as $$
declare
    v_log_id bigint;
begin
    perform integration.require(p_event_id is not null, 'insert_event_log: event_id is required');
    insert into integration.event_log
        (event_id, source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
         signature_digest, occurred_at)
    select o.id, o.source, o.event_type, o.aggregate_type, o.aggregate_id, o.payload,
           o.idempotency_key, o.signature_digest, o.occurred_at
    from integration.outbox o where o.id = p_event_id
    on conflict (event_id) do nothing
    returning id into v_log_id;

    if v_log_id is null then
        select l.id into v_log_id from integration.event_log l where l.event_id = p_event_id;
    end if;
    perform integration.require(v_log_id is not null,
        format('insert_event_log: no outbox event %s', p_event_id));
    return v_log_id;
end;
$$;

comment on function integration.insert_event_log is
    'Copies an outbox event into the append-only event_log (idempotent). Returns the log row id.';

create function integration.claim_outbox(
    p_worker        text,
    p_limit         integer default 25,
    p_lease_seconds integer default 60
) returns setof integration.outbox
    language plpgsql
as $$
begin
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'claim_outbox: worker must be a non-empty name of at most 200 characters');
    perform integration.require(p_limit between 1 and 10000,
        'claim_outbox: limit must be between 1 and 10000');
    perform integration.require(p_lease_seconds between 1 and 86400,
        'claim_outbox: lease_seconds must be between 1 and 86400');

    -- A lease that ran out on the last allowed attempt means the event keeps killing its worker:
    -- it goes to dead instead of being handed out again.
    update integration.outbox o
       set status = 'dead', locked_at = null, locked_by = null, lease_expires_at = null,
           last_error = coalesce(o.last_error || E'\n', '')
               || format('lease of worker %s expired on attempt %s of %s', o.locked_by,
                         o.attempts, o.max_attempts),
           updated_at = now()
     where o.id in (select e.id from integration.outbox e
                     where e.status = 'processing' and e.lease_expires_at <= now()
                       and e.attempts >= e.max_attempts
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
         order by d.available_at
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

comment on function integration.claim_outbox is
    'Hands up to p_limit due events (pending, failed whose retry time came, or processing whose '
    'lease expired) to p_worker with a lease; each claim counts one attempt. SKIP LOCKED: '
    'concurrent workers never get the same row.';

create function integration.ack_outbox(p_ids uuid[], p_worker text) returns integer
    language plpgsql
as $$
declare
    v_count integer;
begin
    perform integration.require(p_ids is not null, 'ack_outbox: ids are required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'ack_outbox: worker must be a non-empty name');
    update integration.outbox o
       set status = 'completed', completed_at = now(), updated_at = now(),
           locked_at = null, locked_by = null, lease_expires_at = null
     where o.id = any(p_ids) and o.status = 'processing' and o.locked_by = p_worker;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function integration.ack_outbox is
    'Marks the events p_worker delivered as completed; returns how many it held. Rows whose lease '
    'was taken over by another worker are left to that worker.';

create function integration.fail_outbox(
    p_id                  uuid,
    p_worker              text,
    p_error               text,
    p_retry_delay_seconds integer[] default array[30, 90, 300],
    p_retry_at            timestamptz default null,
    p_give_up             boolean default false
) returns text
    language plpgsql
as $$
declare
    v_status text;
begin
    perform integration.require(p_id is not null, 'fail_outbox: id is required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'fail_outbox: worker must be a non-empty name');
    perform integration.require(length(p_error) >= 1, 'fail_outbox: error text is required');
    perform integration.require(cardinality(p_retry_delay_seconds) >= 1
            and 0 <= all(p_retry_delay_seconds) and array_position(p_retry_delay_seconds, null) is null,
        'fail_outbox: retry_delay_seconds must be a non-empty array of non-negative seconds');

    update integration.outbox o
       set status = case when p_give_up or o.attempts >= o.max_attempts then 'dead' else 'failed' end,
           available_at = case
               when p_give_up or o.attempts >= o.max_attempts then o.available_at
               else coalesce(p_retry_at, now() + make_interval(secs => p_retry_delay_seconds[
                        least(greatest(o.attempts, 1), cardinality(p_retry_delay_seconds))]))
           end,
           last_error = left(p_error, 4000),
           locked_at = null, locked_by = null, lease_expires_at = null,
           updated_at = now()
     where o.id = p_id and o.status = 'processing' and o.locked_by = p_worker
    returning o.status into v_status;

    return v_status;  -- null when p_worker did not hold the event
end;
$$;

comment on function integration.fail_outbox is
    'Records a failed delivery. Schedules the next try after p_retry_delay_seconds[attempts] '
    '(default 30 s, 90 s, 5 min) or at p_retry_at (Retry-After); dead once attempts reach '
    'max_attempts or when p_give_up. Returns the new status, null if p_worker did not hold it.';

create function integration.release_outbox(p_ids uuid[], p_worker text) returns integer
    language plpgsql
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
           available_at = now(),
           locked_at = null, locked_by = null, lease_expires_at = null, updated_at = now()
     where o.id = any(p_ids) and o.status = 'processing' and o.locked_by = p_worker;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function integration.release_outbox is
    'Hands claimed but unstarted events back at once (a worker shutting down): due now, and the '
    'attempt their claim counted is given back.';

-- ---------------------------------------------------------------------------------------------
-- PostgREST wrappers: /rest/v1/rpc/<name>. SECURITY DEFINER with a fixed search_path; only
-- service_role may execute them.
-- ---------------------------------------------------------------------------------------------

create function public.insert_outbox_event(
    p_event_type text, p_aggregate_type text, p_aggregate_id text, p_payload jsonb,
    p_idempotency_key text, p_source text default 'odoo', p_occurred_at timestamptz default null,
    p_signature_digest text default null, p_max_attempts integer default 4
) returns table (event_id uuid, duplicate boolean)
    language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select * from integration.insert_outbox_event(
        p_event_type, p_aggregate_type, p_aggregate_id, p_payload, p_idempotency_key, p_source,
        p_occurred_at, p_signature_digest, p_max_attempts);
$$;

create function public.insert_event_log(p_event_id uuid) returns bigint
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select integration.insert_event_log(p_event_id); $$;

create function public.claim_outbox(
    p_worker text, p_limit integer default 25, p_lease_seconds integer default 60
) returns setof integration.outbox
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select * from integration.claim_outbox(p_worker, p_limit, p_lease_seconds); $$;

create function public.ack_outbox(p_ids uuid[], p_worker text) returns integer
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select integration.ack_outbox(p_ids, p_worker); $$;

create function public.fail_outbox(
    p_id uuid, p_worker text, p_error text,
    p_retry_delay_seconds integer[] default array[30, 90, 300],
    p_retry_at timestamptz default null, p_give_up boolean default false
) returns text
    language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select integration.fail_outbox(p_id, p_worker, p_error, p_retry_delay_seconds, p_retry_at,
                                   p_give_up);
$$;

create function public.release_outbox(p_ids uuid[], p_worker text) returns integer
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select integration.release_outbox(p_ids, p_worker); $$;

-- ---------------------------------------------------------------------------------------------
-- Access: service_role everything, authenticated read-only, anon nothing.
-- ---------------------------------------------------------------------------------------------

revoke all on all functions in schema integration from public;
grant execute on all functions in schema integration to service_role;
revoke all on function public.insert_outbox_event, public.insert_event_log, public.claim_outbox,
    public.ack_outbox, public.fail_outbox, public.release_outbox from public, anon, authenticated;
grant execute on function public.insert_outbox_event, public.insert_event_log,
    public.claim_outbox, public.ack_outbox, public.fail_outbox, public.release_outbox
    to service_role;

alter table integration.outbox enable row level security;
alter table integration.event_log enable row level security;

create policy outbox_service_role_all on integration.outbox
    for all to service_role using (true) with check (true);
create policy outbox_authenticated_read on integration.outbox
    for select to authenticated using (true);
create policy event_log_service_role_all on integration.event_log
    for all to service_role using (true) with check (true);
create policy event_log_authenticated_read on integration.event_log
    for select to authenticated using (true);

revoke all on integration.outbox, integration.event_log from public, anon;
grant select, insert, update, delete on integration.outbox to service_role;
grant select, insert on integration.event_log to service_role;
grant select on integration.outbox, integration.event_log to authenticated;
