-- What the embedded PostgreSQL (storage/embedded.py) runs to give each part its login role.
-- {login} and {member_of} are filled with psycopg2.sql.Identifier.

-- name: role_exists
select 1 from pg_roles where rolname = %(role)s;

-- name: create_login
create role {login} login password %(password)s;

-- name: alter_login
alter role {login} login password %(password)s;

-- name: grant_membership
grant {member_of} to {login};
