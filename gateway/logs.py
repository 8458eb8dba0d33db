"""Where log lines go: a `LogOutput` (JSON lines or pretty console, at a level, to a stream).

Lines for a real file descriptor (stdout: a pipe, a file, a TTY) are written by a thread of
their own (`LogWriter`), so a reader that stalls never blocks the event loop.

`configure_logging` opens the process's output and points structlog at it (structlog's
configuration is the one process-wide piece of logging set-up); each runtime's audit log
writes to a `LogOutput` it was given, by default the process's (`process_output`), or one of
its own that its lifecycle opens and closes (`open_runtime(..., log_stream=...)`).

The standard library's loggers (aiohttp's, asyncio's, redis-py's, Python warnings) reach the
process's output too: `configure_logging` puts a `StdlibHandler` on the root logger, which
renders their records with structlog's `ProcessorFormatter` through the same chain, so a log
pipeline sees one format, every line with `timestamp`, `level`, `logger` and `event`, their
text redacted (gateway/redaction.py) like everything tokenward quotes itself.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import select
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from tokenward.gateway.redaction import redact
from tokenward.gateway.settings import LogSettings
from tokenward.gateway.text import printable

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

QUEUE_LINES = 20_000  # log lines waiting for a slow reader, at most; more are dropped and counted
# The writer thread wakes by itself this often, and early only once this many lines wait: a
# wake-up per event-loop turn would hand the GIL back and forth a thousand times a second,
# and each hand-off can hold the event loop up behind the writer (bench/run.py, paced p99).
# Every wake-up costs the loop's thread too: at 16k lines/s, waking every 20 ms (512 lines)
# cost it 4-5 µs of CPU per request more than every 100 ms (bench/README.md).
WRITER_PERIOD = 0.1
WRITER_EARLY_LINES = 4096
FILE_BATCH_BYTES = 65536  # bytes per write to a regular file (to a pipe: PIPE_BUF, see _batch_bytes)
DRAIN_SECONDS = 5.0  # at exit, how long queued lines may wait for a stalled reader


class LogWriter:
    """Writes log lines to a file descriptor from a thread of its own.

    `write()` only queues (a line beyond `capacity` queued is dropped and counted) and
    `flush()` only wakes the thread, so neither ever blocks, however long the reader stalls
    (a full pipe, a paused log shipper). Once the thread has caught up, it writes one line
    saying how many lines were dropped. Writes go to the descriptor itself, never through
    Python's buffered stdout, whose lock a thread blocked at exit would hold.
    """

    def __init__(self, fd: int, notice: Callable[[int], bytes], capacity: int = QUEUE_LINES) -> None:
        self.fd = fd
        self.notice = notice
        self.capacity = capacity
        self.dropped = 0  # lines dropped so far (the metric)
        self._reported = 0  # of those, how many the log has been told about
        self._lines: deque[bytes] = deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._busy = False  # lines taken from the queue, not yet all written
        self._closed = False
        self.batch = _batch_bytes(fd)
        self._thread = threading.Thread(target=self._run, name="tokenward-log-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> int:
        """Queue a line; the thread is woken early once WRITER_EARLY_LINES wait (so a writer
        of many lines needs no `flush()`: the audit log calls none per line)."""
        lines = self._lines
        if len(lines) >= self.capacity:
            self.dropped += 1
            return 0
        lines.append(data)
        if self._sleeping and len(lines) >= WRITER_EARLY_LINES and not self._wake.is_set():
            self._wake.set()
        return len(data)

    def flush(self) -> None:
        if self._sleeping and len(self._lines) >= WRITER_EARLY_LINES:
            self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until every queued line is written."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._lines or self._busy or self.dropped != self._reported:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.002)
        return True

    def close(self, timeout: float = 1.0) -> None:
        self.drain(timeout)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)  # ended, unless a write to a stalled reader holds it

    def _run(self) -> None:
        lines = self._lines
        while not self._closed:
            if not lines:
                if self.dropped != self._reported:  # caught up after dropping some
                    dropped = self.dropped
                    self._write_all(self.notice(dropped - self._reported))
                    self._reported = dropped
                    continue
                self._wake.clear()
                self._sleeping = True
                self._wake.wait(WRITER_PERIOD)  # or until a flush() finds many lines waiting
                self._sleeping = False
                continue
            self._busy = True
            # Whole lines, at most `self.batch` bytes per write (unless one line is longer):
            # PIPE_BUF to a pipe, where only such writes are atomic, so workers sharing stdout
            # never split a line.
            batch = [lines.popleft()]
            size = len(batch[0])
            limit = self.batch
            while lines and size + len(lines[0]) <= limit:
                line = lines.popleft()
                batch.append(line)
                size += len(line)
            self._write_all(b"".join(batch) if len(batch) > 1 else batch[0])
            self._busy = False

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # the descriptor was made non-blocking by someone
                select.select([], [self.fd], [], 1.0)
                continue
            except InterruptedError:
                continue
            except OSError:
                return  # the reader is gone (EPIPE) or the descriptor closed: nothing to do
            view = view[written:]


def _batch_bytes(fd: int) -> int:
    """How many bytes of whole lines one write may take: PIPE_BUF, unless `fd` is a regular
    file, where a write() is never interleaved with another process's (Linux holds the
    file's lock for the whole write): bigger batches there, fewer system calls and fewer
    hand-offs of the GIL between the writer thread and the event loop."""
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    return FILE_BATCH_BYTES if regular else select.PIPE_BUF


class _TextLogWriter:
    """The str face of a LogWriter, for structlog's WriteLogger (pretty console lines)."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer

    def write(self, text: str) -> int:
        return self.writer.write(text.encode("utf-8", "replace"))

    def flush(self) -> None:
        self.writer.flush()




def _descriptor(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # an in-memory stream (tests): written synchronously, it never blocks


def _drop_notice(pretty: bool) -> Callable[[int], bytes]:
    def notice(count: int) -> bytes:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1_000_000):06d}Z"
        event = f"dropped {count} log lines"
        if pretty:
            return f"{stamp} [warning  ] {event}\n".encode()
        line = {"dropped": count, "event": event, "level": "warning", "logger": "tokenward", "timestamp": stamp}
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    return notice



def _logger_name(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """`logger`: the name given to `structlog.get_logger(name)` (see `_named`)."""
    if "logger" not in event:
        event["logger"] = getattr(logger, "name", None) or "tokenward"
    return event


def _named(factory: Any) -> Any:
    """`factory`, with the logger's name (get_logger's first argument) kept on the logger."""

    def make(*args: Any) -> Any:
        logger = factory()
        if args:
            logger.name = args[0]
        return logger

    return make


def _text_json(obj: Any, **kwargs: Any) -> str:
    """orjson, as the text the standard library's formatters must return."""
    return orjson.dumps(obj, **kwargs).decode()


def _redact_text(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A standard-library line may quote a request (an access line, an error naming a URL):
    its message and traceback are redacted like everything tokenward quotes itself."""
    for key in ("event", "exception"):
        value = event.get(key)
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _printable_values(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, names and other values from clients or the store are escaped (JSON
    lines escape them already): a token name must not drive the operator's terminal."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


class LogOutput:
    """One log destination: the structlog chain and logger factory for it, the binary sink
    JSON lines go to (None when pretty: lines go through `logger`), whether audit events
    (level info) are shown, and the writer thread when there is one. `close()` writes out
    what is queued and ends the thread."""

    def __init__(self, settings: LogSettings, stream: Any = None, *, background: bool | None = None) -> None:
        stream = stream or sys.stdout
        pretty = settings.format == "console" or (settings.format == "auto" and stream.isatty())
        level = LEVELS[settings.level]
        fd = _descriptor(stream) if background is not False else None
        self.writer: LogWriter | None = None
        if fd is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()  # what went through the file object so far goes first
            self.writer = LogWriter(fd, _drop_notice(pretty))
            atexit.register(self.drain_at_exit)
        shared: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ]
        binary: Any = self.writer if self.writer is not None else getattr(stream, "buffer", stream)
        text: Any = _TextLogWriter(self.writer) if self.writer is not None else stream
        # the standard library's records: `event` is the message, then the same keys as ours
        self.foreign_chain: list[Any] = [*shared, structlog.stdlib.add_logger_name]
        if pretty:
            self.processors: list[Any] = [*shared, _logger_name, _printable_values, structlog.dev.ConsoleRenderer()]
            self.factory: Any = _named(
                structlog.WriteLoggerFactory(text)
                if self.writer is not None
                else structlog.PrintLoggerFactory(stream)
            )
            self.foreign_renderer: list[Any] = [
                structlog.processors.format_exc_info,
                _redact_text,
                _printable_values,
                structlog.dev.ConsoleRenderer(),
            ]
        else:
            self.processors = [
                *shared,
                _logger_name,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ]
            self.factory = _named(structlog.BytesLoggerFactory(binary))
            self.foreign_renderer = [
                structlog.processors.format_exc_info,
                _redact_text,
                structlog.processors.JSONRenderer(serializer=_text_json),
            ]
        self.sink: Any = None if pretty else binary
        self._text = None if not pretty else text
        self.level = level
        self.audit_enabled = level <= logging.INFO
        self.wrapper_class = structlog.make_filtering_bound_logger(level)
        self.logger: Any = structlog.wrap_logger(
            self.factory("tokenward.audit"), processors=self.processors, wrapper_class=self.wrapper_class
        )

    def write_line(self, line: str) -> None:
        """One rendered line (no newline) of the standard library's logging, to this output."""
        if self.sink is not None:
            self.sink.write(line.encode("utf-8", "replace") + b"\n")
            self.sink.flush()
        elif self._text is not None:
            self._text.write(line + "\n")
            self._text.flush()

    @property
    def dropped(self) -> int:
        """Log lines dropped because the reader did not keep up (for the metric)."""
        return self.writer.dropped if self.writer is not None else 0

    def drain_at_exit(self) -> None:
        if self.writer is not None:
            self.writer.drain(DRAIN_SECONDS)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            atexit.unregister(self.drain_at_exit)
            writer.close()


class StdlibHandler(logging.Handler):
    """The root logger's handler: records of the standard library's loggers (aiohttp.server,
    asyncio, redis, py.warnings, ...) rendered by structlog's ProcessorFormatter with the
    output's chain (its keys, its timestamps, JSON or console) and written to its sink."""

    def __init__(self, output: LogOutput) -> None:
        super().__init__(output.level)
        self.output = output
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=output.foreign_chain,
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *output.foreign_renderer],
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.write_line(self.format(record))
        except (OSError, ValueError):  # the stream is closed: nowhere left to say it
            pass
        except Exception:
            self.handleError(record)


def route_stdlib_logging(output: LogOutput) -> None:
    """Send the standard library's logging (and Python warnings) to `output`, replacing the
    StdlibHandler an earlier call installed; other handlers (pytest's) are left alone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)
    root.addHandler(StdlibHandler(output))
    root.setLevel(output.level)
    logging.captureWarnings(True)


class _ProcessFactory:
    """structlog's logger factory for the process's output; it keeps the output, so
    `process_output` finds it in structlog's configuration (no module state of our own)."""

    def __init__(self, output: LogOutput) -> None:
        self.output = output

    def __call__(self, *args: Any) -> Any:
        return self.output.factory(*args)


def process_output() -> LogOutput | None:
    """The output `configure_logging` last set up, None if it never ran."""
    factory = structlog.get_config()["logger_factory"]
    return factory.output if isinstance(factory, _ProcessFactory) else None


def configure_logging(settings: LogSettings, stream: Any = None, *, background: bool | None = None) -> LogOutput:
    """Set up the process's logging; `stream` is a text or binary file (default: stdout).
    With a real file descriptor under it (or `background=True`), lines are written by a
    LogWriter thread; an in-memory stream is written synchronously. The previous process
    output, if any, is written out and closed."""
    previous = process_output()
    if previous is not None:
        previous.close()
    output = LogOutput(settings, stream, background=background)
    structlog.configure(
        processors=output.processors,
        wrapper_class=output.wrapper_class,
        logger_factory=_ProcessFactory(output),
        cache_logger_on_first_use=True,
    )
    route_stdlib_logging(output)
    return output
