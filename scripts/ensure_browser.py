"""Make sure the browser tests have a browser: Debian's chromium, installed with apt-get when
this runs as root and it is missing (waiting for another apt's lock, see apt_packages.py).
Says on one line what it did; never fails the test run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apt_packages  # noqa: E402

PACKAGE = "chromium"


def main() -> int:
    found = os.environ.get("IPAI_CHROMIUM") or shutil.which("chromium")
    if found:
        return 0
    if not apt_packages.can_install():
        print("browser tests will be skipped: no chromium (install Debian's chromium package)")
        return 0
    failure = apt_packages.install(PACKAGE)
    if failure is None:
        print(f"browser tests: installed Debian's {PACKAGE} ({shutil.which('chromium')})")
    else:
        print(f"browser tests will be skipped: {PACKAGE} could not be installed: {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
