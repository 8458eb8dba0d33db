"""One canonical path per request.

The gateway decides on the path once, matches routes on that canonical path only and
forwards exactly that path. Anything another component could read differently is refused
(400) rather than "fixed": dot segments (also percent-encoded, any case), encoded `/` and
`\\`, backslashes, NUL and control characters, invalid percent-encoding, `#`, empty segments.
Percent-encoded unreserved characters are decoded; every other escape is kept, upper-cased.
"""

from __future__ import annotations

from dataclasses import dataclass

_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar without '%' (handled separately): unreserved / sub-delims / ':' / '@'
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_QUERY_CHARS = _PCHAR | frozenset("/?%")


class PathError(ValueError):
    """The request target is ambiguous or malformed; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # canonical
    query: str  # raw, without '?'; '' when absent


def _canonical_segment(segment: str) -> str:
    if "%" not in segment:
        for ch in segment:
            if ch not in _PCHAR:
                raise PathError(_char_problem(ch))
        return segment
    out: list[str] = []
    i = 0
    n = len(segment)
    while i < n:
        ch = segment[i]
        if ch == "%":
            pair = segment[i + 1 : i + 3]
            if len(pair) != 2 or not _HEX.issuperset(pair):
                raise PathError("invalid percent-encoding in path")
            byte = int(pair, 16)
            decoded = chr(byte)
            if decoded in _UNRESERVED:
                out.append(decoded)
            elif decoded in "/\\":
                raise PathError("encoded '/' or '\\' in path")
            elif byte < 0x20 or byte == 0x7F:
                raise PathError("encoded control character in path")
            else:
                out.append("%" + pair.upper())
            i += 3
            continue
        if ch not in _PCHAR:
            raise PathError(_char_problem(ch))
        out.append(ch)
        i += 1
    return "".join(out)


def _char_problem(ch: str) -> str:
    if ch == "\\":
        return "backslash in path"
    if ch == "#":
        return "fragment ('#') in request target"
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return "control character in path"
    if ord(ch) > 0x7E:
        return "non-ASCII character in path (percent-encode it)"
    return f"character {ch!r} is not allowed in a path"


def canonical_path(raw_path: str) -> str:
    """Canonical form of an origin-form path (no query)."""
    if not raw_path.startswith("/"):
        raise PathError("path must start with '/'")
    segments = raw_path[1:].split("/")
    last = len(segments) - 1
    canonical: list[str] = []
    for index, segment in enumerate(segments):
        seg = _canonical_segment(segment)
        if seg == "" and index != last:
            raise PathError("empty path segment ('//') in path")
        if seg in (".", ".."):
            raise PathError("dot segment in path")
        canonical.append(seg)
    return "/" + "/".join(canonical)


def parse_target(raw_target: str) -> Target:
    """Split an origin-form request target into canonical path and raw query."""
    if "#" in raw_target:
        raise PathError("fragment ('#') in request target")
    path, _, query = raw_target.partition("?")
    for ch in query:
        if ch not in _QUERY_CHARS:
            raise PathError("invalid character in query string")
    if "%" in query:
        parts = query.split("%")
        for part in parts[1:]:
            if len(part) < 2 or not _HEX.issuperset(part[:2]):
                raise PathError("invalid percent-encoding in query string")
    return Target(canonical_path(path), query)
