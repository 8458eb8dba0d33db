"""Token-shaped strings inside any text (a log line, a diff, a JSON document), found the way
secret scanners find them: `<prefix>_<50 base62>` with a valid checksum (issue 14, item 11).

A match is the 50 base62 characters that follow an `_` and end at a word boundary; its prefix
is the run of `[a-z0-9_]` before that `_` (at most MAX_PREFIX_LEN characters), read from the
right: `TOKEN=tw_sat_…`, `"tw_sat_…"` and `MY_tw_sat_…` all give `tw_sat`. The checksum covers
the prefix, so it tells which suffix of that run is the token's prefix; any prefix works, not
only the configured ones (the admin API then says `not_a_token` for a prefix it does not
accept). The work is linear in the text: one regular-expression pass with a fixed-length body
and a bounded look back for each candidate.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from tokenward.gateway.tokens import BODY_LEN, CHECKSUM_LEN, checksum, valid_prefix

MAX_PREFIX_LEN = 64  # `tokens.parse` accepts at most BODY_LEN + 64 characters in all
_BODY = re.compile(rf"_([0-9A-Za-z]{{{BODY_LEN}}})(?![0-9A-Za-z])")
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(frozen=True, slots=True)
class TokenScan:
    """What a text holds: how many token-shaped strings, and those whose checksum is valid
    (each once, in the order first seen)."""

    shaped: int
    tokens: tuple[str, ...]

    def __repr__(self) -> str:  # never show the plaintexts
        return f"TokenScan(shaped={self.shaped}, tokens=<{len(self.tokens)} hidden>)"


def _prefixes(text: str, end: int) -> list[str]:
    """The prefix-shaped candidates that end at `end` (where the `_` before the body is),
    shortest first."""
    start = end
    while start > 0 and end - start < MAX_PREFIX_LEN and text[start - 1] in _PREFIX_CHARS:
        start -= 1
    run = text[start:end]
    out = []
    for i in range(len(run) - 1, -1, -1):
        if (i == 0 or run[i - 1] == "_") and valid_prefix(run[i:]):
            out.append(run[i:])
    return out


def scan_tokens(text: str) -> TokenScan:
    """Every token-shaped string in `text` (a prefix-shaped word, `_`, 50 base62 characters)
    and the distinct ones with a valid checksum."""
    shaped = 0
    found: dict[str, None] = {}
    for match in _BODY.finditer(text):
        candidates = _prefixes(text, match.start())
        if not candidates:
            continue
        shaped += 1
        body = match.group(1)
        head, check = body[:-CHECKSUM_LEN], body[-CHECKSUM_LEN:]
        for prefix in candidates:
            if hmac.compare_digest(checksum(f"{prefix}_{head}"), check):
                found.setdefault(f"{prefix}_{body}", None)
                break
    return TokenScan(shaped, tuple(found))


def find_tokens(text: str) -> list[str]:
    """The distinct tokens with a valid checksum in `text`, in the order first seen."""
    return list(scan_tokens(text).tokens)
