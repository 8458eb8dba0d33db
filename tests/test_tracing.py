"""Tracing (issue 13 item 4): OpenTelemetry spans per request, the upstream call as a child
span, W3C trace context in and out, the request id tied to the trace, OTLP export by the
standard OTEL_* variables, and nothing of it when tracing is off.

In-process gateways record spans with the SDK's InMemorySpanExporter; one test runs
`tokenward serve` as a user does, exporting over OTLP/HTTP to a real receiver.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from tests.helpers.gateway import APIS, ROOT, Gateway, LogReader, base_config, get
from tests.helpers.process import (
    bootstrap_admin,
    env_for_subprocess,
    post_json,
    serve_config,
    start_serve,
    stop,
    wait_ready,
)
from tests.helpers.rawhttp import Recorder, raw, request
from tokenward.gateway.embedded import free_port
from tokenward.gateway.otel import OtelTracing
from tokenward.gateway.settings import ConfigError, TracingSettings, settings_from_dict
from tokenward.gateway.tracing import open_tracing, tracing_wanted
from tokenward.server import Server

INBOUND_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INBOUND_SPAN = "00f067aa0ba902b7"
INBOUND = {"traceparent": f"00-{INBOUND_TRACE}-{INBOUND_SPAN}-01", "tracestate": "vendor=opaque"}

Start = Callable[..., Awaitable[tuple[Gateway, InMemorySpanExporter]]]


@pytest.fixture
async def start_traced(redis_url: str) -> AsyncIterator[Start]:
    """Start the real gateway with tracing on, recording its spans in memory."""
    started: list[Gateway] = []

    async def start(raw: dict[str, Any]) -> tuple[Gateway, InMemorySpanExporter]:
        settings = settings_from_dict(copy.deepcopy(raw), "test")
        exporter = InMemorySpanExporter()
        provider = TracerProvider(
            resource=Resource.create({"service.name": "tokenward-test"}), sampler=ALWAYS_ON, shutdown_on_exit=False
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        server = Server(
            settings, redis_url=redis_url, shutdown_timeout=1.0, tracing=OtelTracing(provider, settings.tracing)
        )
        runtime = await server.start()
        gw = Gateway(
            server,
            runtime,
            f"http://127.0.0.1:{server.proxy_port}",
            f"http://127.0.0.1:{server.admin_port}",
            aiohttp.ClientSession(),
        )
        started.append(gw)
        return gw, exporter

    yield start
    for gw in started:
        await gw.session.close()
        await gw.server.stop()


def by_kind(exporter: InMemorySpanExporter) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    spans = exporter.get_finished_spans()
    return [s for s in spans if s.kind == SpanKind.SERVER], [s for s in spans if s.kind == SpanKind.CLIENT]


def upstream_headers(recorder: Recorder) -> dict[str, list[str]]:
    [seen] = recorder.seen
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def traceparent(value: str) -> tuple[str, str, bool]:
    """(trace id, parent id, sampled) of a W3C traceparent."""
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00" and len(flags) == 2
    return trace_id, parent_id, bool(int(flags, 16) & 1)


async def platform(gw: Gateway, scopes: tuple[str, ...] = ("read:apis",)) -> tuple[str, str]:
    await gw.team("platform", ["read:apis", "write:apis"])
    return await gw.token("platform", list(scopes))


# -- the spans of one request -------------------------------------------------------------------
async def test_a_forwarded_request_is_a_server_span_with_the_upstream_call_under_it(
    start_traced: Start, recorder: Recorder, logs: LogReader
) -> None:
    gw, exporter = await start_traced(base_config(recorder.port))
    token, token_id = await platform(gw)
    status, headers, _ = await get(gw, APIS, headers=gw.auth(token))
    assert status == 200
    [server], [client] = by_kind(exporter)
    trace_id = format_trace_id(server.context.trace_id)

    assert server.name == "GET /orgs/{org}/teams/{team}/apis"
    assert server.parent is None  # the client sent no trace context: a trace of its own
    assert server.attributes is not None
    assert {k: server.attributes.get(k) for k in (
        "http.request.method", "http.route", "http.response.status_code", "url.path",
        "tokenward.step", "tokenward.decision", "tokenward.token_id", "tokenward.org",
        "tokenward.team", "tokenward.upstream", "tokenward.request_id", "client.address",
    )} == {
        "http.request.method": "GET",
        "http.route": "/orgs/{org}/teams/{team}/apis",
        "http.response.status_code": 200,
        "url.path": APIS,
        "tokenward.step": "forward",
        "tokenward.decision": "allowed",
        "tokenward.token_id": token_id,
        "tokenward.org": "acme",
        "tokenward.team": "platform",
        "tokenward.upstream": "registry",
        "tokenward.request_id": trace_id,
        "client.address": "127.0.0.1",
    }  # fmt: skip
    assert server.status.status_code == StatusCode.UNSET

    assert client.name == "GET"
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert client.attributes is not None
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == recorder.port
    assert client.attributes["url.full"] == f"http://127.0.0.1:{recorder.port}{APIS}"

    # the upstream got the client span's context; the request id is the trace id
    sent = upstream_headers(recorder)
    [value] = sent["traceparent"]
    assert traceparent(value) == (trace_id, format_span_id(client.context.span_id), True)
    assert "tracestate" not in sent
    assert headers["X-Request-Id"] == trace_id == sent["x-request-id"][0]
    [event] = logs.events("request.allowed")
    assert event["trace_id"] == trace_id and event["request_id"] == trace_id

    # never the secret, nor the Authorization header, in any span
    secret = token[len("tw_sat_") + 12 :]
    for span in (server, client):
        text = repr(dict(span.attributes or {})) + span.name
        assert secret not in text and "Bearer" not in text


@pytest.mark.parametrize(
    ("scopes", "auth", "status", "step"),
    [
        (("read:apis",), None, 401, "credential"),
        (("read:apis",), "tw_sat_" + "0" * 50, 401, "credential"),  # checksum
        (("read:specs",), "token", 403, "scope"),
    ],
)
async def test_refused_requests_get_a_span_with_the_step(
    start_traced: Start,
    recorder: Recorder,
    logs: LogReader,
    scopes: tuple[str, ...],
    auth: str | None,
    status: int,
    step: str,
) -> None:
    gw, exporter = await start_traced(base_config(recorder.port))
    token, token_id = await platform(gw, scopes)
    headers = {} if auth is None else {"Authorization": f"Bearer {token if auth == 'token' else auth}"}
    got, _, _ = await get(gw, APIS, headers=headers)
    assert got == status
    [server], clients = by_kind(exporter)
    assert clients == [] and recorder.seen == []  # nothing went upstream
    assert server.name == "GET /orgs/{org}/teams/{team}/apis"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == status
    assert server.attributes["tokenward.step"] == step
    assert server.attributes["tokenward.decision"] == "denied"
    assert server.status.status_code == StatusCode.UNSET  # a 4xx is the client's error, not ours
    if status == 403:
        assert server.attributes["tokenward.token_id"] == token_id
    else:
        assert "tokenward.token_id" not in server.attributes
    [event] = logs.events("request.denied")
    assert event["trace_id"] == format_trace_id(server.context.trace_id)


async def test_an_unmatched_path_is_a_span_named_by_its_method(start_traced: Start, recorder: Recorder) -> None:
    gw, exporter = await start_traced(base_config(recorder.port))
    status, _, _ = await get(gw, "/nowhere?api_key=hunter2")
    assert status == 404
    [server], _ = by_kind(exporter)
    assert server.name == "GET"
    assert server.attributes is not None
    assert server.attributes["tokenward.step"] == "route"
    assert "http.route" not in server.attributes
    assert "hunter2" not in repr(dict(server.attributes))


async def test_an_unreachable_upstream_is_an_error_on_both_spans(start_traced: Start) -> None:
    gw, exporter = await start_traced(base_config(free_port()))  # nothing listens there
    token, _ = await platform(gw)
    status, _, _ = await get(gw, APIS, headers=gw.auth(token))
    assert status == 502
    [server], [client] = by_kind(exporter)
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes is not None and client.attributes["error.type"] == "upstream_failed"
    assert "http.response.status_code" not in client.attributes
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["tokenward.step"] == "upstream"
    assert server.attributes["http.response.status_code"] == 502


async def test_a_forward_auth_answer_is_a_span_of_the_request_asked_about(
    start_traced: Start, recorder: Recorder
) -> None:
    config = base_config(recorder.port)
    config["trusted_proxies"] = ["127.0.0.1/32"]
    gw, exporter = await start_traced(config)
    token, token_id = await platform(gw)
    asked = {**gw.auth(token), "X-Original-Method": "GET", "X-Original-URI": APIS, **INBOUND}
    status, _, _ = await get(gw, "/_tokenward/verify", headers=asked)
    assert status == 200
    [server], clients = by_kind(exporter)
    assert clients == [] and recorder.seen == []
    assert server.name == "GET /orgs/{org}/teams/{team}/apis"
    assert format_trace_id(server.context.trace_id) == INBOUND_TRACE  # the proxy is trusted
    assert server.attributes is not None
    assert server.attributes["tokenward.mode"] == "forward_auth"
    assert server.attributes["tokenward.step"] == "verified"
    assert server.attributes["tokenward.token_id"] == token_id


# -- inbound context: whose trace a request joins -------------------------------------------------
@pytest.mark.parametrize(
    ("trusted_proxies", "inbound_context", "continued"),
    [
        (["10.99.0.0/16"], "trusted_proxies", False),  # the default, from an ordinary client
        (["127.0.0.1/32"], "trusted_proxies", True),  # from a trusted proxy
        (["10.99.0.0/16"], "all", True),
        (["127.0.0.1/32"], "none", False),
    ],
)
async def test_inbound_trace_context_is_continued_only_as_configured(
    start_traced: Start,
    recorder: Recorder,
    trusted_proxies: list[str],
    inbound_context: str,
    continued: bool,
) -> None:
    config = base_config(recorder.port)
    config["trusted_proxies"] = trusted_proxies
    config["tracing"] = {"inbound_context": inbound_context}
    gw, exporter = await start_traced(config)
    token, _ = await platform(gw)
    status, headers, _ = await get(gw, APIS, headers={**gw.auth(token), **INBOUND})
    assert status == 200
    [server], [client] = by_kind(exporter)
    trace_id = format_trace_id(server.context.trace_id)
    sent = upstream_headers(recorder)
    [value] = sent["traceparent"]
    assert traceparent(value) == (trace_id, format_span_id(client.context.span_id), True)
    if continued:
        assert trace_id == INBOUND_TRACE
        assert server.parent is not None and format_span_id(server.parent.span_id) == INBOUND_SPAN
        assert server.links == ()
        assert sent["tracestate"] == ["vendor=opaque"]
        assert headers["X-Request-Id"] != trace_id  # a trace spans many requests: not an id for one
    else:
        assert trace_id != INBOUND_TRACE and server.parent is None
        [link] = server.links
        assert format_trace_id(link.context.trace_id) == INBOUND_TRACE
        assert format_span_id(link.context.span_id) == INBOUND_SPAN
        assert "tracestate" not in sent  # the client's vendor state does not travel on our trace
        assert headers["X-Request-Id"] == trace_id


async def test_a_trusted_request_id_stays_the_request_id(start_traced: Start, recorder: Recorder) -> None:
    config = base_config(recorder.port)
    config["trusted_proxies"] = ["127.0.0.1/32"]
    gw, exporter = await start_traced(config)
    token, _ = await platform(gw)
    rid = "b2c4e6a8d0f2b4c6d8e0f2a4c6e8a0b2"
    status, headers, _ = await get(gw, APIS, headers={**gw.auth(token), "X-Request-Id": rid})
    assert status == 200 and headers["X-Request-Id"] == rid
    [server], _ = by_kind(exporter)
    assert server.attributes is not None and server.attributes["tokenward.request_id"] == rid


@pytest.mark.parametrize(
    "bad",
    [
        ["traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01"],  # zero trace id
        ["traceparent: garbage"],
        [f"traceparent: 00-{INBOUND_TRACE}-{INBOUND_SPAN}-01", f"traceparent: 00-{'1' * 32}-{'2' * 16}-01"],
    ],
)
async def test_an_invalid_or_repeated_traceparent_is_ignored(
    start_traced: Start, recorder: Recorder, bad: list[str]
) -> None:
    config = base_config(recorder.port)
    config["tracing"] = {"inbound_context": "all"}
    gw, exporter = await start_traced(config)
    token, _ = await platform(gw)
    port = gw.server.proxy_port
    status, _, _ = await raw(port, request(APIS, f"127.0.0.1:{port}", token, *bad))
    assert status == 200
    [server], [client] = by_kind(exporter)
    assert server.parent is None and server.links == ()
    [value] = upstream_headers(recorder)["traceparent"]  # only ours reaches the upstream
    assert traceparent(value)[:2] == (format_trace_id(server.context.trace_id), format_span_id(client.context.span_id))


# -- on and off ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("enabled", "environ", "wanted"),
    [
        (None, {}, False),  # off by default
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "console"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        (True, {}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        (True, {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_when_tracing_is_on(enabled: bool | None, environ: dict[str, str], wanted: bool) -> None:
    assert tracing_wanted(TracingSettings(enabled=enabled), environ) is wanted


@pytest.mark.parametrize(
    ("tracing", "problem"),
    [
        ({"enabled": "yes"}, "tracing.enabled: 'yes' is not allowed: expected true, false or auto"),
        ({"inbound_context": "everyone"}, "tracing.inbound_context: 'everyone' is not allowed"),
        ({"exporter": "otlp"}, "tracing.exporter: unknown key"),
    ],
)
def test_the_tracing_section_is_checked(tracing: dict[str, Any], problem: str) -> None:
    config = base_config(8080)
    config["tracing"] = tracing
    with pytest.raises(ConfigError) as raised:
        settings_from_dict(config)
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


def test_the_tracing_section_decodes() -> None:
    config = base_config(8080)
    assert settings_from_dict(config).tracing == TracingSettings(enabled=None, inbound_context="trusted_proxies")
    config["tracing"] = {"enabled": "auto", "inbound_context": "none"}
    assert settings_from_dict(config).tracing == TracingSettings(enabled=None, inbound_context="none")
    config["tracing"] = {"enabled": True}
    assert settings_from_dict(config).tracing.enabled is True


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "nosuchexporter"}, "no span exporter named 'nosuchexporter'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not supported"),
    ],
)
def test_an_unusable_otel_environment_stops_the_start(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_tracing(TracingSettings(enabled=True), environ)
    assert problem in str(raised.value)


async def test_the_environment_configures_the_sampler(
    redis_url: str, recorder: Recorder, logs: LogReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_TRACES_SAMPLER=always_off: nothing is recorded, yet the trace context still
    reaches the upstream (unsampled) and the audit event still names the trace."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    config = base_config(recorder.port)
    config["tracing"] = {"enabled": True}
    settings = settings_from_dict(config, "test")
    server = Server(settings, redis_url=redis_url, shutdown_timeout=1.0)
    runtime = await server.start()
    try:
        assert isinstance(runtime.tracing, OtelTracing) and runtime.tracing.exporter_names == ()
        gw = Gateway(server, runtime, f"http://127.0.0.1:{server.proxy_port}", "", aiohttp.ClientSession())
        token, _ = await platform(gw)
        status, headers, _ = await get(gw, APIS, headers=gw.auth(token))
        await gw.session.close()
    finally:
        await server.stop()
    assert status == 200
    [value] = upstream_headers(recorder)["traceparent"]
    trace_id, _, sampled = traceparent(value)
    assert not sampled
    [event] = logs.events("request.allowed")
    assert event["trace_id"] == trace_id == headers["X-Request-Id"]


async def test_tracing_off_leaves_the_request_path_as_it_was(
    start_gateway: Callable[..., Awaitable[Gateway]],
    recorder: Recorder,
    logs: LogReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off (the default, no OTEL_* variables): no tracer, no trace_id in the audit, and the
    client's trace context passes through to the upstream like any other header."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    gw = await start_gateway(base_config(recorder.port))
    assert gw.runtime.tracing is None
    token, _ = await platform(gw)
    status, _, _ = await get(gw, APIS, headers={**gw.auth(token), **INBOUND})
    assert status == 200
    sent = upstream_headers(recorder)
    assert sent["traceparent"] == [INBOUND["traceparent"]] and sent["tracestate"] == ["vendor=opaque"]
    [event] = logs.events("request.allowed")
    assert "trace_id" not in event


NO_OTEL_SCRIPT = textwrap.dedent(
    """
    import sys

    class NoOpenTelemetry:
        # as in the base install: no opentelemetry; remembers which module tried
        tried = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] != "opentelemetry":
                return None
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            self.tried.append(frame.f_globals.get("__name__", "?") if frame is not None else "?")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoOpenTelemetry())

    import asyncio
    import aiohttp
    from tokenward.gateway.records import TeamRecord
    from tokenward.gateway.scopes import parse_scopes
    from tokenward.gateway.settings import settings_from_dict
    from tokenward.server import Server
    from tokenward.service import issue_token
    from tests.helpers.gateway import APIS, base_config

    async def main(redis_url, upstream_port):
        server = Server(settings_from_dict(base_config(upstream_port)), redis_url=redis_url, shutdown_timeout=1.0)
        runtime = await server.start()
        try:
            await runtime.store.create_team(TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "t"))
            token, _ = await issue_token(runtime, org="acme", team="platform", name="t",
                                         scopes=parse_scopes(["read:apis"]), created_by="t")
            async with aiohttp.ClientSession() as session:
                for headers in ({"Authorization": f"Bearer {token}", "traceparent": sys.argv[3]}, {}):
                    async with session.get(f"http://127.0.0.1:{server.proxy_port}{APIS}", headers=headers) as r:
                        await r.read()
                        print(r.status)
        finally:
            await server.stop()
        print(sorted(name for name in sys.modules if name.startswith(("opentelemetry", "tokenward.gateway.otel"))))
        print(sorted({name for name in NoOpenTelemetry.tried if name.startswith("tokenward")}))
        print(len(NoOpenTelemetry.tried) > 0)  # redis-py looked for it

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_tracing_off_never_imports_opentelemetry(redis_url: str, recorder: Recorder) -> None:
    """The base install has no OpenTelemetry: with tracing off, tokenward starts and serves
    requests (allowed, refused, with a traceparent) where it cannot be imported, and no
    tokenward module even tries (redis-py looks for it on its own, and copes)."""
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith("OTEL_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NO_OTEL_SCRIPT, redis_url, str(recorder.port), INBOUND["traceparent"],
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["200", "401", "[]", "[]", "True"]


# -- a real OTLP receiver -------------------------------------------------------------------------
class OtlpReceiver:
    """An OTLP/HTTP trace receiver: protobuf posts to /v1/traces, decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[ExportTraceServiceRequest] = []
        self.runner = web.AppRunner(web.Application())

    async def start(self) -> None:
        app = self.runner.app
        app.router.add_post("/v1/traces", self.receive)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        found = []
        for message in self.requests:
            for resource_spans in message.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


def attributes(pairs: Any) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind)
    return out


SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3


async def test_serve_exports_spans_over_otlp_to_a_real_receiver(
    tmp_path: Path, redis_url: str, recorder: Recorder
) -> None:
    """`tokenward serve` with only OTEL_* variables set (tracing: auto): an allowed and a
    refused request arrive at the receiver as spans with their attributes, the client span
    under the server span, and the upstream saw the same trace id."""
    receiver = OtlpReceiver()
    await receiver.start()
    serve = serve_config(tmp_path, recorder.port, redis={"url": redis_url})
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_SERVICE_NAME="tokenward-e2e",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    admin_token = await bootstrap_admin(serve.path)
    process = await start_serve(serve.path, env=env)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, serve.admin_url + "/readyz", process)
            auth = {"Authorization": f"Bearer {admin_token}"}
            await post_json(session, serve.admin_url + "/v1/orgs/acme/teams", auth,
                            {"name": "platform", "permissions": ["read:apis"]})  # fmt: skip
            issued = await post_json(session, serve.admin_url + "/v1/orgs/acme/teams/platform/tokens", auth,
                                     {"name": "ci", "scopes": ["read:apis"]})  # fmt: skip
            async with session.get(serve.url + APIS, headers={"Authorization": f"Bearer {issued['token']}"}) as r:
                assert r.status == 200
                request_id = r.headers["X-Request-Id"]
            async with session.get(serve.url + APIS) as r:
                assert r.status == 401
    finally:
        assert await stop(process) == 0  # SIGTERM: the runtime's close flushes the last batch
        await receiver.runner.cleanup()
    spans = receiver.spans()
    assert {resource["service.name"] for resource, _ in spans} == {"tokenward-e2e"}
    servers = [span for _, span in spans if span.kind == SPAN_KIND_SERVER]
    clients = [span for _, span in spans if span.kind == SPAN_KIND_CLIENT]
    assert len(servers) == 2 and len(clients) == 1
    allowed = next(s for s in servers if attributes(s.attributes)["tokenward.decision"] == "allowed")
    denied = next(s for s in servers if s is not allowed)
    [client] = clients
    assert allowed.name == denied.name == "GET /orgs/{org}/teams/{team}/apis"
    assert client.trace_id == allowed.trace_id and client.parent_span_id == allowed.span_id
    assert allowed.parent_span_id == b""
    got = attributes(allowed.attributes)
    assert got["tokenward.token_id"] == issued["id"] and got["tokenward.step"] == "forward"
    assert got["http.response.status_code"] == 200 and got["tokenward.request_id"] == request_id
    refused = attributes(denied.attributes)
    assert refused["tokenward.step"] == "credential" and refused["http.response.status_code"] == 401
    [value] = upstream_headers(recorder)["traceparent"]
    assert traceparent(value)[:2] == (allowed.trace_id.hex(), client.span_id.hex())
    assert request_id == allowed.trace_id.hex()
