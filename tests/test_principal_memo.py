"""The decision's hot path for a proven token (gateway/principal.py): the principal derived
once from the token, team and account records the cache holds, reused only while those are
the very objects it was derived from, and every per-request check (status, expiry,
allowed_cidrs, the accepted prefixes, a trusted cache) still made on every request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from tests.helpers.gateway import APIS, Gateway, apis_status, base_config
from tokenward.gateway import decision, principal
from tokenward.gateway.decision import Principal, TokenRefused, authorize
from tokenward.gateway.records import TeamRecord, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict


async def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def proven(gw: Gateway, token: str, client: str | None = "127.0.0.1") -> Principal:
    """The principal once the hot path has one (the first call verifies, the next derive)."""
    auth = gw.runtime.authenticator
    await auth.authenticate(token, client)
    # A change notification still in flight (the test's own write) may drop a record between
    # two calls, and the principal is then derived anew: settle first, then it is remembered.
    first = await auth.authenticate(token, client)
    for _ in range(50):
        again = await auth.authenticate(token, client)
        if again is first:
            return first
        first = again
        await asyncio.sleep(0.02)
    raise AssertionError("the principal was never remembered")


async def test_one_principal_per_record_objects_replaced_with_them(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    auth, cache = gateway.runtime.authenticator, gateway.runtime.cache
    first = await proven(gateway, token)
    assert first.token.id == kid and first.team_permissions == parse_scopes(["read:apis"])
    assert auth.argon2_verifications == 1
    hits = cache.stats.hits
    assert await auth.authenticate(token, "127.0.0.1") is first
    assert cache.stats.hits == hits + 1  # counted as the full path counts a cached record

    record = await gateway.runtime.store.get_token(kid)
    assert record is not None
    await gateway.runtime.store.put_token(replace(record, name="renamed"))  # a change: a new record object
    await until(lambda: cache.record(kid) is None or cache.record(kid).name == "renamed")  # type: ignore[union-attr]
    renamed = await proven(gateway, token)  # read again (the full path), then remembered anew
    assert renamed is not first and renamed.token.name == "renamed"

    # the team's permissions change: its record is replaced, so is the principal
    await gateway.runtime.store.put_team(TeamRecord("acme", "platform", parse_scopes(["read:specs"]), 0.0, "test"))
    await until(lambda: cache.team("acme", "platform") is None)
    narrowed = await proven(gateway, token)
    # (the token record may have been read again meanwhile, e.g. a late notice of the rename:
    # the same record, not necessarily the same object)
    assert narrowed is not renamed and narrowed.token == renamed.token
    assert narrowed.team_permissions == parse_scopes(["read:specs"])
    assert auth.argon2_verifications == 1  # the proof held throughout


async def test_revocation_refuses_the_next_request(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    for _ in range(3):
        assert await apis_status(gateway, token) == 200
    record = await gateway.runtime.store.get_token(kid)
    assert record is not None
    await gateway.runtime.store.put_token(record.revoked(time.time(), "test"))
    with pytest.raises(TokenRefused) as refused:
        await gateway.runtime.authenticator.authenticate(token, "127.0.0.1")
    assert (refused.value.step, refused.value.message) == (Step.STATUS, "token revoked")
    assert refused.value.token is not None and refused.value.token.id == kid
    assert await apis_status(gateway, token) == 401


async def test_expiry_is_checked_on_every_request(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    await gateway.team("platform", ["read:apis"])
    expires = time.time() + 3600
    token, kid = await gateway.token("platform", ["read:apis"], expires_at=expires)
    await proven(gateway, token)
    later = lambda: expires + 1  # noqa: E731  (the clock both paths read)
    monkeypatch.setattr(principal, "now", later)
    monkeypatch.setattr(decision, "now", later)
    with pytest.raises(TokenRefused) as refused:
        await gateway.runtime.authenticator.authenticate(token, "127.0.0.1")
    assert (refused.value.step, refused.value.message, refused.value.claimed_id) == (Step.STATUS, "token expired", kid)


async def test_allowed_cidrs_are_checked_on_every_request(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"], allowed_cidrs=("10.0.0.0/8",))
    inside = await proven(gateway, token, "10.1.2.3")
    with pytest.raises(TokenRefused) as refused:
        await gateway.runtime.authenticator.authenticate(token, "192.0.2.7")
    assert (refused.value.step, refused.value.message) == (Step.STATUS, "client address not allowed for this token")
    assert refused.value.claimed_id == kid
    assert await gateway.runtime.authenticator.authenticate(token, "10.9.9.9") is inside


async def test_a_prefix_no_longer_accepted_is_refused_as_a_parse_refuses_it(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    auth = gateway.runtime.authenticator
    await proven(gateway, token)
    accepted = auth.accepted_prefixes
    auth.accepted_prefixes = frozenset({"tw_other"})  # what a reload that drops the prefix sets
    try:
        with pytest.raises(Refusal) as refused:
            await auth.authenticate(token, "127.0.0.1")
        assert (refused.value.status, refused.value.step) == (401, Step.CREDENTIAL)
        assert refused.value.message == "token prefix is not accepted here"
    finally:
        auth.accepted_prefixes = accepted


async def test_an_untrusted_cache_decides_the_full_way(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    cache = gateway.runtime.cache
    first = await proven(gateway, token)
    cache.trusted = False  # the push channel is down: no cached record is trusted
    try:
        fresh = await gateway.runtime.authenticator.authenticate(token, "127.0.0.1")
        assert fresh is not first and fresh == first and fresh.passed is None
    finally:
        cache.trusted = True


async def test_another_credential_never_takes_the_hot_path(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])
    await proven(gateway, token)
    auth = gateway.runtime.authenticator
    for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), token.upper(), token + "\u00e9"):
        with pytest.raises(Refusal) as refused:
            await auth.authenticate(wrong, "127.0.0.1")
        assert (refused.value.status, refused.value.step) == (401, Step.CREDENTIAL)
    assert auth.argon2_verifications == 1


# -- the routes a principal passes ----------------------------------------------------------------
def _router(scopes: list[str]) -> Any:
    config = base_config(9)
    config["routes"][0]["scopes"] = scopes  # GET /orgs/{org}/teams/{team}/apis
    return settings_from_dict(config, "test").router


def _principal(scopes: list[str], constraints: dict[str, str] | None = None) -> Principal:
    record = TokenRecord(
        id="AAAAAAAAAAAA", prefix="tw_sat", org="acme", team="platform", name="t", description="",
        scopes=parse_scopes(scopes), secret_hash="x", created_at=0.0, created_by="t", constraints=constraints or {},
    )  # fmt: skip
    return Principal(record, parse_scopes(["read:apis", "write:apis", "read:specs"]), passed=[])


def _refusal(match: Any, principal_: Principal) -> tuple[Step | None, str] | None:
    try:
        authorize(match, principal_)
    except Refusal as refusal:
        return refusal.step, refusal.message
    return None


def test_a_passed_route_still_checks_its_parameters_and_other_routes_are_decided_afresh() -> None:
    router = _router(["read:apis"])
    caller = _principal(["read:apis"])
    own, other_team = router.match("GET", APIS), router.match("GET", "/orgs/acme/teams/billing/apis")
    write, specs = router.match("POST", APIS), router.match("GET", APIS + "/petstore/specs")
    other_org = router.match("GET", "/orgs/other/teams/platform/apis")
    for _ in range(2):  # the first time decides, the second is remembered: the same answers
        assert _refusal(own, caller) is None
        assert _refusal(other_team, caller) == (Step.TEAM, "token is not in the same team as the resource")
        assert _refusal(other_org, caller) == (Step.ORG, "token org does not match resource org")
        assert _refusal(write, caller) == (Step.SCOPE, "token lacks required permission: write:apis")
        assert _refusal(specs, caller) == (Step.SCOPE, "token lacks required permission: read:specs")
    assert caller.passed is not None and len(caller.passed) == 1 and caller.passed[0] is own.route


def test_constraints_are_checked_on_a_passed_route() -> None:
    router = _router(["read:apis"])
    pinned = _principal(["read:secrets"], {"project": "web"})
    secrets = "/orgs/acme/projects/{}/envs/production/secrets"
    web, api = router.match("GET", secrets.format("web")), router.match("GET", secrets.format("api"))
    for _ in range(2):
        assert _refusal(web, pinned) == (Step.SCOPE, "token lacks required permission: read:secrets")
    unpinned = _principal(["read:apis"], {"project": "web"})
    apis = router.match("GET", APIS)
    for _ in range(2):
        assert _refusal(apis, unpinned) == (
            Step.CONSTRAINTS, "token is constrained to project=web and this route does not name a project",
        )
    assert unpinned.passed == []
    reader = Principal(
        replace(unpinned.token, scopes=parse_scopes(["read:secrets"])), None, passed=[]
    )  # an org-level token, its own scopes only
    for _ in range(2):
        assert _refusal(web, reader) is None
        assert _refusal(api, reader) == (
            Step.CONSTRAINTS, "token is constrained to project=web; this request is for project=api",
        )


def test_a_reloaded_route_is_decided_afresh() -> None:
    caller = _principal(["read:apis"])
    before = _router(["read:apis"]).match("GET", APIS)
    assert _refusal(before, caller) is None
    after = _router(["write:apis"]).match("GET", APIS)  # the same route, now asking for more
    assert _refusal(after, caller) == (Step.SCOPE, "token lacks required permission: write:apis")
    assert _refusal(before, caller) is None


def test_the_routes_remembered_are_bounded() -> None:
    caller = _principal(["read:apis"])
    matches = [_router(["read:apis"]).match("GET", APIS) for _ in range(principal.ROUTES_REMEMBERED + 5)]
    for match in matches:
        assert _refusal(match, caller) is None
    assert caller.passed is not None and 0 < len(caller.passed) <= principal.ROUTES_REMEMBERED


# -- the checksum a parse computes (the full path) -----------------------------------------------------
def test_the_checksum_is_the_crc32_in_six_base62_digits() -> None:
    import random
    import zlib

    from tokenward.gateway import tokens

    spread = random.Random(17)
    texts = ["", "tw_sat_", *(f"tw_sat_{spread.getrandbits(128):x}" for _ in range(2000))]
    for text in texts:
        assert tokens.checksum(text) == tokens._base62_fixed(zlib.crc32(text.encode("ascii")), 6)
    for number in (0, 1, 61, 62, 3843, 3844, 62**4 - 1, 62**4, 2**32 - 1):
        high, rest = divmod(number, 62**4)
        middle, low = divmod(rest, 62**2)
        assert tokens._PAIRS[high] + tokens._PAIRS[middle] + tokens._PAIRS[low] == tokens._base62_fixed(number, 6)
