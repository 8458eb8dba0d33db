"""The admin API's OpenAPI 3.1 document, built from the endpoints' declarations
(`tokenward.endpoints.Routes`) and the schemas of `tokenward.schema`.

What clients are generated from is shared once in `components` and referenced with `$ref`:
the named schemas (`schema_reports.named_schemas()`), one error response per kind (`Error`, `Unauthorized`,
`Forbidden`, `Unavailable`), the path and paging parameters, the response headers
(`X-Request-Id` and `Cache-Control` on every answer, `Location` on a 201, `Retry-After` on a
503) and the bearer scheme. An endpoint without a permission is public (`security: []`).
The same document validates request bodies (`body_checks`, `tokenward.validator`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from tokenward import schema, schema_reports
from tokenward.endpoints import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, BodyCheck, Endpoint
from tokenward.validator import BodyValidator

JSON = "application/json"
SCHEMAS = "#/components/schemas/"
TAGS = {
    "teams": "Teams of an org and the permission set each team's tokens are bounded by",
    "service accounts": "Named non-human identities of a team that group its tokens",
    "tokens": "Issuing, listing, revoking, restoring, rotating and deleting tokens",
    "leaks": "Reporting leaked plaintext tokens, revoked at once",
    "audit": "Reading the audit trail of the caller's org or team",
    "identity": "Who the calling token is",
    "operations": "Health, readiness, metrics and this document: public, no token",
}
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "the request's id, also in the audit trail and the logs (quote it when reporting)",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "`no-store`: admin answers (plaintext tokens above all) are never cached",
        "schema": {"type": "string"},
    },
    "Location": {"description": "the path of the resource just created", "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": "the Bearer challenge (RFC 6750)", "schema": {"type": "string"}},
}
# The error response each status refers to, and what it says.
ERROR_RESPONSES = {
    401: ("Unauthorized", "no token, or a token that is unknown, revoked or expired", ("WWW-Authenticate",)),
    403: ("Forbidden", "the token may not do this (the `step` says which check refused)", ("WWW-Authenticate",)),
    429: ("RateLimited", "too many attempts: try again after Retry-After seconds", ("Retry-After",)),
    503: ("Unavailable", "the token store is unreachable, or the server is not ready", ("Retry-After",)),
}
GENERIC_ERROR = ("Error", "the request was refused: `error` says why, `field` names a bad input", ())
PATH_PARAMETERS = {
    "org": ("Org", "the organization", schema.NAME),
    "team": ("Team", "the team, within the org", schema.NAME),
    "id": ("TokenId", "the token's id (its key id, as listed)", {"type": "string", "maxLength": 64}),
    "name": ("ServiceAccountName", "the service account's name", schema.NAME),
    "account": (
        "ServiceAccountRef",
        "an org-level service account: its name, or its id (`sa_...`)",
        {"type": "string", "maxLength": 64},
    ),
}
QUERY_PARAMETERS: dict[str, tuple[str, schema.Schema]] = {
    "cursor": ("the `next` of the previous page (opaque); omit for the first page", {"type": "string"}),
    "status": ("only the tokens in this state", schema.TOKEN_STATUS),
    "expiring_within": (
        "only active tokens that expire within this duration (`14d`, `12h`), or number of days (`14` = `14d`)",
        {**schema.DURATION, "pattern": schema.anchored(r"[0-9]+(ms|s|m|h|d|w)?")},
    ),
    "service_account": (
        "only the tokens (token lists) or events (audit: also a former name or an id) of this service account",
        {"type": "string", "maxLength": 64},
    ),
    "metadata": (
        "KEY=VALUE: only the tokens whose metadata holds exactly this value (repeat: all must match)",
        {"type": "array", "items": {"type": "string", "maxLength": 1000}},
    ),
    "token_id": ("only the events about this token id", {"type": "string"}),
    "team": ("only this team's events (audit), tokens (org-wide list) or member service accounts", schema.NAME),
    "org": ("the caller's own org (the only one it may read; any other: 403)", schema.NAME),
    "action": ("only the events of this action (e.g. `token.revoked`)", {"type": "string"}),
    "since": ("events from this RFC 3339 time, or this duration ago (e.g. `1h`)", {"type": "string"}),
    "until": ("events up to this RFC 3339 time, or this duration ago", {"type": "string"}),
}


def build_document(endpoints: Sequence[Endpoint], info: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document of `endpoints` (in their order)."""
    builder = _Builder()
    paths: dict[str, Any] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = builder.operation(ep)
    tags = list(dict.fromkeys(ep.tag for ep in endpoints if ep.tag))
    document = {
        "openapi": "3.1.0",
        "info": {
            "description": "Teams, service accounts and tokens of the tokenward gateway, and their audit "
            "trail. Authenticate with a token as `Authorization: Bearer <token>`.",
            **info,
        },
        "tags": [{"name": tag, "description": TAGS.get(tag, tag)} for tag in tags],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {
                **{name: published(s, top=s) for name, s in schema_reports.named_schemas().items()},
                **builder.schemas,
            },
            "responses": builder.responses,
            "parameters": builder.parameters,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a tokenward token (`tw_...`) of an org or team admin, or any token for whoami",
                }
            },
        },
    }
    return copy.deepcopy(document)  # shares nothing with the module constants


def published(s: schema.Schema, top: schema.Schema | None = None) -> schema.Schema:
    """`s` as the document shows it: each named schema inside it (not `top` itself) a `$ref`."""
    if s is not top:
        for name, named in schema_reports.named_schemas().items():
            if s is named:
                return {"$ref": SCHEMAS + name}
    out: schema.Schema = {}
    for key, value in s.items():
        if key == "properties":
            out[key] = {prop: published(sub) for prop, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = published(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [published(sub) for sub in value]
        elif isinstance(value, list):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def body_checks(document: dict[str, Any], endpoints: Iterable[Endpoint]) -> dict[str, BodyCheck]:
    """For each endpoint with a body (by `operation_key`), the check of that body against the
    document's own `requestBody` schema of the operation."""
    checks: dict[str, BodyCheck] = {}
    for ep in endpoints:
        if ep.body is not None:
            path = ep.path.replace("~", "~0").replace("/", "~1")
            pointer = f"#/paths/{path}/{ep.method.lower()}/requestBody/content/application~1json/schema"
            checks[operation_key(ep)] = BodyValidator(document, pointer)
    return checks


def operation_key(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


class _Builder:
    """Builds operations, collecting the shared responses and parameters they refer to."""

    def __init__(self) -> None:
        self.responses: dict[str, Any] = {}
        self.parameters: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}  # bodies' object schemas that SCHEMAS does not name

    def body(self, s: schema.Schema, name: str) -> schema.Schema:
        """A body's schema: a `$ref`, so generated clients get one model per schema (an object
        schema without a name in SCHEMAS gets `name`)."""
        out = published(s)
        if "$ref" in out or out.get("type") != "object":
            return out
        self.schemas[name] = out
        return {"$ref": SCHEMAS + name}

    def operation(self, ep: Endpoint) -> dict[str, Any]:
        params = [self.path_parameter(part[1:-1]) for part in ep.path.split("/") if part.startswith("{")]
        params += [self.query_parameter(ep, name, kind) for name, kind in ep.query]
        responses = {str(code): self.response(ep, code, s) for code, s in ep.responses.items()}
        op: dict[str, Any] = {
            "tags": [ep.tag] if ep.tag else [],
            "summary": ep.summary,
            "description": ep.description,
            "operationId": ep.handler.__name__,
            "parameters": params,
            "security": [{"bearer": []}] if ep.auth else [],
        }
        if ep.request is not None:
            op["requestBody"] = {
                "required": not (ep.body is not None and ep.body.optional),
                "description": ep.request.get("description", "the request"),
                "content": {JSON: {"schema": self.body(ep.request, _camel(ep.handler.__name__) + "Body")}},
            }
        extra = [401, 403, 503] if ep.auth else []
        if ep.request is not None:
            extra += [400, 408, 413]  # a bad body, one not sent in time, one over MAX_BODY
        for code in extra:
            responses.setdefault(str(code), self.error(code))
        op["responses"] = dict(sorted(responses.items()))
        return op

    def response(self, ep: Endpoint, code: int, s: schema.Schema | None) -> dict[str, Any]:
        if code >= 400 and (s is None or s is schema.ERROR):
            return self.error(code)
        headers = {name: _header(name) for name in ("X-Request-Id", "Cache-Control")}
        if code == 201:
            headers["Location"] = _header("Location")
        if s is schema_reports.LEAKS_RESULT:  # a `throttled` result: report it again after Retry-After
            headers["Retry-After"] = _header("Retry-After")
        if s is None:
            return {"description": "no content" if code == 204 else "ok", "headers": headers}
        what = s.get("description", "ok")
        name = _camel(ep.handler.__name__) + ("Response" if code < 400 else str(code))
        response = {
            "description": f"created: {what}" if code == 201 else what,
            "headers": headers,
            "content": {JSON: {"schema": self.body(s, name)}},
        }
        if code < 400:
            return response
        # an error status with a body of its own (e.g. a readiness report): still shared
        if code in (429, 503):
            headers["Retry-After"] = _header("Retry-After")
        self.responses[name] = response
        return {"$ref": "#/components/responses/" + name}

    def error(self, code: int) -> dict[str, Any]:
        name, description, more = ERROR_RESPONSES.get(code, GENERIC_ERROR)
        if name not in self.responses:
            headers = {h: _header(h) for h in ("X-Request-Id", "Cache-Control", *more)}
            self.responses[name] = {
                "description": description,
                "headers": headers,
                "content": {JSON: {"schema": {"$ref": SCHEMAS + "Error"}}},
            }
        return {"$ref": "#/components/responses/" + name}

    def path_parameter(self, name: str) -> dict[str, Any]:
        key, description, s = PATH_PARAMETERS.get(name, (name, name, {"type": "string"}))
        self.parameters[key] = {
            "name": name,
            "in": "path",
            "required": True,
            "description": description,
            "schema": published(s),
        }
        return {"$ref": "#/components/parameters/" + key}

    def query_parameter(self, ep: Endpoint, name: str, kind: str) -> dict[str, Any]:
        if name == "limit":
            maximum = ep.max_limit
            key = "Limit" if maximum == MAX_PAGE_LIMIT else f"Limit{maximum}"
            self.parameters[key] = {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"rows per page, 1..{maximum} (400 beyond); the response's `next` continues",
                "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": DEFAULT_PAGE_LIMIT},
            }
            return {"$ref": "#/components/parameters/" + key}
        description, s = QUERY_PARAMETERS.get(name, (name, {"type": kind}))
        if name == "cursor":
            self.parameters["Cursor"] = {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": s,
            }
            return {"$ref": "#/components/parameters/Cursor"}
        return {"name": name, "in": "query", "required": False, "description": description, "schema": published(s)}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _header(name: str) -> dict[str, Any]:
    return {"$ref": "#/components/headers/" + name}


__all__ = ["body_checks", "build_document", "operation_key", "published"]
