"""Make sure the browser tests have a browser: Debian's chromium, installed with apt-get when
this runs as root and it is missing. Says on one line what it did; never fails the test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGE = "chromium"


def main() -> int:
    found = os.environ.get("IPAI_CHROMIUM") or shutil.which("chromium")
    if found:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("browser tests will be skipped: no chromium (install Debian's chromium package)")
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ([], ["update"]):
        if attempt:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", PACKAGE], env=env, capture_output=True, timeout=1200
        )
        if result.returncode == 0:
            print(f"browser tests: installed Debian's {PACKAGE} ({shutil.which('chromium')})")
            return 0
    last = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-1:]
    print(f"browser tests will be skipped: apt-get install {PACKAGE} failed: {' '.join(last)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
