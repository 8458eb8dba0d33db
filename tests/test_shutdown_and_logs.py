"""SIGTERM drains in-flight requests and flushes write-behind buffers; logs are JSON by
default and pretty on a TTY."""

from __future__ import annotations

import asyncio
import io
import signal
from pathlib import Path

import aiohttp
import orjson
import redis
import structlog

from tests.helpers.gateway import LOG_STREAM, TEAMS, TOKENS
from tests.helpers.process import bootstrap_admin, post_json, serve_config, start_serve, wait_ready
from tokenward.gateway.logs import configure_logging
from tokenward.gateway.settings import LogSettings


async def test_sigterm_drains_in_flight_requests_and_flushes(
    tmp_path: Path, upstream: int, redis_url: str
) -> None:
    served = serve_config(tmp_path, upstream, redis={"url": redis_url})
    path, port, admin_port = served.path, served.port, served.admin_port
    admin_token = await bootstrap_admin(path)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        serve = await start_serve(path, stdout=log_file)
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"http://127.0.0.1:{admin_port}/readyz", serve)
            auth = {"Authorization": f"Bearer {admin_token}"}
            adm = f"http://127.0.0.1:{admin_port}"
            await post_json(session, adm + TEAMS, auth, {"name": "platform", "permissions": ["read:apis"]})
            created = await post_json(session, adm + TOKENS, auth, {"name": "slow", "scopes": ["read:apis"]})

            async def slow() -> int:
                url = f"http://127.0.0.1:{port}/orgs/acme/teams/platform/apis?sleep=1.5"
                async with session.get(url, headers={"Authorization": f"Bearer {created['token']}"}) as r:
                    await r.read()
                    return r.status

            in_flight = asyncio.create_task(slow())
            await asyncio.sleep(0.5)  # the request is at the upstream now
            serve.send_signal(signal.SIGTERM)
            assert await in_flight == 200  # drained, not cut
            assert await asyncio.wait_for(serve.wait(), 30) == 0
    # the write-behind buffers were flushed on the way out
    client = redis.Redis.from_url(redis_url)
    assert client.hget(f"tw:tok:{{{created['id']}}}", "last_used_at") is not None
    events = [orjson.loads(e[1][b"e"]) for e in client.xrange("tw:audit")]
    client.close()
    assert any(e.get("action") == "request.allowed" and e.get("token_id") == created["id"] for e in events)
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert lines[-1]["event"] == "tokenward stopped"


def test_logs_are_json_by_default_and_pretty_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    try:
        configure_logging(LogSettings(level="info", format="auto"), tty)
        structlog.get_logger("t").info("hello", answer=42)
        assert "hello" in tty.getvalue() and not tty.getvalue().startswith("{")
        plain = io.BytesIO()
        configure_logging(LogSettings(level="warning", format="auto"), plain)
        structlog.get_logger("t").info("hidden")
        structlog.get_logger("t").warning("shown", answer=42)
        (line,) = plain.getvalue().splitlines()
        event = orjson.loads(line)
        assert event["event"] == "shown" and event["answer"] == 42 and event["level"] == "warning"
    finally:
        configure_logging(LogSettings(level="info", format="json"), LOG_STREAM)
