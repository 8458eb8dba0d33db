"""Per-tool MCP authorization: the response side. A `tools/list` result shows only the
tools the caller may call (those whose scope, by the route's `mcp` policy, its token holds).

Which responses: any response whose `result.tools` is an array, in the answer to a POST that
carried a `tools/list` request and on the GET stream (the server's own, where a resumed stream
may replay earlier responses). By shape, not by id: a server that echoes an id in another
type (`1.0` for `1`) is not a way around the filter. Both shapes of MCP's streamable HTTP
answer are rewritten:

- `application/json`: the whole body is read (at most the policy's `max_response`, else
  502), the matching messages' `result.tools` filtered, and the body sent anew;
- `text/event-stream`: events are parsed as the SSE spec reads them (any line ending, a
  leading BOM dropped, `data:` lines joined, an unfinished last event dropped) one at a time, at most `max_response` bytes per
  event (beyond it the stream is cut: the client sees a broken stream, never an unfiltered
  list); an event holding a matching message is sent again with its data on one `data:`
  line and its other fields (event, id, retry, comments) as they were; every other event
  passes byte for byte.

Any other content type passes as it is (no MCP client reads a JSON-RPC message from it). A
compressed response that needs filtering is refused (502): the forwarder asks the upstream
for none on MCP routes (`upstream_headers`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tokenward.gateway.mcp_policy import McpCalls
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.upstream import UpstreamFailed, decode_header

JSON, SSE = "application/json", "text/event-stream"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


def upstream_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream request's headers on an MCP route: no Accept-Encoding, so that the
    responses to filter come uncompressed."""
    return [(name, value) for name, value in headers if name.lower() != "accept-encoding"]


def rewrite(calls: McpCalls, value: Any) -> bool:
    """Filter the listings (`result.tools`) in the JSON-RPC message (or batch) `value` in
    place; True if anything was removed."""
    if isinstance(value, list):
        changed = False
        for item in value:
            changed = rewrite(calls, item) or changed
        return changed
    if not isinstance(value, dict):
        return False
    result = value.get("result")
    if not isinstance(result, dict) or "method" in value:
        return False
    tools = result.get("tools")
    if not isinstance(tools, list):
        return False
    kept = [tool for tool in tools if isinstance(tool, dict) and calls.may_call(tool.get("name"))]
    if len(kept) == len(tools):
        return False
    result["tools"] = kept
    return True


class JsonFilter:
    """A JSON response: read whole, filtered, sent whole."""

    whole = True

    def __init__(self, calls: McpCalls) -> None:
        self.calls = calls
        self.limit = calls.policy.max_response
        self.chunks: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        """Keeps `chunk` (nothing is sent before the whole body is filtered)."""
        self.size += len(chunk)
        if self.size > self.limit:
            raise UpstreamFailed(f"the MCP server's JSON response is larger than {self.limit} bytes")
        self.chunks.append(chunk)
        return b""

    def end(self) -> bytes:
        body, self.chunks = b"".join(self.chunks), []
        return self.body(body)

    def body(self, body: bytes) -> bytes:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Refusal(502, "bad_gateway", Step.UPSTREAM, "the MCP server's JSON response is unreadable") from None
        rewrite(self.calls, value)
        return orjson.dumps(value)  # always as read here (a repeated key: one reading for every client)


class SseFilter:
    """A `text/event-stream` response, one event at a time (see the module's docstring)."""

    whole = False

    def __init__(self, calls: McpCalls) -> None:
        self.calls = calls
        self.limit = calls.policy.max_response
        self.pending = b""  # bytes after the last complete line
        self.event: list[bytes] = []  # the current event's lines, with their line endings
        self.size = 0  # bytes in `event`
        self.started = False  # the stream's first bytes (and a BOM among them) are behind

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send for `chunk`: whole events, filtered. Raises UpstreamFailed for
        an event larger than the limit."""
        data = self.pending + chunk if self.pending else chunk
        if not self.started:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self.pending = data
                return b""
            self.started = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]  # an SSE client drops it: so must the reading here
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            found = _LINE_END.search(data, pos)
            if found is None or (found.group() == b"\r" and found.end() == end):
                break  # an incomplete line, or a CR whose LF may come next
            line = data[pos : found.end()]
            pos = found.end()
            self.event.append(line)
            self.size += len(line)
            if found.start() == pos - len(line):  # an empty line: the event is complete
                out.append(self._event())
        self.pending = data[pos:]
        if self.size + len(self.pending) > self.limit:
            raise UpstreamFailed(f"an SSE event of the MCP server is larger than {self.limit} bytes")
        return b"".join(out)

    def end(self) -> bytes:
        """What is left when the stream ends: an event without its blank line, which an SSE
        client discards (the spec's rule). Dropped here too: never sent unfiltered. A CR the
        stream ends on is a line end after all (no LF can follow it)."""
        out = b""
        if self.pending.endswith(b"\r"):
            pending, self.pending = self.pending, b""
            out = self.feed(pending + b"\n")  # CR LF reads as the CR alone did
        self.pending, self.event, self.size = b"", [], 0
        return out

    def _event(self) -> bytes:
        lines, self.event, self.size = self.event, [], 0
        raw = b"".join(lines)
        data: list[bytes] = []
        for line in lines:
            text = line.rstrip(b"\r\n")
            if text[:5] == b"data:" or text == b"data":
                value = text[5:]
                data.append(value[1:] if value[:1] == b" " else value)
        if not data:
            return raw
        text = b"\n".join(data)
        if not text.strip():
            return raw  # an empty priming event: no message in it
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            # a listing another parser might read (a byte that is not UTF-8, a key split or
            # escaped): never passed unfiltered
            raise UpstreamFailed("an SSE event of the MCP server could not be read to filter it") from None
        rewrite(self.calls, value)  # and always sent as read here: one reading for every client
        kept = [line for line in lines if not (line[:5] == b"data:" or line.rstrip(b"\r\n") == b"data")]
        blank = kept.pop() if kept and not kept[-1].rstrip(b"\r\n") else b"\n"
        return b"".join(kept) + b"data: " + orjson.dumps(value) + b"\n" + blank


def response_filter(calls: McpCalls, headers: list[tuple[bytes, bytes]]) -> JsonFilter | SseFilter | None:
    """The filter for an upstream response with `headers`, or None when nothing in it needs
    filtering. Raises a Refusal (502) for a compressed response that would."""
    if not calls.filters:
        return None
    media: set[str] = set()
    encoded = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            media.add(decode_header(value).partition(";")[0].strip().lower())
        elif lowered == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            encoded = True
    if not media & {JSON, SSE}:
        return None
    if len(media) > 1:  # clients differ on which one they read: it could be the one not filtered
        raise Refusal(502, "bad_gateway", Step.UPSTREAM, "the MCP server's response has two content types")
    if encoded:
        raise Refusal(502, "bad_gateway", Step.UPSTREAM, "the MCP server compressed a response that is filtered")
    [media_type] = media
    return JsonFilter(calls) if media_type == JSON else SseFilter(calls)
