-- IPAI integration bus: a role for each part, and nothing for the API roles.
--
-- Supabase hands `anon` to every visitor, `authenticated` to every signed-up user and
-- `service_role` to every server-side script. None of them reads or writes an `integration`
-- table any more: the seed let `authenticated` read every finance payload, and `service_role`
-- write rows around the functions (a second row for one key, no audit copy, a forged event_log
-- entry). Every write now goes through the functions, which keep idempotency, the audit copy and
-- per-record order whoever calls them.
--
-- The parts of the bus get one NOLOGIN role each; a deployment creates a LOGIN role that is a
-- member of it (the README lists them). Nothing at runtime needs the owner:
--   ipai_bus_ingest    the receivers: store events and their signed requests; readiness, depth
--   ipai_bus_router    `ipai-bus route`: claim, settle, record attempts and breaker state
--   ipai_bus_operator  the console and `ipai-bus status/events/retry/purge`: read all, retry, purge
--   ipai_bus_poller    a worker that claims through the public functions (an n8n schedule)
-- The queue functions run as their owner (SECURITY DEFINER, fixed search_path), so a part needs
-- only EXECUTE on its own functions and SELECT on what it shows; the audit tables stay
-- append-only against every one of them (no part owns a table, so none can disable a trigger).

do $$
declare
    v_role text;
begin
    foreach v_role in array array['ipai_bus_ingest', 'ipai_bus_router', 'ipai_bus_operator',
                                  'ipai_bus_poller'] loop
        if not exists (select 1 from pg_roles where rolname = v_role) then
            execute format('create role %I nologin', v_role);
        end if;
    end loop;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- The API roles: nothing of the bus but the public functions granted to service_role.
-- ---------------------------------------------------------------------------------------------

drop policy outbox_service_role_all on integration.outbox;
drop policy outbox_authenticated_read on integration.outbox;
drop policy event_log_service_role_all on integration.event_log;
drop policy event_log_authenticated_read on integration.event_log;
drop policy delivery_attempts_service_role_all on integration.delivery_attempts;
drop policy delivery_attempts_authenticated_read on integration.delivery_attempts;
drop policy destination_state_service_role_all on integration.destination_state;
drop policy destination_state_authenticated_read on integration.destination_state;
drop policy operator_actions_service_role_all on integration.operator_actions;
drop policy operator_actions_authenticated_read on integration.operator_actions;
drop policy event_key_service_role_all on integration.event_key;

revoke all on all tables in schema integration from public, anon, authenticated, service_role;
revoke all on all sequences in schema integration from public, anon, authenticated, service_role;
revoke all on all functions in schema integration from public, anon, authenticated, service_role;
revoke usage on schema integration from public, anon, authenticated, service_role;
alter table integration.ingest_batch enable row level security;

revoke all on function public.outbox_depth(), public.applied_migrations()
    from public, anon, authenticated;

-- ---------------------------------------------------------------------------------------------
-- insert_outbox_event writes the audit copy itself, as insert_outbox_batch does: whoever calls
-- it (a receiver, a script with service_role), no event is stored without its copy. A separate
-- insert_event_log call after it finds the copy there and changes nothing.
-- ---------------------------------------------------------------------------------------------

create or replace function integration.insert_outbox_event(
    p_event_type       text,
    p_aggregate_type   text,
    p_aggregate_id     text,
    p_payload          jsonb,
    p_idempotency_key  text,
    p_source           text default 'odoo',
    p_occurred_at      timestamptz default null,
    p_signature_digest text default null,
    p_max_attempts     integer default 4
) returns table (event_id uuid, duplicate boolean)
    language plpgsql security definer
    set plan_cache_mode = force_custom_plan
    set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
begin
    perform integration.require(p_event_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$'
                                    and length(p_event_type) <= 255,
        'insert_outbox_event: event_type must be lowercase dotted words, e.g. expense.submitted');
    perform integration.require(length(p_aggregate_type) between 1 and 255,
        'insert_outbox_event: aggregate_type must be 1-255 characters');
    perform integration.require(length(p_aggregate_id) between 1 and 255,
        'insert_outbox_event: aggregate_id must be 1-255 characters');
    perform integration.require(jsonb_typeof(p_payload) = 'object',
        'insert_outbox_event: payload must be a JSON object');
    perform integration.require(p_idempotency_key ~ '^[ -~]{1,255}$',
        'insert_outbox_event: idempotency_key must be 1-255 printable ASCII characters');
    perform integration.require(p_source ~ '^[A-Za-z0-9_.-]{1,64}$',
        'insert_outbox_event: source must be 1-64 characters of [A-Za-z0-9_.-]');
    perform integration.require(p_max_attempts between 1 and 100,
        'insert_outbox_event: max_attempts must be between 1 and 100');

    begin
        insert into integration.event_key as k
            (source, idempotency_key, signature_digest, event_id)
        values (p_source, p_idempotency_key, p_signature_digest, gen_random_uuid())
        on conflict (source, idempotency_key) do nothing
        returning k.event_id into v_id;
    exception when unique_violation then
        -- The signature digest's index. When two byte-identical requests race, the loser may
        -- meet the winner's signature before its key; each statement of this function sees what
        -- committed before it started, so the winner's key row is visible here. Only a signature
        -- accepted under another key is a replay.
        select k.event_id into v_id from integration.event_key k
         where k.source = p_source and k.idempotency_key = p_idempotency_key
           and k.signature_digest is not distinct from p_signature_digest;
        if v_id is null then
            raise exception 'replayed signature' using errcode = 'IB001',
                detail = 'a request with this signature was already accepted under another idempotency key';
        end if;
        return query select v_id, true;
        return;
    end;

    if v_id is not null then
        insert into integration.outbox
            (id, source, event_type, aggregate_type, aggregate_id, payload, idempotency_key,
             signature_digest, occurred_at, max_attempts)
        values (v_id, p_source, p_event_type, p_aggregate_type, p_aggregate_id, p_payload,
                p_idempotency_key, p_signature_digest, p_occurred_at, p_max_attempts);
        insert into integration.event_log
            (event_id, source, event_type, aggregate_type, aggregate_id, payload,
             idempotency_key, signature_digest, occurred_at)
        values (v_id, p_source, p_event_type, p_aggregate_type, p_aggregate_id, p_payload,
                p_idempotency_key, p_signature_digest, p_occurred_at);
        perform pg_notify('integration_outbox', v_id::text);
        return query select v_id, false;
        return;
    end if;

    return query
        select k.event_id, true from integration.event_key k
        where k.source = p_source and k.idempotency_key = p_idempotency_key;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- The queue functions run as their owner: a part is given EXECUTE, never the tables beneath.
-- ---------------------------------------------------------------------------------------------

alter function integration.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz,
                                               text, integer)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.insert_outbox_batch(text, text, jsonb, integer)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.insert_event_log(uuid)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.claim_outbox(text, integer, integer)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.ack_outbox(uuid[], text)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.fail_outbox(uuid, text, text, integer[], timestamptz, boolean)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.release_outbox(uuid[], text, timestamptz)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.extend_leases(uuid[], text, integer)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.record_delivery_attempts(text, uuid[], integer[], text[], text[],
                                                    integer[], text[], real[])
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.retry_events(uuid[], text, text)
    security definer set search_path = pg_catalog, pg_temp;
alter function integration.purge_completed(interval, text)
    security definer set search_path = pg_catalog, pg_temp;

grant usage on schema integration
    to ipai_bus_ingest, ipai_bus_router, ipai_bus_operator, ipai_bus_poller;

-- ---------------------------------------------------------------------------------------------
-- ipai_bus_ingest: the receivers (Python and the Edge Function).
-- ---------------------------------------------------------------------------------------------

grant execute on function
    public.insert_outbox_event(text, text, text, jsonb, text, text, timestamptz, text, integer),
    public.insert_outbox_batch(text, text, jsonb, integer),
    public.insert_event_log(uuid),
    public.keep_signed_message(text, bytea, text),
    public.outbox_depth(),
    public.applied_migrations()
    to ipai_bus_ingest;

-- ---------------------------------------------------------------------------------------------
-- ipai_bus_router: claims and settles; reads what it measures; writes its attempts and breakers.
-- ---------------------------------------------------------------------------------------------

grant execute on function
    integration.claim_outbox(text, integer, integer),
    integration.ack_outbox(uuid[], text),
    integration.fail_outbox(uuid, text, text, integer[], timestamptz, boolean),
    integration.release_outbox(uuid[], text, timestamptz),
    integration.extend_leases(uuid[], text, integer),
    integration.record_delivery_attempts(text, uuid[], integer[], text[], text[], integer[],
                                         text[], real[]),
    public.outbox_depth(),
    public.applied_migrations()
    to ipai_bus_router;
grant select on integration.outbox, integration.delivery_attempts, integration.destination_state
    to ipai_bus_router;
grant insert on integration.delivery_attempts to ipai_bus_router;
grant insert, update on integration.destination_state to ipai_bus_router;
grant usage on all sequences in schema integration to ipai_bus_router;

create policy outbox_router_read on integration.outbox
    for select to ipai_bus_router using (true);
create policy delivery_attempts_router_read on integration.delivery_attempts
    for select to ipai_bus_router using (true);
create policy delivery_attempts_router_write on integration.delivery_attempts
    for insert to ipai_bus_router with check (true);
create policy destination_state_router_all on integration.destination_state
    for all to ipai_bus_router using (true) with check (true);

-- ---------------------------------------------------------------------------------------------
-- ipai_bus_operator: the console and the CLI's operator commands. Reads everything it shows,
-- changes events only through retry_events and purge_completed (both audited).
-- ---------------------------------------------------------------------------------------------

grant execute on function
    integration.retry_events(uuid[], text, text),
    integration.purge_completed(interval, text),
    public.outbox_depth(),
    public.applied_migrations()
    to ipai_bus_operator;
grant select on integration.outbox, integration.event_log, integration.delivery_attempts,
    integration.destination_state, integration.operator_actions, integration.signed_message,
    integration.signed_event
    to ipai_bus_operator;

create policy outbox_operator_read on integration.outbox
    for select to ipai_bus_operator using (true);
create policy event_log_operator_read on integration.event_log
    for select to ipai_bus_operator using (true);
create policy delivery_attempts_operator_read on integration.delivery_attempts
    for select to ipai_bus_operator using (true);
create policy destination_state_operator_read on integration.destination_state
    for select to ipai_bus_operator using (true);
create policy operator_actions_operator_read on integration.operator_actions
    for select to ipai_bus_operator using (true);
create policy signed_message_operator_read on integration.signed_message
    for select to ipai_bus_operator using (true);

-- ---------------------------------------------------------------------------------------------
-- ipai_bus_poller: the seed's pattern (claim from a schedule, ack or fail each event), through
-- the public functions only. It sees the events it claims and nothing else.
-- ---------------------------------------------------------------------------------------------

grant execute on function
    public.claim_outbox(text, integer, integer),
    public.ack_outbox(uuid[], text),
    public.fail_outbox(uuid, text, text, integer[], timestamptz, boolean),
    public.release_outbox(uuid[], text, timestamptz),
    public.extend_leases(uuid[], text, integer)
    to ipai_bus_poller;
