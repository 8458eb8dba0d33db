"""ResponseHeaders.block: the upstream's header lines as the client gets them, with the
Connection-named ones dropped however they are spelled, and its memos bounded."""

from __future__ import annotations

from tokenward.gateway.headers import ResponseHeaders


def lines(block: bytes) -> list[bytes]:
    return block.split(b"\r\n")[:-1]


def test_connection_named_headers_are_dropped_in_any_spelling() -> None:
    rules = ResponseHeaders(max_size=8)
    raw = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"x_secret", b"1"),
        (b"X-Other", b"2"),
        (b"Connection", b" x.private ,,"),
        (b"X-Private", b"3"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Date", b"Sat, 28 Nov 2026 22:00:00 GMT"),
        (b"Content-Length", b"2"),
        (b"X-Request-Id", b"theirs"),
    ]
    for _ in range(2):  # the second time from the memos
        block, date, typed = rules.block(raw, "ours")
        assert lines(block) == [
            b"Content-Type: text/plain",
            b"X-Other: 2",
            b"Date: Sat, 28 Nov 2026 22:00:00 GMT",
            b"X-Request-Id: ours",
        ]
        assert date and typed


def test_keep_alive_alone_names_nothing_and_the_memos_stay_bounded() -> None:
    rules = ResponseHeaders(max_size=4)
    assert rules.named(b"keep-alive") == frozenset() and rules.named(b"Close") == {"close"}
    for n in range(50):
        block, _, _ = rules.block([(b"Connection", b"X-%d" % n), (b"X-%d" % n, b"v"), (b"X-Kept", b"k")], "r")
        assert lines(block) == [b"X-Kept: k", b"X-Request-Id: r"]
    long = b"X-A, " * 40 + b"X-Gone"
    block, _, _ = rules.block([(b"Connection", long), (b"X-Gone", b"1")], "r")
    assert lines(block) == [b"X-Request-Id: r"]
    assert max(len(rules._memo), len(rules._named), len(rules._norms)) <= 4
