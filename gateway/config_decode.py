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
from typing import Any, Protocol, TypeVar

import yaml

from tokenward.gateway.config_env import Interpolated, read_secret_file, typed_alternative
from tokenward.gateway.durations import parse_duration

NAME = re.compile(r"^[a-z][a-z0-9_-]*\Z")  # a name chosen in the config (upstreams, resource roles)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Schema = dict[str, Any]  # a JSON Schema


# -- what each parser and decoder accepts, as JSON Schema (config_schema.py writes the file) ----
class Describer(Protocol):
    """What a description may ask of the schema writer."""

    def value(self, parse: Callable[..., Any]) -> Schema:
        """The schema of what a parser or decoder accepts."""

    def section(self, cls: type, default: Any = None) -> Schema:
        """The schema of a section dataclass (its defaults from `default`)."""

    def leaf(self, schema: Schema) -> Schema:
        """A scalar's schema, also accepting a `${...}` reference in its place."""


Description = Schema | Callable[[Describer], Schema]
SCHEMA_ATTRIBUTE = "json_schema"
SECRET_FILE_SUFFIX = "_file"  # noqa: S105 - `password_file`: the file holding `password`


def described(description: Description) -> Callable[[F], F]:
    """Attach the JSON Schema of what a parser or decoder accepts: a scalar's schema, or a
    function of the `Describer` that builds one from others (a list's items, a section)."""

    def attach(fn: F) -> F:
        fn.__dict__[SCHEMA_ATTRIBUTE] = description
        return fn

    return attach


def description_of(fn: Callable[..., Any]) -> Description | None:
    found: Description | None = getattr(fn, SCHEMA_ATTRIBUTE, None)
    return found


class Checker:
    """Collects every problem with its location. `base_dir`: where relative `*_file` paths
    start (the config file's folder)."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.problems: list[str] = []
        self.base_dir = base_dir  # where relative file names in the config are read from
        self._unresolved: set[str] = set()  # values whose `${...}` failed: already reported

    def path(self, name: Path) -> Path:
        """A file named in the config: relative names are relative to the config's folder."""
        return name if name.is_absolute() or self.base_dir is None else self.base_dir / name

    def problem(self, loc: str, message: str) -> None:
        if loc not in self._unresolved:
            self.problems.append(f"{loc}: {message}" if loc else message)

    def unresolved(self, loc: str, message: str) -> None:
        """A value whose interpolation failed: reported once; what the decoder then finds
        wrong with the text left in its place is not."""
        self.problem(loc, message)
        self._unresolved.add(loc)

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
            return parse(str(value) if isinstance(value, Interpolated) else value)
        except (ValueError, TypeError) as exc:
            typed = typed_alternative(value)  # `${PORT}` where a number is wanted: 8080
            if typed is not None:
                try:
                    return parse(typed)
                except (ValueError, TypeError):
                    pass
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
    key is reported with `required`, or else handed to the parser as None. A `secret` is
    never in a repr, and may be given as `KEY_file`: the path of a file holding it."""
    meta = {"parse": parse, "decode": decode, "required": required, "key": key, "secret": secret or None}
    return field(default=default, repr=not secret, metadata={k: v for k, v in meta.items() if v is not None})


def section(default: T) -> Any:
    """A nested section; keys it leaves out keep the values of `default`."""

    @described(lambda d: d.section(type(default), default))
    def decode(checker: Checker, raw: object, loc: str, _: Mapping[str, Any]) -> T:
        return decode_section(checker, type(default), raw, loc, default)

    return setting(default, decode=decode)


def rule(cls: type) -> Callable[[Rule], Rule]:
    def register(check: Rule) -> Rule:
        _RULES.setdefault(cls, []).append(check)
        return check

    return register


def field_keys(cls: type) -> tuple[str, ...]:
    """The keys a section allows: its fields', then `KEY_file` for each secret."""
    keys = [f.metadata.get("key", f.name) for f in fields(cls) if f.metadata]
    secrets = [f"{f.metadata.get('key', f.name)}{SECRET_FILE_SUFFIX}" for f in fields(cls) if f.metadata.get("secret")]
    return (*keys, *secrets)


def _secret_from_file(checker: Checker, data: Mapping[str, Any], key: str, loc: str) -> Mapping[str, Any]:
    """`data` with `KEY_file` replaced by KEY, the secret read from that file."""
    file_key = f"{key}{SECRET_FILE_SUFFIX}"
    if file_key not in data:
        return data
    rest = {k: v for k, v in data.items() if k != file_key}
    if key in data:
        checker.problem(_join(loc, file_key), f"give {key} or {file_key}, not both")
        return rest
    try:
        rest[key] = read_secret_file(data[file_key], checker.base_dir)
    except ValueError as exc:
        checker.problem(_join(loc, file_key), str(exc))
        rest[key] = None  # the field keeps no secret; the problem is reported
    return rest


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
        if f.metadata.get("secret"):
            data = _secret_from_file(checker, data, key, loc)
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
    @described({"type": "integer", "minimum": low, "maximum": high})
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{value!r} is not allowed: expected an integer {low}..{high}")
        return value

    return parse


@described({"type": "string", "minLength": 1})
def string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not allowed: expected a non-empty string")
    return value


def optional(parse: Callable[[object], T]) -> Callable[[object], T | None]:
    @described(lambda d: {"anyOf": [d.value(parse), {"type": "null"}]})
    def parse_optional(value: object) -> T | None:
        return None if value is None else parse(value)

    return parse_optional


@described({"type": ["string", "null"], "minLength": 1})
def secret_string(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError("expected a non-empty string")  # never echo the value: it is a secret
    return value


@described({"type": "boolean"})
def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not allowed: expected true or false")
    return value


def one_of(*options: str) -> Callable[[object], str]:
    @described({"enum": list(options)})
    def parse(value: object) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not allowed: expected one of {', '.join(options)}")
        return str(value)

    return parse


@described({"type": "string", "minLength": 1})
def file_path(value: object) -> Path:
    return Path(string(value))


@described(lambda d: {"anyOf": [d.value(parse_duration), d.leaf({"enum": ["never", "none", None]})]})
def duration_or_never(value: object) -> float | None:
    if value in ("never", "none", None):
        return None
    return parse_duration(value)


@described({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\s*0*[1-9][0-9]*[kmgKMG]?[bB]?\s*$"}]})
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
    @described(lambda d: {"type": "array", "items": d.value(parse)})
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

