"""Forwarding: headers in and out, streamed bodies, upstream errors.

The upstream sees exactly the canonical path that was authorized. Hop-by-hop headers and
any header named in `Connection` are removed first; then every inbound header of the
identity family (`X-Tokenward-*`, whatever its case or `_`/`.` spelling) is removed and
tokenward's own are set, so nothing a client sends can remove or forge them. Other proxies'
identity headers and restatements of the path or method (`X-Forwarded-User`,
`X-Auth-Request-*`, `X-Original-URL`, ...) are removed from every client; their client-address
headers (`X-Real-IP`, `CF-Connecting-IP`, ...) are kept only from `trusted_proxies`
(`HeaderPolicy`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Histogram

from tokenward.gateway.decision import Principal
from tokenward.gateway.forms import BodyScanner, OverrideFound, body_scanner
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import format_scopes
from tokenward.gateway.settings import IPNetwork, Settings, Upstream
from tokenward.gateway.upstream import (
    IDEMPOTENT,
    Connection,
    Pool,
    UpstreamFailed,
    decode_header,
    request_head,
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
IDENTITY_PREFIX = "x-tokenward-"
# What a trusted proxy may state about the connection it received (kept only from
# `trusted_proxies`; X-Forwarded-For/-Proto/-Host are always rebuilt by tokenward).
TRUSTED_FORWARDING = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-forwarded-server",
        "forwarded",
        "x-real-ip",
    }
)
# Other proxies' and CDNs' statements about the client (address, location, edge), kept only
# from `trusted_proxies`.
PROXY_EXACT = frozenset(
    {
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-proxyuser-ip",
        "fastly-client-ip",
        "x-azure-clientip",
        "x-azure-socketip",
        "x-nf-client-connection-ip",
        "x-vercel-forwarded-for",
        "x-appengine-user-ip",
        "x-host",
        "x-forwarded",
        "forwarded-for",
        "fly-client-ip",
    }
)
PROXY_PREFIXES = ("cf-", "akamai-", "x-akamai-", "fastly-", "x-envoy-", "x-vercel-", "x-appengine-")
# Identity asserted by another authenticating proxy, and restatements of the request's path
# or method: never forwarded, from anyone. The upstream's only identity is tokenward's own
# X-Tokenward-*, and the only path and method are the ones that were authorized. Every
# `X-Forwarded-*` name not in TRUSTED_FORWARDING (User, Email, Groups, Access-Token,
# Client-Cert, Uri, Path, Method, ...) is in this class.
NEVER_EXACT = frozenset(
    {
        "x-rewrite-url",
        "x-override-url",
        "x-http-destinationurl",
        "x-proxy-url",
        "x-client-cert",
        "x-client-certificate",
        "x-client-verify",
        "x-client-dn",
        "x-client-s-dn",
        "x-client-i-dn",
        "x-arr-clientcert",
        "x-credential-identifier",
        "x-anonymous-consumer",
        "x-userinfo",
        "x-id-token",
        "x-access-token",
        "x-jwt-assertion",
        "x-proxy-user",
        "x-auth-user",
        "x-user",
        "x-email",
        "x-user-email",
        "x-user-id",
        "x-username",
        "x-preferred-username",
        "x-groups",
        "x-ms-client-principal",
        # Keycloak Gatekeeper / Louketo (X-Auth-Token is left alone: many APIs' own key header)
        "x-auth-username",
        "x-auth-userid",
        "x-auth-email",
        "x-auth-subject",
        "x-auth-roles",
        "x-auth-groups",
        "x-auth-audience",
        "x-auth-expiresin",
        "x-endpoint-api-userinfo",  # Google Cloud Endpoints (ESP)
    }
)
NEVER_PREFIXES = (
    "x-forwarded-",
    "x-original-",
    "x-auth-request-",
    "x-pomerium-",
    "cf-access-",
    "remote-",
    "x-remote-user",
    "x-remote-group",
    "x-remote-email",
    "x-remote-name",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-ms-client-principal-",
    "x-ms-token-",
    "x-authentik-",
    "x-vouch-",
    "x-webauth-",
    "x-ssl-client",
    "ssl-client-",
    "x-consumer-",
    "x-authenticated-",
    "x-apigateway-",
    "x-jwt-",
    "x-remote-extra-",  # Kubernetes front proxy: the user's extra attributes
    "tailscale-",  # tailscale serve: Tailscale-User-Login, -Name, -Profile-Pic, ...
    "oidc-claim-",  # Apache mod_auth_openidc: OIDC_CLAIM_*, OIDC_access_token, ...
    "oidc-access-token",
    "oidc-id-token",
    "x-ssl-",  # nginx / HAProxy mTLS: X-SSL-Cert, X-SSL-Verify, X-SSL-Subject, X-SSL-Client-*
    "x-amzn-mtls-",  # AWS ALB mTLS
    "teleport-",  # Teleport application access: Teleport-Jwt-Assertion
)
_SAFE_HEADER_VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Set by tokenward itself, whatever the client sent: framing (Content-Length is re-derived
# from what aiohttp parsed, so no inbound spelling or Connection token can change how the
# upstream frames the body), Host, the request id and the trusted forwarding headers.
_REPLACED = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)


class BodyGuard:
    """Streams the client's body upstream, enforcing the size limit and a per-read timeout;
    a form body's scanner sees each chunk before it is forwarded (see gateway/forms.py)."""

    def __init__(
        self, stream: aiohttp.StreamReader, max_bytes: int, timeout: float, scanner: BodyScanner | None = None
    ) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.scanner = scanner
        self.received = 0
        self.failure: Refusal | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(self.stream.readany(), self.timeout)
            except TimeoutError:
                self.failure = client_body_error(408, "request_timeout", "client sent the request body too slowly")
                raise
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > self.max_bytes:
                self.failure = client_body_error(413, "payload_too_large", "request body too large")
                raise ValueError("request body too large")
            if self.scanner is not None:
                try:
                    self.scanner.feed(chunk)
                except OverrideFound as exc:
                    self.failure = client_body_error(
                        400, "invalid_request", f"method override parameters are not accepted: {exc}", Step.REQUEST
                    )
                    raise
            yield chunk


@dataclass(slots=True)
class Delivery:
    """How much of a streamed response reached the client, and which side cut it short:
    after the status line is sent, the audit event must still say what happened."""

    bytes_sent: int = 0
    upstream_aborted: bool = False  # the upstream failed mid-body; the client's connection was cut
    client_aborted: bool = False  # the client went away mid-body
    shutdown_aborted: bool = False  # the gateway stopped (drain time ran out) mid-body
    status: int = 0  # the status line sent to the client, once sent
    error: str = ""


def upstream_error(status: int, message: str) -> Refusal:
    """The upstream failed (502) or timed out (504) after the decision allowed the request."""
    return Refusal(status, "bad_gateway" if status == 502 else "gateway_timeout", Step.UPSTREAM, message)


def client_body_error(status: int, error: str, message: str, step: Step = Step.LIMITS) -> Refusal:
    """The client's body broke a limit (413), stalled (408) or carried a method override
    (400) while being forwarded: the connection closes after the answer."""
    return Refusal(status, error, step, message, close=True)


def normalize_name(name: str) -> str:
    """Header name as a proxy downstream might read it: case-folded, `_`/`.` as `-`."""
    return name.lower().replace("_", "-").replace(".", "-")


def header_value(text: str) -> str:
    """A value safe in a header line: printable ASCII, anything else percent-encoded."""
    return quote(text, safe=_SAFE_HEADER_VALUE)


def connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    names = set()
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip()
            if token:
                names.add(normalize_name(token))
    return names


_trust_memo: tuple[object, dict[str, bool]] = ((), {})


def is_trusted(address: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    """Is `address` inside `trusted`? Remembered per address for the current trusted set
    (the memo holds that set, so `is` can't be fooled by a recycled object)."""
    global _trust_memo
    if not address or not trusted:
        return False
    owner, memo = _trust_memo
    if owner is not trusted:
        memo = {}
        _trust_memo = (trusted, memo)
    found = memo.get(address)
    if found is None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            found = False
        else:
            found = any(ip in net for net in trusted)
        if len(memo) < 10_000:
            memo[address] = found
    return found


_identity_memo: dict[int, tuple[object, object, dict[str, str]]] = {}


def identity_headers(principal: Principal) -> dict[str, str]:
    """The caller's identity for the upstream; a header with nothing to say is left out.
    Remembered per (token record, team permissions) object pair: both are immutable and
    replaced, not changed, when the store says so."""
    token, permissions = principal.token, principal.team_permissions
    memo = _identity_memo.get(id(token))
    if memo is not None and memo[0] is token and memo[1] is permissions:
        return memo[2]
    headers = {
        "X-Tokenward-Token-Id": token.id,
        "X-Tokenward-Token-Name": header_value(token.name),
        "X-Tokenward-Org": token.org,
        "X-Tokenward-Team": token.team or "",
        "X-Tokenward-Service-Account": token.service_account or "",
        "X-Tokenward-Scopes": " ".join(format_scopes(principal.effective_scopes)),
    }
    headers = {name: value for name, value in headers.items() if value}
    if len(_identity_memo) > 10_000:
        _identity_memo.clear()
    _identity_memo[id(token)] = (token, permissions, headers)
    return headers


def client_address(request: web.BaseRequest, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The client's address: the peer, or behind trusted proxies the right-most
    X-Forwarded-For entry that is not itself a trusted proxy."""
    peer = request.remote
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: trust only what we saw ourselves
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


_KEEP, _DROP, _TRUSTED = 0, 1, 2


class HeaderPolicy:
    """What happens to each inbound request header on its way upstream, by name (case-folded,
    `_` and `.` read as `-`): kept, dropped, or kept only from a trusted proxy. Built once per
    settings object; each name's answer is remembered (bounded)."""

    def __init__(self, strip: tuple[str, ...] = (), forward_authorization: bool = False) -> None:
        self.strip_exact = frozenset(normalize_name(name) for name in strip if not name.endswith("*"))
        self.strip_prefixes = tuple(normalize_name(name[:-1]) for name in strip if name.endswith("*"))
        self.forward_authorization = forward_authorization
        self._memo: dict[str, int] = {}

    def kind(self, name: str) -> int:
        found = self._memo.get(name)
        if found is None:
            found = self._classify(normalize_name(name))
            if found == _TRUSTED and ("_" in name or "." in name):
                found = _DROP  # only the canonical spelling of a forwarding header, from anyone
            if len(self._memo) < 4096:
                self._memo[name] = found
        return found

    def _classify(self, norm: str) -> int:
        if norm in HOP_BY_HOP or norm in _REPLACED or norm.startswith(IDENTITY_PREFIX):
            return _DROP
        if norm == "authorization":
            return _KEEP if self.forward_authorization else _DROP
        if norm in TRUSTED_FORWARDING:
            return _TRUSTED
        if norm in self.strip_exact or (self.strip_prefixes and norm.startswith(self.strip_prefixes)):
            return _DROP
        if norm in NEVER_EXACT or norm.startswith(NEVER_PREFIXES):
            return _DROP
        if norm in PROXY_EXACT or norm.startswith(PROXY_PREFIXES):
            return _TRUSTED
        return _KEEP

    def forwards(self, name: str, trusted: bool = False) -> bool:
        """Would a header of this name reach the upstream (from a trusted proxy or not)?"""
        kind = self.kind(name)
        return kind == _KEEP or (kind == _TRUSTED and trusted)


def upstream_headers(
    request: web.BaseRequest,
    principal: Principal | None,
    request_id: str,
    trusted_proxies: tuple[IPNetwork, ...],
    policy: HeaderPolicy,
) -> list[tuple[str, str]]:
    inbound = request.headers
    dropped = connection_tokens(inbound) if "Connection" in inbound else ()
    trusted = is_trusted(request.remote, trusted_proxies)
    kind_of = policy.kind
    out: list[tuple[str, str]] = []
    for name, value in inbound.items():
        kind = kind_of(name)
        if kind == _DROP or (kind == _TRUSTED and not trusted):
            continue
        if dropped and normalize_name(name) in dropped:
            continue
        out.append((name, value))
    client = request.remote or ""
    previous = ", ".join(inbound.getall("X-Forwarded-For")) if trusted and "X-Forwarded-For" in inbound else None
    out.append(("X-Forwarded-For", f"{previous}, {client}" if previous else client))
    proto = inbound.get("X-Forwarded-Proto") if trusted else None
    out.append(("X-Forwarded-Proto", proto or request.scheme))
    host = inbound.get("X-Forwarded-Host") if trusted else None
    out.append(("X-Forwarded-Host", host or request.host))
    out.append(("X-Request-Id", request_id))
    if principal is not None:
        out.extend(identity_headers(principal).items())
    return out


def response_headers(raw: list[tuple[bytes, bytes]], request_id: str) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones (and Content-Length, which
    aiohttp sets from what is actually sent)."""
    dropped: set[str] = set()
    for raw_name, value in raw:
        if raw_name.lower() == b"connection":
            for token in decode_header(value).split(","):
                if token.strip():
                    dropped.add(normalize_name(token.strip()))
    out: CIMultiDict[str] = CIMultiDict()
    for raw_name, value in raw:
        name = decode_header(raw_name)
        norm = normalize_name(name)
        if norm in _RESPONSE_DROP or norm in dropped or norm == "x-request-id":
            continue
        out.add(name, decode_header(value))
    out["X-Request-Id"] = request_id
    return out


class Forwarder:
    """Pools of keep-alive connections per upstream; small responses are answered in one
    write, larger or slower ones streamed."""

    def __init__(self, latency: Histogram | None = None) -> None:
        self.latency = latency
        self.pools: dict[tuple[str, str], Pool] = {}
        self._policy: tuple[Settings | None, HeaderPolicy] = (None, HeaderPolicy())

    def policy(self, settings: Settings) -> HeaderPolicy:
        """The header policy of `settings` (rebuilt when a reload swaps the settings)."""
        owner, policy = self._policy
        if owner is not settings:
            policy = HeaderPolicy(settings.strip_headers, settings.forward_authorization)
            self._policy = (settings, policy)
        return policy

    def pool(self, upstream: Upstream) -> Pool:
        key = (upstream.name, upstream.url)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(upstream, asyncio.get_running_loop())
        return pool

    def _headers(
        self, request: web.BaseRequest, pool: Pool, principal: Principal | None, request_id: str, settings: Settings
    ) -> list[tuple[str, str]]:
        headers = upstream_headers(request, principal, request_id, settings.trusted_proxies, self.policy(settings))
        headers.insert(0, ("Host", pool.host_header))
        return headers

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path: str,
        query: str,
        principal: Principal | None,
        request_id: str,
        settings: Settings,
        delivery: Delivery | None = None,
    ) -> web.StreamResponse:
        pool = self.pool(upstream)
        headers = self._headers(request, pool, principal, request_id, settings)
        method = request.method
        has_body = request.body_exists
        # Framing from what aiohttp parsed, never from inbound header spellings.
        if request.content_length is not None:
            headers.append(("Content-Length", str(request.content_length)))
        elif has_body:
            headers.append(("Transfer-Encoding", "chunked"))
        if has_body and request.headers.get("Expect", "").lower() == "100-continue" and request.transport:
            # The decision is made: let the client send its body (the upstream gets it at once).
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = request_head(method, pool.target(path, query), headers)
        sent = time.perf_counter()
        replayable = method in IDEMPOTENT and not has_body
        conn = await self._exchange(request, pool, upstream, head, has_body, replayable, settings)
        if self.latency is not None:
            self.latency.labels(upstream.name).observe(time.perf_counter() - sent)
        try:
            if conn.upgraded or conn.status == 101:
                conn.reusable = False
                raise upstream_error(502, f"upstream {upstream.name} switched protocols unasked")
            return await self._respond(request, conn, request_id, delivery)
        finally:
            conn.finish()

    async def upgrade(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        path: str,
        query: str,
        principal: Principal | None,
        request_id: str,
        settings: Settings,
    ) -> tuple[Connection | None, web.StreamResponse]:
        """Ask the upstream to switch protocols. With its 101: the connection (to tunnel)
        and the 101 for the client, not yet sent. Otherwise its answer, as usual."""
        pool = self.pool(upstream)
        headers = self._headers(request, pool, principal, request_id, settings)
        headers += [("Connection", "Upgrade"), ("Upgrade", request.headers["Upgrade"])]
        head = request_head("GET", pool.target(path, query), headers)
        conn = await self._exchange(request, pool, upstream, head, False, True, settings)
        if conn.status != 101 or not conn.upgraded:
            conn.reusable = False  # an upgrade attempt's connection never goes back to the pool
            try:
                if conn.status == 101:
                    raise upstream_error(502, f"upstream {upstream.name} switched protocols without Upgrade")
                return None, await self._respond(request, conn, request_id)
            finally:
                conn.finish()
        out = response_headers(conn.headers, request_id)
        upgrade = next((v for n, v in conn.headers if n.lower() == b"upgrade"), b"websocket")
        out["Connection"] = "Upgrade"
        out["Upgrade"] = decode_header(upgrade)
        return conn, web.StreamResponse(status=101, reason=decode_header(conn.reason) or None, headers=out)

    async def _exchange(
        self,
        request: web.BaseRequest,
        pool: Pool,
        upstream: Upstream,
        head: bytes,
        has_body: bool,
        replayable: bool,
        settings: Settings,
    ) -> Connection:
        """Send the request; return the connection once the response head is in."""
        for attempt in (0, 1):
            try:
                if attempt == 0:
                    conn, reused = await pool.acquire(upstream.connect_timeout, replayable)
                else:  # never another pooled connection: it idled as long, likely closed too
                    conn, reused = await pool.connect(upstream.connect_timeout), False
            except UpstreamFailed as exc:
                raise upstream_error(504 if exc.timeout else 502, str(exc)) from None
            idle_for = pool.loop.time() - conn.idle_since if reused else 0.0
            conn.begin(request.method == "HEAD", upstream.timeout)
            try:
                conn.write(head)
                if has_body:
                    await self._send_body(request, conn, settings)
                await conn.response_head()
                if reused:
                    pool.alive_after(idle_for, conn.exchanges)
                return conn
            except UpstreamFailed as exc:
                conn.close()
                if exc.stale and reused:
                    pool.closed_while_idle(idle_for, conn.exchanges - 1)  # the ones before this
                if exc.stale and reused and replayable and attempt == 0:
                    continue  # the upstream closed the idle connection: once more, on a new one
                if exc.timeout:
                    raise upstream_error(504, f"upstream {upstream.name} timed out") from None
                raise upstream_error(502, f"upstream {upstream.name} failed: {exc}") from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _send_body(self, request: web.BaseRequest, conn: Connection, settings: Settings) -> None:
        limits = settings.limits
        try:
            headers = request.headers
            scanner = body_scanner(headers.getall("Content-Type", []), headers.getall("Content-Encoding", []))
        except OverrideFound as exc:
            raise client_body_error(400, "invalid_request", f"unreadable form body: {exc}", Step.REQUEST) from None
        guard = BodyGuard(request.content, limits.max_body_bytes, limits.body_timeout, scanner)
        chunked = request.content_length is None
        conn.sending = True
        try:
            async for chunk in guard:
                if conn.answered:
                    # It answered before the whole body: that answer goes back, the rest of
                    # the body does not go out, and the connection is not reused.
                    conn.reusable = False
                    return
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        except (TimeoutError, ValueError):
            if guard.failure is not None:
                raise guard.failure from None
            raise
        finally:
            conn.sending = False

    async def _respond(
        self, request: web.BaseRequest, conn: Connection, request_id: str, delivery: Delivery | None = None
    ) -> web.StreamResponse:
        reason = decode_header(conn.reason) or None
        headers = response_headers(conn.headers, request_id)
        if conn.complete and request.method != "HEAD":
            # The whole response is here already: one write to the client.
            return web.Response(status=conn.status, reason=reason, headers=headers, body=conn.take_body())
        response = web.StreamResponse(status=conn.status, reason=reason, headers=headers)
        if request.method == "HEAD":
            length = next((v for n, v in conn.headers if n.lower() == b"content-length"), None)
            if length is not None:
                response.headers["Content-Length"] = decode_header(length)
        else:
            length = next((v for n, v in conn.headers if n.lower() == b"content-length"), None)
            if length is not None and length.isdigit():
                response.content_length = int(length)
        sent = 0
        try:
            # The client may be gone before the head goes out, or at the end: the upstream
            # ran the request all the same, so that is a cut response, not an error of ours.
            await response.prepare(request)
            if delivery is not None:
                delivery.status = response.status
            if request.method == "HEAD":
                await response.write_eof()
                return response
            while chunk := await conn.next_chunk():
                await response.write(chunk)
                sent += len(chunk)
            if delivery is not None:
                delivery.bytes_sent = sent
            await response.write_eof()
        except UpstreamFailed as exc:
            # Headers are gone already: the only honest signal left is a cut connection.
            if request.transport is not None:
                request.transport.close()
            if delivery is not None:
                delivery.bytes_sent, delivery.upstream_aborted, delivery.error = sent, True, str(exc)
            return response
        except ConnectionError as exc:  # the client went away: nobody to answer
            conn.reusable = False
            if delivery is not None:
                delivery.bytes_sent, delivery.client_aborted, delivery.error = sent, True, str(exc)
            return response
        except asyncio.CancelledError:  # shutdown's drain time ran out mid-body
            if delivery is not None and delivery.status:
                delivery.bytes_sent, delivery.shutdown_aborted = sent, True
            raise
        return response
