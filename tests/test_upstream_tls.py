"""Upstreams over TLS and the cap on connections per upstream (issue 13 item 9), against a
real TLS server: a CA, server and client certificates made at test time by trustme (real
X.509, real handshakes), a raw asyncio TLS server that counts its connections and records
the SNI name each handshake sent, and an aiohttp one for WebSockets. Counts, not timings."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
import yaml
from aiohttp import web

from tests.helpers.gateway import EVENTS, Gateway, LogReader, base_config, get, scrape, value, with_events
from tests.helpers.scripted import OK, Reply, ScriptedUpstream, Seen, send
from tokenward.gateway.embedded import free_port
from tokenward.gateway.explain import config_warnings
from tokenward.gateway.settings import ConfigError, load_settings
from tokenward.server import Server

Start = Callable[..., Awaitable[Gateway]]


@dataclass
class Pki:
    """A CA, its server certificate (localhost, registry.internal), a client CA and its
    client certificate, another CA nobody uses, and their PEM files."""

    ca: trustme.CA
    server: trustme.LeafCert
    client_ca: trustme.CA
    dir: Path

    def file(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, client_ca, other = trustme.CA(), trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "registry.internal")
    client = client_ca.issue_cert("tokenward-gateway")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    other.cert_pem.write_to_path(folder / "other-ca.pem")
    client.cert_chain_pems[0].write_to_path(folder / "client.pem")
    client.private_key_pem.write_to_path(folder / "client.key")
    client.private_key_and_cert_chain_pem.write_to_path(folder / "client-with-key.pem")
    server.private_key_pem.write_to_path(folder / "server.key")
    (folder / "not-pem.pem").write_text("just text\n")
    (folder / "bad-pem.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return Pki(ca, server, client_ca, folder)


@dataclass
class TlsUpstream:
    """A scripted upstream behind TLS: the connections open now and at most, the SNI names."""

    scripted: ScriptedUpstream
    sni: list[str | None] = field(default_factory=list)
    open: int = 0
    most: int = 0

    @property
    def port(self) -> int:
        return self.scripted.port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            await self.scripted.handle(reader, writer)
        finally:
            self.open -= 1


def server_context(pki: Pki, client_ca: trustme.CA | None = None, max_version: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server.configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    if max_version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def recording(names: list[str | None]) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    """An SNI callback that records the name each handshake sent."""

    def record(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        names.append(name)

    return record


@pytest.fixture
async def tls_upstream(pki: Pki) -> AsyncIterator[Callable[..., Awaitable[TlsUpstream]]]:
    servers: list[asyncio.Server] = []

    async def start(*replies: Reply, client_ca: trustme.CA | None = None, max_version: str | None = None) -> TlsUpstream:
        upstream = TlsUpstream(ScriptedUpstream(list(replies) or [send(OK)], free_port()))
        context = server_context(pki, client_ca, max_version)
        context.sni_callback = recording(upstream.sni)
        servers.append(await asyncio.start_server(upstream.handle, "127.0.0.1", upstream.port, ssl=context))
        return upstream

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def tls_config(port: int, host: str = "localhost", **upstream: Any) -> dict[str, Any]:
    config = base_config(port)
    config["upstreams"]["registry"] = {"url": f"https://{host}:{port}", "timeout": "5s", **upstream}
    return config


def error_of(body: bytes) -> tuple[str, str, str]:
    parsed = orjson.loads(body)
    return parsed["error"], parsed["step"], parsed["message"]


# -- verification ---------------------------------------------------------------------------------
async def test_verified_against_the_ca_file(pki: Pki, tls_upstream: Any, start_gateway: Start) -> None:
    upstream = await tls_upstream()
    gw = await start_gateway(tls_config(upstream.port, tls={"ca_file": pki.file("ca.pem")}))
    for _ in range(3):
        status, _, body = await get(gw)
        assert (status, body) == (200, b"ok")
    assert upstream.scripted.connections == 1  # kept alive over TLS too
    assert upstream.sni == ["localhost"]
    assert upstream.scripted.seen[0].header("Host") == [f"localhost:{upstream.port}"]


async def test_a_pooled_tls_connection_the_upstream_closed_is_replaced(
    pki: Pki, tls_upstream: Any, start_gateway: Start
) -> None:
    upstream = await tls_upstream(send(OK, close=True))
    gw = await start_gateway(tls_config(upstream.port, tls={"ca_file": pki.file("ca.pem")}))
    for _ in range(3):
        status, _, body = await get(gw)
        assert (status, body) == (200, b"ok")
        await asyncio.sleep(0.05)
    assert upstream.scripted.connections == 3 and len(upstream.scripted.seen) == 3


async def test_server_name_for_an_upstream_addressed_by_ip(pki: Pki, tls_upstream: Any, start_gateway: Start) -> None:
    upstream = await tls_upstream()
    tls = {"ca_file": pki.file("ca.pem"), "server_name": "registry.internal"}
    gw = await start_gateway(tls_config(upstream.port, "127.0.0.1", tls=tls))
    status, _, body = await get(gw)
    assert (status, body) == (200, b"ok")
    assert upstream.sni == ["registry.internal"]  # the name sent, and the one verified
    assert upstream.scripted.seen[0].header("Host") == [f"127.0.0.1:{upstream.port}"]  # Host unchanged


@pytest.mark.parametrize(
    ("host", "tls", "why"),
    [
        pytest.param("localhost", {"ca_file": "other-ca.pem"}, "local issuer", id="another-ca"),
        pytest.param("localhost", None, "local issuer", id="system-cas-only"),
        pytest.param("127.0.0.1", {"ca_file": "ca.pem"}, "IP address mismatch", id="ip-not-in-cert"),
        pytest.param(
            "127.0.0.1", {"ca_file": "ca.pem", "server_name": "wrong.internal"}, "Hostname mismatch", id="wrong-name"
        ),
    ],
)
async def test_a_certificate_that_does_not_verify_is_refused(
    pki: Pki, tls_upstream: Any, start_gateway: Start, host: str, tls: dict[str, str] | None, why: str
) -> None:
    upstream = await tls_upstream()
    settings = {} if tls is None else {"tls": {k: pki.file(v) if k == "ca_file" else v for k, v in tls.items()}}
    gw = await start_gateway(tls_config(upstream.port, host, **settings))
    status, _, body = await get(gw)
    error, step, message = error_of(body)
    assert (status, error, step) == (502, "bad_gateway", "upstream")
    assert "upstream registry: its TLS certificate was refused" in message and why in message
    assert upstream.scripted.seen == []  # nothing was sent to a server that did not verify


async def test_verify_false_works_and_warns(tls_upstream: Any, start_gateway: Start, logs: LogReader) -> None:
    upstream = await tls_upstream()
    gw = await start_gateway(tls_config(upstream.port, "127.0.0.1", tls={"verify": False}))
    status, _, body = await get(gw)
    assert (status, body) == (200, b"ok")
    warned = [e for e in logs.events() if "tls.verify: false" in str(e.get("event"))]
    assert len(warned) == 1 and warned[0]["upstream"] == "registry" and warned[0]["level"] == "warning"


def test_config_check_warns_about_verify_false(tmp_path: Path) -> None:
    warnings = config_warnings(load_settings(write_config(tmp_path, {"verify": False})))
    assert [w for w in warnings if "tls" in w] == [
        "upstreams.registry.tls.verify: upstream TLS certificate is not verified (tls.verify: false): "
        "anyone on the network path can read and forge its traffic, identity headers included"
    ]


async def test_no_warning_when_verified(pki: Pki, tls_upstream: Any, start_gateway: Start, logs: LogReader) -> None:
    upstream = await tls_upstream()
    await start_gateway(tls_config(upstream.port, tls={"ca_file": pki.file("ca.pem")}))
    assert not [e for e in logs.events() if "tls.verify" in str(e.get("event"))]


# -- mutual TLS -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "client",
    [
        pytest.param({"cert_file": "client.pem", "key_file": "client.key"}, id="cert-and-key"),
        pytest.param({"cert_file": "client-with-key.pem"}, id="key-in-cert-file"),
    ],
)
async def test_a_client_certificate_for_an_upstream_that_requires_one(
    pki: Pki, tls_upstream: Any, start_gateway: Start, client: dict[str, str]
) -> None:
    upstream = await tls_upstream(client_ca=pki.client_ca)
    tls = {"ca_file": pki.file("ca.pem"), **{k: pki.file(v) for k, v in client.items()}}
    gw = await start_gateway(tls_config(upstream.port, tls=tls))
    status, _, body = await get(gw)
    assert (status, body) == (200, b"ok")


@pytest.mark.parametrize("max_version", ["1.2", None])
async def test_without_a_client_certificate_the_upstream_refuses(
    pki: Pki, tls_upstream: Any, start_gateway: Start, max_version: str | None
) -> None:
    upstream = await tls_upstream(client_ca=pki.client_ca, max_version=max_version)
    gw = await start_gateway(tls_config(upstream.port, tls={"ca_file": pki.file("ca.pem")}))
    status, _, body = await get(gw)
    error, step, message = error_of(body)
    assert (status, error, step) == (502, "bad_gateway", "upstream")
    assert upstream.scripted.seen == []
    if max_version == "1.2":  # refused in the handshake (by an alert, or by a close: asyncio's way)
        assert "TLS handshake" in message and "client certificate (tls.cert_file)" in message


# -- WebSockets -------------------------------------------------------------------------------------
async def test_a_websocket_through_a_wss_upstream(pki: Pki, start_gateway: Start) -> None:
    sni: list[str | None] = []

    async def events(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"path": request.path, "tls": request.secure})
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get(EVENTS, events)
    context = server_context(pki)
    context.sni_callback = recording(sni)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        tls = {"ca_file": pki.file("ca.pem"), "server_name": "registry.internal"}
        gw = await start_gateway(with_events(tls_config(port, "127.0.0.1", tls=tls)))
        await gw.team("platform", ["read:apis"])
        token, _ = await gw.token("platform", ["read:apis"])
        ws = await gw.session.ws_connect(gw.url + EVENTS, headers=gw.auth(token))
        assert await ws.receive_json(timeout=5) == {"path": EVENTS, "tls": True}
        for text in ("ping", "x" * 300_000):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=10) == text
        await ws.close()
        assert sni == ["registry.internal"]
    finally:
        await runner.cleanup()


# -- the cap on connections -------------------------------------------------------------------------
def held(release: asyncio.Event) -> Reply:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(OK)

    return reply


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not condition():
            await asyncio.sleep(0.01)


async def test_max_connections_makes_the_third_request_wait(
    pki: Pki, tls_upstream: Any, start_gateway: Start
) -> None:
    release = asyncio.Event()
    upstream = await tls_upstream(held(release))
    tls = {"ca_file": pki.file("ca.pem")}
    gw = await start_gateway(tls_config(upstream.port, tls=tls, max_connections=2, pool_timeout="60s"))
    requests = [asyncio.create_task(get(gw)) for _ in range(3)]
    await until(lambda: len(upstream.scripted.seen) == 2)
    [pool] = gw.runtime.forwarder.pools.values()
    await until(lambda: len(pool.limit.waiters) == 1)
    samples = await scrape(gw)
    in_use = value(samples, "tokenward_upstream_connections", worker="0", upstream="registry", state="in_use")
    assert in_use == 2
    assert value(samples, "tokenward_upstream_waiting", worker="0", upstream="registry") == 1
    assert upstream.open == 2 and not any(task.done() for task in requests)
    release.set()
    assert [status for status, _, _ in await asyncio.gather(*requests)] == [200, 200, 200]
    # the third went out on a connection one of the first two gave back: never a third one
    assert (upstream.most, upstream.scripted.connections, len(upstream.scripted.seen)) == (2, 2, 3)


async def test_no_connection_free_within_pool_timeout_is_a_503(
    pki: Pki, tls_upstream: Any, start_gateway: Start
) -> None:
    release = asyncio.Event()
    upstream = await tls_upstream(held(release))
    tls = {"ca_file": pki.file("ca.pem")}
    gw = await start_gateway(tls_config(upstream.port, tls=tls, max_connections=2, pool_timeout="200ms"))
    holders = [asyncio.create_task(get(gw)) for _ in range(2)]
    await until(lambda: len(upstream.scripted.seen) == 2)
    status, headers, body = await get(gw)  # the holders hold until released
    error, step, message = error_of(body)
    assert (status, error, step) == (503, "upstream_busy", "upstream")
    assert "all 2 connections (max_connections)" in message and "pool_timeout" in message
    assert headers["Retry-After"] == "1"
    release.set()
    assert [status for status, _, _ in await asyncio.gather(*holders)] == [200, 200]
    assert (upstream.most, upstream.scripted.connections, len(upstream.scripted.seen)) == (2, 2, 2)
    [pool] = gw.runtime.forwarder.pools.values()
    assert (pool.limit.open, len(pool.limit.waiters)) == (2, 0)  # both idle now, nobody queued


async def test_waiters_are_served_in_order_and_none_is_lost(
    pki: Pki, tls_upstream: Any, start_gateway: Start
) -> None:
    """Twenty requests through one connection: each waits its turn, all are answered, and
    the upstream never sees a second connection."""
    upstream = await tls_upstream()
    tls = {"ca_file": pki.file("ca.pem")}
    gw = await start_gateway(tls_config(upstream.port, tls=tls, max_connections=1, pool_timeout="60s"))
    results = await asyncio.gather(*(get(gw) for _ in range(20)))
    assert [status for status, _, _ in results] == [200] * 20
    assert (upstream.most, upstream.scripted.connections, len(upstream.scripted.seen)) == (1, 1, 20)


# -- reload ------------------------------------------------------------------------------------------
async def test_reload_builds_new_contexts_and_keeps_plain_pools(
    pki: Pki, tls_upstream: Any, upstream: int, start_gateway: Start, tmp_path: Path
) -> None:
    secure = await tls_upstream()
    config = tls_config(secure.port, tls={"ca_file": pki.file("ca.pem")})
    config["upstreams"]["plain"] = {"url": f"http://127.0.0.1:{upstream}", "max_connections": 5}
    config["routes"].append({"methods": ["GET"], "path": "/plain", "upstream": "plain", "public": True})
    gw = await start_gateway(config)
    assert (await get(gw))[0] == 200 and (await get(gw, "/plain"))[0] == 200
    forwarder = gw.runtime.forwarder
    plain = next(pool for pool in forwarder.pools.values() if pool.name == "plain")

    def reload(ca_file: str, max_connections: int) -> None:
        changed = copy.deepcopy(config)
        changed["upstreams"]["registry"]["tls"]["ca_file"] = pki.file(ca_file)
        changed["upstreams"]["plain"]["max_connections"] = max_connections
        path = tmp_path / "tokenward.yaml"
        path.write_text(yaml.safe_dump(changed))
        assert gw.runtime.reload(str(path))

    reload("other-ca.pem", 7)  # as if the upstream's CA had been rotated away
    status, _, body = await get(gw)
    assert status == 502 and "certificate was refused" in error_of(body)[2]
    assert plain.limit.maximum == 7 and plain in forwarder.pools.values()  # kept, with its new cap
    reload("ca.pem", 5)
    assert (await get(gw))[0] == 200
    assert sorted(pool.name for pool in forwarder.pools.values()) == ["plain", "registry"]  # old ones retired


async def test_the_config_watcher_reloads_when_a_tls_file_changes(
    pki: Pki, tls_upstream: Any, redis_url: str, tmp_path: Path
) -> None:
    """A rotated CA file (relative to the config's folder) is read anew without a signal."""
    upstream = await tls_upstream()
    (tmp_path / "upstream-ca.pem").write_bytes((pki.dir / "other-ca.pem").read_bytes())  # not yet rotated
    path = write_yaml(tmp_path, tls_config(upstream.port, tls={"ca_file": "upstream-ca.pem"}))
    server = Server(load_settings(path), redis_url=redis_url, config_path=str(path), shutdown_timeout=1.0)
    runtime = await server.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def status() -> int:
                async with session.get(f"http://127.0.0.1:{server.proxy_port}/health") as response:
                    return response.status

            assert await status() == 502
            server.watch_config(interval=0.05)
            await asyncio.sleep(0.1)  # the watcher has taken its first look
            (tmp_path / "upstream-ca.pem").write_bytes(pki.ca.cert_pem.bytes())  # the rotation
            await until(lambda: runtime.reloads == 1)
            assert await status() == 200
            assert runtime.reloads == 1  # only the one change: no reload loop
    finally:
        await server.stop()


# -- config errors ------------------------------------------------------------------------------------
def write_config(tmp_path: Path, tls: dict[str, Any], url: str = "https://registry.internal") -> Path:
    config = base_config(1)
    config["upstreams"]["registry"] = {"url": url, "tls": tls}
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"ca_file": "missing.pem"}, "upstreams.registry.tls.ca_file: cannot read {dir}/missing.pem: No such file"),
        ({"ca_file": "not-pem.pem"}, "upstreams.registry.tls.ca_file: {dir}/not-pem.pem holds no CA certificate"),
        ({"ca_file": "bad-pem.pem"}, "upstreams.registry.tls.ca_file: {dir}/bad-pem.pem: not a usable CA"),
        ({"ca_file": "."}, "upstreams.registry.tls.ca_file: cannot read {dir}: Is a directory"),
        ({"key_file": "client.key"}, "upstreams.registry.tls.key_file: needs cert_file"),
        ({"cert_file": "client.pem"}, "upstreams.registry.tls.cert_file: {dir}/client.pem holds no usable private key"),
        (
            {"cert_file": "client.pem", "key_file": "server.key"},
            "upstreams.registry.tls.key_file: the private key does not belong to the certificate",
        ),
        ({"cert_file": "client.pem", "key_file": "ca.pem"}, "upstreams.registry.tls.key_file: {dir}/ca.pem holds no private key"),
        ({"cert_file": "client.pem", "key_file": "encrypted.key"}, "upstreams.registry.tls.key_file: the private key is encrypted"),
        ({"verify": False, "ca_file": "ca.pem"}, "upstreams.registry.tls.ca_file: has no use with verify: false"),
        ({"server_name": "10.0.0.5"}, "upstreams.registry.tls.server_name: '10.0.0.5' is an IP address"),
        ({"server_name": "bad name"}, "upstreams.registry.tls.server_name: 'bad name' is not a host name"),
        ({"min_version": 1.1}, "upstreams.registry.tls.min_version: 1.1 is not allowed"),
        ({"verify": "no"}, "upstreams.registry.tls.verify: 'no' is not allowed"),
        ({"cipher": "x"}, "upstreams.registry.tls.cipher: unknown key"),
    ],
)
def test_bad_tls_settings_are_config_errors_at_their_location(
    pki: Pki, tmp_path: Path, tls: dict[str, Any], problem: str
) -> None:
    encrypted_key(pki)
    for name in ("ca.pem", "client.pem", "client.key", "server.key", "not-pem.pem", "bad-pem.pem", "encrypted.key"):
        (tmp_path / name).write_bytes((pki.dir / name).read_bytes())
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, tls))  # relative file names: from the config's folder
    expected = problem.format(dir=tmp_path.resolve())
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def encrypted_key(pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    path = pki.dir / "encrypted.key"
    if not path.exists():
        key = serialization.load_pem_private_key((pki.dir / "client.key").read_bytes(), password=None)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )


def test_tls_on_a_plain_http_upstream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, {"verify": True}, url="http://127.0.0.1:9000"))
    assert "upstreams.registry.tls: applies to an https:// url only" in caught.value.problems


def test_every_bad_upstream_is_reported_together(pki: Pki, tmp_path: Path) -> None:
    config = base_config(1)
    config["upstreams"] = {
        "one": {"url": "https://one.internal", "tls": {"ca_file": str(tmp_path / "gone.pem")}},
        "two": {"url": "https://two.internal", "tls": {"cert_file": pki.file("client.pem"), "min_version": "1.0"}},
        "registry": {"url": "https://registry.internal", "max_connections": 0, "pool_timeout": "soon"},
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, config))
    located = sorted(p.split(":", 1)[0] for p in caught.value.problems)
    assert located == [
        "upstreams.one.tls.ca_file",
        "upstreams.registry.max_connections",
        "upstreams.registry.pool_timeout",
        "upstreams.two.tls.cert_file",
        "upstreams.two.tls.min_version",
    ]


def write_yaml(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_defaults_and_good_settings(pki: Pki, tmp_path: Path) -> None:
    config = base_config(1)
    config["upstreams"]["registry"] = {"url": "http://127.0.0.1:9000"}
    config["upstreams"]["secure"] = {
        "url": "https://10.0.0.5:8443",
        "tls": {"ca_file": pki.file("ca.pem"), "server_name": "Registry.Internal.", "min_version": 1.3},
    }
    config["upstreams"]["system"] = {"url": "https://registry.example"}
    settings = load_settings(write_yaml(tmp_path, config))
    plain, secure, system = (settings.upstreams[n] for n in ("registry", "secure", "system"))
    assert (plain.max_connections, plain.pool_timeout, plain.ssl_context, plain.tls.verify) == (100, 5.0, None, True)
    assert secure.tls.server_name == "registry.internal" and secure.tls.min_version == "1.3"
    assert secure.ssl_context is not None and secure.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert secure.ssl_context.verify_mode == ssl.CERT_REQUIRED and secure.ssl_context.check_hostname
    assert system.ssl_context is not None and system.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert "ssl_context" not in repr(secure)
