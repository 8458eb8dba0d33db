"""The Redis store: the source of truth for orgs, teams, service accounts and tokens.

Every key name lives in `Keys`. Org data shares the hash tag `{org}` so that one org's
writes stay in one cluster slot; a token record lives under its own key id (`tw:tok:{id}`)
because the gateway knows only the key id when a request arrives. Index entries are
written before records and removed after them, so a crash leaves at most a dangling
index entry (skipped when listing), never an unlisted live token.

Every change is announced twice: on the pub/sub channel (fast push) and in a capped
change-log stream that processes poll as the fallback when the push link is down.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as redis
import redis.exceptions as redis_errors

from gateway.records import ServiceAccountRecord, TeamRecord, TokenRecord

T = TypeVar("T")

CHANGES_CHANNEL = "tw:changes"
CHANGELOG_MAXLEN = 10_000


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error."""


class Conflict(Exception):
    """The record already exists."""


class Keys:
    orgs = "tw:orgs"
    changelog = "tw:changes:log"
    audit = "tw:audit"

    @staticmethod
    def teams(org: str) -> str:
        return f"tw:{{{org}}}:teams"

    @staticmethod
    def team(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}"

    @staticmethod
    def service_accounts(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sas"

    @staticmethod
    def service_account(org: str, team: str, name: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sa:{name}"

    @staticmethod
    def team_tokens(org: str, team: str | None) -> str:
        return f"tw:{{{org}}}:team:{team}:tokens" if team else f"tw:{{{org}}}:org-tokens"

    @staticmethod
    def org_tokens(org: str) -> str:
        return f"tw:{{{org}}}:tokens"

    @staticmethod
    def token(key_id: str) -> str:
        return f"tw:tok:{{{key_id}}}"


# Sets last_used_at only on a token that still exists (a late flush must not resurrect it).
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
  if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
  return 1
end
return 0
"""

# One command appends a whole batch of audit events (ARGV[2..]) to the capped stream.
_APPEND_AUDIT = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
return #ARGV - 1
"""
AUDIT_BATCH = 500


@dataclass(frozen=True, slots=True)
class Change:
    """What changed: ('token', key_id) | ('team', 'org/team') | ('all', ''), and when."""

    kind: str
    ident: str
    at: float = 0.0  # publish time, for the invalidation-lag metric

    def encode(self) -> bytes:
        return f"{self.kind}:{self.ident}|{self.at or time.time():.6f}".encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Change:
        text = data.decode() if isinstance(data, bytes) else data
        body, _, stamp = text.partition("|")
        kind, _, ident = body.partition(":")
        try:
            at = float(stamp) if stamp else 0.0
        except ValueError:
            at = 0.0
        return cls(kind, ident, at)


class Store:
    def __init__(self, client: redis.Redis) -> None:
        # redis-py types replies as unions that depend on decode_responses; we always get
        # bytes, so the client is used untyped here and replies are decoded explicitly.
        self.client: Any = client
        self._touch = client.register_script(_TOUCH)
        self._append_audit = client.register_script(_APPEND_AUDIT)
        self.waitaof_supported: bool | None = None
        self.errors = 0  # store errors seen, for the metric

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            self.errors += 1
            raise StoreUnavailable(f"store unreachable: {type(exc).__name__}") from exc
        except redis_errors.RedisError as exc:
            self.errors += 1
            raise StoreUnavailable(f"store error: {type(exc).__name__}") from exc

    async def ping(self) -> bool:
        return bool(await self._call(self.client.ping))

    async def close(self) -> None:
        await self.client.aclose()

    # -- durability ------------------------------------------------------------------
    async def check_durability(self) -> str:
        """Probe persistence once; returns a short description for the start-up line."""
        info: dict[str, Any] = await self._call(lambda: self.client.info("persistence"))
        aof = bool(info.get("aof_enabled"))
        try:
            await self._call(lambda: self.client.execute_command("WAITAOF", 1 if aof else 0, 0, 100))
            self.waitaof_supported = aof
        except StoreUnavailable:
            self.waitaof_supported = False
        if aof:
            return "aof+waitaof" if self.waitaof_supported else "aof"
        if (
            info.get("rdb_changes_since_last_save") is not None
            and info.get("rdb_bgsave_in_progress") is not None
        ):
            return "rdb-only"
        return "off"

    async def wait_durable(self) -> None:
        """After an admin write: wait until it is in the local append-only file."""
        if self.waitaof_supported:
            await self._call(lambda: self.client.execute_command("WAITAOF", 1, 0, 2000))

    # -- changes -----------------------------------------------------------------------
    async def publish(self, changes: Iterable[Change]) -> None:
        async def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            for change in changes:
                payload = change.encode()
                pipe.xadd(Keys.changelog, {"c": payload}, maxlen=CHANGELOG_MAXLEN, approximate=True)
                pipe.publish(CHANGES_CHANNEL, payload)
            await pipe.execute()

        await self._call(op)

    async def changelog_tail(self) -> str:
        entries = await self._call(lambda: self.client.xrevrange(Keys.changelog, count=1))
        return entries[0][0].decode() if entries else "0-0"

    async def changes_since(self, last_id: str) -> tuple[str, list[Change], bool]:
        """Changes after `last_id`: (new last id, changes, gap) — gap: the log was trimmed past it."""
        result = await self._call(lambda: self.client.xread({Keys.changelog: last_id}, count=1000))
        if not result:
            return last_id, [], False
        entries = result[0][1]
        gap = False
        if last_id != "0-0":
            info = await self._call(lambda: self.client.xinfo_stream(Keys.changelog))
            deleted = info.get("max-deleted-entry-id")
            if isinstance(deleted, bytes):
                deleted = deleted.decode()
            gap = bool(deleted) and _stream_id_gt(str(deleted), last_id)
        changes = [Change.decode(fields[b"c"]) for _, fields in entries]
        return entries[-1][0].decode(), changes, gap

    # -- orgs and teams -----------------------------------------------------------------
    async def list_orgs(self) -> list[str]:
        members = await self._call(lambda: self.client.smembers(Keys.orgs))
        return sorted(m.decode() for m in members)

    async def ensure_org(self, org: str) -> None:
        await self._call(lambda: self.client.sadd(Keys.orgs, org))

    async def create_team(self, team: TeamRecord) -> None:
        await self.ensure_org(team.org)

        async def op() -> None:
            created = await self.client.set(
                Keys.team(team.org, team.name), orjson.dumps(team.to_json()), nx=True
            )
            if not created:
                raise Conflict(f"team {team.name!r} already exists in org {team.org!r}")
            await self.client.sadd(Keys.teams(team.org), team.name)

        await self._call(op)
        await self.wait_durable()

    async def get_team(self, org: str, name: str) -> TeamRecord | None:
        raw = await self._call(lambda: self.client.get(Keys.team(org, name)))
        return TeamRecord.from_json(orjson.loads(raw)) if raw else None

    async def list_teams(self, org: str) -> list[TeamRecord]:
        names = sorted(m.decode() for m in await self._call(lambda: self.client.smembers(Keys.teams(org))))
        if not names:
            return []
        raws = await self._call(lambda: self.client.mget([Keys.team(org, n) for n in names]))
        return [TeamRecord.from_json(orjson.loads(r)) for r in raws if r]

    async def put_team(self, team: TeamRecord) -> None:
        await self._call(
            lambda: self.client.set(Keys.team(team.org, team.name), orjson.dumps(team.to_json()))
        )
        await self.wait_durable()
        await self.publish([Change("team", f"{team.org}/{team.name}")])

    # -- service accounts ---------------------------------------------------------------
    async def create_service_account(self, sa: ServiceAccountRecord) -> None:
        async def op() -> None:
            created = await self.client.set(
                Keys.service_account(sa.org, sa.team, sa.name), orjson.dumps(sa.to_json()), nx=True
            )
            if not created:
                raise Conflict(f"service account {sa.name!r} already exists in team {sa.team!r}")
            await self.client.sadd(Keys.service_accounts(sa.org, sa.team), sa.name)

        await self._call(op)
        await self.wait_durable()

    async def get_service_account(self, org: str, team: str, name: str) -> ServiceAccountRecord | None:
        raw = await self._call(lambda: self.client.get(Keys.service_account(org, team, name)))
        return ServiceAccountRecord.from_json(orjson.loads(raw)) if raw else None

    async def list_service_accounts(self, org: str, team: str) -> list[ServiceAccountRecord]:
        names = sorted(
            m.decode()
            for m in await self._call(lambda: self.client.smembers(Keys.service_accounts(org, team)))
        )
        if not names:
            return []
        raws = await self._call(lambda: self.client.mget([Keys.service_account(org, team, n) for n in names]))
        return [ServiceAccountRecord.from_json(orjson.loads(r)) for r in raws if r]

    async def delete_service_account(self, org: str, team: str, name: str) -> None:
        async def op() -> None:
            await self.client.delete(Keys.service_account(org, team, name))
            await self.client.srem(Keys.service_accounts(org, team), name)

        await self._call(op)
        await self.wait_durable()

    # -- tokens ---------------------------------------------------------------------------
    async def create_token(self, token: TokenRecord) -> None:
        """Index first, then the record; durable before returning."""
        await self.ensure_org(token.org)

        async def op() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(Keys.team_tokens(token.org, token.team), {token.id: token.created_at})
            pipe.zadd(Keys.org_tokens(token.org), {token.id: token.created_at})
            await pipe.execute()
            created = await self.client.hsetnx(Keys.token(token.id), "data", orjson.dumps(token.to_json()))
            if not created:
                raise Conflict("token id collision")

        await self._call(op)
        await self.wait_durable()

    async def get_token(self, key_id: str) -> TokenRecord | None:
        raw = await self._call(lambda: self.client.hget(Keys.token(key_id), "data"))
        return TokenRecord.from_json(orjson.loads(raw)) if raw else None

    async def get_tokens_with_usage(self, key_ids: Sequence[str]) -> list[tuple[TokenRecord, float | None]]:
        async def op() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for kid in key_ids:
                pipe.hmget(Keys.token(kid), ["data", "last_used_at"])
            return list(await pipe.execute())

        rows = await self._call(op)
        result = []
        for data, used in rows:
            if data:
                result.append((TokenRecord.from_json(orjson.loads(data)), float(used) if used else None))
        return result

    async def list_token_ids(self, org: str, team: str | None = None, *, all_org: bool = False) -> list[str]:
        key = Keys.org_tokens(org) if all_org else Keys.team_tokens(org, team)
        ids = await self._call(lambda: self.client.zrange(key, 0, -1))
        return [i.decode() for i in ids]

    async def put_token(self, token: TokenRecord) -> None:
        """Replace an existing token record (revoke, restore) and announce it."""
        await self._call(
            lambda: self.client.hset(Keys.token(token.id), "data", orjson.dumps(token.to_json()))
        )
        await self.wait_durable()
        await self.publish([Change("token", token.id)])

    async def delete_token(self, token: TokenRecord) -> None:
        async def op() -> None:
            await self.client.delete(Keys.token(token.id))
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(Keys.team_tokens(token.org, token.team), token.id)
            pipe.zrem(Keys.org_tokens(token.org), token.id)
            await pipe.execute()

        await self._call(op)
        await self.wait_durable()
        await self.publish([Change("token", token.id)])

    async def touch_last_used(self, used: dict[str, float]) -> None:
        if not used:
            return

        async def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            for kid, at in used.items():
                await self._touch(keys=[Keys.token(kid)], args=[repr(at)], client=pipe)
            await pipe.execute()

        await self._call(op)

    async def last_used(self, key_id: str) -> float | None:
        raw = await self._call(lambda: self.client.hget(Keys.token(key_id), "last_used_at"))
        return float(raw) if raw else None

    # -- audit stream -----------------------------------------------------------------------
    async def append_audit(self, events: Sequence[bytes], maxlen: int) -> None:
        async def op() -> None:
            for start in range(0, len(events), AUDIT_BATCH):
                batch = events[start : start + AUDIT_BATCH]
                await self._append_audit(keys=[Keys.audit], args=[maxlen, *batch])

        await self._call(op)

    async def read_audit(
        self, start: str = "-", end: str = "+", count: int = 100, reverse: bool = True
    ) -> list[tuple[str, dict[str, Any]]]:
        if reverse:
            rows = await self._call(lambda: self.client.xrevrange(Keys.audit, end, start, count=count))
        else:
            rows = await self._call(lambda: self.client.xrange(Keys.audit, start, end, count=count))
        return [(i.decode(), orjson.loads(f[b"e"])) for i, f in rows]


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _stream_id_gt(a: str, b: str) -> bool:
    return _parse_id(a) > _parse_id(b)


def now() -> float:
    return time.time()
