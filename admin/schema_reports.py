"""Schemas of the admin API's reports: usage, audit, leak reports and readiness (the request
and record schemas are in `tokenward.schema`; both sets of named schemas are published)."""

from __future__ import annotations

from tokenward.schema import ERROR, NEXT_CURSOR, TIMESTAMP, Schema
from tokenward.schema import SCHEMAS as BASE_SCHEMAS

COUNTS: Schema = {
    "type": "object",
    "additionalProperties": {"type": "integer", "minimum": 0},
    "description": "counts by name",
}
TOKEN_USAGE: Schema = {
    "type": "object",
    "description": (
        "a token's requests over the last `days` UTC days, today included: `by_day` (every day of "
        "the window, `2026-11-28`), `by_route` (the route's methods and path template), `refused` "
        "(by decision step: `status`, `scope`, ...), `scopes_used` (per granted scope, the allowed "
        "requests it covered) and `unused_scopes` (granted scopes no allowed request needed); "
        "`by_tool`: the MCP tools it called (allowed calls; `(unlisted)`: those an `mcp` policy's "
        "`default` scope allowed), whose scopes count in `scopes_used`"
    ),
    "properties": {
        "token_id": {"type": "string"},
        "name": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 90},
        "since": {"type": "string", "format": "date", "description": "the window's first day"},
        "requests": {"type": "integer", "minimum": 0, "description": "allowed and refused"},
        "allowed": {"type": "integer", "minimum": 0},
        "by_day": COUNTS,
        "by_route": COUNTS,
        "refused": COUNTS,
        "by_tool": COUNTS,
        "scopes_used": COUNTS,
        "unused_scopes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["token_id", "days", "since", "requests", "by_day", "by_route", "refused", "unused_scopes"],
}
AUDIT_EVENT: Schema = {
    "type": "object",
    "description": "one audit event: its action and the fields it records",
    "properties": {
        "id": {"type": "string"},
        "time": TIMESTAMP,
        "action": {"type": "string"},
        "event": {"type": "string"},
    },
    "required": ["id", "action"],
}
AUDIT_LIST: Schema = {
    "type": "object",
    "description": "one page of audit events, newest first",
    "properties": {"events": {"type": "array", "items": AUDIT_EVENT}, "next": NEXT_CURSOR},
    "required": ["events", "next"],
}
LEAKS: Schema = {
    "type": "object",
    "description": "plaintext tokens found where they should not be",
    "properties": {
        "tokens": {
            "type": "array",
            "items": {"type": "string", "maxLength": 200},
            "minItems": 1,
            "maxItems": 100,
        },
        "text": {
            "type": "string",
            "maxLength": 1048576,
            "description": "any text (a log line, a diff, JSON): every token-shaped string with a"
            " valid checksum in it is reported, as secret scanners find them (at most 100)",
        },
    },
    "additionalProperties": False,
}
LEAK_OUTCOME: Schema = {
    "type": "string",
    "enum": ["revoked", "already_revoked", "unknown", "not_a_token", "throttled"],
    "description": "what became of a reported token (`throttled`: report it again after Retry-After)",
}
LEAKS_RESULT: Schema = {
    "type": "object",
    "description": "one result per reported token, in order",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "token": {
                        "type": "string",
                        "description": "the token's display prefix (`legacy_<id>` for an imported key); for "
                        "anything else, `(not a token: N characters)`: no character of it",
                    },
                    "result": LEAK_OUTCOME,
                },
                "required": ["token", "result"],
            },
        },
        "found": {
            "type": "integer",
            "description": "with `text`: how many token-shaped strings it holds (valid checksum or not)",
        },
    },
    "required": ["results"],
}

# -- /readyz -------------------------------------------------------------------------------------
STORE_STATE: Schema = {
    "type": "object",
    "properties": {
        "up": {"type": "boolean"},
        "down_for_s": {"type": "number"},
        "stale_if_error_s": {"type": "number"},
        "persistence": {"type": "string"},
        "crash_safe_writes": {"type": "boolean"},
        "warning": {"type": "string"},
    },
    "required": ["up", "down_for_s", "stale_if_error_s"],
}
WORKER_STATE: Schema = {
    "type": "object",
    "properties": {
        "worker": {"type": "integer"},
        "pid": {"type": "integer"},
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "report_age_s": {"type": "number"},
        "store": STORE_STATE,
    },
    "required": ["worker", "status", "reasons"],
}
READINESS: Schema = {
    "type": "object",
    "description": "what /readyz reports: ready or not, why, and the store's and each worker's state",
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "routes": {"type": "integer"},
        "store": STORE_STATE,
        "workers": {"type": "array", "items": WORKER_STATE},
    },
    "required": ["status", "reasons", "routes", "store"],
}
NOT_READY: Schema = {"allOf": [ERROR, READINESS], "description": "not ready: the error body and the report"}


# -- the named schemas of this module (`openapi` publishes them beside `schema.SCHEMAS`) ---------
SCHEMAS: dict[str, Schema] = {
    "TokenUsage": TOKEN_USAGE,
    "UsageCounts": COUNTS,
    "AuditEvent": AUDIT_EVENT,
    "AuditList": AUDIT_LIST,
    "LeakReport": LEAKS,
    "LeakOutcome": LEAK_OUTCOME,
    "LeakResults": LEAKS_RESULT,
    "StoreState": STORE_STATE,
    "WorkerState": WORKER_STATE,
    "Readiness": READINESS,
    "NotReady": NOT_READY,
}


def named_schemas() -> dict[str, Schema]:
    """Every named schema of the admin API: `components/schemas` of the OpenAPI document."""
    return {**BASE_SCHEMAS, **SCHEMAS}
