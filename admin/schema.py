"""Request/response schemas of the admin API.

The same dicts are published in `/v1/openapi.json` (`tokenward.openapi`: the named ones in
`SCHEMAS` become `components/schemas`, referenced with `$ref`) and check request bodies
(`tokenward.validator`: a JSON Schema Draft 2020-12 validator reading the published
document). Patterns are anchored (`^...$`), as JSON Schema only searches for a pattern.
"""

from __future__ import annotations

from typing import Any

from tokenward.gateway.refusal import Step
from tokenward.metadata import METADATA_SCHEMA
from tokenward.schema_accounts import ACCOUNT, ACCOUNT_CREATE, ACCOUNT_LIST, ACCOUNT_UPDATE
from tokenward.schema_delegate import DELEGATE, DELEGATED
from tokenward.schema_limits import LIMITS_BODY, LIMITS_CREATE, LIMITS_VIEW, RATE_LIMIT, RATE_LIMITS, REFILL
from tokenward.validator import PRINTABLE, ValidationError, validate

Schema = dict[str, Any]


def anchored(pattern: str) -> str:
    """`pattern` as a JSON Schema `pattern` that must match the whole string."""
    return f"^(?:{pattern})$"


# -- shared pieces ----------------------------------------------------------------------
SLUG = r"[a-z0-9][a-z0-9-]{0,62}"
# The common cases of `unprintable`, published for clients (the validator checks all of them):
# C0, DEL, C1, ALM, zero-width and bidi marks, line/paragraph separators, bidi embeddings and
# overrides, word joiner and bidi isolates, BOM.
NAME_TEXT = r"[^\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+"
# `gateway/durations.py`: a whole number and a unit
DURATION_TEXT = r"[0-9]+(ms|s|m|h|d|w)"
NAME: Schema = {
    "type": "string",
    "pattern": anchored(SLUG),
    "maxLength": 63,
    "description": "a name: lowercase letters, digits and '-', starting with a letter or digit, at most 63",
}
SCOPE: Schema = {
    "type": "string",
    "pattern": anchored(r"(read|write|admin|read_write)(:([a-z][a-z0-9-]*|\*))?|[a-z][a-z0-9-]*"),
    "maxLength": 100,
    "description": "a level (`read`, `write` or `admin`), a colon and a resource name or `*` (e.g. "
    "`read:apis`, `write:*`); a bare level for every resource (`read` = `read:*`; `read_write` = "
    "`write`); or a capability name held or not (e.g. `mcp`)",
}
SCOPES: Schema = {"type": "array", "items": SCOPE, "minItems": 1, "maxItems": 100}
TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
DURATION: Schema = {
    "type": "string",
    "pattern": anchored(DURATION_TEXT),
    "maxLength": 20,
    "description": "a duration: a whole number and a unit, ms, s, m, h, d or w (e.g. `90d`)",
}
ENVIRONMENT: Schema = {
    "enum": ["live", "test"],
    "description": "live (the default) or test: shown in the token's prefix (tokens.prefix or tokens.test_prefix)",
}
CONSTRAINT_VALUE: Schema = {"type": "string", "pattern": anchored(r"[A-Za-z0-9._~-]{1,128}")}
TOKEN_STATUS: Schema = {
    "type": "string",
    "enum": ["active", "grace", "revoked", "expired"],
    "description": "a token's state now: expired once past expires_at, revoked once revoked; grace "
    "while a rotated token works only until its grace period ends (`grace_until`, `replaced_by`)",
}
STEP: Schema = {
    "type": "string",
    "enum": [step.value for step in Step],
    "description": "the decision step that refused the request (absent when a request was invalid)",
}
# Every `error` code the admin listener answers with (tests/test_openapi.py keeps it whole).
ERROR_CODES = (
    "invalid_request",
    "missing_token",
    "invalid_token",
    "forbidden",
    "insufficient_scope",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "conflict",
    "quota_exceeded",
    "payload_too_large",
    "uri_too_long",
    "headers_too_large",
    "internal_error",
    "http_error",
    "bad_gateway",
    "store_unavailable",
    "not_ready",
    "gateway_timeout",
    "rate_limited",
)
ERROR_CODE: Schema = {"type": "string", "enum": list(ERROR_CODES), "description": "a stable error code"}

TEAM_CREATE: Schema = {
    "type": "object",
    "description": "a new team and the scopes its tokens may hold",
    "properties": {"name": NAME, "permissions": {**SCOPES, "minItems": 0}},
    "required": ["name", "permissions"],
    "additionalProperties": False,
}
TEAM_PERMISSIONS: Schema = {
    "type": "object",
    "description": "a team's whole permission set (it replaces the one held)",
    "properties": {"permissions": {**SCOPES, "minItems": 0}},
    "required": ["permissions"],
    "additionalProperties": False,
}
TEAM: Schema = {
    "type": "object",
    "description": "a team of an org: its tokens hold at most its permissions",
    "properties": {
        "org": {"type": "string"},
        "name": {"type": "string"},
        "permissions": {"type": "array", "items": {"type": "string"}},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
        "rate_limits": RATE_LIMITS,
    },
    "required": ["org", "name", "permissions"],
}
# Paginated lists: `next` is the cursor to pass back as `?cursor=` for the following page,
# null on the last one.
NEXT_CURSOR: Schema = {
    "type": ["string", "null"],
    "description": "opaque cursor for the next page (pass it as ?cursor=); null on the last page",
}
TEAM_LIST: Schema = {
    "type": "object",
    "description": "one page of teams",
    "properties": {"teams": {"type": "array", "items": TEAM}, "next": NEXT_CURSOR},
    "required": ["teams", "next"],
}
SA_CREATE: Schema = {
    "type": "object",
    "description": "a new service account",
    "properties": {
        "name": NAME,
        "description": {"type": "string", "maxLength": 1000, PRINTABLE: True},
    },
    "required": ["name"],
    "additionalProperties": False,
}
SERVICE_ACCOUNT: Schema = {
    "type": "object",
    "description": "a named non-human identity of a team that groups tokens",
    "properties": {
        "org": {"type": "string"},
        "team": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
        "active_tokens": {"type": "integer"},
        "active_tokens_exact": {"type": "boolean"},
        "id": {"type": "string", "description": "the org-level account's stable id"},
        "teams": {"type": "array", "items": {"type": "string"}, "description": "every team it is a member of"},
        "owner": {"type": "string"},
    },
    "required": ["org", "team", "name"],
}
SA_LIST: Schema = {
    "type": "object",
    "description": "one page of service accounts",
    "properties": {"service_accounts": {"type": "array", "items": SERVICE_ACCOUNT}, "next": NEXT_CURSOR},
    "required": ["service_accounts", "next"],
}
EXPIRES_AT: Schema = {
    "type": "string",
    "maxLength": 40,
    "anyOf": [{"format": "date-time"}, {"pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}],
    "description": "an RFC 3339 time with a zone (e.g. `2027-01-01T12:00:00Z`) or a date, "
    "`2027-01-01`, meaning 00:00 UTC that day",
}
LIFETIME: Schema = {
    "type": ["string", "integer"],
    "pattern": anchored(r"[0-9]+(ms|s|m|h|d|w)?"),
    "minimum": 1,
    "maxLength": 20,
    "description": "how long the token lives: a whole number and a unit, ms, s, m, h, d or w "
    "(e.g. `90d`, `12h`), or a number of days (`90` = `90d`)",
}
TOKEN_CREATE: Schema = {
    "type": "object",
    "description": "a new token: at most one of expires_in and expires_at (neither: the default TTL)",
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "pattern": anchored(NAME_TEXT),
            PRINTABLE: True,
        },
        "description": {
            "type": "string",
            "maxLength": 1000,
            "pattern": anchored(f"(?:{NAME_TEXT})?"),
            PRINTABLE: True,
        },
        "scopes": SCOPES,
        "expires_in": LIFETIME,
        "expires_at": EXPIRES_AT,
        "environment": ENVIRONMENT,
        "service_account": NAME,
        "constraints": {
            "type": "object",
            "description": "claims the token is bound to (e.g. `env: prod`), matched by routes",
            "properties": {},
            "additionalProperties": CONSTRAINT_VALUE,
            "maxProperties": 20,
        },
        "allowed_cidrs": {
            "type": "array",
            "description": "client networks the token may be used from (empty: any)",
            "items": {"type": "string", "maxLength": 64},
            "maxItems": 50,
        },
        "metadata": METADATA_SCHEMA,
        **LIMITS_CREATE,
    },
    "required": ["name", "scopes"],
    "additionalProperties": False,
}
TOKEN: Schema = {
    "type": "object",
    "description": "a token as stored: never its secret or hash",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "display_prefix": {"type": "string"},
        "org": {"type": "string"},
        "team": {"type": ["string", "null"]},
        "service_account": {"type": ["string", "null"]},
        "service_account_id": {"type": ["string", "null"], "description": "its service account's stable id"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "effective_scopes": {"type": "array", "items": {"type": "string"}},
        "ineffective_scopes": {"type": "array", "items": {"type": "string"}},
        "constraints": {"type": "object", "additionalProperties": {"type": "string"}},
        "allowed_cidrs": {"type": "array", "items": {"type": "string"}},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
        "last_used_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "status": TOKEN_STATUS,
        "environment": ENVIRONMENT,
        "revoked_at": TIMESTAMP,
        "revoked_by": {"type": ["string", "null"]},
        "revoked_by_level": {
            "type": ["string", "null"],
            "description": "`org` or `team`: the revoker's level (null for a leak report from another org)",
        },
        "revoke_reason": {"type": ["string", "null"]},
        "replaced_by": {"type": ["string", "null"]},
        "grace_until": {
            **TIMESTAMP,
            "description": "status grace: when the rotation's grace period ends (the token stops working);"
            " never after expires_at (a grace period longer than the token has left ends at its expiry)",
        },
        "metadata": METADATA_SCHEMA,
        **LIMITS_VIEW,
        "legacy": {"type": "boolean", "description": "imported from an old system (its key is not ours)"},
        "parent_id": {"type": ["string", "null"], "description": "a child token's parent (POST /v1/delegate)"},
        "run_id": {"type": ["string", "null"], "description": "the agent run a child token was minted for"},
        "ended_by": {"type": "string", "description": "a child token ended by an ancestor: which, and how"},
    },
    "required": ["id", "name", "display_prefix", "scopes", "effective_scopes", "status"],
}
TOKEN_CREATED: Schema = {
    "type": "object",
    "description": "a token just issued, with its plaintext `token`: shown in this response only",
    "properties": {
        **TOKEN["properties"],
        "token": {"type": "string"},
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "description": "what the token asks for and cannot do: scopes its team does not hold,"
            " constraints no route names; for a rotation, a replacement that lives shorter than the"
            " old token's length (and why: tokens.max_ttl or the rotating admin's own expiry) and a"
            " grace period cut at the old token's expiry",
        },
    },
    "required": [
        "id",
        "token",
        "name",
        "display_prefix",
        "scopes",
        "effective_scopes",
        "ineffective_scopes",
        "expires_at",
        "status",
    ],
}
TOKEN_LIST: Schema = {
    "type": "object",
    "description": "one page of tokens",
    "properties": {"tokens": {"type": "array", "items": TOKEN}, "next": NEXT_CURSOR},
    "required": ["tokens", "next"],
}
WHOAMI: Schema = {
    "type": "object",
    "description": "the calling token",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "org": {"type": "string"},
        "team": {"type": ["string", "null"]},
        "service_account": {"type": ["string", "null"]},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "effective_scopes": {"type": "array", "items": {"type": "string"}},
        "expires_at": TIMESTAMP,
        "environment": ENVIRONMENT,
    },
    "required": ["id", "name", "org", "team", "scopes", "effective_scopes", "expires_at"],
}
ERROR: Schema = {
    "type": "object",
    "description": "every error: a stable code, a message for people, the request id to quote",
    # (dict(): `refusal.error_body` is the one dict literal that builds an error body)
    "properties": dict(
        error=ERROR_CODE,
        message={"type": "string"},
        field={"type": "string", "description": "the request field at fault (e.g. `scopes[0]`)"},
        step=STEP,
        request_id={"type": "string"},
    ),
    "required": ["error", "message"],
}

TOKEN_UPDATE: Schema = {
    "type": "object",
    "description": "a token's new name, description or metadata (scopes, constraints and expiry are fixed)",
    "properties": {
        "name": TOKEN_CREATE["properties"]["name"],
        "description": TOKEN_CREATE["properties"]["description"],
        "metadata": METADATA_SCHEMA,  # replaces the whole object ({} clears it)
    },
    "additionalProperties": False,
}
TOKEN_ROTATE: Schema = {
    "type": "object",
    "description": "how long the old token lives on (grace_period) and the replacement's expiry",
    "properties": {"grace_period": DURATION, "expires_in": LIFETIME, "expires_at": EXPIRES_AT},
    "additionalProperties": False,
}
TOKEN_ROTATED: Schema = {
    "type": "object",
    "description": "the replacement token, with its plaintext, and the token it replaces",
    "properties": {
        **TOKEN_CREATED["properties"],
        "replaces": {"type": "string"},
        "replaced_revoked_at": TIMESTAMP,
    },
    "required": [*TOKEN_CREATED["required"], "replaces"],
}
# -- revocation (who and why; see SECURITY.md "lifecycle races and who may restore") ------
TOKEN_REVOKE: Schema = {
    "type": "object",
    "description": "why the token is revoked (optional)",
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 200}},
    "additionalProperties": False,
}

# -- the named schemas: `components/schemas` of the OpenAPI document ---------------------------
SCHEMAS: dict[str, Schema] = {
    "Error": ERROR,
    "ErrorCode": ERROR_CODE,
    "Step": STEP,
    "Name": NAME,
    "Scope": SCOPE,
    "Duration": DURATION,
    "Lifetime": LIFETIME,
    "ExpiresAt": EXPIRES_AT,
    "Environment": ENVIRONMENT,
    "TokenStatus": TOKEN_STATUS,
    "Metadata": METADATA_SCHEMA,
    "Team": TEAM,
    "TeamCreate": TEAM_CREATE,
    "TeamPermissions": TEAM_PERMISSIONS,
    "TeamList": TEAM_LIST,
    "ServiceAccount": SERVICE_ACCOUNT,
    "ServiceAccountCreate": SA_CREATE,
    "ServiceAccountList": SA_LIST,
    "OrgServiceAccount": ACCOUNT,
    "OrgServiceAccountCreate": ACCOUNT_CREATE,
    "OrgServiceAccountUpdate": ACCOUNT_UPDATE,
    "OrgServiceAccountList": ACCOUNT_LIST,
    "Token": TOKEN,
    "TokenCreate": TOKEN_CREATE,
    "TokenCreated": TOKEN_CREATED,
    "TokenList": TOKEN_LIST,
    "TokenUpdate": TOKEN_UPDATE,
    "TokenRevoke": TOKEN_REVOKE,
    "TokenRotate": TOKEN_ROTATE,
    "TokenRotated": TOKEN_ROTATED,
    "Whoami": WHOAMI,
    "Delegate": DELEGATE,
    "Delegated": DELEGATED,
    "RateLimit": RATE_LIMIT,
    "Refill": REFILL,
    "RateLimits": LIMITS_BODY,
}

__all__ = ["PRINTABLE", "SCHEMAS", "SLUG", "Schema", "ValidationError", "anchored", "validate"]
