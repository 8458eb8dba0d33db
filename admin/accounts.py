"""Org-level service accounts: create, update (rename, describe, owner, memberships), delete,
with no HTTP, each change one atomic store script with its audit event.

An account has a stable id that its tokens and audit events keep, and a name unique in the
org that the gateway forwards (`X-Tokenward-Service-Account`, resolved from the id on each
verification, so a rename reaches every token at once). A token of an account is bound to one
of the account's teams. Who may change what: an org admin, anything in its org; a team admin,
only accounts of its own team alone (it may also take its own team out of a shared account),
never another team's membership. A membership with active tokens of the account in that team
cannot be removed, nor an account with active tokens deleted (Conflict).

Accounts from before (one per team, `tw:{org}:team:{team}:sa:{name}`) are migrated once per
team on first use (`migrate_team`): same name, description, creator; two teams' accounts of
one name become one account with both memberships, so the name they forward stays the same.
The legacy records are left in place, untouched.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from tokenward.actor import Actor, Changes
from tokenward.gateway.records import ACTIVE, AccountRecord, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.store import Store, TokenEdit
from tokenward.gateway.store_accounts import EXISTS, NAME_TAKEN, NO_ACCOUNT, NOT_MEMBER, STALE, AccountWrite
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.store_records import Conflict
from tokenward.rules import Invalid, NotFound, is_org_admin

if TYPE_CHECKING:
    from tokenward.gateway.runtime import Runtime

WRITE_ATTEMPTS = 20  # a change decided again on a record that keeps changing, then 503
COUNT_CAP = 1000  # tokens of one account examined per count
COUNT_CHUNK = 50
PENDING_SECONDS = 60.0  # an indexed token whose record is not there yet is being issued
RESTORE_SECONDS = PENDING_SECONDS / 2  # a restore commits within this of its mark, or not at all


def new_account_id() -> str:
    return f"sa_{secrets.token_hex(8)}"


def is_account_id(ref: str) -> bool:
    return ref.startswith("sa_")  # names are slugs: never an underscore


def _refused(message: str) -> Refusal:
    return Refusal(403, "forbidden", Step.TEAM, message)


class Accounts(Changes):
    """Every change to an org-level service account, decided and written atomically."""

    # -- reading -------------------------------------------------------------------------------
    async def find(self, org: str, ref: str) -> tuple[AccountRecord, bytes]:
        """The account named (or with the id) `ref`, and its stored bytes; NotFound."""
        account_id = ref if is_account_id(ref) else await self.store.account_id(org, ref)
        raw = await self.store.get_account_raw(org, account_id) if account_id else None
        if raw is None:
            raise NotFound(f"service account {ref!r} does not exist in org {org!r}")
        return AccountRecord.from_json(orjson.loads(raw)), raw

    async def visible(self, actor: Actor, org: str, ref: str) -> AccountRecord:
        """An account the actor may see: any of its org for an org admin; for a team admin, one
        that its team is a member of (else NotFound, as if it did not exist)."""
        account, _ = await self.find(org, ref)
        own = self._own_team(actor)
        if own is not None and own not in account.teams:
            raise NotFound(f"service account {ref!r} does not exist in team {own!r}")
        return account

    async def for_token(self, org: str, team: str, name: str) -> AccountRecord:
        """The account a new token of `team` names: it must exist and hold the team (Invalid)."""
        await self.migrate_team(org, team)
        account_id = await self.store.account_id(org, name)
        account = await self.store.get_account(org, account_id) if account_id else None
        if account is None:
            raise Invalid(f"service_account: {name!r} does not exist in org {org!r}", "service_account")
        if team not in account.teams:
            raise Invalid(  # its other teams are not named: the caller may not administer them
                f"service_account: {name!r} is not a member of team {team!r}; an org admin can add "
                f"the team to it (tokenward sa add-team {name} {team})",
                "service_account",
            )
        return account

    async def active_tokens(self, account: AccountRecord, team: str | None = None) -> tuple[int, bool]:
        """Active tokens of an account (of one of its teams): (count, exact). A token indexed
        in the last minute whose record is not written yet counts: it is being issued; so
        does one marked as being restored (`hold_for_restore`). The marks are read before
        the records: a restore that has cleared its mark has written its active record."""
        marks = await self.store.account_restoring(account.org, account.id)
        now = time.time()
        active = {t for t, (at_team, at) in marks.items() if at > now - PENDING_SECONDS and team in (None, at_team)}
        pending, start = 0, 0
        while start < COUNT_CAP:
            rows = await self.store.account_token_ids(account.org, account.id, start, COUNT_CHUNK)
            if not rows:
                return len(active) + pending, True
            found = {r.id: r for r, _ in await self.store.get_tokens_with_usage([m for m, _ in rows])}
            now = time.time()
            for token_id, created in rows:
                record = found.get(token_id)
                if record is None:
                    pending += token_id not in active and created > now - PENDING_SECONDS  # being issued
                elif (team is None or record.team == team) and record.status(now) == ACTIVE:
                    active.add(token_id)
            start += len(rows)
        return len(active) + pending, False

    async def hold_for_restore(self, token: TokenRecord) -> float:
        """Before a revoked token of an account is restored: Conflict unless its account still
        exists and holds the token's team, atomically marking it as being restored (an account
        delete or team removal then counts it as active until `release_restore`). The time
        of the mark: the restore must commit within RESTORE_SECONDS of it."""
        assert token.service_account_id is not None and token.team is not None
        at = time.time()
        code = await self.store.mark_restore(token, at)
        if code == NO_ACCOUNT:
            raise Conflict(
                f"the token's service account {token.service_account!r} no longer exists; "
                "it cannot be restored: issue a new token (of an existing account)"
            )
        if code == NOT_MEMBER:
            raise Conflict(
                f"the token's service account is no longer a member of team {token.team!r}; it cannot "
                "be restored: an org admin can add the team back to the account first"
            )
        if code != 1:
            raise StoreUnavailable(f"restore of {token.id}: store answered {code}")
        return at

    async def release_restore(self, token: TokenRecord) -> None:
        await self.store.unmark_restore(token)

    # -- changes -------------------------------------------------------------------------------
    async def create(
        self, actor: Actor, org: str, name: str, *, description: str, owner: str, teams: Sequence[str]
    ) -> AccountRecord:
        members = await self._teams(org, teams)
        own = self._own_team(actor)
        if own is not None and members != (own,):
            raise _refused(f"a team admin creates service accounts of its own team only ({own!r})")
        await self.migrate_org(org)  # a legacy account of this name, in any team, is taken first
        account = AccountRecord(
            new_account_id(), org, name, description, owner, members, time.time(), actor.name
        )
        entry = self.entry(actor, "service_account.created", **_fields(account), teams=list(members))
        await self.still_authorized(actor)
        outcome = await self.store.put_account(AccountWrite(None, None, account, audit=entry))
        if outcome == NAME_TAKEN:
            raise Conflict(f"service account {name!r} already exists in org {org!r}; names are unique in the org")
        if outcome != 1:
            raise StoreUnavailable(f"service account {name!r}: store answered {outcome}")
        self.committed(entry)
        return account

    async def update(
        self,
        actor: Actor,
        org: str,
        ref: str,
        *,
        name: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        add_teams: Sequence[str] = (),
        remove_teams: Sequence[str] = (),
    ) -> AccountRecord:
        """Rename, re-describe, re-own, add and remove memberships, in one atomic change."""
        if name is None and description is None and owner is None and not add_teams and not remove_teams:
            raise Invalid("nothing to change: give name, description, owner, add_teams or remove_teams", "body")
        added = await self._teams(org, add_teams, "add_teams")
        removed = tuple(dict.fromkeys(remove_teams))
        if name is not None:
            await self.migrate_org(org)  # names held by legacy accounts, in any team, are taken
        for _ in range(WRITE_ATTEMPTS):
            account, raw = await self.find(org, ref)
            self._may_change(actor, account, name, description, owner, added, removed)
            for team in removed:
                if team not in account.teams:
                    raise Invalid(f"remove_teams: {account.name!r} is not a member of team {team!r}", "remove_teams")
            issued = await self.store.account_issued(org, account.id) if removed else None
            for team in removed:
                active, exact = await self.active_tokens(account, team)
                if active or not exact:
                    raise Conflict(
                        f"service account {account.name!r} has active tokens in team {team!r} "
                        f"({active}{'' if exact else '+'}); revoke them (or let them expire) before "
                        "removing the team"
                    )
            teams = tuple(t for t in (*account.teams, *added) if t not in removed)
            renamed = name is not None and name != account.name
            updated = replace(
                account,
                name=account.name if name is None else name,
                description=account.description if description is None else description,
                owner=account.owner if owner is None else owner,
                teams=tuple(dict.fromkeys(teams)),
                updated_at=time.time(),
                updated_by=actor.name,
                former_names=(*account.former_names, account.name) if renamed else account.former_names,
            )
            changes: dict[str, object] = {}
            if renamed:
                changes["renamed_from"] = account.name
            for field in ("description", "owner"):
                if getattr(updated, field) != getattr(account, field):
                    changes[field] = getattr(updated, field)
            if updated.teams != account.teams:
                changes.update(teams_before=list(account.teams), teams=list(updated.teams))
            action = "service_account.renamed" if renamed else "service_account.updated"
            entry = self.entry(actor, action, **_fields(updated), **changes)
            await self.still_authorized(actor)
            outcome = await self.store.put_account(AccountWrite(account, raw, updated, issued, entry))
            if outcome == NAME_TAKEN:
                raise Conflict(f"service account {name!r} already exists in org {org!r}")
            if outcome == 1:
                self.committed(entry)
                return updated
        raise StoreUnavailable(f"service account {ref!r} kept changing")

    async def delete(self, actor: Actor, org: str, ref: str) -> None:
        """Delete an account without active tokens (Conflict otherwise)."""
        for _ in range(WRITE_ATTEMPTS):
            account, raw = await self.find(org, ref)
            own = self._own_team(actor)
            if own is not None and account.teams != (own,):
                if own not in account.teams:
                    raise NotFound(f"service account {ref!r} does not exist in team {own!r}")
                raise _refused(
                    f"service account {account.name!r} is also a member of teams a team admin of {own!r} "
                    "does not administer; only an org admin can delete it (remove your team instead)"
                )
            issued = await self.store.account_issued(org, account.id)
            active, exact = await self.active_tokens(account)
            if not active and not exact:
                raise Conflict(
                    f"service account {account.name!r} has more than {COUNT_CAP} tokens to check; "
                    "delete its revoked and expired tokens first"
                )
            if active:
                raise Conflict(
                    f"service account {account.name!r} has active tokens ({active}{'' if exact else '+'}); "
                    "revoke them first"
                )
            entry = self.entry(actor, "service_account.deleted", **_fields(account), teams=list(account.teams))
            await self.still_authorized(actor)
            if await self.store.put_account(AccountWrite(account, raw, None, issued, entry)) == 1:
                self.committed(entry)
                return
        raise StoreUnavailable(f"service account {ref!r} kept changing")

    async def leave_or_delete(self, actor: Actor, org: str, team: str, name: str) -> None:
        """The team-level DELETE: an account of this team alone is deleted; one shared with
        other teams loses this team's membership."""
        await self.migrate_team(org, team)
        account, _ = await self.find(org, name)
        if team not in account.teams:
            raise NotFound(f"service account {name!r} does not exist in team {team!r}")
        if account.teams == (team,):
            await self.delete(actor, org, account.id)
        else:
            await self.update(actor, org, account.id, remove_teams=[team])

    # -- rules ---------------------------------------------------------------------------------
    def _own_team(self, actor: Actor) -> str | None:
        """None for an org admin or an operator; else the team the (team admin) actor manages
        (the endpoint's permission has checked it administers that team, unconstrained)."""
        principal = actor.principal
        if principal is None or is_org_admin(principal):
            return None
        assert principal.token.team is not None
        return principal.token.team

    def _may_change(
        self,
        actor: Actor,
        account: AccountRecord,
        name: str | None,
        description: str | None,
        owner: str | None,
        added: tuple[str, ...],
        removed: tuple[str, ...],
    ) -> None:
        own = self._own_team(actor)
        if own is None:
            return
        if own not in account.teams:
            raise NotFound(f"service account {account.name!r} does not exist in team {own!r}")
        if any(team != own for team in added):
            raise _refused(f"a team admin of {own!r} cannot add a service account to another team")
        if any(team != own for team in removed):
            raise _refused(f"a team admin of {own!r} cannot remove another team's membership")
        edits = name is not None or description is not None or owner is not None
        if edits and account.teams != (own,):
            others = ", ".join(t for t in account.teams if t != own)
            raise _refused(
                f"service account {account.name!r} also belongs to {others}, which a team admin of "
                f"{own!r} does not administer; only an org admin can change it"
            )

    async def _teams(self, org: str, teams: Sequence[str], field: str = "teams") -> tuple[str, ...]:
        members = tuple(dict.fromkeys(teams))
        for team in members:
            if await self.store.get_team(org, team) is None:
                raise Invalid(f"{field}: team {team!r} does not exist in org {org!r}", field)
        return members

    # -- accounts from before (team-level) -------------------------------------------------------
    async def migrate_org(self, org: str, team: str | None = None) -> None:
        """`migrate_team` for one team, or (None) for every team of the org."""
        teams = [team] if team is not None else [t.name for t in await self.store.list_teams(org)]
        for name in teams:
            await self.migrate_team(org, name)

    async def migrate_team(self, org: str, team: str) -> None:
        """Once per team: its legacy accounts become org accounts (see the module docstring),
        their token indexes merged into the account's and their tokens given its id."""
        store = self.store
        if await store.accounts_migrated(org, team):
            return
        await store.ensure_service_account_indexes(org, team)
        for legacy in await store.list_service_accounts(org, team):
            for _ in range(WRITE_ATTEMPTS):
                account_id = await store.account_id(org, legacy.name)
                current = await store.get_account_raw(org, account_id) if account_id else None
                if current is None:
                    after = AccountRecord(
                        new_account_id(), org, legacy.name, legacy.description, "", (team,),
                        legacy.created_at, legacy.created_by,
                    )
                    write = AccountWrite(None, None, after)
                else:
                    before = AccountRecord.from_json(orjson.loads(current))
                    after = replace(before, teams=tuple(dict.fromkeys((*before.teams, team))))
                    write = AccountWrite(before, current, after)
                await store.index_legacy_account_tokens(org, team, legacy.name, after.id)
                if write.before is not None and team in write.before.teams:
                    outcome = 1
                else:
                    outcome = await store.put_account(write)
                if outcome == 1:
                    await self._give_tokens_id(after, team, legacy.name)
                    break
                if outcome not in (STALE, EXISTS, NAME_TAKEN):
                    raise StoreUnavailable(f"service account {legacy.name!r}: store answered {outcome}")
        await store.mark_accounts_migrated(org, team)

    async def _give_tokens_id(self, account: AccountRecord, team: str, name: str) -> None:
        start = 0
        while True:
            rows = await self.store.account_token_ids(account.org, account.id, start, COUNT_CHUNK)
            if not rows:
                return
            for token_id, _ in rows:

                def adopt(record: TokenRecord) -> TokenEdit | None:
                    legacy = record.service_account_id is None and record.service_account == name
                    if legacy and record.team == team:
                        return TokenEdit(replace(record, service_account_id=account.id))
                    return None

                await self.store.change_token(token_id, adopt)
            start += len(rows)


def _fields(account: AccountRecord) -> dict[str, object]:
    """What every service-account event names: the stable id and the name it has now."""
    return {"org": account.org, "service_account": account.name, "service_account_id": account.id}


async def account_names(store: Store, org: str, tokens: Sequence[TokenRecord]) -> dict[str, str]:
    """The current names of the accounts these tokens (of one org) belong to, by id."""
    ids = sorted({t.service_account_id for t in tokens if t.service_account_id and t.org == org})
    names = {}
    for account_id in ids:  # a page holds few accounts; each one GET
        account = await store.get_account(org, account_id)
        if account is not None:
            names[account_id] = account.name
    return names


@dataclass(frozen=True, slots=True)
class AccountFilter:
    """A token list's `service_account=NAME`: the account's id (its index spans its teams)."""

    id: str
    team: str | None  # None: the org-wide list (any of the account's teams)

    def wanted(self, keep: Callable[[TokenRecord], bool]) -> Callable[[TokenRecord], bool]:
        return lambda t: t.service_account_id == self.id and (self.team is None or t.team == self.team) and keep(t)


async def account_filter(runtime: Runtime, org: str, team: str | None, name: str) -> AccountFilter:
    """The filter of `name`'s tokens in `team` (None: in any team of the org)."""
    await Accounts(runtime).migrate_org(org, team)
    return AccountFilter(await runtime.store.account_id(org, name) or "sa_none", team)


async def audit_account_match(
    store: Store, org: str, ref: str | None
) -> Callable[[dict[str, Any]], bool] | None:
    """The audit filter `service_account=REF` (a name, former or current, or an id): events
    that carry the account's stable id, and those from before ids (its names at the time)."""
    if ref is None:
        return None
    account_id = ref if is_account_id(ref) else await store.account_id(org, ref)
    if account_id is None:  # a former name: the account that held it last
        account_id = await store.former_account_id(org, ref)
    account = await store.get_account(org, account_id) if account_id else None
    if account is None:  # no such account now: events that name it
        return lambda e: ref in (e.get("service_account"), e.get("service_account_id"))
    names = {account.name, *account.former_names}
    return lambda e: e.get("service_account_id") == account.id or (
        e.get("service_account_id") is None and e.get("service_account") in names
    )
