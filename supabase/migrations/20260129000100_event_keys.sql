-- IPAI integration bus: the two uniqueness rules of ingest (one event per (source,
-- idempotency_key); one event per signature) move from the outbox to a narrow table of their own.
--
-- A router updates each outbox row twice (claimed, completed), and every such update writes an
-- entry in each index of the row: with the two unique indexes on the outbox, each update also
-- checked both for uniqueness, for values that never change after ingest. In their own table
-- they are written once, at ingest. Measured with bench/peer_bench.py: the router's rate against
-- PgQueuer's went from 1.35-1.41 to 1.61-1.66 times. The rules and their answers are unchanged:
-- a key seen before is a duplicate, a signature seen under another key is a replay (IB001), and
-- purging an event forgets its key as it did.

create table integration.event_key (
    source           text not null,
    idempotency_key  text not null,
    signature_digest text,
    event_id         uuid not null,
    primary key (source, idempotency_key)
);

create unique index event_key_signature_digest_key
    on integration.event_key (signature_digest) where signature_digest is not null;

comment on table integration.event_key is
    'The idempotency key and signature digest of every event in the outbox: what makes a resend a duplicate and a signature used under another key a replay. Written at ingest, deleted with its event when purged.';

alter table integration.event_key enable row level security;
create policy event_key_service_role_all on integration.event_key
    to service_role using (true) with check (true);
grant select, insert, delete on integration.event_key to service_role;

insert into integration.event_key (source, idempotency_key, signature_digest, event_id)
select o.source, o.idempotency_key, o.signature_digest, o.id from integration.outbox o;

alter table integration.outbox drop constraint outbox_source_idempotency_key;
drop index integration.outbox_signature_digest_key;

-- ---------------------------------------------------------------------------------------------
-- insert_outbox_event: the key row is claimed first; only its winner writes the outbox row.
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
             signature_digest, occurred_at, max_attempts)
        values (v_id, p_source, p_event_type, p_aggregate_type, p_aggregate_id, p_payload,
                p_idempotency_key, p_signature_digest, p_occurred_at, p_max_attempts);
        perform pg_notify('integration_outbox', v_id::text);
        return query select v_id, false;
        return;
    end if;

    return query
        select k.event_id, true from integration.event_key k
        where k.source = p_source and k.idempotency_key = p_idempotency_key;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- insert_outbox_batch: the batch's key rows first (a key repeated inside the batch keeps its
-- first event), then the outbox rows of the keys it won and their event_log copies, in order.
-- ---------------------------------------------------------------------------------------------

create or replace function integration.insert_outbox_batch(
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

    with incoming as materialized (
        select (e.position - 1)::integer as event_position,
               gen_random_uuid() as new_id,
               coalesce(e.value->>'source', 'odoo') as source,
               e.value->>'event_type' as event_type,
               e.value->>'aggregate_type' as aggregate_type,
               e.value->>'aggregate_id' as aggregate_id,
               e.value->'payload' as payload,
               e.value->>'idempotency_key' as idempotency_key,
               (e.value->>'occurred_at')::timestamptz as occurred_at
          from jsonb_array_elements(p_events) with ordinality as e(value, position)
    ), keyed as (
        insert into integration.event_key as k
            (source, idempotency_key, signature_digest, event_id)
        select i.source, i.idempotency_key, p_signature_digest || '/' || i.event_position,
               i.new_id
          from incoming i order by i.event_position
        on conflict (source, idempotency_key) do nothing
        returning k.event_id
    ), inserted as (
        insert into integration.outbox as o
            (id, source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
             signature_digest, occurred_at, max_attempts)
        select i.new_id, i.source, i.event_type, i.aggregate_type, i.aggregate_id, i.payload,
               i.idempotency_key, p_signature_digest || '/' || i.event_position, i.occurred_at,
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

-- ---------------------------------------------------------------------------------------------
-- purge_completed: an event purged leaves no key behind (a resend of it is stored anew, as
-- before this migration).
-- ---------------------------------------------------------------------------------------------

create or replace function integration.purge_completed(p_older_than interval, p_actor text)
    returns integer
    language plpgsql
as $$
declare
    v_count integer;
begin
    perform integration.require(p_older_than >= interval '1 hour',
        'purge_completed: older_than must be at least 1 hour');
    perform integration.require(length(btrim(p_actor)) between 1 and 200,
        'purge_completed: actor must name who purges');
    with purged as (
        delete from integration.outbox o
         where o.status = 'completed' and o.completed_at < now() - p_older_than
        returning o.source, o.idempotency_key
    ), forgotten as (
        delete from integration.event_key k
         using purged p
         where k.source = p.source and k.idempotency_key = p.idempotency_key
    )
    select count(*) into v_count from purged;
    insert into integration.operator_actions (action, actor, detail)
    values ('purge', p_actor, jsonb_build_object('older_than', p_older_than::text,
                                                 'deleted', v_count));
    return v_count;
end;
$$;
