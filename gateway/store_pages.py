"""Bounded pages of the store's indexes, so that no admin list reads a whole index at once.

Token indexes are sorted sets scored by created_at: a page continues after a cursor row
(created_at, id) in O(log n + count), also when that row was deleted since (see
store_scripts.INDEX_PAGE). Teams and service accounts are paged in name order through a
name index (a sorted set with all scores 0), rebuilt from the set when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway import store_scripts
from tokenward.gateway.records import ServiceAccountRecord, TeamRecord
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink


@dataclass(frozen=True, slots=True)
class IndexPage:
    """Rows of an index after a cursor: (member, score) in index order; `more`: rows follow."""

    rows: list[tuple[str, float]]
    more: bool



class IndexPages(StoreLink):
    """Pages of the token, team and service-account indexes after a cursor."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._index_page = client.register_script(store_scripts.INDEX_PAGE)
        self._sync_name_index = client.register_script(store_scripts.SYNC_NAME_INDEX)

    async def token_index_page(
        self,
        org: str,
        team: str | None,
        after: tuple[float, str] | None,
        count: int,
        *,
        service_account: str | None = None,
        all_org: bool = False,
        account_id: str | None = None,
    ) -> IndexPage:
        """Up to `count` (id, created_at) rows of a team's token index (or of one of its
        service accounts' indexes, or of an org-level account's: all its teams; `all_org`: of
        the org's index of every token, team and org level) after the cursor row `after`,
        oldest first."""
        if account_id is not None:
            key = Keys.account_tokens(org, account_id)
        elif all_org:
            key = Keys.org_tokens(org)
        elif team is not None and service_account is not None:
            key = Keys.service_account_tokens(org, team, service_account)
        else:
            key = Keys.team_tokens(org, team)
        score, member = (repr(after[0]), after[1]) if after is not None else ("0", "")
        raw = await self._call(lambda: self._index_page(keys=[key], args=[member, score, count + 1]))
        rows = [(raw[i].decode(), float(raw[i + 1])) for i in range(0, len(raw), 2)]
        return IndexPage(rows[:count], len(rows) > count)

    async def _name_page(
        self, members: str, by_name: str, after: str | None, count: int
    ) -> tuple[list[str], bool]:
        await self._call(lambda: self._sync_name_index(keys=[members, by_name]))
        low = f"({after}" if after is not None else "-"
        raw = await self._call(
            lambda: self.client.zrange(by_name, low, "+", bylex=True, offset=0, num=count + 1)
        )
        names = [n.decode() for n in raw]
        return names[:count], len(names) > count

    async def team_page(
        self, org: str, after: str | None, count: int
    ) -> tuple[list[str], list[TeamRecord], bool]:
        """Up to `count` team names after `after` in name order, their records (a name whose
        record is gone is skipped), and whether more names follow."""
        names, more = await self._name_page(Keys.teams(org), Keys.teams_by_name(org), after, count)
        if not names:
            return names, [], more
        raws = await self._call(lambda: self.client.mget([Keys.team(org, n) for n in names]))
        return names, [TeamRecord.from_json(orjson.loads(r)) for r in raws if r], more

    async def service_account_page(
        self, org: str, team: str, after: str | None, count: int
    ) -> tuple[list[str], list[ServiceAccountRecord], bool]:
        names, more = await self._name_page(
            Keys.service_accounts(org, team), Keys.service_accounts_by_name(org, team), after, count
        )
        if not names:
            return names, [], more
        raws = await self._call(lambda: self.client.mget([Keys.service_account(org, team, n) for n in names]))
        return names, [ServiceAccountRecord.from_json(orjson.loads(r)) for r in raws if r], more
