"""The gateway's one way through: every request (proxied, forward-auth, WebSocket) visits
each concern once, in order, each step handing the next the `Exchange` it built:

    edge (exchange.open_exchange, exchange.check_request)
    -> target (exchange.ask_forward_auth for forward-auth, exchange.read_target)
    -> decision (Pipeline.decide: route, credential, authorization)
    -> forward (proxy.Forwarder.forward; or the forward-auth answer; or Pipeline.tunnel)
    -> audit (Pipeline.record)

The per-settings objects (`exchange.SettingsView`: the trusted-proxy set and the header
policy, each with its own bounded memo) belong to the pipeline, so two servers in one
process share none of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import structlog

from tokenward.gateway.audit import AuditLog
from tokenward.gateway.cache import VerificationCache
from tokenward.gateway.decision import Authenticator, Principal, TokenRefused, authorize, bearer_token
from tokenward.gateway.exchange import (
    REMAINING_HEADER,
    VERIFY_PATH,
    Exchange,
    SettingsView,
    ask_forward_auth,
    check_request,
    open_exchange,
    read_target,
)
from tokenward.gateway.inbound import Request
from tokenward.gateway.limiter import Limiter
from tokenward.gateway.mcp import audit_fields as mcp_audit_fields
from tokenward.gateway.mcp import authorize_mcp, usage_tools
from tokenward.gateway.paths import PathError
from tokenward.gateway.proxy import Forwarder
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.reply import Block, Reply, StreamReply, error_reply
from tokenward.gateway.settings import Settings, Upstream
from tokenward.gateway.tracing import Tracing
from tokenward.gateway.tunnel import Tunnel, TunnelWatch, is_websocket_upgrade

log = structlog.get_logger("tokenward")

_NO_FIELDS: dict[str, Any] = {}  # never changed: the audit fields of a response sent whole
USER_AGENT_CHARS = 256  # the audit event's user_agent: redacted first, then cut to this


def principal_fields(principal: Principal | None) -> dict[str, Any]:
    return token_fields(principal.token, principal.service_account) if principal is not None else {}


def token_fields(token: TokenRecord, account_name: str | None = None) -> dict[str, Any]:
    """Who an audit event is about: the token, its org, team and service account (its name
    now when known, else the name it had at issuance; its id never changes)."""
    fields = {
        "token_id": token.id,
        "token_name": token.name,
        "org": token.org,
        "team": token.team,
        "service_account": account_name if account_name is not None else token.service_account,
        "service_account_id": token.service_account_id,
    }
    if token.parent_id is not None:  # a child token: its parent and its agent run
        fields.update(parent_id=token.parent_id, run_id=token.run_id)
    return fields


class RequestCounter(Protocol):
    in_flight: int

    def count_request(self, method: str, route: str, upstream: str, step: str, status: int, seconds: float) -> None: ...


class Services(Protocol):
    """What the pipeline uses of the runtime (`tokenward.gateway.app.Runtime`), read-only;
    `settings` is read once per request (a reload swaps it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def cache(self) -> VerificationCache: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def metrics(self) -> RequestCounter: ...
    @property
    def forwarder(self) -> Forwarder | None: ...
    @property
    def tunnels(self) -> TunnelWatch | None: ...
    @property
    def tracing(self) -> Tracing | None: ...  # None: tracing is off
    @property
    def limiter(self) -> Limiter: ...


class Pipeline:
    """The gateway listener's handler: edge -> target -> decision -> forward -> audit."""

    def __init__(self, runtime: Services) -> None:
        self.runtime = runtime
        self.view = SettingsView(runtime.settings)

    def view_of(self, settings: Settings) -> SettingsView:
        view = self.view
        if view.settings is not settings:
            view = self.view = SettingsView(settings)
        return view

    async def handle(self, request: Request) -> Reply | StreamReply:
        runtime = self.runtime
        settings = runtime.settings  # one snapshot per request: a reload swaps the whole object
        view = self.view if self.view.settings is settings else self.view_of(settings)
        ex = open_exchange(request, view)  # 1. edge
        metrics = runtime.metrics
        metrics.in_flight += 1
        tracing = runtime.tracing
        try:
            if tracing is not None:
                tracing.start(ex)  # the request's span (sets ex.trace)
            check_request(request, settings.limits)
            if ex.path.startswith(VERIFY_PATH):  # forward-auth: answer instead of forwarding
                ask_forward_auth(ex)  # 2. target (the one asked about)
                read_target(ex)
                await self.decide(ex)  # 3. decision
                return self.verified(ex)  # 4. the answer
            read_target(ex)  # 2. target
            await self.decide(ex)  # 3. decision
            upstream = settings.upstreams[ex.upstream]
            if ex.trace is not None:
                ex.trace.call_upstream(ex, upstream)
            if ex.websocket and is_websocket_upgrade(request):
                return await self.tunnel(ex, upstream)  # 4. forward, as a tunnel
            forwarder = runtime.forwarder
            assert forwarder is not None
            response = await forwarder.forward(ex, upstream)  # 4. forward
            ex.status = response.status
            if type(response) is Reply:  # sent whole, after this returns
                ex.response_bytes = len(response.body)
            return response
        except Refusal as refusal:
            return self.deny(ex, refusal)
        except asyncio.CancelledError:
            # Stopped mid-request (shutdown's drain time ran out): what the client got is the
            # status line already sent, if any, and a closed connection.
            sent = ex.sent_status
            ex.status = sent or 503
            ex.step = Step.SHUTDOWN
            ex.reason = "cut off: the gateway shut down" if sent else "the gateway shut down before answering"
            raise
        except Exception:
            # Fail closed: anything unexpected in the decision path is a 500, never a pass.
            log.exception("request failed", request_id=ex.request_id)
            return self.deny(ex, Refusal(500, "internal_error", Step.INTERNAL, "internal error"))
        finally:
            metrics.in_flight -= 1
            if not ex.recorded:
                self.record(ex)  # 5. audit

    async def decide(self, ex: Exchange) -> None:
        """Steps 1–8 for `ex.method ex.path` (canonical); raises Refusal. Sets ex.route,
        ex.upstream, ex.websocket, ex.principal, ex.allowed."""
        runtime = self.runtime
        try:
            match = ex.view.settings.router.match(ex.method, ex.path)  # PathError: a lax reading of it
        except PathError as exc:
            raise Refusal(400, "invalid_request", Step.PATH, str(exc)) from None
        if match is None:
            raise Refusal(404, "not_found", Step.ROUTE, "no route matches this request")
        route = match.route
        ex.route = route.label
        ex.websocket = route.websocket
        ex.upstream = route.upstream
        ex.required = route.scopes
        if not route.public:
            ex.epoch = runtime.cache.epoch
            token = bearer_token(ex.request.headers.getall("Authorization", []))
            ex.principal = principal = await runtime.authenticator.authenticate(token, ex.client_ip)
            authorize(match, principal)
            if route.mcp is not None:  # per-tool MCP authorization: reads the JSON-RPC body
                await authorize_mcp(ex, route.mcp)
            limiter = runtime.limiter
            holders = principal.holders  # remembered with a cached principal's records (principal.py)
            if holders is None or route.mcp is not None or limiter.cache is not runtime.cache:
                holders = limiter.holders_of(principal.token) or await limiter.read_holders(principal.token)
            if limiter.applies(route, principal.token, holders):  # the rate_limit step
                cost = max(1, len(ex.mcp.tools)) if ex.mcp is not None else 1  # an MCP batch of n calls: n
                ex.remaining = (await limiter.check(route, principal.token, holders, cost)).credits_left
            runtime.audit.mark_used(principal.token.id, time.time())
        ex.allowed = True
        ex.decided = time.perf_counter()

    def verified(self, ex: Exchange) -> Reply:
        """Forward-auth's answer: 200 with the identity headers for the fronting proxy."""
        forwarder = self.runtime.forwarder
        assert forwarder is not None
        lines = [forwarder.identity.lines(ex.principal)] if ex.principal is not None else []
        if ex.remaining is not None:
            lines.append(b"%b: %d\r\n" % (REMAINING_HEADER.encode("ascii"), ex.remaining))
        lines.append(b"X-Request-Id: %b\r\nCache-Control: no-store\r\n" % ex.request_id.encode("ascii"))
        ex.status, ex.step = 200, Step.VERIFIED
        return Reply(200, Block(b"".join(lines), False, False))

    @staticmethod
    def deny(ex: Exchange, refusal: Refusal) -> Reply:
        if refusal.step is not Step.UPSTREAM:  # the upstream fails after an allowed decision
            ex.allowed = False
        if type(refusal) is TokenRefused:  # steps 3-4: who it was about, for the audit event
            ex.refused_token, ex.claimed_id = refusal.token, refusal.claimed_id
        # a gateway refusal always names its step (only admin validation errors have none)
        ex.status, ex.step, ex.reason = refusal.status, refusal.step or Step.INTERNAL, refusal.message
        response = error_reply(refusal, ex.request_id)
        ex.response_bytes = len(response.body)
        return response

    def record(self, ex: Exchange) -> None:
        """The audit step: the decision's metric and audit event (once per request)."""
        ex.recorded = True
        aborted = _NO_FIELDS
        if ex.upstream_aborted or ex.client_aborted or ex.shutdown_aborted:
            # The status line went out, the body did not: say so, with what was sent.
            aborted = {}
            if ex.shutdown_aborted:
                aborted["shutdown_aborted"] = True
            elif ex.upstream_aborted:
                ex.step, ex.reason = Step.UPSTREAM, f"response cut off by the upstream: {ex.abort_error}"
                aborted["upstream_aborted"] = True
            else:
                ex.reason = "response cut off: the client closed the connection"
                aborted["client_aborted"] = True
            aborted["bytes_sent"] = ex.bytes_sent
        token = ex.principal.token if ex.principal is not None else ex.refused_token
        if token is not None:
            caller = token_fields(token, ex.principal.service_account if ex.principal is not None else None)
            if ex.route is not None:  # usage per token: counted here, written in batches
                self.runtime.audit.usage.count(token, ex.route, ex.required, ex.allowed, ex.step, time.time())
                if ex.mcp is not None and ex.allowed and ex.mcp.tools:  # and the MCP tools it called
                    self.runtime.audit.usage.count_tools(token.id, usage_tools(ex.mcp), time.time())
        else:  # an unproven key id is never a token_id: anyone can name any key id
            caller = {"claimed_token_id": ex.claimed_id} if ex.claimed_id is not None else _NO_FIELDS
        extra: dict[str, Any] = {"client_request_id": ex.client_request_id} if ex.client_request_id is not None else {}
        if ex.mcp is not None:
            extra.update(mcp_audit_fields(ex.mcp, self.runtime.audit.redact))
        if ex.trace is not None:
            ex.trace.finish(ex)
            extra["trace_id"] = ex.trace.trace_id
        runtime = self.runtime
        now = time.perf_counter()
        # the gateway's own time: until the decision let it through, else until now
        runtime.metrics.count_request(
            ex.method, ex.route or "-", ex.upstream, ex.step, ex.status, (ex.decided or now) - ex.started
        )
        agent = ex.request.headers.get("User-Agent")
        waited = ex.upstream_seconds
        audit = runtime.audit
        redact = audit.redact
        # emit(action, method=..., ...): the same fields in the same order, without the kwargs
        fields: dict[str, Any] = {
            "method": ex.method,
            "path": redact(ex.path),
            "route": ex.route,
            "status": ex.status,
            "step": ex.step,
            "reason": redact(ex.reason),
            "mode": ex.mode,
            "client_ip": ex.client_ip,
            "request_id": ex.request_id,
            "duration_ms": round((now - ex.started) * 1000, 3),
            # the access fields: who called with what, how much went each way, the upstream's share
            "user_agent": redact(agent)[:USER_AGENT_CHARS] if agent is not None else None,
            "request_bytes": ex.request.content.total_bytes,
            "response_bytes": ex.response_bytes or ex.bytes_sent,
            "upstream": ex.upstream or None,
            "upstream_ms": round(waited * 1000, 3) if waited is not None else None,
        }
        if caller:
            fields.update(caller)
        if extra:
            fields.update(extra)
        if aborted:
            fields.update(aborted)
        audit.emit_request("request.allowed" if ex.allowed else "request.denied", fields)

    async def tunnel(self, ex: Exchange, upstream: Upstream) -> Reply | StreamReply:
        """A WebSocket upgrade on a route that allows it: the upstream's 101, then bytes both
        ways until either side closes or the token stops being allowed."""
        runtime, request = self.runtime, ex.request
        assert runtime.forwarder is not None and runtime.tunnels is not None
        if request.body_exists or (request.content_length or 0) > 0:
            # A body here would be bytes the upstream waits for after declining the upgrade.
            raise Refusal(400, "invalid_request", Step.REQUEST, "a WebSocket upgrade request has no body")
        credential = bearer_token(request.headers.getall("Authorization", [])) if ex.principal else None
        conn, response = await runtime.forwarder.upgrade(ex, upstream)
        ex.status = response.status
        if conn is None:
            return response  # the upstream declined; its answer goes back as it is
        assert isinstance(response, StreamReply)  # the upstream's 101, not yet sent
        try:
            # The handshake took time: if the cache dropped anything meanwhile (a revoke),
            # decide again before the client gets its 101.
            epoch = runtime.cache.epoch
            expires_at = ex.principal.token.expires_at if ex.principal else None
            if epoch != ex.epoch:
                expires_at = await self.recheck(ex, credential)
            if request.transport is None or request.transport.is_closing():
                ex.status, ex.step, ex.reason = 499, Step.UPSTREAM, "client left during the handshake"
                conn.close()
                return response
            tunnel = Tunnel(request, conn)
        except BaseException:
            conn.close()
            raise
        ex.mode = "websocket"
        self.record(ex)  # audited when it opens, not hours later
        try:
            await response.prepare(request)
            tunnel.start()
            runtime.tunnels.add(tunnel, lambda: self.recheck(ex, credential), expires_at, epoch)
            reason = await tunnel.done
        finally:
            runtime.tunnels.remove(tunnel)
            tunnel.close("handler ended")
        runtime.audit.emit(
            "websocket.closed",
            path=runtime.audit.redact(ex.path),
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

    async def recheck(self, ex: Exchange, credential: str | None) -> float | None:
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
