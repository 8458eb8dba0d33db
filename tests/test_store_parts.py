"""The store's parts (issue 12): each module works on its own against the real store, and the
invariants the split must keep (one slot per org, every script loads) hold for every part."""

from __future__ import annotations

import inspect

import orjson
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tokenward.gateway import store_scripts
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import RedisSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AUDIT_BATCH, AppendProgress, AuditEntry, AuditStream
from tokenward.gateway.store_changes import Change, ChangeFeed
from tokenward.gateway.store_connect import connect
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink, StoreUnavailable
from tokenward.gateway.store_pages import IndexPages


def test_every_key_of_one_org_is_in_the_org_slot() -> None:
    """A record and its indexes change in one script or MULTI only if they share a slot."""
    org_slot = key_slot(b"{acme}")
    checked = 0
    for name, method in inspect.getmembers(Keys, inspect.isfunction):
        params = list(inspect.signature(method).parameters)
        if params[:1] != ["org"]:
            continue
        args = ["acme", *(["platform"] if "team" in params else []), *(["deploy"] if "name" in params else [])]
        args += ["sa_0123456789abcdef"] if "account_id" in params else []  # org-level service accounts
        args += ["k1"] if "parent_id" in params else []  # a parent token's children
        key = method(*args)
        assert key_slot(key.encode()) == org_slot, name
        checked += 1
    assert checked >= 9
    assert Keys.token("k1") == "tw:tok:{k1}"  # a token's record: its own key id's slot


async def test_every_script_loads_on_the_server(redis_url: str) -> None:
    scripts = {n: v for n, v in vars(store_scripts).items() if n.isupper() and isinstance(v, str)}
    assert len(scripts) == 12  # (issue 14: ADD_USAGE, CLAIM_LEGACY and RELEASE_LEGACY)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for name, text in scripts.items():
            sha = await client.script_load(text)
            assert await client.script_exists(sha) == [True], name
    finally:
        await client.aclose()


async def test_the_link_alone_runs_commands_and_reports_outages(redis_url: str) -> None:
    link = StoreLink(connect(RedisSettings(url=redis_url)))
    try:
        assert await link.ping()
        assert (await link.location()).startswith("redis://")
        assert await link._write("k", ("SET", "k", "v")) == [b"OK"]  # raw replies, durable
        assert link.up and link.outages == 0
    finally:
        await link.close()
    dead = StoreLink(aioredis.Redis(port=1, socket_connect_timeout=0.5))
    with pytest.raises(StoreUnavailable):
        await dead.ping()
    assert not dead.up and dead.outages == 1
    await dead.close()


async def test_the_change_feed_alone_publishes_and_reads_back(redis_url: str) -> None:
    feed = ChangeFeed(connect(RedisSettings(url=redis_url)))
    heard: list[Change] = []
    feed.local_listeners.append(heard.append)
    try:
        tail = await feed.changelog_tail()
        await feed.publish([Change("token", "k1"), Change("team", "acme/platform")])
        last, changes, gap = await feed.changes_since(tail)
        assert [(c.kind, c.ident) for c in changes] == [("token", "k1"), ("team", "acme/platform")]
        assert [(c.kind, c.ident) for c in heard] == [("token", "k1"), ("team", "acme/platform")]
        assert not gap and last != tail
    finally:
        await feed.close()


async def test_the_audit_stream_alone_appends_and_writes_audited(redis_url: str) -> None:
    audit = AuditStream(connect(RedisSettings(url=redis_url)))
    try:
        await audit.append_audit([b'{"n": 1}', b'{"n": 2}'], maxlen=1000)
        replies = await audit._write_audited("k", [("SET", "k", "v")], AuditEntry(b'{"n": 3}', 1000))
        assert replies == [b"OK"]
        rows = await audit.read_audit(reverse=False)
        assert [event for _, event in rows] == [{"n": 1}, {"n": 2}, {"n": 3}]
    finally:
        await audit.close()


async def test_audit_batches_go_in_one_write_in_order(redis_url: str) -> None:
    """append_audit packs its script calls itself: every event arrives once, in order, bytes
    as they were (CR LF and all); a failing call fails the whole, and the connection it left
    with unread replies is closed (tests/test_audit_backlog.py)."""
    audit = AuditStream(connect(RedisSettings(url=redis_url)))
    try:
        events = [orjson.dumps({"n": n, "text": "a\r\n$5\r\n*1"}) for n in range(AUDIT_BATCH * 3 + 7)]
        await audit.append_audit(events, maxlen=100_000)
        await audit.append_audit([], maxlen=100_000)
        rows = await audit.read_audit(reverse=False, count=1000)
        assert [event for _, event in rows] == [orjson.loads(e) for e in events]

        await audit.client.delete(Keys.audit)
        await audit.client.set(Keys.audit, "not a stream")  # every XADD now fails
        progress = AppendProgress()
        with pytest.raises(StoreUnavailable, match="ResponseError"):
            await audit.append_audit(events, maxlen=100_000, progress=progress)
        assert progress.appended == 0  # none confirmed: the flush keeps them all
        await audit.client.delete(Keys.audit)
        for _ in range(5):  # each connection of the pool answers its own commands
            assert await audit.ping()
        await audit.append_audit(events[:3], maxlen=100_000)
        rows = await audit.read_audit(reverse=False)
        assert [event["n"] for _, event in rows] == [0, 1, 2]
    finally:
        await audit.close()


async def test_pages_alone_and_through_the_store(redis_url: str) -> None:
    store = Store(connect(RedisSettings(url=redis_url)))
    pages = IndexPages(connect(RedisSettings(url=redis_url)))
    try:
        for name in ("c", "a", "b"):
            await store.create_team(TeamRecord("acme", name, parse_scopes(["read:apis"]), 0.0, "t"))
        names, records, more = await pages.team_page("acme", None, 2)
        assert (names, [r.name for r in records], more) == (["a", "b"], ["a", "b"], True)
        assert (await store.team_page("acme", "b", 2))[0] == ["c"]
    finally:
        await store.close()
        await pages.close()
