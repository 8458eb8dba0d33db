"""Redaction: anything that may carry a credential is redacted before it is logged or stored.

Request targets (the raw one of a refused request, the canonical one of an allowed request,
the X-Original-URI of a forward-auth check), refusal reasons that quote client input, the
client's own request id and user agent, and the lines of the standard library's loggers
(gateway/logs.py). `redact` is the one function for all of them; `Redactor` adds a memo for
the request path. (Moved here from gateway/audit.py, which re-exports both, so that the log
set-up can use it without an import cycle.)
"""

from __future__ import annotations

import re

from tokenward.gateway.bounded import BoundedMap

REDACTED = "[REDACTED]"
# Cheap test first: a target with none of "%@=_" and no run of 16 alphanumerics holds nothing
# `redact` would change.
_LONG_RUN = re.compile(r"[A-Za-z0-9+]{16}")
_TOKEN_SHAPED = re.compile(
    # a prefix_body token (tw_sat_…, ghp_…, sk_live_…): a 16+ character alphanumeric body
    r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*_[A-Za-z0-9]{16,}"
    # a JWT
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"
    # a long opaque string: 32+ alphanumerics (keys, digests, a token without its prefix) ...
    r"|[A-Za-z0-9]{32,}"
    # ... or 20+ of them mixing upper case, lower case and digits (random-looking)
    r"|(?=[A-Za-z0-9+]{20})(?=[A-Za-z0-9+]*?[a-z])(?=[A-Za-z0-9+]*?[A-Z])(?=[A-Za-z0-9+]*?[0-9])"
    r"[A-Za-z0-9+]{20,}=*"
)
# name=value pairs in a query string or in `;` path parameters, and URL userinfo
_PARAM = re.compile(r"(?:^|[?&;])([^=&;?#/]*)=([^&;#]*)")
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*)@")
_SENSITIVE_WORD = re.compile(
    r"token|secret|passw|apikey|api-key|api_key|credential|session|jwt|private|authori[sz]|authent"
    r"|(?:^|[^a-z])(?:key|sig|signature|code|pass|pw|pwd|sid|auth|bearer|cookie)(?:$|[^a-z])"
)


def _unescape(text: str, starts: list[int], ends: list[int]) -> tuple[str, list[int], list[int]]:
    """One round of percent-decoding, each escape read as one character; for every decoded
    character, the span of the original text it came from."""
    out: list[str] = []
    new_starts: list[int] = []
    new_ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "%" and i + 2 < n and _is_hex(text[i + 1 : i + 3]):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            new_starts.append(starts[i])
            new_ends.append(ends[i + 2])
            i += 3
        else:
            out.append(char)
            new_starts.append(starts[i])
            new_ends.append(ends[i])
            i += 1
    return "".join(out), new_starts, new_ends


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def redact(text: str) -> str:
    """`text` (a request target, or any client-supplied string) with every credential-like
    part replaced by `[REDACTED]`: values of sensitive query or `;` parameters (`access_token`,
    `api_key`, `password`, `sig`, ...), URL userinfo, and anything token-shaped, also when
    percent-encoded (up to three times). The rest is kept as it was sent."""
    if "%" not in text and "@" not in text and "=" not in text and "_" not in text and not _LONG_RUN.search(text):
        return text
    return _redact(text)


def redact_token_shaped(text: str) -> str:
    """`text` (prose: an error message quoting client input) with only its token-shaped
    parts (and URL userinfo) redacted: unlike `redact`, a `name=value` in prose ("expected
    KEY=VALUE") is not a query parameter and is kept."""
    if "_" not in text and "@" not in text and not _LONG_RUN.search(text):
        return text
    spans = [(m.start(), m.end()) for m in _TOKEN_SHAPED.finditer(text)]
    spans += [(m.start(1), m.end(1)) for m in re.finditer(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@\s]+)@", text)]
    out, at = [], 0
    for start, end in sorted(spans):
        if start >= at:
            out += [text[at:start], REDACTED]
        at = max(at, end)
    return "".join(out) + text[at:] if spans else text


class Redactor:
    """`redact` with a memo of recent short texts that had nothing to redact (never a
    secret: only texts returned unchanged are kept), for the request path, where the same
    paths come again and again. One per `AuditLog`, so no two runtimes share it."""

    __slots__ = ("_clean",)

    def __init__(self, size: int = 4096) -> None:
        self._clean: BoundedMap[str, bool] = BoundedMap(size)

    def __call__(self, text: str) -> str:
        if text in self._clean:
            return text
        result = redact(text)
        if result is text and len(text) <= 256:
            self._clean.put(text, True)
        return result


def _redact(text: str) -> str:
    view, starts, ends = text, list(range(len(text))), list(range(1, len(text) + 1))
    spans: list[tuple[int, int]] = []
    for _ in range(4):
        for match in _TOKEN_SHAPED.finditer(view):
            spans.append((starts[match.start()], ends[match.end() - 1]))
        for match in _PARAM.finditer(view):
            name = match.group(1).lower()
            if match.end(2) > match.start(2) and _SENSITIVE_WORD.search(name):
                spans.append((starts[match.start(2)], ends[match.end(2) - 1]))
        userinfo = _USERINFO.match(view)
        if userinfo and userinfo.end(1) > userinfo.start(1):
            spans.append((starts[userinfo.start(1)], ends[userinfo.end(1) - 1]))
        if "%" not in view:
            break
        decoded = _unescape(view, starts, ends)
        if decoded[0] == view:
            break
        view, starts, ends = decoded
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    at = 0
    for start, end in merged:
        out.append(text[at:start])
        out.append(REDACTED)
        at = end
    out.append(text[at:])
    return "".join(out)
