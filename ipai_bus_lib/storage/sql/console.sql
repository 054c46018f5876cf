-- What the operator console reads. Every list is keyset-paged (newest first) on an index, so a
-- page costs the same on a million rows as on a hundred.

-- name: waiting_counts
-- Exact counts of the statuses an operator acts on (partial indexes keep them small); an event in
-- flight is stored pending or failed and counted as processing.
select 'pending' as status, count(*) from integration.outbox_waiting where status = 'pending'
union all select 'failed', count(*) from integration.outbox_waiting where status = 'failed'
union all select 'processing', count(*) from integration.in_flight
union all select 'dead', count(*) from integration.outbox where status = 'dead';

-- name: completed_up_to
-- Completed events (logged, no longer in the outbox) counted, but no further than the limit
-- given (a bounded scan).
select count(*) from (select 1 from integration.event_state where status = 'completed' limit %s) c;

-- name: estimated_logged_events
-- The planner's row estimate of the event log: past the counting limit, completed is read at a
-- glance (≈) as the logged events less those still in the outbox.
select greatest(reltuples, 0)::bigint from pg_class where oid = 'integration.event_log'::regclass;

-- name: oldest_pending_seconds
select extract(epoch from now() - min(created_at)) from integration.outbox_waiting
 where status = 'pending';

-- name: per_minute_last_hour
-- Events accepted per minute over the last hour (minutes without events are absent).
select floor(extract(epoch from now() - received_at) / 60)::integer as minutes_ago, count(*)
  from integration.event_log
 where received_at > now() - interval '60 minutes'
 group by 1;

-- name: paused_destinations
select destination, failures, open_until, last_error, updated_at, open_until <= now() as trial_due
  from integration.destination_state where state = 'open' order by destination;

-- name: destination_states
select destination, state, failures, open_until, last_error, updated_at, resume_requested_at
  from integration.destination_state order by destination;

-- name: now
select now();

-- name: latest_failures
-- Each destination's newest failed or refused attempt among the newest 10,000 attempts (bounded
-- by the primary key, the order attempts are written in, whatever the table's size): a refusal
-- (a 400) never opens the breaker, so destination_state has no error for it.
select distinct on (destination) destination, attempted_at, outcome, http_status, error
  from (select destination, attempted_at, outcome, http_status, error
          from integration.delivery_attempts order by id desc limit 10000) recent
 where outcome in ('failed', 'dead')
 order by destination, attempted_at desc;

-- name: events_from_log
-- The event log, newest first, with each event's status (completed once it left the outbox).
select l.id, l.event_type, l.source, l.aggregate_type, l.aggregate_id,
       l.received_at as at, l.log_id as position, l.status, l.attempts, l.last_error
  from integration.event_state l
 where (%(type_like)s::text is null or l.event_type like %(type_like)s)
   and (%(source)s::text is null or l.source = %(source)s)
   and (%(record)s::text is null or l.aggregate_id = %(record)s)
   and (%(since)s::timestamptz is null or l.received_at >= %(since)s)
   and (%(until)s::timestamptz is null or l.received_at < %(until)s)
   and (%(status)s::text is null or l.status = %(status)s)
   and (%(before_at)s::timestamptz is null or (l.received_at, l.log_id) < (%(before_at)s, %(before_position)s))
 order by l.received_at desc, l.log_id desc
 limit %(limit)s;

-- name: events_from_outbox
-- The waiting, in-flight and dead statuses are the outbox's few rows: read them from there.
select o.id, o.event_type, o.source, o.aggregate_type, o.aggregate_id, o.created_at as at,
       o.seq as position, o.status, o.attempts, o.last_error
  from integration.outbox_state o
 where o.status = %(status)s
   and (%(type_like)s::text is null or o.event_type like %(type_like)s)
   and (%(source)s::text is null or o.source = %(source)s)
   and (%(record)s::text is null or o.aggregate_id = %(record)s)
   and (%(since)s::timestamptz is null or o.created_at >= %(since)s)
   and (%(until)s::timestamptz is null or o.created_at < %(until)s)
   and (%(before_at)s::timestamptz is null or (o.created_at, o.seq) < (%(before_at)s, %(before_position)s))
 order by o.created_at desc, o.seq desc
 limit %(limit)s;

-- name: dead_letters
select id, event_type, aggregate_type, aggregate_id, attempts, last_error, updated_at
  from integration.outbox
 where status = 'dead'
   and (%(type_like)s::text is null or event_type like %(type_like)s)
   and (%(before_at)s::timestamptz is null or (updated_at, id) < (%(before_at)s, %(before_id)s))
 order by updated_at desc, id desc
 limit %(limit)s;
