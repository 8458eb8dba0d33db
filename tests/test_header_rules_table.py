"""What happens to an inbound request header on its way upstream, as one table: kept as sent,
stripped, replaced by tokenward's own value, or the request refused. Each row sends raw bytes
(no client normalisation) from an untrusted client or from a trusted proxy, through the real
gateway, to an upstream that records exactly what reached it.

The name lists of other proxies' headers (every spelling, both trust levels) are in
tests/test_header_trust.py; this table holds one case per row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.helpers.gateway import APIS, Gateway
from tests.helpers.rawhttp import Recorder, hardening_config, raw, request

UNTRUSTED, TRUSTED = "untrusted client", "trusted proxy"
PUBLIC = "/api"  # a public route: no token, no identity
REFUSED = "refused"  # 400, nothing forwarded
HOST, REQUEST_ID, TOKEN = "{host}", "{request_id}", "{token}"  # filled in per request

# (who sends, path, header lines sent, expected): expected is REFUSED or, per header name as the
# upstream sees it (lower-case, spelling kept), its values there ([] where it must be absent)
TABLE = [
    # kept
    pytest.param(UNTRUSTED, APIS, ["X-Custom: kept"], {"x-custom": ["kept"]}, id="ordinary"),
    pytest.param(UNTRUSTED, APIS, ["Accept: application/json"], {"accept": ["application/json"]}, id="accept"),
    # hop by hop, and what Connection names
    pytest.param(UNTRUSTED, APIS, ["Keep-Alive: timeout=5"], {"keep-alive": []}, id="keep-alive"),
    pytest.param(
        UNTRUSTED, APIS, ["Connection: X-Drop-Me", "X-Drop-Me: 1"], {"x-drop-me": [], "connection": []},
        id="named-by-connection",
    ),
    # the caller's credential stays with tokenward (forward_authorization: false)
    pytest.param(UNTRUSTED, APIS, [], {"authorization": []}, id="authorization"),
    # tokenward's identity headers: its own values, whoever sends them and however spelled
    pytest.param(UNTRUSTED, APIS, ["X-Tokenward-Org: evil"], {"x-tokenward-org": ["acme"]}, id="identity"),
    pytest.param(
        UNTRUSTED, APIS, ["x_tokenward_team: evil"], {"x_tokenward_team": [], "x-tokenward-team": ["platform"]},
        id="identity-underscore",
    ),
    pytest.param(
        UNTRUSTED, APIS, ["X-TOKENWARD-SCOPES: admin:*"], {"x-tokenward-scopes": ["read:apis"]},
        id="identity-upper-case",
    ),
    pytest.param(
        UNTRUSTED, APIS, ["X-Tokenward-Service-Account: root"], {"x-tokenward-service-account": []},
        id="identity-the-token-lacks",
    ),
    pytest.param(
        UNTRUSTED, APIS, ["X-Tokenward-Anything-New: x"], {"x-tokenward-anything-new": []}, id="identity-unknown",
    ),
    pytest.param(TRUSTED, APIS, ["X-Tokenward-Org: evil"], {"x-tokenward-org": ["acme"]}, id="identity-from-proxy"),
    pytest.param(
        UNTRUSTED, PUBLIC, ["X-Tokenward-Org: evil", "X-Tokenward-Token-Id: x"],
        {"x-tokenward-org": [], "x-tokenward-token-id": []}, id="identity-on-a-public-route",
    ),
    # the request id: tokenward's unless a trusted proxy sends a well-formed one
    pytest.param(UNTRUSTED, APIS, ["X-Request-Id: req-123"], {"x-request-id": [REQUEST_ID]}, id="request-id"),
    pytest.param(
        UNTRUSTED, PUBLIC, ["X_Request_Id: forged"], {"x_request_id": [], "x-request-id": [REQUEST_ID]},
        id="request-id-underscore",
    ),
    pytest.param(UNTRUSTED, PUBLIC, ["Content_Length: 9"], {"content_length": []}, id="content-length-underscore"),
    # path and method restatements: never, from anyone
    pytest.param(UNTRUSTED, PUBLIC, ["X-Forwarded-Uri: /admin"], {"x-forwarded-uri": []}, id="forwarded-uri"),
    pytest.param(
        UNTRUSTED, PUBLIC, ["X-Forwarded-Method: DELETE"], {"x-forwarded-method": []}, id="forwarded-method",
    ),
    pytest.param(UNTRUSTED, PUBLIC, ["X-Rewrite-Url: /y"], {"x-rewrite-url": []}, id="rewrite-url"),
    pytest.param(TRUSTED, APIS, ["X-Original-URL: /admin"], {"x-original-url": []}, id="original-url-from-proxy"),
    # forwarding headers: rebuilt for an untrusted client, taken from a trusted proxy
    pytest.param(
        UNTRUSTED, APIS, ["X-Forwarded-For: 6.6.6.6"], {"x-forwarded-for": ["127.0.0.1"]}, id="forwarded-for",
    ),
    pytest.param(
        TRUSTED, APIS, ["X-Forwarded-For: 203.0.113.9"], {"x-forwarded-for": ["203.0.113.9, 127.0.0.1"]},
        id="forwarded-for-from-proxy",
    ),
    pytest.param(
        TRUSTED, APIS, ["X_Forwarded_For: 6.6.6.6"], {"x_forwarded_for": [], "x-forwarded-for": ["127.0.0.1"]},
        id="forwarded-for-underscore-from-proxy",
    ),
    pytest.param(
        UNTRUSTED, APIS, ["X-Forwarded-Host: evil.example"], {"x-forwarded-host": [HOST]}, id="forwarded-host",
    ),
    pytest.param(
        TRUSTED, APIS, ["X-Forwarded-Host: api.example"], {"x-forwarded-host": ["api.example"]},
        id="forwarded-host-from-proxy",
    ),
    pytest.param(UNTRUSTED, APIS, ["X-Forwarded-Proto: https"], {"x-forwarded-proto": ["http"]}, id="forwarded-proto"),
    pytest.param(
        TRUSTED, APIS, ["X-Forwarded-Proto: https"], {"x-forwarded-proto": ["https"]}, id="forwarded-proto-from-proxy",
    ),
    pytest.param(UNTRUSTED, APIS, ["X-Real-IP: 6.6.6.6"], {"x-real-ip": []}, id="real-ip"),
    pytest.param(
        TRUSTED, APIS, ["X-Real-IP: 203.0.113.9"], {"x-real-ip": ["203.0.113.9"]}, id="real-ip-from-proxy",
    ),
    # refused: a second credential, or another method than the one on the request line
    pytest.param(UNTRUSTED, APIS, [f"Authorization: Bearer {TOKEN}"], REFUSED, id="second-authorization"),
    pytest.param(UNTRUSTED, APIS, ["authorization: Basic eDp5"], REFUSED, id="second-authorization-basic"),
    pytest.param(UNTRUSTED, APIS, ["X-HTTP-Method-Override: DELETE"], REFUSED, id="method-override"),
    pytest.param(UNTRUSTED, APIS, ["X-HTTP-Method: POST"], REFUSED, id="x-http-method"),
    pytest.param(UNTRUSTED, APIS, ["X-Method-Override: PUT"], REFUSED, id="x-method-override"),
    pytest.param(UNTRUSTED, APIS, ["x_http_method_override: DELETE"], REFUSED, id="method-override-underscore"),
]  # fmt: skip


@pytest.mark.parametrize("who, path, lines, expected", TABLE)
async def test_inbound_header(
    start_gateway: Callable[..., Awaitable[Gateway]],
    recorder: Recorder,
    who: str,
    path: str,
    lines: list[str],
    expected: dict[str, list[str]] | str,
) -> None:
    config = hardening_config(recorder.port)
    if who == TRUSTED:
        config["trusted_proxies"] = ["127.0.0.1/32"]
    gw = await start_gateway(config)
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    host = f"127.0.0.1:{gw.server.proxy_port}"
    sent = [line.replace(TOKEN, token) for line in lines]
    status, headers, body = await raw(
        gw.server.proxy_port, request(path, host, None if path == PUBLIC else token, *sent, "X-Probe: 1")
    )
    if expected == REFUSED:
        assert status == 400, body
        assert recorder.seen == []
        return
    assert status == 200, body
    assert isinstance(expected, dict)
    [forwarded] = recorder.seen
    seen: dict[str, list[str]] = {}
    for name, value in forwarded["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    assert seen["x-probe"] == ["1"]
    fill = {HOST: host, REQUEST_ID: headers["x-request-id"]}
    for name, values in expected.items():
        assert seen.get(name, []) == [fill.get(v, v) for v in values], name
    assert all("evil" not in v and "6.6.6.6" not in v for vs in seen.values() for v in vs), seen
    if path == PUBLIC:  # no token needed, and no identity at all
        assert not [name for name in seen if name.replace("_", "-").startswith("x-tokenward-")]
