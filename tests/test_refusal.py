"""One refusal type and one HTTP edge (issue 12 item 3).

Every refusal is a `Refusal`; every JSON error body of either listener is built by
`refusal.error_body`; the admin API maps the store's domain errors in one table; the
admin side imports no HTTP helper from the gateway's wiring module (`gateway/app.py`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from tests.helpers.gateway import ROOT, Gateway
from tokenward.endpoints import DOMAIN_ERRORS_TABLE, domain_refusal
from tokenward.gateway.refusal import REALM, Refusal, Step, error_body, error_headers
from tokenward.gateway.store import QuotaExceeded
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.store_records import Conflict
from tokenward.rules import Invalid, NotFound

SOURCES = sorted([*ROOT.glob("gateway/*.py"), *ROOT.glob("admin/*.py")])

# every step id in responses, audit events and metrics before the enum existed
STEP_IDS = {
    "route", "credential", "token", "status", "environment", "org", "team", "constraints", "scope", "store",
    "path", "request", "limits", "framing", "forward", "verified", "upstream", "grant",
    "internal", "shutdown",
    "rate_limit",  # issue 16
}  # fmt: skip
STEP_IDS |= {"mcp_tool"}  # issue 16: per-tool MCP authorization


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def test_step_values_are_the_step_ids() -> None:
    assert {step.value for step in Step} == STEP_IDS
    for step in Step:
        assert step.value == step.name.lower() and step == step.value and str(step) == step.value
        assert orjson.dumps(step) == orjson.dumps(step.value)


def test_the_refusal_module_imports_no_aiohttp() -> None:
    code = "import sys, tokenward.gateway.refusal; print(sorted(m for m in sys.modules if m.startswith('aiohttp')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_exception_class_has_the_refusal_shape() -> None:
    """No other exception carries an HTTP status: the class of ad-hoc error types is closed."""
    shaped = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [base.id for base in node.bases if isinstance(base, ast.Name)]
            if not any(base.endswith(("Error", "Exception")) or base == "Refusal" for base in bases):
                continue  # not an exception (a reply has a status too)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    if "status" in [arg.arg for arg in item.args.args]:
                        shaped.append(f"{path.name}:{node.name}")
    assert shaped == ["refusal.py:Refusal"]


def test_one_function_builds_json_error_bodies() -> None:
    """A dict literal with "error" and "message" entries (not JSON-schema properties) exists once."""
    builders = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Dict):
                entries = {
                    key.value: value
                    for key, value in zip(node.keys, node.values, strict=True)
                    if isinstance(key, ast.Constant)
                }
                if "error" in entries and "message" in entries and not isinstance(entries["error"], ast.Dict):
                    builders.append(f"{path.name}:{node.lineno}")
    assert len(builders) == 1 and builders[0].startswith("refusal.py:")


# The composition roots above both halves (issue 12 item 4): they build the proxy's server.
COMPOSITION_ROOTS = {"server.py", "supervisor.py"}


def test_admin_imports_no_http_helper_from_the_wiring_module() -> None:
    imported = set()
    for path in ROOT.glob("admin/*.py"):
        if path.name in COMPOSITION_ROOTS:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module == "tokenward.gateway.app":
                imported |= {alias.name for alias in node.names}
    assert imported == set()  # the Runtime and its app key live in gateway/runtime.py


def test_error_body_bytes() -> None:
    denied = Refusal(403, "forbidden", Step.ORG, "token org does not match resource org")
    assert error_body(denied, "r1") == (
        b'{"error":"forbidden","message":"token org does not match resource org","step":"org","request_id":"r1"}'
    )
    invalid = Refusal(400, "invalid_request", None, "name: required", field="name")
    assert error_body(invalid, "r2") == (
        b'{"error":"invalid_request","message":"name: required","request_id":"r2","field":"name"}'
    )


@pytest.mark.parametrize(
    ("refusal", "challenge", "retry"),
    [
        (Refusal(401, "missing_token", Step.CREDENTIAL, "missing bearer token"), REALM, None),
        (
            Refusal(401, "invalid_token", Step.STATUS, 'token "x" revoked'),
            f'{REALM}, error="invalid_token", error_description="token \'x\' revoked"',
            None,
        ),
        (
            Refusal(403, "insufficient_scope", Step.SCOPE, "lacks", scope="read:apis"),
            f'{REALM}, error="insufficient_scope", scope="read:apis"',
            None,
        ),
        (Refusal(403, "forbidden", Step.TEAM, "other team"), None, None),
        (Refusal(503, "store_unavailable", Step.STORE, "retry"), None, "1"),
        (Refusal(409, "conflict", None, "exists"), None, None),
    ],
)
def test_error_headers(refusal: Refusal, challenge: str | None, retry: str | None) -> None:
    headers = error_headers(refusal, "rid")
    assert headers["X-Request-Id"] == "rid" and headers["Cache-Control"] == "no-store"
    assert headers.get("WWW-Authenticate") == challenge
    assert headers.get("Retry-After") == retry


class _Subconflict(Conflict):
    pass


@pytest.mark.parametrize(
    ("exc", "status", "error", "message"),
    [
        (StoreUnavailable("down"), 503, "store_unavailable", "token store unavailable; retry shortly"),
        (
            Conflict("team 'a' already exists in org 'o'"),
            409,
            "conflict",
            "team 'a' already exists in org 'o'",
        ),
        (_Subconflict("token id collision"), 409, "conflict", "token id collision"),
        (
            QuotaExceeded(3, 3, "acme", "platform"),
            409,
            "quota_exceeded",
            "team 'platform' holds 3 tokens; the limit is 3 (tokens.max_per_team): "
            "delete revoked or expired tokens first",
        ),
        (
            QuotaExceeded(5, 4, "acme", None),
            409,
            "quota_exceeded",
            "org 'acme' (org-level tokens) holds 5 tokens; the limit is 4 (tokens.max_per_team): "
            "delete revoked or expired tokens first",
        ),
    ],
)
def test_domain_errors_table(exc: Exception, status: int, error: str, message: str) -> None:
    refusal = domain_refusal(exc)
    assert (refusal.status, refusal.error, refusal.message, refusal.step) == (status, error, message, None)


def test_domain_errors_table_lists_the_store_errors() -> None:
    # and the token service's own (tests/test_service.py checks their rows)
    assert set(DOMAIN_ERRORS_TABLE) == {StoreUnavailable, Conflict, QuotaExceeded, Invalid, NotFound}


async def _call(
    gw: Gateway, method: str, path: str, token: str | None, body: object = None
) -> tuple[int, Mapping[str, str], dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with gw.session.request(method, gw.admin_url + path, headers=headers, json=body) as r:
        return r.status, r.headers.copy(), await r.json()


async def test_admin_errors_share_the_gateway_headers(gateway: Gateway) -> None:
    """Validation (400), not found (404), a conflict (409) and an aiohttp 405 all answer
    through the one edge: the request id in header and body, never cached."""
    token = await gateway.org_admin()
    teams = "/v1/orgs/acme/teams"
    cases = [
        ("POST", teams, {"permissions": []}, 400, "invalid_request"),
        ("GET", f"{teams}/nope", None, 404, "not_found"),
        ("DELETE", "/v1/openapi.json", None, 405, "method_not_allowed"),
    ]
    status, _, _ = await _call(gateway, "POST", teams, token, {"name": "dup", "permissions": []})
    assert status == 201
    cases.append(("POST", teams, {"name": "dup", "permissions": []}, 409, "conflict"))
    for method, path, body, want_status, want_error in cases:
        status, headers, data = await _call(gateway, method, path, token, body)
        assert (status, data["error"]) == (want_status, want_error), (method, path, data)
        assert headers.get("X-Request-Id") == data["request_id"], (method, path, headers)
        assert headers["Cache-Control"] == "no-store"
        assert "step" not in data
