"""Debian packages the tests need, installed with apt-get when this runs as root.

Another apt or dpkg at work (an unattended upgrade, a second `make test`) holds the package
manager's lock: apt-get then fails at once. These helpers wait for the lock instead, up to
LOCK_WAIT_SECONDS, and try again; only the lock is waited for, every other failure is final.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

LOCK_WAIT_SECONDS = float(os.environ.get("IPAI_APT_LOCK_WAIT_SECONDS", "900"))
LOCK_HELD = ("Could not get lock", "Unable to acquire the dpkg frontend lock", "Unable to lock")
NONINTERACTIVE = {"DEBIAN_FRONTEND": "noninteractive"}


def can_install() -> bool:
    """apt-get is here and we are root, so missing packages can be installed."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_get(
    *args: str, lock_wait: float = LOCK_WAIT_SECONDS, timeout: float = 1200
) -> subprocess.CompletedProcess:
    """`apt-get ARGS`, waiting up to ``lock_wait`` seconds while another apt holds its lock."""
    deadline = time.monotonic() + lock_wait
    env = {**os.environ, **NONINTERACTIVE}
    while True:
        result = subprocess.run(
            ["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        held = result.returncode != 0 and any(
            marker in result.stderr + result.stdout for marker in LOCK_HELD
        )
        if not held or time.monotonic() >= deadline:
            return result
        time.sleep(2)


def last_line(result: subprocess.CompletedProcess) -> str:
    """The line of apt-get's output that says why it failed."""
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


def install(*packages: str) -> str | None:
    """Install ``packages`` (refreshing the package lists once if they are not found).

    Returns None when they are installed, else the reason in one line.
    """
    if not can_install():
        return "not root, or no apt-get"
    result = apt_get("install", "-y", "-qq", *packages)
    if result.returncode != 0:
        refreshed = apt_get("update", "-qq", timeout=600)
        if refreshed.returncode != 0:
            return f"apt-get update failed: {last_line(refreshed)}"
        result = apt_get("install", "-y", "-qq", *packages)
    return None if result.returncode == 0 else f"apt-get install failed: {last_line(result)}"
