"""Tracing with OpenTelemetry: the `otel` extra (`pip install 'tokenward[otel]'`), imported
only when tracing is on (gateway/tracing.py decides).

Each request on the gateway listener gets one SERVER span, named `METHOD /route/{template}`
once the route is known, with the decision (`tokenward.step`, `tokenward.decision`,
`tokenward.reason`), the status, the route and the caller (`tokenward.token_id`, org, team,
service account: never the secret) as attributes; the upstream call is a CLIENT span under
it, whose W3C `traceparent` (and `tracestate`) replace whatever the client sent in the
upstream request's headers.

A request's span continues an inbound `traceparent` only as `tracing.inbound_context` allows
(default: from `trusted_proxies`); from anyone else the inbound context is recorded as a
span link and the request starts a trace of its own, so no client picks the trace id, forces
sampling or attaches itself to someone else's trace. A span that starts the trace gives the
request its id (the trace id, 32 hex digits) unless a trusted proxy sent X-Request-Id; the
audit event always carries `trace_id`.

The export is configured by the standard variables: OTEL_TRACES_EXPORTER (`otlp`, the
default; `console`; `none`; or any installed exporter's entry point),
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (`http/protobuf`, the default; `grpc` needs
opentelemetry-exporter-otlp-proto-grpc), OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS,
_TIMEOUT, _CERTIFICATE, OTEL_SERVICE_NAME (default `tokenward`), OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_*. Spans are exported in batches from the SDK's own
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from tokenward.gateway.audit import Redactor
from tokenward.gateway.bounded import BoundedMap
from tokenward.gateway.exchange import Exchange
from tokenward.gateway.refusal import Step
from tokenward.gateway.routes import HTTP_METHODS
from tokenward.gateway.settings import TracingSettings, Upstream

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
SCOPE = "tokenward"


def _version() -> str:
    try:
        return importlib.metadata.version("tokenward")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


class OtelTracing:
    """The process's tracer (one per runtime): starts each request's spans."""

    def __init__(
        self, provider: TracerProvider, settings: TracingSettings, exporter_names: tuple[str, ...] = ()
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE, VERSION)
        self.inbound = settings.inbound_context
        self.exporter_names = exporter_names
        self.propagator = TraceContextTextMapPropagator()
        self.redact = Redactor()
        self._addresses: BoundedMap[str, tuple[str, int]] = BoundedMap(1024)

    def start(self, ex: Exchange) -> None:
        request = ex.request
        headers = request.headers
        parent = Context()  # a trace of its own, unless an inbound context may be continued
        continued = False
        links: list[Link] | None = None
        if "traceparent" in headers:
            inbound = self.inbound_context(headers.getall("traceparent"), headers.getall("tracestate", []))
            if inbound is not None:
                if self.inbound == "all" or (self.inbound == "trusted_proxies" and ex.trusted):
                    parent, continued = inbound, True
                else:
                    links = [Link(trace.get_current_span(inbound).get_span_context())]
        method = ex.method if ex.method in HTTP_METHODS else "_OTHER"
        attributes: dict[str, AttributeValue] = {"http.request.method": method, "url.scheme": request.scheme}
        if ex.peer:
            attributes["network.peer.address"] = ex.peer
        span = self.tracer.start_span(
            method if method != "_OTHER" else "HTTP",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            links=links,
        )
        trace_id = format_trace_id(span.get_span_context().trace_id)
        if not continued and not (ex.trusted and headers.get("X-Request-Id") == ex.request_id):
            ex.request_id = trace_id  # this span starts the trace: one id for both
        ex.trace = OtelTrace(self, span, trace_id)

    def inbound_context(self, parents: list[str], states: list[str]) -> Context | None:
        """The W3C trace context the client sent, if it is exactly one valid `traceparent`
        (with its `tracestate`, which may come in several headers)."""
        if len(parents) != 1:
            return None
        carrier = {"traceparent": parents[0]}
        if states:
            carrier["tracestate"] = ",".join(states)
        context = self.propagator.extract(carrier)
        return context if trace.get_current_span(context).get_span_context().is_valid else None

    def address(self, upstream: Upstream) -> tuple[str, int]:
        found = self._addresses.get(upstream.url)
        if found is None:
            parts = urlsplit(upstream.url)
            found = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            self._addresses.put(upstream.url, found)
        return found

    async def close(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # the last export may wait on the network


class OtelTrace:
    """One request's spans: the server span, and the upstream call's client span."""

    __slots__ = ("call", "owner", "span", "trace_id")

    def __init__(self, owner: OtelTracing, span: Span, trace_id: str) -> None:
        self.owner = owner
        self.span = span
        self.trace_id = trace_id
        self.call: Span | None = None

    def call_upstream(self, ex: Exchange, upstream: Upstream) -> None:
        host, port = self.owner.address(upstream)
        method = ex.method if ex.method in HTTP_METHODS else "_OTHER"
        self.call = self.owner.tracer.start_span(
            method if method != "_OTHER" else "HTTP",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": host,
                "server.port": port,
                "url.full": upstream.url + self.owner.redact(ex.path),  # the authorized path, no query
                "tokenward.upstream": upstream.name,
            },
        )

    def inject(self, headers: list[tuple[str, str]]) -> None:
        headers[:] = [item for item in headers if item[0].lower() not in TRACE_HEADERS]
        carrier: dict[str, str] = {}
        self.owner.propagator.inject(carrier, context=trace.set_span_in_context(self.call or self.span))
        headers.extend(carrier.items())

    def finish(self, ex: Exchange) -> None:
        redact = self.owner.redact
        call = self.call
        if call is not None:
            self.call = None
            _finish_call(call, ex, redact)
        span = self.span
        method = ex.method if ex.method in HTTP_METHODS else "_OTHER"
        template = ex.route.partition(" ")[2] if ex.route else ""
        name = method if method != "_OTHER" else "HTTP"
        span.update_name(f"{name} {template}" if template else name)
        path = ex.path if ex.target is not None else ex.path.partition("?")[0]
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "http.response.status_code": ex.status,
            "url.path": redact(path),
            "tokenward.request_id": ex.request_id,
            "tokenward.decision": "allowed" if ex.allowed else "denied",
            "tokenward.step": str(ex.step),
            "tokenward.reason": redact(ex.reason),
            "tokenward.mode": ex.mode,
        }
        if template:
            attributes["http.route"] = template
        if ex.client_ip:
            attributes["client.address"] = ex.client_ip
        if ex.upstream:
            attributes["tokenward.upstream"] = ex.upstream
        principal = ex.principal
        if principal is not None:
            token = principal.token
            attributes["tokenward.token_id"] = token.id
            attributes["tokenward.org"] = token.org
            if token.team:
                attributes["tokenward.team"] = token.team
            if principal.service_account:
                attributes["tokenward.service_account"] = principal.service_account
        aborted = _aborted(ex)
        if aborted:
            attributes["tokenward.aborted"] = aborted
            attributes["tokenward.bytes_sent"] = ex.bytes_sent
        span.set_attributes(attributes)
        if ex.status >= 500 or aborted in ("upstream", "shutdown"):
            span.set_status(Status(StatusCode.ERROR, redact(ex.reason)))
        span.end()


def _aborted(ex: Exchange) -> str:
    if ex.shutdown_aborted:
        return "shutdown"
    if ex.upstream_aborted:
        return "upstream"
    return "client" if ex.client_aborted else ""


def _finish_call(call: Span, ex: Exchange, redact: Redactor) -> None:
    """The upstream call's outcome: its status, or why there was none."""
    if ex.step == Step.UPSTREAM and not ex.sent_status:  # no answer: refused, timed out, or cut
        call.set_attribute("error.type", "timeout" if ex.status == 504 else "upstream_failed")
        call.set_status(Status(StatusCode.ERROR, redact(ex.reason)))
    else:
        status = ex.sent_status or ex.status
        call.set_attribute("http.response.status_code", status)
        if ex.upstream_aborted:
            call.set_attribute("error.type", "response_cut_off")
            call.set_status(Status(StatusCode.ERROR, redact(ex.reason)))
        elif status >= 400:
            call.set_attribute("error.type", str(status))
            call.set_status(Status(StatusCode.ERROR))
    call.end()


def open_otel(settings: TracingSettings, environ: Mapping[str, str] | None = None) -> OtelTracing:
    """The tracer from the OTEL_* environment (see the module's doc). ValueError: an exporter
    or protocol that cannot be used."""
    environ = os.environ if environ is None else environ
    exporters = span_exporters(environ)
    resource = Resource({SERVICE_VERSION: VERSION}).merge(Resource.create())
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "tokenward"}))
    # the sampler: OTEL_TRACES_SAMPLER(_ARG); shut down by the runtime's close, not atexit
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for _, exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    return OtelTracing(provider, settings, tuple(name for name, _ in exporters))


def span_exporters(environ: Mapping[str, str]) -> list[tuple[str, SpanExporter]]:
    """OTEL_TRACES_EXPORTER's exporters (none for `none`: spans and context only)."""
    found: list[tuple[str, SpanExporter]] = []
    for item in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = item.strip().lower()
        if name in ("", "none"):
            continue
        if name == "otlp":
            found.append((name, _otlp_exporter(environ)))
        elif name == "console":
            found.append((name, ConsoleSpanExporter()))
        else:
            points = importlib.metadata.entry_points(group="opentelemetry_traces_exporter", name=name)
            if not points:
                raise ValueError(
                    f"OTEL_TRACES_EXPORTER: no span exporter named {name!r} is installed "
                    "(built in: otlp, console, none)"
                )
            exporter = next(iter(points)).load()()
            if not isinstance(exporter, SpanExporter):
                raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not a span exporter")
            found.append((name, exporter))
    return found


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"  # the specification's default (the Python SDK's own is grpc)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            module = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc installed "
                "beside tokenward[otel] (or use http/protobuf)"
            ) from None
        exporter = module.OTLPSpanExporter()
        assert isinstance(exporter, SpanExporter)
        return exporter
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported: use http/protobuf or grpc")
