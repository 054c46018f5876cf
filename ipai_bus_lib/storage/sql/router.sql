-- What a router runs besides the outbox functions (outbox.py calls those).

-- name: listen
-- Wakes on every insert_outbox_event (the channel the migration NOTIFYs).
listen integration_outbox;

-- name: seconds_until_next_due
select extract(epoch from min(available_at) - now())
  from integration.outbox where status in ('pending', 'failed');

-- name: outbox_lag_seconds
-- How long the oldest due event has waited (the router's lag); NULL when none is due.
select extract(epoch from now() - min(available_at))
  from integration.outbox where status in ('pending', 'failed') and available_at <= now();

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

-- name: record_delivery_attempts
select integration.record_delivery_attempts(
    p_worker => %(worker)s, p_event_ids => %(ids)s::uuid[],
    p_attempts => %(attempts)s::integer[], p_destinations => %(destinations)s::text[],
    p_outcomes => %(outcomes)s::text[], p_http_status => %(statuses)s::integer[],
    p_errors => %(errors)s::text[], p_durations_ms => %(durations)s::real[]);
