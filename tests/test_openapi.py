"""The admin API's OpenAPI document (issue 13, item 7): valid OpenAPI 3.1, clean under a
Spectral-like ruleset (tests/helpers/openapi_lint.py), shared components instead of inline
copies, a Python client generated from it that works against the real gateway, and request
bodies validated by a real JSON Schema validator reading the published document."""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, admin, org_admin_with_team
from tests.helpers.openapi_lint import lint, operations, pointer, refs, resolve
from tokenward import schema, schema_reports
from tokenward.api import ENDPOINTS, openapi_document
from tokenward.endpoints import _http_error_code
from tokenward.gateway.refusal import Step
from tokenward.openapi import body_checks, operation_key
from tokenward.validator import BodyValidator, ValidationError, is_date_time, validate

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json"}


@pytest.fixture
async def org_admin(gateway: Gateway) -> str:
    return await org_admin_with_team(gateway, ["read:apis", "write:specs", "admin:team"])


# -- the document ------------------------------------------------------------------------------
def test_document_is_valid_openapi_3_1() -> None:
    errors = [str(e.message) for e in OpenAPIV31SpecValidator(openapi_document()).iter_errors()]
    assert errors == []


def test_ruleset_finds_no_problem() -> None:
    assert lint(openapi_document()) == []


@pytest.mark.parametrize(
    ("break_it", "rule"),
    [
        (lambda d: d["paths"]["/v1/whoami"]["get"].pop("operationId"), "operation-operationId"),
        (lambda d: d["paths"]["/v1/whoami"]["get"].pop("description"), "operation-description"),
        (lambda d: d["paths"]["/v1/whoami"]["get"].update(tags=[]), "operation-tags"),
        (
            lambda d: d["paths"]["/v1/whoami"]["get"]["responses"].update(
                {"401": {"description": "x", "content": {"application/json": {"schema": {"type": "object"}}}}}
            ),
            "error-response-shared",
        ),
        (lambda d: d["components"]["schemas"].update(Unused={"type": "string"}), "no-unused-components"),
        (lambda d: d["paths"]["/v1/orgs/{org}/teams"]["get"].update(parameters=[]), "path-params"),
        (lambda d: d["components"]["headers"].pop("Location"), "ref-resolves"),
        (
            lambda d: d["components"]["responses"]["Unavailable"]["headers"].pop("Retry-After"),
            "response-headers",
        ),
    ],
)
def test_ruleset_catches_what_it_is_for(break_it: Any, rule: str) -> None:
    document = openapi_document()
    break_it(document)
    assert any(problem.startswith(rule + ":") for problem in lint(document)), lint(document)


def test_error_statuses_answer_with_the_error_body() -> None:
    """Every 4xx/5xx is one of the shared error responses, whose body is `Error`."""
    document = openapi_document()
    for path, _, op in operations(document):
        for code, response in op["responses"].items():
            if code[0] in "45" and (path, code) != ("/readyz", "503"):  # readiness may report
                assert response["$ref"].split("/")[-1] in ("Error", "Unauthorized", "Forbidden", "RateLimited", "Unavailable")
    for response in document["components"]["responses"].values():
        if response["content"]["application/json"]["schema"]["$ref"] != "#/components/schemas/Error":
            continue
        assert {"X-Request-Id", "Cache-Control"} <= set(response["headers"])
    assert "Retry-After" in document["components"]["responses"]["Unavailable"]["headers"]


def _inline_error_schemas(node: Any) -> int:
    """Copies of the error body's schema written out in place (not a `$ref`)."""
    if isinstance(node, list):
        return sum(_inline_error_schemas(item) for item in node)
    if not isinstance(node, dict):
        return 0
    props = node.get("properties")
    here = int(isinstance(props, dict) and {"error", "message", "request_id"} <= set(props))
    return here + sum(_inline_error_schemas(value) for value in node.values())


def test_error_schema_is_written_once_and_referenced() -> None:
    document = openapi_document()
    outside = {k: v for k, v in document.items() if k != "components"}
    assert _inline_error_schemas(outside) == 0
    assert _inline_error_schemas(document["components"]["schemas"]) == 1  # Error itself
    error_refs = [r for r in refs(document) if r.startswith("#/components/responses/")]
    assert len(error_refs) > 50  # every 4xx/5xx of every operation points at a shared response


def test_public_endpoints_say_so_and_the_rest_need_a_bearer_token() -> None:
    document = openapi_document()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path, _, op in operations(document):
        if path in PUBLIC:
            assert op["security"] == [], path
            assert "401" not in op["responses"], path
        else:
            assert op["security"] == [{"bearer": []}], path
            assert {"401", "403", "503"} <= set(op["responses"]), path
    # by declaration: an endpoint without a permission is the public kind
    assert {ep.path for ep in ENDPOINTS if ep.permission is None} == PUBLIC


def test_enums_and_patterns() -> None:
    document = openapi_document()
    named = document["components"]["schemas"]
    assert named["TokenStatus"]["enum"] == ["active", "grace", "revoked", "expired"]
    assert named["Step"]["enum"] == [step.value for step in Step]
    assert named["Token"]["properties"]["status"] == {"$ref": "#/components/schemas/TokenStatus"}
    assert named["Error"]["properties"]["step"] == {"$ref": "#/components/schemas/Step"}
    assert named["Error"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorCode"}
    assert named["TeamCreate"]["properties"]["name"] == {"$ref": "#/components/schemas/Name"}
    assert named["Name"]["pattern"] == f"^(?:{schema.SLUG})$"
    assert named["Duration"]["pattern"] == "^(?:[0-9]+(ms|s|m|h|d|w))$"
    status = next(
        p
        for p in document["paths"]["/v1/orgs/{org}/teams/{team}/tokens"]["get"]["parameters"]
        if resolve(document, p)["name"] == "status"
    )
    assert status["schema"] == {"$ref": "#/components/schemas/TokenStatus"}
    org = resolve(document, document["paths"]["/v1/orgs/{org}/teams"]["get"]["parameters"][0])
    assert org["name"] == "org" and org["schema"] == {"$ref": "#/components/schemas/Name"}


def test_the_duration_pattern_is_what_parse_duration_accepts() -> None:
    from tokenward.gateway.durations import parse_duration

    check = BodyValidator(openapi_document(), "#/components/schemas/Duration")
    for text in ("500ms", "30s", "15m", "1h", "90d", "2w", "0s"):
        check(text)
        parse_duration(text)
    for text in ("1", "1y", "-1d", " 1d", "1d\n", "1.5h", "\u0663d", ""):
        with pytest.raises(ValidationError):
            check(text)


def _error_codes_in(path: Path) -> set[str]:
    """The string literals passed as the `error` of a Refusal, api_error, _unauthorized or
    client_body_error in `path`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        args = []
        if name in ("Refusal", "api_error", "client_body_error") and len(node.args) > 1:
            args.append(node.args[1])
        args += [kw.value for kw in node.keywords if kw.arg == "error"]
        for arg in args:
            found |= {
                c.value
                for c in ast.walk(arg)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and re.fullmatch("[a-z_]+", c.value)
            }
    return found


def test_every_error_code_is_in_the_enum() -> None:
    codes: set[str] = set()
    for folder in ("admin", "gateway"):
        for path in (ROOT / folder).glob("*.py"):
            codes |= _error_codes_in(path)
    codes |= {_http_error_code(status) for status in (400, 404, 405, 413, 418)}
    assert "store_unavailable" in codes and "missing_token" in codes  # the scan sees them
    assert codes - set(schema.ERROR_CODES) == set()


def test_descriptions_and_tags() -> None:
    document = openapi_document()
    assert [t["name"] for t in document["tags"]] == [
        "teams",
        "service accounts",
        "tokens",
        "audit",
        "leaks",
        "identity",
        "rate limits",
        "operations",
    ]
    for path, method, op in operations(document):
        if path not in ("/readyz", "/metrics"):  # (their declarations are the readiness work's)
            assert len(op["summary"]) <= 40, (method, path, op["summary"])
            assert op["description"] != op["summary"], (method, path)


def test_body_checks_read_the_published_document() -> None:
    """The validator of each body is the document's own schema: change the document and the
    check changes with it."""
    document = openapi_document()
    key = operation_key(next(ep for ep in ENDPOINTS if ep.handler.__name__ == "create_token"))
    body = {"name": "x", "scopes": ["read:apis"]}
    body_checks(document, ENDPOINTS)[key](body)
    document["components"]["schemas"]["TokenCreate"]["required"].append("description")
    with pytest.raises(ValidationError) as refused:
        body_checks(document, ENDPOINTS)[key](body)
    assert (refused.value.field, refused.value.message) == ("description", "is required")
    # every endpoint with a body has one, and its pointer leads to a named schema
    checks = body_checks(openapi_document(), ENDPOINTS)
    for ep in ENDPOINTS:
        if ep.body is not None:
            check = checks[operation_key(ep)]
            assert isinstance(check, BodyValidator)
            assert "$ref" in pointer(openapi_document(), check.pointer)


# -- the validator -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("s", "value", "message"),
    [
        ({"type": ["string", "null"]}, 5, "expected a string or null, got integer"),
        ({"type": "string", "format": "date-time"}, "tomorrow", "'tomorrow' is not an RFC 3339 date-time"),
        ({"type": "string", "format": "date-time"}, "2030-01-01T00:00:00", "is not an RFC 3339"),
        ({"type": "string", "format": "date-time"}, "2030-02-30T00:00:00Z", "is not an RFC 3339"),
        ({"type": "string", "pattern": "^(?:[a-z]+)$"}, "abc\n", "does not match"),
        ({"type": "integer", "minimum": 1}, 0, "must be ≥ 1"),
        ({"type": "string", "enum": ["a", "b"]}, "c", "expected one of a, b"),
    ],
)
def test_validator_refuses(s: dict[str, Any], value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        validate(s, value, "f")
    assert refused.value.field == "f" and message in refused.value.message


@pytest.mark.parametrize(
    ("s", "value"),
    [
        ({"type": ["string", "null"]}, None),
        ({"type": ["string", "null"]}, "x"),
        ({"type": "string", "format": "date-time"}, "2030-01-01T00:00:00Z"),
        ({"type": "string", "format": "date-time"}, "2030-01-01t00:00:00.5+05:30"),
    ],
)
def test_validator_accepts(s: dict[str, Any], value: Any) -> None:
    validate(s, value)


def test_date_time_is_rfc_3339() -> None:
    assert is_date_time("1970-01-01T00:00:00Z") and is_date_time(5)
    for text in ("2030-01-01", "20300101T000000Z", "2030-01-01 00:00:00Z", "2030-13-01T00:00:00Z"):
        assert not is_date_time(text), text


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"scopes": ["read:apis"]}, "name", "name: is required"),
        ({"name": "x", "scopes": "read:apis"}, "scopes", "scopes: expected an array, got string"),
        ({"name": "x", "scopes": ["read:apis"], "nope": 1}, "nope", "nope: unknown field (allowed: name,"),
        ({"name": "x", "scopes": ["read:apis"], "expires_at": "tomorrow"}, "expires_at", "'tomorrow' is not valid: expected an RFC 3339 time"),
        ({"name": "x", "scopes": ["read:apis"], "expires_in": "1y"}, "expires_in", "expires_in: '1y' is not valid: expected how long"),
        ({"name": "x", "scopes": ["No pe"]}, "scopes[0]", "scopes[0]: 'No pe' is not valid: expected a level"),
        ({"name": "x", "scopes": ["read:apis"], "service_account": "Bot"}, "service_account", "'Bot'"),
        ({"name": "x", "scopes": ["read:apis"], "constraints": {"env": 5}}, "constraints.env", "got integer"),
        ({"name": "", "scopes": ["read:apis"]}, "name", "name: must not be empty"),
        ([1], "body", "body: expected an object, got array"),
    ],
)
async def test_api_refuses_bodies_the_schema_refuses(
    gateway: Gateway, org_admin: str, body: Any, field: str, message: str
) -> None:
    status, data, headers = await admin(gateway, "POST", TOKENS, org_admin, body)
    assert status == 400, data
    assert (data["error"], data["field"]) == ("invalid_request", field), data
    assert message in data["message"] and data["message"].startswith(field), data
    assert headers["Cache-Control"] == "no-store" and headers["X-Request-Id"] == data["request_id"]


async def test_team_names_with_a_final_newline_are_refused(gateway: Gateway, org_admin: str) -> None:
    status, data, _ = await admin(gateway, "POST", TEAMS, org_admin, {"name": "ops\n", "permissions": []})
    assert (status, data["field"]) == (400, "name"), data


# -- the headers it documents are the ones sent --------------------------------------------------
async def test_created_resources_have_a_location(gateway: Gateway, org_admin: str) -> None:
    status, team, headers = await admin(gateway, "POST", TEAMS, org_admin, {"name": "ops", "permissions": []})
    assert status == 201 and headers["Location"] == f"{TEAMS}/ops"
    assert (await admin(gateway, "GET", headers["Location"], org_admin))[1] == team
    status, created, headers = await admin(gateway, "POST", TOKENS, org_admin, {"name": "a", "scopes": ["read:apis"]})
    assert status == 201 and headers["Location"] == f"{TOKENS}/{created['id']}"
    status, got, _ = await admin(gateway, "GET", headers["Location"], org_admin)
    assert status == 200 and got["id"] == created["id"]
    status, rotated, headers = await admin(gateway, "POST", f"{TOKENS}/{created['id']}/rotate", org_admin)
    assert status == 201 and headers["Location"] == f"{TOKENS}/{rotated['id']}"
    sas = "/v1/orgs/acme/teams/platform/service-accounts"
    status, _, headers = await admin(gateway, "POST", sas, org_admin, {"name": "bot"})
    assert status == 201 and headers["Location"] == f"{sas}/bot"
    assert (await admin(gateway, "DELETE", headers["Location"], org_admin))[0] == 204


async def test_every_answer_has_a_request_id_and_no_store(gateway: Gateway, org_admin: str) -> None:
    for method, path, token in [
        ("GET", "/healthz", None),
        ("GET", "/v1/openapi.json", None),
        ("GET", "/v1/whoami", org_admin),
        ("GET", TEAMS, org_admin),
        ("GET", TOKENS, org_admin),
        ("GET", TOKENS, None),
        ("GET", f"{TEAMS}/nope", org_admin),
    ]:
        _, _, headers = await admin(gateway, method, path, token)
        assert headers["X-Request-Id"] and headers["Cache-Control"] == "no-store", (method, path)


async def test_the_served_document_is_the_built_one(gateway: Gateway) -> None:
    status, document, _ = await admin(gateway, "GET", "/v1/openapi.json", None)
    assert status == 200 and document == json.loads(json.dumps(openapi_document()))


# -- a client generated from it ------------------------------------------------------------------
CLIENT_CONFIG = "package_name_override: twclient\npost_hooks: []\n"


def generate_client(document: dict[str, Any], where: Path) -> Path:
    """The package openapi-python-client generates from `document` under `where`."""
    spec, config = where / "openapi.json", where / "config.yaml"
    spec.write_text(json.dumps(document))
    config.write_text(CLIENT_CONFIG)
    generator = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run(
        [str(generator), "generate", "--path", str(spec), "--config", str(config), "--meta", "none",
         "--output-path", str(where / "twclient")],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    return where / "twclient"


def models(package: Path) -> list[str]:
    return sorted(p.stem for p in (package / "models").glob("*.py") if p.stem != "__init__")


async def test_a_generated_client_works_against_the_gateway(
    gateway: Gateway, org_admin: str, tmp_path: Path
) -> None:
    package = await asyncio.to_thread(generate_client, openapi_document(), tmp_path)
    names = models(package)
    # one model per named schema at most: no per-response copies of the error body
    assert len(names) <= len(schema_reports.named_schemas()) + 5, names
    assert not [n for n in names if "response_4" in n or "response_5" in n], names
    assert {"error", "token", "token_create", "token_created", "token_status"} <= set(names)
    sys.path.insert(0, str(package.parent))
    try:
        client_module = importlib.import_module("twclient")
        create_token = importlib.import_module("twclient.api.tokens.create_token")
        whoami = importlib.import_module("twclient.api.identity.whoami")
        model_module = importlib.import_module("twclient.models")
        client = client_module.AuthenticatedClient(base_url=gateway.admin_url, token=org_admin)
        async with client:
            me = await whoami.asyncio(client=client)
            assert me.org == "acme" and me.team is None
            body = model_module.TokenCreate(name="generated", scopes=["read:apis"], expires_in="1d")
            answer = await create_token.asyncio_detailed(org="acme", team="platform", client=client, body=body)
            assert answer.status_code == 201 and answer.headers["Location"].endswith(answer.parsed.id)
            assert answer.parsed.status == model_module.TokenStatus.ACTIVE
            refused = await create_token.asyncio(
                org="acme", team="platform", client=client, body=model_module.TokenCreate(name="x", scopes=[])
            )
            assert isinstance(refused, model_module.Error)
            assert refused.error == model_module.ErrorCode.INVALID_REQUEST and refused.field == "scopes"
    finally:
        sys.path.remove(str(package.parent))
        for name in [m for m in sys.modules if m == "twclient" or m.startswith("twclient.")]:
            del sys.modules[name]


def test_documents_differ_only_where_changed() -> None:
    """openapi_document() builds a fresh document: changing one never changes the next."""
    first = openapi_document()
    first["components"]["headers"]["Location"]["description"] = "changed"
    first["components"]["schemas"]["TokenStatus"]["enum"].append("x")
    again = openapi_document()
    assert again["components"]["headers"]["Location"]["description"] != "changed"
    assert again["components"]["schemas"]["TokenStatus"]["enum"] == ["active", "grace", "revoked", "expired"]
