-- IPAI integration bus: what readiness checks and the operator console read.

-- ---------------------------------------------------------------------------------------------
-- applied_migrations: the ledger's versions, for /readyz ("migrations current") on a receiver
-- that may read nothing else. Versions applied by `supabase db push` count too.
-- ---------------------------------------------------------------------------------------------

create function public.applied_migrations() returns table (version text)
    language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    if to_regclass('integration.schema_migrations') is not null then  -- `ipai-bus migrate`'s
        return query execute 'select version from integration.schema_migrations';
    end if;
    if to_regclass('supabase_migrations.schema_migrations') is not null then
        return query execute 'select version::text from supabase_migrations.schema_migrations';
    end if;
end;
$$;

revoke all on function public.applied_migrations() from public, anon;
grant execute on function public.applied_migrations()
    to service_role, authenticated, ipai_bus_ingest;

-- ---------------------------------------------------------------------------------------------
-- The console pages through the append-only event_log (newest first) and filters it by record;
-- an index there costs one insert per event and is never updated.
-- ---------------------------------------------------------------------------------------------

create index event_log_record_idx
    on integration.event_log (aggregate_id, received_at desc);
create index event_log_source_idx on integration.event_log (source, received_at desc);
