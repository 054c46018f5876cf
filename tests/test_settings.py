"""Every setting is declared once, in ipai_bus_lib.core.settings.SETTINGS: the README's configuration
table lists exactly those variables with those defaults, and each one reaches Settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipai_bus_lib.core.errors import ConfigurationError
from ipai_bus_lib.core.settings import SETTINGS, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> dict[str, str]:
    """{variable: default as the README shows it} from the configuration table."""
    text = README.read_text()
    table = text[text.index("| variable | default | meaning |") :].split("\n\n", 1)[0]
    shown: dict[str, str] = {}
    for row in table.splitlines()[2:]:
        names_cell, defaults_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", names_cell)
        defaults = [d.strip() for d in re.split(r" / |, ", defaults_cell)]
        if len(defaults) != len(names):
            defaults = [defaults_cell] * len(names)
        shown.update(zip(names, (d.replace("`", "") for d in defaults)))
    return shown


def expected_default(setting) -> str:
    if setting.shown_default is not None:
        return setting.shown_default.replace("`", "")
    if setting.default is None:
        return "—"
    if isinstance(setting.default, float) and setting.default.is_integer():
        return str(int(setting.default))
    return str(setting.default)


def test_the_readme_lists_every_setting_and_nothing_else():
    documented = readme_table()
    declared = {setting.variable for setting in SETTINGS}
    assert set(documented) == declared, (
        f"in the README only: {set(documented) - declared}; declared only: {declared - set(documented)}"
    )


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.variable)
def test_the_readme_shows_each_settings_default(setting):
    assert readme_table()[setting.variable] == expected_default(setting)


def test_unset_variables_give_the_declared_defaults_and_set_ones_are_read():
    defaults = Settings.from_env({})
    for setting in SETTINGS:
        assert getattr(defaults, setting.field) == setting.default, setting.variable
    custom = Settings.from_env(
        {
            "IPAI_ROUTER_BATCH_SIZE": "40",
            "IPAI_ROUTER_LISTEN": "off",
            "IPAI_RETRY_DELAYS": "1,2",
            "SMTP_PORT": "2525",
            "ODOO_BASE_URL": "https://erp.example.ph/",
        }
    )
    assert (
        custom.router_batch_size,
        custom.router_listen,
        custom.retry_delays,
        custom.smtp_port,
        custom.odoo_base_url,
    ) == (40, False, (1, 2), 2525, "https://erp.example.ph")


@pytest.mark.parametrize(
    "variable, raw",
    [
        ("IPAI_ROUTER_BATCH_SIZE", "0"),
        ("IPAI_RECEIVER_PORT", "http"),
        ("IPAI_ROUTER_POLL_SECONDS", "-1"),
        ("IPAI_ROUTER_LISTEN", "maybe"),
        ("IPAI_RETRY_DELAYS", "30,soon"),
        ("SMTP_SECURITY", "ssl3"),
        ("IPAI_WEBHOOK_SECRET", "short"),
    ],
)
def test_a_bad_value_names_its_variable(variable, raw):
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: raw})
    assert caught.value.setting == variable and variable in str(caught.value)
