"""Wiring: the shared `Runtime` (store, cache, authenticator, audit, HTTP session) and the
proxy application built by `create_app(runtime)`.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import redis.asyncio as redis
import structlog
from aiohttp import web

from gateway.audit import AuditLog
from gateway.cache import ChangeListener, VerificationCache
from gateway.decision import (
    STEP_PATH,
    STEP_ROUTE,
    Authenticator,
    Denied,
    Principal,
    authorize,
    bearer_token,
)
from gateway.embedded import EmbeddedServer
from gateway.paths import PathError, parse_target
from gateway.proxy import Forwarder, UpstreamError
from gateway.settings import Settings
from gateway.store import Store
from gateway.tokens import SecretHasher

log = structlog.get_logger("tokenward")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
REALM = 'Bearer realm="tokenward"'


@dataclass
class Runtime:
    """Everything a tokenward process shares between the proxy and the admin API."""

    settings: Settings
    store: Store
    cache: VerificationCache
    hasher: SecretHasher
    authenticator: Authenticator
    audit: AuditLog
    listener: ChangeListener
    embedded: EmbeddedServer | None = None
    store_description: str = ""
    session: aiohttp.ClientSession | None = None
    forwarder: Forwarder | None = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    async def open(cls, settings: Settings, redis_url: str | None = None) -> Runtime:
        """Connect to the store (starting the embedded one if needed) and build the services."""
        embedded = None
        url = redis_url or settings.redis.url
        if url is None:
            embedded = EmbeddedServer(settings.data_dir)
            if embedded.running_elsewhere():
                embedded = None  # another tokenward process on this data dir owns it
            else:
                embedded.start()
            url = f"unix://{(settings.data_dir / 'valkey.sock').resolve()}"
        client = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10
        )
        store = Store(client)
        persistence = await store.check_durability()
        where = "embedded" if url.startswith("unix://") else _redact(url)
        cache = VerificationCache(ttl=settings.tokens.cache_ttl)
        a2 = settings.tokens.argon2
        hasher = SecretHasher(a2.time_cost, a2.memory_cost, a2.parallelism)
        authenticator = Authenticator(store, cache, hasher, settings.tokens.accepted_prefixes)
        audit = AuditLog(store, settings.audit.stream_maxlen)
        listener = ChangeListener(store, cache)
        runtime = cls(
            settings=settings,
            store=store,
            cache=cache,
            hasher=hasher,
            authenticator=authenticator,
            audit=audit,
            listener=listener,
            embedded=embedded,
            store_description=f"{where} (persistence: {persistence})",
        )
        if persistence in ("off", "rdb-only"):
            log.warning(
                "store persistence is not append-only: a token shown to its creator could be "
                "lost in a crash; enable appendonly yes on the store",
                persistence=persistence,
            )
        await listener.start()
        await audit.start()
        return runtime

    async def start_http(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
            self.session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
            self.forwarder = Forwarder(
                self.session, self.settings.trusted_proxies, self.settings.forward_authorization
            )

    async def close(self) -> None:
        await self.listener.stop()
        await self.audit.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None
        await self.store.close()
        if self.embedded is not None:
            self.embedded.stop()


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


RUNTIME = web.AppKey("runtime", Runtime)


def request_id_for(request: web.BaseRequest) -> str:
    inbound = request.headers.get("X-Request-Id")
    if inbound and _REQUEST_ID.match(inbound):
        return inbound
    return uuid.uuid4().hex


def error_response(denied: Denied, request_id: str) -> web.Response:
    body = {
        "error": denied.error,
        "message": denied.message,
        "step": denied.step,
        "request_id": request_id,
    }
    headers = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
    if denied.status == 401:
        if denied.error == "missing_token":
            headers["WWW-Authenticate"] = REALM
        else:
            description = denied.message.replace('"', "'")
            headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token", error_description="{description}"'
    elif denied.status == 403 and denied.scope:
        headers["WWW-Authenticate"] = f'{REALM}, error="insufficient_scope", scope="{denied.scope}"'
    elif denied.status == 503:
        headers["Retry-After"] = "1"
    return web.Response(
        status=denied.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


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


class ProxyHandler:
    """The gateway's single handler: decide, audit, forward."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self.runtime
        request_id = request_id_for(request)
        principal: Principal | None = None
        route_label: str | None = None
        path = request.raw_path
        status = 500
        step = "forward"
        reason = "allowed"
        try:
            try:
                target = parse_target(request.raw_path)
            except PathError as exc:
                raise Denied(400, "invalid_request", STEP_PATH, str(exc)) from None
            path = target.path
            match = runtime.settings.router.match(request.method, target.path)
            if match is None:
                raise Denied(404, "not_found", STEP_ROUTE, "no route matches this request")
            route_label = match.route.label
            if not match.route.public:
                token = bearer_token(request.headers.getall("Authorization", ()))
                principal = await runtime.authenticator.authenticate(token, request.remote)
                authorize(match, principal)
                runtime.audit.mark_used(principal.token.id, time.time())
            upstream = runtime.settings.upstreams[match.route.upstream]
            assert runtime.forwarder is not None
            response = await runtime.forwarder.forward(
                request, upstream, match.route, target.path, target.query, principal, request_id
            )
            status = response.status
            return response
        except Denied as denied:
            status, step, reason = denied.status, denied.step, denied.message
            return error_response(denied, request_id)
        except UpstreamError as exc:
            status, step, reason = exc.status, "upstream", exc.message
            error = "bad_gateway" if exc.status == 502 else "gateway_timeout"
            return error_response(Denied(exc.status, error, "upstream", exc.message), request_id)
        except Exception:
            # Fail closed: anything unexpected in the decision path is a 500, never a pass.
            log.exception("request failed", request_id=request_id)
            status, step, reason = 500, "internal", "internal error"
            return error_response(Denied(500, "internal_error", "internal", "internal error"), request_id)
        finally:
            runtime.audit.emit(
                "request.allowed" if step == "forward" else "request.denied",
                method=request.method,
                path=path,
                route=route_label,
                status=status,
                step=step,
                reason=reason,
                client_ip=request.remote,
                request_id=request_id,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                **principal_fields(principal),
            )


def create_app(runtime: Runtime) -> web.Application:
    """The proxy application: one catch-all handler, nothing else on this listener."""
    app = web.Application(client_max_size=0)
    app[RUNTIME] = runtime

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        await runtime.start_http()
        yield
        if runtime.session is not None:
            with contextlib.suppress(Exception):
                await runtime.session.close()
            runtime.session = None

    app.cleanup_ctx.append(http_session)
    app.router.add_route("*", "/{tail:.*}", ProxyHandler(runtime).handle)
    return app
