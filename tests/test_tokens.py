"""Pure unit tests for tokenward.gateway.tokens: token format, checksum, parsing and argon2id hashing."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers.gateway import last_char_changed
from tokenward.gateway.tokens import (
    BASE62,
    BODY_LEN,
    CHECKSUM_LEN,
    KEY_ID_LEN,
    KEY_ID_RE,
    SECRET_LEN,
    ParsedToken,
    SecretHasher,
    TokenFormatError,
    checksum,
    fingerprint,
    generate,
    parse,
    valid_prefix,
)

TOKEN_RE = re.compile(r"^tw_sat_[0-9A-Za-z]{50}$")
DEFAULT = frozenset({"tw_sat"})

key_ids = st.text(alphabet=BASE62, min_size=KEY_ID_LEN, max_size=KEY_ID_LEN)
secrets_ = st.text(alphabet=BASE62, min_size=SECRET_LEN, max_size=SECRET_LEN)


def _oracle_checksum(head: str) -> str:
    """Independent implementation of the spec: 6 base62 digits of CRC32(head), big-endian."""
    number = zlib.crc32(head.encode("ascii"))
    out = ""
    for _ in range(6):
        number, rem = divmod(number, 62)
        out = BASE62[rem] + out
    assert number == 0
    return out


def build(prefix: str, key_id: str, secret: str) -> str:
    head = f"{prefix}_{key_id}{secret}"
    return head + _oracle_checksum(head)


# --------------------------------------------------------------------------- constants / format


def test_constants_match_design() -> None:
    assert len(BASE62) == 62 and len(set(BASE62)) == 62
    assert set(BASE62) == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    assert (KEY_ID_LEN, SECRET_LEN, CHECKSUM_LEN, BODY_LEN) == (12, 32, 6, 50)
    # 62**6 > 2**32: the checksum encoding is injective
    assert 62**CHECKSUM_LEN > 2**32


def test_generate_shape_and_round_trip() -> None:
    seen = set()
    for _ in range(50):
        token, parts = generate("tw_sat")
        assert TOKEN_RE.match(token), token
        assert len(token) == len("tw_sat_") + 50
        assert parts.prefix == "tw_sat"
        assert len(parts.key_id) == KEY_ID_LEN and len(parts.secret) == SECRET_LEN
        assert token == f"tw_sat_{parts.key_id}{parts.secret}{token[-CHECKSUM_LEN:]}"
        assert parse(token, DEFAULT) == parts
        assert token[-CHECKSUM_LEN:] == _oracle_checksum(token[:-CHECKSUM_LEN])
        seen.add(token)
    assert len(seen) == 50  # random


@pytest.mark.parametrize("prefix", ["tw_sat", "tw_test", "a", "acme_prod_v2"])
def test_generate_other_prefixes(prefix: str) -> None:
    token, parts = generate(prefix)
    assert re.fullmatch(rf"{re.escape(prefix)}_[0-9A-Za-z]{{50}}", token)
    assert parse(token, frozenset({prefix})) == parts
    assert parts.display_prefix == f"{prefix}_{parts.key_id}"
    assert token.startswith(parts.display_prefix)


def test_display_prefix() -> None:
    parts = ParsedToken("tw_sat", "AbCdEfGh1234", "s" * 32)
    assert parts.display_prefix == "tw_sat_AbCdEfGh1234"


def test_checksum_known_value() -> None:
    head = "tw_sat_" + "0" * 12 + "0" * 32
    assert checksum(head) == _oracle_checksum(head)
    assert len(checksum("")) == CHECKSUM_LEN
    assert checksum("") == "000000"  # crc32(b"") == 0


@settings(max_examples=200)
@given(key_ids, secrets_)
def test_parse_round_trip(key_id: str, secret: str) -> None:
    token = build("tw_sat", key_id, secret)
    assert TOKEN_RE.match(token)
    parsed = parse(token, DEFAULT)
    assert parsed == ParsedToken("tw_sat", key_id, secret)
    assert parsed.display_prefix == f"tw_sat_{key_id}"
    assert checksum(token[:-CHECKSUM_LEN]) == token[-CHECKSUM_LEN:]


# --------------------------------------------------------------------------- typo detection


@settings(max_examples=200)
@given(key_ids, secrets_, st.data())
def test_any_single_char_change_in_body_is_refused(key_id: str, secret: str, data: st.DataObject) -> None:
    token = build("tw_sat", key_id, secret)
    start = len(token) - BODY_LEN
    index = data.draw(st.integers(start, len(token) - 1), label="index")
    replacement = data.draw(st.sampled_from([c for c in BASE62 if c != token[index]]), label="char")
    mutated = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(TokenFormatError, match="checksum does not match"):
        parse(mutated, DEFAULT)


def test_every_position_and_char_of_one_token_is_checked() -> None:
    """Exhaustive for one generated token: 50 positions x 61 replacements."""
    token, _ = generate("tw_sat")
    start = len(token) - BODY_LEN
    for index in range(start, len(token)):
        for replacement in BASE62:
            if replacement == token[index]:
                continue
            mutated = token[:index] + replacement + token[index + 1 :]
            with pytest.raises(TokenFormatError):
                parse(mutated, DEFAULT)


@settings(max_examples=200)
@given(key_ids, secrets_, st.data())
def test_adjacent_transposition_in_key_or_secret_is_refused(
    key_id: str, secret: str, data: st.DataObject
) -> None:
    token = build("tw_sat", key_id, secret)
    start = len(token) - BODY_LEN
    end = len(token) - CHECKSUM_LEN  # swap entirely within key id + secret
    i = data.draw(st.integers(start, end - 2), label="i")
    if token[i] == token[i + 1]:
        return
    swapped = token[:i] + token[i + 1] + token[i] + token[i + 2 :]
    with pytest.raises(TokenFormatError):
        parse(swapped, DEFAULT)


@settings(max_examples=100)
@given(key_ids, secrets_, st.data())
def test_non_base62_char_in_body_is_malformed(key_id: str, secret: str, data: st.DataObject) -> None:
    token = build("tw_sat", key_id, secret)
    start = len(token) - BODY_LEN
    index = data.draw(st.integers(start, len(token) - 1), label="index")
    bad = data.draw(st.sampled_from(list("_-+/=.~ \n\x00é")), label="bad")
    mutated = token[:index] + bad + token[index + 1 :]
    with pytest.raises(TokenFormatError, match="malformed"):
        parse(mutated, DEFAULT)


# --------------------------------------------------------------------------- prefixes


def test_unknown_prefix_refused() -> None:
    token, _ = generate("tw_test")
    with pytest.raises(TokenFormatError, match="prefix is not accepted"):
        parse(token, DEFAULT)
    with pytest.raises(TokenFormatError):
        parse(token, frozenset())


@pytest.mark.parametrize(
    "other",
    ["tw", "tw_sa", "tw_satx", "xtw_sat", "TW_SAT", "tw-sat"],
)
def test_similar_prefixes_are_not_the_same(other: str) -> None:
    head = f"{other}_{'A' * 12}{'b' * 32}"
    token = head + _oracle_checksum(head)
    with pytest.raises(TokenFormatError):
        parse(token, DEFAULT)


def test_legacy_prefixes_accepted_when_listed() -> None:
    legacy, legacy_parts = generate("tw_old")
    current, current_parts = generate("tw_sat")
    accepted = frozenset({"tw_sat", "tw_old"})
    assert parse(legacy, accepted) == legacy_parts
    assert parse(current, accepted) == current_parts
    assert parse(legacy, accepted).prefix == "tw_old"
    with pytest.raises(TokenFormatError, match="prefix is not accepted"):
        parse(legacy, DEFAULT)


def test_prefix_is_covered_by_checksum() -> None:
    """Re-labelling a valid body with another accepted prefix fails the checksum."""
    token, _ = generate("tw_old")
    relabelled = "tw_new" + token[len("tw_old") :]
    with pytest.raises(TokenFormatError, match="checksum"):
        parse(relabelled, frozenset({"tw_old", "tw_new"}))


@pytest.mark.parametrize(
    ("prefix", "valid"),
    [
        ("tw_sat", True),
        ("tw_test", True),
        ("a", True),
        ("tw", True),
        ("acme_prod_v2", True),
        ("a1_2b", True),
        ("", False),
        ("Tw_sat", False),
        ("tw-sat", False),
        ("tw__sat", False),
        ("_tw", False),
        ("tw_", False),
        ("1tw", False),
        ("tw sat", False),
        pytest.param("tw_sat\n", False, id="trailing-newline"),
    ],
)
def test_valid_prefix(prefix: str, valid: bool) -> None:
    assert valid_prefix(prefix) is valid


@pytest.mark.parametrize(
    ("key_id", "valid"),
    [
        ("AbCdEfGh1234", True),
        ("000000000000", True),
        ("AbCdEfGh123", False),
        ("AbCdEfGh12345", False),
        ("AbCdEfGh123_", False),
        pytest.param("AbCdEfGh1234\n", False, id="trailing-newline"),
    ],
)
def test_key_id_re(key_id: str, valid: bool) -> None:
    assert bool(KEY_ID_RE.match(key_id)) is valid


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("tw_sat_", id="prefix-only"),
        pytest.param("tw_sat", id="bare-prefix"),
        pytest.param("Bearer tw_sat_x", id="bearer"),
        pytest.param("_" + "A" * 50, id="empty-prefix"),
        pytest.param("tw_sat_" + "A" * 49, id="short-body"),
        pytest.param("tw_sat_" + "A" * 51, id="long-body"),
        pytest.param("tw_sat" + "A" * 51, id="no-separator"),
        pytest.param("x" * 10_000, id="huge"),
        pytest.param("a" * 64 + "_" + "A" * 50, id="prefix-too-long"),
        pytest.param("tw_sat_" + "A" * 44 + "é" * 6, id="non-ascii-checksum"),
    ],
)
def test_garbage_refused(token: str) -> None:
    with pytest.raises(TokenFormatError):
        parse(token, DEFAULT)


def test_truncated_or_extended_generated_token_refused() -> None:
    token, _ = generate("tw_sat")
    for bad in (token[:-1], token[1:], token + "A", "A" + token, token + "\n", " " + token, token + " "):
        with pytest.raises(TokenFormatError):
            parse(bad, DEFAULT)


def _only_format_errors(token: str, accepted: frozenset[str]) -> None:
    try:
        parsed = parse(token, accepted)
    except TokenFormatError:
        return
    # if it is accepted at all, it must be a well-formed token
    assert parsed.prefix in accepted
    assert token == f"{parsed.prefix}_{parsed.key_id}{parsed.secret}{checksum(token[:-CHECKSUM_LEN])}"


@settings(max_examples=200)
@given(st.text())
@example("tw_sat_" + "\udcff" * 50)
@example("tw_sat_" + "\x00" * 50)
def test_arbitrary_text_only_raises_format_error(token: str) -> None:
    _only_format_errors(token, DEFAULT)


@settings(max_examples=200)
@given(st.text(min_size=0, max_size=70))
def test_prefixed_text_only_raises_format_error(rest: str) -> None:
    _only_format_errors("tw_sat_" + rest, DEFAULT)


@settings(max_examples=200)
@given(st.text(alphabet=BASE62 + "_", min_size=40, max_size=70))
def test_base62ish_text_only_raises_format_error(token: str) -> None:
    _only_format_errors(token, frozenset({"tw_sat", "a", "tw"}))


@settings(max_examples=100)
@given(st.text(alphabet=BASE62, min_size=BODY_LEN, max_size=BODY_LEN))
def test_random_body_with_right_length_is_refused_by_checksum(body: str) -> None:
    token = "tw_sat_" + body
    if checksum(token[:-CHECKSUM_LEN]) == token[-CHECKSUM_LEN:]:
        return  # 1 in 2**32
    with pytest.raises(TokenFormatError, match="checksum"):
        parse(token, DEFAULT)


# --------------------------------------------------------------------------- secrecy


@settings(max_examples=200)
@given(key_ids, secrets_)
def test_repr_never_contains_secret(key_id: str, secret: str) -> None:
    parsed = parse(build("tw_sat", key_id, secret), DEFAULT)
    for text in (repr(parsed), str(parsed), f"{parsed}", f"{parsed!r}", repr([parsed]), repr({"t": parsed})):
        assert secret not in text
        assert "<hidden>" in text
        assert key_id in text


def test_repr_of_generated_token() -> None:
    token, parts = generate("tw_sat")
    assert parts.secret not in repr(parts)
    assert token not in repr(parts)


def test_fingerprint() -> None:
    token, _ = generate("tw_sat")
    fp = fingerprint(token)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert fp == fingerprint(token)
    assert fp != fingerprint(last_char_changed(token))
    assert token not in fp
    # never raises on garbage (lone surrogates from a badly decoded header)
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint("tw_sat_\udcff"))


# --------------------------------------------------------------------------- hashing


@pytest.fixture(scope="module")
def hasher() -> Iterator[SecretHasher]:
    yield SecretHasher(time_cost=1, memory_cost=1024, parallelism=1)


def test_hash_and_verify(hasher: SecretHasher) -> None:
    _, parts = generate("tw_sat")
    stored = hasher.hash_sync(parts.secret)
    assert stored.startswith("$argon2id$")
    assert parts.secret not in stored
    assert hasher.verify_sync(stored, parts.secret) is True
    assert hasher.verify_sync(stored, last_char_changed(parts.secret)) is False
    assert hasher.verify_sync(stored, "") is False
    assert hasher.verify_sync(None, parts.secret) is False


def test_hash_is_salted(hasher: SecretHasher) -> None:
    a = hasher.hash_sync("x" * 32)
    b = hasher.hash_sync("x" * 32)
    assert a != b
    assert hasher.verify_sync(a, "x" * 32) and hasher.verify_sync(b, "x" * 32)


@pytest.mark.parametrize(
    "stored", ["", "not-a-hash", "$argon2id$v=19$garbage", "$2b$12$abcdefghijklmnopqrstuv"]
)
def test_verify_garbage_hash_is_false(hasher: SecretHasher, stored: str) -> None:
    assert hasher.verify_sync(stored, "s" * 32) is False


@settings(max_examples=25, deadline=None)
@given(secrets_, secrets_)
def test_hash_verify_property(hasher: SecretHasher, secret: str, other: str) -> None:
    stored = hasher.hash_sync(secret)
    assert secret not in stored
    assert hasher.verify_sync(stored, secret) is True
    assert hasher.verify_sync(stored, other) is (other == secret)
    assert hasher.verify_sync(None, secret) is False


async def test_async_hash_and_verify(hasher: SecretHasher) -> None:
    stored = await hasher.hash("q" * 32)
    assert "q" * 32 not in stored
    assert await hasher.verify(stored, "q" * 32) is True
    assert await hasher.verify(stored, "r" * 32) is False
    assert await hasher.verify(None, "q" * 32) is False
