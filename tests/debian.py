"""Installing a Debian package a test needs, when it is missing (CI runs as root on Debian).

`apt-get update` runs at most once per test session; `apt-get install` is retried while another
process (another helper, unattended upgrades) holds the dpkg lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

LOCK_RETRY_SECONDS = 300.0
_updated = False


def ensure_binary(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first if it is not on PATH.

    Skips the test when the package is missing and this process cannot install it (not root);
    fails when the installation fails.
    """
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(f"{binary} missing and not root: apt-get install {package}")
    _apt("update")
    _apt("install", "-y", "--no-install-recommends", package)
    found = shutil.which(binary)
    assert found, f"apt-get installed {package} but {binary} is not on PATH"
    return found


def _apt(*args: str) -> None:
    global _updated
    if args[0] == "update":
        if _updated:
            return
        _updated = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        done = subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=60", *args],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode == 0:
            return
        locked = "lock" in (done.stderr + done.stdout).lower()
        if not locked or time.monotonic() > deadline:
            raise AssertionError(f"apt-get {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        time.sleep(5)
