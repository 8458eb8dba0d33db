"""The HTTP edge shared by the gateway and admin listeners: which peers are trusted proxies,
request ids and error responses.

Every JSON error either listener sends is built here, from a `Refusal`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import secrets
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDictProxy

from tokenward.gateway.audit import redact
from tokenward.gateway.bounded import Memo
from tokenward.gateway.refusal import Refusal, error_headers
from tokenward.gateway.settings import IPNetwork

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
# what proxies generate (nginx's $request_id, Envoy's and most others' UUIDs, tokenward's own)
_HEX_OR_UUID = re.compile(r"^(?:[0-9a-fA-F]{16,64}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})\Z")


class RequestIds:
    """32 hex digits like a uuid4's: a random per-process half and a counter (unique, not
    secret; a uuid4 per request cost more than the rest of the request id logic)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # workers never share a prefix

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(secrets.randbits(40))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


new_request_id = RequestIds().next


def in_networks(address: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Is `address` (an IP address as text) inside one of `networks`? Not remembered."""
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class TrustedProxies:
    """One settings object's `trusted_proxies`, with each address's answer remembered
    (bounded). Built per settings object by its owner (the proxy pipeline), never shared
    between servers."""

    __slots__ = ("_memo", "networks")

    def __init__(self, networks: tuple[IPNetwork, ...], memo_size: int = 10_000) -> None:
        self.networks = networks
        self._memo: Memo[str, bool] = Memo(memo_size)

    def __contains__(self, address: str | None) -> bool:
        if not address or not self.networks:
            return False
        found = self._memo.get(address)
        if found is None:
            found = self._memo.remember(address, in_networks(address, self.networks))
        return found

    def client_address(self, peer: str | None, forwarded_for: list[str]) -> str | None:
        """The client's address: the peer, or behind trusted proxies the right-most
        X-Forwarded-For entry that is not itself a trusted proxy. `forwarded_for`: the
        X-Forwarded-For values, read only when the peer is trusted."""
        if peer not in self:
            return peer
        return self.behind(peer, forwarded_for)

    def behind(self, peer: str | None, forwarded_for: Sequence[str]) -> str | None:
        """`client_address` once `peer` is known to be a trusted proxy."""
        hops = [h.strip() for v in forwarded_for for h in v.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # garbage in the chain: trust only what we saw ourselves
            if hop not in self:
                return hop
        return hops[0] if hops else peer


class Inbound(Protocol):
    """What the request id needs of a request (the gateway's or aiohttp's)."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def remote(self) -> str | None: ...


def request_id_for(request: Inbound, trusted_proxies: tuple[IPNetwork, ...] = ()) -> str:
    """The request's id: a trusted proxy's X-Request-Id when there is exactly one and it is
    well-formed (1-128 of `A-Za-z0-9._:-`, nothing token-shaped), else a new one. A client
    that is not a trusted proxy never chooses the id that the response, the upstream and the
    audit carry (see `client_request_id`)."""
    return request_id(request, in_networks(request.remote, trusted_proxies))


def request_id(request: Inbound, trusted: bool) -> str:
    """`request_id_for` once the peer's trust is known (`trusted`: it is a trusted proxy)."""
    if trusted:
        inbound = request.headers.getall("X-Request-Id", ())
        if len(inbound) == 1 and _REQUEST_ID.match(inbound[0]):
            if _HEX_OR_UUID.match(inbound[0]) or redact(inbound[0]) == inbound[0]:
                return inbound[0]
    return new_request_id()


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:/+=@,\[\]-]")


def client_request_id(request: Inbound, request_id: str) -> str | None:
    """The client's own X-Request-Id(s) when not used as the id, for the audit event only:
    redacted, unsafe characters as `?`, at most 128 characters."""
    inbound = request.headers.getall("X-Request-Id", ())
    if not inbound or inbound == [request_id]:
        return None
    value = ",".join(inbound)
    if not _HEX_OR_UUID.match(value):
        value = redact(value)
    return _UNSAFE_ID_CHARS.sub("?", value)[:128]


def error_response(refusal: Refusal, request_id: str) -> web.Response:
    """The one JSON error response of both listeners (see `refusal.error_body`)."""
    return web.Response(
        status=refusal.status,
        body=refusal.render(request_id),
        content_type="application/json",
        headers=error_headers(refusal, request_id),
    )


__all__ = [
    "TrustedProxies",
    "client_request_id",
    "error_response",
    "in_networks",
    "new_request_id",
    "request_id",
    "request_id_for",
]
