"""Keys imported from an old system (`sk_live_…`, a Kong key, any reasonable string).

An imported key has no key id and no checksum of ours, so the gateway finds its record by a
lookup digest: HMAC-SHA256 of the whole key under `tokens.legacy_lookup_key`, a key the
server holds in its config (a file or the environment), never in the store. A dump of the
store therefore gives nobody a fast way to test guesses: the digests are keyed, and the
record keeps only an argon2id hash and the per-record keyed secret check (`tokens.secret_check`),
like our own tokens. The digest leads to a key id; from there the key is verified exactly as
a token of ours (`Authenticator._prove`: secret check, throttle, argon2, then the cache,
status, expiry, CIDRs and scopes).

Only a credential that cannot be one of ours goes to the lookup: anything that starts with an
accepted prefix and `_` is judged as our own format (malformed or a bad checksum: 401 without
a store read), and the lookup runs only while the store holds imported keys at all (a flag the
verification cache keeps, `VerificationCache.legacy_present`). An unknown digest is refused
from one store read, with no argon2 work, and negatively cached like an unknown key id; such
misses are budgeted per client and overall (`throttle.LookupBudget`): past the budget a lookup
is refused (401) without a store read. The admin API never looks a key up: imported keys are
for the gateway's routes only (`NOT_FOR_ADMIN`).

At import (`check_importable`): 16 to 256 visible ASCII characters, not one of our prefixes,
and at least MIN_BITS by `strength_bits`, a conservative entropy estimate.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections import Counter
from collections.abc import Iterable

from tokenward.gateway.config_decode import described

MIN_LENGTH = 16  # shorter keys are guessable whatever the hashing: refused at import
MAX_LENGTH = 256
MIN_LOOKUP_KEY = 32  # characters of tokens.legacy_lookup_key
# Visible ASCII: what an `Authorization: Bearer` value can carry without quoting or spaces.
_CHARS = re.compile(r"[\x21-\x7e]+")
DISPLAY_PREFIX = "legacy"  # a legacy token is shown as `legacy_<key id>`: no character of the key
NOT_FOR_ADMIN = (
    "the admin API takes only tokens issued by this gateway: a key imported from an old system "
    "works on the gateway's routes only (issue a token with `tokenward token create` to administer)"
)
MIN_BITS = 64  # the least estimated entropy (`strength_bits`) of a key that can be imported
# A conventional label at the start of a key (`sk_live_`, `rk_test_`, `Kong-key-`): up to three
# words of letters, each followed by `_` or `-`. It is the same for every key of its kind, so it
# counts for nothing in the estimate; a word `test` in it makes the key a test key by default.
_LABEL = re.compile(r"(?:[A-Za-z]{1,12}[_-]){1,3}")


class LegacyKeyError(ValueError):
    """Not a key that can be imported (the message says why and what would be)."""


@described({"type": ["string", "null"], "minLength": MIN_LOOKUP_KEY})
def lookup_key_setting(value: object) -> str | None:
    """The config's `tokens.legacy_lookup_key` (never echoed in a problem: it is a secret)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < MIN_LOOKUP_KEY:
        raise ValueError(
            f"expected at least {MIN_LOOKUP_KEY} characters of random text "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return value


def starts_like_ours(key: str, prefixes: Iterable[str]) -> bool:
    """True when `key` begins with one of our accepted prefixes and `_`: it is judged as a
    token of ours (format and checksum, no store read), never looked up as a legacy key."""
    return any(key.startswith(f"{prefix}_") for prefix in prefixes)


def candidate(key: str, prefixes: Iterable[str]) -> bool:
    """May `key` be an imported key (so worth a lookup)?"""
    return (
        MIN_LENGTH <= len(key) <= MAX_LENGTH
        and bool(_CHARS.fullmatch(key))
        and not starts_like_ours(key, prefixes)
    )


def check_importable(key: str, prefixes: Iterable[str]) -> None:
    """Raise LegacyKeyError, with the reason and the rule, unless `key` can be imported.
    The message never quotes the key."""
    if not MIN_LENGTH <= len(key) <= MAX_LENGTH:
        raise LegacyKeyError(
            f"key: {len(key)} characters; an imported key has {MIN_LENGTH} to {MAX_LENGTH} "
            "(shorter keys are too easy to guess: issue a new token instead)"
        )
    if not _CHARS.fullmatch(key):
        raise LegacyKeyError(
            "key: only visible ASCII characters (no spaces, tabs, line breaks or non-ASCII), "
            "as an Authorization: Bearer header carries it; check for a trailing newline"
        )
    for prefix in prefixes:
        if key.startswith(f"{prefix}_"):
            raise LegacyKeyError(
                f"key: starts with {prefix}_, the prefix of this gateway's own tokens; a token "
                "of ours needs no import, and a key that only looks like one cannot be told apart"
            )
    bits = strength_bits(key)
    if bits < MIN_BITS:
        raise LegacyKeyError(
            f"key: too easy to guess: about {int(bits)} bits by a conservative estimate (Shannon "
            "entropy per character times the characters that are not runs or repeats, a leading "
            f"label such as sk_live_ not counted); an imported key needs at least {MIN_BITS}. "
            "Issue a new token instead (tokenward token create), or import a longer random key"
        )


def _label(key: str) -> str:
    found = _LABEL.match(key)
    return found.group() if found else ""


def strength_bits(key: str) -> float:
    """A conservative estimate of the entropy of `key`, in bits: the Shannon entropy per
    character of the key's own character frequencies, times the number of characters that
    are neither part of a run (the third and later of `aaa`, `abc`, `321`) nor the end of a
    three-character sequence seen earlier in the key (`abcabc`, `passpass`), not counting a
    leading label (`sk_live_`). A key of n characters scores at most n × log2(n) bits.
    `aaaaaaaaaaaaaaaa` is 0 bits, `password12345678` about 39; a random key of 20 letters and
    digits, or of 24 hex digits, after its label always reaches MIN_BITS. It knows no
    dictionary: a key made of words scores as if its letters were random, so the import's
    rule is a floor, not a proof of strength."""
    body = key[len(_label(key)) :]
    if not body:
        return 0.0
    size = len(body)
    per_char = -sum(n / size * math.log2(n / size) for n in Counter(body).values())
    seen: set[str] = set()
    fresh = 0
    for i, char in enumerate(body):
        predictable = False
        if i >= 2:
            a, b, c = ord(body[i - 2]), ord(body[i - 1]), ord(char)
            predictable = c - b == b - a and abs(c - b) <= 1
            triple = body[i - 2 : i + 1]
            predictable = predictable or triple in seen
            seen.add(triple)
        fresh += not predictable
    return max(0.0, per_char * fresh)


def conventional_environment(key: str) -> str:
    """`test` when the key's leading label has a word `test` (`sk_test_`, `rk_test_`,
    `test_`), as test keys are conventionally marked; else `live`."""
    words = re.split(r"[_-]", _label(key).lower())
    return "test" if "test" in words else "live"


def lookup_digest(lookup_key: str, key: str) -> str:
    """The key's index entry: HMAC-SHA256 under the server's lookup key (hex)."""
    return hmac.new(lookup_key.encode(), key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
