"""AuditLog.emit_request (the request path's one dump per event) writes exactly what
emit(action, **fields) writes: the same JSON log line and the same stream entry, byte for byte."""

from __future__ import annotations

import io
import os
import select
import time
from typing import Any

import orjson
import pytest

from tokenward.gateway.audit import REQUEST_ACTIONS, AuditLog, IsoTimestamps
from tokenward.gateway.embedded import free_port
from tokenward.gateway.logs import FILE_BATCH_BYTES, LogOutput, LogWriter
from tokenward.gateway.settings import LogSettings, RedisSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_connect import connect

ALLOWED: dict[str, Any] = {
    "method": "GET",
    "path": "/v1/apis/é?q=\"x\"\\n",
    "route": "GET /v1/apis",
    "status": 200,
    "step": "forward",
    "reason": "allowed",
    "mode": "proxy",
    "client_ip": "127.0.0.1",
    "request_id": "0123456789abcdef",
    "duration_ms": 0.123,
    "user_agent": "curl/8.0\u202e",
    "request_bytes": 0,
    "response_bytes": 31,
    "upstream": "billing",
    "upstream_ms": 1.5,
    "token_id": "aaaaaaaaaaaa",
    "token_name": "ci\x1b[0m",
    "org": "acme",
    "team": "platform",
    "service_account": None,
    "service_account_id": None,
    "client_request_id": "r-1",
    "mcp_tools": ["search", "fetch"],
    "trace_id": "t" * 32,
}
DENIED: dict[str, Any] = {
    **{k: ALLOWED[k] for k in list(ALLOWED)[:15]},
    "status": 401,
    "step": "token",
    "reason": "unknown token",
    "upstream": None,
    "upstream_ms": None,
    "user_agent": None,
    "claimed_token_id": "bbbbbbbbbbbb",
    "client_aborted": True,
    "bytes_sent": 17,
}


def unreachable_store() -> Store:
    """A real store that is never called (events only queue until a flush)."""
    return Store(connect(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")))


@pytest.mark.parametrize("level", ["info", "warning"])
@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("fields", [ALLOWED, DENIED], ids=["allowed", "denied"])
def test_emit_request_writes_what_emit_writes(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], streamed: bool, level: str
) -> None:
    nows = (1764355000.123456, 1764355001.000001, 1764355001.999999, 1764355002.5)
    written = []
    for way in ("emit", "emit_request"):  # one audit log each: the heads of a second change
        out = io.BytesIO()
        output = LogOutput(LogSettings(level=level, format="json"), out)
        audit = AuditLog(unreachable_store() if streamed else None, 10, output=output)
        for now in nows:
            monkeypatch.setattr(time, "time", lambda now=now: now)
            for action in REQUEST_ACTIONS:
                if way == "emit":
                    audit.emit(action, **dict(fields))
                else:
                    audit.emit_request(action, dict(fields))
        audit._flush_sink(output.sink)
        written.append((out.getvalue(), list(audit._pending)))
    assert written[0] == written[1]
    lines, entries = written[1]
    assert len(lines.splitlines()) == (8 if level == "info" else 0)
    assert len(entries) == (8 if streamed else 0)
    for i, entry in enumerate(entries):
        now, action = nows[i // 2], REQUEST_ACTIONS[i % 2]
        assert list(orjson.loads(entry).items()) == [*fields.items(), ("action", action), ("ts", now)]


def test_the_date_and_time_are_the_timestamps_own() -> None:
    stamps = IsoTimestamps()
    for now in (0.0, 1764355000.5, 1764355000.999999, 1764355001.0000004, 1764355061.25):
        assert IsoTimestamps()(now).startswith(stamps.date_time(int(now)) + ".")


def test_a_log_writer_wakes_itself_when_lines_pile_up(tmp_path: Any) -> None:
    """No flush() per line (the audit log calls none for a LogWriter): lines still go out."""
    with (tmp_path / "log").open("wb") as stream:
        writer = LogWriter(stream.fileno(), lambda n: b"")
        try:
            for i in range(2000):
                writer.write(b"%d\n" % i)
            assert writer.drain(30.0)
        finally:
            writer.close()
    assert (tmp_path / "log").read_bytes() == b"".join(b"%d\n" % i for i in range(2000))


def test_log_writer_batches_pipe_buf_to_a_pipe_more_to_a_file(tmp_path: Any) -> None:
    """To a pipe a write takes at most PIPE_BUF bytes (atomic: workers sharing it never
    split a line); to a regular file, up to FILE_BATCH_BYTES."""
    read_end, write_end = os.pipe()
    with (tmp_path / "log").open("wb") as stream:
        writers = [LogWriter(write_end, lambda n: b""), LogWriter(stream.fileno(), lambda n: b"")]
        try:
            assert [writer.batch for writer in writers] == [select.PIPE_BUF, FILE_BATCH_BYTES]
        finally:
            for writer in writers:
                writer.close()
            os.close(read_end)
            os.close(write_end)
