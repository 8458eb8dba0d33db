"""Method override by parameter: `_method=DELETE` in a query string or a form body.

Rails (Rack::MethodOverride), Laravel and Symfony (`_method` in the body or query of a POST)
and express `method-override` (any configured name) run another method than the one the
gateway decided on. tokenward refuses such a parameter wherever one of them could read it:

- the query string, any method (`parse_target`);
- the body of a request whose Content-Type is `application/x-www-form-urlencoded`, any
  `multipart/*`, or absent (Rack parses an untyped POST body as a form);
- a JSON body's object keys (Laravel's input bag is the JSON object, so `{"_method": ...}`
  overrides there).

Bodies are not buffered: `BodyScanner.feed` sees each chunk before it is forwarded and
raises `OverrideFound` on the chunk that completes an override field's name (the `=` of a
urlencoded field, the blank line ending a multipart part's headers). The forwarder then
closes the upstream connection with the body incomplete, so the upstream never gets a whole
request carrying the override, and the client gets 400.

A name is read the way the laxest of those frameworks reads it: `+` as space, percent-decoded,
leading and trailing spaces dropped, case-folded, cut at `[` (PHP and Rails arrays) and at NUL
(C strings), with ` `,
`.` and `-` as `_` (PHP turns ` ` and `.` in names into `_`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

OVERRIDE_NAMES = frozenset({"_method", "x_http_method_override", "x_http_method", "x_method_override"})
_STRIP = b" \t\r\n\x00\x0b\x0c"
_NAME_LIMIT = 64  # decoded bytes: a longer name is no override name
_HEADERS_LIMIT = 16 * 1024  # one multipart part's header block
_FIELD_SEP = re.compile(rb"[=&;]")
_PART_NAME = re.compile(rb"""(?i)(?:^|[;\s:])name(\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\r\n]*)""")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
# every override name contains "method"; these find it however its letters are escaped
_MAYBE_FORM = re.compile(
    rb"(?i)(?:m|%(?:u00)?[46]d)(?:e|%(?:u00)?[46]5)(?:t|%(?:u00)?[57]4)(?:h|%(?:u00)?[46]8)"
    rb"(?:o|%(?:u00)?[46]f)(?:d|%(?:u00)?[46]4)"
)
# IIS/ASP.NET `%uXXXX` escapes (ASP.NET decodes them in form fields)
_PERCENT_U = re.compile(rb"%[uU]([0-9a-fA-F]{4})")
# an escape that the next chunk may complete: `%`, `%X`, `%u`, `%uX`, `%uXX`, `%uXXX`
_PARTIAL_ESCAPE = re.compile(rb"%(?:[uU][0-9a-fA-F]{0,3}|[0-9a-fA-F])?\Z")
_MAYBE_JSON = re.compile(
    rb"(?i)(?:m|\\u00[46]d)(?:e|\\u00[46]5)(?:t|\\u00[57]4)(?:h|\\u00[46]8)(?:o|\\u00[46]f)(?:d|\\u00[46]4)"
)
_BOUNDARY = re.compile(r"""(?i)(?:^|;)\s*boundary\s*=\s*("[^"]*"|[^;\s]*)""")
# A boundary every parser reads alike: `boundary=` (no spaces) then a token of characters
# that are both RFC 2046 bchars and RFC 9110 tchars, or a quoted run of bchars without
# `,` or `\`, then `;` or the end (PHP cuts an unquoted one at `,` or `;` and keeps spaces,
# busboy cuts a token at a tspecial and reads `\` escapes in a quoted one).
_CLEAR_BOUNDARY = re.compile(
    r"""(?i)(?:^|;)[ \t]*boundary=(?:"[A-Za-z0-9'()+_\-./:=?]{1,200}"|[A-Za-z0-9'+_\-.]{1,200})[ \t]*(?:;|\Z)"""
)


_CHARSET = re.compile(r"""(?i)(?:^|;)\s*charset\s*=\s*("[^"]*"|[^;\s]*)""")
# charsets in which every ASCII byte is that ASCII character
_ASCII_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1", "iso8859-1"})


class OverrideFound(ValueError):
    """The body carries a method override parameter (or can't be read with certainty)."""


def is_override_name(raw: bytes) -> bool:
    """Would a lax framework read this raw (still encoded) field name as a method override?"""
    return _override_decoded(_unquote_form(raw))


def _unquote_form(raw: bytes) -> bytes:
    """A form field name as the laxest framework decodes it: `+` as space, `%XX`, `%uXXXX`."""
    raw = raw.replace(b"+", b" ")
    if b"%u" in raw or b"%U" in raw:
        raw = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)).encode("utf-8", "surrogatepass"), raw)
    return unquote_to_bytes(raw)


def _override_decoded(decoded: bytes) -> bool:
    name = decoded.strip(_STRIP).split(b"[", 1)[0].split(b"\x00", 1)[0].strip(_STRIP).lower()
    text = name.decode("latin-1").replace(" ", "_").replace(".", "_").replace("-", "_")
    return text in OVERRIDE_NAMES


def query_has_override(query: str) -> bool:
    lower = query.lower()
    if "method" not in lower and "%" not in lower:
        return False
    for field in re.split("[&;]", query):
        if is_override_name(field.partition("=")[0].encode("latin-1", "replace")):
            return True
    return False


class BodyScanner:
    """Fed every chunk of a body before it goes upstream; raises OverrideFound."""

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError


class UrlencodedScanner(BodyScanner):
    def __init__(self) -> None:
        self.in_value = False
        self.decoded = b""  # the name so far, decoded, leading spaces dropped
        self.raw = bytearray()  # the name's bytes not yet decoded
        self.too_long = False
        # the name being read may spell "method" (seen in an earlier chunk): read it closely
        # until it ends, however many chunks it spans and however far back the spelling was
        self.close_reading = False

    def feed(self, chunk: bytes) -> None:
        if not self.close_reading:
            name_tail = b"" if self.in_value else self.decoded[-8:] + bytes(self.raw[-40:])
            if _MAYBE_FORM.search(name_tail + chunk) is None:
                self._skip(chunk)  # no name completed here can spell "method": only track state
                return
        self._read(chunk)
        self.close_reading = not self.in_value  # a name is still open: the next chunk may end it

    def _read(self, chunk: bytes) -> None:
        pos, end = 0, len(chunk)
        while pos < end:
            if self.in_value:
                amp, semi = chunk.find(b"&", pos), chunk.find(b";", pos)
                seps = [i for i in (amp, semi) if i >= 0]
                if not seps:
                    return
                pos = min(seps) + 1
                self._next_field()
                continue
            found = _FIELD_SEP.search(chunk, pos)
            stop = found.start() if found else end
            if not self.too_long:
                self.raw += chunk[pos:stop]
                if len(self.raw) > 1024:
                    self._compact()
            if found is None:
                return
            if self._is_override():
                raise OverrideFound("a method override parameter in the form body")
            if chunk[stop] == ord("="):
                self.in_value = True
            else:
                self._next_field()
            pos = stop + 1

    def _skip(self, chunk: bytes) -> None:
        last = max(chunk.rfind(b"="), chunk.rfind(b"&"), chunk.rfind(b";"))
        if last >= 0:
            self._next_field()
            if chunk[last] == ord("="):
                self.in_value = True
                return
            chunk = chunk[last + 1 :]
        elif self.in_value or self.too_long:
            return
        self.raw += chunk
        if len(self.raw) > 1024:
            self._compact()

    def _next_field(self) -> None:
        self.in_value, self.decoded, self.too_long = False, b"", False
        self.raw.clear()

    def _compact(self) -> None:
        """Decode all but a possibly partial escape at the end, so memory stays bounded."""
        partial = _PARTIAL_ESCAPE.search(bytes(self.raw[-6:]))
        keep = len(partial.group(0)) if partial else 0
        head = bytes(self.raw[: len(self.raw) - keep])
        del self.raw[: len(self.raw) - keep]
        self.decoded = (self.decoded + _unquote_form(head)).lstrip(_STRIP)
        if len(self.decoded) > _NAME_LIMIT:
            self.too_long = True
            self.raw.clear()

    def _is_override(self) -> bool:
        if self.too_long:
            return False
        rest = _unquote_form(bytes(self.raw))
        return _override_decoded(self.decoded + rest)


class JsonScanner(BodyScanner):
    """Laravel reads `_method` from a JSON body too (its input bag is the JSON object). Any
    object key, at any depth, that reads as an override name is refused: a key is complete at
    its `:`, and the chunk holding that `:` is not forwarded. Whitespace runs are collapsed
    first so that padding cannot push a key out of the carried tail."""

    _KEY = re.compile(rb'"((?:[^"\\]|\\.){0,200})" ?:')
    _SPACE = re.compile(rb"[ \t\r\n]+")

    def __init__(self) -> None:
        self.carry = b""

    def feed(self, chunk: bytes) -> None:
        if b"\x00" in chunk:  # never in UTF-8 JSON; UTF-16/32 JSON (auto-detected by some parsers)
            raise OverrideFound("a JSON body with a NUL byte is not UTF-8 JSON")
        if _MAYBE_JSON.search(self.carry + chunk) is None:
            # no key completed here can spell "method": keep the tail a key could end in
            body = chunk.rstrip(b" \t\r\n")
            pad = b" " if len(body) < len(chunk) else b""
            self.carry = (self._SPACE.sub(b" ", (self.carry + body)[-2048:]) + pad)[-512:]
            return
        buf = self._SPACE.sub(b" ", self.carry + chunk)
        for found in self._KEY.finditer(buf):
            key = found.group(1)
            if b"\\" in key:
                try:
                    key = json.loads(b'"' + key + b'"').encode("utf-8", "replace")
                except ValueError:
                    pass
            if _override_decoded(key):
                raise OverrideFound("a method override key in the JSON body")
        self.carry = buf[-512:]


class MultipartScanner(BodyScanner):
    """Reads each part's header block; any `name` parameter in it is checked. Any occurrence
    of the delimiter starts a part (a stricter parser may see fewer parts, never more)."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.buf = b""
        self.in_headers = False

    def feed(self, chunk: bytes) -> None:
        buf = self.buf + chunk
        while True:
            if self.in_headers:
                blank = _BLANK_LINE.search(buf)
                if blank is None:
                    if len(buf) > _HEADERS_LIMIT:
                        raise OverrideFound("a multipart part's headers are too large to inspect")
                    break
                check_part_headers(buf[: blank.start()])
                buf = buf[blank.end() :]
                self.in_headers = False
                continue
            at = buf.find(self.delimiter)
            if at < 0:
                buf = buf[-(len(self.delimiter) - 1) :] if len(self.delimiter) > 1 else b""
                break
            buf = buf[at + len(self.delimiter) :]
            self.in_headers = True
        self.buf = buf


def check_part_headers(block: bytes) -> None:
    for found in _PART_NAME.finditer(block):
        extended, value = found.group(1), found.group(2).strip()
        if value.startswith(b'"'):
            value = re.sub(
                rb"\\(.)", rb"\1", value[1:-1] if value.endswith(b'"') and len(value) > 1 else value[1:]
            )
        if extended and value.count(b"'") >= 2:
            value = value.split(b"'", 2)[2]  # RFC 2231: charset'language'percent-encoded
        elif value.startswith(b"'"):  # PHP reads 'single-quoted' values too
            value = value[1:].split(b"'", 1)[0]
        if _override_decoded(unquote_to_bytes(value)):
            raise OverrideFound("a method override field in the multipart body")


def body_scanner(content_types: Sequence[str], content_encodings: Sequence[str] = ()) -> BodyScanner | None:
    """The scanner for a body with these Content-Type header values, or None when no
    framework reads form fields from it. Raises OverrideFound for a body that would need
    scanning but can't be read: an ambiguous type, or a Content-Encoding (Express's
    body-parser inflates gzip and deflate bodies before method-override reads them)."""
    if len(content_types) > 1:
        raise OverrideFound("more than one Content-Type header")
    value = content_types[0] if content_types else ""
    media = value.partition(";")[0].strip().lower()
    scanned = not media or "form-urlencoded" in media or "json" in media or media.startswith("multipart/")
    codings = [c.strip().lower() for v in content_encodings for c in v.split(",") if c.strip()]
    if scanned and any(c != "identity" for c in codings):
        raise OverrideFound("a form or JSON body with a Content-Encoding can't be inspected")
    if scanned:
        charsets = [c.strip('"').lower() for c in _CHARSET.findall(value)]
        if len(charsets) > 1 or any(c not in _ASCII_CHARSETS for c in charsets):
            # body-parser decodes UTF-7/16/32 before reading keys: not the bytes scanned here
            raise OverrideFound("a form or JSON body must be UTF-8 (or ASCII, Latin-1) to be inspected")
    if not media or "form-urlencoded" in media:
        return UrlencodedScanner()
    if "json" in media:
        return JsonScanner()
    if media.startswith("multipart/"):
        boundaries = _BOUNDARY.findall(value)
        if len(boundaries) != 1:
            raise OverrideFound("a multipart body needs exactly one boundary parameter")
        # PHP takes the first "boundary" anywhere in the header (`xboundary=`, inside another
        # parameter's value): there must be one, spelled so that every parser reads it alike
        if value.lower().count("boundary") != 1 or _CLEAR_BOUNDARY.search(value) is None:
            raise OverrideFound("a multipart boundary must be one plain token or quoted string")
        boundary = boundaries[0].strip('"')
        if not 1 <= len(boundary) <= 200:
            raise OverrideFound("a multipart boundary must be 1 to 200 characters")
        return MultipartScanner(boundary.encode("latin-1", "replace"))
    return None
