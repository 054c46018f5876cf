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

-- name: stage_attempts
-- A batch's attempts arrive by COPY into a table of the session's own (COPY cannot write a
-- table under row level security, and the session's table needs no policy); emptied at commit.
create temp table if not exists staged_attempts (
    event_id uuid, attempt integer, worker text, destination text, outcome text,
    http_status integer, error text, duration_ms real
) on commit delete rows;

-- name: copy_staged_attempts
copy pg_temp.staged_attempts from stdin;

-- name: record_staged_attempts
-- The same rows integration.record_delivery_attempts writes (the table's checks apply).
insert into integration.delivery_attempts
       (event_id, attempt, worker, destination, outcome, http_status, error, duration_ms)
select event_id, attempt, worker, destination, outcome, http_status, left(error, 4000),
       coalesce(duration_ms, 0)
  from pg_temp.staged_attempts;

-- name: notify_probe
-- The start-up probe: a NOTIFY on the outbox's channel that only the probing router waits for
-- (other routers wake once and find nothing new).
select pg_notify('integration_outbox', %(token)s);
