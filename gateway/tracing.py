"""Tracing: when it is on, and the interface the request path calls.

Off by default. `tracing.enabled: true` turns it on; `auto` (the default) turns it on when
the environment asks for traces the standard way (OTEL_TRACES_EXPORTER other than `none`,
or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED=true
turns it off whatever the config says.

Off, `Runtime.tracing` is None: the pipeline checks that once per request, `Exchange.trace`
stays None (one more check each in the forward and audit steps), and nothing imports
OpenTelemetry. On, `open_tracing` imports `tokenward.gateway.otel` (the `otel` extra), whose
object starts each request's spans (`Tracing.start`) and hands the exchange its
`RequestTrace` (gateway/exchange.py).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Protocol

import structlog

from tokenward.gateway.exchange import Exchange
from tokenward.gateway.settings import ConfigError, TracingSettings

log = structlog.get_logger("tokenward")

# the variables that ask for traces when `tracing.enabled` is auto
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Tracing(Protocol):
    """What the pipeline calls when tracing is on (the implementation: gateway/otel.py)."""

    def start(self, ex: Exchange) -> None:
        """The edge: the request's server span; sets `ex.trace` (and `ex.request_id` when
        this span starts the trace and no trusted proxy gave an id)."""

    async def close(self) -> None:
        """Export what is still buffered, then stop."""


def tracing_wanted(settings: TracingSettings, environ: Mapping[str, str]) -> bool:
    """Is tracing on, given the `tracing` section and the OTEL_* environment?"""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if settings.enabled is not None:
        return settings.enabled
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in OTLP_ENDPOINTS)


def open_tracing(settings: TracingSettings, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The process's tracing, or None when it is off. Raises ConfigError when the OTEL_*
    environment names something that cannot be used (an exporter that is not installed)."""
    environ = os.environ if environ is None else environ
    if not tracing_wanted(settings, environ):
        return None
    try:
        importlib.metadata.distribution("opentelemetry-sdk")
    except importlib.metadata.PackageNotFoundError:
        if settings.enabled:  # load_settings refuses this already; a config built otherwise
            raise ConfigError(["tracing.enabled: tracing needs OpenTelemetry: pip install 'tokenward[otel]'"]) from None
        log.warning("the OTEL_* environment asks for traces but OpenTelemetry is not installed "
                    "(pip install 'tokenward[otel]'); tracing is off")
        return None
    from tokenward.gateway.otel import open_otel

    try:
        tracing = open_otel(settings, environ)
    except ValueError as exc:
        raise ConfigError([str(exc)], "environment") from None
    log.info("tracing on", inbound_context=settings.inbound_context, exporters=tracing.exporter_names)
    return tracing
