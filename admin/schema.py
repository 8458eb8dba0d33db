"""Request/response schemas of the admin API.

One JSON-Schema subset serves both purposes: `validate()` checks request bodies (every
problem names its field) and the same dicts are published in `/v1/openapi.json`.
"""

from __future__ import annotations

import re
from typing import Any

from tokenward.gateway.text import printable, unprintable

Schema = dict[str, Any]


class ValidationError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _type_name(value: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def validate(schema: Schema, value: Any, where: str = "") -> None:
    """Raise ValidationError naming the first offending field."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ValidationError(where or "body", f"expected an object, got {_type_name(value)}")
        props: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties", False)
        for key in value:
            if key not in props and extra is False:
                allowed = ", ".join(props) or "none"
                raise ValidationError(_join(where, key), f"unknown field (allowed: {allowed})")
        for key in schema.get("required", []):
            if key not in value:
                raise ValidationError(_join(where, key), "is required")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise ValidationError(where, f"at most {schema['maxProperties']} entries")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                if (
                    key in props
                    and item is None
                    and schema.get("nullable_fields", True)
                    and "null" in _types(sub)
                ):
                    continue
                validate(sub, item, _join(where, key))
        return
    if kind == "array":
        if not isinstance(value, list):
            raise ValidationError(where, f"expected an array, got {_type_name(value)}")
        if len(value) < schema.get("minItems", 0):
            raise ValidationError(where, f"needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise ValidationError(where, f"at most {schema['maxItems']} items")
        for i, item in enumerate(value):
            validate(schema.get("items", {}), item, f"{where}[{i}]")
        return
    if kind == "string":
        if not isinstance(value, str):
            raise ValidationError(where, f"expected a string, got {_type_name(value)}")
        if len(value) < schema.get("minLength", 0):
            raise ValidationError(
                where,
                "must not be empty"
                if schema.get("minLength") == 1
                else f"at least {schema['minLength']} characters",
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ValidationError(where, f"at most {schema['maxLength']} characters")
        if schema.get(PRINTABLE) and (problem := unprintable(value)) is not None:
            raise ValidationError(where, problem)
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            raise ValidationError(where, f"{printable(value)!r} does not match {schema['pattern']}")
        if "enum" in schema and value not in schema["enum"]:
            raise ValidationError(where, f"expected one of {', '.join(schema['enum'])}")
        return
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(where, f"expected an integer, got {_type_name(value)}")
        if "minimum" in schema and value < schema["minimum"]:
            raise ValidationError(where, f"must be ≥ {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ValidationError(where, f"must be ≤ {schema['maximum']}")
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValidationError(where, f"expected true or false, got {_type_name(value)}")
        return


def _types(schema: Schema) -> list[str]:
    t = schema.get("type")
    return t if isinstance(t, list) else [t] if t else []


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# -- text people read in a terminal (issue 10, item 6) -------------------------------------
#: A string keyword: every character must be printable (`tokenward.gateway.text.unprintable`).
PRINTABLE = "x-printable"


# -- shared pieces ----------------------------------------------------------------------
SLUG = r"[a-z0-9][a-z0-9-]{0,62}"
# The common cases of `unprintable`, published for clients (the validator checks all of them):
# C0, DEL, C1, ALM, zero-width and bidi marks, line/paragraph separators, bidi embeddings and
# overrides, word joiner and bidi isolates, BOM.
NAME_TEXT = r"[^\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+"
SCOPE = {"type": "string", "pattern": r"(read|write|admin):([a-z][a-z0-9-]*|\*)", "maxLength": 100}
SCOPES = {"type": "array", "items": SCOPE, "minItems": 1, "maxItems": 100}
TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
DURATION = {"type": "string", "pattern": r"\d+(ms|s|m|h|d|w)", "maxLength": 20}
CONSTRAINT_VALUE = {"type": "string", "pattern": r"[A-Za-z0-9._~-]{1,128}"}

TEAM_CREATE: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": SLUG},
        "permissions": {**SCOPES, "minItems": 0},
    },
    "required": ["name", "permissions"],
    "additionalProperties": False,
}
TEAM_PERMISSIONS: Schema = {
    "type": "object",
    "properties": {"permissions": {**SCOPES, "minItems": 0}},
    "required": ["permissions"],
    "additionalProperties": False,
}
TEAM: Schema = {
    "type": "object",
    "properties": {
        "org": {"type": "string"},
        "name": {"type": "string"},
        "permissions": {"type": "array", "items": {"type": "string"}},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
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
    "properties": {"teams": {"type": "array", "items": TEAM}, "next": NEXT_CURSOR},
    "required": ["teams", "next"],
}
SA_CREATE: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": SLUG},
        "description": {"type": "string", "maxLength": 1000, PRINTABLE: True},
    },
    "required": ["name"],
    "additionalProperties": False,
}
SERVICE_ACCOUNT: Schema = {
    "type": "object",
    "properties": {
        "org": {"type": "string"},
        "team": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
        "active_tokens": {"type": "integer"},
        "active_tokens_exact": {"type": "boolean"},
    },
    "required": ["org", "team", "name"],
}
SA_LIST: Schema = {
    "type": "object",
    "properties": {"service_accounts": {"type": "array", "items": SERVICE_ACCOUNT}, "next": NEXT_CURSOR},
    "required": ["service_accounts", "next"],
}
TOKEN_CREATE: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": NAME_TEXT, PRINTABLE: True},
        "description": {
            "type": "string",
            "maxLength": 1000,
            "pattern": f"(?:{NAME_TEXT})?",
            PRINTABLE: True,
        },
        "scopes": SCOPES,
        "expires_in": DURATION,
        "expires_at": {"type": "string", "format": "date-time", "maxLength": 40},
        "service_account": {"type": "string", "pattern": SLUG},
        "constraints": {
            "type": "object",
            "properties": {},
            "additionalProperties": CONSTRAINT_VALUE,
            "maxProperties": 20,
        },
        "allowed_cidrs": {
            "type": "array",
            "items": {"type": "string", "maxLength": 64},
            "maxItems": 50,
        },
    },
    "required": ["name", "scopes"],
    "additionalProperties": False,
}
TOKEN: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "display_prefix": {"type": "string"},
        "org": {"type": "string"},
        "team": {"type": ["string", "null"]},
        "service_account": {"type": ["string", "null"]},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "effective_scopes": {"type": "array", "items": {"type": "string"}},
        "ineffective_scopes": {"type": "array", "items": {"type": "string"}},
        "constraints": {"type": "object", "additionalProperties": {"type": "string"}},
        "allowed_cidrs": {"type": "array", "items": {"type": "string"}},
        "created_at": TIMESTAMP,
        "created_by": {"type": "string"},
        "last_used_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "status": {"type": "string", "enum": ["active", "revoked", "expired"]},
        "revoked_at": TIMESTAMP,
        "revoked_by": {"type": ["string", "null"]},
        "revoked_by_level": {"type": ["string", "null"]},  # "org" or "team"
        "revoke_reason": {"type": ["string", "null"]},
        "replaced_by": {"type": ["string", "null"]},
    },
    "required": ["id", "name", "display_prefix", "scopes", "effective_scopes", "status"],
}
TOKEN_CREATED: Schema = {
    "type": "object",
    "properties": {**TOKEN["properties"], "token": {"type": "string"}},
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
    "properties": {"tokens": {"type": "array", "items": TOKEN}, "next": NEXT_CURSOR},
    "required": ["tokens", "next"],
}
WHOAMI: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "org": {"type": "string"},
        "team": {"type": ["string", "null"]},
        "service_account": {"type": ["string", "null"]},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "effective_scopes": {"type": "array", "items": {"type": "string"}},
        "expires_at": TIMESTAMP,
    },
    "required": ["id", "name", "org", "team", "scopes", "effective_scopes", "expires_at"],
}
ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": "string"},
        "step": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "required": ["error", "message"],
}

TOKEN_UPDATE: Schema = {
    "type": "object",
    "properties": {
        "name": TOKEN_CREATE["properties"]["name"],
        "description": TOKEN_CREATE["properties"]["description"],
    },
    "additionalProperties": False,
}
TOKEN_ROTATE: Schema = {
    "type": "object",
    "properties": {
        "grace_period": DURATION,
        "expires_in": DURATION,
        "expires_at": TOKEN_CREATE["properties"]["expires_at"],
    },
    "additionalProperties": False,
}
TOKEN_ROTATED: Schema = {
    "type": "object",
    "properties": {
        **TOKEN_CREATED["properties"],
        "replaces": {"type": "string"},
        "replaced_revoked_at": TIMESTAMP,
    },
    "required": [*TOKEN_CREATED["required"], "replaces"],
}
AUDIT_EVENT: Schema = {
    "type": "object",
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
    "properties": {"events": {"type": "array", "items": AUDIT_EVENT}, "next": NEXT_CURSOR},
    "required": ["events", "next"],
}
LEAKS: Schema = {
    "type": "object",
    "properties": {
        "tokens": {
            "type": "array",
            "items": {"type": "string", "maxLength": 200},
            "minItems": 1,
            "maxItems": 100,
        },
    },
    "required": ["tokens"],
    "additionalProperties": False,
}
LEAKS_RESULT: Schema = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "token": {"type": "string"},
                    "result": {
                        "type": "string",
                        "enum": ["revoked", "already_revoked", "unknown", "not_a_token", "throttled"],
                    },
                },
                "required": ["token", "result"],
            },
        }
    },
    "required": ["results"],
}

# -- revocation (who and why; see SECURITY.md "lifecycle races and who may restore") ------
TOKEN_REVOKE: Schema = {
    "type": "object",
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 200}},
    "additionalProperties": False,
}
