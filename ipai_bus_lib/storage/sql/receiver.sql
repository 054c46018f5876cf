-- What the receiver runs besides storing events (outbox.record_event).

-- name: health_check
select 1;

-- name: outbox_depth
-- Rows per status, through the wrapper a least-privilege receiver may call.
select status, events from public.outbox_depth();
