"""The cache key model: literal round trips, every rejection named, and the parser fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import CacheKey, InvalidKeyError, format_key, parse_key, validate_id
from cache.keys import MAX_ID_LENGTH

ID_ALPHABET = "ABCXYZabcxyz0189._:/@-"
ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=MAX_ID_LENGTH)


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        (
            "tenant-123#app-456#/api/payment#CONFIG#production",
            ("tenant-123", "app-456", "/api/payment", "CONFIG", "production"),
        ),
        ("t#a#p#K#e", ("t", "a", "p", "K", "e")),
        ("t.1#a:2#/v1/x@y#AUTH_TOKEN#eu-west_1", ("t.1", "a:2", "/v1/x@y", "AUTH_TOKEN", "eu-west_1")),
    ],
)
def test_parse_and_format_round_trip(key: str, parts: tuple[str, ...]) -> None:
    # Given a well-formed key, when parsed, then each part is named and formatting gives the key back
    parsed = parse_key(key)
    assert (parsed.tenant, parsed.app, parsed.path, parsed.kind, parsed.env) == parts
    assert parsed.format() == key == str(parsed)
    assert format_key(*parts) == key
    assert CacheKey.parse(key) == parsed


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "cache key must be a string, got NoneType"),
        (42, "cache key must be a string, got int"),
        (b"t#a#p#K#e", "cache key must be a string, got bytes"),
        ("", "has 1 '#'-separated parts; expected 5"),
        ("t#a#p#K", "has 4 '#'-separated parts; expected 5: tenant#app#path#KIND#env"),
        ("t#a#p#K#e#x", "has 6 '#'-separated parts"),
        ("#a#p#K#e", "tenant part of cache key is empty"),
        ("t##p#K#e", "app part of cache key is empty"),
        ("t#a##K#e", "path part of cache key is empty"),
        ("t#a#p##e", "kind part of cache key is empty"),
        ("t#a#p#K#", "env part of cache key is empty"),
        ("t*#a#p#K#e", "tenant part of cache key 't*' has characters outside"),
        ("t#a?#p#K#e", "app part of cache key 'a?' has characters outside"),
        ("t#a#p[1]#K#e", "'[]'"),
        ("t#a#p q#K#e", "path part of cache key 'p q' has characters outside"),
        ("t#a#p#K\x00#e", "kind part of cache key"),
        ("t#a#p#K#é", "env part of cache key 'é'"),
        ("t" * 257 + "#a#p#K#e", "tenant part of cache key is 257 characters long (at most 256)"),
    ],
)
def test_parse_rejects_with_a_message_naming_the_problem(key: object, message: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        parse_key(key)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError see it too


def test_long_values_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidKeyError) as info:
        parse_key("x" * 10_000)
    assert "..." in str(info.value)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "tenant_id must be a string, got NoneType"),
        (7, "tenant_id must be a string, got int"),
        ("", "tenant_id is empty"),
        ("a" * 257, "tenant_id is 257 characters long (at most 256)"),
        ("a" * 10_000, "tenant_id is 10000 characters long"),
        ("a#b", "characters outside [A-Za-z0-9._:/@_-]: '#'"),
        ("a*b?", "'*?'"),
        ("a b", "' '"),
        ("tab\there", "'\\t'"),
        ("nl\n", "'\\n'"),
    ],
)
def test_validate_id_rejections(value: object, message: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_id(value, "tenant_id")
    assert message in str(info.value)


def test_validate_id_accepts_the_charset_and_the_maximum_length() -> None:
    assert validate_id("a" * MAX_ID_LENGTH) == "a" * MAX_ID_LENGTH
    assert validate_id("Az09._:/@-_") == "Az09._:/@-_"


def test_format_key_validates_every_part() -> None:
    with pytest.raises(InvalidKeyError, match="tenant part of cache key 'a#b'"):
        format_key("a#b", "app", "p", "K", "e")
    with pytest.raises(InvalidKeyError, match="env part of cache key is empty"):
        format_key("t", "a", "p", "K", "")


@given(st.tuples(ids, ids, ids, ids, ids))
def test_round_trip_fuzz(parts: tuple[str, str, str, str, str]) -> None:
    key = format_key(*parts)
    assert parse_key(key).format() == key
    k = parse_key(key)
    assert (k.tenant, k.app, k.path, k.kind, k.env) == parts


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=ID_ALPHABET + "#*? \x00é[]", max_size=40),
        st.binary(),
        st.integers(),
        st.none(),
    )
)
def test_parse_key_parses_or_raises_invalid_key_error(key: object) -> None:
    try:
        parsed = parse_key(key)
    except InvalidKeyError as exc:
        assert str(exc)  # always says why
    else:
        assert isinstance(key, str)
        assert parsed.format() == key
        assert not set(key) & set("*?[] \x00")  # nothing that could widen into a Redis glob
