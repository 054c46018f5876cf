"""The SQL statements the library runs, kept in .sql files beside it (one file per concern),
each statement under a ``-- name: <name>`` line, loaded by name (as procrastinate does).

The schema and the functions themselves live in the migrations (read them whole in
supabase/schema.sql); these are the statements that call or read them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def load(concern: str) -> Mapping[str, str]:
    """The statements of ``sql/<concern>.sql`` by name; raises KeyError for an unknown name."""
    text = resources.files(__package__).joinpath("sql").joinpath(f"{concern}.sql").read_text()
    parts = _NAME_LINE.split(text)[1:]
    statements = {}
    for name, body in zip(parts[::2], parts[1::2]):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        statements[name] = "\n".join(lines).strip().rstrip(";")
    return MappingProxyType(statements)
