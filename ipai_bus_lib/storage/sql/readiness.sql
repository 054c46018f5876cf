-- What /readyz and `ipai-bus route` ask of a database before they rely on it.

-- name: has_applied_migrations
select to_regprocedure('public.applied_migrations()') is not null;

-- name: applied_migrations
select version from public.applied_migrations();
