"""The lookup entries of imported keys (gateway/legacy_keys.py): lookup digest -> key id.

Each entry is a key of its own (`Keys.legacy_key(digest)`, its own cluster slot) holding
"<key id> <claimed at>". An import claims the entry first (atomically: a second import of
the same key finds it taken, 409), then creates the record; a failed import gives the claim
back, and deleting the token drops it. Like every index, the entry is written before the
record and removed after it, so a crash leaves at most an entry naming no record: the
gateway refuses it as an unknown key, and an import of the same key takes such an entry over
once it is older than CLAIM_GRACE (an import in progress is never taken over).
"""

from __future__ import annotations

import time

from tokenward.gateway import store_scripts
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink

CLAIM_GRACE = 300.0  # seconds an entry without its record may still be an import in progress
CLAIM_ATTEMPTS = 5


class LegacyIndex(StoreLink):
    """Lookup entries of imported keys, and the flag that any exist."""

    async def legacy_keys_present(self) -> bool:
        """Whether any key was ever imported (the gateway looks keys up only then)."""
        return bool(await self._call(lambda: self.client.exists(Keys.legacy_present)))

    async def mark_legacy_present(self) -> None:
        await self._write(Keys.legacy_present, ("SET", Keys.legacy_present, "1"))

    async def legacy_entry(self, digest: str) -> tuple[str, float] | None:
        """(key id, claimed at) of an imported key's lookup digest, or None."""
        raw = await self._call(lambda: self.client.get(Keys.legacy_key(digest)))
        if not raw:
            return None
        key_id, _, at = raw.decode().partition(" ")
        try:
            return key_id, float(at)
        except ValueError:
            return key_id, 0.0

    async def legacy_key_id(self, digest: str) -> str | None:
        entry = await self.legacy_entry(digest)
        return entry[0] if entry else None

    async def claim_legacy_key(self, digest: str, key_id: str) -> str | None:
        """Claim `digest`'s entry for `key_id`. None when claimed; else the key id of the
        token that holds the key already (an entry whose record exists, or one younger than
        CLAIM_GRACE: an import of the same key in progress)."""
        key = Keys.legacy_key(digest)
        for _ in range(CLAIM_ATTEMPTS):
            current = await self._call(lambda: self.client.get(key))
            expected = current.decode() if current else ""
            if expected:
                held_by, _, at = expected.partition(" ")
                record_key = Keys.token(held_by)
                exists = await self._call(lambda: self.client.exists(record_key))  # noqa: B023 - awaited here
                if exists or time.time() - _number(at) < CLAIM_GRACE:
                    return held_by
            value = f"{key_id} {time.time():.3f}"
            (claimed,) = await self._write(key, ("EVAL", store_scripts.CLAIM_LEGACY, 1, key, value, expected))
            if int(claimed):
                return None
        return "(changing)"

    async def release_legacy_key(self, digest: str, key_id: str) -> None:
        """Drop `digest`'s entry if it still names `key_id` (a failed import, a deleted token)."""
        key = Keys.legacy_key(digest)
        await self._write(key, ("EVAL", store_scripts.RELEASE_LEGACY, 1, key, key_id))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
