"""One log format (issue 13, item 8): the standard library's loggers (aiohttp, asyncio,
redis-py, Python warnings) go through the same renderer as tokenward's own lines, so in JSON
mode every line is one JSON object with `timestamp`, `level`, `logger` and `event`; and the
request's audit event carries the access fields (user agent, bytes each way, upstream name
and the upstream's latency)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog

from tests.helpers.gateway import APIS, LOG_STREAM, Gateway, LogReader
from tests.helpers.process import env_for_subprocess, serve_config, start_serve, stop, wait_ready
from tokenward import version
from tokenward.gateway.audit import AuditLog
from tokenward.gateway.logs import StdlibHandler, configure_logging
from tokenward.gateway.settings import LogSettings

KEYS = {"timestamp", "level", "logger", "event"}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def check_line(raw: bytes) -> dict[str, Any]:
    """One log line: a JSON object with the four keys, the timestamp in the one format."""
    event = orjson.loads(raw)
    assert isinstance(event, dict) and KEYS <= event.keys(), raw
    assert STAMP.match(event["timestamp"]), raw
    return event


def _restore() -> None:
    configure_logging(LogSettings(level="info", format="json"), LOG_STREAM)


def test_standard_library_lines_are_json_with_our_keys() -> None:
    out = io.BytesIO()
    try:
        configure_logging(LogSettings(level="info", format="json"), out)
        structlog.get_logger("tokenward.cache").info("ours", answer=42)
        AuditLog(None, 10).emit("token.created", token_id="abc")
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError as exc:
            logging.getLogger("aiohttp.server").error("Error handling request", exc_info=exc)
        logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Handle>", 0.25)
        logging.getLogger("redis.asyncio.cluster").warning("Cluster node %s unreachable", "127.0.0.1:1")
        logging.getLogger("py.warnings").warning("DeprecationWarning: old")
        logging.getLogger("asyncio").debug("hidden: below the level")
    finally:
        _restore()
    lines = [check_line(raw) for raw in out.getvalue().splitlines()]
    assert [(e["logger"], e["level"]) for e in lines] == [
        ("tokenward.cache", "info"),
        ("tokenward.audit", "info"),
        ("aiohttp.server", "error"),
        ("asyncio", "warning"),
        ("redis.asyncio.cluster", "warning"),
        ("py.warnings", "warning"),
    ]
    ours, audit, aiohttp_line, asyncio_line, redis_line, _ = lines
    assert ours["event"] == "ours" and ours["answer"] == 42
    assert audit["event"] == "[Service Token] token.created"
    assert aiohttp_line["event"] == "Error handling request"
    assert "ConnectionResetError: peer went away" in aiohttp_line["exception"]  # the traceback, in the line
    assert asyncio_line["event"] == "Executing <Handle> took 0.250 seconds"  # %-arguments applied
    assert redis_line["event"] == "Cluster node 127.0.0.1:1 unreachable"


def test_standard_library_lines_are_redacted() -> None:
    """An access line quotes the request target: a token in it never reaches the log."""
    token = "tw_sat_" + "a1B2c3D4e5F6" + "Q" * 32 + "x9Y8z7"
    out = io.BytesIO()
    try:
        configure_logging(LogSettings(level="info", format="json"), out)
        logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /apis?access_token=%s HTTP/1.1" 200', token)
        try:
            raise ValueError(f"bad header Authorization: Bearer {token}")
        except ValueError as exc:
            logging.getLogger("aiohttp.server").error("Error handling request", exc_info=exc)
    finally:
        _restore()
    assert token not in out.getvalue().decode() and token[7:] not in out.getvalue().decode()
    access, error = (check_line(raw) for raw in out.getvalue().splitlines())
    # (a sensitive parameter's value runs to the next & ; or #: here the rest of the line)
    assert access["event"] == '127.0.0.1 "GET /apis?access_token=[REDACTED]'
    assert "Bearer [REDACTED]" in error["exception"]


def test_standard_library_lines_are_pretty_on_a_console() -> None:
    out = io.StringIO()
    try:
        configure_logging(LogSettings(level="info", format="console"), out)
        logging.getLogger("aiohttp.server").warning("odd \x1b]0;title\x07 peer")
    finally:
        _restore()
    text = out.getvalue()
    assert not text.startswith("{") and "aiohttp.server" in text and "warning" in text
    assert "\x1b]0;title" not in text  # a value from a peer never drives the terminal


def test_the_level_applies_to_the_standard_library_too() -> None:
    out = io.BytesIO()
    try:
        configure_logging(LogSettings(level="warning", format="json"), out)
        logging.getLogger("redis").info("hidden")
        logging.getLogger("redis").warning("shown")
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, StdlibHandler)]
        assert len(handlers) == 1  # configured again: replaced, not added
    finally:
        _restore()
    assert [check_line(raw)["event"] for raw in out.getvalue().splitlines()] == ["shown"]


# -- `tokenward serve` as a process ----------------------------------------------------------
async def test_every_line_of_serve_is_json_with_the_same_keys(tmp_path: Path, upstream: int, redis_url: str) -> None:
    """A real `serve` in JSON mode at debug level, with asyncio's debug mode on: it logs its own
    lines, aiohttp's (a request body left unread), and asyncio's (slow callbacks, e.g. at
    start) or redis-py's as they come; every line of its output is JSON with the same keys."""
    log_path = tmp_path / "serve.log"
    cfg = serve_config(tmp_path, upstream, log={"level": "debug", "format": "json"}, redis={"url": redis_url})
    env = {**env_for_subprocess(), "PYTHONASYNCIODEBUG": "1"}
    with log_path.open("wb") as sink:
        process = await start_serve(cfg.path, stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, cfg.admin_url + "/readyz", process)
                async with session.get(cfg.url + APIS) as response:
                    assert response.status == 401
            # a request whose body the admin API never reads (refused first): aiohttp's server
            # lingers to drain it and says so (a debug line, in asyncio's debug mode)
            reader, writer = await asyncio.open_connection("127.0.0.1", cfg.admin_port)
            writer.write(b"POST /v1/orgs/acme/teams HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 401 ")
            for _ in range(200):  # until aiohttp's line is out
                if b'"logger":"aiohttp.server"' in log_path.read_bytes():
                    break
                await asyncio.sleep(0.05)
            writer.close()
            await writer.wait_closed()
        finally:
            assert await stop(process) == 0
    lines = [check_line(raw) for raw in log_path.read_bytes().splitlines()]
    loggers = {line["logger"] for line in lines}
    assert {"tokenward", "tokenward.audit", "aiohttp.server"} <= loggers, loggers
    assert loggers - {"tokenward", "tokenward.audit"}, "no standard-library line was provoked"
    (started,) = [line for line in lines if line["event"] == "tokenward started"]
    assert started["version"] == version()


# -- the access fields of the audit event -----------------------------------------------------
async def audited(logs: LogReader, request_id: str) -> dict[str, Any]:
    for _ in range(200):
        events = [e for e in logs.events() if e.get("request_id") == request_id and "status" in e]
        if events:
            (event,) = events
            return event
        await asyncio.sleep(0.01)
    raise AssertionError("no audit event")


async def writer_token(gateway: Gateway) -> str:
    await gateway.team("platform", ["read:apis", "write:apis"])
    token, _ = await gateway.token("platform", ["read:apis", "write:apis"])
    return token


async def test_the_request_event_has_the_access_fields(gateway: Gateway, logs: LogReader) -> None:
    token = await writer_token(gateway)
    headers = {**gateway.auth(token), "User-Agent": "ci-runner/2.1 (linux)"}
    body = b"x" * 3000
    async with gateway.session.post(gateway.url + APIS, data=body, headers=headers) as response:
        answer = await response.read()
        request_id = response.headers["X-Request-Id"]
    event = await audited(logs, request_id)
    assert event["action"] == "request.allowed"
    assert event["user_agent"] == "ci-runner/2.1 (linux)"
    assert event["request_bytes"] == 3000 and orjson.loads(answer)["body_length"] == 3000
    assert event["response_bytes"] == len(answer)
    assert event["upstream"] == "registry"
    assert 0 < event["upstream_ms"] <= event["duration_ms"]


async def test_a_streamed_and_a_chunked_exchange_count_their_bytes(gateway: Gateway, logs: LogReader) -> None:
    token = await writer_token(gateway)

    async def chunks() -> Any:
        for _ in range(5):
            yield b"y" * 1000

    async with gateway.session.post(
        gateway.url + APIS + "?bytes=300000", data=chunks(), headers=gateway.auth(token)
    ) as response:
        answer = await response.read()
        request_id = response.headers["X-Request-Id"]
    assert len(answer) == 300000
    event = await audited(logs, request_id)
    assert event["request_bytes"] == 5000  # chunked: counted as it arrived
    assert event["response_bytes"] == 300000  # streamed: what was sent


async def test_a_denied_request_names_no_upstream_latency(gateway: Gateway, logs: LogReader) -> None:
    async with gateway.session.get(gateway.url + APIS) as response:  # no token, no User-Agent given
        answer = await response.read()
        request_id = response.headers["X-Request-Id"]
    event = await audited(logs, request_id)
    assert event["status"] == 401
    assert event["upstream"] == "registry"  # the route's upstream, never contacted
    assert event["upstream_ms"] is None
    assert event["request_bytes"] == 0 and event["response_bytes"] == len(answer)
    assert event["user_agent"].startswith("Python/")  # aiohttp's own


async def test_a_token_in_the_user_agent_is_redacted(gateway: Gateway, logs: LogReader) -> None:
    admin = await gateway.org_admin()
    agent = f"bot/1.0 {admin} " + "ab " * 300
    async with gateway.session.get(gateway.url + "/health", headers={"User-Agent": agent}) as response:
        request_id = response.headers["X-Request-Id"]
    event = await audited(logs, request_id)
    assert admin not in logs.raw().decode()
    assert event["user_agent"].startswith("bot/1.0 [REDACTED]") and len(event["user_agent"]) == 256


async def test_aiohttp_access_log_stays_off(gateway: Gateway, logs: LogReader) -> None:
    """The audit event is the access line: aiohttp's own access log would be a second one,
    even though the standard library's info lines are on."""
    assert logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
    async with gateway.session.get(gateway.url + "/health") as response:
        request_id = response.headers["X-Request-Id"]
    await audited(logs, request_id)
    assert [e for e in logs.events() if e.get("logger") == "aiohttp.access"] == []


async def test_a_store_unreachable_at_start_is_one_json_line(tmp_path: Path, upstream: int) -> None:
    """`serve` that can't reach its store at start exits 1 with a log line in the log's format
    (JSON here), never a Python traceback on stderr."""
    from tokenward.gateway.embedded import free_port

    closed = free_port()  # nothing listens there
    cfg = serve_config(tmp_path, upstream, log={"format": "json"}, redis={"url": f"redis://127.0.0.1:{closed}/0"})
    process = await start_serve(cfg.path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    lines = [check_line(raw) for raw in (out + err).splitlines()]
    assert b"Traceback" not in out + err
    assert any(line["event"] == "tokenward could not start" and line["level"] == "error" for line in lines)
