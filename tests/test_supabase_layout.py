"""supabase/ as the Supabase CLI reads it: its config keys, a migrations folder of migrations only,
seeding settled, secrets by reference only, and the bus's schema not exposed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

SUPABASE = Path(__file__).resolve().parent.parent / "supabase"
CONFIG = tomllib.loads((SUPABASE / "config.toml").read_text())
# The sections and keys of the CLI's `supabase init` template that this project sets.
TEMPLATE_KEYS = {
    "": {"project_id"},
    "api": {"enabled", "port", "schemas", "extra_search_path", "max_rows"},
    "db": {"port", "shadow_port", "major_version"},
    "db.migrations": {"enabled", "schema_paths"},
    "db.seed": {"enabled", "sql_paths"},
    "studio": {"enabled", "port", "api_url"},
    "auth": {"enabled", "site_url", "enable_signup"},
    "auth.email": {"enable_signup"},
    "edge_runtime": {"enabled", "policy", "inspector_port", "deno_version"},
    "functions.odoo-webhook": {"enabled", "verify_jwt", "entrypoint", "import_map"},
}


def sections(document: dict, prefix: str = "") -> dict[str, set[str]]:
    found: dict[str, set[str]] = {prefix: set()}
    for key, value in document.items():
        if isinstance(value, dict) and key != "secrets":
            found.update(sections(value, f"{prefix}.{key}" if prefix else key))
        elif isinstance(value, dict):
            found[f"{prefix}.{key}"] = set(value)
        else:
            found[prefix].add(key)
    return found


def test_every_key_is_one_the_cli_template_has():
    for section, keys in sections(CONFIG).items():
        if section == "edge_runtime.secrets" or not keys:  # secrets are free-form; [functions] a parent
            continue
        assert section in TEMPLATE_KEYS, f"[{section}] is not a section of the CLI's config"
        assert keys <= TEMPLATE_KEYS[section], f"[{section}] {keys - TEMPLATE_KEYS[section]}"


def test_the_migrations_folder_holds_migrations_only():
    names = sorted(path.name for path in (SUPABASE / "migrations").iterdir())
    assert names and all(re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", name) for name in names), names


def test_the_bus_schema_is_not_exposed_and_nobody_signs_up():
    assert "integration" not in CONFIG["api"]["schemas"]
    assert CONFIG["auth"]["enable_signup"] is False
    assert CONFIG["db"]["major_version"] >= 15, "security_invoker views need PostgreSQL 15"


def test_seeding_is_settled_and_secrets_are_references_only():
    seed = CONFIG["db"]["seed"]
    assert seed["enabled"] is False or all(
        (SUPABASE / path).exists() for path in seed.get("sql_paths", [])
    )
    secrets = CONFIG["edge_runtime"]["secrets"]
    assert set(secrets) == {"IPAI_WEBHOOK_SECRET", "IPAI_DB_URL"}
    assert all(re.fullmatch(r"env\([A-Z_]+\)", value) for value in secrets.values())
    example = (SUPABASE / "functions" / ".env.example").read_text()
    assert re.search(r"^IPAI_WEBHOOK_SECRET=$", example, re.MULTILINE), "no secret value committed"
