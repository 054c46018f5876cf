-- IPAI integration bus, resilience: identical resends racing each other are duplicates (never
-- replays), routers keep the leases of deliveries in progress, and the receiver can run as a role
-- that may only call the two ingest wrappers.

-- ---------------------------------------------------------------------------------------------
-- insert_outbox_event: when two byte-identical requests race, the loser may meet the winner's
-- row on the signature index before the idempotency key's (both are unique). A conflict on the
-- signature whose (source, key) row exists is that race: the request is a duplicate. Only a
-- signature accepted under another key is a replay.
-- ---------------------------------------------------------------------------------------------

create or replace function integration.insert_outbox_event(
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
    set plan_cache_mode = force_custom_plan
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
        -- The signature digest's index. Each statement of this function sees what committed
        -- before it started, so the racing winner's row is visible here.
        select o.id into v_id from integration.outbox o
         where o.source = p_source and o.idempotency_key = p_idempotency_key
           and o.signature_digest is not distinct from p_signature_digest;
        if v_id is null then
            raise exception 'replayed signature' using errcode = 'IB001',
                detail = 'a request with this signature was already accepted under another idempotency key';
        end if;
        return query select v_id, true;
        return;
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

-- ---------------------------------------------------------------------------------------------
-- A record is (source, aggregate_type, aggregate_id): several Odoo databases share one bus, and
-- record 7 of one never waits behind record 7 of another. claim_outbox as before otherwise.
-- ---------------------------------------------------------------------------------------------

drop index integration.outbox_aggregate_active_idx;
create index outbox_aggregate_active_idx
    on integration.outbox (source, aggregate_type, aggregate_id, seq)
    where status in ('pending', 'processing', 'failed');

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
                where earlier.source = d.source
                  and earlier.aggregate_type = d.aggregate_type
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

-- ---------------------------------------------------------------------------------------------
-- extend_leases: a router renews the leases of the events it is still delivering, so no lease
-- runs out under a delivery in progress (a slow destination, a long rate-limit wait).
-- ---------------------------------------------------------------------------------------------

create function integration.extend_leases(
    p_ids uuid[], p_worker text, p_lease_seconds integer default 60
) returns integer
    language plpgsql
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
    update integration.outbox o
       set lease_expires_at = now() + make_interval(secs => p_lease_seconds), updated_at = now()
     where o.id = any(p_ids) and o.status = 'processing' and o.locked_by = p_worker;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function integration.extend_leases is
    'Renews the leases that p_worker still holds on p_ids; returns how many it renewed.';

create function public.extend_leases(
    p_ids uuid[], p_worker text, p_lease_seconds integer default 60
) returns integer
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select integration.extend_leases(p_ids, p_worker, p_lease_seconds); $$;

revoke all on function integration.extend_leases(uuid[], text, integer) from public;
grant execute on function integration.extend_leases(uuid[], text, integer) to service_role;
revoke all on function public.extend_leases(uuid[], text, integer) from public, anon,
    authenticated;
grant execute on function public.extend_leases(uuid[], text, integer) to service_role;

-- ---------------------------------------------------------------------------------------------
-- outbox_depth: rows per status, for the receiver's /metrics without a right to read the outbox.
-- ---------------------------------------------------------------------------------------------

create function public.outbox_depth() returns table (status text, events bigint)
    language sql stable security definer set search_path = pg_catalog, pg_temp
as $$ select o.status, count(*) from integration.outbox o group by o.status; $$;

revoke all on function public.outbox_depth() from public, anon;
grant execute on function public.outbox_depth() to service_role, authenticated;

-- ---------------------------------------------------------------------------------------------
-- ipai_bus_ingest: the least a receiver needs. Members may call the two ingest wrappers and
-- outbox_depth (which run as their owner) and nothing else: no table, no other function. Give the receiver's login
-- role this membership instead of a superuser's or service_role's.
-- ---------------------------------------------------------------------------------------------

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'ipai_bus_ingest') then
        create role ipai_bus_ingest nologin;
    end if;
end;
$$;

grant execute on function
    public.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer),
    public.insert_event_log(uuid),
    public.outbox_depth()
    to ipai_bus_ingest;
