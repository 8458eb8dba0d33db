"""Teams and service accounts: their changes, with no HTTP, audited like a token's.

A team's permission set bounds what its tokens can do, so no team may hold an org-level
power (`refuse_org_powers`). A service account groups a team's tokens; it can be deleted
only once none of them is active.
"""

from __future__ import annotations

import time
from dataclasses import replace

from tokenward.actor import Actor, Changes
from tokenward.gateway.records import ACTIVE, ServiceAccountRecord, TeamRecord
from tokenward.gateway.scopes import format_scopes
from tokenward.gateway.store_records import Conflict
from tokenward.rules import NotFound, refuse_org_powers, scopes_field

ACTIVE_COUNT_CAP = 1000  # tokens of one service account examined per count (per call)
COUNT_CHUNK = 50  # records read per store round trip


class Directory(Changes):
    """Team and service-account changes, each written with its audit event."""

    async def create_team(self, actor: Actor, org: str, name: str, permissions: list[str]) -> TeamRecord:
        granted = scopes_field(permissions, "permissions")
        refuse_org_powers(granted, "permissions")
        team = TeamRecord(org, name, granted, time.time(), actor.name)
        entry = self.entry(actor, "team.created", org=org, team=name, permissions=format_scopes(granted))
        await self.still_authorized(actor)
        await self.store.create_team(team, entry)  # Conflict: it exists
        self.committed(entry)
        return team

    async def set_permissions(self, actor: Actor, org: str, name: str, permissions: list[str]) -> TeamRecord:
        """Replace a team's permission set; takes effect on its tokens' next request."""
        granted = scopes_field(permissions, "permissions")
        refuse_org_powers(granted, "permissions")
        team = await self.team(org, name)
        updated = replace(team, permissions=granted)
        entry = self.entry(
            actor,
            "team.permissions_changed",
            org=org,
            team=name,
            before=format_scopes(team.permissions),
            after=format_scopes(granted),
        )
        await self.still_authorized(actor)
        await self.store.put_team(updated, entry)
        self.committed(entry)
        return updated

    async def create_service_account(
        self, actor: Actor, org: str, team: str, name: str, description: str
    ) -> ServiceAccountRecord:
        await self.team(org, team)
        sa = ServiceAccountRecord(org, team, name, description, time.time(), actor.name)
        entry = self.entry(actor, "service_account.created", org=org, team=team, service_account=sa.name)
        await self.still_authorized(actor)
        await self.store.create_service_account(sa, entry)  # Conflict: it exists
        self.committed(entry)
        return sa

    async def active_tokens(
        self, org: str, team: str, name: str, stop_at: int | None = None
    ) -> tuple[int, bool]:
        """Active tokens of a service account, read from its own index in chunks: stops after
        `stop_at` (default ACTIVE_COUNT_CAP) active ones or ACTIVE_COUNT_CAP tokens examined.
        (count, exact)."""
        stop_at = ACTIVE_COUNT_CAP if stop_at is None else stop_at
        active, examined = 0, 0
        position: tuple[float, str] | None = None
        while True:
            page = await self.store.token_index_page(org, team, position, COUNT_CHUNK, service_account=name)
            now = time.time()
            for token, _ in await self.store.get_tokens_with_usage([m for m, _ in page.rows]):
                if token.service_account == name and token.status(now) == ACTIVE:
                    active += 1
            examined += len(page.rows)
            if page.rows:
                position = (page.rows[-1][1], page.rows[-1][0])
            if not page.more:
                return active, True
            if active >= stop_at or examined >= ACTIVE_COUNT_CAP:
                return active, False

    async def delete_service_account(self, actor: Actor, org: str, team: str, name: str) -> None:
        """Delete a service account that has no active tokens (Conflict otherwise)."""
        if await self.store.get_service_account(org, team, name) is None:
            raise NotFound(f"service account {name!r} does not exist in team {team!r}")
        await self.store.ensure_service_account_indexes(org, team)
        active, exact = await self.active_tokens(org, team, name, 1)
        if active:
            raise Conflict(f"service account {name!r} has active tokens; revoke them first")
        if not exact:
            raise Conflict(
                f"service account {name!r} has more than {ACTIVE_COUNT_CAP} tokens to check; "
                "delete its revoked and expired tokens first"
            )
        entry = self.entry(actor, "service_account.deleted", org=org, team=team, service_account=name)
        await self.still_authorized(actor)
        await self.store.delete_service_account(org, team, name, entry)
        self.committed(entry)
