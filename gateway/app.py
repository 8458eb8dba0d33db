"""Wiring: the proxy server over a `Runtime` (gateway/runtime.py), built by
`create_proxy_server(runtime)`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from tokenward.gateway.audit import redact
from tokenward.gateway.decision import (
    Principal,
    authorize,
    bearer_token,
)
from tokenward.gateway.edge import client_request_id, error_response, new_request_id, request_id_for
from tokenward.gateway.paths import PathError, Target, parse_target
from tokenward.gateway.proxy import (
    Delivery,
    client_address,
    identity_headers,
    is_trusted,
)
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.routes import HTTP_METHODS
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.settings import Limits, Settings, Upstream
from tokenward.gateway.tokens import contains_bare_token
from tokenward.gateway.tunnel import Tunnel, is_websocket_upgrade

log = structlog.get_logger("tokenward")


def principal_fields(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {}
    token = principal.token
    return {
        "token_id": token.id,
        "token_name": token.name,
        "org": token.org,
        "team": token.team,
        "service_account": token.service_account,
    }


VERIFY_PATH = "/_tokenward/verify"
_NO_FIELDS: dict[str, Any] = {}  # never changed: the audit fields of a response sent whole


@dataclass(slots=True)
class Exchange:
    """Everything one request's decision and audit event need, in one typed place."""

    request_id: str
    method: str
    path: str
    mode: str = "proxy"  # or "forward_auth"
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    upstream: str = ""
    client_ip: str | None = None
    principal: Principal | None = None
    allowed: bool = False
    status: int = 500
    step: str = Step.FORWARD
    reason: str = "allowed"
    client_request_id: str | None = None  # the client's X-Request-Id, when not the id
    websocket: bool = False  # the matched route lets WebSocket upgrades through
    epoch: int = 0  # the cache epoch the decision started in
    recorded: bool = False  # the decision's audit event is out
    delivery: Delivery | None = None  # a streamed response's fate, once forwarded

    def deny(self, refusal: Refusal) -> web.Response:
        if refusal.step is not Step.UPSTREAM:  # the upstream fails after an allowed decision
            self.allowed = False
        # a gateway refusal always names its step (only admin validation errors have none)
        self.status, self.step, self.reason = refusal.status, refusal.step or Step.INTERNAL, refusal.message
        response = error_response(refusal, self.request_id)
        if refusal.close:
            response.force_close()
        return response


class ProxyHandler:
    """The gateway's single handler: decide, audit, then forward (or, for forward-auth, answer)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime
        settings = runtime.settings  # one snapshot per request: a reload swaps the whole object
        ex = Exchange(request_id_for(request, settings.trusted_proxies), request.method, request.raw_path)
        if "X-Request-Id" in request.headers:
            ex.client_request_id = client_request_id(request, ex.request_id)
        ex.client_ip = client_address(request, settings.trusted_proxies)
        try:
            check_request(request, settings.limits)
            if request.raw_path.partition("?")[0].startswith(VERIFY_PATH):
                return await self._verify(request, settings, ex)
            target = await self._decide(request, settings, request.method, request.raw_path, ex)
            upstream = settings.upstreams[ex.upstream]
            assert runtime.forwarder is not None
            if ex.websocket and is_websocket_upgrade(request):
                return await self._tunnel(request, upstream, target, settings, ex)
            ex.delivery = Delivery()
            response = await runtime.forwarder.forward(
                request, upstream, target.path, target.query, ex.principal, ex.request_id, settings, ex.delivery
            )
            ex.status = response.status
            return response
        except Refusal as refusal:
            return ex.deny(refusal)
        except asyncio.CancelledError:
            # Stopped mid-request (shutdown's drain time ran out): what the client got is the
            # status line already sent, if any, and a closed connection.
            sent = ex.delivery.status if ex.delivery is not None else 0
            ex.status = sent or 503
            ex.step = Step.SHUTDOWN
            ex.reason = "cut off: the gateway shut down" if sent else "the gateway shut down before answering"
            raise
        except Exception:
            # Fail closed: anything unexpected in the decision path is a 500, never a pass.
            log.exception("request failed", request_id=ex.request_id)
            return ex.deny(Refusal(500, "internal_error", Step.INTERNAL, "internal error"))
        finally:
            if not ex.recorded:
                self._record(ex)

    def _record(self, ex: Exchange) -> None:
        """The decision's metric and audit event (once per request)."""
        ex.recorded = True
        delivery = ex.delivery
        aborted = _NO_FIELDS
        if delivery is not None and (delivery.upstream_aborted or delivery.client_aborted or delivery.shutdown_aborted):
            # The status line went out, the body did not: say so, with what was sent.
            aborted = {}
            if delivery.shutdown_aborted:
                aborted["shutdown_aborted"] = True
            elif delivery.upstream_aborted:
                ex.step, ex.reason = Step.UPSTREAM, f"response cut off by the upstream: {delivery.error}"
                aborted["upstream_aborted"] = True
            else:
                ex.reason = "response cut off: the client closed the connection"
                aborted["client_aborted"] = True
            aborted["bytes_sent"] = delivery.bytes_sent
        self.runtime.metrics.count_request(ex.route or "-", ex.step, ex.status)
        extra: dict[str, Any] = {"client_request_id": ex.client_request_id} if ex.client_request_id is not None else {}
        self.runtime.audit.emit(
            "request.allowed" if ex.allowed else "request.denied",
            method=ex.method,
            path=redact(ex.path),
            route=ex.route,
            status=ex.status,
            step=ex.step,
            reason=redact(ex.reason),
            mode=ex.mode,
            client_ip=ex.client_ip,
            request_id=ex.request_id,
            duration_ms=round((time.perf_counter() - ex.started) * 1000, 3),
            **principal_fields(ex.principal),
            **extra,
            **aborted,
        )

    async def _tunnel(
        self, request: web.BaseRequest, upstream: Upstream, target: Target, settings: Settings, ex: Exchange
    ) -> web.StreamResponse:
        """A WebSocket upgrade on a route that allows it: the upstream's 101, then bytes both
        ways until either side closes or the token stops being allowed."""
        runtime = self.runtime
        assert runtime.forwarder is not None and runtime.tunnels is not None
        if request.body_exists or (request.content_length or 0) > 0:
            # A body here would be bytes the upstream waits for after declining the upgrade.
            raise Refusal(400, "invalid_request", Step.REQUEST, "a WebSocket upgrade request has no body")
        credential = bearer_token(request.headers.getall("Authorization", [])) if ex.principal else None
        conn, response = await runtime.forwarder.upgrade(
            request, upstream, target.path, target.query, ex.principal, ex.request_id, settings
        )
        ex.status = response.status
        if conn is None:
            return response  # the upstream declined; its answer goes back as it is
        try:
            # The handshake took time: if the cache dropped anything meanwhile (a revoke),
            # decide again before the client gets its 101.
            epoch = runtime.cache.epoch
            expires_at = ex.principal.token.expires_at if ex.principal else None
            if epoch != ex.epoch:
                expires_at = await self._recheck(ex, credential)
            if request.transport is None or request.transport.is_closing():
                ex.status, ex.step, ex.reason = 499, Step.UPSTREAM, "client left during the handshake"
                conn.close()
                return response
            tunnel = Tunnel(request, conn)
        except BaseException:
            conn.close()
            raise
        ex.mode = "websocket"
        self._record(ex)  # audited when it opens, not hours later
        try:
            await response.prepare(request)
            tunnel.start()
            runtime.tunnels.add(tunnel, lambda: self._recheck(ex, credential), expires_at, epoch)
            reason = await tunnel.done
        finally:
            runtime.tunnels.remove(tunnel)
            tunnel.close("handler ended")
        runtime.audit.emit(
            "websocket.closed",
            path=redact(ex.path),
            route=ex.route,
            reason=reason,
            request_id=ex.request_id,
            client_ip=ex.client_ip,
            bytes_in=tunnel.bytes_up,
            bytes_out=tunnel.bytes_down,
            duration_ms=round((time.monotonic() - tunnel.opened) * 1000, 3),
            **principal_fields(ex.principal),
        )
        response.force_close()
        return response

    async def _recheck(self, ex: Exchange, credential: str | None) -> float | None:
        """Would this tunnel's opening request still be allowed? Raises Refusal if not."""
        settings = self.runtime.settings
        try:
            match = settings.router.match("GET", ex.path)
        except PathError as exc:  # a reload made this path ambiguous
            raise Refusal(400, "invalid_request", Step.PATH, str(exc)) from None
        if match is None or not match.route.websocket:
            raise Refusal(404, "not_found", Step.ROUTE, "the route no longer allows this WebSocket")
        if match.route.public:
            return None
        if credential is None:
            raise Refusal(401, "invalid_token", Step.CREDENTIAL, "missing bearer token")
        principal = await self.runtime.authenticator.authenticate(credential, ex.client_ip)
        authorize(match, principal)
        return principal.token.expires_at

    async def _decide(
        self, request: web.BaseRequest, settings: Settings, method: str, raw_target: str, ex: Exchange
    ) -> Target:
        """Steps 1–8 for `method raw_target`; raises Refusal. Sets ex.path/route/principal."""
        check_cookies(request, settings.tokens.accepted_prefixes)
        raw_target = check_target(
            raw_target, request.headers.getall("Host", []), settings.tokens.accepted_prefixes
        )
        try:
            target = parse_target(raw_target)
            ex.path = target.path
            match = settings.router.match(method, target.path)  # PathError: a lax reading of it
        except PathError as exc:
            raise Refusal(400, "invalid_request", Step.PATH, str(exc)) from None
        if match is None:
            raise Refusal(404, "not_found", Step.ROUTE, "no route matches this request")
        ex.route = match.route.label
        ex.websocket = match.route.websocket
        ex.upstream = match.route.upstream
        if not match.route.public:
            ex.epoch = self.runtime.cache.epoch
            token = bearer_token(request.headers.getall("Authorization", []))
            ex.principal = await self.runtime.authenticator.authenticate(token, ex.client_ip)
            authorize(match, ex.principal)
            self.runtime.audit.mark_used(ex.principal.token.id, time.time())
        ex.allowed = True
        return target

    async def _verify(self, request: web.BaseRequest, settings: Settings, ex: Exchange) -> web.StreamResponse:
        """Forward-auth (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz HTTP)."""
        ex.mode = "forward_auth"
        if not is_trusted(request.remote, settings.trusted_proxies):
            raise Refusal(403, "forbidden", Step.REQUEST, "forward-auth answers only trusted_proxies")
        method, raw_target = original_request(request)
        ex.method, ex.path = method, raw_target
        await self._decide(request, settings, method, raw_target, ex)
        headers = identity_headers(ex.principal) if ex.principal is not None else {}
        ex.status, ex.step = 200, Step.VERIFIED
        return web.Response(
            status=200, headers={**headers, "X-Request-Id": ex.request_id, "Cache-Control": "no-store"}
        )


def original_request(request: web.BaseRequest) -> tuple[str, str]:
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


class HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for every request head (both listeners):
    while the connection waits for a request (the first one, or the next one after a
    response), it is closed unless a complete head arrives within `limits.header_timeout` of
    the connection opening, of the previous response completing, or of the first byte of the
    head (whichever is latest). A slow head is never held for the keep-alive time, and an
    idle keep-alive connection lasts at most header_timeout. Its server has a `runtime`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        runtime: Runtime = self._manager.runtime  # type: ignore[union-attr]
        self._tw_timeout = runtime.settings.limits.header_timeout
        self._tw_deadline = self._loop.time() + self._tw_timeout
        self._tw_head_begun = False  # a byte of the awaited head has arrived
        self._tw_timer: asyncio.TimerHandle | None = self._loop.call_at(self._tw_deadline, self._tw_head_deadline)

    def data_received(self, data: bytes) -> None:
        if not self._tw_head_begun and not self._request_in_progress:
            # the first byte of the next head: it has header_timeout from now
            self._tw_head_begun = True
            self._tw_deadline = self._loop.time() + self._tw_timeout
        super().data_received(data)

    async def _handle_request(self, *args: Any, **kwargs: Any) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            # the response is done: the next head has header_timeout from now
            self._tw_head_begun = False
            self._tw_deadline = self._loop.time() + self._tw_timeout

    def _tw_head_deadline(self) -> None:
        self._tw_timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        if now < self._tw_deadline:  # moved on meanwhile
            self._tw_timer = self._loop.call_at(self._tw_deadline, self._tw_head_deadline)
            return
        if self._request_in_progress:  # a request is being handled: look again later
            self._tw_timer = self._loop.call_at(now + self._tw_timeout, self._tw_head_deadline)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.transport.close()  # no complete request head in time
        else:
            # between requests but not waiting yet (reading a refused request's leftover body)
            self._tw_timer = self._loop.call_at(now + self._tw_timeout, self._tw_head_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        timer = getattr(self, "_tw_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)


class GatewayRequestHandler(HeadDeadlineHandler):
    """The gateway listener's connection handler: head deadlines, and JSON errors (audited)
    for malformed requests."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        denied = classify_protocol_error(status, exc)
        server = self._manager
        request_id = new_request_id()
        if isinstance(server, ProxyServer):
            server.runtime.audit.emit(
                "request.denied",
                method=request.method,
                path=None,
                route=None,
                status=denied.status,
                step=denied.step,
                reason=denied.message,
                client_ip=request.remote,
                request_id=request_id,
                duration_ms=0.0,
            )
        if denied.status >= 500:
            log.error("request handler failed", error=type(exc).__name__ if exc else None)
        response = error_response(denied, request_id)
        response.force_close()
        return response


def classify_protocol_error(status: int, exc: BaseException | None) -> Refusal:
    """An HTTP parse error (or handler crash) as a JSON error with the right status."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        line_bytes = line.encode() if isinstance(line, str) else bytes(line)
        if line_bytes.startswith((b"/", b"http", b"*")):
            return Refusal(414, "uri_too_long", Step.LIMITS, "request target too long")
        return Refusal(431, "headers_too_large", Step.LIMITS, "request header too large")
    if isinstance(exc, HttpProcessingError):
        text = exc.message if isinstance(exc.message, str) else "malformed request"
        if "Too many headers" in text:
            return Refusal(431, "headers_too_large", Step.LIMITS, "too many request headers")
        first = text.strip().splitlines()[0] if text.strip() else "malformed request"
        return Refusal(400, "invalid_request", Step.FRAMING, f"malformed request: {first.rstrip(':')}")
    if status == 504:
        return Refusal(504, "gateway_timeout", Step.INTERNAL, "request timed out")
    return Refusal(500, "internal_error", Step.INTERNAL, "internal error")


class ProxyServer(web.Server):
    """The gateway listener: one low-level handler, no router, our connection handler."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        limits = runtime.settings.limits
        # aiohttp's own hard limits sit above ours, so requests between the two get our
        # precise 414/431 from check_request and only grosser ones stop in the parser.
        kwargs.setdefault("max_line_size", limits.max_url_length + 1024)
        kwargs.setdefault("max_field_size", limits.max_header_bytes)
        kwargs.setdefault("max_headers", limits.max_header_count + 16)
        kwargs.setdefault("keepalive_timeout", 75.0)
        # after an early error response, read a stalled client's leftovers only briefly
        kwargs.setdefault("lingering_time", 2.0)
        # bodies go upstream as sent: aiohttp would inflate a gzip body under the sender's
        # Content-Length and Content-Encoding (a desync the upstream reads as a second request)
        kwargs.setdefault("auto_decompress", False)
        super().__init__(ProxyHandler(runtime).handle, **kwargs)
        self.runtime = runtime

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


METHOD_OVERRIDE = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_X_DASH = frozenset({b"x-", b"X-", b"x_", b"X_", b"x.", b"X."})


def check_request(request: web.BaseRequest, limits: Limits) -> None:
    """Checks before any routing: limits, no method override, no token in a cookie."""
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


def check_target(raw: str, hosts: list[str], prefixes: frozenset[str]) -> str:
    """One meaning per target: absolute-form only for our own Host, no credential in the query.
    Returns the origin-form target to canonicalize."""
    if raw.startswith(("http://", "https://")):
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


def check_cookies(request: web.BaseRequest, prefixes: frozenset[str]) -> None:
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


def create_proxy_server(runtime: Runtime) -> ProxyServer:
    return ProxyServer(runtime)
