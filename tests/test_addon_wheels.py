"""The addons packaged as OCA ships them: a wheel each (whool), installed with the library into
Odoo's Python, and found by real Odoo 18 with nothing added to its addons path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psycopg2
import pytest

from .test_odoo_addons import (
    ADDONS,
    ODOO_PATH,
    ODOO_PYTHON,
    ODOO_ROLE,
    ODOO_ROLE_PASSWORD,
    REPO,
    odoo_command,
    odoo_database,  # noqa: F401 - fixture
    odoo_ready,  # noqa: F401 - fixture
    pytestmark,  # noqa: F401 - the same skip when Odoo is not there
)


def run(*command: str, timeout: int = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The library's wheel and one per addon, built as a release would build them."""
    dist = tmp_path_factory.mktemp("dist")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, and two
    # test runs at once must not build in the same place.
    source = tmp_path_factory.mktemp("source") / "ipai-bus"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "*.egg-info",
            "__pycache__",
            ".mypy_cache",
            ".ruff_cache",
            ".hypothesis",
            "node_modules",
        ),
    )
    pip = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")
    run(*pip, "-w", str(dist), str(source))
    for addon in ADDONS:
        run(*pip, "-w", str(dist), str(REPO / "addons" / addon))
    return dist


def test_each_addon_wheel_is_named_and_versioned_as_oca_names_them(wheels):
    names = sorted(path.name for path in wheels.glob("odoo_addon_*.whl"))
    assert [name.split("-")[0] for name in names] == [f"odoo_addon_{a}" for a in ADDONS]
    for addon, name in zip(ADDONS, names):
        manifest = (REPO / "addons" / addon / "__manifest__.py").read_text()
        version = name.split("-")[1]
        assert f'"version": "{".".join(version.split(".")[:5])}"' in manifest, name
    bridge = next(wheels.glob("odoo_addon_ipai_enterprise_bridge-*.whl"))
    listing = run(sys.executable, "-m", "zipfile", "-l", str(bridge)).stdout
    assert "odoo/addons/ipai_enterprise_bridge/__manifest__.py" in listing
    assert "odoo/addons/ipai_enterprise_bridge/README.rst" in listing


def test_installed_wheels_are_found_by_odoo_with_nothing_added_to_the_addons_path(
    wheels,
    odoo_ready,  # noqa: F811
    odoo_database,  # noqa: F811
    tmp_path,
    server_url,
):
    # A Python of its own that sees Odoo's requirements (from Odoo's virtual environment) but
    # not this checkout: the library and the addons come from the wheels alone.
    venv = tmp_path / "venv"
    run(str(ODOO_PYTHON), "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    odoo_site = run(str(ODOO_PYTHON), "-c", _PURELIB).stdout.strip()
    own_site = Path(run(str(python), "-c", _PURELIB).stdout.strip())
    (own_site / "odoo-requirements.pth").write_text(odoo_site + "\n")
    run(
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--force-reinstall",
        *map(str, sorted(wheels.glob("*.whl"))),
    )
    # odoo==18.0.* is met by the Odoo tree itself (not a pip distribution here).
    found = (
        "import importlib.util as u; print(u.find_spec('ipai_bus_lib').origin);"
        " print(u.find_spec('odoo.addons.ipai_finance_ppm').origin)"
    )
    located = run(str(python), "-c", found, cwd=ODOO_PATH).stdout.split()  # odoo: its tree
    assert all(path.startswith(str(own_site)) for path in located), located

    result = subprocess.run(
        odoo_command(
            odoo_database,
            "server",
            "-i",
            ",".join(ADDONS),
            "--stop-after-init",
            "--without-demo=all",
            "--log-level=warn",
            python=python,
            addons=(ODOO_PATH / "addons",),  # Odoo's own addons only
        ),
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ODOO_PATH,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    conn = psycopg2.connect(
        host=odoo_database["host"],
        port=odoo_database["port"],
        dbname=odoo_database["name"],
        user=ODOO_ROLE,
        password=ODOO_ROLE_PASSWORD,
    )
    with conn.cursor() as cursor:
        cursor.execute(
            "select name, state, latest_version from ir_module_module where name = any(%s)"
            " order by name",
            (list(ADDONS),),
        )
        installed = cursor.fetchall()
    conn.close()
    assert [(name, state) for name, state, _ in installed] == [
        (addon, "installed") for addon in ADDONS
    ], installed
    print(f"\nwheels installed into Odoo's Python and loaded by Odoo 18: {installed}")
    check_translation_templates(python, odoo_database, tmp_path)


def check_translation_templates(python: Path, database: dict, tmp_path: Path) -> None:
    """Each addon's i18n/<addon>.pot is what Odoo 18 exports for it now.

    IPAI_WRITE_POT=1 writes them instead of comparing (after a string changed)."""
    for addon in ADDONS:
        exported = tmp_path / f"{addon}.pot"
        run(
            *odoo_command(
                database,
                "server",
                f"--i18n-export={exported}",
                f"--modules={addon}",
                "--stop-after-init",
                "--log-level=warn",
                python=python,
                addons=(ODOO_PATH / "addons",),
            ),
            cwd=ODOO_PATH,
        )
        committed = REPO / "addons" / addon / "i18n" / f"{addon}.pot"
        if os.environ.get("IPAI_WRITE_POT"):
            committed.parent.mkdir(exist_ok=True)
            committed.write_text(exported.read_text())
            continue
        assert committed.exists(), f"{committed} missing: run with IPAI_WRITE_POT=1"
        assert _without_dates(committed.read_text()) == _without_dates(exported.read_text()), (
            f"{committed} is out of date: run this test with IPAI_WRITE_POT=1"
        )


def _without_dates(pot: str) -> str:
    return "\n".join(
        line for line in pot.splitlines() if not line.startswith(('"POT-Creation-Date', '"PO-Revision'))
    )


def test_the_wheels_ask_for_the_library_and_the_bridge(wheels, tmp_path):
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        str(tmp_path),
        *map(str, wheels.glob("odoo_addon_*.whl")),
    )
    requires = {
        dist.metadata["Name"]: dist.requires or []
        for dist in metadata.distributions(path=[str(tmp_path)])
    }
    assert "ipai_bus_lib" in requires["odoo-addon-ipai_enterprise_bridge"]
    assert any(
        r.startswith("odoo-addon-ipai_enterprise_bridge")
        for r in requires["odoo-addon-ipai_finance_ppm"]
    )
    assert any(r.startswith("odoo==18.0") for r in requires["odoo-addon-ipai_finance_ppm"])


_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
