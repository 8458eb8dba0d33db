"""The one bounded map (gateway/bounded.py) and the memos built on it: each is owned by an
object (a trusted-proxy set, a header policy, a forwarder, the verification cache), bounded,
and never shared between two servers in one process (issue 12, item 6)."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.helpers.gateway import Gateway
from tokenward.gateway.bounded import BoundedMap
from tokenward.gateway.decision import Principal
from tokenward.gateway.edge import TrustedProxies
from tokenward.gateway.headers import HeaderPolicy, IdentityHeaders, identity_headers
from tokenward.gateway.pipeline import Pipeline
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import parse_scopes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_goes_first() -> None:
    memo: BoundedMap[str, int] = BoundedMap(3)
    for n, key in enumerate("abc"):
        memo.put(key, n)
    assert memo.get("a") == 0  # a is now the most recently used
    memo.put("d", 3)
    assert "b" not in memo and memo.keys() == ["c", "a", "d"]
    memo.put("c", 22)  # an update is a use too
    memo.put("e", 4)
    assert memo.keys() == ["d", "c", "e"] and memo.get("c") == 22  # a went: least recent
    assert len(memo) == 3


def test_never_more_than_max_size() -> None:
    memo: BoundedMap[int, int] = BoundedMap(100)
    for n in range(10_000):
        memo.put(n, n)
        assert len(memo) <= 100
    assert memo.keys() == list(range(9_900, 10_000))


def test_ttl_and_max_age() -> None:
    clock = Clock()
    memo: BoundedMap[str, str] = BoundedMap(10, ttl=5.0, clock=clock)
    memo.put("k", "v")
    clock.now += 5.0
    assert memo.get("k") == "v"  # exactly ttl old: still fresh
    clock.now += 0.5
    assert memo.get("k") is None  # too old for the default age limit ...
    assert "k" in memo and memo.get("k", max_age=60.0) == "v"  # ... but kept for a longer one
    untimed: BoundedMap[str, str] = BoundedMap(10, clock=clock)
    untimed.put("k", "v")
    clock.now += 1e9
    assert untimed.get("k") == "v" and untimed.get("k", max_age=1.0) is None


def test_pop_and_clear() -> None:
    memo: BoundedMap[str, int] = BoundedMap(4)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.pop("a") == 1 and memo.pop("a") is None
    memo.clear()
    assert len(memo) == 0 and memo.get("b") is None
    with pytest.raises(ValueError):
        BoundedMap(0)


def test_trusted_proxies_memo_is_bounded_and_right() -> None:
    trust = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),), memo_size=8)
    for n in range(50):
        assert f"10.0.0.{n}" in trust
        assert f"192.0.2.{n}" not in trust
    assert len(trust._memo) == 8
    assert "not-an-ip" not in trust and None not in trust and "" not in trust
    assert "10.1.2.3" not in TrustedProxies(())


def test_header_policy_memo_is_bounded() -> None:
    policy = HeaderPolicy()
    for n in range(5000):
        assert policy.forwards(f"X-Custom-{n}")
    assert len(policy._memo) == 4096
    assert not policy.forwards("X-Real-IP") and policy.forwards("X-Real-IP", trusted=True)
    assert not policy.forwards("X_Real_IP", trusted=True)  # memo or not, the same answer


def _principal(token_id: str) -> Principal:
    record = TokenRecord(
        id=token_id, prefix="tw_sat", org="acme", team="core", name="t", description="",
        scopes=parse_scopes(["read:x"]), secret_hash="", created_at=0.0, created_by="test",
    )  # fmt: skip
    return Principal(record, parse_scopes(["read:x"]))


def test_identity_headers_memo_is_per_record_object() -> None:
    identity = IdentityHeaders(max_size=2)
    first = _principal("a" * 12)
    assert identity.lines(first) is identity.lines(first)  # remembered
    assert identity.lines(first) == "".join(f"{n}: {v}\r\n" for n, v in identity_headers(first).items()).encode()
    assert identity(first) == identity_headers(first)
    again = _principal("a" * 12)  # same id, new record object (the store replaced it)
    assert identity.lines(again) is not identity.lines(first)
    for n in range(5):
        identity.lines(_principal(f"{n:012d}"))
    assert len(identity._memo) == 2


def _pipeline(gw: Gateway) -> Pipeline:
    listener = gw.server.listener
    assert listener is not None
    return listener.pipeline


async def test_two_servers_in_one_process_share_no_memo(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    """Two gateways in one process, one trusting 127.0.0.1 as a proxy and one not: each
    keeps its own trusted-proxy memo (and header policy), and each answers by its own."""
    trusting = copy.deepcopy(config)
    trusting["trusted_proxies"] = ["127.0.0.1/32"]
    gw_trusting = await start_gateway(trusting)
    gw_plain = await start_gateway(config)
    for _ in range(3):  # interleaved: a shared memo would be rebuilt or consulted across them
        for gw in (gw_trusting, gw_plain):
            async with gw.session.get(gw.url + "/health", headers={"X-Forwarded-For": "198.51.100.7"}) as resp:
                assert resp.status == 200
                seen = (await resp.json())["headers"]
            forwarded = [value for name, value in seen if name.lower() == "x-forwarded-for"]
            if gw is gw_trusting:
                assert forwarded == ["198.51.100.7, 127.0.0.1"]  # the trusted proxy's chain is kept
            else:
                assert forwarded == ["127.0.0.1"]  # rebuilt: the client's claim is dropped
    a, b = _pipeline(gw_trusting), _pipeline(gw_plain)
    assert a.view.trust is not b.view.trust and a.view.trust._memo is not b.view.trust._memo
    assert a.view.headers._memo is not b.view.headers._memo
    assert a.view.trust._memo.get("127.0.0.1") is True
    assert b.view.trust._memo.get("127.0.0.1") is False
    assert gw_trusting.runtime.forwarder is not gw_plain.runtime.forwarder


def test_redaction_memo_is_per_audit_log_and_keeps_no_secret() -> None:
    """`redact` is pure; the request path's memo (`Redactor`) belongs to one AuditLog and only
    remembers texts that had nothing to redact."""
    from tokenward.gateway.audit import Redactor, redact

    first, second = Redactor(size=2), Redactor(size=2)
    assert first("/orgs/acme/apis") == "/orgs/acme/apis" == redact("/orgs/acme/apis")
    secret = "/apis?access_token=s3cr3t-value"
    assert first(secret) == redact(secret) != secret
    assert "/orgs/acme/apis" in first._clean and secret not in first._clean
    assert len(second._clean) == 0
    for path in ("/a", "/b", "/c"):
        first(path)
    assert len(first._clean) == 2


def test_failure_throttle_remembers_at_most_max_keys() -> None:
    from tokenward.gateway.throttle import FailureThrottle

    throttle = FailureThrottle(max_keys=3)
    for key_id in ("k1", "k2", "k3", "k4"):
        throttle.failed(key_id)
    assert not throttle.suspect("k1")  # the least recently failed one was forgotten
    assert all(throttle.suspect(k) for k in ("k2", "k3", "k4"))
