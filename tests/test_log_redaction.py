"""Secrets never reach the logs or the audit stream (issue 10, item 11): a real token is sent
in every place of the request target (and in the other client-chosen strings that get
audited) through the real gateway, then every log line and every event of the store's audit
stream is searched for it, also after percent-decoding them up to three times.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from urllib.parse import quote, unquote

import pytest

from tests.helpers.gateway import APIS, Gateway, LogReader
from tests.helpers.rawhttp import Recorder, hardening_config, raw, request
from tokenward.gateway.audit import REDACTED, redact
from tokenward.gateway.store_keys import Keys


def encode_all(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def variants(token: str, host: str, bearer: str | None) -> list[tuple[str, bytes]]:
    """(name, raw request) pairs that carry `token` somewhere other than Authorization."""
    secret_part = token[len("tw_sat_") :]
    b64 = base64.b64encode(token.encode()).decode()
    targets = {
        "query access_token": f"{APIS}?access_token={token}",
        "query ACCESS_TOKEN": f"{APIS}?ACCESS_TOKEN={token}",
        "query token": f"{APIS}?token={token}",
        "query api_key": f"{APIS}?api_key={token}",
        "query apikey": f"{APIS}?apikey={token}",
        "query key": f"{APIS}?key={token}",
        "query password": f"{APIS}?password={token}",
        "query secret": f"{APIS}?client_secret={token}",
        "query auth": f"{APIS}?auth={token}",
        "query sig": f"{APIS}?sig={token}",
        "query X-Amz-Signature": f"{APIS}?X-Amz-Signature={token}",
        "query innocuous name": f"{APIS}?q={token}",
        "query second param": f"{APIS}?page=2&q=x&t={token}",
        "query no name": f"{APIS}?{token}",
        "query bare secret": f"{APIS}?q={secret_part}",
        "query encoded prefix": f"{APIS}?q=%74w%5Fsat_{secret_part}",
        "query all encoded": f"{APIS}?q={encode_all(token)}",
        "query double encoded": f"{APIS}?q={quote(encode_all(token), safe='')}",
        "query triple encoded": f"{APIS}?q={quote(quote(encode_all(token), safe=''), safe='')}",
        "query base64": f"{APIS}?q={quote(b64, safe='')}",
        "query plus and space": f"{APIS}?q=a+b+{token}",
        "query fragment": f"{APIS}?q=1#{token}",
        "query upper-case token": f"{APIS}?q={token.upper()}",
        "path segment (allowed route)": f"/files/{token}",
        "path segment encoded (allowed route)": f"/files/%74w_sat_{secret_part}",
        "path segment deep": f"/files/a/b/{token}/c.txt",
        "path bare secret": f"/files/{secret_part}",
        "path no route": f"/{token}",
        "path base64": f"/files/{quote(b64, safe='')}",
        "path matrix param": f"/files/x;token={token}/y",
        "path invalid encoding": f"/files/{token}%zz",
        "path dot segment": f"/files/../{token}",
        "path encoded slash": f"/files/a%2F{token}",
        "path control char": f"/files/{token}%00",
        "absolute form wrong host": f"http://evil.example/{token}",
        "absolute form userinfo": f"http://user:{token}@{host}{APIS}",
        "absolute form query": f"http://{host}{APIS}?access_token={token}",
        "too long (414 from check)": f"{APIS}?q={token}&pad=" + "a" * 2100,
        "too long (parser)": f"{APIS}?q={token}&pad=" + "a" * 4000,
    }
    out = [(name, request(target, host, bearer)) for name, target in targets.items()]
    out += [
        ("too many headers", request(f"{APIS}?q={token}", host, bearer, *[f"X-H{i}: v" for i in range(60)])),
        ("header too big", request(f"{APIS}?q={token}", host, bearer, "X-Big: " + "b" * 9000)),
        ("bad request line", f"GET {APIS}?q={token} x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()),
        ("bad header", request(f"{APIS}?q={token}", host, bearer, "Bad Header: x")),
        ("cookie", request(f"{APIS}?q={token}", host, bearer, f"Cookie: tw={token}")),
        ("request id", request(APIS, host, bearer, f"X-Request-Id: {token}")),
        ("request id with query", request(f"{APIS}?token={token}", host, bearer, f"X-Request-Id: x{secret_part}")),
        ("lowercase method", request(f"{APIS}?q={token}", host, bearer, method="get")),
        ("token as method", request(APIS, host, bearer, method=token)),
        ("token as version", f"GET {APIS} {token}\r\nHost: {host}\r\n\r\n".encode()),
        ("token as header name", request(APIS, host, bearer, f"{token}: x")),
        ("token in Host", request(APIS, token, bearer)),
        ("method override", request(f"{APIS}?q={token}", host, bearer, "X-HTTP-Method-Override: DELETE")),
        ("websocket route", request(f"/files/{token}", host, bearer, "Upgrade: websocket", "Connection: Upgrade")),
    ]
    # forward-auth (the gateway trusts 127.0.0.1 here): the original target is in a header
    verify = "/_tokenward/verify"
    out += [
        ("X-Original-URI", request(verify, host, bearer, f"X-Original-URI: {APIS}?access_token={token}")),
        ("X-Original-URI path", request(verify, host, bearer, f"X-Original-URI: /files/{token}")),
        ("X-Original-URI encoded", request(verify, host, bearer, f"X-Original-URI: /x?q={encode_all(token)}")),
        ("X-Forwarded-Uri", request(verify, host, bearer, f"X-Forwarded-Uri: {APIS}?token={token}")),
        ("two X-Original-URI", request(verify, host, bearer, f"X-Original-URI: /{token}", "X-Original-URI: /x")),
        ("X-Original-Method", request(verify, host, bearer, f"X-Original-URI: {APIS}", f"X-Original-Method: {token}")),
        ("Envoy path", request(f"{verify}/files/{token}", host, bearer)),
        ("Envoy query", request(f"{verify}{APIS}?access_token={token}", host, bearer)),
    ]
    return out


def decoded_forms(data: bytes) -> str:
    text = data.decode("latin-1")
    forms = [text]
    for _ in range(3):
        text = unquote(text)
        forms.append(text)
    return "\n".join(forms)


async def test_no_log_line_and_no_audit_event_holds_the_token(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder, logs: LogReader
) -> None:
    config = hardening_config(recorder.port)
    config["trusted_proxies"] = ["127.0.0.1/32"]
    config["routes"].append(
        {"methods": ["GET"], "path": "/ws/{rest:*}", "upstream": "registry", "scopes": ["read:apis"], "websocket": True}
    )
    gw = await start_gateway(config)
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    host = f"127.0.0.1:{gw.server.proxy_port}"
    secret = token[len("tw_sat_") + 12 : len("tw_sat_") + 44]
    cases = variants(token, host, None) + variants(token, host, token)
    statuses = set()
    for _, data in cases:
        statuses.add((await raw(gw.server.proxy_port, data, timeout=3))[0])
    assert {200, 400, 401, 404, 414, 431} <= statuses  # allowed, refused early and late
    # the same through the admin listener: its refusals audit the path too
    for target in (f"/v1/orgs/{token}/teams", f"/v1/orgs/acme/teams/{secret}/tokens?access_token={token}"):
        async with gw.session.get(gw.admin_url + target) as r:
            assert r.status in (400, 401, 404)
    await asyncio.sleep(0.05)
    await gw.runtime.audit.flush()

    lines = logs.raw().splitlines()
    assert len(lines) >= len(cases)  # every request was audited (one event each at least)
    stream = await gw.runtime.store.client.xrange(Keys.audit)
    assert len(stream) >= len(cases)
    stored = [value for _, fields in stream for value in fields.values()]
    b64 = base64.b64encode(token.encode()).decode()
    for source, items in (("log", lines), ("audit stream", stored)):
        for item in items:
            data = item if isinstance(item, bytes) else str(item).encode()
            text = decoded_forms(data)
            for needle in (token, secret, secret.upper(), token.upper(), b64[10:40]):
                assert needle not in text, (source, data[:300])
    assert REDACTED.encode() in logs.raw()
    # some were allowed (the token as a path segment, with a real credential) and forwarded
    assert any(seen["raw_path"].startswith("/files/") for seen in recorder.seen)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/orgs/acme/teams/platform/apis", "/orgs/acme/teams/platform/apis"),
        ("/orgs/acme/teams/platform/apis?page=2&sort=name", "/orgs/acme/teams/platform/apis?page=2&sort=name"),
        ("/files/report_2024.pdf", "/files/report_2024.pdf"),
        ("/x?author=bob&keyword=y&design=z", "/x?author=bob&keyword=y&design=z"),
        ("/x?access_token=abc&page=2", "/x?access_token=[REDACTED]&page=2"),
        ("/x?Access-Token=abc", "/x?Access-Token=[REDACTED]"),
        ("/x?page=1&password=hunter2#f", "/x?page=1&password=[REDACTED]#f"),
        ("/x;jsessionid=abc/y", "/x;jsessionid=[REDACTED]"),
        ("/x?X-Amz-Signature=abc&X-Amz-Credential=def", "/x?X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]"),
        ("/x?%61ccess_token=abc", "/x?%61ccess_token=[REDACTED]"),
        ("http://u:p@h/x", "http://[REDACTED]@h/x"),
        ("/x/ghp_0123456789abcdefghijABCDEFGHIJ012345", "/x/[REDACTED]"),
        ("/x/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "/x/[REDACTED]"),
        ("/x/0123456789abcdef0123456789abcdef01234567", "/x/[REDACTED]"),
        ("/x/%2574w_sat_0123456789abcdefghijAB", "/x/[REDACTED]"),
        ("unsupported original method 'tw_test_AAAAAAAAAAAAAAAAAAAAAAAAAAAA'", "unsupported original method '[REDACTED]'"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
