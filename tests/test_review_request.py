"""Outside review of the request path (issue 10 items 7-9 re-run with other variants).

Raw bytes over a socket through the real gateway (real store) to an upstream that records
what reached it: every refused request must leave the recorder empty.
"""

from __future__ import annotations

from tests.helpers.gateway import APIS
from tests.helpers.rawhttp import Confusion, multipart, raw, refused_at, request

BOUNDARY = "----tw7MA4YWxkTrZu0gW"
OVERRIDE_PART = ('form-data; name="_method"', b"DELETE")


async def post(confusion: Confusion, body: bytes, content_type: str) -> tuple[int, str]:
    data = request(f"{APIS}/x", confusion.host, confusion.reader, f"Content-Type: {content_type}", method="POST", body=body)
    return await refused_at(confusion, data)


async def test_multipart_boundary_another_parser_reads_differently(confusion: Confusion) -> None:
    """PHP takes the first 'boundary' substring anywhere in Content-Type, the text after its
    '=' (spaces kept) up to ',' or ';'; busboy cuts an unquoted token at a tspecial and reads
    '\\' escapes in a quoted one. Where those readings differ from the gateway's, the gateway
    scanned other parts than the upstream parses: each such Content-Type is refused."""
    cases = [
        # (Content-Type, the boundary a PHP/Node upstream reads)
        (f"multipart/form-data; boundary={BOUNDARY},x", BOUNDARY),
        (f"multipart/form-data; boundary= {BOUNDARY}", " " + BOUNDARY),
        (f"multipart/form-data; xboundary={BOUNDARY}; boundary=zzz", BOUNDARY),
        (f"multipart/form-data; charset=boundary={BOUNDARY}; boundary=zzz", BOUNDARY),
        (f"multipart/form-data; boundary=zzz; a=\"boundary={BOUNDARY}\"", "zzz"),
        (f"multipart/form-data; boundary={BOUNDARY}/x", BOUNDARY),
        (f'multipart/form-data; boundary="{BOUNDARY}\\"x"', BOUNDARY + '"x'),
        (f"multipart/form-data; BOUNDARY={BOUNDARY}", BOUNDARY),  # case: refused or scanned
    ]
    failures = []
    for content_type, read_as in cases:
        confusion.rec.seen.clear()
        body = multipart(read_as, ('form-data; name="a"', b"1"), OVERRIDE_PART)
        got = await post(confusion, body, content_type)
        if got != (400, "request") or confusion.rec.seen:
            failures.append((content_type, got))
    assert failures == []
    # ordinary boundaries still pass (browsers, curl, Go, Python)
    for boundary in (BOUNDARY, "------------------------d74496d66958873e", "b0und.ary_1+2'", "XyZ"):
        for content_type in (f"multipart/form-data; boundary={boundary}", f'multipart/form-data; boundary="{boundary}"'):
            confusion.rec.seen.clear()
            got = await post(confusion, multipart(boundary, ('form-data; name="a"', b"1")), content_type)
            assert got[0] == 200 and len(confusion.rec.seen) == 1, (content_type, got)


async def test_multipart_part_name_in_single_quotes(confusion: Confusion) -> None:
    """PHP's Content-Disposition parser accepts 'single-quoted' parameter values."""
    failures = []
    for disposition in ("form-data; name='_method'", "form-data; name = '_METHOD'", "form-data; name='%5Fmethod'"):
        confusion.rec.seen.clear()
        got = await post(confusion, multipart(BOUNDARY, (disposition, b"DELETE")), f"multipart/form-data; boundary={BOUNDARY}")
        if got != (400, "request") or confusion.rec.seen:
            failures.append((disposition, got))
    assert failures == []
    confusion.rec.seen.clear()
    got = await post(confusion, multipart(BOUNDARY, ("form-data; name='a'", b"1")), f"multipart/form-data; boundary={BOUNDARY}")
    assert got[0] == 200 and len(confusion.rec.seen) == 1


# Windows "best fit" (WorstFit) and confusable mappings read these as '/', '\' or '.'
SEPARATOR_LOOKALIKES = [
    "%E2%88%95",  # U+2215 division slash
    "%E2%81%84",  # U+2044 fraction slash
    "%E2%A7%B8",  # U+29F8 big solidus
    "%E2%88%96",  # U+2216 set minus
    "%E2%A7%B5",  # U+29F5 reverse solidus operator
    "%E2%A7%B9",  # U+29F9 big reverse solidus
    "%C2%A5",  # U+00A5 yen sign: '\' in code page 932
    "%E2%82%A9",  # U+20A9 won sign: '\' in code page 949
    "%E3%80%82",  # U+3002 ideographic full stop (IDNA reads it as '.')
]


async def test_separator_lookalikes_are_refused(confusion: Confusion) -> None:
    failures = []
    for enc in SEPARATOR_LOOKALIKES:
        for target in (
            f"{APIS}/x{enc}..{enc}internal",
            f"/files/a{enc}..{enc}secret",
            f"/files/vault{enc}x",
            f"{APIS}/a{enc}b",
        ):
            confusion.rec.seen.clear()
            got = await refused_at(confusion, request(target, confusion.host, confusion.reader))
            if got != (400, "path") or confusion.rec.seen:
                failures.append((target, got))
    assert failures == []


async def test_no_fall_through_by_accents_or_suffix(confusion: Confusion) -> None:
    """An accent-insensitive reading (best-fit code pages, `ā` -> `a`; accent-insensitive
    collations) or Spring's suffix pattern match (`/internal.json` runs the `/internal`
    handler) turns a parameter value into the protected sibling literal."""
    failures = []
    for segment in (
        "intern%C3%A5l",  # å
        "intern%C4%81l",  # ā
        "%C3%AFnternal",  # ï
        "internal.json",
        "internal.x.y",
        "INTERNAL.json",
        "intern%C3%A1l.json",
    ):
        confusion.rec.seen.clear()
        got = await refused_at(confusion, request(f"{APIS}/{segment}", confusion.host, confusion.reader))
        if got != (400, "path") or confusion.rec.seen:
            failures.append((segment, got))
    for target in (
        "/files/secret.txt",
        "/files/SECRET.txt",
        "/files/s%C3%A9cret",
        "/files/secret.txt/",
        "/files/S%C3%89CRET/",
        "/ci/apis/internal.json",
        "/ci/apis/%C3%8Dnternal",
    ):
        confusion.rec.seen.clear()
        got = await refused_at(confusion, request(target, confusion.host, confusion.reader))
        if got != (400, "path") or confusion.rec.seen:
            failures.append((target, got))
    assert failures == []
    # other values with dots or accents still reach the parameter route
    for segment in ("internals.json", "v1.2", "caf%C3%A9", "intern%C3%A5", ".well-known"):
        confusion.rec.seen.clear()
        status, _, _ = await raw(confusion.port, request(f"{APIS}/{segment}", confusion.host, confusion.reader))
        assert status == 200 and len(confusion.rec.seen) == 1, segment


async def test_form_or_json_body_in_another_charset_is_refused(confusion: Confusion) -> None:
    """body-parser decodes a JSON body in any `utf-*` charset (UTF-7 spells `_` as `+AF8-`,
    UTF-16 puts a NUL beside every ASCII byte), so the bytes scanned are not the keys read."""
    failures = []
    cases = [
        (b'{"+AF8-method": "DELETE"}', "application/json; charset=utf-7"),
        ('{"_method": "DELETE"}'.encode("utf-16-le"), "application/json; charset=utf-16le"),
        ('{"_method": "DELETE"}'.encode("utf-16"), "application/json; charset=UTF-16"),
        ('{"_method": "DELETE"}'.encode("utf-16-be"), "application/json"),
        ('{"_method": "DELETE"}'.encode("utf-32"), "application/json"),
        ("_method=DELETE".encode("utf-16-le"), "application/x-www-form-urlencoded; charset=utf-16le"),
        (b"+AF8-method=DELETE", "application/x-www-form-urlencoded; charset=utf-7"),
        (b'{"a": 1}', 'application/json; charset="utf-7"'),
    ]
    for body, content_type in cases:
        confusion.rec.seen.clear()
        got = await post(confusion, body, content_type)
        if got != (400, "request") or confusion.rec.seen:
            failures.append((body[:20], content_type, got))
    assert failures == []
    for body, content_type in (
        (b'{"a": "\\u0000"}', "application/json; charset=utf-8"),
        (b"a=1", "application/x-www-form-urlencoded; charset=ISO-8859-1"),
        (b"a=%00", "application/x-www-form-urlencoded; charset=us-ascii"),
    ):
        confusion.rec.seen.clear()
        got = await post(confusion, body, content_type)
        assert got[0] == 200 and len(confusion.rec.seen) == 1, (body, content_type, got)


async def test_iis_percent_u_escapes_in_a_form_body(confusion: Confusion) -> None:
    """ASP.NET decodes `%uXXXX` in form fields, and MVC reads an `X-HTTP-Method-Override`
    form field; the query string already refuses `%u` (not a valid escape)."""
    names = [
        b"%u0058-HTTP-Method-Override",
        b"X-HTTP-%u004D%u0065%u0074%u0068%u006F%u0064-Override",
        b"%u005Fmethod",
        b"_%u006dethod",
        b"+" * 1100 + b"_%u006d%u0065%u0074%u0068%u006f%u0064",
    ]
    failures = []
    for name in names:
        body = b"a=1&" + name + b"=DELETE"
        for chunked in (False, True):
            confusion.rec.seen.clear()
            extra = ["Content-Type: application/x-www-form-urlencoded"]
            if not chunked:
                data = request(f"{APIS}/x", confusion.host, confusion.reader, *extra, method="POST", body=body)
            else:  # split inside every escape: 5-byte chunks
                head = request(f"{APIS}/x", confusion.host, confusion.reader, *extra, "Transfer-Encoding: chunked", method="POST")
                data = head + b"".join(b"%x\r\n%b\r\n" % (len(body[i : i + 5]), body[i : i + 5]) for i in range(0, len(body), 5))
                data += b"0\r\n\r\n"
            got = await refused_at(confusion, data)
            if got != (400, "request") or confusion.rec.seen:
                failures.append((name[-40:], chunked, got))
    assert failures == []
    confusion.rec.seen.clear()
    got = await refused_at(confusion, request(f"{APIS}/x?%u005Fmethod=DELETE", confusion.host, confusion.reader))
    assert got == (400, "path") and not confusion.rec.seen


async def test_combining_marks_do_not_hide_dots(confusion: Confusion) -> None:
    """A server that drops combining marks (best-fit conversions, accent-stripping) reads
    `.` + U+0307 + `.` as a dot segment and `internal.` + U+0301 as a trailing dot."""
    failures = []
    for segment in (".%CC%87.", "%CC%87..", ".%CC%81", "internal.%CC%81", "x%20%CC%81", "%CC%81%20x"):
        for target in (f"{APIS}/x/{segment}/internal", f"/files/{segment}"):
            confusion.rec.seen.clear()
            got = await refused_at(confusion, request(target, confusion.host, confusion.reader))
            if got != (400, "path") or confusion.rec.seen:
                failures.append((target, got))
    assert failures == []
    confusion.rec.seen.clear()
    status, _, _ = await raw(confusion.port, request("/files/caf%C3%A9/cafe%CC%81.txt", confusion.host, confusion.reader))
    assert status == 200 and len(confusion.rec.seen) == 1
