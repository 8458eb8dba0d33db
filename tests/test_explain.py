"""`config check` warnings and `config explain` (with and without a token, against the real store)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.gateway import ROOT, Gateway, base_config, last_char_changed
from tests.helpers.process import env_for_subprocess
from tokenward.gateway.explain import config_warnings, explain_route, explain_token
from tokenward.gateway.settings import settings_from_dict


def test_warnings() -> None:
    config = base_config(9)
    config["routes"] += [
        {"methods": ["GET"], "path": "/{anything:*}", "upstream": "registry", "public": True},
        {"methods": ["GET"], "path": "/misc", "upstream": "registry", "scopes": ["read:misc"]},
    ]
    warnings = config_warnings(settings_from_dict(config))
    assert any("starts with a parameter" in w for w in warnings)
    assert any("overlaps protected routes[0]" in w for w in warnings)
    assert any(w.startswith("routes[7]: GET /misc names no resource org") for w in warnings)
    assert config_warnings(settings_from_dict(base_config(9))) == []


def test_explain_route() -> None:
    settings = settings_from_dict(base_config(9))
    lines, match = explain_route(settings, "post", "/orgs/acme/teams/platform/apis/pets/specs?x=1")
    assert match is not None
    assert "route: routes[3] POST,PUT /orgs/{org}/teams/{team}/apis/{api}/specs" in lines
    assert "scopes: write:specs" in lines and "params: org=acme, team=platform, api=pets" in lines
    assert (
        lines[-1] == "upstream: registry -> http://127.0.0.1:9/orgs/acme/teams/platform/apis/pets/specs?x=1"
    )
    lines, match = explain_route(settings, "GET", "/orgs/acme/teams/platform/%61pis")
    assert lines[0] == "canonical path: /orgs/acme/teams/platform/apis"
    assert explain_route(settings, "GET", "/nope")[0] == [
        "404 route: no route matches this request (default deny)"
    ]
    assert explain_route(settings, "GET", "/a//b")[0][0].startswith("400 path")


async def test_explain_with_a_token(gateway: Gateway, config: dict[str, Any], redis_url: str) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"], name="reader")
    with_store = copy.deepcopy(config)
    with_store["redis"] = {"url": redis_url}
    settings = settings_from_dict(with_store)
    _, match = explain_route(settings, "GET", "/orgs/acme/teams/platform/apis")
    allowed = await explain_token(settings, match, token)
    assert allowed[-1] == "decision: allowed" and "effective scopes: read:apis" in allowed
    _, match = explain_route(settings, "POST", "/orgs/acme/teams/platform/apis")
    assert await explain_token(settings, match, token) == [
        "decision: 403 at step scope: token lacks required permission: write:apis"
    ]
    _, match = explain_route(settings, "GET", "/orgs/other/teams/platform/apis")
    assert (await explain_token(settings, match, token))[0].startswith("decision: 403 at step org")
    assert (await explain_token(settings, match, last_char_changed(token)))[0].startswith(
        "decision: 401 at step credential"
    )


def test_explain_cli(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(9)))
    cli = [sys.executable, "-c", "from tokenward.cli import main; main()", "config", "explain"]
    ok = subprocess.run(
        [*cli, "GET", "/health", "--config", str(path)],
        cwd=ROOT,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "access: public" in ok.stdout
    no = subprocess.run(
        [*cli, "GET", "/nope", "--config", str(path)],
        cwd=ROOT,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
    )
    assert no.returncode == 1 and "404 route" in no.stdout
