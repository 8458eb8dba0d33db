"""Paths, routes and methods another server reads differently (issue 10, items 7-9).

Attack requests go as raw bytes over a socket (tests/helpers/rawhttp.py) through the real
gateway to an upstream that records exactly what reached it. Every refused request must leave
the recorder empty; every accepted one must reach it byte for byte as sent.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers.gateway import APIS, LogReader
from tests.helpers.rawhttp import TEAM, Confusion, confusion_config, multipart, raw, refused_at, request
from tokenward.gateway.forms import BodyScanner, OverrideFound, body_scanner, query_has_override
from tokenward.gateway.paths import PathError, canonical_path, parse_target, unicode_problem
from tokenward.gateway.routes import LITERAL, TAIL, Route, Router, parse_template
from tokenward.gateway.settings import load_settings

VERIFY = "/_tokenward/verify"


def _folds_to(targets: str, limit: int) -> list[str]:
    """Non-ASCII characters whose NFKC form is one of `targets` (computed, not listed)."""
    found = []
    for code in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        if unicodedata.normalize("NFKC", ch) in targets:
            found.append(ch)
            if len(found) >= limit:
                break
    return found


ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
FOLD_TO_PUNCT = _folds_to("./\\;%", 200)
FOLD_TO_ALNUM = _folds_to(ASCII_ALNUM, 5000)


def enc(text: str) -> str:
    return quote(text, safe="")


# -- 7. paths another server reads differently --------------------------------------------------
# (suffix after APIS/…, why) - each must be 400 at step path and reach nothing
CONFUSING_PATHS = [
    # ';' path parameters in any segment (Tomcat/Jetty/Spring cut the segment at ';')
    "/..;/..;/billing/apis",
    "/x/..;/internal",
    "/internal;x",
    "/internal;",
    "/;/internal",
    "/payments;jsessionid=1",
    "/internal%3bx",
    "/internal%3Bx",
    "/%3b",
    "/..%3b/internal",
    # double percent-encoding of anything the canonical rules refuse (and of letters)
    "/%252e%252e/x",
    "/%252E%252E/x",
    "/%25%32%65%25%32%65/x",
    "/%25%32%45",
    "/%252f",
    "/%252F",
    "/a%255cb",
    "/a%255Cb",
    "/a%253bb",
    "/a%2525",
    "/a%252500",
    "/a%2500",
    "/a%250a",
    "/a%257f",
    "/%25%35%63",
    "/%25%32%66",
    "/%25%33%62",
    "/%2569nternal",
    "/%25%36%39nternal",
    "/x%25%34%31",
    # percent-encoded bytes that are not UTF-8
    "/%C0%AE%C0%AE/x",
    "/%c0%ae",
    "/%C0%AF",
    "/%E0%80%AE",
    "/%F0%80%80%AE",
    "/%C1%9C",
    "/%80",
    "/%BF",
    "/a%80b",
    "/%ED%A0%80",
    "/%ED%BF%BF",
    "/%ED%A0%BD%ED%B8%80",
    "/%E2%82",
    "/%F0%9F%98",
    "/%C3",
    "/%C3%28",
    "/%F4%90%80%80",
    "/%F5%80%80%80",
    "/%FE",
    "/%FF",
    "/%E2%82%AC%80",
    # characters that Unicode folding reads as ASCII (a few by hand; the computed set below)
    "/%EF%BC%8E%EF%BC%8E/x",
    "/%EF%BC%8F",
    "/%EF%BC%BC",
    "/%E2%80%A4%E2%80%A4/x",
    "/%EF%B9%92",
    "/%EF%BD%89nternal",
    "/%EF%BC%A9NTERNAL",
    "/%C5%BFecret",
    "/%E2%84%AA",
    "/%EF%AC%81le",
    "/%C4%B1nternal",
    "/%C4%B0NTERNAL",
    "/%C3%9F",
    "/%D9%A3",
    "/%E0%A5%A7",
    "/%C2%B2",
    # invisible, format and space characters
    "/inter%C2%ADnal",
    "/inter%E2%80%8Bnal",
    "/internal%EF%BB%BF",
    "/internal%E2%80%AE",
    "/internal%C2%A0",
    "/internal%E3%80%80",
    "/internal%C2%85",
    "/internal%E1%9A%80",
    # trailing dots and spaces (raw or encoded), leading spaces
    "/internal.",
    "/internal..",
    "/internal%2e",
    "/internal%2E",
    "/internal%20",
    "/internal%20%20",
    "/internal.%20",
    "/internal%20.",
    "/%20internal",
    "/...",
    "/x/.../y",
    "/v1./specs",
]


# raw bytes in the request line (latin-1 here = the bytes sent): UTF-8 must be percent-encoded
RAW_BYTES = [
    "/internal\xef\xbc\x8e",
    "/\xef\xbc\x8e\xef\xbc\x8e/x",
    "/\xc0\xae",
    "/caf\xc3\xa9",
    "/\xff",
    "/a\x85",
]


async def test_raw_non_ascii_bytes_are_refused(confusion: Confusion) -> None:
    failures = []
    for suffix in RAW_BYTES:
        got = await refused_at(confusion, request(APIS + suffix, confusion.host, confusion.admin))
        if got[0] != 400 or got[1] not in ("path", "framing"):
            failures.append((suffix, got))
    assert failures == []
    assert confusion.rec.seen == []


async def test_confusing_paths_are_400_and_reach_nothing(confusion: Confusion, logs: LogReader) -> None:
    cases = [APIS + suffix for suffix in CONFUSING_PATHS]
    cases += [f"/files/{enc(ch)}" for ch in FOLD_TO_PUNCT[:40]]
    cases += [f"{APIS}/{enc(ch)}nternal" for ch in FOLD_TO_ALNUM[:: max(1, len(FOLD_TO_ALNUM) // 60)]]
    failures = []
    for target in cases:
        for token in (confusion.reader, confusion.admin):
            got = await refused_at(confusion, request(target, confusion.host, token))
            if got != (400, "path"):
                failures.append((target, got))
    assert failures == []
    assert confusion.rec.seen == []
    assert {e["step"] for e in logs.events("request.denied")} == {"path"}


def test_every_character_folding_to_ascii_is_refused() -> None:
    """Every code point whose NFKC is '.', '/', '\\', ';', '%' or an ASCII letter or digit."""
    assert len(FOLD_TO_PUNCT) > 10 and len(FOLD_TO_ALNUM) > 900
    for ch in FOLD_TO_PUNCT + FOLD_TO_ALNUM:
        assert unicode_problem(ch) is not None, hex(ord(ch))
        with pytest.raises(PathError):
            canonical_path(f"/a/x{enc(ch)}y")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=6).map(bytes))
def test_escaped_bytes_are_strict_utf8_or_refused(data: bytes) -> None:
    """Encoded non-ASCII bytes: accepted only as strict UTF-8 of characters that fold to
    nothing ASCII (overlongs, surrogates, stray or missing continuation bytes refused)."""
    escaped = "".join(f"%{b:02X}" for b in data)
    try:
        path = canonical_path(f"/a/x{escaped}y")
    except PathError:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        assert any(unicode_problem(c) for c in text)  # valid UTF-8: refused for folding
        return
    text = data.decode("utf-8")  # accepted: must be strict UTF-8, nothing folding to ASCII
    assert all(unicode_problem(c) is None for c in text)
    assert path == f"/a/x{escaped}y"


# accepted and forwarded byte for byte: plain ASCII, and UTF-8 names not folding to ASCII
LEGIT_PATHS = [
    APIS,
    f"{APIS}/payments",
    f"{APIS}/internals",
    f"{APIS}/intern",
    f"{APIS}/v1.2",
    f"{APIS}/.well-known",
    f"{APIS}/a%20b",
    f"{APIS}/x%25",
    f"{APIS}/caf%C3%A9",
    f"{APIS}/%E6%97%A5%E6%9C%AC",
    f"{APIS}/%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82",
    f"{APIS}/%CE%A9mega",
    f"{APIS}/%E2%82%AC",
    f"{APIS}/%F0%9F%98%80",
    f"{APIS}/%C5%9Fehir",
    f"{APIS}/internal-v2",
    f"{APIS}/INTERNAL/specs",  # no protected literal route matches this path at all
    "/files/a/b/c.txt",
    "/files/secrets",
    "/files/SECRET/x",
    "/files/vault",
    "/files/a/b/",
]


async def test_legit_paths_are_forwarded_byte_for_byte(confusion: Confusion) -> None:
    failures = []
    for target in LEGIT_PATHS:
        status, _, body = await raw(confusion.port, request(target, confusion.host, confusion.reader))
        if status != 200 or confusion.rec.seen[-1]["raw_path"] != target:
            failures.append((target, status, body[:200]))
    assert failures == []
    assert [seen["raw_path"] for seen in confusion.rec.seen] == LEGIT_PATHS


# -- 8. falling through to a weaker route ---------------------------------------------------------
FALL_THROUGH = [
    f"{APIS}/INTERNAL",
    f"{APIS}/Internal",
    f"{APIS}/iNTERNAL",
    f"{APIS}/internaL",
    f"{APIS}/%49nternal",
    f"{APIS}/%49%4E%54%45%52%4E%41%4C",
    f"{APIS}/internal.",
    f"{APIS}/internal%20",
    f"{APIS}/internal;x",
    f"{APIS}/%EF%BD%89%EF%BD%8E%EF%BD%94%EF%BD%85%EF%BD%92%EF%BD%8E%EF%BD%81%EF%BD%8C",
    f"{APIS}/%EF%BC%A9NTERNAL",
    f"{APIS}/%C4%B1nternal",
    f"{TEAM}/jobs/run%3Aall",
    f"{TEAM}/jobs/run%3aall",
    f"{TEAM}/jobs/RUN:ALL",
    f"{TEAM}/jobs/Run%3AAll",
    "/files/SECRET",
    "/files/Secret",
    "/files/secret.",
    "/files/secret%20",
    "/files/secret;a",
    "/files/%73ecret%2e",
    "/files/VAULT/x",
    "/files/Vault/x",
    "/files/secret/",
    "/files/vault/x/",
    "/files/SECRET/",
    "/files/Vault/x/",
    "/ci/apis/internal.",
    "/ci/apis/internal%20",
    "/ci/apis/internal;x",
]


async def test_no_fall_through_to_a_weaker_route(confusion: Confusion) -> None:
    failures = []
    for target in FALL_THROUGH:
        for token in (confusion.reader, confusion.admin):
            got = await refused_at(confusion, request(target, confusion.host, token))
            if got != (400, "path"):
                failures.append((target, got))
    assert failures == []
    assert confusion.rec.seen == []
    # the literal itself: decided on its own (stronger) route
    assert await refused_at(confusion, request(f"{APIS}/internal", confusion.host, confusion.reader)) == (403, "scope")
    assert (await raw(confusion.port, request(f"{APIS}/internal", confusion.host, confusion.admin)))[0] == 200
    assert (await raw(confusion.port, request("/files/secret", confusion.host, confusion.admin)))[0] == 200
    assert await refused_at(confusion, request("/files/vault/x", confusion.host, confusion.reader)) == (403, "scope")


async def test_case_insensitive_upstream_decides_on_the_literal(confusion: Confusion, logs: LogReader) -> None:
    for variant in ("INTERNAL", "Internal", "iNtErNaL", "%49nternal"):
        target = f"/ci/apis/{variant}"
        assert await refused_at(confusion, request(target, confusion.host, confusion.reader)) == (403, "scope"), variant
        assert (await raw(confusion.port, request(target, confusion.host, confusion.admin)))[0] == 200, variant
    routes = [e["route"] for e in logs.events("request.allowed")]
    assert routes == ["GET /ci/apis/internal"] * 4
    assert [s["raw_path"] for s in confusion.rec.seen] == [
        "/ci/apis/INTERNAL",
        "/ci/apis/Internal",
        "/ci/apis/iNtErNaL",
        "/ci/apis/Internal",
    ]  # the canonical path (%49 is 'I'), byte for byte
    # anything else still goes to the parameter route
    assert (await raw(confusion.port, request("/ci/apis/other", confusion.host, confusion.reader)))[0] == 200


async def test_head_is_decided_as_get(confusion: Confusion) -> None:
    head = request("/reports", confusion.host, confusion.reader, method="HEAD")
    assert await refused_at(confusion, head) == (403, "")  # a HEAD answer has no body
    assert confusion.rec.seen == []
    assert (await raw(confusion.port, request("/reports", confusion.host, confusion.admin, method="HEAD")))[0] == 200
    assert confusion.rec.seen[-1]["method"] == "HEAD"
    # other methods still take the any-method route
    assert (await raw(confusion.port, request("/reports", confusion.host, confusion.reader, method="POST")))[0] == 200
    # HEAD on the parameter route and the literal: as GET on each
    assert await refused_at(confusion, request(f"{APIS}/internal", confusion.host, confusion.reader, method="HEAD")) == (
        403,
        "",
    )
    assert (await raw(confusion.port, request(f"{APIS}/x", confusion.host, confusion.reader, method="HEAD")))[0] == 200


async def test_forward_auth_applies_the_same_path_rules(confusion: Confusion) -> None:
    failures = []
    targets = [APIS + s for s in CONFUSING_PATHS[::3]] + FALL_THROUGH + [f"{APIS}?_method=DELETE"]
    for target in targets:
        for style in (f"X-Original-URI: {target}", f"X-Forwarded-Uri: {target}"):
            got = await refused_at(confusion, request(VERIFY, confusion.host, confusion.admin, style, "X-Original-Method: GET"))
            if got != (400, "path"):
                failures.append((style, got))
        if "?" not in target:  # Envoy: the original path after the verify path
            got = await refused_at(confusion, request(VERIFY + target, confusion.host, confusion.admin))
            if got != (400, "path"):
                failures.append(("envoy", target, got))
    assert failures == []
    head = request(VERIFY, confusion.host, confusion.reader, "X-Original-URI: /reports", "X-Original-Method: HEAD")
    assert await refused_at(confusion, head) == (403, "scope")
    ok = request(VERIFY, confusion.host, confusion.admin, f"X-Original-URI: {APIS}/internal")
    assert (await raw(confusion.port, ok))[0] == 200
    assert confusion.rec.seen == []


# -- hypothesis: never decided on another route than a lax upstream runs -------------------------
_LITERALS = ["internal", "secret", "run:all", "a!b", "v1", "x"]


def _lax(segment: str) -> str:
    """How the laxest upstream reads a segment: cut at ';', decoded (twice), NFKC, trimmed,
    case-folded."""
    from urllib.parse import unquote

    text = unquote(unquote(segment.split(";", 1)[0]))
    return unicodedata.normalize("NFKC", text).rstrip(". ").strip().lower()


def _upstream_route(routes: list[Route], method: str, path: str) -> Route | None:
    """The route a case-insensitive, decoding, trailing-slash-blind upstream with the same
    route map runs."""
    segments = [_lax(s) for s in path[1:].split("/")]
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()  # Express (strict: false) and Spring read a trailing slash as none
    candidates = []
    for route in routes:
        kinds = []
        for i, (kind, literal) in enumerate(route.shape):
            if kind == TAIL:
                ok = i < len(segments) and segments[i] != ""
                kinds.append(TAIL)
                break
            if i >= len(segments):
                ok = False
                break
            ok = (segments[i] == literal.lower()) if kind == LITERAL else segments[i] != ""
            if not ok:
                break
            kinds.append(kind)
        else:
            ok = len(route.shape) == len(segments)
        if not ok:
            continue
        methods = route.methods
        if method == "HEAD" and methods is not None and "GET" in methods:
            rank = 0
        elif methods is not None and method in methods:
            rank = 1
        elif methods is None:
            rank = 2
        else:
            continue
        candidates.append((kinds, rank, route))
    if not candidates:
        return None
    candidates.sort(key=lambda c: (c[0], c[1]))
    return candidates[0][2]


@st.composite
def route_maps(draw: st.DrawFn) -> tuple[list[Route], frozenset[str]]:
    templates = draw(
        st.lists(
            st.lists(
                st.one_of(st.sampled_from(_LITERALS), st.just("{p}"), st.just("{t:*}")),
                min_size=1,
                max_size=3,
            ),
            min_size=1,
            max_size=6,
        )
    )
    routes: list[Route] = []
    seen: set[tuple[object, ...]] = set()
    for index, segs in enumerate(templates):
        segs = [s for i, s in enumerate(segs) if s != "{t:*}" or i == len(segs) - 1]
        names = iter(f"p{i}" for i in range(10))
        path = "/" + "/".join(
            ("{" + next(names) + "}") if s == "{p}" else ("{" + next(names) + ":*}") if s == "{t:*}" else s
            for s in segs
        )
        shape, _ = parse_template(path)
        methods = draw(st.sampled_from([None, frozenset({"GET"}), frozenset({"POST"}), frozenset({"HEAD"})]))
        key = (shape, methods)
        if key in seen or any(
            r.shape == shape
            and (r.methods is None) == (methods is None)
            and (r.methods or set()) & (methods or set())
            for r in routes
        ):
            continue
        seen.add(key)
        upstream = draw(st.sampled_from(["plain", "ci"]))
        routes.append(_route(index, path, methods, upstream))
    return routes, frozenset({"ci"})


def _route(index: int, path: str, methods: frozenset[str] | None = None, upstream: str = "plain") -> Route:
    shape, names = parse_template(path)
    return Route(index, path, methods, upstream, (), False, {}, False, shape, names)


_VARIANTS = st.sampled_from(
    [
        "internal",
        "INTERNAL",
        "Internal",
        "internal.",
        "internal%20",
        "internal;x",
        "%EF%BD%89nternal",
        "%2569nternal",
        "%69nternal",
        "secret",
        "SECRET",
        "run:all",
        "run%3Aall",
        "RUN:ALL",
        "a!b",
        "a%21b",
        "A%21B",
        "v1",
        "V1",
        "x",
        "X",
        "other",
        "",
        "..",
        "%2e",
        "y",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route_maps(), st.lists(_VARIANTS, min_size=1, max_size=4), st.sampled_from(["GET", "HEAD", "POST"]))
@example(([_route(0, "/{t:*}"), _route(1, "/internal")], frozenset()), ["internal", ""], "GET")
@example(([_route(0, "/{t:*}"), _route(1, "/internal/")], frozenset()), ["internal"], "GET")
@example(([_route(0, "/{t:*}"), _route(1, "/internal")], frozenset()), ["INTERNAL", ""], "GET")
@example(
    ([_route(0, "/{t:*}"), _route(1, "/internal/internal")], frozenset()), ["internal", "INTERNAL"], "GET"
)
@example(([_route(0, "/x", frozenset({"GET"})), _route(1, "/x")], frozenset()), ["x"], "HEAD")
@example(
    ([_route(0, "/{p}", upstream="ci"), _route(1, "/internal", upstream="ci")], frozenset({"ci"})),
    ["INTERNAL"],
    "GET",
)
def test_never_decided_on_another_route_than_a_lax_upstream_runs(
    maps: tuple[list[Route], frozenset[str]], segments: list[str], method: str
) -> None:
    routes, insensitive = maps
    router = Router(routes, insensitive)
    target = "/" + "/".join(segments)
    try:
        path = parse_target(target).path
        match = router.match(method, path)
    except PathError:
        return  # refused: nothing is decided
    if match is None:
        return  # 404: nothing reaches an upstream
    runs = _upstream_route(routes, method, path)
    assert runs is match.route, (target, match.route.label, runs.label if runs else None)


def test_config_check_warns_about_folding_overlaps(tmp_path: Any) -> None:
    from tokenward.gateway.explain import config_warnings

    config = confusion_config(9)
    config["routes"] += [
        {"methods": ["GET"], "path": "/Admin/keys", "upstream": "registry", "scopes": ["admin:apis"]},
        {"methods": ["GET"], "path": "/admin/keys", "upstream": "registry", "scopes": ["read:apis"]},
        {"methods": ["HEAD"], "path": "/reports", "upstream": "registry", "scopes": ["read:apis"]},
        {"methods": ["GET"], "path": "/slash/", "upstream": "registry", "scopes": ["admin:apis"]},
        {"methods": ["GET"], "path": "/slash", "upstream": "registry", "scopes": ["read:apis"]},
    ]
    path = tmp_path / "c.yaml"
    path.write_bytes(orjson.dumps(config))
    warnings = "\n".join(config_warnings(load_settings(str(path))))
    assert "GET /admin/keys and routes[" in warnings and "differ only in the case" in warnings
    assert "GET /ci/apis/internal and" not in warnings
    assert "HEAD is decided as GET" in warnings
    assert "GET /slash and routes[" in warnings
    assert "protected literal 'internal' sits beside the parameter" in warnings
    assert "protected literal 'secret'" in warnings
    # the case-insensitive upstream's literal is decided as the literal: no warning for it
    assert "protected literal 'internal' sits beside the parameter of routes[" in warnings
    assert "of routes[18] (GET /ci/apis/{api})" not in warnings


# -- 9. method override by parameter ---------------------------------------------------------------
OVERRIDE_QUERIES = [
    "_method=DELETE",
    "_METHOD=delete",
    "_Method=DELETE",
    "%5Fmethod=DELETE",
    "%5fMETHOD=DELETE",
    "%5F%6D%65%74%68%6F%64=DELETE",
    "a=1&_method=DELETE",
    "_method=GET&_method=DELETE",
    "_method[]=DELETE",
    "_method%5B%5D=DELETE",
    "+_method=DELETE",
    "%20_method=DELETE",
    ".method=DELETE",
    "%2Emethod=DELETE",
    "x-http-method-override=DELETE",
    "_method%00x=DELETE",
    "X_HTTP_METHOD=PUT",
    "x-method-override=PATCH",
    "a=1;_method=DELETE",
    "_method",
    "_method=",
    "q=1&&_method=DELETE",
]
OK_QUERIES = ["method=GET", "my_method=x", "_methods=x", "q=_method", "x=_method%3DDELETE", "page=2"]


async def test_method_override_in_the_query_is_refused(confusion: Confusion) -> None:
    failures = []
    for query in OVERRIDE_QUERIES:
        for method in ("GET", "POST"):
            got = await refused_at(confusion, request(f"{APIS}/x?{query}", confusion.host, confusion.reader, method=method))
            if got != (400, "path"):
                failures.append((method, query, got))
    assert failures == []
    assert confusion.rec.seen == []
    for query in OK_QUERIES:
        assert (await raw(confusion.port, request(f"{APIS}/x?{query}", confusion.host, confusion.reader)))[0] == 200, query
    assert [s["raw_path"] for s in confusion.rec.seen] == [f"{APIS}/x?{q}" for q in OK_QUERIES]


FORM = "application/x-www-form-urlencoded"
OVERRIDE_FORMS = [
    b"_method=DELETE",
    b"a=1&_method=DELETE",
    b"%5Fmethod=DELETE",
    b"_METHOD=delete",
    b"a=1;_method=DELETE",
    b"++_method=DELETE",
    b"_method%5B%5D=DELETE",
    b"_method[x]=DELETE",
    b"x%2Dhttp%2Dmethod%2Doverride=DELETE",
    b".method=DELETE",
    b"a=" + b"b" * 200_000 + b"&_method=DELETE",
    b"+" * 5000 + b"_method=DELETE",
]
OVERRIDE_JSON = [
    b'{"_method": "DELETE"}',
    b'{"a": 1, "_method":"DELETE"}',
    b'{"\\u005fmethod": "DELETE"}',
    b'{"_METHOD" \n\t : "DELETE"}',
    b'{"data": "' + b"x" * 200_000 + b'", "_method": "DELETE"}',
    b'{"a": {"_method": "DELETE"}}',
    b'{"_method"' + b" " * 100_000 + b': "DELETE"}',
]
FORM_TYPES = [FORM, f"{FORM}; charset=utf-8", FORM.upper(), f" {FORM} ", None]


OVERRIDE_PARTS = [
    'form-data; name="_method"',
    "form-data; name=_method",
    'form-data; NAME="_METHOD"',
    "form-data; name*=utf-8''%5Fmethod",
    'form-data; name="%5Fmethod"',
    'form-data; name="_method[]"',
    'form-data;name="_method"',
    'form-data; filename="a.txt"; name="_method"',
    'form-data; name="_me\\thod"',
    'form-data; name="x-http-method-override"',
]


async def send_body(
    confusion: Confusion, body: bytes, content_type: str | None, chunked: bool = False
) -> tuple[int, str]:
    extra = [f"Content-Type: {content_type}"] if content_type is not None else []
    target = f"{APIS}/x"
    if not chunked:
        return await refused_at(confusion, request(target, confusion.host, confusion.reader, *extra, method="POST", body=body))
    head = request(target, confusion.host, confusion.reader, *extra, "Transfer-Encoding: chunked", method="POST")
    step = 1000
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + step]), body[i : i + step]) for i in range(0, len(body), step)
    )
    return await refused_at(confusion, head + chunks + b"0\r\n\r\n")


async def test_method_override_in_a_form_body_is_refused(confusion: Confusion) -> None:
    failures = []
    for body in OVERRIDE_FORMS:
        for content_type in FORM_TYPES:
            for chunked in (False, True):
                got = await send_body(confusion, body, content_type, chunked)
                if got != (400, "request"):
                    failures.append((body[:40], content_type, chunked, got))
    boundary = "----tw7MA4YWxkTrZu0gW"
    big = ('form-data; name="file"; filename="a.bin"', b"\x00\xff" * 150_000)
    for part in OVERRIDE_PARTS:
        for ct in (
            f"multipart/form-data; boundary={boundary}",
            f'multipart/form-data; boundary="{boundary}"',
            f"multipart/mixed; boundary={boundary}",
        ):
            for body in (
                multipart(boundary, ('form-data; name="a"', b"1"), (part, b"DELETE")),
                multipart(boundary, big, (part, b"DELETE")),
                multipart(boundary, (part, b"DELETE"), eol=b"\n"),
            ):
                for chunked in (False, True):
                    got = await send_body(confusion, body, ct, chunked)
                    if got != (400, "request"):
                        failures.append((part, ct, len(body), chunked, got))
    for ct in ("multipart/form-data", f"multipart/form-data; boundary=a; boundary={boundary}"):
        got = await send_body(confusion, multipart(boundary, ('form-data; name="_method"', b"DELETE")), ct)
        if got != (400, "request"):
            failures.append((ct, got))
    for body in OVERRIDE_JSON:
        for ct in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
            for chunked in (False, True):
                got = await send_body(confusion, body, ct, chunked)
                if got != (400, "request"):
                    failures.append((body[:40], ct, chunked, got))
    for ct in (FORM, "application/json", "multipart/form-data; boundary=x", None):
        extra = [f"Content-Type: {ct}"] if ct else []
        for coding in ("gzip", "deflate", "br", "identity, gzip"):
            data = request(
                f"{APIS}/x",
                confusion.host,
                confusion.reader,
                *extra,
                f"Content-Encoding: {coding}",
                method="POST",
                body=b"\x1f\x8b\x08\x00",
            )
            if (got := await refused_at(confusion, data)) != (400, "request"):
                failures.append((ct, coding, got))
    two_types = request(
        f"{APIS}/x",
        confusion.host,
        confusion.reader,
        "Content-Type: text/plain",
        f"Content-Type: {FORM}",
        method="POST",
        body=b"_method=DELETE",
    )
    if (got := await refused_at(confusion, two_types)) not in ((400, "request"), (400, "framing")):
        failures.append(("two content types", got))
    assert failures == []
    assert confusion.rec.seen == []  # no upstream ever got a whole request carrying the override


async def test_legit_form_bodies_are_forwarded_byte_for_byte(confusion: Confusion) -> None:
    boundary = "XyZ123"
    html = b'<form><input type="hidden" name="_method" value="delete"></form>\r\n\r\n_method=DELETE'
    bodies = [
        (b"a=1&method=2&my_method=3&_methods=4&q=_method", FORM),
        (b"x=" + b"y" * 300_000, FORM),
        (
            multipart(
                boundary,
                ('form-data; name="file"; filename="form.html"', html),
                ('form-data; name="a"', b"1"),
            ),
            f"multipart/form-data; boundary={boundary}",
        ),
        (b'{"method": "DELETE", "q": "_method", "a": {"b": "_method\\":"}}', "application/json"),
        (b"_method=DELETE", "text/plain"),
        (b"\x1f\x8b\x08\x00 gzip bytes", "application/octet-stream"),
    ]
    for body, content_type in bodies:
        for chunked in (False, True):
            got = await send_body(confusion, body, content_type, chunked)
            assert got[0] == 200, (body[:40], content_type, chunked, got)
            assert confusion.rec.seen[-1]["body"] == body and confusion.rec.seen[-1]["method"] == "POST"


# -- the body scanner, unit level: refused on the chunk that completes the name ------------------
def _scan(scanner: BodyScanner, chunks: list[bytes]) -> int | None:
    """Bytes forwarded before the scanner refused (None: never refused)."""
    sent = 0
    for chunk in chunks:
        try:
            scanner.feed(chunk)
        except OverrideFound:
            return sent
        sent += len(chunk)
    return None


@pytest.mark.parametrize("body", [b"_method=DELETE", b"a=1&%5Fmethod=DELETE", b"x=1;+_METHOD[]=PUT&y=2"])
def test_urlencoded_scanner_at_every_split(body: bytes) -> None:
    name_end = body.index(b"=", body.lower().index(b"method"))
    for cut in range(len(body) + 1):
        for second in range(cut, len(body) + 1):
            scanner = body_scanner([FORM])
            assert scanner is not None
            sent = _scan(scanner, [body[:cut], body[cut:second], body[second:]])
            assert sent is not None and sent <= name_end, (cut, second, sent)


def test_multipart_scanner_at_every_split() -> None:
    boundary = "b0und"
    body = multipart(boundary, ('form-data; name="a"', b"1" * 50), ('form-data; name="_method"', b"DELETE"))
    headers_end = body.index(b"\r\n\r\n", body.index(b'"_method"'))
    for cut in range(len(body) + 1):
        scanner = body_scanner([f"multipart/form-data; boundary={boundary}"])
        assert scanner is not None
        sent = _scan(scanner, [body[:cut], body[cut:]])
        assert sent is not None and sent <= headers_end + 3, (cut, sent)


@pytest.mark.parametrize("body", [*OVERRIDE_JSON[:4], OVERRIDE_JSON[6][:40] + OVERRIDE_JSON[6][-20:]])
def test_json_scanner_at_every_split(body: bytes) -> None:
    colon = body.index(b":", body.lower().index(b"method"))
    for cut in range(len(body) + 1):
        for second in range(cut, len(body) + 1, 3):
            scanner = body_scanner(["application/json"])
            assert scanner is not None
            sent = _scan(scanner, [body[:cut], body[cut:second], body[second:]])
            assert sent is not None and sent <= colon, (cut, second, sent)


def test_query_override_names() -> None:
    for query in OVERRIDE_QUERIES:
        assert query_has_override(query), query
    for query in OK_QUERIES:
        assert not query_has_override(query), query


_NAME_SPELLINGS = st.sampled_from(
    [
        b"_method",
        b"_METHOD",
        b"%5Fmethod",
        b"%5f%6d%65%74%68%6f%64",
        b"+_method",
        b"_method[]",
        b".method",
        b"x-http-method-override",
        b"_me%74hod",
        b"+" * 3000 + b"_method",
    ]
)
_FIELDS = st.lists(
    st.tuples(st.sampled_from([b"a", b"q", b"method", b"my_method", b"x%41", b""]), st.binary(max_size=30)),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(_FIELDS, _NAME_SPELLINGS, _FIELDS, st.lists(st.integers(1, 4000), min_size=1, max_size=6))
@example([], b"%5f%6d%65%74%68%6f%64", [(b"q", b"v")], [21, 103, 273])  # "metho" cut inside an escape
def test_urlencoded_override_is_found_before_its_name_is_forwarded(
    before: list[tuple[bytes, bytes]], name: bytes, after: list[tuple[bytes, bytes]], sizes: list[int]
) -> None:
    clean = [(k, quote(v).encode()) for k, v in before]
    prefix = b"&".join(k + b"=" + v for k, v in clean)
    body = (prefix + b"&" if prefix else b"") + name + b"=DELETE"
    body += b"".join(b"&" + k + b"=" + quote(v).encode() for k, v in after)
    completes = len(prefix) + (1 if prefix else 0) + len(name)  # index of the name's '='
    chunks, at = [], 0
    for size in sizes * (len(body) // sum(sizes) + 1):
        chunks.append(body[at : at + size])
        at += size
        if at >= len(body):
            break
    scanner = body_scanner([FORM])
    assert scanner is not None
    sent = _scan(scanner, chunks)
    assert sent is not None and sent <= completes
