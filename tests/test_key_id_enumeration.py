"""A known key id and an unknown one cost the same work (issue 10, item 15).

A wrong secret for a known key id and any secret for an unknown key id must do the same
work: the same number of store round trips, the same hashing, the same cache behaviour, and
the same answer when the store is down. Counted, not timed (bench/timing_oracle.py times it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import tokenward.gateway.tokens
from tests.helpers.gateway import APIS, Gateway
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.tokens import BASE62, SECRET_LEN, checksum, generate


def wrong_secret(key_id: str, n: int) -> str:
    secret = (f"{n:d}" + BASE62 * 2)[:SECRET_LEN]
    head = f"tw_sat_{key_id}{secret}"
    return head + checksum(head)


def unknown(n: int) -> str:
    return wrong_secret(generate("tw_sat")[1].key_id, n)


async def get(gw: Gateway, token: str) -> tuple[int, dict[str, Any]]:
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        body = await r.json()
        body.pop("request_id", None)
        return r.status, body


class Work:
    """Counts the authenticator's store reads and secret-check computations."""

    def __init__(self, gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.checks = 0
        store = gw.runtime.store
        real_get, real_check = store.get_token, tokenward.gateway.tokens.secret_check

        async def get_token(key_id: str) -> Any:
            self.reads += 1
            return await real_get(key_id)

        def secret_check(*args: Any) -> str:
            self.checks += 1
            return real_check(*args)

        monkeypatch.setattr(store, "get_token", get_token)
        monkeypatch.setattr(tokenward.gateway.tokens, "secret_check", secret_check)

    def take(self) -> tuple[int, int]:
        counted = (self.reads, self.checks)
        self.reads = self.checks = 0
        return counted


@pytest.fixture
async def platform(gateway: Gateway) -> Gateway:
    await gateway.team("platform", ["read:apis"])
    return gateway


async def test_known_and_unknown_key_ids_cost_the_same_work(platform: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = platform
    token, kid = await gw.token("platform", ["read:apis"])
    assert (await get(gw, token))[0] == 200  # in use: its record is in the cache
    work = Work(gw, monkeypatch)
    rounds = 40
    known, unknown_ = [], []
    for n in range(rounds):  # interleaved, each token new (the negative cache never helps)
        known.append((await get(gw, wrong_secret(kid, n)), work.take()))
        unknown_.append((await get(gw, unknown(n)), work.take()))
    answers = {str(answer) for answer, _ in known + unknown_}
    assert answers == {str((401, {"error": "invalid_token", "message": "invalid token", "step": "token"}))}
    assert [cost for _, cost in known] == [cost for _, cost in unknown_] == [(1, 1)] * rounds
    # the same token again: the negative cache answers both, with no work at all
    for n in range(3):
        assert (await get(gw, wrong_secret(kid, n)))[0] == 401 and work.take() == (0, 0)
        assert (await get(gw, unknown_token_again := unknown(1000 + n)))[0] == 401
        work.take()
        assert (await get(gw, unknown_token_again))[0] == 401 and work.take() == (0, 0)
    assert (await get(gw, token))[0] == 200 and work.take() == (0, 0)  # the cached path: no work


async def test_concurrent_probes_share_reads_alike(platform: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = platform
    token, kid = await gw.token("platform", ["read:apis"])
    assert (await get(gw, token))[0] == 200
    work = Work(gw, monkeypatch)
    other = generate("tw_sat")[1].key_id
    for key_id in (kid, other):
        answers = await asyncio.gather(*(get(gw, wrong_secret(key_id, 100 + n)) for n in range(20)))
        assert {status for status, _ in answers} == {401}
        reads, checks = work.take()
        assert checks == 20 and 1 <= reads <= 20
        # every probe reads (shared only with probes in flight at the same moment)


async def test_a_store_outage_answers_known_and_unknown_ids_alike(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any], tmp_path: Path
) -> None:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    try:
        config["redis"] = {"stale_if_error": "5m"}
        gw = await start_gateway(config, url=server.url)
        await gw.team("platform", ["read:apis"])
        token, kid = await gw.token("platform", ["read:apis"])
        assert (await get(gw, token))[0] == 200
        assert (await get(gw, wrong_secret(kid, 1)))[0] == 401
        server.stop()
        known = await get(gw, wrong_secret(kid, 2))
        other = await get(gw, unknown(0))
        assert known == other and known[0] == 503
        assert (await get(gw, token))[0] == 200  # a proven token rides out the outage
    finally:
        server.stop()
