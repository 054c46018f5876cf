-- What a router runs besides the outbox functions (outbox.py calls those).

-- name: listen
-- Wakes on every insert_outbox_event (the channel the migration NOTIFYs).
listen integration_outbox;

-- name: seconds_until_next_due
-- Of the waiting events: those in flight (under a lease) are not waiting.
select extract(epoch from min(available_at) - now()) from integration.outbox_waiting;

-- name: outbox_lag_seconds
-- How long the oldest due event has waited (the router's lag); NULL when none is due.
select extract(epoch from now() - min(available_at))
  from integration.outbox_waiting where available_at <= now();

-- name: delivered_pairs
-- (event, destination) pairs delivered on an earlier attempt: never sent twice.
select event_id, destination from integration.delivery_attempts
 where event_id = any(%(ids)s::uuid[]) and outcome = 'delivered';

-- name: save_breaker_state
insert into integration.destination_state as s
       (destination, state, failures, open_until, last_error)
values (%(name)s, %(state)s, %(failures)s, %(until)s, %(error)s)
on conflict (destination) do update
   set state = excluded.state, failures = excluded.failures,
       open_until = excluded.open_until,
       last_error = coalesce(excluded.last_error, s.last_error), updated_at = now();

-- name: resume_requested_at
-- When an operator last asked to resume a paused destination (ipai-bus resume); NULL if never.
select extract(epoch from resume_requested_at) from integration.destination_state
 where destination = %(name)s;

-- name: record_attempts
-- One (destination, outcome)'s attempts of a batch, entry i of each array about the same
-- attempt: the rows integration.record_delivery_attempts writes (the table's checks apply).
insert into integration.delivery_attempts
       (event_id, attempt, worker, destination, outcome, http_status, error, duration_ms)
select a.event_id, a.attempt, %(worker)s, %(destination)s, %(outcome)s, a.http_status,
       left(a.error, 4000), a.duration_ms
  from unnest(%(event_ids)s::uuid[], %(attempts)s::integer[], %(http_status)s::integer[],
              %(errors)s::text[], %(durations_ms)s::real[])
       as a(event_id, attempt, http_status, error, duration_ms)

-- name: notify_probe
-- The start-up probe: a NOTIFY on the outbox's channel that only the probing router waits for
-- (other routers wake once and find nothing new).
select pg_notify('integration_outbox', %(token)s);
