"""Who is calling (`Principal`), and the decision's hot path for a token the verification
cache already proved (`known_principal`): no parse, no await, no work done twice.

A proven credential's `Proof` (gateway/cache.py, keyed by the SHA-256 of the credential, as
the proof itself is: never the plaintext) remembers the `Principal` derived from the token,
team and account records it last saw. Each request still reads those three records from the
cache as the full path does (trusted channel, `cache_ttl`, the same order) and reuses the
principal only while all three are the very objects it was derived from: records are
immutable and replaced, never changed, when the store changes them, and an invalidation
drops them from the cache at once. Status, expiry and `allowed_cidrs` are checked on every
request. Anything else (a child token, a record or team not cached, a refusal to come)
returns None: the full path (`Authenticator.authenticate`) decides, and refuses, as before.

The principal also carries what its records let the decision derive once: the routes whose
environment and scopes it passes (`decision.authorize`) and its rate-limit holders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenward.gateway.cache import VerificationCache
from tokenward.gateway.limiter import Holders, _holders
from tokenward.gateway.records import ACTIVE, AccountRecord, TeamRecord, TokenRecord
from tokenward.gateway.routes import Route
from tokenward.gateway.scopes import Scope, effective_covers, effective_scopes
from tokenward.gateway.store import now

# routes a principal remembers passing (cleared when full: reloads make new ones); a short
# list, not a dict: one is held per cached token, and most tokens call a route or two
ROUTES_REMEMBERED = 8

Derived = tuple[TokenRecord, TeamRecord | None, AccountRecord | None, "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token and, for a team token, its team's permission set (and the
    current name of its org-level service account, which a rename changes)."""

    token: TokenRecord
    team_permissions: tuple[Scope, ...] | None  # None: an org-level token
    account_name: str | None = None  # None: no account, or the name the record holds
    # Only on a principal `known_principal` remembers (None on one built per request): routes
    # (by id, the route kept so the id stays its own) whose environment and scopes it passes,
    # and the rate-limit holders of the team and account records it was derived from.
    passed: list[Route] | None = field(default=None, compare=False, repr=False)
    holders: Holders | None = field(default=None, compare=False, repr=False)

    @property
    def service_account(self) -> str | None:
        """The name forwarded and audited: the account's name now; the record's only for a
        token from before account ids (a token with an id whose account is gone is refused)."""
        if self.token.service_account_id is not None:
            return self.account_name
        return self.account_name or self.token.service_account

    def can(self, required: Scope) -> bool:
        return effective_covers(self.token.scopes, self.team_permissions, required)

    @property
    def effective_scopes(self) -> tuple[Scope, ...]:
        return effective_scopes(self.token.scopes, self.team_permissions)

    def has_passed(self, route: Route) -> bool:
        """Has this principal passed `route`'s environment and scope checks (this very route
        object: a reload's routes are new objects)?"""
        passed = self.passed
        if passed:
            for seen in passed:
                if seen is route:
                    return True
        return False

    def note_passed(self, route: Route) -> None:
        passed = self.passed
        if passed is not None:
            if len(passed) >= ROUTES_REMEMBERED:
                passed.clear()
            passed.append(route)


def known_principal(
    cache: VerificationCache, prefixes: frozenset[str], fingerprint: str, client_ip: str | None
) -> Principal | None:
    """The principal of the credential with this fingerprint, when the cache proved it and
    holds its current records and it is allowed now; else None (decide the full way)."""
    if not cache.trusted:
        return None
    proof = cache.proofs.get(fingerprint)
    if proof is None or proof.prefix not in prefixes:  # an imported key's prefix is "": never here
        return None
    ttl = cache.ttl
    record = cache.records.get(proof.key_id, ttl)
    if record is None or record.parent_id is not None:  # a child: its ancestors too (lineage.py)
        return None
    org = record.org
    team = account = None
    if record.team is not None:
        team = cache.teams.get((org, record.team), ttl)
        if team is None:
            return None
    if record.service_account_id is not None:
        account = cache.accounts.get((org, record.service_account_id), ttl)
        if account is None or record.team not in account.teams:
            return None
    if record.status(now()) != ACTIVE or not record.client_allowed(client_ip):
        return None
    derived: Derived | None = proof.memo
    if derived is None or derived[0] is not record or derived[1] is not team or derived[2] is not account:
        principal = Principal(
            record,
            None if team is None else team.permissions,
            account.name if account is not None else None,
            passed=[],
            holders=_holders(record, team, account),
        )
        derived = proof.memo = (record, team, account, principal)
    cache.stats.hits += 1  # what the full path counts: one token record read from the cache
    return derived[3]
