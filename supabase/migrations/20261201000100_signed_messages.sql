-- IPAI integration bus: what was signed is what is kept.
--
-- The outbox and event_log hold each payload as jsonb, which keeps every number's value exactly
-- (arbitrary-precision numeric) but not its spelling (1e-400 reads back as 0.000…1). To let anyone
-- re-verify an event's signature from the database alone, the receivers also keep each accepted
-- request as it was signed: the message "{timestamp}.{raw body}" and the signature header's
-- digests. A single event's event_log row names its message by signature_digest; a batch event's
-- by the part before '/' (its position in the batch follows it). Kept like the audit log: never
-- updated, deleted or truncated.

create table integration.signed_message (
    digest      text primary key,  -- sha256 hex of message: the events' signature_digest
    message     bytea not null,    -- "{x-ipai-timestamp}.{body}", byte for byte
    signatures  text not null,     -- the x-ipai-signature digests, comma-separated, as sent
    received_at timestamptz not null default now(),
    constraint signed_message_digest_shape check (digest ~ '^[0-9a-f]{64}$')
);

comment on table integration.signed_message is
    'Each accepted request as it was signed, so an event''s signature can be re-verified from '
    'the database alone (see integration.signed_event). Append-only.';

create trigger signed_message_append_only
    before update or delete on integration.signed_message
    for each row execute function integration.refuse_event_log_change();
create trigger signed_message_no_truncate
    before truncate on integration.signed_message
    for each statement execute function integration.refuse_event_log_change();

alter table integration.signed_message enable row level security;
revoke all on integration.signed_message from public;

create function integration.keep_signed_message(
    p_digest text, p_message bytea, p_signatures text
) returns boolean
    language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform integration.require(p_digest = encode(sha256(p_message), 'hex'),
        'keep_signed_message: digest must be the sha256 of the message');
    perform integration.require(length(p_signatures) between 64 and 4096,
        'keep_signed_message: signatures must be the x-ipai-signature header''s digests');
    insert into integration.signed_message (digest, message, signatures)
    values (p_digest, p_message, p_signatures)
    on conflict (digest) do nothing;
    return found;
end;
$$;

comment on function integration.keep_signed_message(text, bytea, text) is
    'Keeps an accepted request as signed (idempotent on its digest); true when it was new.';

create function public.keep_signed_message(
    p_digest text, p_message bytea, p_signatures text
) returns boolean
    language sql security definer set search_path = pg_catalog, pg_temp
as $$ select integration.keep_signed_message(p_digest, p_message, p_signatures); $$;

revoke all on function integration.keep_signed_message(text, bytea, text) from public;
revoke all on function public.keep_signed_message(text, bytea, text)
    from public, anon, authenticated, service_role;
grant execute on function public.keep_signed_message(text, bytea, text)
    to service_role, ipai_bus_ingest;

-- Every audit row beside the request that carried it: the message to re-verify (HMAC-SHA256 of
-- message under the webhook secret is one of signatures) and where in its body the event is.
create view integration.signed_event with (security_invoker = true) as
select l.event_id,
       l.payload,
       m.message,
       m.signatures,
       nullif(split_part(l.signature_digest, '/', 2), '')::integer as batch_position
  from integration.event_log l
  join integration.signed_message m on m.digest = split_part(l.signature_digest, '/', 1);

comment on view integration.signed_event is
    'Each audited event with the signed request it came in: verify HMAC-SHA256(secret, message) '
    'against signatures, then find the event in the body after the first ''.'' (the body itself, '
    'or its events[batch_position]) and compare its payload.';
