-- An operator may end a destination's pause at once (`ipai-bus resume DESTINATION`) instead of
-- waiting out its circuit breaker: the request is kept on the destination's state, audited, and
-- every router that holds the breaker open lets a trial delivery through when it next meets it.
alter table integration.destination_state add column resume_requested_at timestamptz;
comment on column integration.destination_state.resume_requested_at is
    'When an operator last asked to resume this destination now; routers whose breaker opened before it let a trial delivery through.';

alter table integration.operator_actions drop constraint operator_actions_action_known;
alter table integration.operator_actions add constraint operator_actions_action_known
    check (action in ('retry', 'purge', 'resume'));
comment on table integration.operator_actions is
    'Audit trail of operator actions: retries (which events, why), purges and resumed destinations.';

create function integration.resume_destination(p_destination text, p_actor text,
                                               p_reason text default null)
returns boolean
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform integration.require(length(btrim(p_actor)) between 1 and 200,
        'resume_destination: actor must name who resumes');
    update integration.destination_state
       set resume_requested_at = now(), updated_at = now()
     where destination = p_destination and state = 'open';
    if not found then
        return false;  -- not paused: nothing to resume, nothing recorded
    end if;
    insert into integration.operator_actions (action, actor, reason, detail)
    values ('resume', p_actor, p_reason, jsonb_build_object('destination', p_destination));
    return true;
end;
$$;
comment on function integration.resume_destination(text, text, text) is
    'Asks every router to try a paused destination now (its next delivery is the trial); audited. False when it is not paused.';

revoke all on function integration.resume_destination(text, text, text) from public;
grant execute on function integration.resume_destination(text, text, text) to ipai_bus_operator;
