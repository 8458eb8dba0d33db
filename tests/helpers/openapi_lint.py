"""A small Spectral-like ruleset for the admin API's OpenAPI document, beside
openapi-spec-validator (which checks the document against the OpenAPI 3.1 schema).

`lint(document)` returns one line per problem (`rule: where: what`); none means clean. Rules:
every `$ref` resolves; every operation has an operationId (unique), a summary, a description
and a declared tag, says something about security, declares each path parameter (and only
those) with a description, has a success response; every 4xx/5xx is a shared response
(`components/responses`) whose body is a named schema; every response documents
X-Request-Id and Cache-Control, a 201 Location, a 429/503 Retry-After; bodies are named
schemas (`$ref`), not inline objects; no component goes unused; patterns are anchored and
compile.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def refs(node: Any) -> Iterator[str]:
    """Every `$ref` string in `node`, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], node: Any) -> Any:
    """`node`, following `$ref`s inside `document`."""
    while isinstance(node, dict) and "$ref" in node:
        node = pointer(document, node["$ref"])
    return node


def pointer(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise KeyError(ref)
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def schemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every dict under a `schema` key or in components/schemas, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if key == "schema" and isinstance(value, dict):
                yield from _subschemas(value, here)
            elif key == "schemas" and where.endswith("/components") and isinstance(value, dict):
                for name, sub in value.items():
                    yield from _subschemas(sub, f"{here}/{name}")
            else:
                yield from schemas(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from schemas(item, f"{where}/{i}")


def _subschemas(s: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, s
    for name, sub in s.get("properties", {}).items():
        yield from _subschemas(sub, f"{where}/properties/{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(s.get(key), dict):
            yield from _subschemas(s[key], f"{where}/{key}")


def lint(document: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    problems += _refs_resolve(document)
    if problems:
        return problems
    problems += _operations(document)
    problems += _unused_components(document)
    problems += _patterns(document)
    return problems


def _refs_resolve(document: dict[str, Any]) -> list[str]:
    problems = []
    for ref in refs(document):
        try:
            pointer(document, ref)
        except (KeyError, IndexError, TypeError):
            problems.append(f"ref-resolves: {ref}: no such place")
    return problems


def _operations(document: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    declared_tags = {tag["name"] for tag in document.get("tags", [])}
    seen_ids: set[str] = set()
    for path, method, op in operations(document):
        where = f"{method.upper()} {path}"
        for field in ("operationId", "summary", "description"):
            if not isinstance(op.get(field), str) or not op[field].strip():
                problems.append(f"operation-{field}: {where}: missing")
        if op.get("operationId") in seen_ids:
            problems.append(f"operation-operationId-unique: {where}: {op['operationId']} again")
        seen_ids.add(op.get("operationId", ""))
        tags = op.get("tags") or []
        if not tags:
            problems.append(f"operation-tags: {where}: no tag")
        problems += [f"operation-tag-defined: {where}: {t}" for t in tags if t not in declared_tags]
        if "security" not in op and "security" not in document:
            problems.append(f"operation-security: {where}: says nothing about security")
        problems += _parameters(document, path, where, op)
        problems += _responses(document, where, op)
        body = op.get("requestBody")
        if body is not None:
            for media in resolve(document, body).get("content", {}).values():
                if "$ref" not in media.get("schema", {}):
                    problems.append(f"named-request-schema: {where}: the body schema is inline")
    return problems


def _parameters(document: dict[str, Any], path: str, where: str, op: dict[str, Any]) -> list[str]:
    problems = []
    params = [resolve(document, p) for p in op.get("parameters", [])]
    in_path = {p["name"] for p in params if p.get("in") == "path"}
    template = set(re.findall(r"{([^}]+)}", path))
    problems += [f"path-params: {where}: {{{name}}} not declared" for name in sorted(template - in_path)]
    problems += [f"path-params: {where}: {name} not in the path" for name in sorted(in_path - template)]
    for p in params:
        if not p.get("description"):
            problems.append(f"parameter-description: {where}: {p.get('name')} has none")
        if p.get("in") == "path" and p.get("required") is not True:
            problems.append(f"path-params: {where}: {p.get('name')} must be required")
    return problems


def _responses(document: dict[str, Any], where: str, op: dict[str, Any]) -> list[str]:
    problems = []
    responses = op.get("responses", {})
    if not any(code.startswith("2") for code in responses):
        problems.append(f"operation-success-response: {where}: none")
    for code, response in responses.items():
        here = f"{where} {code}"
        if code[0] in "45":
            ref = response.get("$ref", "")
            if not ref.startswith("#/components/responses/"):
                problems.append(f"error-response-shared: {here}: not a shared error response")
                continue
            content = resolve(document, response).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            if not schema.get("$ref", "").startswith("#/components/schemas/"):
                problems.append(f"error-response-shared: {here}: its body is not a named schema")
        resolved = resolve(document, response)
        if not resolved.get("description"):
            problems.append(f"response-description: {here}: none")
        headers = set(resolved.get("headers", {}))
        wanted = {"X-Request-Id", "Cache-Control"}
        if code == "201":
            wanted.add("Location")
        if code in ("429", "503"):
            wanted.add("Retry-After")
        problems += [f"response-headers: {here}: {h} not documented" for h in sorted(wanted - headers)]
        for media in resolved.get("content", {}).values():
            schema = media.get("schema", {})
            if schema.get("type") == "object" or "properties" in schema:
                problems.append(f"named-response-schema: {here}: an inline object schema")
    return problems


def _unused_components(document: dict[str, Any]) -> list[str]:
    used = set(refs({k: v for k, v in document.items() if k != "components"}))
    # follow refs from what is used to what it uses, until nothing new appears
    frontier = set(used)
    while frontier:
        found = set(refs([pointer(document, ref) for ref in frontier])) - used
        used |= found
        frontier = found
    schemes = {name for req in document.get("security", []) for name in req}
    for _, _, op in operations(document):
        schemes |= {name for req in op.get("security", []) for name in req}
    problems = []
    for kind, members in document.get("components", {}).items():
        for name in members:
            if kind == "securitySchemes":
                if name not in schemes:
                    problems.append(f"no-unused-components: securitySchemes/{name}")
            elif f"#/components/{kind}/{name}" not in used:
                problems.append(f"no-unused-components: {kind}/{name}")
    return problems


def _patterns(document: dict[str, Any]) -> list[str]:
    problems = []
    for where, s in schemas(document):
        pattern = s.get("pattern")
        if pattern is None:
            continue
        if not (pattern.startswith("^") and pattern.endswith("$")):
            problems.append(f"pattern-anchored: {where}: {pattern}")
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"pattern-compiles: {where}: {exc}")
    return problems


__all__ = ["lint", "operations", "pointer", "refs", "resolve", "schemas"]
