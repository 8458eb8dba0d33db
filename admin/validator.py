"""Request bodies checked by a real JSON Schema validator (Draft 2020-12, the dialect of
OpenAPI 3.1) against the schemas the admin API publishes, with one error per refusal that
names its field.

`BodyValidator` checks a body against a schema of the published document itself (the
`$ref`s resolve inside it); `validate` checks a value against a schema dict. Beyond the
standard keywords: `x-printable` (every character printable, `tokenward.gateway.text`),
`format: date-time` (RFC 3339, checked), and `pattern` as ECMA-262 reads it (`$` ends the
text, `\\d` is an ASCII digit), not as Python's `re` would (`$` also before a final newline).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tokenward.gateway.text import printable, unprintable

Schema = dict[str, Any]

#: A string keyword: every character must be printable (`tokenward.gateway.text.unprintable`).
PRINTABLE = "x-printable"
DOCUMENT_URI = "urn:tokenward:admin-openapi"
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# When one value breaks several keywords, the one reported (the subset validator's order).
_ORDER = (
    "type",
    "additionalProperties",
    "required",
    "maxProperties",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    PRINTABLE,
    "pattern",
    "format",
    "enum",
    "minimum",
    "maximum",
)
_KINDS = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


class ValidationError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled to match as ECMA-262 (JSON Schema's regex dialect) does."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.ASCII)


def _pattern(
    validator: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[SchemaError]:
    if isinstance(instance, str) and ecma_pattern(pattern).search(instance) is None:
        yield SchemaError(f"{printable(instance)!r} does not match {pattern}")


def _printable(
    validator: Validator, value: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[SchemaError]:
    if value and isinstance(instance, str) and (problem := unprintable(instance)) is not None:
        yield SchemaError(problem)


def is_date_time(instance: object) -> bool:
    """RFC 3339 section 5.6 `date-time` (a time zone required), a real date and time."""
    if not isinstance(instance, str):
        return True  # `format` says nothing about other types
    if not _RFC3339.fullmatch(instance):
        return False
    try:
        datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checks("date-time")(is_date_time)
    return checker


_BASE: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern, PRINTABLE: _printable}
)


def schema_validator(schema: Schema, registry: Registry[Any] | None = None) -> Validator:
    """A Draft 2020-12 validator of `schema` with this module's keywords and formats."""
    if registry is None:
        return _BASE(schema, format_checker=format_checker())
    return _BASE(schema, registry=registry, format_checker=format_checker())


class BodyValidator:
    """Checks values against `pointer` (e.g. `#/components/schemas/TokenCreate`) of the
    OpenAPI `document`: the schema clients read is the one the API enforces."""

    def __init__(self, document: Mapping[str, Any], pointer: str) -> None:
        resource: Resource[Any] = DRAFT202012.create_resource(document)
        registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.pointer = pointer
        self._validator = schema_validator({"$ref": DOCUMENT_URI + pointer}, registry)

    def __call__(self, value: Any, where: str = "") -> None:
        check(self._validator, value, where)


def validate(schema: Schema, value: Any, where: str = "") -> None:
    """Raise ValidationError naming the first offending field of `value`."""
    check(schema_validator(schema), value, where)


def check(validator: Validator, value: Any, where: str = "") -> None:
    errors = list(validator.iter_errors(value))
    if errors:
        first = min(enumerate(errors), key=lambda pair: _rank(pair[1], pair[0]))[1]
        raise ValidationError(*_explain(first, where))


def _rank(error: SchemaError, seen: int) -> tuple[int, int, int]:
    keyword = str(error.validator)
    order = _ORDER.index(keyword) if keyword in _ORDER else len(_ORDER)
    return len(error.absolute_path), order, seen


def _explain(error: SchemaError, where: str) -> tuple[str, str]:
    """(field, message) for `error`, worded as the admin API always has."""
    field = _field(where, error.absolute_path)
    keyword, value = str(error.validator), error.instance
    expected: Any = error.validator_value
    if keyword == "type":
        kinds = [str(k) for k in (expected if isinstance(expected, list) else [expected])]
        return field or "body", f"expected {' or '.join(_KINDS.get(k, k) for k in kinds)}, got {_kind(value)}"
    if keyword == "additionalProperties" and isinstance(value, dict):
        props = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = next((key for key in value if key not in props), "")
        return _field(field, [extra]), f"unknown field (allowed: {', '.join(props) or 'none'})"
    if keyword == "required" and isinstance(value, dict):
        missing = next((key for key in expected if key not in value), "")
        return _field(field, [missing]), "is required"
    messages = {
        "maxProperties": f"at most {expected} entries",
        "minItems": f"needs at least {expected} item(s)",
        "maxItems": f"at most {expected} items",
        "minLength": "must not be empty" if expected == 1 else f"at least {expected} characters",
        "maxLength": f"at most {expected} characters",
        "enum": f"expected one of {', '.join(str(e) for e in expected)}" if isinstance(expected, list) else "",
        "minimum": f"must be ≥ {expected}",
        "maximum": f"must be ≤ {expected}",
        "format": f"{printable(str(value))!r} is not an RFC 3339 {expected} (e.g. 2030-01-01T00:00:00Z)",
        "pattern": _described(error) or error.message,
        "anyOf": _described(error),
        PRINTABLE: error.message,
    }
    return field, messages.get(keyword) or f"does not satisfy {keyword}"


def _described(error: SchemaError) -> str:
    """'<value>' is not valid: <the schema's description>: what is accepted, with examples,
    in words rather than as the regular expression that checks it. '' without a description."""
    described = error.schema.get("description") if isinstance(error.schema, dict) else None
    if not isinstance(described, str):
        return ""
    return f"{printable(str(error.instance))!r} is not valid: expected {described}"


def _field(where: str, path: Sequence[Any]) -> str:
    for part in path:
        if isinstance(part, int):
            where = f"{where}[{part}]"
        else:
            where = f"{where}.{part}" if where else str(part)
    return where


def _kind(value: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


__all__ = ["PRINTABLE", "BodyValidator", "ValidationError", "ecma_pattern", "is_date_time", "validate"]
