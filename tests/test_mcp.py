"""Per-tool MCP authorization through the real gateway and store (issue 16 item 4): every
tools/call needs its tool's scope, refusals answer JSON-RPC errors, batches are refused
whole, anything unreadable is refused before it reaches the upstream, the forwarded body is
the authorized bytes, and tools/list results (JSON and SSE) show only callable tools."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from tests.helpers.gateway import Gateway, LogReader
from tests.helpers.mcp import MCP_PATH, McpUpstream, mcp_config, mcp_upstream
from tests.helpers.rawhttp import GENEROUS, raw, read_response
from tests.helpers.scripted import Reply, ScriptedUpstream, Seen
from tokenward.gateway.mcp_policy import McpCalls, McpPolicy
from tokenward.gateway.mcp_stream import SseFilter
from tokenward.gateway.scopes import parse_scope
from tokenward.gateway.upstream import UpstreamFailed

JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
async def mcp() -> AsyncIterator[McpUpstream]:
    async with mcp_upstream() as upstream:
        yield upstream


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp: McpUpstream) -> Gateway:
    gateway = await start_gateway(mcp_config(upstream, mcp.port, max_body="4k"))
    await gateway.team("platform", ["mcp", "read:docs", "write:deploy"])
    return gateway


@pytest.fixture
async def reader(gw: Gateway) -> str:
    """A token that may call `search` (read:docs) and nothing else."""
    token, _ = await gw.token("platform", ["mcp", "read:docs"], name="agent")
    return token


@pytest.fixture
async def deployer(gw: Gateway) -> str:
    token, _ = await gw.token("platform", ["mcp", "read:docs", "write:deploy"], name="deployer")
    return token


def call(name: Any, rpc_id: int | str | None = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": name, "arguments": {}}}
    if rpc_id is not None:
        message["id"] = rpc_id
    return message


async def post(gw: Gateway, token: str, body: bytes | Any, **headers: str) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with gw.session.post(gw.url + MCP_PATH, data=data, headers={**JSON, **gw.auth(token), **headers}) as r:
        raw = await r.read()
        parsed = orjson.loads(raw) if r.content_type == "application/json" and raw and not r.headers.get("Content-Encoding") else raw
        return r.status, r.headers, parsed


# -- tools/call ---------------------------------------------------------------------------------
async def test_an_allowed_call_is_forwarded_byte_for_byte(
    gw: Gateway, reader: str, mcp: McpUpstream, logs: LogReader
) -> None:
    body = b'{ "jsonrpc" : "2.0", "id": 7,\n "method": "tools/call", "params": {"name": "search", "arguments": {"q": "caf\\u00e9"}} }'
    status, _, answer = await post(gw, reader, body)
    assert status == 200 and answer["result"]["content"][0]["text"] == "ran search"
    [(method, headers, seen)] = mcp.seen
    assert method == "POST" and seen == body  # exactly the bytes that were authorized
    assert headers["Content-Length"] == str(len(body))
    [event] = [e for e in logs.events("request.allowed") if e["path"] == MCP_PATH]
    assert event["mcp_tools"] == ["search"] and "mcp_refused" not in event


async def test_a_call_without_the_tools_scope_is_a_json_rpc_error(
    gw: Gateway, reader: str, mcp: McpUpstream, logs: LogReader
) -> None:
    status, headers, answer = await post(gw, reader, call("deploy", "req-1"))
    assert status == 403
    assert headers["WWW-Authenticate"] == 'Bearer realm="tokenward", error="insufficient_scope", scope="write:deploy"'
    assert answer["jsonrpc"] == "2.0" and answer["id"] == "req-1"
    error = answer["error"]
    assert error["code"] == -32003
    assert error["message"] == "token lacks required permission: write:deploy (MCP tool 'deploy')"
    assert error["data"] == {
        "error": "insufficient_scope",
        "step": "mcp_tool",
        "request_id": headers["X-Request-Id"],
        "tool": "deploy",
        "scope": "write:deploy",
    }
    assert mcp.seen == []  # nothing reached the MCP server
    [event] = logs.events("request.denied")
    assert event["step"] == "mcp_tool" and event["status"] == 403
    assert event["reason"] == error["message"]
    assert event["mcp_tools"] == ["deploy"] and event["mcp_refused"] == ["deploy"]
    assert event["token_name"] == "agent"


@pytest.mark.parametrize("tool", ["drop", "other"])
async def test_denied_and_unlisted_tools_are_refused_whatever_the_token_holds(
    gw: Gateway, deployer: str, mcp: McpUpstream, tool: str
) -> None:
    status, headers, answer = await post(gw, deployer, call(tool))
    assert status == 403 and "WWW-Authenticate" not in headers
    assert answer["error"]["data"]["error"] == "forbidden" and answer["error"]["data"]["tool"] == tool
    assert answer["error"]["message"] == f"MCP tool '{tool}' is not allowed here"
    assert mcp.seen == []


async def test_a_default_scope_lets_holders_call_unlisted_tools(
    start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp: McpUpstream
) -> None:
    gw = await start_gateway(mcp_config(upstream, mcp.port, default="read:tools"))
    await gw.team("platform", ["mcp", "read:tools"])
    holder, _ = await gw.token("platform", ["mcp", "read:tools"])
    other, _ = await gw.token("platform", ["mcp"])
    assert (await post(gw, holder, call("other")))[0] == 200
    status, _, answer = await post(gw, other, call("other"))
    assert status == 403 and answer["error"]["data"]["scope"] == "read:tools"
    assert (await post(gw, holder, call("drop")))[0] == 403  # listed as deny: the default does not apply


async def test_the_routes_own_scopes_still_apply(gw: Gateway, mcp: McpUpstream) -> None:
    no_mcp, _ = await gw.token("platform", ["read:docs"])
    status, _, answer = await post(gw, no_mcp, call("search"))
    assert status == 403 and answer["step"] == "scope"  # decided before the body is read
    assert mcp.seen == []


# -- batches and notifications ------------------------------------------------------------------
async def test_a_batch_with_one_refused_call_is_refused_whole(
    gw: Gateway, reader: str, mcp: McpUpstream, logs: LogReader
) -> None:
    batch = [
        call("search", 1),
        call("deploy", 2),
        call("search", None),  # a notification: no answer of its own
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 9, "result": {}},  # a response to the server: no answer either
    ]
    status, _, answer = await post(gw, reader, batch)
    assert status == 403 and isinstance(answer, list)
    assert [(a["id"], a["error"]["data"]["error"]) for a in answer] == [
        (1, "batch_refused"),
        (2, "insufficient_scope"),
        (3, "batch_refused"),
    ]
    assert answer[0]["error"]["message"] == "not run: another call in this batch was refused"
    assert mcp.seen == []
    [event] = logs.events("request.denied")
    assert event["mcp_tools"] == ["search", "deploy", "search"] and event["mcp_refused"] == ["deploy"]


async def test_an_allowed_batch_goes_through(gw: Gateway, deployer: str, mcp: McpUpstream) -> None:
    status, _, answer = await post(gw, deployer, [call("search", 1), call("deploy", 2)])
    assert status == 200 and [a["result"]["content"][0]["text"] for a in answer] == ["ran search", "ran deploy"]
    assert len(mcp.seen) == 1


async def test_a_batch_spends_one_use_per_tool_call(gw: Gateway, mcp: McpUpstream) -> None:
    """Review of issue 16: a batch of 50 calls cost one use of a budget."""
    from tokenward.gateway.limits import TokenLimits

    token, _ = await gw.token("platform", ["mcp", "read:docs"], name="budget", limits=TokenLimits.from_body({"max_uses": 3}))
    status, _, _ = await post(gw, token, [call("search", 1), call("search", 2)])
    assert status == 200  # 2 of 3
    status, _, _ = await post(gw, token, [call("search", 3), call("search", 4)])
    assert status == 429  # 1 left, 2 asked: all or nothing, so the 1 is still there
    status, _, _ = await post(gw, token, call("search", 5))
    assert status == 200
    assert len(mcp.seen) == 2


async def test_a_refused_batch_spends_no_rate_limit(start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp: McpUpstream) -> None:
    """A batch too big for what a rate limit has left is refused and spends none of it, in
    exact and in local mode (the re-check of issue 16's review)."""
    from tokenward.gateway.limits import TokenLimits

    for mode in ("exact", "local"):
        config = mcp_config(upstream, mcp.port, max_body="4k")
        config["rate_limits"] = {"mode": mode}
        gateway = await start_gateway(config)
        if mode == "exact":  # the two gateways share the store
            await gateway.team("platform", ["mcp", "read:docs"])
        limits = TokenLimits.from_body({"rate_limits": [{"name": "burst", "limit": 3, "per": "1h"}]})
        token, _ = await gateway.token("platform", ["mcp", "read:docs"], name=f"b-{mode}", limits=limits)
        batch = [call("search", i) for i in range(4)]
        assert (await post(gateway, token, batch))[0] == 429
        assert [(await post(gateway, token, call("search", i)))[0] for i in range(4)] == [200, 200, 200, 429]


async def test_a_refused_notification_is_refused_too(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    status, _, answer = await post(gw, reader, call("deploy", None))
    assert status == 403 and answer["id"] is None and answer["error"]["data"]["tool"] == "deploy"
    assert mcp.seen == []


async def test_other_notifications_and_requests_pass(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    status, _, _ = await post(gw, reader, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert status == 202
    status, _, answer = await post(gw, reader, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert status == 200 and answer == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert len(mcp.seen) == 2


# -- what the gateway cannot read is refused ------------------------------------------------------
UNREADABLE = [
    (b"{not json", {}, -32700),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "name": "deploy"}}', {}, -32700),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}, "id": 2}', {}, -32700),
    (b'{"jsonrpc": "2.0", "id": NaN, "method": "ping"}', {}, -32700),
    # a lone surrogate escape: the stdlib reads it, orjson (the audit, the answers) cannot
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "deploy\\ud800"}}', {}, -32700),
    (b'{"jsonrpc": "2.0", "id": "a\\udc00", "method": "tools/call", "params": {"name": "search"}}', {}, -32700),
    ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "s\xe9arch"}}'.encode("latin-1"), {}, -32700),
    (b"\xef\xbb\xbf" + orjson.dumps(call("search")), {}, -32700),
    (orjson.dumps(call("search")), {"Content-Type": "text/plain"}, -32600),
    (orjson.dumps(call("search")), {"Content-Type": "application/json; charset=latin-1"}, -32600),
    (gzip.compress(orjson.dumps(call("search"))), {"Content-Encoding": "gzip"}, -32600),
    (b"[]", {}, -32600),
    (b"[1]", {}, -32600),
    (b'"tools/call"', {}, -32600),
    (orjson.dumps({"jsonrpc": "1.0", "id": 1, "method": "tools/call", "params": {"name": "search"}}), {}, -32600),
    (orjson.dumps({"id": 1, "method": "tools/call", "params": {"name": "search"}}), {}, -32600),
    (orjson.dumps({**call("search"), "Method": "tools/call"}), {}, -32600),
    (orjson.dumps({**call("search"), "method": "Tools/Call"}), {}, -32600),
    (orjson.dumps({**call("search"), "method": "tools/call "}), {}, -32600),
    (orjson.dumps({**call("search"), "params": {"name": "search", "Name": "deploy"}}), {}, -32600),
    (orjson.dumps(call(["deploy"])), {}, -32600),
    (orjson.dumps({**call("search"), "params": ["search"]}), {}, -32600),
    (orjson.dumps({**call("search"), "id": 1.0}), {}, -32600),
    (orjson.dumps({**call("search"), "id": True}), {}, -32600),
    (orjson.dumps({**call("search"), "id": None}), {}, -32600),
    (orjson.dumps({"jsonrpc": "2.0", "id": 1}), {}, -32600),
    (orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "result": {}, "params": {"name": "search"}}), {}, -32600),
]


@pytest.mark.parametrize(("body", "headers", "code"), UNREADABLE)
async def test_what_the_gateway_cannot_read_is_refused(
    gw: Gateway, reader: str, mcp: McpUpstream, body: bytes, headers: dict[str, str], code: int
) -> None:
    status, _, answer = await post(gw, reader, body, **headers)
    assert status == 400
    assert answer["id"] is None and answer["error"]["code"] == code
    assert answer["error"]["data"]["error"] == "invalid_request" and answer["error"]["data"]["step"] == "request"
    assert mcp.seen == []


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (call("search"), {"Mcp-Method": "tools/list"}),
        (call("deploy"), {"Mcp-Method": "tools/call", "Mcp-Name": "search"}),
        (call("search"), {"Mcp-Name": "=?base64?c2VhcmNo?"}),  # not the sentinel: compared verbatim
        (call("search"), {"Mcp-Name": "=?base64?c2VhcmNi?="}),  # "searcb"
        ([call("search", 1), call("search", 2)], {"Mcp-Method": "tools/call"}),
        # an Mcp-Name where the body names nothing (review of issue 16)
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"Mcp-Name": "deploy"}),
        ({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///a"}}, {"Mcp-Name": "deploy"}),
    ],
)
async def test_routing_headers_must_say_what_the_body_says(
    gw: Gateway, deployer: str, mcp: McpUpstream, body: Any, headers: dict[str, str]
) -> None:
    status, _, answer = await post(gw, deployer, body, **headers)
    assert status == 400 and answer["error"]["code"] == -32600
    assert mcp.seen == []


async def test_routing_headers_that_agree_pass(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    for name in ("search", "=?base64?c2VhcmNo?="):
        status, _, _ = await post(gw, reader, call("search"), **{"Mcp-Method": "tools/call", "Mcp-Name": name})
        assert status == 200
    assert len(mcp.seen) == 2


async def test_a_repeated_routing_header_is_refused(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    headers = [*JSON.items(), *gw.auth(reader).items(), ("Mcp-Name", "search"), ("Mcp-Name", "deploy")]
    async with gw.session.post(gw.url + MCP_PATH, data=orjson.dumps(call("search")), headers=headers) as r:
        assert r.status == 400
    assert mcp.seen == []


async def test_a_get_or_delete_with_a_body_is_refused(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    async with gw.session.delete(gw.url + MCP_PATH, data=b"{}", headers=gw.auth(reader)) as r:
        assert r.status == 400
    async with gw.session.delete(gw.url + MCP_PATH, headers=gw.auth(reader)) as r:
        assert r.status == 204
    assert [m for m, _, _ in mcp.seen] == ["DELETE"]


async def test_an_oversize_body_is_413(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    big = orjson.dumps({**call("search"), "params": {"name": "search", "arguments": {"q": "x" * 5000}}})
    status, _, answer = await post(gw, reader, big)
    assert status == 413 and answer["error"]["data"]["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with gw.session.post(gw.url + MCP_PATH, data=chunks(), headers={**JSON, **gw.auth(reader)}) as r:
        assert r.status == 413
    assert mcp.seen == []


async def test_forward_auth_cannot_answer_for_an_mcp_route(
    start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp: McpUpstream
) -> None:
    config = mcp_config(upstream, mcp.port)
    config["trusted_proxies"] = ["127.0.0.1/32"]
    gw = await start_gateway(config)
    await gw.team("platform", ["mcp", "read:docs"])
    token, _ = await gw.token("platform", ["mcp", "read:docs"])
    headers = {**gw.auth(token), "X-Original-URI": MCP_PATH, "X-Original-Method": "POST"}
    async with gw.session.get(gw.url + "/_tokenward/verify", headers=headers) as r:
        assert r.status == 403
        assert (await r.json())["error"]["data"]["step"] == "mcp_tool"


# -- tools/list results ---------------------------------------------------------------------------
@pytest.mark.parametrize("sse", [False, True])
async def test_tools_list_shows_only_callable_tools(
    gw: Gateway, reader: str, deployer: str, mcp: McpUpstream, sse: bool
) -> None:
    mcp.sse = sse
    listing = {"jsonrpc": "2.0", "id": "l1", "method": "tools/list"}
    for token, expected in ((reader, ["search"]), (deployer, ["search", "deploy"])):
        status, headers, answer = await post(gw, token, listing)
        assert status == 200
        if sse:
            assert headers["Content-Type"].startswith("text/event-stream")
            text = answer.decode()
            assert text.startswith("event: message\r\nid: e0\r\ndata: ") and text.endswith("\n\r\n")
            answer = orjson.loads(text.split("data: ", 1)[1])
        assert [tool["name"] for tool in answer["result"]["tools"]] == expected


async def test_a_batch_response_filters_only_the_listing(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, call("search", 2)]
    status, _, answer = await post(gw, reader, batch)
    assert status == 200
    assert [t["name"] for t in answer[0]["result"]["tools"]] == ["search"]
    assert answer[1]["result"]["content"][0]["text"] == "ran search"


async def test_the_get_stream_filters_replayed_listings_and_passes_the_rest(
    gw: Gateway, reader: str, mcp: McpUpstream
) -> None:
    listing = orjson.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": n} for n in ("drop", "search")]}})
    note = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}\n\n'
    # a BOM, a comment, CR line endings, a listing split over chunks, data over two lines
    mcp.stream = [b"\xef\xbb", b"\xbf: hello\r\r", note, b"id: 7\r\ndata: " + listing[:20], listing[20:] + b"\r", b"\n\r\n"]
    async with gw.session.get(gw.url + MCP_PATH, headers={**gw.auth(reader), "Accept": "text/event-stream"}) as r:
        assert r.status == 200
        text = await r.read()
    filtered = orjson.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": "search"}]}})
    assert text == b": hello\r\r" + note + b"id: 7\r\ndata: " + filtered + b"\n\r\n"


# -- the SSE reading, unit by unit ----------------------------------------------------------------
def _calls(max_response: int = 1 << 20) -> McpCalls:
    policy = McpPolicy({"search": parse_scope("read:docs"), "deploy": parse_scope("write:deploy")}, None, 1024, max_response)
    return McpCalls(policy, lambda scope: scope == parse_scope("read:docs"), list_ids={(False, 1)})


STREAM = (
    b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,\r\ndata: "result":{"tools":[{"name":"deploy"},{"name":"search"}]}}\r\n\r\n'
    b': ping\n\n'
    b'data: {"jsonrpc":"2.0","id":2.0,"result":{"tools":[{"name":"deploy"}]}}\r\r'  # by shape, whatever the id
    b'id: prime-1\ndata:\n\n'  # an empty priming event (the SDK's, for resumption)
)
FILTERED = (
    b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search"}]}}\n\r\n'
    b': ping\n\n'
    b'data: {"jsonrpc":"2.0","id":2.0,"result":{"tools":[]}}\n\r'
    b'id: prime-1\ndata:\n\n'
)


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_sse_events_read_the_same_whatever_the_chunks(cut: int) -> None:
    sse = SseFilter(_calls())
    out = sse.feed(STREAM[:cut]) + sse.feed(STREAM[cut:]) + sse.end()
    assert out == FILTERED
    byte_by_byte = SseFilter(_calls())
    assert b"".join(byte_by_byte.feed(STREAM[i : i + 1]) for i in range(len(STREAM))) + byte_by_byte.end() == FILTERED


def test_an_event_ended_by_a_cr_at_the_end_of_the_stream_is_delivered() -> None:
    sse = SseFilter(_calls())
    event = b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy"},{"name":"search"}]}}\r\r'
    out = sse.feed(event) + sse.end()
    assert b'"search"' in out and b"deploy" not in out


def test_an_unfinished_last_event_is_dropped_as_clients_drop_it() -> None:
    sse = SseFilter(_calls())
    unfinished = b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy"}]}}\n'
    assert sse.feed(b": ok\n\n" + unfinished) == b": ok\n\n"
    assert sse.end() == b""


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"not": "json"\n\n',
        b'data: {"jsonrpc":"2.0","id":1,"result":{"\\u0074ools":[{"name":"deploy","description":"caf\xe9"}]}}\n\n',
        b'data: {"jsonrpc":"2.0","id":1,"result":{"too\ndata: ls":[{"name":"deploy"}]}}\n\n',
    ],
)
def test_an_sse_event_that_cannot_be_read_cuts_the_stream(event: bytes) -> None:
    """Whatever another client might read in it (a byte that is not UTF-8, a key escaped or
    split over data lines): never passed unfiltered. Review of issue 16."""
    sse = SseFilter(_calls())
    with pytest.raises(UpstreamFailed):
        sse.feed(b": ok\n\n" + event)


def test_a_listing_with_a_repeated_key_is_sent_as_read() -> None:
    """orjson keeps the last `tools`; a first-wins client must not see the other copy."""
    sse = SseFilter(_calls())
    event = b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy"}],"tools":[{"name":"search"}]}}\n\n'
    out = sse.feed(event)
    assert b"deploy" not in out and b"search" in out


def test_an_unreadable_sse_listing_cuts_the_stream() -> None:
    sse = SseFilter(_calls())
    with pytest.raises(UpstreamFailed):
        sse.feed(b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy"}' + b"[" * 2000 + b"\n\n")


def test_an_sse_event_over_the_limit_cuts_the_stream() -> None:
    sse = SseFilter(_calls(max_response=64))
    assert sse.feed(b": short\n\n") == b": short\n\n"
    with pytest.raises(UpstreamFailed):
        sse.feed(b"data: " + b"x" * 100)


# -- what the gateway cannot filter is not sent -----------------------------------------------------
def reply_with(head: bytes, body: bytes) -> Reply:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    return reply


LISTING = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop"}, {"name": "search"}]}})


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", gzip.compress(LISTING)),
        (b"Content-Type: application/json\r\nContent-Type: text/event-stream\r\n", LISTING),
        (b"Content-Type: application/json\r\n", LISTING[:-1]),
        (b"Content-Type: application/json\r\n", LISTING + b" " * 300),  # over max_response
    ],
)
async def test_a_listing_the_gateway_cannot_filter_is_a_502(
    start_gateway: Callable[..., Awaitable[Gateway]],
    upstream: int,
    scripted: Callable[..., Awaitable[ScriptedUpstream]],
    head: bytes,
    body: bytes,
) -> None:
    server = await scripted(reply_with(head, body))
    gw = await start_gateway(mcp_config(upstream, server.port, max_response=len(LISTING) + 100))
    await gw.team("platform", ["mcp", "read:docs"])
    token, _ = await gw.token("platform", ["mcp", "read:docs"])
    status, _, answer = await post(gw, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, **{"Accept-Encoding": "gzip"})
    assert status == 502 and b"search" not in orjson.dumps(answer)
    [seen] = server.seen
    assert seen.header("Accept-Encoding") == []  # asked for no compression


async def test_other_responses_pass_untouched(
    start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, scripted: Callable[..., Awaitable[ScriptedUpstream]]
) -> None:
    """A tools/call's answer is not read at all, whatever it holds."""
    server = await scripted(reply_with(b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", gzip.compress(LISTING)))
    gw = await start_gateway(mcp_config(upstream, server.port))
    await gw.team("platform", ["mcp", "read:docs"])
    token, _ = await gw.token("platform", ["mcp", "read:docs"])
    status, _, answer = await post(gw, token, call("search"))
    assert status == 200 and gzip.decompress(answer) == LISTING


async def test_a_token_pasted_as_a_tool_name_is_not_echoed(
    gw: Gateway, reader: str, mcp: McpUpstream, logs: LogReader
) -> None:
    status, _, answer = await post(gw, reader, call(f"x {reader}"))
    assert status == 403 and reader not in orjson.dumps(answer).decode()
    assert reader not in logs.raw().decode()


# -- the body on the wire -------------------------------------------------------------------------
def _head(gw: Gateway, token: str, length: int, *extra: str) -> bytes:
    port = gw.url.rsplit(":", 1)[1]
    lines = [
        f"POST {MCP_PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_expect_100_continue_gets_its_continue_before_the_body(gw: Gateway, reader: str, mcp: McpUpstream) -> None:
    body = orjson.dumps(call("search"))
    port = int(gw.url.rsplit(":", 1)[1])
    stream, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_head(gw, reader, len(body), "Expect: 100-continue"))
        await writer.drain()
        assert await asyncio.wait_for(stream.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        await writer.drain()
        assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    [(_, headers, seen)] = mcp.seen
    assert seen == body and "Expect" not in headers


async def test_a_stalled_body_is_408_and_nothing_is_forwarded(
    start_gateway: Callable[..., Awaitable[Gateway]], upstream: int, mcp: McpUpstream
) -> None:
    config = mcp_config(upstream, mcp.port)
    config["limits"] = {"body_timeout": "1s"}
    gw = await start_gateway(config)
    await gw.team("platform", ["mcp", "read:docs"])
    token, _ = await gw.token("platform", ["mcp", "read:docs"])
    port = int(gw.url.rsplit(":", 1)[1])
    status, _, body = await raw(port, _head(gw, token, 500) + b'{"jsonrpc": "2.0"', timeout=GENEROUS)
    assert status == 408 and orjson.loads(body)["error"]["data"]["error"] == "request_timeout"
    assert mcp.seen == []
