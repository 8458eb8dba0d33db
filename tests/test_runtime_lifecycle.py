"""One lifecycle (gateway/runtime.py): the runtime's resources open in order and close in
reverse, also when a later step fails; metrics read registered sources; each runtime logs
its audit events to its own output."""

from __future__ import annotations

import asyncio
import copy
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.gateway import LogReader, base_config
from tokenward.gateway.cache import ChangeListener
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.metrics import Metrics
from tokenward.gateway.runtime import Runtime, open_runtime
from tokenward.gateway.settings import Settings, settings_from_dict
from tokenward.gateway.store import Store
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.server import Server

WRITER = "tokenward-log-writer"


def writer_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == WRITER and thread.is_alive())


def runtime_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("tokenward-") and not t.done()]


@pytest.fixture
def pipe_stream() -> Iterator[Any]:
    """A binary file over a pipe: a real descriptor, so the runtime's log output starts a
    writer thread. The read end is drained by nobody: nothing is expected to block on it."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb")
    yield stream
    stream.close()
    os.close(read_fd)


def embedded_settings(upstream: int, tmp_path: Path) -> Settings:
    raw = copy.deepcopy(base_config(upstream))
    raw["data_dir"] = str(tmp_path / "data")
    return settings_from_dict(raw, "test")


def store_answers(data_dir: Path) -> bool:
    try:
        with redis.Redis(unix_socket_path=str(data_dir / "valkey.sock"), socket_timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture
def closed_stores(monkeypatch: pytest.MonkeyPatch) -> list[Store]:
    """Every Store closed from now on (the real close runs)."""
    closed: list[Store] = []
    real_close = Store.close

    async def close(self: Store) -> None:
        closed.append(self)
        await real_close(self)

    monkeypatch.setattr(Store, "close", close)
    return closed


async def test_unreachable_store_closes_what_was_opened(
    upstream: int, pipe_stream: Any, closed_stores: list[Store]
) -> None:
    settings = settings_from_dict(copy.deepcopy(base_config(upstream)), "test")
    before = writer_threads()
    with pytest.raises(StoreUnavailable):
        await Runtime.open(settings, f"redis://127.0.0.1:{free_port()}/0", log_stream=pipe_stream)
    assert writer_threads() == before  # the runtime's log writer thread ended
    assert len(closed_stores) == 1  # the store's connection pool was closed
    assert runtime_tasks() == []


async def test_a_later_step_failing_stops_the_embedded_store(
    upstream: int, tmp_path: Path, pipe_stream: Any, closed_stores: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_settings(upstream, tmp_path)
    started: list[EmbeddedServer] = []
    real_start = EmbeddedServer.start

    def start(self: EmbeddedServer, timeout: float = 10.0) -> None:
        started.append(self)
        real_start(self, timeout)

    async def fail(self: ChangeListener) -> None:
        assert store_answers(settings.data_dir)  # the earlier steps really ran
        raise RuntimeError("the change listener could not start")

    monkeypatch.setattr(EmbeddedServer, "start", start)
    monkeypatch.setattr(ChangeListener, "start", fail)
    before = writer_threads()
    with pytest.raises(RuntimeError, match="change listener"):
        await Runtime.open(settings, log_stream=pipe_stream)
    (embedded,) = started
    assert embedded.process is None  # stopped by the unwinding, not left running
    assert not store_answers(settings.data_dir)
    assert len(closed_stores) == 1
    assert writer_threads() == before
    assert runtime_tasks() == []  # the audit writer that had started was stopped


async def test_open_runtime_is_one_context(upstream: int, tmp_path: Path, pipe_stream: Any) -> None:
    settings = embedded_settings(upstream, tmp_path)
    before = writer_threads()
    async with open_runtime(settings, log_stream=pipe_stream) as runtime:
        assert runtime.embedded is not None and store_answers(settings.data_dir)
        assert runtime.forwarder.pools == {} and runtime.tunnels.open == {}  # built with the rest
        assert writer_threads() == before + 1
        names = {t.get_name() for t in runtime_tasks()}
        assert {"tokenward-audit-flush", "tokenward-metrics"} <= names
        assert "tokenward_routes" in runtime.metrics.render().decode()
    assert not store_answers(settings.data_dir)
    assert writer_threads() == before
    assert runtime_tasks() == []


async def test_a_second_runtime_on_the_data_dir_leaves_the_store_to_the_first(
    upstream: int, tmp_path: Path
) -> None:
    settings = embedded_settings(upstream, tmp_path)
    async with open_runtime(settings) as first:
        async with open_runtime(settings) as second:
            assert first.embedded is not None and second.embedded is None
            assert second.store_description.startswith("embedded")
        assert store_answers(settings.data_dir)  # the second one did not stop it
    assert not store_answers(settings.data_dir)


def test_metrics_read_registered_sources() -> None:
    metrics = Metrics(worker="3")
    hits = [0]
    metrics.counter("demo_hits", "Hits", lambda: hits[0])
    metrics.gauge("demo_up", "Up", lambda: 1.0)
    lags = [0.002, 0.004]
    metrics.lags(lags)
    hits[0] = 5
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    assert samples[("demo_hits_total", ())] == 5  # counters are summed over workers: no label
    assert samples[("demo_up", (("worker", "3"),))] == 1.0
    assert samples[("tokenward_invalidation_lag_seconds_count", ())] == 2
    assert lags == []  # observed once


async def test_two_runtimes_log_to_their_own_outputs(config: dict[str, Any], redis_url: str) -> None:
    import aiohttp

    from tokenward.gateway.settings import LogSettings

    json_out, console_out = io.BytesIO(), io.StringIO()
    process_log = LogReader()
    json_settings = settings_from_dict(copy.deepcopy(config), "test")
    console_raw = copy.deepcopy(config)
    console_raw["log"] = {"format": "console", "level": "info"}
    console_settings = settings_from_dict(console_raw, "test")
    assert console_settings.log == LogSettings(level="info", format="console")
    servers = [
        Server(json_settings, redis_url=redis_url, shutdown_timeout=1.0, log_stream=json_out),
        Server(console_settings, redis_url=redis_url, shutdown_timeout=1.0, log_stream=console_out),
    ]
    try:
        for server in servers:
            await server.start()
        async with aiohttp.ClientSession() as session:
            for server, path in zip(servers, ("/only-json", "/only-console"), strict=True):
                async with session.get(f"http://127.0.0.1:{server.proxy_port}{path}") as response:
                    assert response.status == 404
    finally:
        for server in servers:
            await server.stop()
    (event,) = [orjson.loads(line) for line in json_out.getvalue().splitlines()]
    assert event["action"] == "request.denied" and event["path"] == "/only-json"
    console = console_out.getvalue()
    assert "[Service Token] request.denied" in console and "/only-console" in console
    assert "/only-json" not in console and not console.startswith("{")
    # neither went to the process's log
    assert [e for e in process_log.events() if e.get("action", "").startswith("request.")] == []


async def test_a_server_whose_port_is_taken_closes_its_runtime(
    config: dict[str, Any], redis_url: str, pipe_stream: Any, closed_stores: list[Store]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        raw = copy.deepcopy(config)
        raw["admin_listen"]["port"] = taken.getsockname()[1]
        server = Server(settings_from_dict(raw, "test"), redis_url=redis_url, log_stream=pipe_stream)
        before = writer_threads()
        with pytest.raises(OSError):
            await server.start()
    assert server.runtime is None and server._runners == []
    assert len(closed_stores) == 1
    assert writer_threads() == before  # its log writer started, then ended
    assert runtime_tasks() == []
