"""Teams and service accounts: their changes, with no HTTP, audited like a token's.

A team's permission set bounds what its tokens can do, so no team may hold an org-level
power (`refuse_org_powers`). A service account of a team is an org-level account with that
one membership (`tokenward.accounts`); it can be deleted only once none of its tokens is active.
"""

from __future__ import annotations

import time
from dataclasses import replace

from tokenward.accounts import Accounts
from tokenward.actor import Actor, Changes
from tokenward.gateway.records import AccountRecord, TeamRecord
from tokenward.gateway.scopes import format_scopes
from tokenward.rules import refuse_org_powers, scopes_field


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
    ) -> AccountRecord:
        """A service account of `team` (an org-level account with that one membership)."""
        await self.team(org, team)
        return await Accounts(self.runtime).create(
            actor, org, name, description=description, owner="", teams=[team]
        )

    async def delete_service_account(self, actor: Actor, org: str, team: str, name: str) -> None:
        """Delete a service account of `team` alone that has no active tokens, or take `team`
        out of one shared with other teams (Conflict while it has active tokens there)."""
        await Accounts(self.runtime).leave_or_delete(actor, org, team, name)
