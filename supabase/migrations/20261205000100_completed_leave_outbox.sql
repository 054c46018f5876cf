-- A delivered event leaves the outbox: the acknowledgement deletes its row instead of rewriting
-- it as 'completed'. What an operator reads of a completed event was already kept elsewhere and
-- stays: the audit copy (event_log, written at ingest), every delivery attempt with its time and
-- outcome (delivery_attempts) and its idempotency key (event_key, so a resend is still a
-- duplicate). The outbox holds only the events that still need something: waiting, in flight,
-- retrying or dead. Measured (bench/storage_designs.py): the acknowledgement's share of the
-- database's time per event halves, and the hot table stays the size of the backlog.
--
-- An event is completed when the event_log has it and the outbox no longer does
-- (integration.event_state says so for any reader).

create or replace function integration.ack_outbox(p_ids uuid[], p_worker text)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan
as $$
declare
    v_count integer;
begin
    perform integration.require(p_ids is not null, 'ack_outbox: ids are required');
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'ack_outbox: worker must be a non-empty name');
    delete from integration.outbox o
     where o.id = any(p_ids) and o.status = 'processing' and o.locked_by = p_worker;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;
comment on function integration.ack_outbox(uuid[], text) is
    'Completes the events p_worker delivered: their outbox rows go (event_log and delivery_attempts keep their record); returns how many it held. Rows whose lease was taken over by another worker are left to that worker.';

-- Completed rows of the old kind go the same way. Their attempts are kept; an audit copy is
-- made first for any event stored before ingest wrote one itself (a direct SQL client's).
insert into integration.event_log (event_id, source, event_type, aggregate_type, aggregate_id,
                                   payload, idempotency_key, signature_digest, occurred_at,
                                   received_at)
select o.id, o.source, o.event_type, o.aggregate_type, o.aggregate_id, o.payload,
       o.idempotency_key, o.signature_digest, o.occurred_at, o.created_at
  from integration.outbox o
 where o.status = 'completed'
   and not exists (select 1 from integration.event_log l where l.event_id = o.id);
delete from integration.outbox where status = 'completed';
alter table integration.outbox drop constraint outbox_status_known;
alter table integration.outbox add constraint outbox_status_known
    check (status in ('pending', 'processing', 'failed', 'dead'));
alter table integration.outbox drop column completed_at;
comment on table integration.outbox is
    'The events that still need something: pending -> processing -> (delivered: the row goes, see integration.event_state); failed = retry scheduled at available_at; dead = gave up (see last_error).';

create view integration.event_state with (security_invoker = true) as
select l.event_id as id, l.id as log_id, l.source, l.event_type, l.aggregate_type,
       l.aggregate_id, l.received_at, coalesce(o.status, 'completed') as status,
       coalesce(o.attempts, (select max(a.attempt) from integration.delivery_attempts a
                              where a.event_id = l.event_id)) as attempts,
       o.last_error
  from integration.event_log l
  left join integration.outbox o on o.id = l.event_id;
comment on view integration.event_state is
    'Every accepted event and its status: the outbox''s while it has the event, else completed (delivered; attempts is then its last attempt''s number, its history is in delivery_attempts).';
grant select on integration.event_state to ipai_bus_operator;

-- Purging now forgets what a completed event leaves in event_key: its idempotency key (then
-- a resend is accepted as new). "Older than" counts from its last delivery attempt.
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
       and not exists (select 1 from integration.delivery_attempts a
                        where a.event_id = k.event_id
                          and a.attempted_at >= now() - p_older_than)
       and exists (select 1 from integration.event_log l
                    where l.event_id = k.event_id and l.received_at < now() - p_older_than);
    get diagnostics v_count = row_count;
    insert into integration.operator_actions (action, actor, detail)
    values ('purge', p_actor, jsonb_build_object('older_than', p_older_than::text,
                                                 'deleted', v_count));
    return v_count;
end;
$$;
comment on function integration.purge_completed(interval, text) is
    'Forgets the idempotency keys of events completed before p_older_than (at least 1 hour; a resend is then new); the event_log and the attempts stay. Audited; returns how many.';

-- The console finds each destination's latest failures among the newest attempts by id (the
-- order they were written in); the time index cost every attempt one more B-tree insert.
drop index integration.delivery_attempts_time_idx;
