"""Headers in and out: which inbound headers reach the upstream, the identity tokenward adds,
and which response headers reach the client.

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

from urllib.parse import quote

from multidict import CIMultiDictProxy

from tokenward.gateway.bounded import Memo
from tokenward.gateway.decision import Principal
from tokenward.gateway.scopes import format_scopes
from tokenward.gateway.upstream import decode_header

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


def identity_headers(principal: Principal) -> dict[str, str]:
    """The caller's identity for the upstream; a header with nothing to say is left out."""
    token = principal.token
    headers = {
        "X-Tokenward-Token-Id": token.id,
        "X-Tokenward-Token-Name": header_value(token.name),
        "X-Tokenward-Org": token.org,
        "X-Tokenward-Team": token.team or "",
        "X-Tokenward-Service-Account": principal.service_account or "",
        "X-Tokenward-Scopes": " ".join(format_scopes(principal.effective_scopes)),
        "X-Tokenward-Parent-Id": token.parent_id or "",  # a child token's (gateway/lineage.py)
        "X-Tokenward-Run-Id": token.run_id or "",
    }
    return {name: value for name, value in headers.items() if value}


class IdentityHeaders:
    """The identity headers as header lines (bytes), remembered (bounded) per (token record,
    team permissions) object pair and the account's current name: records are immutable and
    replaced, not changed, when the store says so. Only the lines are kept (one short bytes
    object per cached token); the slow paths (tracing, MCP, WebSocket) build the pairs anew.
    One per forwarder, so never shared between runtimes."""

    __slots__ = ("_memo",)

    def __init__(self, max_size: int = 10_000) -> None:
        self._memo: Memo[int, tuple[object, object, str | None, bytes]] = Memo(max_size)

    def __call__(self, principal: Principal) -> dict[str, str]:
        return identity_headers(principal)

    def lines(self, principal: Principal) -> bytes:
        token, permissions, account = principal.token, principal.team_permissions, principal.service_account
        found = self._memo.get(id(token))
        if found is not None and found[0] is token and found[1] is permissions and found[2] == account:
            return found[3]
        headers = identity_headers(principal)
        data = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode(
            "utf-8", "surrogateescape"
        )
        self._memo.remember(id(token), (token, permissions, account, data))
        return data


KEEP, DROP, TRUSTED_ONLY = 0, 1, 2


class HeaderPolicy:
    """What happens to each inbound request header on its way upstream, by name (case-folded,
    `_` and `.` read as `-`): kept, dropped, or kept only from a trusted proxy. Built once per
    settings object; each name's answer is remembered (bounded)."""

    def __init__(self, strip: tuple[str, ...] = (), forward_authorization: bool = False) -> None:
        self.strip_exact = frozenset(normalize_name(name) for name in strip if not name.endswith("*"))
        self.strip_prefixes = tuple(normalize_name(name[:-1]) for name in strip if name.endswith("*"))
        self.forward_authorization = forward_authorization
        self._memo: Memo[str, int] = Memo(4096)
        self.raw_kinds: Memo[bytes, int] = Memo(4096)  # kind_raw's answers, read directly on the hot path

    def kind(self, name: str) -> int:
        found = self._memo.get(name)
        if found is None:
            found = self._classify(normalize_name(name))
            if found == TRUSTED_ONLY and ("_" in name or "." in name):
                found = DROP  # only the canonical spelling of a forwarding header, from anyone
            self._memo.remember(name, found)
        return found

    def kind_raw(self, name: bytes) -> int:
        """`kind` of a header name as it came (bytes), remembered per spelling."""
        found = self.raw_kinds.get(name)
        if found is None:
            found = self.raw_kinds.remember(name, self.kind(name.decode("latin-1")))
        return found

    def _classify(self, norm: str) -> int:
        if norm in HOP_BY_HOP or norm in _REPLACED or norm.startswith(IDENTITY_PREFIX):
            return DROP
        if norm == "authorization":
            return KEEP if self.forward_authorization else DROP
        if norm in TRUSTED_FORWARDING:
            return TRUSTED_ONLY
        if norm in self.strip_exact or (self.strip_prefixes and norm.startswith(self.strip_prefixes)):
            return DROP
        if norm in NEVER_EXACT or norm.startswith(NEVER_PREFIXES):
            return DROP
        if norm in PROXY_EXACT or norm.startswith(PROXY_PREFIXES):
            return TRUSTED_ONLY
        return KEEP

    def forwards(self, name: str, trusted: bool = False) -> bool:
        """Would a header of this name reach the upstream (from a trusted proxy or not)?"""
        kind = self.kind(name)
        return kind == KEEP or (kind == TRUSTED_ONLY and trusted)


class ResponseHeaders:
    """The upstream's response headers as the client gets them: the header lines as the
    upstream sent them (bytes, never decoded and re-encoded), minus hop-by-hop ones, the
    Connection-named ones, Content-Length (set from what is sent) and X-Request-Id (ours);
    each name's verdict remembered (bounded). One per forwarder."""

    __slots__ = ("_memo", "_named", "_norms")

    KEEP, DROP, DATE, TYPE = 0, 1, 2, 3

    def __init__(self, max_size: int = 4096) -> None:
        self._memo: Memo[bytes, int] = Memo(max_size)
        # a Connection value's names that are not dropped anyway (`keep-alive`: none)
        self._named: Memo[bytes, frozenset[str]] = Memo(max_size)
        self._norms: Memo[bytes, str] = Memo(max_size)  # a name as it came -> normalize_name

    def kind(self, name: bytes) -> int:
        found = self._memo.get(name)
        if found is None:
            norm = self.norm(name)
            if norm in _RESPONSE_DROP or norm == "x-request-id":
                found = self.DROP
            else:
                found = self.DATE if norm == "date" else self.TYPE if norm == "content-type" else self.KEEP
            self._memo.remember(name, found)
        return found

    def norm(self, name: bytes) -> str:
        found = self._norms.get(name)
        if found is None:
            found = self._norms.remember(name, normalize_name(decode_header(name)))
        return found

    def named(self, value: bytes) -> frozenset[str]:
        """The header names a Connection value names, but for those dropped in any case."""
        found = self._named.get(value)
        if found is None:
            tokens = {normalize_name(token.strip()) for token in decode_header(value).split(",")}
            found = frozenset(tokens - {""} - _RESPONSE_DROP)
            if len(value) <= 64:  # the usual short values; a long one is read each time
                self._named.remember(value, found)
        return found

    def block(self, raw: list[tuple[bytes, bytes]], request_id: str) -> tuple[bytes, bool, bool]:
        """The header lines (ending with our X-Request-Id), and whether they carry a Date
        and a Content-Type."""
        dropped: frozenset[str] = frozenset()
        for name, value in raw:
            if len(name) == 10 and name.lower() == b"connection":
                dropped |= self.named(value)
        memo = self._memo
        lines = []
        date = typed = False
        for name, value in raw:
            verdict = memo.get(name)
            if verdict is None:
                verdict = self.kind(name)
            if verdict == 1:
                continue
            if dropped and self.norm(name) in dropped:
                continue
            if verdict == 2:
                date = True
            elif verdict == 3:
                typed = True
            lines.append(b"%b: %b\r\n" % (name, value))
        lines.append(b"X-Request-Id: %b\r\n" % request_id.encode("ascii"))
        return b"".join(lines), date, typed
