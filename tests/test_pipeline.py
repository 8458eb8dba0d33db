"""The pipeline's first steps without a server (issue 12, item 7): the edge builds the
`Exchange` once (trust, client address, request id), the target step canonicalizes, and
forward-auth swaps in the asked-about request; later steps read what these built."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from tests.helpers.gateway import base_config
from tokenward.gateway.exchange import (
    VERIFY_PATH,
    SettingsView,
    ask_forward_auth,
    check_request,
    open_exchange,
    read_target,
)
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.settings import Settings, settings_from_dict

ROOT = Path(__file__).resolve().parent.parent


def settings() -> Settings:
    return settings_from_dict(base_config(9), "test")


def mocked(path: str, peer: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    request = make_mocked_request(method, path, headers=headers or {})
    request._transport_peername = (peer, 1234)  # type: ignore[attr-defined]
    return request


def test_edge_from_a_client() -> None:
    s = settings()
    request = mocked("/orgs/org/teams/team/apis?x=1", "198.51.100.7", {"X-Request-Id": "mine", "X-Forwarded-For": "1.2.3.4"})
    ex = open_exchange(request, SettingsView(s))
    assert (ex.peer, ex.trusted, ex.client_ip) == ("198.51.100.7", False, "198.51.100.7")
    assert ex.request_id != "mine" and ex.client_request_id == "mine"
    check_request(request, s.limits)
    target = read_target(ex)
    assert ex.target is target and (target.path, target.query) == ("/orgs/org/teams/team/apis", "x=1")
    assert ex.path == target.path and ex.mode == "proxy"


def test_edge_from_a_trusted_proxy() -> None:
    s = settings()
    request = mocked("/health", "10.99.0.5", {"X-Request-Id": "abcdef0123456789", "X-Forwarded-For": "1.2.3.4"})
    ex = open_exchange(request, SettingsView(s))
    assert (ex.trusted, ex.client_ip, ex.request_id, ex.client_request_id) == (True, "1.2.3.4", "abcdef0123456789", None)


def test_forward_auth_target_step() -> None:
    s = settings()
    view = SettingsView(s)
    asked = {"X-Original-URI": "/orgs/org/teams/team/apis", "X-Original-Method": "post"}
    ex = open_exchange(mocked(VERIFY_PATH, "10.99.0.5", asked), view)
    ask_forward_auth(ex)
    read_target(ex)
    assert (ex.mode, ex.method, ex.path) == ("forward_auth", "POST", "/orgs/org/teams/team/apis")
    outsider = open_exchange(mocked(VERIFY_PATH, "198.51.100.7", asked), view)
    with pytest.raises(Refusal) as denied:
        ask_forward_auth(outsider)
    assert (denied.value.status, denied.value.step) == (403, Step.REQUEST)


def test_trust_is_decided_once_at_the_edge() -> None:
    """After the edge, no step looks at the peer or the trusted-proxy networks again: the
    forward step and the header rules read `Exchange.trusted` and `Exchange.peer`."""
    for name in ("proxy.py", "headers.py", "pipeline.py"):
        names = {
            node.attr if isinstance(node, ast.Attribute) else node.id
            for node in ast.walk(ast.parse((ROOT / "gateway" / name).read_text()))
            if isinstance(node, ast.Attribute | ast.Name)
        }
        assert not names & {"remote", "in_networks", "is_trusted", "client_address"}, name
