-- IPAI integration bus, operations: what operators do to the outbox (retry, purge) happens in SQL
-- functions that record who did it, when, to which events and why.

create table integration.operator_actions (
    id          bigint generated always as identity primary key,
    action      text not null,
    actor       text not null,
    reason      text,
    event_ids   uuid[] not null default '{}',
    detail      jsonb not null default '{}',
    acted_at    timestamptz not null default now(),
    constraint operator_actions_action_known check (action in ('retry', 'purge'))
);

comment on table integration.operator_actions is
    'Audit trail of operator actions on the outbox: retries (which events, why) and purges.';

create index operator_actions_time_idx on integration.operator_actions (acted_at);

-- Puts failed or dead events back to pending with their attempts reset. Events in other states
-- are left alone (a pending, processing or completed event needs no retry) and not counted.
create function integration.retry_events(p_ids uuid[], p_actor text, p_reason text default null)
    returns integer
    language plpgsql
    set plan_cache_mode = force_custom_plan
as $$
declare
    v_ids uuid[];
begin
    perform integration.require(p_ids is not null, 'retry_events: ids are required');
    perform integration.require(length(btrim(p_actor)) between 1 and 200,
        'retry_events: actor must name who retries');
    with retried as (
        update integration.outbox o
           set status = 'pending', attempts = 0, available_at = now(), locked_at = null,
               locked_by = null, lease_expires_at = null, updated_at = now()
         where o.id = any(p_ids) and o.status in ('failed', 'dead')
        returning o.id
    )
    select coalesce(array_agg(id), '{}') into v_ids from retried;
    if cardinality(v_ids) > 0 then
        insert into integration.operator_actions (action, actor, reason, event_ids)
        values ('retry', p_actor, p_reason, v_ids);
        perform pg_notify('integration_outbox', 'retry');
    end if;
    return cardinality(v_ids);
end;
$$;

-- Deletes completed outbox rows older than p_older_than. The event_log keeps every event; it is
-- never purged.
create function integration.purge_completed(p_older_than interval, p_actor text)
    returns integer
    language plpgsql
as $$
declare
    v_count integer;
begin
    perform integration.require(p_older_than >= interval '1 hour',
        'purge_completed: older_than must be at least 1 hour');
    perform integration.require(length(btrim(p_actor)) between 1 and 200,
        'purge_completed: actor must name who purges');
    delete from integration.outbox o
     where o.status = 'completed' and o.completed_at < now() - p_older_than;
    get diagnostics v_count = row_count;
    insert into integration.operator_actions (action, actor, detail)
    values ('purge', p_actor, jsonb_build_object('older_than', p_older_than::text,
                                                 'deleted', v_count));
    return v_count;
end;
$$;

revoke all on function integration.retry_events(uuid[], text, text),
    integration.purge_completed(interval, text) from public;
grant execute on function integration.retry_events(uuid[], text, text),
    integration.purge_completed(interval, text) to service_role;

alter table integration.operator_actions enable row level security;
create policy operator_actions_service_role_all on integration.operator_actions
    for all to service_role using (true) with check (true);
create policy operator_actions_authenticated_read on integration.operator_actions
    for select to authenticated using (true);
revoke all on integration.operator_actions from public, anon;
grant select, insert on integration.operator_actions to service_role;
grant select on integration.operator_actions to authenticated;
