"""The admin API's schemas of child tokens (`POST /v1/delegate`, admin/delegate.py). Imports
nothing of `schema`: the few shared pieces are restated here, equal to `schema`'s."""

from __future__ import annotations

from typing import Any

from tokenward.validator import PRINTABLE

Schema = dict[str, Any]
SCOPE: Schema = {
    "type": "string",
    "pattern": "^(?:(read|write|admin|read_write)(:([a-z][a-z0-9-]*|\\*))?|[a-z][a-z0-9-]*)$",
    "maxLength": 100,
}
TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}

DELEGATE: Schema = {
    "type": "object",
    "description": "a child token of the calling token, for one agent run: scopes within the caller's"
    " effective scopes, a short TTL, the caller's constraints and networks at least",
    "properties": {
        "scopes": {"type": "array", "items": SCOPE, "minItems": 1, "maxItems": 100},
        "ttl": {
            "type": "string",
            "pattern": "^(?:[0-9]+(ms|s|m|h|d|w))$",
            "maxLength": 20,
            "description": "how long the child lives (default 15m), at most tokens.delegation.max_ttl"
            " and never past the parent's own expiry",
        },
        "max_uses": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "description": "a budget of requests"},
        "run_id": {
            "type": "string",
            "pattern": "^(?:[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127})$",
            "description": "the agent run: in the child's audit events and X-Tokenward-Run-Id",
        },
        "name": {"type": "string", "minLength": 1, "maxLength": 100, PRINTABLE: True},
        "description": {"type": "string", "maxLength": 1000, PRINTABLE: True},
        "allowed_cidrs": {
            "type": "array",
            "description": "client networks, inside the parent's (default: the parent's)",
            "items": {"type": "string", "maxLength": 64},
            "maxItems": 50,
        },
    },
    "required": ["scopes"],
    "additionalProperties": False,
}
DELEGATED: Schema = {
    "type": "object",
    "description": "a child token just minted, with its plaintext `token`: shown in this response only",
    "properties": {
        "id": {"type": "string"},
        "token": {"type": "string"},
        "parent_id": {"type": "string"},
        "ancestors": {"type": "array", "items": {"type": "string"}, "description": "root first, the parent last"},
        "run_id": {"type": ["string", "null"]},
        "name": {"type": "string"},
        "display_prefix": {"type": "string"},
        "org": {"type": "string"},
        "team": {"type": ["string", "null"]},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "effective_scopes": {"type": "array", "items": {"type": "string"}},
        "allowed_cidrs": {"type": "array", "items": {"type": "string"}},
        "expires_at": TIMESTAMP,
        "max_uses": {"type": ["integer", "null"]},
        "status": {"type": "string"},
    },
    "required": ["id", "token", "parent_id", "expires_at", "scopes"],
}
