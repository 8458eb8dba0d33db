"""Free-form metadata on tokens: a JSON object the admin API stores, shows and searches, and
the gateway never reads (it is not in the identity headers: the upstream sees who calls,
not the notes an admin keeps about the token).

Bounded like every stored field that people read, because a record is cached by every
gateway process and rendered in every list row: at most MAX_KEYS keys, MAX_BYTES of JSON,
values nested at most MAX_DEPTH deep, keys of KEY_TEXT, every string printable, every
number finite and within ±(2**53 - 1) (larger ones are refused, never stored rounded). A list is
searched with `?metadata=KEY=VALUE` (repeatable: all must match): exact match on a string
value, or on the JSON text of a number, boolean or null (`?metadata=tier=2`); arrays and
objects are stored and shown but never match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from tokenward.gateway.text import all_shown
from tokenward.rules import Invalid

MAX_KEYS = 32
MAX_BYTES = 4096
MAX_DEPTH = 4  # the object itself is depth 1
KEY_TEXT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KEY = re.compile(KEY_TEXT)
MAX_FILTERS = 8
MAX_SAFE_INTEGER = 2**53 - 1  # numbers beyond this lose digits in JavaScript and most JSON readers
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        f"free-form notes on the token (owner, ticket, cost centre): a JSON object of at most {MAX_KEYS} "
        f"keys and {MAX_BYTES} bytes serialized, keys of letters, digits, '_', '.' and '-' (at most 64), "
        f"values nested at most {MAX_DEPTH - 1} levels, numbers finite and within ±{MAX_SAFE_INTEGER} "
        "(write bigger ones as strings); never sent to the upstream"
    ),
    "maxProperties": MAX_KEYS,
}
RULES = (
    f"at most {MAX_KEYS} keys and {MAX_BYTES} bytes of JSON; keys are 1 to 64 letters, digits, '_', '.' "
    "or '-', starting with a letter or digit"
)


def metadata_field(value: object, field: str = "metadata") -> dict[str, Any]:
    """The metadata a request gives, checked (Invalid with the rule it breaks)."""
    if not isinstance(value, dict):
        raise Invalid(f'{field}: expected a JSON object, e.g. {{"owner": "alice"}}', field)
    if len(value) > MAX_KEYS:
        raise Invalid(f"{field}: {len(value)} keys; {RULES}", field)
    for key, item in value.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            shown = repr(key) if isinstance(key, str) and len(key) <= 64 and all_shown(key) else "a key"
            raise Invalid(f"{field}: {shown} is not a metadata key; {RULES}", field)
        _check_value(item, f"{field}.{key}", 2)
    size = len(orjson.dumps(value))
    if size > MAX_BYTES:
        raise Invalid(f"{field}: {size} bytes of JSON; {RULES}", field)
    return dict(value)


def _check_value(value: object, field: str, depth: int) -> None:
    if isinstance(value, str):
        if not all_shown(value):
            raise Invalid(f"{field}: holds a control or invisible character; write text only", field)
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise Invalid(f"{field}: nested too deep (at most {MAX_DEPTH - 1} levels inside metadata)", field)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for sub, item in items:
            if isinstance(value, dict) and not (isinstance(sub, str) and all_shown(sub)):
                raise Invalid(f"{field}: keys inside metadata values must be printable text", field)
            _check_value(item, f"{field}.{sub}" if isinstance(value, dict) else f"{field}[{sub}]", depth + 1)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, field)
    elif value is not None and not isinstance(value, bool):
        raise Invalid(f"{field}: not a JSON value", field)


def _check_number(value: float, field: str) -> None:
    """A number every JSON reader holds exactly: finite, within ±MAX_SAFE_INTEGER. (Our JSON
    parser reads an integer too large for 64 bits as a float, so a float that large is
    refused too: it may be an integer that has already lost digits.)"""
    if not math.isfinite(value) or abs(value) > MAX_SAFE_INTEGER:
        raise Invalid(
            f"{field}: a number beyond ±{MAX_SAFE_INTEGER} (2**53 - 1) or not finite, which JSON readers "
            "do not hold exactly; write it as a string, e.g. \"123456789012345678901234567890\"",
            field,
        )


def metadata_filters(texts: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`?metadata=KEY=VALUE` query values as (key, value) pairs (Invalid with an example)."""
    pairs = []
    for text in texts:
        key, sep, wanted = text.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise Invalid(
                "metadata: expected KEY=VALUE, e.g. ?metadata=owner=alice (repeat it to require several)",
                "metadata",
            )
        pairs.append((key, wanted))
    if len(pairs) > MAX_FILTERS:
        raise Invalid(f"metadata: at most {MAX_FILTERS} filters", "metadata")
    return tuple(pairs)


def matches(metadata: Mapping[str, Any], filters: Iterable[tuple[str, str]]) -> bool:
    """Every (key, value) is in `metadata`: a string equal to value, or a number, boolean or
    null whose JSON text is value."""
    for key, wanted in filters:
        if key not in metadata:
            return False
        held = metadata[key]
        if isinstance(held, str):
            if held != wanted:
                return False
        elif isinstance(held, dict | list) or orjson.dumps(held).decode() != wanted:
            return False
    return True
