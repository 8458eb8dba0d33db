"""Values from outside the YAML: `${VAR}` interpolation and secrets read from files.

`interpolate(raw, env, report)` walks the parsed YAML before it is decoded and expands, in
string values only (never keys, numbers or booleans):

- `${NAME}`: the variable's value; unset is a problem at the value's location
  (`redis.password: environment variable REDIS_PASSWORD is not set`);
- `${NAME:-default}`: the default when the variable is unset or empty (the default is
  literal text: no `}` or nested reference in it);
- `$$`: one literal `$`. Any other `$` is kept as written.

An expanded value is an `Interpolated` string: where a setting wants a number or true/false
and the text is not one, the decoder reads it as YAML would (`port: ${PORT:-8080}` gives
8080), so quoting never matters.

`read_secret_file(value, base_dir)` reads a `*_file` setting (`redis.password_file`): the
file's text with one trailing line ending stripped, relative paths from the config file's
folder. Neither function ever puts a variable's or a file's content in a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

_REFERENCE = re.compile(r"\$(?:\$|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^$]*))?\Z", re.DOTALL)
MAX_SECRET_FILE = 64 * 1024  # bytes: a secret, not a data file
_SYNTAX = "write ${NAME} or ${NAME:-default}, and $$ for a literal $"

Report = Callable[[str, str], None]  # (location, message)


class Interpolated(str):
    """A string value that came out of `${...}` interpolation."""

    __slots__ = ()

    def typed(self) -> object:
        """The value YAML would give this text unquoted, if that is a number or a boolean;
        else the text itself."""
        text = str(self)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, int | float) else text  # bool is an int


def interpolate(raw: object, env: Mapping[str, str], report: Report, loc: str = "") -> object:
    """`raw` with every string value expanded (a new structure: YAML aliases may share
    objects). A value that cannot be expanded is reported and kept as written."""
    if isinstance(raw, dict):
        return {key: interpolate(value, env, report, _join(loc, str(key))) for key, value in raw.items()}
    if isinstance(raw, list):
        return [interpolate(item, env, report, f"{loc}[{i}]") for i, item in enumerate(raw)]
    if isinstance(raw, str) and "$" in raw:
        return _expand(raw, env, report, loc)
    return raw


def _join(loc: str, key: str) -> str:
    return f"{loc}.{key}" if loc else key


def _expand(text: str, env: Mapping[str, str], report: Report, loc: str) -> str:
    problems: list[str] = []
    references = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal references
        if match.group(0) == "$$":
            return "$"
        if match.group("open") is not None:
            problems.append(f"'${{' without a closing '}}': {_SYNTAX}")
            return match.group(0)
        body = _BODY.match(match.group("body"))
        if body is None:
            problems.append(f"{match.group(0)!r} is not a reference: {_SYNTAX}")
            return match.group(0)
        references += 1
        name, default = body.group("name"), body.group("default")
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            problems.append(f"environment variable {name} is not set")
            return match.group(0)
        return value

    expanded = _REFERENCE.sub(substitute, text)
    for problem in problems:
        report(loc, problem)
    if problems:
        return text
    return Interpolated(expanded) if references else expanded


def read_secret_file(value: object, base_dir: Path | None) -> str:
    """The secret in the file `value` names; ValueError says why not (never the content)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not allowed: expected the path of a file holding the secret")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ValueError(f"{str(path)!r} is larger than {MAX_SECRET_FILE // 1024} KiB: not a secret file")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{str(path)!r} is empty")
    return text


def typed_alternative(value: Any) -> Any:
    """For an interpolated string, what YAML would read (a number, a boolean); else None."""
    if isinstance(value, Interpolated):
        typed = value.typed()
        if not isinstance(typed, str):
            return typed
    return None
