"""One canonical path per request.

The gateway decides on the path once, matches routes on that canonical path only and
forwards exactly that path. Anything another component could read differently is refused
(400) rather than "fixed":

- dot segments (also percent-encoded, any case), encoded `/` and `\\`, backslashes, NUL and
  control characters, invalid percent-encoding, `#`, empty segments;
- `;` path parameters, raw or encoded (Tomcat, Jetty and Spring cut a segment at `;`, so
  `..;` is a dot segment to them and `internal;x` is `internal`);
- double percent-encoding: `%25` followed by two hex digits, however those are spelled
  (`%252e`, `%25%32%65`), since a server that decodes twice reads another path;
- percent-encoded bytes that are not strict UTF-8 (overlong forms such as `%C0%AE`, lone
  continuation bytes, surrogates, truncated sequences, code points above U+10FFFF);
- decoded characters that Unicode folding (NFKC, or a case mapping) turns into ASCII
  (fullwidth `．／＼Ａ`, `․`, `ſ`, `K`, ligatures...), non-ASCII decimal digits (which
  `int()` reads as ASCII ones), and invisible, format, space or unassigned code points;
- a segment with leading or trailing spaces, or trailing dots (Windows, IIS and ASP.NET
  trim them, so `internal.` and `internal%20` are `internal` there).

Percent-encoded unreserved characters are decoded; every other escape is kept, upper-cased.
A query string must be well formed and must not carry a method override (`_method=...`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

from tokenward.gateway.forms import query_has_override
from tokenward.gateway.tokens import BODY_LEN

_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar without '%' (handled separately): unreserved / sub-delims / ':' / '@'
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@")
# what a path segment may hold raw: pchar without ';' (path parameters are refused)
_SEGMENT_CHARS = _PCHAR - {";"}
_QUERY_CHARS = _PCHAR | frozenset("/?%")
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# read as '/', '\' or '.' without NFKC: Windows "best fit" code-page mappings (WorstFit:
# U+2215 -> '/', U+00A5 -> '\' in cp932, U+20A9 -> '\' in cp949), IDNA full stops and
# the Unicode confusables of the three
_SEPARATOR_LOOKALIKES = frozenset(
    "\u2215\u2044\u29f8\u2571\u27cb\u3033\u4e3f\u1735\u2cc6\u0338"  # '/'
    "\u2216\u29f5\u29f9\u2572\u27cd\u00a5\u20a9"  # '\\'
    "\u3002\uff61\ufe12\u0701\u0702\ua4f8\u2024"  # '.'
)


# The memos of canonical targets (exchange.SettingsView) and route matches (routes.Router):
# how many entries each keeps, and the longest target or path either keeps.
MEMO_SIZE = 4096
MEMO_MAX_CHARS = 512
_TOKEN_SHAPED = re.compile(rf"[0-9A-Za-z]{{{BODY_LEN}}}")  # as long as a token's body, or longer


class PathError(ValueError):
    """The request target is ambiguous or malformed; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # canonical
    query: str  # raw, without '?'; '' when absent


@functools.lru_cache(maxsize=4096)
def unicode_problem(ch: str) -> str | None:
    """Why a decoded non-ASCII character could be read as something else, or None."""
    name = f"U+{ord(ch):04X}"
    if ch in _SEPARATOR_LOOKALIKES:
        return f"character {name} reads as '/', '\\' or '.' on some servers (best-fit code pages) in path"
    if unicodedata.category(ch) in _INVISIBLE or ch.isspace():
        return f"invisible, space or unassigned character {name} in path"
    if unicodedata.decimal(ch, None) is not None:
        return f"non-ASCII digit {name} in path (read as an ASCII digit by some servers)"
    for form in (ch, ch.lower(), ch.upper(), ch.casefold()):
        folded = unicodedata.normalize("NFKC", form)
        if any(ord(c) < 0x80 for c in folded):
            return f"character {name} folds to ASCII {folded!r} (Unicode NFKC or case mapping) in path"
    return None


def _decode_utf8(raw: bytearray) -> str:
    try:
        text = raw.decode("utf-8")  # strict: no overlongs, surrogates or truncated sequences
    except UnicodeDecodeError:
        raise PathError("percent-encoded bytes in path are not valid UTF-8") from None
    for ch in text:
        problem = unicode_problem(ch)
        if problem is not None:
            raise PathError(problem)
    return text


def _canonical_segment(segment: str) -> tuple[str, str]:
    """(canonical form, decoded text) of one segment."""
    if "%" not in segment:
        for ch in segment:
            if ch not in _SEGMENT_CHARS:
                raise PathError(_char_problem(ch))
        return segment, segment
    out: list[str] = []
    text: list[str] = []
    high = bytearray()  # a run of encoded non-ASCII bytes, decoded as UTF-8 at its end
    i = 0
    n = len(segment)
    while i < n:
        ch = segment[i]
        if ch == "%":
            pair = segment[i + 1 : i + 3]
            if len(pair) != 2 or not _HEX.issuperset(pair):
                raise PathError("invalid percent-encoding in path")
            byte = int(pair, 16)
            i += 3
            if byte >= 0x80:
                high.append(byte)
                out.append("%" + pair.upper())
                continue
            if high:
                text.append(_decode_utf8(high))
                high.clear()
            decoded = chr(byte)
            if decoded in _UNRESERVED:
                out.append(decoded)
            elif decoded in "/\\":
                raise PathError("encoded '/' or '\\' in path")
            elif byte < 0x20 or byte == 0x7F:
                raise PathError("encoded control character in path")
            elif decoded == ";":
                raise PathError("encoded ';' (path parameter) in path")
            else:
                out.append("%" + pair.upper())
            text.append(decoded)
            continue
        if high:
            text.append(_decode_utf8(high))
            high.clear()
        if ch not in _SEGMENT_CHARS:
            raise PathError(_char_problem(ch))
        out.append(ch)
        text.append(ch)
        i += 1
    if high:
        text.append(_decode_utf8(high))
    canonical = "".join(out)
    if "%25" in canonical:
        _check_double_encoding(canonical)
    return canonical, "".join(text)


def _check_double_encoding(canonical: str) -> None:
    start = 0
    while (at := canonical.find("%25", start)) >= 0:
        pair = canonical[at + 3 : at + 5]
        if len(pair) == 2 and _HEX.issuperset(pair):
            raise PathError("double percent-encoding ('%25' and two hex digits) in path")
        start = at + 3


def _char_problem(ch: str) -> str:
    if ch == "\\":
        return "backslash in path"
    if ch == "#":
        return "fragment ('#') in request target"
    if ch == ";":
        return "path parameter (';') in path"
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
        seg, text = _canonical_segment(segment)
        if seg == "" and index != last:
            raise PathError("empty path segment ('//') in path")
        if not text.isascii():  # read also as a server that drops combining marks would
            text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        if text in (".", ".."):
            raise PathError("dot segment in path")
        if text and (text[-1] in ". " or text[0] == " "):
            raise PathError("path segment with a trailing dot or a leading or trailing space")
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
    target = Target(canonical_path(path), query)
    if query and query_has_override(query):
        raise PathError("method override parameters ('_method') are not accepted; send the real method")
    return target


def memo_safe(text: str) -> bool:
    """May a memo keep `text` (a request target or a canonical path)? Only when it is short
    and nothing in it, raw or percent-decoded (however many times), is shaped like a token's
    body: a memo never keeps a credential, even one sent where it does not belong."""
    if len(text) > MEMO_MAX_CHARS:
        return False
    while "%" in text:
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            break
        text = decoded
    return _TOKEN_SHAPED.search(text) is None
