"""tokenward: a reverse-proxy authentication gateway for service tokens.

`tokenward.version()` is the installed version (the package metadata's, one place for all).
"""

from tokenward.gateway.version import version

__all__ = ["version"]
