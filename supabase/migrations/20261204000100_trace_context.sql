-- W3C Trace Context kept with each event: the sender's traceparent (a request header for a
-- single event, a field of each element of a batch) and tracestate, so the router can continue
-- the sender's trace and pass it on to destinations. Stored only when valid; anything else is
-- dropped (a new trace starts), never refused: tracing must not cost an event.
alter table integration.outbox add column traceparent text, add column tracestate text;
comment on column integration.outbox.traceparent is
    'W3C traceparent the event came with (version 00), continued by the router; null when none came.';
comment on column integration.outbox.tracestate is
    'W3C tracestate that came with traceparent (at most 512 characters).';

create function integration.trace_context(p_traceparent text, p_tracestate text)
returns table (traceparent text, tracestate text)
language sql immutable parallel safe  -- no SET: inlined into the inserts that call it
as $$
    select case when valid then p_traceparent end,
           case when valid and length(p_tracestate) <= 512 and p_tracestate ~ '^[ -~]+$'
                then p_tracestate end
      from (select coalesce(p_traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                            and substr(p_traceparent, 4, 32) <> repeat('0', 32)
                            and substr(p_traceparent, 37, 16) <> repeat('0', 16), false) as valid) v;
$$;
comment on function integration.trace_context(text, text) is
    'The trace context to keep: a valid version-00 traceparent and a printable tracestate of at most 512 characters, else nulls.';
revoke all on function integration.trace_context(text, text) from public, anon, authenticated, service_role;

-- A new parameter pair, so a new signature: the old function and its public wrapper go.
drop function public.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer);
drop function integration.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer);

create function integration.insert_outbox_event(
    p_event_type text, p_aggregate_type text, p_aggregate_id text, p_payload jsonb,
    p_idempotency_key text, p_source text default 'odoo', p_occurred_at timestamptz default null,
    p_signature_digest text default null, p_max_attempts integer default 4,
    p_traceparent text default null, p_tracestate text default null
) returns table (event_id uuid, duplicate boolean)
    language plpgsql security definer
    SET plan_cache_mode TO 'force_custom_plan'
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET lock_timeout TO '1s'
    AS $_$
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
        insert into integration.event_key as k
            (source, idempotency_key, signature_digest, event_id)
        values (p_source, p_idempotency_key, p_signature_digest, gen_random_uuid())
        on conflict (source, idempotency_key) do nothing
        returning k.event_id into v_id;
    exception when unique_violation then
        -- The signature digest's index. When two byte-identical requests race, the loser may
        -- meet the winner's signature before its key; each statement of this function sees what
        -- committed before it started, so the winner's key row is visible here. Only a signature
        -- accepted under another key is a replay.
        select k.event_id into v_id from integration.event_key k
         where k.source = p_source and k.idempotency_key = p_idempotency_key
           and k.signature_digest is not distinct from p_signature_digest;
        if v_id is null then
            raise exception 'replayed signature' using errcode = 'IB001',
                detail = 'a request with this signature was already accepted under another idempotency key';
        end if;
        return query select v_id, true;
        return;
    end;

    if v_id is not null then
        insert into integration.outbox
            (id, source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
             signature_digest, occurred_at, max_attempts, traceparent, tracestate)
        select v_id, p_source, p_event_type, p_aggregate_type, p_aggregate_id, p_payload,
               p_idempotency_key, p_signature_digest, p_occurred_at, p_max_attempts,
               t.traceparent, t.tracestate
          from integration.trace_context(p_traceparent, p_tracestate) t;
        insert into integration.event_log
            (event_id, source, event_type, aggregate_type, aggregate_id, payload,
             idempotency_key, signature_digest, occurred_at)
        values (v_id, p_source, p_event_type, p_aggregate_type, p_aggregate_id, p_payload,
                p_idempotency_key, p_signature_digest, p_occurred_at);
        perform pg_notify('integration_outbox', v_id::text);
        return query select v_id, false;
        return;
    end if;

    return query
        select k.event_id, true from integration.event_key k
        where k.source = p_source and k.idempotency_key = p_idempotency_key;
end;
$_$;

comment on function integration.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer, text, text) is
    'Stores one event; idempotent on (source, idempotency_key). Returns the event id and whether it was a duplicate (then nothing is written). NOTIFYs integration_outbox on a new event. Raises IB001 when the signature digest was already accepted under another key. Keeps a valid W3C trace context with it.';
-- From anon and authenticated too: a Supabase project's default privileges grant them every
-- new function.
revoke all on function integration.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer, text, text)
    from public, anon, authenticated, service_role;

create function public.insert_outbox_event(
    p_event_type text, p_aggregate_type text, p_aggregate_id text, p_payload jsonb,
    p_idempotency_key text, p_source text default 'odoo', p_occurred_at timestamptz default null,
    p_signature_digest text default null, p_max_attempts integer default 4,
    p_traceparent text default null, p_tracestate text default null
) returns table (event_id uuid, duplicate boolean)
    language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select * from integration.insert_outbox_event(
        p_event_type, p_aggregate_type, p_aggregate_id, p_payload, p_idempotency_key, p_source,
        p_occurred_at, p_signature_digest, p_max_attempts, p_traceparent, p_tracestate);
$$;
revoke all on function public.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer, text, text)
    from public, anon, authenticated;
grant execute on function public.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer, text, text)
    to service_role, ipai_bus_ingest;

create or replace function integration.insert_outbox_batch(
    p_batch_key text, p_signature_digest text, p_events jsonb, p_max_attempts integer default 4
) returns table (event_position integer, event_id uuid, duplicate boolean)
    language plpgsql security definer
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET lock_timeout TO '1s'
    AS $_$
declare
    v_bound_key text;
    v_new_ids   uuid[];
begin
    perform integration.require(p_batch_key ~ '^[ -~]{1,255}$',
        'insert_outbox_batch: batch_key must be 1-255 printable ASCII characters');
    perform integration.require(p_signature_digest is not null,
        'insert_outbox_batch: signature_digest is required');
    perform integration.require(jsonb_typeof(p_events) = 'array',
        'insert_outbox_batch: events must be a JSON array');
    perform integration.require(p_max_attempts between 1 and 100,
        'insert_outbox_batch: max_attempts must be between 1 and 100');

    -- Two identical batches at once: the second waits here for the first to commit.
    insert into integration.ingest_batch (signature_digest, batch_key, events)
    values (p_signature_digest, p_batch_key, jsonb_array_length(p_events))
    on conflict (signature_digest) do nothing;
    if not found then
        select b.batch_key into v_bound_key
          from integration.ingest_batch b where b.signature_digest = p_signature_digest;
        if v_bound_key is distinct from p_batch_key then
            raise exception 'replayed signature' using errcode = 'IB001',
                detail = 'a request with this signature was already accepted under another key';
        end if;
    end if;

    with incoming as materialized (
        select (e.position - 1)::integer as event_position,
               gen_random_uuid() as new_id,
               coalesce(e.value->>'source', 'odoo') as source,
               e.value->>'event_type' as event_type,
               e.value->>'aggregate_type' as aggregate_type,
               e.value->>'aggregate_id' as aggregate_id,
               e.value->'payload' as payload,
               e.value->>'idempotency_key' as idempotency_key,
               (e.value->>'occurred_at')::timestamptz as occurred_at,
               coalesce((e.value->>'batch_position')::integer,
                        (e.position - 1)::integer) as signed_position,
               t.traceparent, t.tracestate
          from jsonb_array_elements(p_events) with ordinality as e(value, position),
               integration.trace_context(e.value->>'traceparent', e.value->>'tracestate') t
    ), keyed as (
        insert into integration.event_key as k
            (source, idempotency_key, signature_digest, event_id)
        select i.source, i.idempotency_key, p_signature_digest || '/' || i.signed_position,
               i.new_id
          from incoming i order by i.source, i.idempotency_key, i.event_position
        on conflict (source, idempotency_key) do nothing
        returning k.event_id
    ), inserted as (
        insert into integration.outbox as o
            (id, source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
             signature_digest, occurred_at, max_attempts, traceparent, tracestate)
        select i.new_id, i.source, i.event_type, i.aggregate_type, i.aggregate_id, i.payload,
               i.idempotency_key, p_signature_digest || '/' || i.signed_position, i.occurred_at,
               p_max_attempts, i.traceparent, i.tracestate
          from incoming i join keyed k on k.event_id = i.new_id
         order by i.event_position
        returning o.id, o.source, o.event_type, o.aggregate_type, o.aggregate_id, o.payload,
                  o.idempotency_key, o.signature_digest, o.occurred_at
    ), logged as (
        insert into integration.event_log
            (event_id, source, event_type, aggregate_type, aggregate_id, payload,
             idempotency_key, signature_digest, occurred_at)
        select n.id, n.source, n.event_type, n.aggregate_type, n.aggregate_id, n.payload,
               n.idempotency_key, n.signature_digest, n.occurred_at
          from inserted n
    )
    select array_agg(n.id) into v_new_ids from inserted n;

    if v_new_ids is not null then
        perform pg_notify('integration_outbox', v_new_ids[1]::text);
    end if;
    if random() < 0.01 then
        delete from integration.ingest_batch where received_at < now() - interval '1 day';
    end if;

    -- A new statement sees what concurrent requests committed: their keys are our duplicates.
    return query
        select e.event_position, k.event_id,
               not (k.event_id = any(coalesce(v_new_ids, '{}'))) or e.earlier_copy
          from (select (x.position - 1)::integer as event_position,
                       coalesce(x.value->>'source', 'odoo') as source,
                       x.value->>'idempotency_key' as idempotency_key,
                       row_number() over (
                           partition by coalesce(x.value->>'source', 'odoo'),
                                        x.value->>'idempotency_key'
                           order by x.position) > 1 as earlier_copy
                  from jsonb_array_elements(p_events) with ordinality as x(value, position)) e
          left join integration.event_key k
            on k.source = e.source and k.idempotency_key = e.idempotency_key
         order by e.event_position;
end;
$_$;

