"""The token service: issue, rotate, revoke, restore, delete, update and leak handling, with
no HTTP. The admin API, `tokenward admin bootstrap` and the demo all issue through it.

Each operation takes plain values (who acts, the fields asked for), enforces the token rules
(`tokenward.rules`), makes its change in one atomic store step (`Store.change_token`,
`Store.create_token_in_quota`) with its audit event written in that same step, then logs the
event. It raises domain errors (`Invalid`, `NotFound`, `Conflict`, `QuotaExceeded`,
`StoreUnavailable`) and `Refusal` for an authorization step; never an HTTP status.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tokenward.accounts import Accounts
from tokenward.actor import Actor, Changes
from tokenward.gateway.records import ACTIVE, FINAL_REASONS, REVOKED, TokenRecord, revoker_rank
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import ADMIN_ORG, Scope, format_scopes
from tokenward.gateway.store import ActorFence, QuotaExceeded, TokenEdit
from tokenward.gateway.store_audit import AuditEntry
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_records import Conflict
from tokenward.gateway.throttle import Throttled
from tokenward.gateway.tokens import (
    BASE62,
    KEY_ID_LEN,
    TokenFormatError,
    checksum,
    generate,
    new_check_key,
    secret_check,
)
from tokenward.gateway.tokens import parse as parse_token
from tokenward.rules import (
    Invalid,
    Lifetime,
    NotFound,
    actor_level,
    check_grant,
    cidrs_field,
    constraints_field,
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
    plaintext, parsed = generate(runtime.settings.tokens.prefix)
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
        service_account_id=service_account_id,
    )
    await runtime.store.create_token_in_quota(record, quota, audit(record) if audit else None, fence)
    return plaintext, record


@dataclass(frozen=True, slots=True)
class Rotated:
    plaintext: str
    record: TokenRecord  # the successor
    retired: TokenRecord  # the old token, revoked now or at the end of the grace period


def _not_in_team(key_id: str, team: str | None) -> NotFound:
    return NotFound(f"token {key_id!r} does not exist in team {team!r}")


def check_rotatable(old: TokenRecord) -> None:
    if old.replaced_by is not None:
        raise Conflict(
            f"token was already rotated (replaced by {old.replaced_by}); rotate the replacement instead"
        )
    if old.status() != ACTIVE:
        raise Conflict(f"token is {old.status()}; only an active token can be rotated")


def _key_id_in_slot_of(key_id: str) -> str:
    """A fresh random key id whose record is in the same cluster slot as `key_id`'s, so that a
    rotation creates the successor and retires the old token in one script (~16k draws of a
    public id; only in a cluster)."""

    def slot(kid: str) -> int:
        return binascii.crc_hqx(kid.encode(), 0) % 16384  # the record key's hash tag is the id

    assert Keys.token(key_id).endswith("{" + key_id + "}")
    target = slot(key_id)
    space = len(BASE62) ** KEY_ID_LEN
    while True:
        pool = os.urandom(10 * 1024)
        for start in range(0, len(pool), 10):
            number = int.from_bytes(pool[start : start + 10], "big") % space
            digits = []
            for _ in range(KEY_ID_LEN):
                number, rem = divmod(number, 62)
                digits.append(BASE62[rem])
            kid = "".join(digits)
            if slot(kid) == target:
                return kid


DEFAULT_TTL = Lifetime()  # neither expires_in nor expires_at: tokens.default_ttl


class TokenService(Changes):
    """Every change to a token, decided and written atomically, audited with its actor."""

    async def token_in_team(self, org: str, team: str | None, key_id: str) -> TokenRecord:
        record = await self.store.get_token(key_id) if is_key_id(key_id) else None
        if record is None or record.org != org or record.team != team:
            raise _not_in_team(key_id, team)
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
        pinned = constraints_field(constraints or {})
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
        team: str | None,
        key_id: str,
        decide: Callable[[TokenRecord], TokenEdit | None],
    ) -> TokenRecord:
        """Run one transition on a token of `team` (NotFound otherwise), atomically in the
        store; log its audit event once committed. The token as it is afterwards."""

        def in_team(record: TokenRecord) -> TokenEdit | None:
            if record.org != org or record.team != team:
                raise _not_in_team(key_id, team)
            return decide(record)

        result = await self.store.change_token(key_id, in_team, actor.fence()) if is_key_id(key_id) else None
        if result is None:
            raise _not_in_team(key_id, team)
        before, edit = result
        if edit is None:
            return before
        self.committed(edit.audit)
        return edit.record or before

    async def update(
        self, actor: Actor, org: str, team: str, key_id: str, *, name: str | None, description: str | None
    ) -> TokenRecord:
        """Rename or re-describe a token; scopes, constraints and expiry are fixed at issuance."""
        if name is None and description is None:
            raise Invalid("nothing to change: give name and/or description", "body")

        def rename(record: TokenRecord) -> TokenEdit:
            # decided on the record as it is now: a revocation that landed first stays
            updated = replace(
                record,
                name=record.name if name is None else name,
                description=record.description if description is None else description,
            )
            return TokenEdit(updated, self.token_entry(actor, "token.updated", updated))

        return await self.change(actor, org, team, key_id, rename)

    async def revoke(self, actor: Actor, org: str, team: str, key_id: str, reason: object) -> TokenRecord:
        """Revoke a token, recording who did and at which level; an org admin takes a team
        admin's revocation over (only an org admin undoes it then)."""
        assert actor.principal is not None
        level, why = actor_level(actor.principal), reason_field(reason)

        def revoke(record: TokenRecord) -> TokenEdit | None:
            now = time.time()
            if record.status(now) == REVOKED:
                if revoker_rank(level) <= revoker_rank(record.revoked_level):
                    return None  # already revoked by someone at least as privileged: nothing to do
                updated = replace(
                    record,
                    revoked_by=actor.name,
                    revoked_level=level,
                    revoke_reason=record.revoke_reason if record.revoke_reason in FINAL_REASONS else why,
                )
            else:  # also ends a rotation grace period at once (the reason stays "rotated")
                updated = record.revoked(now, actor.name, record.revoke_reason or why, level)
            return TokenEdit(
                updated, self.token_entry(actor, "token.revoked", updated, reason=updated.revoke_reason)
            )

        return await self.change(actor, org, team, key_id, revoke)

    async def restore(self, actor: Actor, org: str, team: str, key_id: str) -> TokenRecord:
        """Restore a revoked, unexpired token: only by an admin at least as privileged as the
        revoker, holding its scopes; leaked and rotated tokens never come back."""
        principal = actor.principal
        assert principal is not None
        level = actor_level(principal)

        def restore(record: TokenRecord) -> TokenEdit:
            now = time.time()
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

    async def delete(self, actor: Actor, org: str, team: str, key_id: str) -> None:
        """Delete a revoked or expired token (Conflict while it is active)."""

        def delete(record: TokenRecord) -> TokenEdit:
            if record.status() == ACTIVE:
                raise Conflict("token is active; revoke it first, then delete it")
            return TokenEdit(None, self.token_entry(actor, "token.deleted", record))

        record = await self.change(actor, org, team, key_id, delete)
        await self.store.unindex_token(record)  # the record first, then the index entries

    async def rotate(
        self, actor: Actor, org: str, team: str, key_id: str, lifetime: Lifetime, grace_period: str | None
    ) -> Rotated:
        """Issue a replacement with the same name, description, scopes, constraints, CIDRs and
        service account; the old token is revoked now, or after `grace`. Atomic: the
        replacement exists only if the old token was active and not yet rotated when retired."""
        principal = actor.principal
        assert principal is not None
        old = await self.token_in_team(org, team, key_id)
        check_rotatable(old)  # early, before hashing a secret for nothing; decided again below
        grace = grace_field(grace_period)
        issued = time.time()
        expires_at = grant_expiry(principal, self.runtime.settings.tokens, lifetime, issued)
        check_grant(
            principal,
            team=team,
            scopes=old.scopes,
            constraints=old.constraints,
            allowed_cidrs=old.allowed_cidrs,
            expires_at=expires_at,
        )
        level = actor_level(principal)
        plaintext, parsed = generate(self.runtime.settings.tokens.prefix)
        if self.store.cluster:
            head = f"{parsed.prefix}_{_key_id_in_slot_of(old.id)}{parsed.secret}"
            plaintext = head + checksum(head)
            parsed = parse_token(plaintext, frozenset({parsed.prefix}))
        secret_hash = await self.runtime.hasher.hash(parsed.secret)
        check_key = new_check_key()

        def rotate(current: TokenRecord) -> TokenEdit:
            check_rotatable(current)
            new = TokenRecord(
                id=parsed.key_id,
                prefix=parsed.prefix,
                org=org,
                team=team,
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
            )
            retired = replace(
                current.revoked(issued + grace, actor.name, "rotated", level), replaced_by=new.id
            )
            entry = self.token_entry(
                actor, "token.rotated", new, replaces=current.id, old_revoked_at=iso(retired.revoked_at)
            )
            return TokenEdit(retired, entry, successor=new)

        # the successor's index entries (org, team, service account), taken within the quota
        placeholder = replace(old, id=parsed.key_id, created_at=issued)
        await self.store.index_token(placeholder, self.runtime.settings.tokens.max_per_team)
        try:
            retired = await self.change(actor, org, team, old.id, rotate)
        except BaseException:
            # only if the successor was not created (a failure after the commit keeps its entries;
            # a store that can't answer leaves a dangling entry, which lists skip)
            with contextlib.suppress(Exception):
                if await self.store.get_token(parsed.key_id) is None:
                    await self.store.unindex_token(placeholder)
            raise
        record = await self.store.get_token(parsed.key_id)
        assert record is not None
        return Rotated(plaintext, record, retired)

    async def report_leak(self, actor: Actor, text: str) -> tuple[str, str]:
        """Holding the plaintext is the authority to kill it, whichever org it belongs to.
        The secret is proven as at the gateway (`Authenticator.prove`): a wrong secret that fails
        the cheap secret check costs no argon2, and failed verifications drain the same failure
        throttle as requests do. (what is shown of the token, result): revoked, already_revoked,
        unknown, not_a_token or throttled (report it again later)."""
        try:
            parsed = parse_token(text, self.runtime.settings.tokens.accepted_prefixes)
            proven = await self.runtime.authenticator.prove(parsed, bind_prefix=False)
        except TokenFormatError:
            return _redacted(text), "not_a_token"
        except Throttled:
            return parsed.display_prefix, "throttled"
        # the revocation itself works on the store's current record, as an admin revoke does
        record = await self.store.get_token(parsed.key_id) if proven is not None else None
        if record is None:
            return parsed.display_prefix, "unknown"
        assert actor.principal is not None
        level = actor_level(actor.principal)
        outcome = "already_revoked"

        def leaked(current: TokenRecord) -> TokenEdit | None:
            nonlocal outcome
            if current.revoke_reason == "leaked":
                outcome = "already_revoked"
                return None
            already = current.status() == REVOKED
            outcome = "already_revoked" if already else "revoked"
            revoked_at = current.revoked_at if already and current.revoked_at is not None else time.time()
            # final: whoever reported it, no restore brings a leaked secret back
            updated = current.revoked(revoked_at, actor.name, "leaked", level)
            return TokenEdit(updated, self.token_entry(actor, "token.leaked", updated, was_revoked=already))

        result = await self.store.change_token(parsed.key_id, leaked, actor.fence())
        if result is None:  # deleted meanwhile
            return parsed.display_prefix, "unknown"
        self.committed(result[1].audit if result[1] is not None else None)
        return parsed.display_prefix, outcome


def _redacted(text: str) -> str:
    return (text[:10] + "…") if len(text) > 10 else "…"
