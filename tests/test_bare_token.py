"""A token's body without its prefix (key id, secret, checksum) is still a credential: in the
query string or a cookie it is refused like a whole token, before anything reaches the upstream
(SECURITY.md class 3). A 50-character value that is not a token (no valid checksum) passes."""

from __future__ import annotations

import pytest

from tests.helpers.gateway import APIS
from tests.helpers.rawhttp import Env, raw, request
from tokenward.gateway.tokens import BODY_LEN, contains_bare_token


def bare(token: str) -> str:
    return token[-BODY_LEN:]


@pytest.mark.parametrize(
    "shape",
    [
        "?key={b}",
        "?x=1&k={b}",
        "?{b}",
        "?k=%22{b}%22",
        "?k=a+{b}",
        "?k=%20{b}%20",
        "?k={b}&k=2",
    ],
)
async def test_a_bare_token_in_the_query_is_refused(env: Env, shape: str) -> None:
    target = APIS + shape.format(b=bare(env.token))
    status, _, body = await raw(env.gw.server.proxy_port, request(target, env.host, env.token))
    assert status == 400, body
    assert b'"step":"credential"' in body.replace(b" ", b"")
    assert env.rec.seen == []


async def test_a_bare_token_in_a_cookie_is_refused(env: Env) -> None:
    data = request(APIS, env.host, env.token, f"Cookie: session={bare(env.token)}")
    status, _, _ = await raw(env.gw.server.proxy_port, data)
    assert status == 400
    assert env.rec.seen == []


async def test_fifty_characters_that_are_not_a_token_pass(env: Env) -> None:
    body = bare(env.token)
    other = body[:-1] + ("A" if body[-1] != "A" else "B")  # checksum no longer matches
    status, _, _ = await raw(env.gw.server.proxy_port, request(f"{APIS}?k={other}", env.host, env.token))
    assert status == 200
    assert len(env.rec.seen) == 1


def test_only_a_whole_run_with_a_valid_checksum_counts() -> None:
    from tokenward.gateway.tokens import generate

    token, _ = generate("tw_sat")
    prefixes = frozenset({"tw_sat", "tw_old"})
    assert contains_bare_token(f"a={bare(token)}", prefixes)
    assert not contains_bare_token(f"a=x{bare(token)}", prefixes)  # part of a longer run
    assert not contains_bare_token(f"a={bare(token)[:-1]}", prefixes)
    assert not contains_bare_token(f"a={bare(token)}", frozenset({"other"}))

