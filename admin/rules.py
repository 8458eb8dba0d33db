"""The token rules, without HTTP or a store: who may act on what, what a token may grant,
and how the fields of a request are checked.

`admin:org` manages every team of its org; `admin:team` manages only its own team (and only
while the team's permission set holds `admin:team`); no wildcard grants either. A token only
hands out tokens that can do no more than itself (`check_grant`). The authorization steps and
their messages are the gateway's (`tokenward.gateway.decision.require_*`): refusals of a step
are `Refusal`s; a bad field is `Invalid`, a missing record `NotFound`, a state that forbids
the change `Conflict` (the store's, `tokenward.gateway.store_records.Conflict`). The admin edge maps
each to its status (`endpoints.DOMAIN_ERRORS_TABLE`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tokenward.gateway.decision import Principal, lacks, require_org, require_scope, require_team
from tokenward.gateway.durations import format_duration, parse_duration, parse_lifetime, parse_time
from tokenward.gateway.environments import environment_field
from tokenward.gateway.records import LEVEL_ORG, LEVEL_TEAM, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import (
    ADMIN_ORG,
    ADMIN_TEAM,
    Scope,
    ScopeError,
    grants_org_power,
    parse_scope,
    parse_scopes,
)
from tokenward.gateway.settings import TokenSettings
from tokenward.gateway.text import all_shown
from tokenward.gateway.tokens import KEY_ID_RE


# -- domain errors ------------------------------------------------------------------------------
class Invalid(Exception):
    """A field of the request breaks a rule (400 at the admin API)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(Exception):
    """The record the request names does not exist where it says (404)."""


# The latest expiry a token can have: its views print it as an RFC 3339 time.
MAX_EXPIRES_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
MAX_GRACE = 30 * 86400.0
MAX_REASON = 200
# A constraint name is a route's path parameter name: bounded like every other stored field,
# so a record (cached by every gateway process, rendered in every list row) stays small.
MAX_CONSTRAINT_NAME = 64


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- who may act on what (the gateway's steps 5-8, for the admin plane) ---------------------------
def actor(principal: Principal) -> str:
    return f"token:{principal.token.id}"


def is_org_admin(principal: Principal) -> bool:
    """An org-level token holding `admin:org` by name. A team-bound token never is one, whatever
    its scopes or its team's permission set say (see `tokenward.gateway.scopes`: no wildcard covers
    `admin:org`, and nothing on the org resource is effective for a team token)."""
    return principal.token.team is None and principal.can(parse_scope(ADMIN_ORG))


def actor_level(principal: Principal) -> str:
    """The privilege a revocation records and a restore is measured by: "org" for an org-level
    token holding admin:org, "team" for any token of a team, whatever its scopes."""
    return LEVEL_ORG if is_org_admin(principal) else LEVEL_TEAM


def require_org_admin(principal: Principal, org: str) -> None:
    require_org(principal, org)
    if principal.token.team is not None:
        raise lacks(ADMIN_ORG)
    require_scope(principal, parse_scope(ADMIN_ORG))


def require_team_admin(principal: Principal, org: str, team: str) -> None:
    """Org admins manage every team of their org; team admins only their own."""
    require_org(principal, org)
    if is_org_admin(principal):
        return
    require_team(principal, team)
    require_scope(principal, parse_scope(ADMIN_TEAM))


def require_any_admin(principal: Principal) -> None:
    """Leak reports: any admin token, of any org (holding the plaintext is the authority)."""
    if not (principal.can(parse_scope(ADMIN_ORG)) or principal.can(parse_scope(ADMIN_TEAM))):
        raise lacks(ADMIN_TEAM)


def _pinned(constraints: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(dict(constraints).items())) or "(none)"


def within_constraints(principal: Principal, record: TokenRecord) -> bool:
    """A constrained admin token reaches only tokens pinned to at least its own constraints."""
    return all(record.constraints.get(k) == v for k, v in principal.token.constraints.items())


def require_within_constraints(principal: Principal, record: TokenRecord) -> None:
    if not within_constraints(principal, record):
        raise Refusal(
            403,
            "forbidden",
            Step.CONSTRAINTS,
            f"token is constrained to {_pinned(principal.token.constraints)}; token {record.id} is "
            f"pinned to {_pinned(record.constraints)}",
        )


def require_unconstrained(principal: Principal, what: str) -> None:
    """Team-wide resources (service accounts, the team, its audit) carry no constraint
    parameter, so a constrained token may not act on them: as at the gateway, where a route
    that does not name a constrained parameter is refused."""
    if principal.token.constraints:
        raise Refusal(
            403,
            "forbidden",
            Step.CONSTRAINTS,
            f"token is constrained to {_pinned(principal.token.constraints)} and {what} are not bound to it",
        )


# -- what a token may grant (issue 10, items 1 and 3: no escalation through the admin plane) -----
def refuse_org_powers(scopes: tuple[Scope, ...], field: str) -> None:
    """Invalid: a scope a team may not hold, one that covers an org-level power."""
    for scope in scopes:
        if grants_org_power(scope):
            raise Invalid(
                f"{field}: {scope} covers an org-level power ({ADMIN_ORG}), which a team cannot hold", field
            )


def _cidrs_inside(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    if not outer:
        return True
    if not inner:
        return False  # unrestricted is wider than any restriction
    nets = [ipaddress.ip_network(c, strict=False) for c in outer]
    for text in inner:
        net = ipaddress.ip_network(text, strict=False)
        if not any(
            net.version == o.version and net.subnet_of(o)  # type: ignore[arg-type]
            for o in nets
        ):
            return False
    return True


def lifetime_end(token: TokenRecord) -> float | None:
    """When `token` stops working: its expiry, or a revocation already scheduled (a rotation's
    grace period), whichever comes first. None: never."""
    ends = [t for t in (token.expires_at, token.revoked_at) if t is not None]
    return min(ends) if ends else None


def _grant_refused(message: str, scope: str | None = None) -> Refusal:
    return Refusal(403, "insufficient_scope" if scope else "forbidden", Step.GRANT, message, scope)


def check_grant(
    principal: Principal,
    *,
    team: str | None,
    scopes: tuple[Scope, ...],
    constraints: Mapping[str, str],
    allowed_cidrs: tuple[str, ...],
    expires_at: float | None,
) -> None:
    """A token may only create or rotate tokens that can do no more than it can itself:
    effective scopes a subset of its own (so also whatever its team gains later), its
    constraints included, `allowed_cidrs` inside its own, expiry no later than its own.
    An org admin may grant any scope in its org; the other three bounds apply to it too
    (the bootstrap token has none of them, so it is unconstrained)."""
    if team is not None:
        refuse_org_powers(scopes, "scopes")
    if not is_org_admin(principal):
        for scope in scopes:
            if not principal.can(scope):
                raise _grant_refused(
                    f"scopes: a token can only grant scopes it holds itself; it lacks {scope}", str(scope)
                )
    own = principal.token
    missing = {k: v for k, v in own.constraints.items() if dict(constraints).get(k) != v}
    if missing:
        raise _grant_refused(
            f"constraints: the token is constrained to {_pinned(own.constraints)}; "
            f"what it grants must be too (add {_pinned(missing)})"
        )
    if not _cidrs_inside(allowed_cidrs, own.allowed_cidrs):
        raise _grant_refused(
            f"allowed_cidrs: must lie inside the token's own allowed_cidrs ({', '.join(own.allowed_cidrs)})"
        )
    own_end = lifetime_end(own)
    if own_end is not None and (expires_at is None or expires_at > own_end):
        raise _grant_refused(
            f"expires_at: must be no later than the token's own expiry ({iso(own_end)}"
            + (", when its rotation's grace period ends)" if own_end != own.expires_at else ")")
        )


def require_within_grant(principal: Principal, record: TokenRecord, verb: str) -> None:
    """Bringing a token back into force is granting its scopes again: unless the caller is an
    org admin, it may do so only for a token whose scopes it holds itself (as `check_grant`
    asks of a create or rotate). A team admin can revoke a wider token, never revive one."""
    if is_org_admin(principal):
        return
    for scope in record.scopes:
        if not principal.can(scope):
            raise _grant_refused(
                f"scopes: a token can only {verb} tokens whose scopes it holds itself; it lacks {scope}",
                str(scope),
            )


# -- fields --------------------------------------------------------------------------------------
def scopes_field(texts: list[str], field: str) -> tuple[Scope, ...]:
    try:
        return parse_scopes(texts)
    except ScopeError as exc:
        raise Invalid(f"{field}: {exc}", field) from None


def duration_field(text: str, field: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise Invalid(f"{field}: {exc}", field) from None
    except OverflowError:  # int * unit overflows a float
        raise Invalid(f"{field}: {text!r} is too long", field) from None


def lifetime_field(text: object, field: str) -> float:
    """A token lifetime: a duration or a bare number of days (`90` = `90d`, as envshed's CLI)."""
    try:
        return parse_lifetime(text)
    except ValueError as exc:
        raise Invalid(f"{field}: {exc}", field) from None
    except OverflowError:
        raise Invalid(f"{field}: {text!r} is too long", field) from None


def time_field(text: str, field: str) -> float:
    """An RFC 3339 time with a zone, or a date: `2027-01-01` is 00:00 UTC that day."""
    try:
        return parse_time(text)
    except (ValueError, OverflowError) as exc:
        raise Invalid(f"{field}: {exc}", field) from None


def environment_arg(value: object) -> str:
    """`environment`: live or test (see tokenward.gateway.environments)."""
    try:
        return environment_field(value)
    except ValueError as exc:
        raise Invalid(str(exc), "environment") from None


def cidrs_field(texts: list[str]) -> tuple[str, ...]:
    result = []
    for i, text in enumerate(texts):
        try:
            if "%" in text:  # an IPv6 zone id is no part of a network, and may hold any text
                raise ValueError("zone id")
            result.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            field = f"allowed_cidrs[{i}]"
            raise Invalid(f"{field}: {text!r} is not a CIDR", field) from None
    return tuple(result)


def constraints_field(constraints: Mapping[str, str]) -> dict[str, str]:
    for key in constraints:
        if key in ("org", "team") or not _is_name(key):
            field = f"constraints.{key}" if len(key) <= MAX_CONSTRAINT_NAME else "constraints"
            raise Invalid(
                f"{field}: constraint names match [a-z][a-z0-9_-]{{0,{MAX_CONSTRAINT_NAME - 1}}} "
                "and are not org or team",
                field,
            )
    return dict(constraints)


def _is_name(text: str) -> bool:
    return len(text) <= MAX_CONSTRAINT_NAME and bool(re.fullmatch(r"[a-z][a-z0-9_-]*", text))


def grace_field(text: str | None) -> float:
    if text is None:
        return 0.0
    grace = duration_field(text, "grace_period")
    if grace > MAX_GRACE:
        raise Invalid(f"grace_period: at most {format_duration(MAX_GRACE)}", "grace_period")
    return grace


FIXED_AT_ISSUANCE = ("scopes", "constraints", "expires_in", "expires_at", "service_account", "allowed_cidrs")


def refuse_fixed_fields(data: object) -> None:
    """Scopes, constraints and expiry are fixed at issuance: a PATCH naming one is refused."""
    if isinstance(data, dict):
        for fixed in FIXED_AT_ISSUANCE:
            if fixed in data:
                raise Invalid(
                    f"{fixed}: a token's {fixed.replace('_', ' ')} cannot be changed in place; "
                    "rotate the token (POST .../rotate) or issue a new one",
                    fixed,
                )


def reason_field(reason: object) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON or not all_shown(reason):
        raise Invalid(f"reason: 1 to {MAX_REASON} printable characters", "reason")
    if reason == "rotated":
        raise Invalid("reason: 'rotated' is recorded by rotation only", "reason")
    return reason


def is_key_id(text: str) -> bool:
    return KEY_ID_RE.match(text) is not None


# -- expiry -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Lifetime:
    """The expiry a request asks for, as written: a duration (`expires_in`) or a time
    (`expires_at`), at most one; neither: the default TTL (`tokens.default_ttl`)."""

    expires_in: str | int | None = None  # an int: days
    expires_at: str | None = None

    @property
    def explicit(self) -> bool:
        return self.expires_in is not None or self.expires_at is not None


def expiry(policy: TokenSettings, lifetime: Lifetime, issued: float) -> float | None:
    """The expiry `lifetime` asks for, within `tokens.max_ttl`."""
    if lifetime.expires_in is not None and lifetime.expires_at is not None:
        raise Invalid("give expires_in or expires_at, not both", "expires_in")
    if lifetime.expires_in is not None:
        ttl: float | None = lifetime_field(lifetime.expires_in, "expires_in")
        field = "expires_in"
    elif lifetime.expires_at is not None:
        ttl = time_field(lifetime.expires_at, "expires_at") - issued
        field = "expires_at"
        if ttl <= 0:
            raise Invalid("expires_at: is in the past", field)
    else:
        ttl = policy.default_ttl
        field = "expires_in"
    if ttl is not None and ttl <= 0:
        raise Invalid(f"{field}: must be in the future", field)
    if policy.max_ttl is not None and (ttl is None or ttl > policy.max_ttl + 1):
        raise Invalid(
            f"{field}: exceeds the maximum token lifetime of {format_duration(policy.max_ttl)} (tokens.max_ttl)",
            field,
        )
    if ttl is not None and issued + ttl > MAX_EXPIRES_AT:
        raise Invalid(f"{field}: is after {iso(MAX_EXPIRES_AT)}", field)
    return None if ttl is None else issued + ttl


def grant_expiry(
    principal: Principal, policy: TokenSettings, lifetime: Lifetime, issued: float
) -> float | None:
    """The expiry asked for; without one, the default TTL, but never later than the caller's
    own end (an explicit later one is refused by `check_grant`)."""
    expires_at = expiry(policy, lifetime, issued)
    limit = lifetime_end(principal.token)
    if limit is not None and not lifetime.explicit and (expires_at is None or expires_at > limit):
        return limit
    return expires_at
