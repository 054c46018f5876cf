-- What the migration runner (storage/migrator.py) runs around the migrations themselves.

-- name: lock
-- Any constant will do: it keeps two runners (two `ipai-bus up`) from migrating at once.
select pg_advisory_lock(%(key)s);

-- name: create_ledger
create schema if not exists integration;
create table if not exists integration.schema_migrations (
    version    text primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);

-- name: role_exists
select 1 from pg_roles where rolname = %(role)s;

-- name: savepoint
-- Roles are cluster-wide: another database's runner may create one first.
savepoint create_role;

-- name: rollback_to_savepoint
rollback to savepoint create_role;

-- name: create_nologin_role
-- {role} is filled with psycopg2.sql.Identifier.
create role {role} nologin;

-- name: recorded_checksums
select version, checksum from integration.schema_migrations;

-- name: has_supabase_ledger
-- Applied by `supabase db push` instead: Supabase keeps its own ledger.
select to_regclass('supabase_migrations.schema_migrations') is not null;

-- name: supabase_versions
select version from supabase_migrations.schema_migrations;

-- name: record_migration
insert into integration.schema_migrations (version, name, checksum)
values (%(version)s, %(name)s, %(checksum)s);
