"""Secrets outside the YAML: `${VAR}` interpolation, `*_file` secrets, TOKENWARD_CONFIG.

Unit cases decode dicts with an explicit environment; the end-to-end cases run the CLI and
`tokenward serve` as processes against the real Valkey, with the store's password given only
through a file or a variable, and check that it never appears in anything they print.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import yaml

from tests.helpers.gateway import ROOT
from tests.helpers.process import CLI, env_for_subprocess, run_cli, serve_config, stop, wait_ready
from tokenward.gateway.settings import ConfigError, Settings, load_settings, settings_from_dict

BASE: dict[str, Any] = {
    "upstreams": {"registry": {"url": "http://127.0.0.1:9000"}},
    "routes": [{"methods": ["GET"], "path": "/a", "upstream": "registry", "scopes": ["read:a"]}],
}
PASSWORD = "pw-Zq8!x$y"  # with a `$`: a secret's text is never interpolated again


def config(**top: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(top)
    return raw


def load(raw: object, env: dict[str, str] | None = None, base_dir: Path | None = None) -> Settings:
    return settings_from_dict(raw, "test", base_dir=base_dir, env=env or {})


def problems(raw: object, env: dict[str, str] | None = None, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(raw, env, base_dir)
    return info.value.problems


# -- interpolation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("http://${HOST}:9000", {"HOST": "api"}, "http://api:9000"),
        ("http://${HOST:-localhost}:9000", {}, "http://localhost:9000"),
        ("http://${HOST:-localhost}:9000", {"HOST": ""}, "http://localhost:9000"),  # empty: the default
        ("http://${HOST:-localhost}:9000", {"HOST": "api"}, "http://api:9000"),
        ("http://h:9000/$$x", {}, "http://h:9000/$x"),  # $$: a literal $
        ("http://h:9000/$${HOST}", {"HOST": "api"}, "http://h:9000/${HOST}"),
        ("http://h:9000/$x", {}, "http://h:9000/$x"),  # any other $ is kept
        ("http://${A}${B}:9000", {"A": "a", "B": "b"}, "http://ab:9000"),
        ("http://${HOST}:9000", {"HOST": "${OTHER}"}, "http://${OTHER}:9000"),  # values are not expanded again
    ],
)
def test_references_in_string_values_are_expanded(text: str, env: dict[str, str], expected: str) -> None:
    raw = config(upstreams={"registry": {"url": text}})
    assert load(raw, env).upstreams["registry"].url == expected


def test_a_number_or_boolean_setting_takes_an_expanded_string_as_yaml_would() -> None:
    raw = config(
        listen={"host": "${HOST:-127.0.0.1}", "port": "${PORT:-8081}"},
        forward_authorization="${FORWARD:-true}",
        limits={"max_header_count": "${HEADERS}"},
    )
    settings = load(raw, {"HEADERS": "50"})
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8081)
    assert settings.forward_authorization is True and settings.limits.max_header_count == 50
    # a number-like secret stays the string it is
    redis_conf = {"url": "redis://store:6379/0", "password": "${PW}"}
    assert load(config(redis=redis_conf), {"PW": "12345"}).redis.password == "12345"
    assert problems(config(listen={"host": "h", "port": "${PORT}"}), {"PORT": "eighty"}) == [
        "listen.port: 'eighty' is not allowed: expected an integer 0..65535"
    ]


def test_keys_and_non_string_values_are_not_interpolated() -> None:
    raw = config(upstreams={"${NAME}": {"url": "http://h:1"}})
    assert problems(raw, {"NAME": "registry"}) == [
        "upstreams.${NAME}: upstream names must match [a-z][a-z0-9_-]*",
        "routes[0].upstream: 'registry' is not a defined upstream (none defined)",
    ]


def test_every_unset_variable_is_reported_at_its_location_once_with_the_other_problems() -> None:
    raw = config(
        redis={"url": "${REDIS_URL}", "password": "${REDIS_PASSWORD}"},
        upstreams={"registry": {"url": "http://${APP_HOST}:9000", "timeout": "soon"}},
    )
    raw["routes"][0]["scopes"] = ["${SCOPE}"]
    assert problems(raw, {"APP_HOST": "app"}) == [
        "routes[0].scopes[0]: environment variable SCOPE is not set",
        "redis.url: environment variable REDIS_URL is not set",
        "redis.password: environment variable REDIS_PASSWORD is not set",
        "upstreams.registry.timeout: 'soon' is not a duration: use e.g. '500ms', '30s', '15m', '1h', '90d'",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://${HOST", "'${' without a closing '}': write ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("http://${1HOST}", "'${1HOST}' is not a reference: write ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("http://${}", "'${}' is not a reference: write ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("http://${A:-${B}}", "'${A:-${B}' is not a reference: write ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("http://${A:?required}", "'${A:?required}' is not a reference: write ${NAME} or ${NAME:-default}, and $$ for a literal $"),
    ],
)
def test_a_malformed_reference_is_a_problem_at_its_location(text: str, problem: str) -> None:
    raw = config(upstreams={"registry": {"url": text}})
    assert problems(raw, {"A": "a", "B": "b", "HOST": "h"}) == [f"upstreams.registry.url: {problem}"]


def test_without_an_environment_nothing_is_expanded() -> None:
    raw = config(upstreams={"registry": {"url": "http://h:1/${X}"}})
    assert settings_from_dict(raw).upstreams["registry"].url == "http://h:1/${X}"


def test_anchors_shared_by_two_places_are_reported_at_both() -> None:
    text = """
    x-upstream: &up {url: "http://${HOST}:9000"}
    upstreams: {registry: *up, other: *up}
    routes: [{path: /a, upstream: registry, scopes: [read:a]}]
    """
    assert problems(yaml.safe_load(text)) == [
        "upstreams.registry.url: environment variable HOST is not set",
        "upstreams.other.url: environment variable HOST is not set",
    ]
    settings = load(yaml.safe_load(text), {"HOST": "api"})
    assert settings.upstreams["other"].url == "http://api:9000"


# -- secrets from files -------------------------------------------------------------------------
def test_password_file_is_read_with_its_trailing_newline_stripped(tmp_path: Path) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "crlf").write_text("two\nlines\r\n")
    (tmp_path / "blank-line").write_text("pw\n\n")
    raw = config(redis={"url": "redis://store:6379/0", "password_file": "password"})  # relative: to the config
    settings = load(raw, base_dir=tmp_path)
    assert settings.redis.password == PASSWORD
    assert PASSWORD not in repr(settings.redis) and PASSWORD not in repr(settings)
    raw["redis"]["password_file"] = str(tmp_path / "crlf")
    assert load(raw).redis.password == "two\nlines"
    raw["redis"]["password_file"] = str(tmp_path / "blank-line")
    assert load(raw).redis.password == "pw\n"  # one line ending only


def test_every_secret_setting_takes_a_file(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(f"secret-{name}\n")
    sentinel = {
        "master": "m", "nodes": ["h:26379"], "username": "u", "password_file": str(tmp_path / "a"),
        "sentinel_username": "s", "sentinel_password_file": "${SECRETS}/b",
    }  # fmt: skip
    settings = load(config(redis={"sentinel": sentinel}), {"SECRETS": str(tmp_path)})
    assert settings.redis.sentinel is not None
    assert (settings.redis.sentinel.password, settings.redis.sentinel.sentinel_password) == ("secret-a", "secret-b")
    cluster = {"nodes": ["h:7000"], "username": "u", "password_file": str(tmp_path / "c")}
    settings = load(config(redis={"cluster": cluster}))
    assert settings.redis.cluster is not None and settings.redis.cluster.password == "secret-c"


def test_a_secret_file_that_cannot_be_used_is_a_problem_that_never_shows_its_content(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + PASSWORD.encode())
    (tmp_path / "big").write_text(PASSWORD * 10_000)
    (tmp_path / "ok").write_text(PASSWORD)
    cases = {
        str(tmp_path / "missing"): f"cannot read {str(tmp_path / 'missing')!r}: No such file or directory",
        str(tmp_path / "empty"): f"{str(tmp_path / 'empty')!r} is empty",
        str(tmp_path / "binary"): f"{str(tmp_path / 'binary')!r} is not UTF-8 text",
        str(tmp_path / "big"): f"{str(tmp_path / 'big')!r} is larger than 64 KiB: not a secret file",
        str(tmp_path): f"cannot read {str(tmp_path)!r}: Is a directory",
    }
    for path, message in cases.items():
        found = problems(config(redis={"url": "redis://h:6379", "password_file": path}))
        assert found == [f"redis.password_file: {message}"]
    found = problems(config(redis={"url": "redis://h:6379", "password_file": str(tmp_path / "ok"), "password": PASSWORD}))
    assert found == ["redis.password_file: give password or password_file, not both"]
    assert all(PASSWORD not in p for p in found)
    found = problems(config(redis={"url": "redis://h:6379", "password_file": ""}))
    assert found == ["redis.password_file: '' is not allowed: expected the path of a file holding the secret"]


def test_username_without_a_password_counts_a_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    cluster = {"nodes": ["h:7000"], "username": "u", "password_file": str(tmp_path / "pw")}
    assert load(config(redis={"cluster": cluster})).redis.cluster is not None
    del cluster["password_file"]
    assert problems(config(redis={"cluster": cluster})) == ["redis.cluster.password: is required with username"]


@pytest.mark.parametrize(
    ("redis_conf", "problem"),
    [
        ({"password": "pw"}, "redis.password: is only used with url; the embedded store has none"),
        (
            {"sentinel": {"master": "m", "nodes": ["h"]}, "password": "pw"},
            "redis.password: is only used with url; give it as redis.sentinel.password",
        ),
        (
            {"cluster": {"nodes": ["h"]}, "username": "u"},
            "redis.username: is only used with url; give it as redis.cluster.username",
        ),
        ({"url": "redis://:pw@h:6379/0", "password": "pw"}, "redis.password: the url has a password too: give it once"),
    ],
)
def test_url_credentials_go_with_a_url(redis_conf: dict[str, Any], problem: str) -> None:
    assert problems(config(redis=redis_conf)) == [problem]


def test_a_bad_redis_url_is_reported_without_its_password() -> None:
    found = problems(config(redis={"url": "http://user:${PW}@h:6379"}), {"PW": PASSWORD})
    assert found == ["redis.url: 'http://***@h:6379' is not a Redis URL: expected redis://, rediss:// or unix://"]


def test_load_settings_reads_the_environment_and_files_next_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "redis").write_text(PASSWORD + "\n")
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config(redis={"url": "${REDIS_URL}", "password_file": "secrets/redis"})))
    monkeypatch.setenv("REDIS_URL", "redis://store:6379/2")
    settings = load_settings(path)
    assert (settings.redis.url, settings.redis.password) == ("redis://store:6379/2", PASSWORD)
    monkeypatch.delenv("REDIS_URL")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == ["redis.url: environment variable REDIS_URL is not set"]


# -- the CLI and the server, as processes, on a password-protected store -----------------------
@pytest.fixture
def store_user(redis_url: str) -> Any:
    """An ACL user on the test Valkey whose password is PASSWORD (the default user keeps
    working for the other tests); the client for the store."""
    client = redis.Redis.from_url(redis_url)
    client.acl_setuser(
        "tw-secret-test", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"], categories=["+@all"]
    )
    yield client
    client.acl_deluser("tw-secret-test")
    client.close()


def cli_env(**extra: str) -> dict[str, str]:
    env = env_for_subprocess()
    env.pop("TOKENWARD_CONFIG", None)
    env.update(extra)
    return env


async def test_config_commands_take_tokenward_config_and_an_explicit_path_wins(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(config()))
    bad.write_text(yaml.safe_dump(config(redis={"url": "${TW_TEST_UNSET_URL}"})))
    code, out, _ = await run_cli("config", "check", env=cli_env(TOKENWARD_CONFIG=str(good)))
    assert code == 0 and out.startswith(f"{good}: ok")
    code, _, err = await run_cli("config", "check", env=cli_env(TOKENWARD_CONFIG=str(bad)))
    assert code == 1 and "redis.url: environment variable TW_TEST_UNSET_URL is not set" in err
    code, out, _ = await run_cli("config", "check", str(good), env=cli_env(TOKENWARD_CONFIG=str(bad)))
    assert code == 0 and out.startswith(f"{good}: ok")
    code, out, _ = await run_cli("config", "check", "--config", str(good), env=cli_env(TOKENWARD_CONFIG=str(bad)))
    assert code == 0
    code, out, _ = await run_cli("config", "explain", "GET", "/a", env=cli_env(TOKENWARD_CONFIG=str(good)))
    assert code == 0 and "routes[0]" in out
    code, _, err = await run_cli("config", "explain", "GET", "/a", "--config", str(bad), env=cli_env(TOKENWARD_CONFIG=str(good)))
    assert code == 1 and "TW_TEST_UNSET_URL" in err
    assert Path(ROOT / "tokenward.yaml").exists() is False  # the CLI runs in ROOT: no fallback file there
    code, _, err = await run_cli("serve", env=cli_env())
    assert code == 1 and err.strip() == "error: no config: give --config FILE or set TOKENWARD_CONFIG (./tokenward.yaml does not exist)"


async def test_bootstrap_and_serve_reach_a_password_protected_store_through_the_environment(
    tmp_path: Path, redis_url: str, store_user: Any, upstream: int
) -> None:
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    served = serve_config(tmp_path, upstream, redis={"url": redis_url, "username": "tw-secret-test", "password_file": "redis-password"})
    env = cli_env(TOKENWARD_CONFIG=str(served.path))

    code, out, err = await run_cli("admin", "bootstrap", "--org", "acme", "--json", env=env)
    assert code == 0, err
    assert orjson.loads(out)["org"] == "acme" and PASSWORD not in out + err

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    served.config["redis"]["password_file"] = str(wrong)
    served.write()
    code, out, err = await run_cli("admin", "bootstrap", "--org", "acme", "--json", env=env)
    assert code != 0 and PASSWORD not in out + err

    # serve with the password in a variable (no --config: TOKENWARD_CONFIG), then a reload
    del served.config["redis"]["password_file"]
    served.config["redis"]["password"] = "${TW_TEST_REDIS_PASSWORD}"
    served.write()
    log = tmp_path / "serve.log"
    with log.open("wb") as out_file:
        process = await asyncio.create_subprocess_exec(
            *CLI, "serve", cwd=ROOT, env={**env, "TW_TEST_REDIS_PASSWORD": PASSWORD}, stdout=out_file, stderr=out_file
        )
        try:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, f"{served.admin_url}/readyz", process)  # the store answered
                served.config["redis"]["password"] = "${TW_TEST_OTHER}"
                served.config["redis"]["password_file"] = str(password_file)  # and both: refused
                served.write()
                process.send_signal(signal.SIGHUP)
                for _ in range(200):
                    if b"config reload failed" in log.read_bytes():
                        break
                    await asyncio.sleep(0.05)
                del served.config["redis"]["password"]
                served.write()  # now the same password from the file: reloads
                process.send_signal(signal.SIGHUP)
                for _ in range(200):
                    if b'"config reloaded"' in log.read_bytes() or b"config reloaded" in log.read_bytes():
                        break
                    await asyncio.sleep(0.05)
                async with session.get(f"{served.admin_url}/readyz") as response:
                    assert response.status == 200
        finally:
            assert await stop(process) == 0
    text = log.read_text()
    assert "redis.password_file: give password or password_file, not both" in text
    assert "redis.password: environment variable TW_TEST_OTHER is not set" in text
    assert "config reloaded" in text
    assert PASSWORD not in text
    assert os.environ.get("TW_TEST_REDIS_PASSWORD") is None
