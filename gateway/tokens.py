"""Token format and hashing.

`<prefix>_<12 base62 key id><32 base62 secret><6 base62 CRC32 of everything before>`

The checksum lets the gateway refuse typos and garbage without touching the store and
lets secret scanners match tokens with a regex. The store keeps only an argon2id hash
of the secret; hashing and verification run in a thread so the event loop never waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

import argon2

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LEN = 12
SECRET_LEN = 32
CHECKSUM_LEN = 6
BODY_LEN = KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN
PREFIX_PATTERN = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*"
_PREFIX = re.compile(rf"^{PREFIX_PATTERN}\Z")
_BASE62_SET = frozenset(BASE62)
KEY_ID_RE = re.compile(rf"^[0-9A-Za-z]{{{KEY_ID_LEN}}}\Z")


class TokenFormatError(ValueError):
    """Not a tokenward token (bad shape, unknown prefix or checksum mismatch)."""


def valid_prefix(prefix: str) -> bool:
    return bool(_PREFIX.match(prefix))


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _base62_fixed(number: int, length: int) -> str:
    digits = []
    for _ in range(length):
        number, rem = divmod(number, 62)
        digits.append(BASE62[rem])
    return "".join(reversed(digits))


_PAIRS = tuple(high + low for high in BASE62 for low in BASE62)  # two base62 digits, 00 .. zz
_PAIR = len(_PAIRS)


def checksum(text: str) -> str:
    """`_base62_fixed(crc32, 6)`, two digits at a time (a CRC32 is below 62**6)."""
    number, low = divmod(zlib.crc32(text.encode("ascii")), _PAIR)
    high, middle = divmod(number, _PAIR)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


_BARE_BODY = re.compile(rf"(?<![0-9A-Za-z])[0-9A-Za-z]{{{BODY_LEN}}}(?![0-9A-Za-z])")


def contains_bare_token(text: str, prefixes: frozenset[str]) -> bool:
    """True when `text` holds a token's body without its prefix (key id, secret and a checksum
    that is valid under one of `prefixes`): a credential, though it does not start with one."""
    for match in _BARE_BODY.finditer(text):
        body = match.group()
        head, check = body[:-CHECKSUM_LEN], body[-CHECKSUM_LEN:]
        if any(hmac.compare_digest(checksum(f"{prefix}_{head}"), check) for prefix in prefixes):
            return True
    return False


@dataclass(frozen=True, slots=True)
class ParsedToken:
    prefix: str
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret
        return f"ParsedToken(prefix={self.prefix!r}, key_id={self.key_id!r}, secret=<hidden>)"

    @property
    def display_prefix(self) -> str:
        return f"{self.prefix}_{self.key_id}"


def generate(prefix: str) -> tuple[str, ParsedToken]:
    """A new plaintext token and its parts."""
    key_id = _random_base62(KEY_ID_LEN)
    secret = _random_base62(SECRET_LEN)
    head = f"{prefix}_{key_id}{secret}"
    return head + checksum(head), ParsedToken(prefix, key_id, secret)


def parse(token: str, accepted_prefixes: frozenset[str]) -> ParsedToken:
    """Check shape, prefix and checksum; never touches the store."""
    if len(token) < BODY_LEN + 2 or len(token) > BODY_LEN + 64:
        raise TokenFormatError("token is malformed")
    body = token[-BODY_LEN:]
    prefix_part = token[:-BODY_LEN]
    if not prefix_part.endswith("_"):
        raise TokenFormatError("token is malformed")
    prefix = prefix_part[:-1]
    if prefix not in accepted_prefixes:
        raise TokenFormatError("token prefix is not accepted here")
    if not _BASE62_SET.issuperset(body):
        raise TokenFormatError("token is malformed")
    head = token[:-CHECKSUM_LEN]
    if not secrets.compare_digest(checksum(head), token[-CHECKSUM_LEN:]):
        raise TokenFormatError("token checksum does not match")
    return ParsedToken(prefix, body[:KEY_ID_LEN], body[KEY_ID_LEN : KEY_ID_LEN + SECRET_LEN])


def fingerprint(token: str) -> str:
    """A stable non-reversible key for caches (never the plaintext)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


SECRET_CHECK_HEX = 4  # 16 bits
CHECK_KEY_BYTES = 16


def new_check_key() -> str:
    """A random key for one record's secret check (hex), stored in that record only."""
    return secrets.token_hex(CHECK_KEY_BYTES)


def secret_check(key_id: str, secret: str, check_key: str = "") -> str:
    """16 bits of HMAC-SHA256(check key, "key id:secret"), stored beside the argon2id hash.

    A wrong secret fails this check 65 535 times in 65 536 without any argon2 work, so a
    flood of wrong secrets costs what a malformed token costs. It gives away 16 of the
    secret's ~190 random bits (32 base62 characters), which leaves ~174: nothing a brute
    force can use, unlike for a password, which is why argon2 is kept for the rest.

    The key is random per record and never leaves the store, so nobody can compute the
    check offline: without it, a wrong secret passes 1 time in 65 536 whoever chose it.
    `check_key=""` is the legacy scheme (plain SHA-256, records issued before the key
    existed): anyone can craft wrong secrets that pass it, so such a record gets a key on
    its first successful verification (`Authenticator`)."""
    message = f"{key_id}:{secret}".encode("utf-8", "surrogateescape")
    if check_key:
        digest = hmac.new(bytes.fromhex(check_key), message, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(message).hexdigest()
    return digest[:SECRET_CHECK_HEX]


def check_passes(stored_check: str, check_key: str, parsed: ParsedToken) -> bool:
    """The cheap pre-check: may this secret be the one `stored_check` was made from?

    Always does the same work (one HMAC or hash, one constant-time compare), also for a
    record without a check (issued before checks existed: every secret may be right)."""
    computed = secret_check(parsed.key_id, parsed.secret, check_key)
    same = hmac.compare_digest(stored_check.encode(), computed.encode())
    return same or not stored_check


class SecretHasher:
    """argon2id hashing of token secrets, run off the event loop."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        # A hash of a random secret, verified against when the key id is unknown so that
        # an unknown id and a wrong secret cost the same.
        self._decoy = self._hasher.hash(_random_base62(SECRET_LEN))
        # Two threads of its own: argon2's work buffer (memory_cost) is malloc'ed in the
        # calling thread, and glibc keeps a freed buffer of this size in that thread's
        # arena, so every thread that ever hashed holds one. Two threads, two buffers.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="argon2")

    @property
    def decoy_hash(self) -> str:
        """The hash verified against for unknown key ids (of a random secret nobody knows)."""
        return self._decoy

    def hash_sync(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify_sync(self, stored_hash: str | None, secret: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._decoy, secret) and stored_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def hash(self, secret: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.hash_sync, secret)

    async def verify(self, stored_hash: str | None, secret: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.verify_sync, stored_hash, secret)
