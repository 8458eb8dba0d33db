"""The JSON Schema of `tokenward.yaml`, written from the settings' own declarations.

Nothing here lists tokenward's settings: `config_schema()` walks the `Settings` dataclass as
the decoder does (config_decode.py): each field's key, default and required-ness come from
its `setting(...)`, a nested section from its dataclass, and the schema of a value from its
parser or decoder, which states what it accepts with `@described(...)` beside its code (the
route table's: `route_config.routes_schema`). A field whose parser says nothing gets a schema
from its type annotation (`bool`, `int`, `str`, `Path`, `... | None`), else accepts anything.
So a new field or section shows up in the schema by itself.

The schema is JSON Schema draft-07 (what editors' YAML language servers read). It accepts
every config `tokenward config check` accepts (a `${VAR}` reference is accepted in place of
any scalar); `config check` also checks what a schema cannot: routes against the defined
upstreams, the path's parameters and each other, durations against each other, files named
by `*_file` keys. `tokenward config schema` prints it; config/tokenward.schema.json is its
output, committed (a test keeps the two equal).
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

from tokenward.gateway.config_decode import (
    SECRET_FILE_SUFFIX,
    Schema,
    description_of,
    duration_or_never,
    field_keys,
)
from tokenward.gateway.durations import format_duration, parse_duration
from tokenward.gateway.settings import Settings

DRAFT = "http://json-schema.org/draft-07/schema#"
INTERPOLATED: Schema = {
    "description": "a ${NAME} or ${NAME:-default} reference, expanded from the environment at load",
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}$]*)?\}",
}
# parsers defined outside the config modules (they cannot carry a description)
KNOWN: dict[Callable[..., Any], Schema] = {
    parse_duration: {
        "anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^\s*[0-9]+(ms|s|m|h|d|w)\s*$"}]
    },
}
_ANNOTATED: dict[object, Schema] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    Path: {"type": "string"},
}


class SchemaWriter:
    """Builds the schema (the `Describer` that descriptions call back); `undescribed`
    lists the fields whose parser states nothing (their schema comes from their type)."""

    def __init__(self) -> None:
        self.undescribed: list[str] = []

    def value(self, parse: Callable[..., Any]) -> Schema:
        description = description_of(parse) or KNOWN.get(parse)
        if description is None:
            return {}
        if callable(description):
            return description(self)
        return self.leaf(description)

    def leaf(self, schema: Schema) -> Schema:
        if schema.get("type") == "string" and "pattern" not in schema:
            return schema  # any string: a reference is one
        return {"anyOf": [schema, {"$ref": "#/definitions/interpolated"}]}

    def section(self, cls: type, default: Any = None) -> Schema:
        properties: Schema = {}
        required: list[str] = []
        exclusive: list[Schema] = []
        comments = field_comments(cls)
        for f in fields(cls):
            if not f.metadata:
                continue
            key = f.metadata.get("key", f.name)
            parse = f.metadata.get("decode") or f.metadata.get("parse")
            schema = self.value(parse) if parse is not None else {}
            if not schema:
                schema = _from_annotation(self, cls, f.name)
                self.undescribed.append(f"{cls.__name__}.{f.name}")
            fallback = getattr(default, f.name) if default is not None else f.default
            if fallback is MISSING:
                required.append(key)
            else:
                shown = _default(fallback, parse)
                if shown is not MISSING:
                    schema = {**schema, "default": shown}
            if f.name in comments:
                schema = {"description": comments[f.name], **schema}
            properties[key] = schema
            if f.metadata.get("secret"):
                file_key = f"{key}{SECRET_FILE_SUFFIX}"
                properties[file_key] = {
                    "description": f"a file holding {key} (one trailing newline is stripped); not with {key}",
                    "type": "string",
                    "minLength": 1,
                }
                exclusive.append({"not": {"required": [key, file_key]}})
        result: Schema = {"type": ["object", "null"], "properties": properties, "additionalProperties": False}
        if required:
            result["required"] = required
        if exclusive:
            result["allOf"] = exclusive
        return result


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comments in the class's source (the lines just above it and the one at
    its end), as the schema's descriptions: the settings document themselves once."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and not re.match(r"#\s*(noqa|type:|fmt:|pragma)", token.string):
            alone = not token.line[: token.start[1]].strip()
            comments[token.start[0]] = (token.string.lstrip("#").strip(), alone)
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        end = comments.get(node.end_lineno or node.lineno)
        text = " ".join([*above, *([end[0]] if end and not end[1] else [])])
        if text:
            found[node.target.id] = text
    return found


def _from_annotation(writer: SchemaWriter, cls: type, name: str) -> Schema:
    """A schema from the field's type: a section dataclass, or a scalar (`str | None`)."""
    try:
        hint = typing.get_type_hints(cls)[name]
    except (NameError, KeyError, TypeError):
        return {}
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    sections = [o for o in options if isinstance(o, type) and is_dataclass(o) and field_keys(o)]
    if sections and len(options) - (type(None) in options) == 1:
        schema = writer.section(sections[0])
        return schema if type(None) in options else {**schema, "type": "object"}
    found = [_ANNOTATED.get(option) for option in options if option is not type(None)]
    if not found or any(schema is None for schema in found):
        return {}
    types_named = [schema["type"] for schema in found if schema is not None]
    if type(None) in options:
        types_named.append("null")
    return {"type": types_named[0] if len(types_named) == 1 else types_named}


def _default(value: object, parse: object) -> object:
    """A default as YAML would write it; MISSING when it has no plain form (a section)."""
    if parse in (parse_duration, duration_or_never) and isinstance(value, float):
        return format_duration(value)
    if value is None:
        return "never" if parse is duration_or_never else MISSING
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, tuple) and all(isinstance(item, str | int | float) for item in value):
        return list(value)
    return MISSING  # a section (its fields show their own defaults), a mapping, a router


def _flat(schema: Any) -> Any:
    """`anyOf` alternatives that are themselves only `anyOf` lists merged into one list."""
    if isinstance(schema, list):
        return [_flat(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _flat(value) for key, value in schema.items()}
    if "anyOf" in result:
        options: list[Any] = []
        for option in result["anyOf"]:
            nested = isinstance(option, dict) and set(option) == {"anyOf"}
            options.extend(option["anyOf"] if nested else [option])
        result["anyOf"] = options
    return result


def config_schema(writer: SchemaWriter | None = None) -> Schema:
    """The JSON Schema of the config file, from the declarations of `Settings`."""
    root = _flat((writer or SchemaWriter()).section(Settings))
    root["type"] = "object"
    root["patternProperties"] = {"^x-": {"description": "free for YAML anchors (`<<: *name` merges)"}}
    return {
        "$schema": DRAFT,
        "title": "tokenward config (tokenward.yaml)",
        "description": "Generated from tokenward's settings by `tokenward config schema`; "
        "`tokenward config check` also checks what a schema cannot.",
        **root,
        "definitions": {"interpolated": INTERPOLATED},
    }


def schema_json() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(config_schema(), indent=2) + "\n"
