"""Where the bus database is: DATABASE_URL, else the embedded PostgreSQL under IPAI_BUS_HOME."""

from __future__ import annotations

from typing import Any

from ..core.errors import DatabaseUnavailable
from ..core.settings import Settings


def database_url(settings: Settings) -> str:
    """DATABASE_URL when set, else the embedded cluster's URL (started if it is not running)."""
    if settings.database_url:
        return settings.database_url
    return embedded_cluster(settings).ensure_running()


def running_database_url(settings: Settings) -> str:
    """As database_url, but never starts anything: operator commands only look."""
    if settings.database_url:
        return settings.database_url
    cluster = embedded_cluster(settings)
    if not cluster.is_running():
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL ({cluster.data_dir}) is not running; start the bus with "
            "`ipai-bus up` (or `ipai-bus db start`), or set DATABASE_URL"
        )
    return cluster.url()


def embedded_cluster(settings: Settings) -> Any:  # EmbeddedPostgres: the server extra, lazily
    from .embedded import EmbeddedPostgres, default_home

    return EmbeddedPostgres(default_home(settings.home))
