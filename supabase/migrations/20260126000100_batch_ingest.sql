-- IPAI integration bus, batch ingest: one signed request carries up to a documented number of
-- events, each with its own idempotency key; all the new ones and their event_log copies commit
-- together in one statement.

-- ---------------------------------------------------------------------------------------------
-- ingest_batch: the replay binding of batch requests. A batch's signature digest is accepted
-- under one batch key only, as a single event's is under its idempotency key. Rows older than a
-- day bind nothing any more (the timestamp window is minutes long) and are pruned as batches
-- arrive.
-- ---------------------------------------------------------------------------------------------

create table integration.ingest_batch (
    signature_digest text primary key,
    batch_key        text not null,
    events           integer not null,
    received_at      timestamptz not null default now()
);

create index ingest_batch_received_at_idx on integration.ingest_batch (received_at);

comment on table integration.ingest_batch is
    'Signature digests of accepted batch requests and the batch key each was accepted under.';

-- ---------------------------------------------------------------------------------------------
-- insert_outbox_batch: p_events is a JSON array of envelopes, each with its idempotency_key,
-- already checked by the receiver. Returns one row per element, in order: the event id and
-- whether it was a duplicate (of a stored event, or of an earlier element of this batch). Each
-- event's signature_digest is the batch's digest and its position ("<digest>/<n>"), so the
-- outbox's one-signature-one-event index holds and the audit copy says which request brought it.
-- ---------------------------------------------------------------------------------------------

create function integration.insert_outbox_batch(
    p_batch_key        text,
    p_signature_digest text,
    p_events           jsonb,
    p_max_attempts     integer default 4
) returns table (event_position integer, event_id uuid, duplicate boolean)
    language plpgsql
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

    with incoming as (
        select (e.position - 1)::integer as event_position,
               coalesce(e.value->>'source', 'odoo') as source,
               e.value->>'event_type' as event_type,
               e.value->>'aggregate_type' as aggregate_type,
               e.value->>'aggregate_id' as aggregate_id,
               e.value->'payload' as payload,
               e.value->>'idempotency_key' as idempotency_key,
               (e.value->>'occurred_at')::timestamptz as occurred_at
          from jsonb_array_elements(p_events) with ordinality as e(value, position)
    ), inserted as (
        insert into integration.outbox as o
            (source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
             signature_digest, occurred_at, max_attempts)
        select i.source, i.event_type, i.aggregate_type, i.aggregate_id, i.payload,
               i.idempotency_key, p_signature_digest || '/' || i.event_position, i.occurred_at,
               p_max_attempts
          from incoming i order by i.event_position
        on conflict (source, idempotency_key) do nothing
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

    -- A new statement sees what concurrent requests committed: their rows are our duplicates.
    return query
        select e.event_position, o.id,
               not (o.id = any(coalesce(v_new_ids, '{}'))) or e.earlier_copy
          from (select (x.position - 1)::integer as event_position,
                       coalesce(x.value->>'source', 'odoo') as source,
                       x.value->>'idempotency_key' as idempotency_key,
                       row_number() over (
                           partition by coalesce(x.value->>'source', 'odoo'),
                                        x.value->>'idempotency_key'
                           order by x.position) > 1 as earlier_copy
                  from jsonb_array_elements(p_events) with ordinality as x(value, position)) e
          left join integration.outbox o
            on o.source = e.source and o.idempotency_key = e.idempotency_key
         order by e.event_position;
end;
$$;

comment on function integration.insert_outbox_batch(text, text, jsonb, integer) is
    'Stores a batch of checked events and their event_log copies in one statement; idempotent '
    'per (source, idempotency_key). Returns per element its event id and whether it was a '
    'duplicate. Raises IB001 when the batch signature was accepted under another batch key.';

create function public.insert_outbox_batch(
    p_batch_key text, p_signature_digest text, p_events jsonb, p_max_attempts integer default 4
) returns table (event_position integer, event_id uuid, duplicate boolean)
    language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select * from integration.insert_outbox_batch(
        p_batch_key, p_signature_digest, p_events, p_max_attempts);
$$;

revoke all on function integration.insert_outbox_batch(text, text, jsonb, integer) from public;
grant execute on function integration.insert_outbox_batch(text, text, jsonb, integer)
    to service_role;
revoke all on function public.insert_outbox_batch(text, text, jsonb, integer) from public, anon,
    authenticated;
grant execute on function public.insert_outbox_batch(text, text, jsonb, integer)
    to service_role, ipai_bus_ingest;
