"""tokenward's version, from one place: the installed distribution's metadata, that is
pyproject.toml's `version`. The CLI (`--version`), the start-up log line, `/metrics`
(`tokenward_build_info`), the OpenAPI document and (checked by tests/test_packaging_users.py)
the image tag in deploy/ all say what this says."""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "tokenward"
UNKNOWN = "unknown"  # running from sources that were never installed (no metadata to read)


def version() -> str:
    """The installed version, e.g. `0.1.0`."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN
