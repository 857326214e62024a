"""Installing the validators the deploy tests run, when they are missing (CI starts bare).

`docker-compose` comes from Debian (apt), the Kubernetes schema validator from PyPI (pip, into
the running interpreter). Another process may hold the dpkg lock: apt is retried for a while.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time

APT_LOCK_WAIT_SECONDS = 300.0
_apt_updated = False


def apt_tool(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` first if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    global _apt_updated
    if not _apt_updated:
        _apt(["apt-get", "update", "-q"])
        _apt_updated = True
    _apt(["apt-get", "install", "-y", "-q", "--no-install-recommends", package])
    found = shutil.which(command)
    if not found:
        raise RuntimeError(f"installed {package} but {command} is still not on PATH")
    return found


def _apt(argv: list[str]) -> None:
    deadline = time.monotonic() + APT_LOCK_WAIT_SECONDS
    while True:
        done = subprocess.run(
            argv, capture_output=True, text=True, env={"DEBIAN_FRONTEND": "noninteractive",
                                                       "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
        if done.returncode == 0:
            return
        locked = "lock" in done.stderr.lower()
        if not locked or time.monotonic() > deadline:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
        time.sleep(5)


def pip_module(module: str, package: str) -> None:
    """Make `module` importable, pip-installing `package` into this interpreter if needed."""
    if importlib.util.find_spec(module) is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", package],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        importlib.invalidate_caches()
