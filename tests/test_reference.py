"""What an operator looks up: the event types, a routes file checked before use, the license."""

from __future__ import annotations

import ast
import base64
import configparser
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from ipai_bus_lib.core.catalog import CATALOG
from ipai_bus_lib.core.signing import standard_webhooks_key

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


# Destination secrets a verifier could read otherwise than the bus signs with, and why.
AMBIGUOUS_SECRETS = {
    "hex, no prefix": ("ab12" * 16, "starts with whsec_"),
    "base64, no prefix": ("dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk=", "starts with whsec_"),
    "padding left out": ("whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk", "followed by base64"),
    "trailing bits set": ("whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXl=", "canonical form"),
    "URL-safe alphabet": ("whsec_-_-_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1r", "followed by base64"),
    "a space inside": ("whsec_dGVzdC1zdGFuZGFy ZC13ZWJob29rcy1rZXk=", "followed by base64"),
    "16-byte key": ("whsec_MDEyMzQ1Njc4OWFiY2RlZg==", "16 bytes"),
    "65-byte key": ("whsec_" + base64.b64encode(b"k" * 65).decode(), "65 bytes"),
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS_SECRETS))
def test_routes_check_refuses_a_secret_a_verifier_could_read_otherwise(tmp_path, case):
    secret, why = AMBIGUOUS_SECRETS[case]
    routes = tmp_path / "routes.toml"
    text = (
        f'[destinations.hook]\ntype = "http"\nurl = "http://x"\nsecret = "{secret}"\n\n'
        '[[routes]]\nmatch = "*"\ndestinations = ["hook"]\n'
    )
    routes.write_text(text)
    refused = cli("routes", "check", str(routes))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("ipai-bus: configuration error: destination hook: ")
    assert why in refused.stderr and "ipai-bus secret new --whsec" in refused.stderr
    assert secret not in refused.stderr, "the secret itself is never printed"
    assert routes.read_text() == text


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=24, max_size=64), position=st.integers(min_value=0), other=st.characters())
def test_each_accepted_key_has_exactly_one_spelling(key, position, other):
    """What the bus accepts, every Standard Webhooks library reads as the same key: no other
    spelling of a key is accepted, so no verifier can be handed one it decodes differently."""
    secret = "whsec_" + base64.b64encode(key).decode()
    assert standard_webhooks_key(secret) == key
    assert Webhook(secret)._whsecret == key
    index = len("whsec_") + position % (len(secret) - len("whsec_"))
    changed = secret[:index] + other + secret[index + 1 :]
    if changed == secret:
        return
    try:
        assert standard_webhooks_key(changed) != key
    except ValueError:
        pass  # refused: fine


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
