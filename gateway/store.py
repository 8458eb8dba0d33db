"""The store: the source of truth for orgs, teams, service accounts and tokens.

`Store` is what every caller uses. It is assembled from parts, one module each:

- store_connect: `connect(settings)`, a client for one server, a Sentinel master or a Cluster;
- store_keys: every key name (`Keys`) and its cluster hash tag;
- store_scripts: the Lua scripts, each one atomic change on the server;
- store_link: `StoreLink`, the gate every command goes through (`StoreUnavailable`,
  reachability) and the durable write path (WAIT/WAITAOF on the write's own connection);
- store_changes: `Change` and `ChangeFeed`, the pub/sub channel and the change log;
- store_audit: `AuditEntry` and `AuditStream`, the audit stream and audited admin writes;
- store_pages: `IndexPage` and `IndexPages`, bounded pages of the indexes;
- store_records: `RecordStore`, reads and writes of the records (`Conflict`);
- store_usage: `UsageStore`, the usage counts per token and day;
- store_legacy: `LegacyIndex`, the lookup entries of imported keys;
- store_accounts: `AccountStore`, org-level service accounts (one script per change);
- here: a token's index entries and quota, and its atomic lifecycle transitions.

No command, pipeline or script touches keys of two slots at once; every change is announced
on the change channel and in the change log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway import store_scripts
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.store_accounts import NO_ACCOUNT, NOT_MEMBER, QUOTA, AccountStore
from tokenward.gateway.store_audit import AuditEntry
from tokenward.gateway.store_changes import Change
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_legacy import LegacyIndex
from tokenward.gateway.store_limits import LimitStore
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.store_pages import IndexPages
from tokenward.gateway.store_records import Conflict, RecordStore
from tokenward.gateway.store_usage import UsageStore

TRANSITION_ATTEMPTS = 50  # decisions re-taken on a record that keeps changing, then 503


class QuotaExceeded(Exception):
    """A team (or the org level) already holds `limit` tokens."""

    def __init__(self, held: int, limit: int, org: str = "", team: str | None = None) -> None:
        super().__init__(f"holds {held} tokens, the limit is {limit}")
        self.held = held
        self.limit = limit
        self.org = org  # where: the token's org, and its team (None: the org level)
        self.team = team


@dataclass(frozen=True, slots=True)
class ActorFence:
    """An admin change is written only while the token making it may still act: `check`
    (raising to refuse) is given the acting token's record as the store has it just before
    the write, and the write happens only if that record has not changed since (one script
    on one server or Sentinel). A revocation confirmed before the write commits therefore
    stops it, however long the change took to prepare (argon2, say)."""

    key_id: str
    check: Callable[[TokenRecord | None], None]


@dataclass(frozen=True, slots=True)
class TokenEdit:
    """What a transition writes in place of the record it was decided on."""

    record: TokenRecord | None  # None: delete the record
    audit: AuditEntry | None = None
    successor: TokenRecord | None = None  # rotation: created in the same step, in the same slot


class Store(RecordStore, AccountStore, IndexPages, UsageStore, LegacyIndex, LimitStore):
    """The store's records and indexes, the audit stream, the change feed, and the token
    lifecycle: every token state change below is atomic and durable before it returns."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._sa_indexes_built: set[tuple[str, str]] = set()

    # -- the token quota and a token's index entries -------------------------------------------
    async def create_token_in_quota(
        self,
        token: TokenRecord,
        max_per_index: int,
        audit: AuditEntry | None = None,
        fence: ActorFence | None = None,
    ) -> None:
        """`create_token`, refused with QuotaExceeded once the token's team (or, for an
        org-level token, the org level) holds `max_per_index` tokens of any status. The
        count and the index entries are one script: concurrent creations cannot pass it.
        A token of a service account also enters that account's index. The record is
        written with `audit`'s event in one transaction (see `_write_audited`)."""
        await self.ensure_org(token.org)
        if token.service_account and token.service_account_id is None and token.team is not None:
            # a record naming an org-level account by name only (tools, tests): give it the id
            found = await self.account_id(token.org, token.service_account)
            token = replace(token, service_account_id=found) if found else token
        await self.index_token(token, max_per_index)
        key = Keys.token(token.id)
        data = orjson.dumps(token.to_json())
        try:
            for _ in range(TRANSITION_ATTEMPTS):
                actor_version = await self.fence_version(fence)
                if not actor_version:
                    created = await self._create_audited(key, data, audit, kind="hash")
                    break
                keys = [key, Keys.token(fence.key_id)]  # type: ignore[union-attr]
                if audit is not None:
                    keys.append(Keys.audit)
                args = [actor_version, data, audit.maxlen if audit else 0, audit.payload if audit else b""]
                fenced = ("EVAL", store_scripts.CREATE_FENCED, len(keys), *keys, *args)
                (created,) = await self._write(key, fenced)
                if int(created) != store_scripts.ACTOR_CHANGED:
                    break
            else:
                raise StoreUnavailable(f"token {fence and fence.key_id} kept changing")
            if not int(created):
                raise Conflict("token id collision")
        except BaseException:
            with contextlib.suppress(Exception):
                if await self.get_token(token.id) is None:
                    await self.unindex_token(token)  # not created: give the quota slot back
            raise

    async def token_count(self, org: str, team: str | None) -> int:
        """Tokens (any status) a team, or the org level, holds: the quota's count."""
        return int(await self._call(lambda: self.client.zcard(Keys.team_tokens(org, team))))

    async def unindex_service_account_token(self, token: TokenRecord) -> None:
        """After `delete_token`: drop the token from its service account's index."""
        if token.team is None or not token.service_account:
            return
        key = Keys.service_account_tokens(token.org, token.team, token.service_account)
        await self._write(key, ("ZREM", key, token.id))

    async def ensure_service_account_indexes(self, org: str, team: str) -> None:
        """Once per team: put the tokens issued before the service-account indexes existed
        into them (a chunked walk of the team index; at most tokens.max_per_team)."""
        if (org, team) in self._sa_indexes_built:
            return
        marker = Keys.service_account_tokens_built(org, team)
        if not await self._call(lambda: self.client.exists(marker)):
            position: tuple[float, str] | None = None
            while True:
                page = await self.token_index_page(org, team, position, 200)
                records = await self.get_tokens_with_usage([m for m, _ in page.rows])
                adds = [
                    ("ZADD", Keys.service_account_tokens(org, team, r.service_account), r.created_at, r.id)
                    for r, _ in records
                    if r.service_account and r.team == team
                ]
                if adds:
                    await self._write(adds[0][1], *adds)
                if not page.more:
                    break
                position = (page.rows[-1][1], page.rows[-1][0])
            await self._write(marker, ("SET", marker, "1"))
        self._sa_indexes_built.add((org, team))

    # -- atomic token transitions -------------------------------------------------------------
    # Every lifecycle transition (revoke, restore, rotate, update, delete, leak report) is a
    # compare-and-set on the record's version (hash field `v`, bumped by every write of `data`):
    # the caller decides on the record it read, and the decision is written only if the record
    # is still that version, else it is decided again on the new one. A PATCH racing a revoke
    # is therefore applied to the revoked record and never writes an older, active copy back.
    # The admin change's audit event goes into the same script or MULTI (one server or
    # Sentinel), so a change confirmed to the caller (after WAITAOF/WAIT) has its event in
    # the audit stream. A cluster keeps the stream in its own slot: there the event is a
    # second durable write after the change and before the response (see SECURITY.md).

    async def change_token(
        self,
        key_id: str,
        decide: Callable[[TokenRecord], TokenEdit | None],
        fence: ActorFence | None = None,
    ) -> tuple[TokenRecord, TokenEdit | None] | None:
        """Apply `decide(current record)` atomically: (the record it was decided on, the edit
        that was written, None when `decide` chose to change nothing), or None when there
        is no such token. `decide` may raise to refuse; it may be called more than once.
        With `fence`, the edit is written only while the acting token's record is the one
        `fence.check` accepted (see ActorFence)."""
        key = Keys.token(key_id)
        for _ in range(TRANSITION_ATTEMPTS):
            raw, version = await self._call(lambda: self.client.hmget(key, ["data", "v"]))
            if not raw:
                return None
            record = TokenRecord.from_json(orjson.loads(raw))
            edit = decide(record)
            if edit is None:
                return record, None
            actor_version = await self.fence_version(fence)
            keys = [key]
            if actor_version:
                keys.append(Keys.token(fence.key_id))  # type: ignore[union-attr]
            successor = b""
            if edit.successor is not None:
                keys.append(Keys.token(edit.successor.id))
                successor = orjson.dumps(edit.successor.to_json())
            audit = edit.audit
            if audit is not None and not self.cluster:
                keys.append(Keys.audit)
            args = [
                (version or b"0"),
                b"" if edit.record is None else orjson.dumps(edit.record.to_json()),
                audit.maxlen if audit else 0,
                audit.payload if audit else b"",
                successor,
                actor_version,
            ]
            (outcome,) = await self._write(key, ("EVAL", store_scripts.TRANSITION, len(keys), *keys, *args))
            outcome = int(outcome)
            if outcome == store_scripts.GONE:
                return None
            if outcome == store_scripts.SUCCESSOR_EXISTS:
                raise Conflict("token id collision")
            if outcome in (store_scripts.STALE, store_scripts.ACTOR_CHANGED):
                continue
            if audit is not None and self.cluster:
                await self._append_audit_durably(audit)
            changed = [Change("token", key_id)]
            if edit.successor is not None:
                changed.append(Change("token", edit.successor.id))
            await self.publish(changed)
            return record, edit
        raise StoreUnavailable(f"token {key_id} kept changing under {TRANSITION_ATTEMPTS} attempts")

    async def fence_version(self, fence: ActorFence | None) -> bytes:
        """The acting token's record read fresh from the store (never a cache) and put to
        `fence.check`, which raises unless it may still act; its version, for a script to
        write only while the record is still that version (b"" without a fence, and in a
        cluster, where the actor's record is in another slot: there this read, one round trip
        before the write, is the check)."""
        if fence is None:
            return b""
        key = Keys.token(fence.key_id)
        raw, version = await self._call(lambda: self.client.hmget(key, ["data", "v"]))
        fence.check(TokenRecord.from_json(orjson.loads(raw)) if raw else None)
        return b"" if self.cluster else (version or b"0")

    async def index_token(self, token: TokenRecord, max_per_index: int | None = None) -> None:
        """The token's index entries (written before its record: see the module docstring):
        team (or org level), org, and its service account's. With `max_per_index`, refused
        with QuotaExceeded once the team index holds that many, in the same script. A token of
        an org-level service account: Conflict unless the account holds the token's team."""
        if token.service_account_id is not None and token.team is not None:
            code, held = await self.index_account_token(token, max_per_index)
            if code == QUOTA:
                raise QuotaExceeded(held, max_per_index or 0, token.org, token.team)
            if code in (NO_ACCOUNT, NOT_MEMBER):
                raise Conflict(
                    f"service account {token.service_account!r} "
                    + ("no longer exists" if code == NO_ACCOUNT else f"is not a member of team {token.team!r}")
                )
            return
        team_index = Keys.team_tokens(token.org, token.team)
        sa_index = (
            Keys.service_account_tokens(token.org, token.team, token.service_account)
            if token.team is not None and token.service_account
            else team_index
        )
        (held,) = await self._write(
            team_index,
            (
                "EVAL",
                store_scripts.INDEX_IN_QUOTA,
                3,
                team_index,
                Keys.org_tokens(token.org),
                sa_index,
                repr(token.created_at),
                token.id,
                max_per_index if max_per_index is not None else -1,
                "1" if sa_index != team_index else "0",
            ),
        )
        if int(held) < 0:
            raise QuotaExceeded(-int(held), max_per_index or 0, token.org, token.team)

    async def unindex_token(self, token: TokenRecord) -> None:
        index = Keys.org_tokens(token.org)
        await self._write(
            index, ("ZREM", Keys.team_tokens(token.org, token.team), token.id), ("ZREM", index, token.id)
        )
        await self.unindex_service_account_token(token)
        if token.service_account_id is not None:
            key = Keys.account_tokens(token.org, token.service_account_id)
            await self._write(key, ("ZREM", key, token.id))

        if token.legacy_digest:  # an imported key: its lookup entry, if it still names this token
            await self.release_legacy_key(token.legacy_digest, token.id)

def now() -> float:
    return time.time()
