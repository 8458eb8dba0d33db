"""Outside review of the request path (issue 10 items 7-9 re-run with other variants).

Raw bytes over a socket through the real gateway (real store) to an upstream that records
what reached it: every refused request must leave the recorder empty.
"""

from __future__ import annotations

from tests.test_hardening import raw, recorder, request  # noqa: F401 (recorder: fixture)
from tests.test_path_confusion import APIS, Env, env, multipart, refused_at  # noqa: F401 (env: fixture)

BOUNDARY = "----tw7MA4YWxkTrZu0gW"
OVERRIDE_PART = ('form-data; name="_method"', b"DELETE")


async def post(env: Env, body: bytes, content_type: str) -> tuple[int, str]:  # noqa: F811
    data = request(f"{APIS}/x", env.host, env.reader, f"Content-Type: {content_type}", method="POST", body=body)
    return await refused_at(env, data)


async def test_multipart_boundary_another_parser_reads_differently(env: Env) -> None:  # noqa: F811
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
        env.rec.seen.clear()
        body = multipart(read_as, ('form-data; name="a"', b"1"), OVERRIDE_PART)
        got = await post(env, body, content_type)
        if got != (400, "request") or env.rec.seen:
            failures.append((content_type, got))
    assert failures == []
    # ordinary boundaries still pass (browsers, curl, Go, Python)
    for boundary in (BOUNDARY, "------------------------d74496d66958873e", "b0und.ary_1+2'", "XyZ"):
        for content_type in (f"multipart/form-data; boundary={boundary}", f'multipart/form-data; boundary="{boundary}"'):
            env.rec.seen.clear()
            got = await post(env, multipart(boundary, ('form-data; name="a"', b"1")), content_type)
            assert got[0] == 200 and len(env.rec.seen) == 1, (content_type, got)


async def test_multipart_part_name_in_single_quotes(env: Env) -> None:  # noqa: F811
    """PHP's Content-Disposition parser accepts 'single-quoted' parameter values."""
    failures = []
    for disposition in ("form-data; name='_method'", "form-data; name = '_METHOD'", "form-data; name='%5Fmethod'"):
        env.rec.seen.clear()
        got = await post(env, multipart(BOUNDARY, (disposition, b"DELETE")), f"multipart/form-data; boundary={BOUNDARY}")
        if got != (400, "request") or env.rec.seen:
            failures.append((disposition, got))
    assert failures == []
    env.rec.seen.clear()
    got = await post(env, multipart(BOUNDARY, ("form-data; name='a'", b"1")), f"multipart/form-data; boundary={BOUNDARY}")
    assert got[0] == 200 and len(env.rec.seen) == 1
