"""Org-level service accounts in the store: each change is one script on the org's slot.

An account's record lives under its stable id; its name is unique in the org (a name -> id
hash) and listed in name-sorted sets, the org's and each member team's. `put_account` writes
a record and all of those in one script, with its audit event, as a compare-and-set on the
record it was decided on (and, for a change that must not race a new token, on the account's
issue counter). A token of an account is indexed by `index_account_token`, which checks in
the same script that the account still exists and holds the token's team: a membership
removed (or an account deleted) meanwhile refuses the token instead of leaving it outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway.records import AccountRecord, TokenRecord
from tokenward.gateway.store_audit import AuditEntry, AuditStream
from tokenward.gateway.store_changes import Change, ChangeFeed
from tokenward.gateway.store_keys import Keys

# What the scripts answer besides 1 (done).
STALE, EXISTS, NAME_TAKEN, QUOTA, NO_ACCOUNT, NOT_MEMBER = -2, -5, -6, -1, -7, -8

# KEYS: record, names hash, by-name set, issue counter, former-names hash, the team sets (n), the
# audit stream (optional). ARGV: expected record ('' absent), new record ('' delete), id, old name ('' none),
# new name ('' none), expected issue counter ('' unchecked), n, audit maxlen, audit event
# ('' none), then one op per team set: '+' add the new name, '-' drop the old, '=' move it.
PUT_ACCOUNT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return -5 end
elseif current ~= ARGV[1] then
  return -2
end
if ARGV[6] ~= '' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[6] then return -2 end
local old, new, id = ARGV[4], ARGV[5], ARGV[3]
if new ~= '' and new ~= old then
  local holder = redis.call('HGET', KEYS[2], new)
  if holder and holder ~= id then return -6 end
end
if old ~= '' and old ~= new then
  if redis.call('HGET', KEYS[2], old) == id then redis.call('HDEL', KEYS[2], old) end
  redis.call('ZREM', KEYS[3], old)
  if new ~= '' then redis.call('HSET', KEYS[5], old, id) end
end
if new ~= '' then
  redis.call('HSET', KEYS[2], new, id)
  redis.call('ZADD', KEYS[3], 0, new)
end
local n = tonumber(ARGV[7])
for i = 1, n do
  local op, key = ARGV[9 + i], KEYS[5 + i]
  if op == '-' or op == '=' then redis.call('ZREM', key, old) end
  if op == '+' or op == '=' then redis.call('ZADD', key, 0, new) end
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
if ARGV[9] ~= '' and KEYS[6 + n] then
  redis.call('XADD', KEYS[6 + n], 'MAXLEN', '~', ARGV[8], '*', 'e', ARGV[9])
end
return 1
"""

# A token's index entries (team or org level, org, account) within the quota, only while the
# account exists and holds the token's team; bumps the account's issue counter.
# KEYS: team index, org index, account's token index, account record, issue counter.
# ARGV: created_at, token id, quota (-1 none), team. Answers {code, held}.
INDEX_FOR_ACCOUNT = """
local raw = redis.call('GET', KEYS[4])
if not raw then return {-7, 0} end
local member = false
for _, team in ipairs(cjson.decode(raw)['teams']) do
  if team == ARGV[4] then member = true end
end
if not member then return {-8, 0} end
local held = redis.call('ZCARD', KEYS[1])
local quota = tonumber(ARGV[3])
if quota >= 0 and redis.call('ZSCORE', KEYS[1], ARGV[2]) == false and held >= quota then
  return {-1, held}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[5])
return {1, held + 1}
"""

# A revoked token of an account about to be restored: only while the account exists and holds
# the token's team, marked as being restored (an account delete or a team removal counts it as
# active, as it counts a token being issued) and the issue counter bumped, so a delete or
# removal decided before the mark fails its compare-and-set and counts again.
# KEYS: account record, issue counter, restoring hash. ARGV: team, token id, time.
MARK_RESTORE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return -7 end
local member = false
for _, team in ipairs(cjson.decode(raw)['teams']) do
  if team == ARGV[1] then member = true end
end
if not member then return -8 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1] .. '\t' .. ARGV[3])
redis.call('INCR', KEYS[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class AccountWrite:
    """One account change: the record decided on (None: create), the record to write (None:
    delete), and whether it must also find the issue counter still at `issued`."""

    before: AccountRecord | None
    before_raw: bytes | None
    after: AccountRecord | None
    issued: str | None = None  # the issue counter read before counting its tokens
    audit: AuditEntry | None = None


class AccountStore(ChangeFeed, AuditStream):
    """Reads and atomic writes of org-level service accounts."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._accounts_migrated: set[tuple[str, str]] = set()

    async def accounts_migrated(self, org: str, team: str) -> bool:
        if (org, team) in self._accounts_migrated:
            return True
        if await self._call(lambda: self.client.exists(Keys.accounts_migrated(org, team))):
            self._accounts_migrated.add((org, team))
            return True
        return False

    async def mark_accounts_migrated(self, org: str, team: str) -> None:
        marker = Keys.accounts_migrated(org, team)
        await self._write(marker, ("SET", marker, "1"))
        self._accounts_migrated.add((org, team))

    async def get_account_raw(self, org: str, account_id: str) -> bytes | None:
        raw = await self._call(lambda: self.client.get(Keys.account(org, account_id)))
        return bytes(raw) if raw else None

    async def get_account(self, org: str, account_id: str) -> AccountRecord | None:
        raw = await self.get_account_raw(org, account_id)
        return AccountRecord.from_json(orjson.loads(raw)) if raw else None

    async def account_id(self, org: str, name: str) -> str | None:
        found = await self._call(lambda: self.client.hget(Keys.account_names(org), name))
        return found.decode() if found else None

    async def former_account_id(self, org: str, name: str) -> str | None:
        """The id of the account that last gave up `name` in a rename (audit searches)."""
        found = await self._call(lambda: self.client.hget(Keys.account_former_names(org), name))
        return found.decode() if found else None

    async def account_issued(self, org: str, account_id: str) -> str:
        found = await self._call(lambda: self.client.get(Keys.account_issued(org, account_id)))
        return found.decode() if found else "0"

    async def account_page(
        self, org: str, team: str | None, after: str | None, count: int
    ) -> tuple[list[str], list[AccountRecord], bool]:
        """Up to `count` account names after `after` in name order (the org's, or one team's
        members), their records (a name renamed or deleted meanwhile is skipped), and whether
        more names follow."""
        key = Keys.accounts_by_name(org) if team is None else Keys.team_accounts(org, team)
        low = f"({after}" if after is not None else "-"
        raw = await self._call(lambda: self.client.zrange(key, low, "+", bylex=True, offset=0, num=count + 1))
        names = [n.decode() for n in raw][: count + 1]
        more = len(names) > count
        names = names[:count]
        if not names:
            return names, [], more
        ids = await self._call(lambda: self.client.hmget(Keys.account_names(org), names))
        wanted = [i.decode() for i in ids if i]
        raws = await self._call(lambda: self.client.mget([Keys.account(org, i) for i in wanted])) if wanted else []
        records = [AccountRecord.from_json(orjson.loads(r)) for r in raws if r]
        return names, [r for r in records if team is None or team in r.teams], more

    async def put_account(self, write: AccountWrite) -> int:
        """Write an account change atomically (see PUT_ACCOUNT): 1, or STALE (decided on a
        record, or a counter, that has changed since), EXISTS or NAME_TAKEN."""
        before, after = write.before, write.after
        some = after or before
        assert some is not None
        org, account_id = some.org, some.id
        old_name, new_name = (before.name if before else ""), (after.name if after else "")
        old_teams, new_teams = set(before.teams if before else ()), set(after.teams if after else ())
        teams = sorted(old_teams | new_teams)
        ops = [
            "=" if t in old_teams and t in new_teams else ("+" if t in new_teams else "-") for t in teams
        ]
        key = Keys.account(org, account_id)
        keys = [
            key,
            Keys.account_names(org),
            Keys.accounts_by_name(org),
            Keys.account_issued(org, account_id),
            Keys.account_former_names(org),
            *(Keys.team_accounts(org, t) for t in teams),
        ]
        audit = write.audit
        in_script = audit is not None and not self.cluster
        if in_script:
            keys.append(Keys.audit)
        args = [
            write.before_raw or b"",
            orjson.dumps(after.to_json()) if after else b"",
            account_id,
            old_name,
            new_name,
            write.issued if write.issued is not None else "",
            len(teams),
            audit.maxlen if audit else 0,
            audit.payload if in_script and audit else b"",
            *ops,
        ]
        (outcome,) = await self._write(key, ("EVAL", PUT_ACCOUNT, len(keys), *keys, *args))
        if int(outcome) != 1:
            return int(outcome)
        if audit is not None and self.cluster:
            await self._append_audit_durably(audit)
        await self.publish([Change("service_account", f"{org}/{account_id}")])
        return 1

    async def index_account_token(self, token: TokenRecord, max_per_index: int | None) -> tuple[int, int]:
        """A token's index entries, as `Store.index_token`, for a token of an account: (code,
        held), code 1, QUOTA, NO_ACCOUNT or NOT_MEMBER (see INDEX_FOR_ACCOUNT)."""
        assert token.service_account_id is not None and token.team is not None
        org, account_id = token.org, token.service_account_id
        team_index = Keys.team_tokens(org, token.team)
        keys = [
            team_index,
            Keys.org_tokens(org),
            Keys.account_tokens(org, account_id),
            Keys.account(org, account_id),
            Keys.account_issued(org, account_id),
        ]
        args = [repr(token.created_at), token.id, max_per_index if max_per_index is not None else -1, token.team]
        ((code, held),) = await self._write(team_index, ("EVAL", INDEX_FOR_ACCOUNT, len(keys), *keys, *args))
        return int(code), int(held)

    async def account_token_ids(self, org: str, account_id: str, start: int, count: int) -> list[tuple[str, float]]:
        """Up to `count` (token id, created_at) rows of an account's token index from rank
        `start` (a token deleted meanwhile may shift a row past the reader: only deleted
        tokens leave the index, and they are not active)."""
        key = Keys.account_tokens(org, account_id)
        rows = await self._call(lambda: self.client.zrange(key, start, start + count - 1, withscores=True))
        return [(m.decode(), float(s)) for m, s in rows]

    async def index_legacy_account_tokens(self, org: str, team: str, name: str, account_id: str) -> None:
        """A legacy (team-level) account's token index merged into its org account's."""
        dest = Keys.account_tokens(org, account_id)
        await self._write(
            dest, ("ZUNIONSTORE", dest, 2, dest, Keys.service_account_tokens(org, team, name), "AGGREGATE", "MIN")
        )

    async def mark_restore(self, token: TokenRecord, at: float) -> int:
        """Mark a token of an account as being restored (see MARK_RESTORE): 1, NO_ACCOUNT or
        NOT_MEMBER."""
        assert token.service_account_id is not None and token.team is not None
        org, account_id = token.org, token.service_account_id
        keys = [Keys.account(org, account_id), Keys.account_issued(org, account_id), Keys.account_restoring(org, account_id)]
        (code,) = await self._write(keys[0], ("EVAL", MARK_RESTORE, len(keys), *keys, token.team, token.id, repr(at)))
        return int(code)

    async def unmark_restore(self, token: TokenRecord) -> None:
        assert token.service_account_id is not None
        key = Keys.account_restoring(token.org, token.service_account_id)
        await self._write(key, ("HDEL", key, token.id))

    async def account_restoring(self, org: str, account_id: str) -> dict[str, tuple[str, float]]:
        """The account's tokens being restored: token id -> (team, marked at)."""
        raw = await self._call(lambda: self.client.hgetall(Keys.account_restoring(org, account_id)))
        marks = {}
        for token_id, value in raw.items():
            team, _, at = value.decode().partition("\t")
            marks[token_id.decode()] = (team, float(at or 0))
        return marks
