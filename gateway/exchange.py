"""One request's value on its way through the gateway, and the first two steps that build it.

The proxy pipeline (`tokenward.gateway.pipeline`) visits each concern once, in order:

1. **edge** (`open_exchange`, `check_request`): the connection's peer, whether it is a trusted
   proxy, the client's address, the request id; then the size limits and method overrides;
2. **target** (`read_target`, or `ask_forward_auth` first for forward-auth): the one
   canonical target, with no credential in a cookie or the query;
3. **decision**, 4. **forward** (or the forward-auth answer, or a WebSocket tunnel),
5. **audit**.

Each step reads what the previous ones put in the `Exchange` and adds its own result; no
step reads the trust, the request id or the target from the raw request again. With tracing
on, the exchange also carries its `RequestTrace` (gateway/tracing.py); off, that is None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, unquote_plus

from tokenward.gateway.bounded import Memo
from tokenward.gateway.decision import Principal
from tokenward.gateway.edge import TrustedProxies, client_request_id, request_id
from tokenward.gateway.headers import HeaderPolicy
from tokenward.gateway.inbound import Request
from tokenward.gateway.mcp_policy import McpCalls
from tokenward.gateway.paths import MEMO_SIZE, PathError, Target, memo_safe, parse_target
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.routes import HTTP_METHODS
from tokenward.gateway.scopes import Scope
from tokenward.gateway.settings import Limits, Settings, Upstream
from tokenward.gateway.tokens import contains_bare_token

VERIFY_PATH = "/_tokenward/verify"
REMAINING_HEADER = "X-Tokenward-Remaining"  # a token's usage budget left, for the upstream


class SettingsView:
    """What the pipeline derives once from one settings object: its trusted proxies and
    header policy (each with its own bounded memo), the accepted token prefixes and the
    memo of canonical targets. Owned by one server's pipeline and rebuilt when a reload
    swaps the settings."""

    __slots__ = ("headers", "prefixes", "settings", "targets", "trust")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trust = TrustedProxies(settings.trusted_proxies)
        self.headers = HeaderPolicy(settings.strip_headers, settings.forward_authorization)
        self.prefixes = settings.tokens.accepted_prefixes
        # origin-form raw target -> its canonical Target, for targets that passed check_target
        # and parse_target (pure functions of the target and `prefixes`); refusals are not kept
        self.targets: Memo[str, Target] = Memo(MEMO_SIZE)


class RequestTrace(Protocol):
    """One request's trace, while tracing is on (the implementation: gateway/otel.py)."""

    @property
    def trace_id(self) -> str: ...  # 32 hex digits, for the audit event

    def call_upstream(self, ex: Exchange, upstream: Upstream) -> None:
        """The forward step is about to call `upstream` (a child span)."""

    def inject(self, headers: list[tuple[str, str]]) -> None:
        """Replace any trace context in the upstream request's `headers` with this trace's."""

    def finish(self, ex: Exchange) -> None:
        """The audit step: the request's outcome, and its spans end."""


@dataclass(slots=True)
class Exchange:
    """Everything one request's steps built, in one typed place: built at the edge, then
    filled in by the target, decision and forward steps, read by the audit step."""

    request: Request  # for the body, the transport and the headers the upstream gets
    view: SettingsView  # one settings snapshot per request: a reload swaps the whole object
    request_id: str
    method: str
    path: str  # the raw target, then (from the target step) the canonical path
    peer: str | None  # the connection's peer address
    trusted: bool  # the peer is one of `trusted_proxies`
    client_ip: str | None = None
    client_request_id: str | None = None  # the client's X-Request-Id, when not the id
    mode: str = "proxy"  # or "forward_auth", "websocket"
    started: float = field(default_factory=time.perf_counter)
    decided: float = 0.0  # perf_counter when the decision let it through (0: not, or not yet)
    target: Target | None = None  # the canonical target (path and raw query)
    route: str | None = None
    upstream: str = ""
    websocket: bool = False  # the matched route lets WebSocket upgrades through
    principal: Principal | None = None
    required: tuple[Scope, ...] = ()  # the matched route's scopes (for the usage tally)
    # A refusal at step 3 or 4 (decision.TokenRefused): the token it proved (step 4), or only
    # the key id the credential claimed (step 3, unproven). For the audit event and usage.
    refused_token: TokenRecord | None = None
    claimed_id: str | None = None
    epoch: int = 0  # the cache epoch the decision started in
    allowed: bool = False
    status: int = 500
    step: str = Step.FORWARD
    reason: str = "allowed"
    recorded: bool = False  # the decision's audit event is out
    # What reached the client of a forwarded response, and which side cut it short: after
    # the status line is sent, the audit event must still say what happened.
    sent_status: int = 0  # the status line sent to the client, once sent
    bytes_sent: int = 0
    upstream_aborted: bool = False  # the upstream failed mid-body; the client's connection was cut
    client_aborted: bool = False  # the client went away mid-body
    shutdown_aborted: bool = False  # the gateway stopped (drain time ran out) mid-body
    abort_error: str = ""
    response_bytes: int = 0  # the body of a response sent whole (a streamed one counts bytes_sent)
    upstream_seconds: float | None = None  # from sending the request to the upstream's response head
    trace: RequestTrace | None = None  # tracing on: this request's spans
    # an MCP route (gateway/mcp.py): the body read to decide, forwarded as it is, and the calls
    body: bytes | None = None
    mcp: McpCalls | None = None
    remaining: int | None = None  # the token's usage budget left after this request (limiter.py)


# -- 1. edge ------------------------------------------------------------------------------------


def open_exchange(request: Request, view: SettingsView) -> Exchange:
    """The edge: who is on the other end of the connection and the request's id. Never raises
    a Refusal (everything after it is audited with what it found)."""
    peer = request.remote
    trust = view.trust
    trusted = peer in trust
    ex = Exchange(request, view, request_id(request, trusted), request.method, request.raw_path, peer, trusted)
    headers = request.headers
    if "X-Request-Id" in headers:
        ex.client_request_id = client_request_id(request, ex.request_id)
    forwarded_for = headers.getall("X-Forwarded-For", ()) if trusted else ()
    ex.client_ip = trust.behind(peer, forwarded_for) if forwarded_for else peer  # none: the peer
    return ex


METHOD_OVERRIDE = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_X_DASH = frozenset({b"x-", b"X-", b"x_", b"X_", b"x.", b"X."})


def check_request(request: Request, limits: Limits) -> None:
    """Checks before any routing: limits, no method override header."""
    if len(request.raw_path) > limits.max_url_length:
        raise Refusal(414, "uri_too_long", Step.LIMITS, "request target too long")
    raw_headers = request.raw_headers
    if len(raw_headers) > limits.max_header_count:
        raise Refusal(431, "headers_too_large", Step.LIMITS, "too many request headers")
    size = 0
    override = False
    for name, value in raw_headers:
        size += len(name) + len(value)
        # every method override header is x-http-method*/x-method-override, in any spelling
        if len(name) >= 13 and name[:2] in _X_DASH and not override:
            norm = name.decode("latin-1").lower().replace("_", "-").replace(".", "-")
            override = norm in METHOD_OVERRIDE
    if size > limits.max_header_bytes:
        raise Refusal(431, "headers_too_large", Step.LIMITS, "request headers too large")
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise Refusal(413, "payload_too_large", Step.LIMITS, "request body too large")
    if override:
        raise Refusal(400, "invalid_request", Step.REQUEST, "method override headers are not accepted")


# -- 2. target ----------------------------------------------------------------------------------


def ask_forward_auth(ex: Exchange) -> None:
    """Forward-auth (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz HTTP): only a
    trusted proxy may ask, and the method and target asked about replace the request's own."""
    ex.mode = "forward_auth"
    if not ex.trusted:
        raise Refusal(403, "forbidden", Step.REQUEST, "forward-auth answers only trusted_proxies")
    ex.method, ex.path = original_request(ex.request)


def read_target(ex: Exchange) -> Target:
    """The one canonical target of `ex.method ex.path`: no token in a cookie or the query,
    absolute-form only for our own Host. Sets ex.target and ex.path (now canonical)."""
    request = ex.request
    view = ex.view
    prefixes = view.prefixes
    check_cookies(request, prefixes)
    raw = ex.path
    target = view.targets.get(raw)  # an origin-form target seen before: it passed both checks
    if target is None:
        raw_target = check_target(raw, request.headers.getall("Host", []), prefixes)
        try:
            target = parse_target(raw_target)
        except PathError as exc:
            raise Refusal(400, "invalid_request", Step.PATH, str(exc)) from None
        if not raw.startswith(_ABSOLUTE) and memo_safe(raw):  # absolute-form: depends on Host
            view.targets.remember(raw, target)
    ex.target = target
    ex.path = target.path
    return target


def original_request(request: Request) -> tuple[str, str]:
    """The method and target a fronting proxy asks about: nginx (X-Original-*), Traefik
    (X-Forwarded-Method/-Uri), or Envoy (the original path appended to the verify path)."""
    headers = request.headers
    uris = headers.getall("X-Original-URI", []) + headers.getall("X-Forwarded-Uri", [])
    methods = headers.getall("X-Original-Method", []) + headers.getall("X-Forwarded-Method", [])
    if len(uris) > 1 or len(methods) > 1:
        raise Refusal(400, "invalid_request", Step.REQUEST, "more than one original URI or method header")
    if uris:
        target = uris[0]
    else:
        target = request.raw_path[len(VERIFY_PATH) :] or ""
        if not target.startswith("/"):
            raise Refusal(
                400,
                "invalid_request",
                Step.REQUEST,
                "forward-auth needs X-Original-URI, X-Forwarded-Uri or a path after /_tokenward/verify",
            )
    method = methods[0].strip().upper() if methods else request.method
    if method not in HTTP_METHODS:
        raise Refusal(400, "invalid_request", Step.REQUEST, f"unsupported original method {method!r}")
    return method, target


_ABSOLUTE = ("http://", "https://")


def check_target(raw: str, hosts: list[str], prefixes: frozenset[str]) -> str:
    """One meaning per target: absolute-form only for our own Host, no credential in the query.
    Returns the origin-form target to canonicalize."""
    if raw.startswith(_ABSOLUTE):
        raw = _origin_form(raw, hosts)
    query = raw.partition("?")[2]
    if query and _query_has_credential(query, prefixes):
        raise Refusal(
            400,
            "invalid_request",
            Step.CREDENTIAL,
            "credentials in the query string are not accepted; use the Authorization header",
        )
    return raw


def check_cookies(request: Request, prefixes: frozenset[str]) -> None:
    for cookie in request.headers.getall("Cookie", []):
        if any(f"{prefix}_" in cookie for prefix in prefixes) or contains_bare_token(cookie, prefixes):
            raise Refusal(
                400,
                "invalid_request",
                Step.CREDENTIAL,
                "tokens in cookies are not accepted; use the Authorization header",
            )


def _origin_form(raw: str, hosts: list[str]) -> str:
    """An absolute-form target is accepted only when its authority is exactly the Host."""
    rest = raw.split("://", 1)[1]
    authority, slash, path = rest.partition("/")
    if "@" in authority or len(hosts) != 1 or authority.lower() != hosts[0].lower():
        raise Refusal(400, "invalid_request", Step.PATH, "absolute-form request target does not match Host")
    return slash + path if slash else "/"


def _query_has_credential(query: str, prefixes: frozenset[str]) -> bool:
    decoded = unquote_plus(query)
    if any(f"{prefix}_" in decoded for prefix in prefixes) or contains_bare_token(decoded, prefixes):
        return True
    return any(key.lower() == "access_token" for key, _ in parse_qsl(query, keep_blank_values=True))
