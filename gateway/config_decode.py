"""The generic config decoder: sections declared once on their dataclasses, decoded by one
function that reports every problem with its YAML location.

Each field declares its YAML default and parser once, with `setting(...)` (or `section(...)`
for a nested section); `decode_section` decodes any such dataclass from a raw YAML mapping:
unknown keys, wrong types and parser errors are reported at their location (`limits.port`,
`routes[3].scopes[0]`) by the `Checker`, and a field with a problem keeps its default. Rules
that tie fields together are small functions registered with `@rule(Section)`. The value
parsers here are the generic ones (integers in a range, strings, sizes, durations ...); the
strict YAML loader refuses duplicate keys. Nothing here knows tokenward's own sections
(see settings.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tokenward.gateway.durations import parse_duration

NAME = re.compile(r"^[a-z][a-z0-9_-]*\Z")  # a name chosen in the config (upstreams, resource roles)
T = TypeVar("T")


class Checker:
    """Collects every problem with its location."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.problems: list[str] = []
        self.base_dir = base_dir  # where relative file names in the config are read from

    def path(self, name: Path) -> Path:
        """A file named in the config: relative names are relative to the config's folder."""
        return name if name.is_absolute() or self.base_dir is None else self.base_dir / name

    def problem(self, loc: str, message: str) -> None:
        self.problems.append(f"{loc}: {message}" if loc else message)

    def mapping(self, value: object, loc: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(loc, f"expected a mapping with keys {', '.join(allowed)}")
            return {}
        for key in value:
            if key not in allowed:
                self.problem(_join(loc, str(key)), f"unknown key; allowed keys: {', '.join(allowed)}")
        return {k: v for k, v in value.items() if k in allowed}

    def convert(self, value: object, loc: str, parse: Callable[[Any], T], default: T) -> T:
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.problem(loc, str(exc))
            return default


def _join(loc: str, key: str) -> str:
    return f"{loc}.{key}" if loc else key


# A decoder reads one raw YAML value at a location, reporting its own problems; it also sees
# the fields of its section decoded before it.
Decoder = Callable[[Checker, Any, str, Mapping[str, Any]], Any]
# A rule checks fields of a decoded section together: (checker, section, raw keys given, loc).
Rule = Callable[[Checker, Any, Mapping[str, Any], str], None]
_RULES: dict[type, list[Rule]] = {}


def setting(
    default: Any = MISSING,
    parse: Callable[[Any], Any] | None = None,
    *,
    decode: Decoder | None = None,
    required: str | None = None,
    key: str | None = None,
    secret: bool = False,
) -> Any:
    """A config field: its default when the key is absent, and either `parse` (value -> value,
    raising ValueError) or `decode` (for lists and sub-sections). Without a default, an absent
    key is reported with `required`, or else handed to the parser as None."""
    meta = {"parse": parse, "decode": decode, "required": required, "key": key}
    return field(default=default, repr=not secret, metadata={k: v for k, v in meta.items() if v is not None})


def section(default: T) -> Any:
    """A nested section; keys it leaves out keep the values of `default`."""
    return setting(default, decode=lambda c, raw, loc, _: decode_section(c, type(default), raw, loc, default))


def rule(cls: type) -> Callable[[Rule], Rule]:
    def register(check: Rule) -> Rule:
        _RULES.setdefault(cls, []).append(check)
        return check

    return register


def field_keys(cls: type) -> tuple[str, ...]:
    return tuple(f.metadata.get("key", f.name) for f in fields(cls) if f.metadata)


def decode_section(
    checker: Checker, cls: type[T], raw: object, loc: str, default: T | None = None, **given: Any
) -> T:
    """Decode the mapping `raw` into `cls`: unknown keys, wrong types and parser errors are
    reported at their location, and a field with a problem keeps its default."""
    return decode_fields(checker, cls, checker.mapping(raw, loc, field_keys(cls)), loc, default, given)


def decode_fields(
    checker: Checker,
    cls: type[T],
    data: Mapping[str, Any],
    loc: str,
    default: T | None = None,
    given: Mapping[str, Any] | None = None,
) -> T:
    values: dict[str, Any] = dict(given or {})
    for f in fields(cls):  # type: ignore[arg-type]
        if not f.metadata:
            continue
        key = f.metadata.get("key", f.name)
        here = _join(loc, key)
        fallback = getattr(default, f.name) if default is not None else f.default
        if key in data:
            value = data[key]
        elif fallback is not MISSING:
            values[f.name] = fallback
            continue
        elif "required" in f.metadata:
            checker.problem(here, f.metadata["required"])
            values[f.name] = None
            continue
        else:
            value = None
        if "decode" in f.metadata:
            values[f.name] = f.metadata["decode"](checker, value, here, values)
        else:
            values[f.name] = checker.convert(value, here, f.metadata["parse"], None if fallback is MISSING else fallback)
    result = cls(**values)
    for check in _RULES.get(cls, ()):
        check(checker, result, data, loc)
    return result


# -- value parsers: value -> value, or ValueError with the message ------------------------------
def integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{value!r} is not allowed: expected an integer {low}..{high}")
        return value

    return parse


def string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not allowed: expected a non-empty string")
    return value


def optional(parse: Callable[[object], T]) -> Callable[[object], T | None]:
    return lambda value: None if value is None else parse(value)


def secret_string(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError("expected a non-empty string")  # never echo the value: it is a secret
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not allowed: expected true or false")
    return value


def one_of(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not allowed: expected one of {', '.join(options)}")
        return str(value)

    return parse


def file_path(value: object) -> Path:
    return Path(string(value))


def duration_or_never(value: object) -> float | None:
    if value in ("never", "none", None):
        return None
    return parse_duration(value)


def byte_size(value: object) -> int:
    """Bytes: an integer or `64k`, `10m`, `1g` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)([kmg]?)b?", value.strip().lower())
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]
    raise ValueError(f"{value!r} is not a size: use bytes or e.g. '64k', '10m', '1g'")


# -- decoders: lists and mappings whose items have their own locations --------------------------
def list_of(parse: Callable[[object], T], expected: str) -> Decoder:
    def decode(checker: Checker, raw: object, loc: str, _: Mapping[str, Any]) -> tuple[T, ...]:
        if not isinstance(raw, list):
            checker.problem(loc, expected)
            return ()
        items = [checker.convert(item, f"{loc}[{i}]", parse, None) for i, item in enumerate(raw)]
        return tuple(item for item in items if item is not None)

    return decode


# -- reading YAML strictly ------------------------------------------------------------------------
class DuplicateKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        mark = key_node.start_mark
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"found unhashable key (line {mark.line + 1})", mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node))


DuplicateKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)

