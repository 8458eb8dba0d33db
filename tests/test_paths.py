"""Pure unit tests for tokenward.gateway.paths: one canonical path per request, ambiguity refused."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenward.gateway.paths import PathError, Target, canonical_path, parse_target

# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        pytest.param("/", "/", "", id="root"),
        pytest.param("/a", "/a", "", id="simple"),
        pytest.param("/a/b/c", "/a/b/c", "", id="nested"),
        pytest.param("/a/", "/a/", "", id="trailing-slash-kept"),
        pytest.param("/a/b/", "/a/b/", "", id="trailing-slash-nested"),
        pytest.param("/a/%7Efoo", "/a/~foo", "", id="decode-tilde"),
        pytest.param("/a/%7efoo", "/a/~foo", "", id="decode-tilde-lower"),
        pytest.param("/a/%41", "/a/A", "", id="decode-alpha"),
        pytest.param("/a/%61%62%63", "/a/abc", "", id="decode-several"),
        pytest.param("/a/%30", "/a/0", "", id="decode-digit"),
        pytest.param("/a/%2D%5F", "/a/-_", "", id="decode-dash-underscore"),
        pytest.param("/a/%2eb", "/a/.b", "", id="decode-dot-not-segment"),
        pytest.param("/a/.b", "/a/.b", "", id="dotfile"),
        pytest.param("/a/%2a", "/a/%2A", "", id="reserved-kept-upper"),
        pytest.param("/a/%2A", "/a/%2A", "", id="reserved-kept"),
        pytest.param("/a/%25", "/a/%25", "", id="percent-escape-kept"),
        pytest.param("/a/%3f", "/a/%3F", "", id="encoded-question-kept"),
        pytest.param("/a/%23", "/a/%23", "", id="encoded-hash-kept"),
        pytest.param("/a/%c3%a9", "/a/%C3%A9", "", id="utf8-escape-upper"),
        pytest.param("/a/b:c@d", "/a/b:c@d", "", id="colon-at"),
        pytest.param("/a/!$&'()*+,=", "/a/!$&'()*+,=", "", id="sub-delims-but-semicolon"),
        pytest.param("/a/b%20c", "/a/b%20c", "", id="inner-space-escape-kept"),
        pytest.param("/a/x%25", "/a/x%25", "", id="percent-not-before-hex"),
        pytest.param("/a/%25zz", "/a/%25zz", "", id="percent-then-non-hex"),
        pytest.param("/a/~-._", "/a/~-._", "", id="unreserved"),
        pytest.param("/a/b?x=1", "/a/b", "x=1", id="query"),
        pytest.param("/a/b?", "/a/b", "", id="empty-query"),
        pytest.param("/a/b?x=1&y=%2f", "/a/b", "x=1&y=%2f", id="query-raw-not-canonicalised"),
        pytest.param("/a/b?x=/a/../b", "/a/b", "x=/a/../b", id="query-may-hold-slashes-dots"),
        pytest.param("/a/b?x?y", "/a/b", "x?y", id="query-with-question"),
        pytest.param("/?x", "/", "x", id="root-query"),
        pytest.param("/a/%7E?x=%7E", "/a/~", "x=%7E", id="path-decoded-query-raw"),
    ],
)
def test_accepted(raw: str, path: str, query: str) -> None:
    target = parse_target(raw)
    assert target == Target(path, query)
    assert canonical_path(raw.partition("?")[0]) == path
    # fixed point
    assert canonical_path(path) == path
    assert parse_target(path) == Target(path, "")


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("/a/../b", "dot segment", id="dotdot"),
        pytest.param("/a/./b", "dot segment", id="dot"),
        pytest.param("/a/..", "dot segment", id="trailing-dotdot"),
        pytest.param("/a/.", "dot segment", id="trailing-dot"),
        pytest.param("/..", "dot segment", id="root-dotdot"),
        pytest.param("/.", "dot segment", id="root-dot"),
        pytest.param("/a/%2e%2e/b", "dot segment", id="encoded-dotdot"),
        pytest.param("/a/%2E%2E/b", "dot segment", id="encoded-dotdot-upper"),
        pytest.param("/a/%2E/b", "dot segment", id="encoded-dot-upper"),
        pytest.param("/a/%2e", "dot segment", id="encoded-dot-last"),
        pytest.param("/a/.%2e/b", "dot segment", id="half-encoded-dotdot"),
        pytest.param("/a/%2e./b", "dot segment", id="half-encoded-dotdot-2"),
        pytest.param("/a/%2fb", "encoded '/'", id="encoded-slash"),
        pytest.param("/a/%2F", "encoded '/'", id="encoded-slash-upper"),
        pytest.param("/a/%5c", "encoded '/' or '\\'", id="encoded-backslash"),
        pytest.param("/a/%5C", "encoded '/' or '\\'", id="encoded-backslash-upper"),
        pytest.param("/a\\b", "backslash", id="backslash"),
        pytest.param("\\a", "start with '/'", id="leading-backslash"),
        pytest.param("/a/%00", "control", id="encoded-nul"),
        pytest.param("/a/%0a", "control", id="encoded-newline"),
        pytest.param("/a/%0D", "control", id="encoded-cr"),
        pytest.param("/a/%1f", "control", id="encoded-unit-sep"),
        pytest.param("/a/%7f", "control", id="encoded-del"),
        pytest.param("/a/\x00", "control", id="nul"),
        pytest.param("/a/b\n", "control", id="newline"),
        pytest.param("/a/\t", "control", id="tab"),
        pytest.param("/a/\x7f", "control", id="del"),
        pytest.param("/a/%zz", "invalid percent-encoding", id="bad-hex"),
        pytest.param("/a/%4", "invalid percent-encoding", id="short-escape"),
        pytest.param("/a/%", "invalid percent-encoding", id="lone-percent"),
        pytest.param("/a/%%41", "invalid percent-encoding", id="double-percent"),
        pytest.param("/a/%g0", "invalid percent-encoding", id="bad-hex-first"),
        pytest.param("/a/%\u0660\u0660", "invalid percent-encoding", id="non-ascii-digits"),
        pytest.param("/a//b", "empty path segment", id="double-slash"),
        pytest.param("//a", "empty path segment", id="leading-double-slash"),
        pytest.param("/a//", "empty path segment", id="trailing-double-slash"),
        pytest.param("//", "empty path segment", id="only-double-slash"),
        pytest.param("/a#frag", "fragment", id="fragment"),
        pytest.param("/a?x#frag", "fragment", id="fragment-after-query"),
        pytest.param("#", "fragment", id="only-fragment"),
        pytest.param("a/b", "start with '/'", id="relative"),
        pytest.param("", "start with '/'", id="empty"),
        pytest.param("?x=1", "start with '/'", id="query-only"),
        pytest.param("*", "start with '/'", id="asterisk-form"),
        pytest.param("http://h/a", "start with '/'", id="absolute-form"),
        pytest.param("/a/b c", "not allowed", id="space"),
        pytest.param('/a/"', "not allowed", id="quote"),
        pytest.param("/a/<b>", "not allowed", id="angle"),
        pytest.param("/a/[b]", "not allowed", id="brackets"),
        pytest.param("/a/{b}", "not allowed", id="braces"),
        pytest.param("/a/b|c", "not allowed", id="pipe"),
        pytest.param("/a/`b", "not allowed", id="backtick"),
        pytest.param("/a/^b", "not allowed", id="caret"),
        pytest.param("/é", "non-ASCII", id="non-ascii"),
        pytest.param("/a/\u2215", "non-ASCII", id="division-slash"),
        pytest.param("/a/\uff0e\uff0e", "non-ASCII", id="fullwidth-dots"),
        pytest.param("/a/%2e%2e?x", "dot segment", id="encoded-dotdot-with-query"),
        pytest.param("/a/b%2E", "trailing dot", id="encoded-trailing-dot"),
        pytest.param("/a/%2e%2e%2e", "trailing dot", id="three-encoded-dots"),
        pytest.param("/a/...", "trailing dot", id="three-dots"),
        pytest.param("/a/%20", "space", id="space-only-segment"),
        pytest.param("/a/%25%32%66", "double percent-encoding", id="double-encoded-slash"),
        pytest.param("/a/%80%FF", "not valid UTF-8", id="high-bytes-not-utf8"),
        pytest.param("/a/b;c", "path parameter", id="semicolon"),
        pytest.param("/a?x=%zz", "invalid percent-encoding in query", id="query-bad-escape"),
        pytest.param("/a?x=%", "invalid percent-encoding in query", id="query-lone-percent"),
        pytest.param("/a?x=%4", "invalid percent-encoding in query", id="query-short-escape"),
        pytest.param("/a?x y", "invalid character in query", id="query-space"),
        pytest.param("/a?x=\x00", "invalid character in query", id="query-nul"),
        pytest.param("/a?x=\\", "invalid character in query", id="query-backslash"),
        pytest.param("/a?x=é", "invalid character in query", id="query-non-ascii"),
    ],
)
def test_refused(raw: str, message: str) -> None:
    with pytest.raises(PathError) as info:
        parse_target(raw)
    assert message in str(info.value)
    if "#" not in raw and "?" not in raw:
        with pytest.raises(PathError):
            canonical_path(raw)


def test_path_error_is_value_error() -> None:
    assert issubclass(PathError, ValueError)


# --------------------------------------------------------------------------- properties

# characters that matter for path ambiguity, so that hypothesis hits the interesting cases
_TRICKY = "/.%2eEfF5cC0aAb7~?#\\ \x00\n:@+é"
targets = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=_TRICKY, max_size=20).map(lambda t: "/" + t),
    st.lists(
        st.sampled_from(
            ["a", "b", ".", "..", "%2e", "%2E", "%2f", "%5C", "%41", "%7e", "%25", "%2a", "", "~", ";", "%3b"]
        ),
        max_size=6,
    ).map(lambda segs: "/" + "/".join(segs)),
)

_DOT = re.compile(r"(^|/)\.{1,2}(/|$)")


@settings(max_examples=300)
@given(targets)
@example("/a/%2e%2e/b")
@example("/a/%25%32%66")
@example("/a/%2e")
@example("/")
def test_parse_target_is_canonical_or_refused(raw: str) -> None:
    try:
        target = parse_target(raw)
    except PathError:
        return
    path = target.path
    assert path.startswith("/")
    assert canonical_path(path) == path  # fixed point
    assert parse_target(path).path == path
    assert "//" not in path
    assert "/./" not in path
    assert "/../" not in path
    assert not _DOT.search(path), path
    assert "\\" not in path
    assert "%2F" not in path and "%2f" not in path
    assert "%5C" not in path and "%5c" not in path
    assert "#" not in path and "?" not in path
    assert all(0x20 < ord(ch) < 0x7F for ch in path), path
    # every escape left is valid, upper-case, and not an unreserved character
    for escape in re.findall(r"%(..)", path):
        assert re.fullmatch(r"[0-9A-F]{2}", escape), escape
        assert not re.fullmatch(r"[A-Za-z0-9\-._~]", chr(int(escape, 16)))
    assert target.query == raw.partition("?")[2]


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_canonical_path_total(raw: str) -> None:
    """canonical_path raises nothing but PathError, and its result is a fixed point."""
    try:
        path = canonical_path(raw)
    except PathError:
        return
    assert canonical_path(path) == path


@settings(max_examples=100)
@given(
    st.lists(
        st.text(alphabet="abcXYZ019-._~!$&'()*+,=:@", min_size=1, max_size=5).filter(
            lambda s: not s.endswith(".")
        ),
        min_size=1,
        max_size=5,
    ),
    st.booleans(),
)
def test_plain_paths_unchanged(segments: list[str], trailing: bool) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing else "")
    assert parse_target(raw) == Target(raw, "")


@settings(max_examples=200)
@given(st.text(alphabet="abcXYZ019-._~", min_size=1, max_size=8).filter(lambda s: not s.endswith(".")))
def test_encoding_unreserved_is_equivalent(segment: str) -> None:
    """Percent-encoding unreserved characters (any case) canonicalises to the plain form."""
    upper = "".join(f"%{ord(c):02X}" for c in segment)
    lower = upper.lower()
    assert canonical_path(f"/x/{upper}") == f"/x/{segment}"
    assert canonical_path(f"/x/{lower}") == f"/x/{segment}"
