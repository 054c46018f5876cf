-- What operators read and do: `ipai-bus status`, `events`, `retry`, `purge`, and the demo.

-- name: count_by_status
-- The outbox's statuses (processing: in flight under a lease), and completed: the logged events
-- the outbox no longer has.
select status, count(*) from integration.outbox_state group by status
union all
select 'completed', (select count(*) from integration.event_log)
                    - (select count(*) from integration.outbox);

-- name: waiting_by_type
select event_type, status, count(*) as events from integration.outbox_state
 group by 1, 2 order by 1, 2;

-- name: oldest_waiting_seconds
-- The oldest pending event's age, and the oldest failed (waiting to be retried) one's.
select extract(epoch from now() - min(created_at) filter (where status = 'pending')),
       extract(epoch from now() - min(created_at) filter (where status = 'failed'))
  from integration.outbox_waiting;

-- name: held_by_order
-- Waiting events held back by an earlier undelivered event of the same record.
select count(*) from integration.outbox_waiting d
 where exists (select 1 from integration.outbox e
                where e.aggregate_key = d.aggregate_key and e.seq < d.seq
                  and e.status in ('pending', 'failed')
                  and e.source = d.source and e.aggregate_type = d.aggregate_type
                  and e.aggregate_id = d.aggregate_id);

-- name: waiting_behind
select e.id, e.status, e.event_type from integration.outbox d
  join integration.outbox earlier
    on earlier.aggregate_key = d.aggregate_key and earlier.seq < d.seq
   and earlier.status in ('pending', 'failed')
   and earlier.source = d.source and earlier.aggregate_type = d.aggregate_type
   and earlier.aggregate_id = d.aggregate_id
  join integration.outbox_state e on e.id = earlier.id
 where d.id = %s
 order by e.seq limit 1;

-- name: expired_leases
select count(*) from integration.in_flight where expires_at < now();

-- name: latest_dead
select id, event_type, aggregate_id, attempts, last_error, updated_at
  from integration.outbox where status = 'dead' order by updated_at desc limit %s;

-- name: logged_last_hour
select event_type, count(*) from integration.event_log
 where received_at > now() - interval '1 hour' group by 1 order by 1;

-- name: shared_sources
-- Sources that more than one Odoo database sent under in the last day. Odoo scopes each key
-- to its database ("...@<database.uuid>"), so two uuids under one source are two senders
-- sharing a name: their records (same model, same id) are one record here.
select source, count(distinct substring(idempotency_key from '@([0-9a-f-]{36})$')) as databases
  from integration.event_log
 where received_at > now() - interval '1 day' and idempotency_key ~ '@[0-9a-f-]{36}$'
 group by source
having count(distinct substring(idempotency_key from '@([0-9a-f-]{36})$')) > 1
 order by source;

-- name: open_circuits
select destination, failures, open_until, last_error, open_until <= now() as trial_due
  from integration.destination_state where state = 'open' order by 1;

-- name: outbox_row
select * from integration.outbox_state where id = %s;

-- name: event_log_row
select * from integration.event_log where event_id = %s;

-- name: delivery_attempts_of
select attempted_at, attempt, worker, destination, outcome, http_status, error, duration_ms
  from integration.delivery_attempts where event_id = %s order by id;

-- name: operator_actions_on
select acted_at, action, actor, reason from integration.operator_actions
 where %s = any(event_ids) order by id;

-- name: events_since
select log_id, id as event_id, event_type, aggregate_id, received_at, status
  from integration.event_state where log_id > %s order by log_id limit %s;

-- name: last_log_id
select coalesce(max(id), 0) from integration.event_log;

-- name: select_for_retry
select id from integration.outbox_state where status = any(%s)
   and (%s::text is null or event_type like %s)
   and (%s::interval is null or updated_at > now() - %s::interval)
 order by seq;

-- name: retry_events
select integration.retry_events(p_ids => %s::uuid[], p_actor => %s, p_reason => %s);

-- name: resume_destination
select integration.resume_destination(p_destination => %s, p_actor => %s, p_reason => %s);

-- name: purge_completed
select integration.purge_completed(p_older_than => %s, p_actor => %s);

-- name: existing_ids
select id from integration.event_state where id = any(%s::uuid[]);

-- name: statuses_of
select id::text, status from integration.event_state where id = any(%s::uuid[]);

-- name: types_of
select distinct event_type from integration.outbox where id = any(%s::uuid[]) order by 1;

-- name: last_errors_of
select id::text, last_error from integration.outbox
 where id = any(%s::uuid[]) and last_error is not null;
