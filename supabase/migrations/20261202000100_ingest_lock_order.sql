-- IPAI integration bus: concurrent ingest of overlapping keys never deadlocks.
--
-- Two batches holding some of the same new keys in different orders each locked its own first
-- keys and waited for the other's: PostgreSQL broke the cycle after deadlock_timeout and the
-- loser's request failed. insert_outbox_batch now takes its key rows in one canonical order
-- (source, idempotency key), so a later batch only ever waits for an earlier one to commit.
--
-- Each event's signature digest ends in "/<position>", its place in the signed batch body, which
-- the signed_event view uses to find its payload in the request kept. It was its place among
-- the events passed in, which differs once the receiver leaves a refused event out: an event
-- may now say its place in the body as "batch_position".
--
-- A wait for a key another request holds is bounded by lock_timeout (1 s) inside both insert
-- functions, below the receiver's 1.5 s database deadline: a long wait ends as SQLSTATE 55P03,
-- which the receivers answer 503 "busy" (after one retry), not as a database that stopped
-- answering. Both receivers call these functions, so both get the order.

create or replace function integration.insert_outbox_batch(
    p_batch_key        text,
    p_signature_digest text,
    p_events           jsonb,
    p_max_attempts     integer default 4
) returns table (event_position integer, event_id uuid, duplicate boolean)
    language plpgsql security definer
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '1s'
as $$
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
                        (e.position - 1)::integer) as signed_position
          from jsonb_array_elements(p_events) with ordinality as e(value, position)
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
             signature_digest, occurred_at, max_attempts)
        select i.new_id, i.source, i.event_type, i.aggregate_type, i.aggregate_id, i.payload,
               i.idempotency_key, p_signature_digest || '/' || i.signed_position, i.occurred_at,
               p_max_attempts
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
$$;

alter function integration.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz,
                                               text, integer)
    set lock_timeout = '1s';
