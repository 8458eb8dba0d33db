"""The outside review of issue 14, the CLI's papercuts: a TOKENWARD_ADMIN_URL without a
scheme or with the API's /v1 gets a one-line explanation; `--json` before the command works
as after it; a bad org name is explained in words, not a regular expression."""

from __future__ import annotations

import pytest

from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.cli import _options_after_command


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:8081", "is not a URL: give the admin listener's base URL"),
        ("http://127.0.0.1:8081/v1", "ends in /v1: give the base URL, without it (http://127.0.0.1:8081)"),
        ("http://127.0.0.1:8081/v1/", "ends in /v1"),
    ],
)
async def test_a_wrong_admin_url_is_explained(url: str, says: str) -> None:
    env = env_for_subprocess() | {"TOKENWARD_TOKEN": "x", "TOKENWARD_ADMIN_URL": url}
    code, out, err = await run_cli("whoami", env=env)
    assert code == 1 and out == "" and says in err and len(err.splitlines()) == 1, err


def test_json_before_the_command_is_the_commands_option() -> None:
    assert _options_after_command(["--json", "token", "list", "--team", "x"]) == [
        "token", "list", "--team", "x", "--json",
    ]  # fmt: skip
    assert _options_after_command(["token", "list", "--json"]) == ["token", "list", "--json"]
    assert _options_after_command(["--version"]) == ["--version"]


async def test_a_bad_org_name_is_explained_without_a_regular_expression() -> None:
    code, _, err = await run_cli("admin", "bootstrap", "--config", "/nonexistent.yaml", "--org", "ACME")
    assert code != 0 and "lower-case letters, digits and '-'" in err and "{0,62}" not in err, err
