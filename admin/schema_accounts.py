"""The admin API's schemas of org-level service accounts (issue 14, item 9), named in
`schema.SCHEMAS` with the others. Imports nothing of `schema` (which imports this): the few
shared pieces are restated here, equal to `schema`'s."""

from __future__ import annotations

from typing import Any

from tokenward.schema_limits import RATE_LIMITS
from tokenward.validator import PRINTABLE

Schema = dict[str, Any]
NAME: Schema = {
    "type": "string",
    "pattern": "^(?:[a-z0-9][a-z0-9-]{0,62})$",
    "maxLength": 63,
    "description": "a name: lowercase letters, digits and '-', starting with a letter or digit, at most 63",
}
TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
NEXT_CURSOR: Schema = {
    "type": ["string", "null"],
    "description": "opaque cursor for the next page (pass it as ?cursor=); null on the last page",
}

# -- org-level service accounts (issue 14, item 9) -------------------------------------------
OWNER: Schema = {
    "type": "string",
    "maxLength": 200,
    PRINTABLE: True,
    "description": "who answers for the account: a person or team contact, free text",
}
TEAM_NAMES: Schema = {"type": "array", "items": NAME, "maxItems": 100, "uniqueItems": True}
ACCOUNT_CREATE: Schema = {
    "type": "object",
    "description": "a new org-level service account and the teams it is a member of",
    "properties": {
        "name": NAME,
        "description": {"type": "string", "maxLength": 1000, PRINTABLE: True},
        "owner": OWNER,
        "teams": {**TEAM_NAMES, "minItems": 1},
    },
    "required": ["name", "teams"],
    "additionalProperties": False,
}
ACCOUNT_UPDATE: Schema = {
    "type": "object",
    "description": "what changes: a new name (its id, tokens and history stay), description, owner, "
    "memberships added or removed (a team with active tokens of the account cannot be removed)",
    "properties": {
        "name": NAME,
        "description": {"type": "string", "maxLength": 1000, PRINTABLE: True},
        "owner": OWNER,
        "add_teams": TEAM_NAMES,
        "remove_teams": TEAM_NAMES,
    },
    "additionalProperties": False,
}
ACCOUNT: Schema = {
    "type": "object",
    "description": "an org-level service account: a stable id, a name unique in the org, its teams",
    "properties": {
        "id": {"type": "string"},
        "org": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "owner": {"type": "string"},
        "teams": {"type": "array", "items": {"type": "string"}},
        "former_names": {"type": "array", "items": {"type": "string"}},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
        "updated_at": TIMESTAMP,
        "updated_by": {"type": ["string", "null"]},
        "rate_limits": RATE_LIMITS,
        "active_tokens": {"type": "integer"},
        "active_tokens_exact": {"type": "boolean"},
    },
    "required": ["id", "org", "name", "teams"],
}
ACCOUNT_LIST: Schema = {
    "type": "object",
    "description": "one page of org-level service accounts",
    "properties": {"service_accounts": {"type": "array", "items": ACCOUNT}, "next": NEXT_CURSOR},
    "required": ["service_accounts", "next"],
}
