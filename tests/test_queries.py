"""The SQL the library runs lives in one place per concern: ipai_bus_lib/storage/sql/*.sql, by name."""

from __future__ import annotations

import re
from pathlib import Path

from ipai_bus_lib.storage.queries import load

LIBRARY = Path(__file__).resolve().parent.parent / "ipai_bus_lib"
# Modules that are themselves the one place of their concern's statements.
STATEMENT_MODULES = {"outbox.py", "migrator.py", "embedded.py"}


def test_no_statement_is_written_inline_outside_its_place():
    inline = re.compile(r"execute\(\s*f?[\"']")
    found = [
        f"{path.relative_to(LIBRARY)}:{number}"
        for path in LIBRARY.rglob("*.py")
        if path.name not in STATEMENT_MODULES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if inline.search(line)
    ]
    assert not found, "SQL written inline (put it in ipai_bus_lib/storage/sql/): " + ", ".join(found)


def test_every_named_statement_is_used_somewhere():
    sources = "\n".join(path.read_text() for path in LIBRARY.rglob("*.py"))
    for concern in ("operations", "receiver", "router"):
        for name in load(concern):
            assert f'"{name}"' in sources, f"{concern}.sql: {name} is never run"
