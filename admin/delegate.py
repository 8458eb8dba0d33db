"""Child tokens (issue 16, item 3): a token holding the capability `delegate` mints a child for
one agent run (`POST /v1/delegate`). What a child may be, decided here, nothing else:

- in the parent's org, team, service account and environment;
- scopes a subset of the parent's *effective* scopes (its own ∩ its team's, now), each checked
  with the gateway's own `covers`: a wider level, a wider resource or a wildcard the parent
  does not hold is refused (403, step `grant`); never a scope on the admin plane (`admin:org`,
  `admin:team`, anything on the `org` or `team` resource), whatever the parent holds: a child
  never administers; `delegate` itself only while a grandchild would stay within
  `tokens.delegation.max_depth`;
- the parent's constraints exactly, and its allowed_cidrs or networks inside them (inherited;
  a request may narrow the networks, never widen them: `rules.check_grant`);
- a TTL (default 15m) of at most `tokens.delegation.max_ttl` and `tokens.max_ttl`, ending no
  later than the parent's own end (its expiry, or a rotation's grace period): a longer TTL asked
  for is refused; the default is cut to the parent's end;
- at most `tokens.delegation.max_children` unexpired children per parent at once, and at most
  `max_depth` levels below a root token;
- optional `max_uses` (stored on the record as a token create's, for the credits code) and
  `run_id` (audit and `X-Tokenward-Run-Id`).

A child's record names its parent and every ancestor; the gateway ends it as soon as any
ancestor is revoked, expired or deleted (gateway/lineage.py). It is audited as
`token.delegated`, naming the parent and the run.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import replace
from typing import Any

from tokenward.actor import Actor, Changes
from tokenward.gateway import lineage
from tokenward.gateway.decision import Principal, lacks
from tokenward.gateway.durations import format_duration
from tokenward.gateway.environments import prefix_for
from tokenward.gateway.limits import Credits
from tokenward.gateway.records import ACTIVE, EXPIRED, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import RESERVED_RESOURCES, Scope, capability, format_scopes
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AuditEntry
from tokenward.gateway.store_children import expired_children, release_child_slot, take_child_slot
from tokenward.gateway.tokens import generate, new_check_key, secret_check
from tokenward.rules import (
    Invalid,
    check_grant,
    cidrs_field,
    duration_field,
    iso,
    lifetime_end,
    scopes_field,
)

DELEGATE = capability("delegate")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}")
MAX_USES = 1_000_000_000


def _refused(message: str, scope: str | None = None) -> Refusal:
    return Refusal(403, "insufficient_scope" if scope else "forbidden", Step.GRANT, message, scope)


def child_scopes(principal: Principal, texts: list[str], depth: int, max_depth: int) -> tuple[Scope, ...]:
    """The child's scopes, or a refusal naming the first scope that would widen the parent."""
    scopes = scopes_field(texts, "scopes")
    for scope in scopes:
        if scope.resource in RESERVED_RESOURCES and not scope.is_capability:
            raise _refused(f"scopes: {scope} is an admin-plane scope; a child token never holds one", str(scope))
        if scope == DELEGATE and depth >= max_depth:
            raise _refused(
                f"scopes: a child at depth {depth} cannot hold delegate: tokens.delegation.max_depth is {max_depth}",
                str(scope),
            )
        if not principal.can(scope):
            raise _refused(
                f"scopes: a child token's scopes must be within its parent's effective scopes; the parent lacks {scope}",
                str(scope),
            )
    return scopes


def _run_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise Invalid("run_id: 1 to 128 letters, digits and ._:/@+=- (starting with a letter or digit)", "run_id")
    return value


def _max_uses(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_USES:
        raise Invalid(f"max_uses: a whole number from 1 to {MAX_USES}", "max_uses")
    return value


class Delegation(Changes):
    """`POST /v1/delegate`: mint a child of the calling token."""

    async def delegate(self, actor: Actor, body: dict[str, Any]) -> tuple[str, TokenRecord]:
        principal = actor.principal
        assert principal is not None
        parent = principal.token
        policy = self.runtime.settings.tokens
        if not principal.can(DELEGATE):
            raise lacks(DELEGATE)
        depth = lineage.depth(parent) + 1
        if depth > policy.delegation.max_depth:
            raise _refused(f"a token at depth {depth - 1} cannot delegate: tokens.delegation.max_depth is "
                           f"{policy.delegation.max_depth}")
        scopes = child_scopes(principal, list(body["scopes"]), depth, policy.delegation.max_depth)
        issued = time.time()
        ttl = duration_field(body.get("ttl", "15m"), "ttl")
        limit = min(policy.delegation.max_ttl, policy.max_ttl or policy.delegation.max_ttl)
        if ttl < 1 or ttl > limit:
            which = "tokens.delegation.max_ttl" if limit == policy.delegation.max_ttl else "tokens.max_ttl"
            raise Invalid(f"ttl: from 1s to {format_duration(limit)} ({which})", "ttl")
        expires_at = issued + ttl
        end = lifetime_end(parent)
        if "ttl" not in body and end is not None:  # the default never outlives the parent: cut, not refused
            expires_at = min(expires_at, end)
        constraints = dict(parent.constraints)  # exactly the parent's: never fewer
        cidrs = cidrs_field(list(body["allowed_cidrs"])) if "allowed_cidrs" in body else parent.allowed_cidrs
        check_grant(  # constraints, networks and expiry within the parent's (scopes: above)
            principal,
            team=parent.team,
            scopes=scopes,
            constraints=constraints,
            allowed_cidrs=cidrs,
            expires_at=expires_at,
        )
        run_id, max_uses = _run_id(body.get("run_id")), _max_uses(body.get("max_uses"))
        if parent.max_uses is not None and max_uses is None:
            raise Invalid(
                "max_uses: the parent token has a usage budget, and a child's uses come out of it: give max_uses",
                "max_uses",
            )
        name = body.get("name") or (f"{parent.name} / {run_id}" if run_id else f"{parent.name} (child)")[:100]
        plaintext, parsed = generate(prefix_for(policy, parent.environment))
        check_key = new_check_key()
        record = TokenRecord(
            id=parsed.key_id,
            prefix=parsed.prefix,
            org=parent.org,
            team=parent.team,
            name=name,
            description=body.get("description", ""),
            scopes=scopes,
            secret_hash=await self.runtime.hasher.hash(parsed.secret),
            secret_check=secret_check(parsed.key_id, parsed.secret, check_key),
            check_key=check_key,
            created_at=issued,
            created_by=actor.name,
            expires_at=expires_at,
            service_account=parent.service_account,
            service_account_id=parent.service_account_id,
            constraints=constraints,
            allowed_cidrs=cidrs,
            environment=parent.environment,
            parent_id=parent.id,
            ancestors=(*parent.ancestors, parent.id),
            run_id=run_id,
            max_uses=max_uses,
            # the parent's rate limits, spent in the root's buckets (gateway/limiter.py
            # `limit_owner`): every descendant shares them with the token they came from
            rate_limits=parent.rate_limits,
        )
        if parent.max_uses is not None and max_uses is not None:
            await self._carve(parent, max_uses)
        entry = self.token_entry(
            actor,
            "token.delegated",
            record,
            run_id=run_id,
            depth=depth,
            scopes=format_scopes(scopes),
            expires_at=iso(expires_at),
            max_uses=max_uses,
        )
        await self._write(record, entry, actor)
        self.committed(entry)
        return plaintext, record

    async def _write(self, record: TokenRecord, entry: AuditEntry, actor: Actor) -> None:
        """The parent's slot for one more child, then the record within the team's quota (with
        its event, fenced on the parent still being active); the slot back if not written."""
        store, parent_id = self.store, record.parent_id
        assert parent_id is not None and record.expires_at is not None
        limit = self.runtime.settings.tokens.delegation.max_children
        now = time.time()
        await self._purge_expired_children(record.org, parent_id, now)
        await take_child_slot(store, record.org, parent_id, record.id, record.expires_at, limit, now)
        try:
            # within tokens.max_per_team like any token; expired children give their place back
            # at the parent's next mint (purged above), so a parent holds at most max_children
            await store.create_token_in_quota(record, self.runtime.settings.tokens.max_per_team, entry, actor.fence())
        except BaseException:
            with contextlib.suppress(Exception):
                if await store.get_token(record.id) is None:
                    await release_child_slot(store, record.org, parent_id, record.id)
            raise


    async def _carve(self, parent: TokenRecord, uses: int) -> None:
        """Take a child's `max_uses` out of its parent's budget, atomically in the store: the
        child and the parent together never spend more than the parent's budget."""
        assert parent.max_uses is not None
        credits = Credits(parent.max_uses, parent.refill, parent.created_at)
        spent = await self.runtime.limiter.store.spend(parent.org, [], [], credits=credits, key_id=parent.id, want=uses)
        if not spent.allowed:
            left = spent.credits_left if spent.credits_left is not None else 0
            raise Refusal(
                409, "quota_exceeded", None,
                f"max_uses: the parent token has {left} uses left, fewer than the {uses} asked for its child",
                field="max_uses",
            )  # fmt: skip

    async def _purge_expired_children(self, org: str, parent_id: str, now: float) -> None:
        """Delete the parent's children that have expired (their record and index entries): an
        agent platform minting a child per run would otherwise pile up records forever. Each
        deletion is logged as `token.deleted` with the reason."""
        for child_id in await expired_children(self.store, org, parent_id, now):
            child = await self.store.get_token(child_id)
            if child is not None and child.parent_id == parent_id and child.status(now) == EXPIRED:
                await self.store.delete_token(child)
                await self.store.unindex_token(child)
                self.runtime.audit.emit(
                    "token.deleted", in_stream=False, token_id=child.id, token_name=child.name, org=child.org,
                    team=child.team, parent_id=parent_id, reason="expired child token, purged at its parent's next mint",
                )  # fmt: skip
            await release_child_slot(self.store, org, parent_id, child_id)


async def ended_by_ancestor(store: Store, record: TokenRecord) -> dict[str, Any]:
    """For the view of a child whose own record is active: its status as the gateway decides it
    (an ancestor's end is its end), and why; {} while every ancestor is active."""
    state = await lineage.status(record, store.get_token)
    if state == ACTIVE:
        return {}
    status, _, why = state.partition(": ")
    return {"status": status, "ended_by": why}


Found = dict[str, tuple[TokenRecord, float | None]]


async def with_ended_children(store: Store, found: Found) -> Found:
    """A page of list rows (`api_tokens.token_page`): an active child whose ancestor ended is shown
    with that end as its own, for display and the status filters only (never written): revoked
    at the ancestor's revocation, its reason naming the ancestor, or expired at the ancestor's
    expiry. The ancestors not on the page are read in one batch."""
    at = time.time()
    children = [r for r, _ in found.values() if r.parent_id is not None and r.status(at) == ACTIVE]
    if not children:
        return found
    known = {r.id: r for r, _ in found.values()}
    missing = sorted({a for r in children for a in r.ancestors} - known.keys())
    if missing:
        known.update((r.id, r) for r, _ in await store.get_tokens_with_usage(missing))

    async def lookup(key_id: str) -> TokenRecord | None:
        return known.get(key_id)

    shown = dict(found)
    for record in children:
        state = await lineage.status(record, lookup, at)
        if state == ACTIVE:
            continue
        status, _, why = state.partition(": ")
        ended = next((known[a] for a in reversed(record.ancestors) if known.get(a) and known[a].status(at) != ACTIVE), None)
        if status == EXPIRED and ended is not None:
            record = replace(record, expires_at=ended.expires_at)
        else:
            when = ended.revoked_at if ended is not None and ended.revoked_at is not None else at
            record = replace(record, revoked_at=when, revoked_by=None, revoke_reason=why, revoked_level=None)
        shown[record.id] = (record, found[record.id][1])
    return shown
