"""What an operator looks up: the event types, a routes file checked before use, the license."""

from __future__ import annotations

import ast
import configparser
import json
from pathlib import Path

from ipai_bus_lib.core.catalog import CATALOG

from .helpers import cli

ROOT = Path(__file__).resolve().parent.parent
SINK_SECRET = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk="


def test_types_lists_the_fourteen_and_the_readme_shows_the_same_table():
    listed = cli("types")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == len(CATALOG) == 14
    document = json.loads(cli("types", "--json").stdout)
    assert [entry["event_type"] for entry in document] == list(CATALOG)
    table = cli("types", "--markdown").stdout.strip()
    assert table in (ROOT / "README.md").read_text(), "README's table: run ipai-bus types --markdown"


def test_routes_check_shows_what_goes_where_and_what_nothing_takes(tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f'[destinations.hook]\ntype = "http"\nurl = "http://127.0.0.1:9/h"\nsecret = "{SINK_SECRET}"\n'
        '\n[[routes]]\nmatch = "expense.*"\ndestinations = ["hook"]\n'
    )
    checked = cli("routes", "check", str(routes))
    assert checked.returncode == 0, checked.stderr
    assert "destination hook             http" in checked.stdout
    assert "route expense.*" in checked.stdout and "→ hook" in checked.stdout
    assert "no route takes (they would go dead): asset.reserved" in checked.stdout
    assert "restart it after a change" in checked.stdout


def test_routes_check_refuses_a_wrong_file_in_one_line(tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[destinations.hook]\ntype = "http"\nurl = "http://x"\nsecret = "whsec_!"\n')
    refused = cli("routes", "check", str(routes))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "Traceback" not in refused.stderr and "configuration error" in refused.stderr


def test_the_license_file_is_the_one_setup_cfg_and_the_manifests_name():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "LGPL-3.0-or-later"
    text = (ROOT / "LICENSE").read_text()
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
    for manifest in ROOT.glob("addons/*/__manifest__.py"):
        assert ast.literal_eval(manifest.read_text())["license"] == "LGPL-3"


def test_routes_check_takes_a_permanent_set_and_refuses_a_wrong_one(tmp_path):
    """`permanent_statuses` names the answers that end an event at once; 2xx or 429 cannot be."""
    routes = tmp_path / "routes.toml"
    head = (
        f'[destinations.hook]\ntype = "http"\nurl = "http://127.0.0.1:9/h"\nsecret = "{SINK_SECRET}"\n'
    )
    tail = '\n[[routes]]\nmatch = "*"\ndestinations = ["hook"]\n'
    routes.write_text(head + "permanent_statuses = [400, 410]\n" + tail)
    assert cli("routes", "check", str(routes)).returncode == 0
    for wrong in ("[200]", "[429]", '"400"', "[4000]"):
        routes.write_text(head + f"permanent_statuses = {wrong}\n" + tail)
        refused = cli("routes", "check", str(routes))
        assert refused.returncode != 0, wrong
        assert "permanent_statuses must be a list of 4xx/5xx statuses" in refused.stderr, refused.stderr
