"""The forward-auth examples never let a `_`-spelled identity header reach the app (issue 10,
item 17): apps that read `_` and `-` alike (WSGI, CGI, PHP, Rack) would take a client's
`X_Tokenward_Org` for tokenward's `X-Tokenward-Org`. Envoy refuses such requests, Traefik's
ForwardAuth regex strips them, and nginx drops them; nginx is checked for real, with raw
bytes, in front of the real `tokenward serve` and an app that records what it received.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import yaml

from tests.helpers.gateway import APIS, IDENTITY, ROOT
from tests.helpers.nginx import NginxStack

DEPLOY = ROOT / "deploy"


def spellings(name: str) -> set[str]:
    """Every way to write `name` with `_`, `.` or `-` between its words, in three cases."""
    words = name.split("-")
    out = {words[0]}
    for word in words[1:]:
        out = {prefix + sep + word for prefix in out for sep in "-_."}
    return {s for w in out for s in (w, w.lower(), w.upper())}


FORGED = sorted({s for name in IDENTITY for s in spellings(name)} - {h for n in IDENTITY for h in (n, n.lower(), n.upper())})


def go_canonical(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey, which Traefik's header maps use."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def test_envoy_refuses_headers_with_underscores() -> None:
    (config,) = yaml.safe_load_all((DEPLOY / "envoy" / "envoy.yaml").read_text())
    (listener,) = config["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    options = hcm["typed_config"]["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] in ("REJECT_REQUEST", "DROP_HEADER")


def test_traefik_strips_every_spelling_of_the_identity_headers() -> None:
    (dynamic,) = yaml.safe_load_all((DEPLOY / "traefik" / "dynamic.yml").read_text())
    regex = re.compile(dynamic["http"]["middlewares"]["tokenward"]["forwardAuth"]["authResponseHeadersRegex"])
    assert len(FORGED) > 100
    for name in FORGED:
        # Traefik matches the names as Go stores them (canonical form)
        assert regex.search(go_canonical(name)), name
        assert regex.search(name), name
    for name in IDENTITY:  # tokenward's own are copied from its answer
        assert regex.search(name)
    for name in ("X-Custom", "Accept", "X-Request-Id", "Content-Type", "X-Tokenwardish", "Authorization"):
        assert not regex.search(go_canonical(name)), name
    assert regex.search("X_any_thing")  # every "_" header goes, like nginx's default


def test_nginx_drops_headers_with_underscores() -> None:
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.search(r"^\s*underscores_in_headers\s+off;", text, re.M)
    assert re.search(r"^\s*ignore_invalid_headers\s+on;", text, re.M)
    assert not re.search(r"underscores_in_headers\s+on|ignore_invalid_headers\s+off", text)


def test_the_readme_says_how_each_example_blocks_them() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Forward-auth") :]
    section = section[: section.index("\n## ", 5)]
    for needle in ("headers_with_underscores_action", "underscores_in_headers", "authResponseHeadersRegex"):
        assert needle in section, needle


async def test_nginx_never_lets_an_underscore_identity_header_reach_the_app(nginx_stack: NginxStack, workdir: Path) -> None:
    stack, seen = nginx_stack, nginx_stack.seen
    admin, admin_port, nginx_port = stack.admin, stack.admin_port, stack.nginx_port
    try:
        async with aiohttp.ClientSession() as session:
            await stack.wait_ready(session)
            adm = f"http://127.0.0.1:{admin_port}/v1/orgs/acme/teams"
            async with session.post(adm, headers=admin, json={"name": "platform", "permissions": ["read:apis"]}) as r:
                assert r.status == 201
            async with session.post(f"{adm}/platform/tokens", headers=admin, json={"name": "ci", "scopes": ["read:apis"]}) as r:
                token = (await r.json())["token"]
        seen.clear()
        host = f"127.0.0.1:{nginx_port}"
        batch = 40
        sent = 0
        for target, auth in (("/health", None), (APIS, token)):
            for start in range(0, len(FORGED), batch):
                lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close", "X-Request-Id: client-chosen"]
                if auth:
                    lines.append(f"Authorization: Bearer {auth}")
                lines += [f"{name}: evil" for name in FORGED[start : start + batch]]
                reader, writer = await asyncio.open_connection("127.0.0.1", nginx_port)
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                await writer.drain()
                response = await asyncio.wait_for(reader.read(-1), 10)
                writer.close()
                assert response.startswith(b"HTTP/1.1 200"), response[:300]
                sent += 1
        assert len(seen) == sent
        for got in seen:
            items = list(got["headers"].items())
            assert "evil" not in repr(items)
            ours = [k for k, _ in items if k.lower().replace("_", "-").replace(".", "-").startswith("x-tokenward-")]
            assert all(k in IDENTITY for k in ours), ours
            assert got["headers"]["X-Request-Id"] != "client-chosen"  # nginx's and tokenward's id
            if got["raw_path"] == APIS:
                assert got["headers"]["X-Tokenward-Org"] == "acme"
        # the example's access log never holds a token sent in the target
        for target in (f"{APIS}?access_token={token}", f"/x/{token}", f"{APIS}?a=1&q={token}#x"):
            reader, writer = await asyncio.open_connection("127.0.0.1", nginx_port)
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            assert (await asyncio.wait_for(reader.read(-1), 10)).startswith(b"HTTP/1.1 ")
            writer.close()
    finally:
        nginx_code, serve_code = await stack.stop()
    assert nginx_code == 0 and serve_code == 0
    access = (workdir / "access.log").read_text()
    assert access.count("GET ") >= sent + 3 and "[REDACTED]" in access
    assert token not in access and token[7:] not in access and token[19:51] not in access
