"""A PostgreSQL shaped like a Supabase project's, for the tests and for `make test` against it.

The essentials of supabase/postgres's init scripts (migrations/db/init-scripts and the
"demote postgres" migration): the bootstrap superuser is `supabase_admin`; `postgres`, which owns
the project's objects and applies its migrations, is not a superuser (CREATEROLE, CREATEDB,
REPLICATION, BYPASSRLS); `anon`, `authenticated` and `service_role` are NOLOGIN (service_role
BYPASSRLS) and `authenticator`, the role PostgREST logs in as, is LOGIN NOINHERIT and may become
each of them. Objects `postgres` creates in `public` are granted to the API roles by default, as
on Supabase: a function the migrations forget to revoke is callable through PostgREST.

    python -m tests.supabase_like DIR   # starts one in DIR and prints DATABASE_URL for `postgres`
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2

from ipai_bus_lib.storage.embedded import EmbeddedPostgres

OWNER = "postgres"
AUTHENTICATOR = "authenticator"
API_ROLES = ("anon", "authenticated", "service_role")

_ROLES_SQL = """
create role postgres login createrole createdb replication bypassrls password %(owner)s;
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit password %(authenticator)s;
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;
grant pg_signal_backend, pg_read_all_data to postgres;
"""

_PROJECT_SQL = """
grant usage on schema public to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on sequences to anon, authenticated, service_role;
"""


@dataclass(frozen=True)
class SupabaseLike:
    """A running Supabase-shaped cluster: its admin (superuser) URL and role passwords."""

    cluster: EmbeddedPostgres
    owner_password: str
    authenticator_password: str

    def url(self, role: str, password: str, database: str = "postgres") -> str:
        port = self.cluster.port()
        return f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"

    def owner_url(self, database: str = "postgres") -> str:
        """`postgres`, the non-superuser owner: what `supabase db push` and DATABASE_URL use."""
        return self.url(OWNER, self.owner_password, database)

    def authenticator_url(self, database: str) -> str:
        return self.url(AUTHENTICATOR, self.authenticator_password, database)

    def admin_url(self, database: str = "postgres") -> str:
        return self.cluster.url(database)

    def create_project_database(self, name: str) -> str:
        """A database owned by `postgres` with Supabase's grants in `public`; its owner URL."""
        _execute(self.admin_url(), f'create database "{name}" owner {OWNER}')
        _execute(self.owner_url(name), _PROJECT_SQL)
        return self.owner_url(name)


def start(home: Path) -> SupabaseLike:
    """Start (or reuse) a Supabase-shaped cluster under ``home``."""
    cluster = EmbeddedPostgres(home, settings={"fsync": "off"}, superuser="supabase_admin")
    cluster.ensure_running()
    passwords_file = home / "role-passwords"
    if passwords_file.exists():
        owner, authenticator = passwords_file.read_text().split()
    else:
        owner, authenticator = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        _execute(cluster.url(), _ROLES_SQL, {"owner": owner, "authenticator": authenticator})
        _execute(cluster.url("template1"), _PROJECT_SQL)
        passwords_file.write_text(f"{owner} {authenticator}\n")
        passwords_file.chmod(0o600)
    return SupabaseLike(cluster, owner, authenticator)


def _execute(url: str, statements: str, parameters: dict | None = None) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(statements, parameters)
    finally:
        conn.close()


if __name__ == "__main__":
    home = Path(sys.argv[1] if len(sys.argv) > 1 else "build/supabase-like").resolve()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)
    print(start(home).owner_url())
