"""The form-body scanner finds a method override however the body is cut into chunks: the
gateway listener hands the forwarder each piece as it arrives, so a client choosing its TCP
segments (or chunked framing) chooses the cuts."""

from __future__ import annotations

import pytest

from tokenward.gateway.forms import OverrideFound, body_scanner

NAMES = [
    b"_method",
    b"X-HTTP-Method-Override",
    b"%u0058-HTTP-Method-Override",
    b"X-HTTP-%u004D%u0065%u0074%u0068%u006F%u0064-Override",
    b"%u005Fmethod",
    b"_%u006dethod",
    b"_%6d%65%74%68%6f%64",
    b"+" * 1100 + b"_%u006d%u0065%u0074%u0068%u006f%u0064",
]


def scan(body: bytes, size: int) -> bool:
    scanner = body_scanner(["application/x-www-form-urlencoded"], [])
    assert scanner is not None
    try:
        for i in range(0, len(body), size):
            scanner.feed(body[i : i + size])
    except OverrideFound:
        return True
    return False


@pytest.mark.parametrize("name", NAMES)
def test_an_override_name_is_found_at_every_chunk_size(name: bytes) -> None:
    body = b"a=1&" + name + b"=DELETE&b=2"
    missed = [size for size in range(1, 64) if not scan(body, size)]
    assert missed == []


def test_names_that_only_contain_method_are_not_overrides() -> None:
    body = b"methods=1&a_method_b=2&" + b"x" * 100 + b"=3"
    assert [size for size in range(1, 64) if scan(body, size)] == []
