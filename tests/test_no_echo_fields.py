"""The second review of issue 14: a pasted token is not echoed by an error's `field` (a key
of `constraints`, an unknown body key or query parameter), nor by the CLI's argument errors."""

from __future__ import annotations

from tests.helpers.gateway import TOKENS, Gateway, admin, issue, org_admin_with_team
from tests.helpers.process import run_cli


async def test_an_errors_field_does_not_echo_a_token(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    plaintext = (await issue(gateway, org_admin))["token"]
    calls = [
        ("POST", TOKENS, {"name": "x", "scopes": ["read:apis"], "constraints": {plaintext: "web"}}),
        ("POST", TOKENS, {"name": "x", "scopes": ["read:apis"], plaintext: 1}),
        ("GET", f"{TOKENS}?{plaintext}=1", None),
    ]
    for method, path, body in calls:
        status, data, _ = await admin(gateway, method, path, org_admin, body)
        assert status == 400, data
        assert plaintext not in str(data) and plaintext[7:19] not in str(data), data


async def test_cli_argument_errors_do_not_echo_a_token(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    plaintext = (await issue(gateway, org_admin))["token"]
    for args in (("token", "list", "--status", plaintext), (plaintext,), ("token", plaintext)):
        code, out, err = await run_cli(*args)
        assert code == 2 and plaintext not in out + err and "[REDACTED]" in err, err
