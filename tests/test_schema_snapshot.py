"""supabase/schema.sql is what the migrations, applied in order, add up to."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "schema_snapshot.py"


def _snapshot_module():
    spec = importlib.util.spec_from_file_location("schema_snapshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_snapshot_equals_the_migrations_applied_in_order(bus_url):
    snapshot = _snapshot_module()
    live = snapshot.dump(bus_url)
    kept = snapshot.SNAPSHOT.read_text()
    diff = "".join(
        difflib.unified_diff(
            kept.splitlines(True),
            live.splitlines(True),
            "supabase/schema.sql",
            "migrations applied",
            n=1,
        )
    )
    assert live == kept, (
        "supabase/schema.sql is out of date: run "
        f"`.venv/bin/python scripts/schema_snapshot.py`\n{diff[:4000]}"
    )
