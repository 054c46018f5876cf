-- What the receiver runs besides storing events (outbox.record_event).

-- name: outbox_depth
-- Rows per status, through the wrapper a least-privilege receiver may call.
select status, events from public.outbox_depth();
