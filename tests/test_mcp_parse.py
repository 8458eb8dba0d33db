"""The MCP request parser (gateway/mcp.py) as a property: whatever bytes it accepts, every
other common reading of them is the same (the standard library's and orjson's JSON, a
case-insensitive key match as Go's encoding/json makes), so the tool it authorizes is the tool
the server runs. Bodies are built from pairs, so repeated and case-variant keys occur."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenward.gateway.mcp import JsonRpcRefusal, parse_messages

KEYS = ["jsonrpc", "id", "method", "params", "Method", "ID", "result", "extra"]
PARAM_KEYS = ["name", "Name", "NAME", "arguments", "_meta"]
SCALARS = st.one_of(
    st.sampled_from(["2.0", "tools/call", "tools/list", "Tools/Call", "search", "deploy", "ping"]),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


def render(value: Any) -> str:
    """JSON text of `value`, where a list of (key, value) pairs tagged "obj" is an object."""
    if isinstance(value, tuple) and value[0] == "obj":
        return "{" + ", ".join(f"{json.dumps(k)}: {render(v)}" for k, v in value[1]) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


NAMES = st.sampled_from(["search", "deploy", "Search"])
METHODS = st.sampled_from(["tools/call", "tools/call", "tools/list", "Tools/Call", "ping"])


@st.composite
def pairs(draw: st.DrawFn, base: list[tuple[str, Any]], keys: list[str], values: st.SearchStrategy[Any]) -> tuple[str, list[Any]]:
    """An object: the `base` pairs, maybe a few more (repeated or case-variant keys among
    them), in any order."""
    extra = draw(st.lists(st.tuples(st.sampled_from(keys), values), max_size=2))
    return ("obj", draw(st.permutations(base + extra)))


@st.composite
def message(draw: st.DrawFn) -> tuple[str, list[Any]]:
    params = draw(pairs([("name", draw(NAMES)), ("arguments", ("obj", []))], PARAM_KEYS, st.one_of(NAMES, SCALARS)))
    base = [("jsonrpc", "2.0"), ("id", draw(st.integers(0, 3))), ("method", draw(METHODS)), ("params", params)]
    return draw(pairs(base, KEYS, st.one_of(METHODS, SCALARS)))


body = st.one_of(message(), st.lists(message(), min_size=0, max_size=3))


def go_reading(obj: dict[str, Any], key: str) -> Any:
    """What a case-insensitive decoder reads for `key`: Go's encoding/json stores every key
    that folds to the field's name, in order, so the last one wins."""
    found = None
    for k, v in obj.items():
        if k.lower() == key:
            found = v
    return found


@settings(max_examples=400, deadline=None)
@given(body)
def test_an_accepted_body_has_one_reading(value: Any) -> None:
    text = render(value).encode()
    try:
        messages, batch = parse_messages(text)
    except JsonRpcRefusal as refusal:
        assert refusal.status == 400
        return
    assert messages == (json.loads(text) if batch else [json.loads(text)])
    assert json.loads(text) == orjson.loads(text)  # no repeated key: every parser agrees
    for found in messages:
        assert go_reading(found, "method") == found.get("method")
        if found.get("method") == "tools/call":
            assert go_reading(found["params"], "name") == found["params"]["name"]
            assert isinstance(found["params"]["name"], str)
