"""The memos of the target step (exchange.SettingsView.targets: raw target -> canonical
Target) and of the route match (routes.Router: (method, canonical path) -> Match): the same
answers as without them, refusals never remembered, nothing token-shaped kept, bounded, and
one memo per settings object (a reload starts empty)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from tests.helpers.gateway import base_config
from tokenward.gateway.exchange import SettingsView, open_exchange, read_target
from tokenward.gateway.paths import MEMO_MAX_CHARS, MEMO_SIZE, memo_safe
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.routes import AmbiguousPath, Route, Router, parse_template
from tokenward.gateway.settings import Settings, settings_from_dict

BODY = "A1b2C3d4E5f6" + "x" * 32 + "Z9y8X7"  # as long as a token's body (50 letters and digits)


def settings() -> Settings:
    return settings_from_dict(base_config(9), "test")


def mocked(path: str, headers: dict[str, str] | None = None) -> Any:
    request = make_mocked_request("GET", path, headers=headers or {})
    request._transport_peername = ("198.51.100.7", 1234)  # type: ignore[attr-defined]
    return request


def target_of(view: SettingsView, path: str, headers: dict[str, str] | None = None) -> Any:
    ex = open_exchange(mocked(path, headers), view)
    return read_target(ex)


def refusal_of(view: SettingsView, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    with pytest.raises(Refusal) as refused:
        target_of(view, path, headers)
    return refused.value.status, str(refused.value.step), refused.value.message


def test_a_target_read_twice_is_the_same_target() -> None:
    view = SettingsView(settings())
    first = target_of(view, "/orgs/%61cme/apis?x=1")
    assert (first.path, first.query) == ("/orgs/acme/apis", "x=1")
    assert "/orgs/%61cme/apis?x=1" in view.targets
    assert target_of(view, "/orgs/%61cme/apis?x=1") is first


@pytest.mark.parametrize(
    "raw",
    ["/a/../b", "/a/%2e%2e/b", "/a//b", "/a;x", "/x?access_token=1", "/x?_method=DELETE", "/a%zz", "*"],
)
def test_refusals_are_not_remembered(raw: str) -> None:
    view = SettingsView(settings())
    first = refusal_of(view, raw)
    assert first[0] == 400
    assert refusal_of(view, raw) == first
    assert len(view.targets) == 0


def test_cookies_are_checked_on_every_request() -> None:
    view = SettingsView(settings())
    prefix = sorted(view.prefixes)[0]
    target_of(view, "/orgs/acme/apis")
    status, step, _ = refusal_of(view, "/orgs/acme/apis", {"Cookie": f"session={prefix}_{BODY}"})
    assert (status, step) == (400, str(Step.CREDENTIAL))


def test_absolute_form_depends_on_host_and_is_not_remembered() -> None:
    view = SettingsView(settings())
    target = target_of(view, "http://gw.example/orgs/acme/apis", {"Host": "gw.example"})
    assert target.path == "/orgs/acme/apis"
    assert len(view.targets) == 0
    status, step, _ = refusal_of(view, "http://gw.example/orgs/acme/apis", {"Host": "other.example"})
    assert (status, step) == (400, str(Step.PATH))


@pytest.mark.parametrize(
    "raw",
    [
        f"/files/{BODY}",
        f"/files/tw_{BODY}",
        "/files/" + "".join(f"%{ord(c):02x}" for c in BODY),  # decoded: a token's body
        "/files/" + "%2561" * 3 + BODY[3:] + "?q=1",  # decoded twice
        f"/files/x?q={BODY}",
        "/" + "a/" * (MEMO_MAX_CHARS // 2),  # longer than MEMO_MAX_CHARS
    ],
)
def test_token_shaped_or_long_targets_are_not_remembered(raw: str) -> None:
    assert not memo_safe(raw)
    view = SettingsView(settings())
    try:
        target_of(view, raw)
    except Refusal:
        pass
    assert len(view.targets) == 0


def test_short_plain_targets_may_be_remembered() -> None:
    assert memo_safe("/orgs/acme/teams/t/apis?limit=10")
    assert memo_safe("/a/" + "b" * (len(BODY) - 1))
    assert memo_safe("/" + "a/" * ((MEMO_MAX_CHARS - 1) // 2))


def test_each_settings_object_has_its_own_memo() -> None:
    s = settings()
    one, two = SettingsView(s), SettingsView(settings())
    target_of(one, "/orgs/acme/apis")
    assert len(one.targets) == 1 and len(two.targets) == 0
    assert one.targets is not two.targets


def route(path: str, methods: tuple[str, ...] | None = None, index: int = 0) -> Route:
    shape, names = parse_template(path)
    return Route(
        index=index,
        path=path,
        methods=frozenset(methods) if methods is not None else None,
        upstream="up",
        scopes=(),
        public=True,
        resource={},
        websocket=False,
        shape=shape,
        param_names=names,
    )


def test_router_remembers_matches_only() -> None:
    router = Router([route("/a/{x}", ("GET",), 0), route("/a/{x}", ("POST",), 1), route("/b/Admin", None, 2)])
    first = router.match("GET", "/a/1")
    assert first is not None and first.params == {"x": "1"} and first.route.index == 0
    assert router.match("GET", "/a/1") is first
    post = router.match("POST", "/a/1")
    assert post is not None and post.route.index == 1  # the method is part of the key
    head = router.match("HEAD", "/a/1")
    assert head is not None and head.route.index == 0
    assert router.match("GET", "/nothing") is None and router.match("GET", "/nothing") is None
    assert ("GET", "/nothing") not in router._memo


def test_router_ambiguity_is_raised_every_time() -> None:
    router = Router([route("/b/{x}", None, 0), route("/b/admin", None, 1)])
    messages = []
    for _ in range(2):
        with pytest.raises(AmbiguousPath) as refused:
            router.match("GET", "/b/Admin")
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert len(router._memo) == 0


def test_router_memo_is_bounded_and_keeps_no_token_shaped_path() -> None:
    router = Router([route("/a/{x}")])
    for i in range(MEMO_SIZE + 100):
        assert router.match("GET", f"/a/{i}") is not None
    assert len(router._memo) == MEMO_SIZE
    found = router.match("GET", f"/a/{BODY}")
    assert found is not None and found.params == {"x": BODY}
    assert ("GET", f"/a/{BODY}") not in router._memo


def test_route_label_is_built_once() -> None:
    r = route("/a/{x}", ("POST", "GET"))
    assert r.label == "GET,POST /a/{x}" and route("/a").label == "* /a"
    assert r == route("/a/{x}", ("POST", "GET"))
    assert "label" not in repr(r)


def test_a_remembered_match_cannot_be_changed() -> None:
    router = Router([route("/a/{x}")])
    found = router.match("GET", "/a/1")
    assert found is not None
    with pytest.raises(TypeError):
        found.params["x"] = "2"  # type: ignore[index]
    assert router.match("GET", "/a/1") is found and found.params == {"x": "1"}
