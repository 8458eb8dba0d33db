"""Reads and writes of the store's records: orgs, teams, service accounts and tokens.

A record and its index entries share the org's hash tag (see store_keys), except a token's
record, which lives under its key id. Index entries are written before records and removed
after them, so a crash leaves at most a dangling index entry (skipped when listing), never
an unlisted live token. Admin writes are durable before they return (see store_link), and
carry their audit event when given one (see store_audit). A token's lifecycle transitions
are not here: see `Store.change_token` (store.py), which never writes back a stale record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway import store_scripts
from tokenward.gateway.records import ServiceAccountRecord, TeamRecord, TokenRecord
from tokenward.gateway.store_audit import AuditEntry, AuditStream
from tokenward.gateway.store_changes import Change, ChangeFeed
from tokenward.gateway.store_keys import Keys

TOUCH_CONCURRENCY = 64  # cluster: last-used updates in flight at once (one script call each)


class Conflict(Exception):
    """The record already exists."""



class RecordStore(ChangeFeed, AuditStream):
    """Orgs, teams, service accounts and token records: create, read, list, replace, delete."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._touch = client.register_script(store_scripts.TOUCH)
        self._set_if_unchanged = client.register_script(store_scripts.SET_IF_UNCHANGED)

    # -- orgs and teams -----------------------------------------------------------------
    async def list_orgs(self) -> list[str]:
        members = await self._call(lambda: self.client.smembers(Keys.orgs))
        return sorted(m.decode() for m in members)

    async def ensure_org(self, org: str) -> None:
        await self._call(lambda: self.client.sadd(Keys.orgs, org))

    async def create_team(self, team: TeamRecord, audit: AuditEntry | None = None) -> None:
        """Index first, then the record; durable before returning."""
        await self.ensure_org(team.org)
        key = Keys.team(team.org, team.name)
        names = (Keys.teams(team.org), Keys.teams_by_name(team.org))
        created = await self._create_audited(
            key, orjson.dumps(team.to_json()), audit, name=team.name, name_keys=names
        )
        if not created:
            raise Conflict(f"team {team.name!r} already exists in org {team.org!r}")

    async def get_team(self, org: str, name: str) -> TeamRecord | None:
        raw = await self._call(lambda: self.client.get(Keys.team(org, name)))
        return TeamRecord.from_json(orjson.loads(raw)) if raw else None

    async def list_teams(self, org: str) -> list[TeamRecord]:
        names = sorted(m.decode() for m in await self._call(lambda: self.client.smembers(Keys.teams(org))))
        if not names:
            return []
        raws = await self._call(lambda: self.client.mget([Keys.team(org, n) for n in names]))
        return [TeamRecord.from_json(orjson.loads(r)) for r in raws if r]

    async def put_team(self, team: TeamRecord, audit: AuditEntry | None = None) -> None:
        key = Keys.team(team.org, team.name)
        await self._write_audited(key, [("SET", key, orjson.dumps(team.to_json()))], audit)
        await self.publish([Change("team", f"{team.org}/{team.name}")])

    # -- service accounts of one team (the model before org-level accounts, store_accounts):
    # read once per team to migrate them, and by tools and tests that seed old stores ----------
    async def create_service_account(self, sa: ServiceAccountRecord, audit: AuditEntry | None = None) -> None:
        key = Keys.service_account(sa.org, sa.team, sa.name)
        names = (Keys.service_accounts(sa.org, sa.team), Keys.service_accounts_by_name(sa.org, sa.team))
        created = await self._create_audited(
            key, orjson.dumps(sa.to_json()), audit, name=sa.name, name_keys=names
        )
        if not created:
            raise Conflict(f"service account {sa.name!r} already exists in team {sa.team!r}")

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

    async def delete_service_account(
        self, org: str, team: str, name: str, audit: AuditEntry | None = None
    ) -> None:
        key = Keys.service_account(org, team, name)
        await self._write_audited(
            key,
            [
                ("DEL", key),
                ("SREM", Keys.service_accounts(org, team), name),
                ("ZREM", Keys.service_accounts_by_name(org, team), name),
            ],
            audit,
        )

    # -- tokens ---------------------------------------------------------------------------
    async def create_token(self, token: TokenRecord, audit: AuditEntry | None = None) -> None:
        """Index first, then the record (two slots in a cluster); durable before returning."""
        await self.ensure_org(token.org)
        index = Keys.org_tokens(token.org)
        await self._write(
            index,
            ("ZADD", Keys.team_tokens(token.org, token.team), token.created_at, token.id),
            ("ZADD", index, token.created_at, token.id),
        )
        key = Keys.token(token.id)
        created = await self._create_audited(key, orjson.dumps(token.to_json()), audit, kind="hash")
        if not created:
            raise Conflict("token id collision")

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
        """Replace a token record blindly and announce it (tests and tools). The admin API's
        lifecycle transitions use `change_token`, which never writes back a stale record."""
        key = Keys.token(token.id)
        await self._write(key, ("HSET", key, "data", orjson.dumps(token.to_json())), ("HINCRBY", key, "v", 1))
        await self.publish([Change("token", token.id)])

    async def delete_token(self, token: TokenRecord) -> None:
        """The record first, then the index entries."""
        key = Keys.token(token.id)
        await self._write(key, ("DEL", key))
        index = Keys.org_tokens(token.org)
        await self._write(
            index, ("ZREM", Keys.team_tokens(token.org, token.team), token.id), ("ZREM", index, token.id)
        )
        await self.publish([Change("token", token.id)])

    async def key_secret_check(self, key_id: str, secret_hash: str, check_key: str, check: str) -> bool:
        """Give a legacy record (no check key) a keyed secret check, after its secret was
        proven. Only the two check fields change, by compare-and-set on the whole record:
        if anything else wrote it since it was read (a revoke, a rotation), nothing is
        written and the next verification tries again. Not waited for on disk: losing it
        only leaves the legacy check in place."""
        key = Keys.token(key_id)
        raw = await self._call(lambda: self.client.hget(key, "data"))
        if not raw:
            return False
        data = orjson.loads(raw)
        if data.get("check_key") or data.get("secret_hash") != secret_hash:
            return False
        data["check_key"], data["secret_check"] = check_key, check
        new = orjson.dumps(data)
        if not await self._call(lambda: self._set_if_unchanged(keys=[key], args=[raw, new])):
            return False
        await self.publish([Change("token", key_id)])
        return True

    async def touch_last_used(self, used: dict[str, float]) -> None:
        if not used:
            return

        async def op() -> None:
            if self.cluster:
                # a cluster pipeline refuses scripts: one call per token, a bounded number at once
                items = list(used.items())
                for start in range(0, len(items), TOUCH_CONCURRENCY):
                    await asyncio.gather(
                        *(
                            self._touch(keys=[Keys.token(kid)], args=[repr(at)])
                            for kid, at in items[start : start + TOUCH_CONCURRENCY]
                        )
                    )
                return
            pipe = self.client.pipeline(transaction=False)
            for kid, at in used.items():
                await self._touch(keys=[Keys.token(kid)], args=[repr(at)], client=pipe)
            await pipe.execute()

        await self._call(op)

    async def last_used(self, key_id: str) -> float | None:
        raw = await self._call(lambda: self.client.hget(Keys.token(key_id), "last_used_at"))
        return float(raw) if raw else None
