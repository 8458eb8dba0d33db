"""Stored records: orgs, teams, service accounts, tokens. Plain data, no I/O."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tokenward.gateway.environments import LIVE
from tokenward.gateway.limits import RateLimit, Refill
from tokenward.gateway.scopes import Scope, format_scopes, parse_scopes

ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"


def limits_json(limits: tuple[RateLimit, ...]) -> dict[str, Any]:
    """A record's `rate_limits`, only when it has some (older records' bytes stay the same)."""
    return {"rate_limits": [limit.to_json() for limit in limits]} if limits else {}


def limits_from_json(data: Mapping[str, Any]) -> tuple[RateLimit, ...]:
    return tuple(RateLimit.from_json(x) for x in data.get("rate_limits") or ())


@dataclass(frozen=True, slots=True)
class TeamRecord:
    org: str
    name: str
    permissions: tuple[Scope, ...]
    created_at: float
    created_by: str
    rate_limits: tuple[RateLimit, ...] = ()  # shared by all the team's tokens (gateway/limiter.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "name": self.name,
            "permissions": format_scopes(self.permissions),
            "created_at": self.created_at,
            "created_by": self.created_by,
            **limits_json(self.rate_limits),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TeamRecord:
        return cls(
            org=data["org"],
            name=data["name"],
            permissions=parse_scopes(data["permissions"]),
            created_at=data["created_at"],
            created_by=data["created_by"],
            rate_limits=limits_from_json(data),
        )


@dataclass(frozen=True, slots=True)
class ServiceAccountRecord:
    org: str
    team: str
    name: str
    description: str
    created_at: float
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "team": self.team,
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceAccountRecord:
        return cls(**{k: data[k] for k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An org-level service account: a stable `id` (what tokens and audit events keep), a
    `name` unique in the org (what the gateway forwards; it can change), and the teams it is
    a member of (a token of the account is bound to one of them)."""

    id: str
    org: str
    name: str
    description: str
    owner: str
    teams: tuple[str, ...]
    created_at: float
    created_by: str
    updated_at: float | None = None
    updated_by: str | None = None
    former_names: tuple[str, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()  # shared by all the account's tokens (gateway/limiter.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org": self.org,
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "teams": list(self.teams),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "former_names": list(self.former_names),
            **limits_json(self.rate_limits),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AccountRecord:
        return cls(
            id=data["id"],
            org=data["org"],
            name=data["name"],
            description=data.get("description") or "",
            owner=data.get("owner") or "",
            teams=tuple(data.get("teams") or ()),
            created_at=data["created_at"],
            created_by=data["created_by"],
            updated_at=data.get("updated_at"),
            updated_by=data.get("updated_by"),
            former_names=tuple(data.get("former_names") or ()),
            rate_limits=limits_from_json(data),
        )


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    prefix: str
    org: str
    team: str | None  # None: an org-level token (the bootstrap org admin)
    name: str
    description: str
    scopes: tuple[Scope, ...]
    secret_hash: str = field(repr=False)
    created_at: float
    created_by: str
    expires_at: float | None = None
    service_account: str | None = None
    constraints: Mapping[str, str] = field(default_factory=dict)
    allowed_cidrs: tuple[str, ...] = ()
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    revoked_level: str | None = None  # the revoker's privilege: "org" or "team" (see revoker_rank)
    # True only for a revocation set for later (a rotation's grace period, until revoked_at)
    revoke_scheduled: bool = False
    replaces: str | None = None
    replaced_by: str | None = None
    secret_check: str = field(default="", repr=False)  # see tokens.secret_check; "" on old records
    check_key: str = field(default="", repr=False)  # the secret check's key; "" on legacy records
    environment: str = LIVE  # live or test (environments.py); records from before it: live
    metadata: Mapping[str, Any] = field(default_factory=dict)  # free-form JSON object (admin/metadata.py)
    # an imported key's lookup digest (gateway/legacy_keys.py); "" for a token of ours
    legacy_digest: str = field(default="", repr=False)

    @property
    def legacy(self) -> bool:
        """Imported from an old system: its key is not in our format (gateway/legacy_keys.py)."""
        return bool(self.legacy_digest)
    # the org-level service account's stable id (None: none, or a record from before accounts
    # had ids); `service_account` is its name when the token was issued (see AccountRecord)
    service_account_id: str | None = None
    # child tokens (gateway/lineage.py): the token that minted it, every ancestor (root first,
    # the parent last; empty for a root token), the agent run it was minted for
    parent_id: str | None = None
    ancestors: tuple[str, ...] = ()
    run_id: str | None = None
    # rate limits and a usage budget (gateway/limits.py), set at issuance (a child's too)
    rate_limits: tuple[RateLimit, ...] = ()
    max_uses: int | None = None
    refill: Refill | None = None

    @property
    def display_prefix(self) -> str:
        # an imported key shows no character of itself: `legacy_<key id>`
        return f"legacy_{self.id}" if self.legacy_digest else f"{self.prefix}_{self.id}"

    def status(self, now: float | None = None) -> str:
        # A revocation is final at once, whatever this process's clock says of `revoked_at`
        # (written with the revoking process's clock: a gateway whose clock runs behind must
        # not serve the token until its clock catches up). Only a scheduled one (a rotation's
        # grace period) waits for its time.
        if self.revoked_at is not None and (not self.revoke_scheduled or self.revoked_at <= (now or time.time())):
            return REVOKED
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return EXPIRED
        return ACTIVE

    def client_allowed(self, address: str | None) -> bool:
        if not self.allowed_cidrs:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(cidr) for cidr in self.allowed_cidrs)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "org": self.org,
            "team": self.team,
            "name": self.name,
            "description": self.description,
            "scopes": format_scopes(self.scopes),
            "secret_hash": self.secret_hash,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "service_account": self.service_account,
            "constraints": dict(self.constraints),
            "allowed_cidrs": list(self.allowed_cidrs),
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "revoke_reason": self.revoke_reason,
            "revoked_level": self.revoked_level,
            "revoke_scheduled": self.revoke_scheduled,
            "replaces": self.replaces,
            "replaced_by": self.replaced_by,
            "secret_check": self.secret_check,
            "check_key": self.check_key,
            "environment": self.environment,
            "metadata": dict(self.metadata),
            "legacy_digest": self.legacy_digest,
            "service_account_id": self.service_account_id,
            "parent_id": self.parent_id,
            "ancestors": list(self.ancestors),
            "run_id": self.run_id,
            **self._limits_json(),
        }

    def _limits_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.rate_limits:
            found["rate_limits"] = [limit.to_json() for limit in self.rate_limits]
        if self.max_uses is not None:
            found["max_uses"] = self.max_uses
            found["refill"] = self.refill.to_json() if self.refill is not None else None
        return found

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenRecord:
        return cls(
            id=data["id"],
            prefix=data["prefix"],
            org=data["org"],
            team=data["team"],
            name=data["name"],
            description=data.get("description", ""),
            scopes=parse_scopes(data["scopes"]),
            secret_hash=data["secret_hash"],
            created_at=data["created_at"],
            created_by=data["created_by"],
            expires_at=data.get("expires_at"),
            service_account=data.get("service_account"),
            constraints=dict(data.get("constraints") or {}),
            allowed_cidrs=tuple(data.get("allowed_cidrs") or ()),
            revoked_at=data.get("revoked_at"),
            revoked_by=data.get("revoked_by"),
            revoke_reason=data.get("revoke_reason"),
            revoked_level=data.get("revoked_level"),
            revoke_scheduled=_scheduled(data),
            replaces=data.get("replaces"),
            replaced_by=data.get("replaced_by"),
            secret_check=data.get("secret_check") or "",
            check_key=data.get("check_key") or "",
            environment=data.get("environment") or LIVE,
            metadata=dict(data.get("metadata") or {}),
            legacy_digest=data.get("legacy_digest") or "",
            service_account_id=data.get("service_account_id"),
            parent_id=data.get("parent_id"),
            ancestors=tuple(data.get("ancestors") or ()),
            run_id=data.get("run_id"),
            rate_limits=limits_from_json(data),
            max_uses=data.get("max_uses"),
            refill=Refill(**data["refill"]) if data.get("refill") else None,
        )

    def revoked(
        self, at: float, by: str, reason: str | None = None, level: str | None = None, *, scheduled: bool = False
    ) -> TokenRecord:
        """Revoked now (`at` is when, for the record), or with `scheduled` from `at` on."""
        return replace(
            self, revoked_at=at, revoked_by=by, revoke_reason=reason, revoked_level=level, revoke_scheduled=scheduled
        )

    def restored(self) -> TokenRecord:
        return replace(
            self, revoked_at=None, revoked_by=None, revoke_reason=None, revoked_level=None, revoke_scheduled=False
        )


# Who may undo a revocation: a restorer's level must rank at least the revoker's. A
# revocation that does not say (records from before levels were kept, or tests writing
# records directly) counts as the org's: only an org admin may undo it.
LEVEL_ORG, LEVEL_TEAM = "org", "team"
_LEVEL_RANK = {LEVEL_TEAM: 1, LEVEL_ORG: 2}
# Revocations that are final: a leaked secret is public, a rotated token has its successor.
FINAL_REASONS = frozenset({"leaked", "rotated"})


def revoker_rank(level: str | None) -> int:
    return _LEVEL_RANK.get(level or LEVEL_ORG, _LEVEL_RANK[LEVEL_ORG])


def _scheduled(data: Mapping[str, Any]) -> bool:
    """A stored record's `revoke_scheduled`; records from before the field: a rotation's
    retired token (its `revoked_at` was the end of the grace period, maybe still ahead)."""
    if "revoke_scheduled" in data:
        return bool(data["revoke_scheduled"])
    return data.get("revoke_reason") == "rotated" and data.get("replaced_by") is not None
