"""The token service: issue, rotate, revoke, restore, delete, update and leak handling, with
no HTTP. The admin API, `tokenward admin bootstrap` and the demo all issue through it.

Each operation takes plain values (who acts, the fields asked for), enforces the token rules
(`tokenward.rules`), makes its change in one atomic store step (`Store.change_token`,
`Store.create_token_in_quota`) with its audit event written in that same step, then logs the
event. It raises domain errors (`Invalid`, `NotFound`, `Conflict`, `QuotaExceeded`,
`StoreUnavailable`) and `Refusal` for an authorization step; never an HTTP status.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tokenward.accounts import RESTORE_SECONDS, Accounts
from tokenward.actor import Actor
from tokenward.gateway.environments import LIVE, prefix_for
from tokenward.gateway.limits import NO_LIMITS, TokenLimits
from tokenward.gateway.records import ACTIVE, FINAL_REASONS, LEVEL_ORG, REVOKED, TokenRecord, revoker_rank
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import ADMIN_ORG, Scope, format_scopes
from tokenward.gateway.store import ActorFence, QuotaExceeded, TokenEdit
from tokenward.gateway.store_audit import AuditEntry
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.store_records import Conflict
from tokenward.gateway.tokens import checksum, generate, new_check_key, secret_check
from tokenward.gateway.tokens import parse as parse_token
from tokenward.leaks import LeakReports
from tokenward.metadata import metadata_field
from tokenward.rotation import (
    Rotated,
    check_rotatable,
    grace_end,
    key_id_in_slot_of,
    rotation_warnings,
    successor_expiry,
)
from tokenward.rules import (
    Invalid,
    Lifetime,
    NotFound,
    actor_level,
    check_grant,
    cidrs_field,
    constraints_field,
    environment_arg,
    expiry,
    grace_field,
    grant_expiry,
    is_key_id,
    iso,
    reason_field,
    refuse_org_powers,
    require_within_grant,
    scopes_field,
)

if TYPE_CHECKING:
    from tokenward.gateway.runtime import Runtime


async def issue_token(
    runtime: Runtime,
    *,
    org: str,
    team: str | None,
    name: str,
    scopes: tuple[Scope, ...],
    created_by: str,
    description: str = "",
    expires_at: float | None = None,
    service_account: str | None = None,
    constraints: dict[str, str] | None = None,
    allowed_cidrs: tuple[str, ...] = (),
    replaces: str | None = None,
    service_account_id: str | None = None,
    audit: Callable[[TokenRecord], AuditEntry] | None = None,
    fence: ActorFence | None = None,
    environment: str = LIVE,
    metadata: dict[str, Any] | None = None,
    limits: TokenLimits = NO_LIMITS,
) -> tuple[str, TokenRecord]:
    """Mint a token, no rule checked: hash off the event loop, store durably (with
    `audit(record)`'s event in the same write), return the plaintext once. `TokenService.issue`
    is the checked and audited way; tests and benchmarks seed stores with this. QuotaExceeded
    once the team (or the org level) holds `tokens.max_per_team` tokens: counted before the
    argon2 work, and again atomically with the index write."""
    quota = runtime.settings.tokens.max_per_team
    held = await runtime.store.token_count(org, team)
    if held >= quota:
        raise QuotaExceeded(held, quota, org, team)
    plaintext, parsed = generate(prefix_for(runtime.settings.tokens, environment))
    check_key = new_check_key()  # per record: nobody can compute its secret check offline
    record = TokenRecord(
        id=parsed.key_id,
        prefix=parsed.prefix,
        org=org,
        team=team,
        name=name,
        description=description,
        scopes=scopes,
        secret_hash=await runtime.hasher.hash(parsed.secret),
        secret_check=secret_check(parsed.key_id, parsed.secret, check_key),
        check_key=check_key,
        created_at=time.time(),
        created_by=created_by,
        expires_at=expires_at,
        service_account=service_account,
        constraints=constraints or {},
        allowed_cidrs=allowed_cidrs,
        replaces=replaces,
        environment=environment,
        metadata=metadata or {},
        service_account_id=service_account_id,
        rate_limits=limits.rate_limits, max_uses=limits.max_uses, refill=limits.refill,
    )
    await runtime.store.create_token_in_quota(record, quota, audit(record) if audit else None, fence)
    return plaintext, record


class _AnyTeam(enum.Enum):
    ANY = "any team"


# Where a token is looked for: a team's name, None (the org level), or ANY_TEAM: any token of
# the org, team or org level (the org-wide endpoints, an org admin's).
ANY_TEAM = _AnyTeam.ANY
TeamSel = str | None | _AnyTeam


def in_place(record: TokenRecord, org: str, team: TeamSel) -> bool:
    return record.org == org and (team is ANY_TEAM or record.team == team)


def _not_in_team(key_id: str, org: str, team: TeamSel) -> NotFound:
    if not is_key_id(key_id):  # never echoed: it may be a token pasted where its id belongs
        return NotFound("no such token (a token id is 12 letters and digits; was a token pasted instead?)")
    if team is ANY_TEAM:
        return NotFound(f"token {key_id!r} does not exist in org {org!r}")
    return NotFound(f"token {key_id!r} does not exist in team {team!r}")


DEFAULT_TTL = Lifetime()  # neither expires_in nor expires_at: tokens.default_ttl


class TokenService(LeakReports):
    """Every change to a token, decided and written atomically, audited with its actor."""

    async def token_in_team(self, org: str, team: TeamSel, key_id: str) -> TokenRecord:
        """A token of `team` (ANY_TEAM: of any team of the org, or of the org level)."""
        record = await self.store.get_token(key_id) if is_key_id(key_id) else None
        if record is None or not in_place(record, org, team):
            raise _not_in_team(key_id, org, team)
        return record

    async def issue(
        self,
        actor: Actor,
        *,
        org: str,
        team: str | None,
        name: str,
        scopes: Sequence[str],
        description: str = "",
        lifetime: Lifetime | None = DEFAULT_TTL,
        service_account: str | None = None,
        constraints: dict[str, str] | None = None,
        allowed_cidrs: Sequence[str] = (),
        environment: str = LIVE,
        metadata: object = None,
        limits: TokenLimits = NO_LIMITS,
    ) -> tuple[str, TokenRecord]:
        """Issue a token; the plaintext is returned once. `lifetime` None: it never expires
        (an operator's token at the server only). A token issues only what it could do itself."""
        if team is not None:
            await self.team(org, team)
        granted = scopes_field(list(scopes), "scopes")
        if team is not None:
            refuse_org_powers(granted, "scopes")
        account_id = None
        if service_account is not None:  # it must be a member of the token's team
            assert team is not None, "service accounts belong to a team"
            account_id = (await Accounts(self.runtime).for_token(org, team, service_account)).id
        pinned, notes = constraints_field(constraints or {}), metadata_field(metadata or {})
        expires_at = self._expiry(actor, lifetime, time.time())
        principal = actor.principal
        cidrs = cidrs_field(list(allowed_cidrs))
        if principal is not None:
            check_grant(
                principal,
                team=team,
                scopes=granted,
                constraints=pinned,
                allowed_cidrs=cidrs,
                expires_at=expires_at,
            )
        entries: list[AuditEntry] = []

        def created_event(record: TokenRecord) -> AuditEntry:
            entries.append(
                self.token_entry(
                    actor,
                    "token.created",
                    record,
                    scopes=format_scopes(record.scopes),
                    expires_at=iso(record.expires_at),
                )
            )
            return entries[-1]

        plaintext, record = await issue_token(
            self.runtime,
            org=org,
            team=team,
            name=name,
            description=description,
            scopes=granted,
            created_by=actor.name,
            expires_at=expires_at,
            service_account=service_account,
            service_account_id=account_id,
            constraints=pinned,
            allowed_cidrs=cidrs,
            audit=created_event,
            fence=actor.fence(),
            environment=environment_arg(environment),
            metadata=notes,
            limits=limits,
        )
        self.committed(entries[-1])
        return plaintext, record

    def _expiry(self, actor: Actor, lifetime: Lifetime | None, issued: float) -> float | None:
        policy = self.runtime.settings.tokens
        if actor.principal is not None:
            if lifetime is None:  # never silently: no admin token issues beyond tokens.max_ttl
                raise ValueError("only an operator at the server issues a token that never expires")
            return grant_expiry(actor.principal, policy, lifetime, issued)
        return None if lifetime is None else expiry(policy, lifetime, issued)  # bound by no caller's end

    async def change(
        self,
        actor: Actor,
        org: str,
        team: TeamSel,
        key_id: str,
        decide: Callable[[TokenRecord], TokenEdit | None],
    ) -> TokenRecord:
        """Run one transition on a token of `team` (NotFound otherwise), atomically in the
        store; log its audit event once committed. The token as it is afterwards."""

        def in_team(record: TokenRecord) -> TokenEdit | None:
            if not in_place(record, org, team):
                raise _not_in_team(key_id, org, team)
            return decide(record)

        result = await self.store.change_token(key_id, in_team, actor.fence()) if is_key_id(key_id) else None
        if result is None:
            raise _not_in_team(key_id, org, team)
        before, edit = result
        if edit is None:
            return before
        self.committed(edit.audit)
        return edit.record or before

    async def update(self, actor: Actor, org: str, team: TeamSel, key_id: str, **change: Any) -> TokenRecord:
        """Change a token's `name`, `description` and/or `metadata` (the whole object); scopes,
        constraints and expiry are fixed at issuance. Only a token within the caller's own
        grant (`require_within_grant`): a team admin cannot relabel a wider token, e.g. to
        disguise it."""
        name, description, metadata = (change.get(k) for k in ("name", "description", "metadata"))
        if name is None and description is None and metadata is None:
            raise Invalid("nothing to change: give name, description and/or metadata", "body")
        notes = None if metadata is None else metadata_field(metadata)

        def rename(record: TokenRecord) -> TokenEdit:
            if actor.principal is not None:
                require_within_grant(actor.principal, record, "change")
            # decided on the record as it is now: a revocation that landed first stays
            updated = replace(
                record,
                name=record.name if name is None else name,
                description=record.description if description is None else description,
                metadata=record.metadata if notes is None else notes,
            )
            return TokenEdit(updated, self.token_entry(actor, "token.updated", updated))

        return await self.change(actor, org, team, key_id, rename)

    async def revoke(self, actor: Actor, org: str, team: TeamSel, key_id: str, reason: object) -> TokenRecord:
        """Revoke a token, recording who did and at which level; an org admin takes a team
        admin's revocation over (only an org admin undoes it then). A team admin may revoke
        any token of its team, a wider one too: revoking takes power away, never grants it.
        The operator at the server (no principal) revokes at the org's level."""
        level = LEVEL_ORG if actor.principal is None else actor_level(actor.principal)
        why = reason_field(reason)

        def revoke(record: TokenRecord) -> TokenEdit | None:
            now = time.time()
            # A scheduled revocation (a rotation's grace) is made final whatever this host's
            # clock says of its time: a gateway whose clock runs behind still serves the token.
            if record.status(now) == REVOKED and not record.revoke_scheduled:
                if revoker_rank(level) <= revoker_rank(record.revoked_level):
                    return None  # already revoked by someone at least as privileged: nothing to do
                updated = replace(
                    record,
                    revoked_by=actor.name,
                    revoked_level=level,
                    revoke_reason=record.revoke_reason if record.revoke_reason in FINAL_REASONS else why,
                )
            else:  # also ends a rotation grace period at once: its reason, if given, replaces
                # "rotated" (a rotated token never comes back all the same: it has replaced_by)
                at = now if record.revoked_at is None else min(now, record.revoked_at)
                updated = record.revoked(at, actor.name, why or record.revoke_reason, level)
            return TokenEdit(
                updated, self.token_entry(actor, "token.revoked", updated, reason=updated.revoke_reason)
            )

        return await self.change(actor, org, team, key_id, revoke)

    async def restore(self, actor: Actor, org: str, team: TeamSel, key_id: str) -> TokenRecord:
        """Restore a revoked, unexpired token: only by an admin at least as privileged as the
        revoker, holding its scopes; leaked and rotated tokens never come back, nor a token
        whose service account is gone or no longer holds its team (Conflict: marked first,
        atomically with that check, so an account delete racing it counts it as active)."""
        principal = actor.principal
        assert principal is not None
        level = actor_level(principal)
        current = await self.token_in_team(org, team, key_id)
        if current.team is not None and current.service_account:
            accounts = Accounts(self.runtime)
            await accounts.migrate_team(org, current.team)  # a token from before ids gets its account's
            current = await self.token_in_team(org, team, key_id)
            if current.service_account_id is None:  # its (legacy) account was deleted before ids
                raise Conflict(f"the token's service account {current.service_account!r} no longer exists")
            marked = await accounts.hold_for_restore(current)
            try:
                return await self._restore(actor, org, team, key_id, level, marked)
            finally:
                await accounts.release_restore(current)
        return await self._restore(actor, org, team, key_id, level, None)

    async def _restore(
        self, actor: Actor, org: str, team: TeamSel, key_id: str, level: str, marked: float | None
    ) -> TokenRecord:
        principal = actor.principal
        assert principal is not None

        def restore(record: TokenRecord) -> TokenEdit:
            now = time.time()
            if marked is not None and now - marked > RESTORE_SECONDS:  # its mark no longer counts
                raise StoreUnavailable("restore took too long; try again")
            if record.expires_at is not None and record.expires_at <= now:
                raise Conflict("token has expired and cannot be restored; issue a new token")
            if record.revoke_reason == "leaked":
                raise Conflict("token was reported leaked and can never be restored; issue a new token")
            if record.replaced_by is not None or record.revoke_reason == "rotated":
                raise Conflict(
                    f"token was rotated (replaced by {record.replaced_by}) and can never be restored"
                )
            if record.status(now) != REVOKED:
                raise Conflict("token is not revoked")
            if revoker_rank(level) < revoker_rank(record.revoked_level):
                raise Refusal(
                    403,
                    "insufficient_scope",
                    Step.SCOPE,
                    f"token was revoked by an org admin ({record.revoked_by}); only an org admin "
                    f"can restore it: token lacks required permission: {ADMIN_ORG}",
                    ADMIN_ORG,
                )
            require_within_grant(principal, record, "restore")
            restored = record.restored()
            event = self.token_entry(
                actor,
                "token.restored",
                restored,
                was_revoked_by=record.revoked_by,
                was_reason=record.revoke_reason,
            )
            return TokenEdit(restored, event)

        return await self.change(actor, org, team, key_id, restore)

    async def delete(self, actor: Actor, org: str, team: TeamSel, key_id: str) -> None:
        """Delete a revoked or expired token (Conflict while it is active); like a rename, only
        one within the caller's own grant (its record is the trail of who revoked it, and why)."""

        def delete(record: TokenRecord) -> TokenEdit:
            if actor.principal is not None:
                require_within_grant(actor.principal, record, "delete")
            if record.status() == ACTIVE:
                raise Conflict("token is active; revoke it first, then delete it")
            return TokenEdit(None, self.token_entry(actor, "token.deleted", record))

        record = await self.change(actor, org, team, key_id, delete)
        await self.store.unindex_token(record)  # the record first, then the index entries

    async def rotate(
        self, actor: Actor, org: str, team: TeamSel, key_id: str, lifetime: Lifetime, grace_period: str | None
    ) -> Rotated:
        """Issue a replacement with the same name, description, scopes, constraints, CIDRs and
        service account; the old token is revoked now, or after `grace`. Atomic: the
        replacement exists only if the old token was active and not yet rotated when retired.
        Its expiry: the rotation policy (`tokenward.rotation`), never silently the default."""
        principal = actor.principal
        assert principal is not None
        old = await self.token_in_team(org, team, key_id)
        check_rotatable(old)  # early, before hashing a secret for nothing; decided again below
        grace = grace_field(grace_period)
        issued = time.time()
        expires_at = successor_expiry(principal, self.runtime.settings.tokens, old, lifetime, issued)
        check_grant(
            principal,
            team=old.team,
            scopes=old.scopes,
            constraints=old.constraints,
            allowed_cidrs=old.allowed_cidrs,
            expires_at=expires_at,
        )
        level = actor_level(principal)
        plaintext, parsed = generate(prefix_for(self.runtime.settings.tokens, old.environment))
        if self.store.cluster:
            head = f"{parsed.prefix}_{key_id_in_slot_of(old.id)}{parsed.secret}"
            plaintext = head + checksum(head)
            parsed = parse_token(plaintext, frozenset({parsed.prefix}))
        secret_hash = await self.runtime.hasher.hash(parsed.secret)
        check_key = new_check_key()

        def rotate(current: TokenRecord) -> TokenEdit:
            check_rotatable(current)
            new = TokenRecord(
                id=parsed.key_id,
                prefix=parsed.prefix,
                org=current.org,
                team=current.team,
                name=current.name,
                description=current.description,
                scopes=current.scopes,
                secret_hash=secret_hash,
                secret_check=secret_check(parsed.key_id, parsed.secret, check_key),
                check_key=check_key,
                created_at=issued,
                created_by=actor.name,
                expires_at=expires_at,
                service_account=current.service_account,
                service_account_id=current.service_account_id,
                constraints=dict(current.constraints),
                allowed_cidrs=current.allowed_cidrs,
                replaces=current.id,
                environment=current.environment,
                metadata=dict(current.metadata),  # an imported key's successor is ours: no digest
                rate_limits=current.rate_limits, max_uses=current.max_uses, refill=current.refill,
            )
            end = grace_end(current, issued, grace)  # never after its own expiry
            retired = replace(current.revoked(end, actor.name, "rotated", level, scheduled=grace > 0), replaced_by=new.id)
            entry = self.token_entry(
                actor, "token.rotated", new, replaces=current.id, old_revoked_at=iso(retired.revoked_at)
            )
            return TokenEdit(retired, entry, successor=new)

        # the successor's index entries (org, team, service account), taken within the quota
        placeholder = replace(old, id=parsed.key_id, created_at=issued)
        await self.store.index_token(placeholder, self.runtime.settings.tokens.max_per_team)
        try:
            retired = await self.change(actor, org, old.team, old.id, rotate)
        except BaseException:
            # only if the successor was not created (a failure after the commit keeps its entries;
            # a store that can't answer leaves a dangling entry, which lists skip)
            with contextlib.suppress(Exception):
                if await self.store.get_token(parsed.key_id) is None:
                    await self.store.unindex_token(placeholder)
            raise
        record = await self.store.get_token(parsed.key_id)
        assert record is not None
        policy = self.runtime.settings.tokens
        return Rotated(plaintext, record, retired, rotation_warnings(principal, policy, old, lifetime, issued, expires_at, grace))
