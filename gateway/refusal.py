"""One refusal type for every listener, and the one JSON error body it renders to.

The decision, the request edge, the forwarder and the admin API all raise `Refusal`
(status, error code, the failing `Step`, a human message, optionally the scope a 403
lacks or the body field at fault). `error_body` and `error_headers` turn it into what the
client sees; `tokenward.gateway.edge.error_response` wraps them in an aiohttp response.
No aiohttp here: the core raises refusals without knowing about HTTP objects.
"""

from __future__ import annotations

from enum import StrEnum

import orjson

REALM = 'Bearer realm="tokenward"'


class Step(StrEnum):
    """Stable step ids, as they appear in responses, audit events and metrics."""

    # the ordered decision (see tokenward.gateway.decision)
    ROUTE = "route"
    CREDENTIAL = "credential"
    TOKEN = "token"  # noqa: S105 - a step name, not a secret
    STATUS = "status"
    ENVIRONMENT = "environment"  # a route or upstream that accepts only live (or test) tokens
    ORG = "org"
    TEAM = "team"
    CONSTRAINTS = "constraints"
    SCOPE = "scope"
    MCP_TOOL = "mcp_tool"  # an MCP tools/call the token may not make (gateway/mcp.py)
    STORE = "store"
    RATE_LIMIT = "rate_limit"  # after scope: the token's, team's, account's and route's limits
    # the request edge, before the decision
    PATH = "path"
    REQUEST = "request"
    LIMITS = "limits"
    FRAMING = "framing"
    # after the decision
    FORWARD = "forward"
    VERIFIED = "verified"
    UPSTREAM = "upstream"
    # the admin API's own authorization: what a caller may grant
    GRANT = "grant"
    # the server itself
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"


class Refusal(Exception):
    """A refused request: HTTP status, error code, failing step and a human message.

    `step` is None for the admin API's request validation (its bodies carry no step);
    `scope` is the permission a 403 lacks (RFC 6750 `insufficient_scope`); `field` the
    request-body field at fault; `close`: the connection must close after the answer
    (the client's body was not read to its end)."""

    def __init__(
        self,
        status: int,
        error: str,
        step: Step | None,
        message: str,
        scope: str | None = None,
        field: str | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.step = step
        self.message = message
        self.scope = scope
        self.field = field
        self.close = close

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.error!r}, {self.step!r}, {self.message!r})"

    def render(self, request_id: str) -> bytes:
        """The response body (JSON): `error_body`, unless a kind of refusal answers in its
        own protocol's shape (an MCP route's JSON-RPC error: gateway/mcp.py)."""
        return error_body(self, request_id)


def error_body(refusal: Refusal, request_id: str) -> bytes:
    """The JSON error body: error, message, step (when known), request_id, field (when known)."""
    body: dict[str, str] = {"error": refusal.error, "message": refusal.message}
    if refusal.step is not None:
        body["step"] = refusal.step.value
    body["request_id"] = request_id
    if refusal.field:
        body["field"] = refusal.field
    return orjson.dumps(body)


def error_headers(refusal: Refusal, request_id: str) -> dict[str, str]:
    """The error response's headers; a 401/403 challenge as RFC 6750 describes it."""
    headers = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
    if refusal.status == 401:
        if refusal.error == "missing_token":
            headers["WWW-Authenticate"] = REALM
        else:
            description = refusal.message.replace('"', "'")
            headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token", error_description="{description}"'
    elif refusal.status == 403 and refusal.scope:
        headers["WWW-Authenticate"] = f'{REALM}, error="insufficient_scope", scope="{refusal.scope}"'
    extra = getattr(refusal, "headers", None)  # a rate limit's (gateway/limiter.RateLimited)
    if extra is not None:
        headers.update(extra)  # its own Retry-After, or none (a budget spent for good)
    elif refusal.status in (429, 503):
        headers["Retry-After"] = "1"
    return headers


__all__ = ["REALM", "Refusal", "Step", "error_body", "error_headers"]
