"""Real peers from Debian's packages (nginx, Redis 7.0): installed by the test run itself when
missing, so a fresh machine needs nothing beforehand. A failed install fails the test; it
never skips it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest


def installed(package: str, find: Callable[[], str | None]) -> str:
    """The binary `find` locates, after `apt-get install package` when it finds none."""
    found = find()
    if found is not None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot install {package}: {' '.join(command)}: {exc}")
        if done.returncode != 0:
            pytest.fail(
                f"cannot install {package}: {' '.join(command)} exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
    found = find()
    if found is None:
        pytest.fail(f"apt-get installed {package} but its binary was not found")
    return found
