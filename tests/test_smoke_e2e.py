from __future__ import annotations

from tests.conftest import Gateway


async def test_allowed_request_is_forwarded(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, kid = await gateway.token("platform", ["read:apis"])
    async with gateway.session.get(f"{gateway.url}/orgs/acme/teams/platform/apis", headers=gateway.auth(token)) as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["path"] == "/orgs/acme/teams/platform/apis"
