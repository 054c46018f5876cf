-- IPAI integration bus: the router's two updates per event (claimed, completed) made cheaper.
--
-- Measured (bench/storage_designs.py): of the ~67 µs of database time a claim, an
-- acknowledgement and an attempt row cost per event, ~26 µs went to three regular expressions.
-- PostgreSQL evaluates every CHECK constraint of a table on every UPDATE of a row, even when
-- the columns they read did not change; the shape checks of source, event_type,
-- idempotency_key, aggregate_type, aggregate_id and payload (columns written once, at ingest)
-- ran again at each claim and each ack. A domain's check runs when a value is given to the
-- column (an insert, or an update that sets it) and not otherwise: the same rules, the same
-- constraint names in the error, once.

create domain integration.source_name as text
    constraint outbox_source_shape check (value ~ '^[A-Za-z0-9_.-]{1,64}$');
comment on domain integration.source_name is
    'Who sent an event: 1-64 letters, digits, "_", "." or "-".';

create domain integration.event_type_name as text
    constraint outbox_event_type_shape
    check (value ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' and length(value) <= 255);
comment on domain integration.event_type_name is
    'An event type: lowercase dotted words, e.g. expense.submitted; at most 255 characters.';

create domain integration.idempotency_key_text as text
    constraint outbox_idempotency_key_shape check (value ~ '^[ -~]{1,255}$');
comment on domain integration.idempotency_key_text is
    'An idempotency key: 1-255 printable ASCII characters.';

create domain integration.aggregate_type_name as text
    constraint outbox_aggregate_type_shape check (length(value) between 1 and 255);
comment on domain integration.aggregate_type_name is
    'The Odoo model of an event''s record, e.g. hr.expense: 1-255 characters.';

create domain integration.aggregate_id_text as text
    constraint outbox_aggregate_id_shape check (length(value) between 1 and 255);
comment on domain integration.aggregate_id_text is
    'The id of an event''s record within its model: 1-255 characters.';

create domain integration.json_object as jsonb
    constraint outbox_payload_is_object check (jsonb_typeof(value) = 'object');
comment on domain integration.json_object is 'A JSON object (an event''s payload).';

alter table integration.outbox
    drop constraint outbox_source_shape,
    drop constraint outbox_event_type_shape,
    drop constraint outbox_idempotency_key_shape,
    drop constraint outbox_aggregate_type_shape,
    drop constraint outbox_aggregate_id_shape,
    drop constraint outbox_payload_is_object;

-- Each domain is binary-compatible with its base type: the rows are checked, not rewritten.
alter table integration.outbox
    alter column source type integration.source_name,
    alter column event_type type integration.event_type_name,
    alter column idempotency_key type integration.idempotency_key_text,
    alter column aggregate_type type integration.aggregate_type_name,
    alter column aggregate_id type integration.aggregate_id_text,
    alter column payload type integration.json_object;

-- ---------------------------------------------------------------------------------------------
-- claim_outbox, as before, with two plans pinned:
-- * the picked ids are joined back to the outbox by primary key. Estimating 1,000 ids against
--   the table, the planner chose a hash join over a full scan of the outbox (6 ms per claim at
--   30,000 rows, growing with the table);
-- * the per-record ordering check is a probe of outbox_aggregate_active_idx for each candidate
--   (OFFSET 0 keeps it a correlated subquery). As an anti-join, statistics gathered while every
--   row was completed made the planner scan the whole index per candidate: 2 s per claim of
--   1,000 with 10,000 waiting, until the next ANALYZE. A burst after a quiet spell is the case.
-- ---------------------------------------------------------------------------------------------

create or replace function integration.claim_outbox(
    p_worker        text,
    p_limit         integer default 25,
    p_lease_seconds integer default 60
) returns setof integration.outbox
    language plpgsql
    set plan_cache_mode = force_custom_plan
    set enable_bitmapscan = off
    set enable_hashjoin = off
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
                  and earlier.status in ('pending', 'processing', 'failed')
               offset 0)
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
