"""Unit tests of wsd.server.json_limits: nesting depth and 64-bit integers, checked without a second
parse, cross-checked against the standard library's parser walking the same documents."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.server import json_limits
from wsd.server.json_limits import MAX_DEPTH, JsonLimitError


def nested(depth: int, leaf: str = "1") -> bytes:
    """`depth` levels of alternating arrays and objects around `leaf`."""
    text = leaf
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text.encode()


def reference_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((reference_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(item) for item in value.values()), default=0)
    return 0


def reference_out_of_range(text: bytes) -> str | None:
    found: list[str] = []

    def parse_int(literal: str) -> int:
        value = int(literal)
        if not -(2**63) <= value <= 2**64 - 1 and not found:
            found.append(literal)
        return value

    json.loads(text, parse_int=parse_int)
    return found[0] if found else None


# --- Depth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 50, MAX_DEPTH])
def test_data_nested_up_to_the_limit_passes_unchanged(depth: int) -> None:
    text = nested(depth)
    assert json_limits.encode(orjson.loads(text)) == text


@pytest.mark.parametrize(("depth", "shown"), [(65, "65"), (128, "128"), (200, "more than 128"), (300, "more than 254")])
def test_data_nested_deeper_than_the_limit_is_refused_with_its_depth(depth: int, shown: str) -> None:
    with pytest.raises(JsonLimitError) as refused:
        json_limits.encode(orjson.loads(nested(depth)))
    assert f"{shown} levels deep" in str(refused.value)
    assert f"limit of {MAX_DEPTH}" in str(refused.value)


def test_nesting_past_orjsons_own_parse_limit_is_a_limit_error_not_a_syntax_error() -> None:
    with pytest.raises(JsonLimitError, match="more than 1024 levels"):
        json_limits.loads(nested(2000))
    with pytest.raises(orjson.JSONDecodeError):
        json_limits.loads(b"{not json")


def test_wide_data_with_many_brackets_is_not_deep() -> None:
    wide = orjson.dumps([{"a": [1, {"b": []}]} for _ in range(1000)])
    assert json_limits.encode(orjson.loads(wide)) == wide


def test_brackets_inside_strings_do_not_count() -> None:
    tricky = {"s": "]]]]" * 100 + "[[[[" * 100, "t": 'x\\"[[[', "deep": orjson.loads(nested(MAX_DEPTH - 1))}
    assert json_limits.nesting_depth(orjson.dumps(tricky)) == MAX_DEPTH
    json_limits.encode(tricky)
    too_deep = {"s": "]]]]" * 100, "deep": orjson.loads(nested(MAX_DEPTH))}
    with pytest.raises(JsonLimitError):
        json_limits.encode(too_deep)


# Strings full of brackets, quotes and backslashes: what a lexical depth count must not be fooled by.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet='[]{}"\\ab,:', max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), children, max_size=4),
    max_leaves=60,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_nesting_depth_agrees_with_walking_the_parsed_value(value: object) -> None:
    assert json_limits.nesting_depth(orjson.dumps(value)) == reference_depth(value)


# --- Integers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal", ["18446744073709551615", "-9223372036854775808", "9223372036854775807", "0", "-1", "1e30", "1.5e+300"]
)
def test_numbers_orjson_keeps_exactly_pass(literal: str) -> None:
    text = f'{{"n": [{literal}]}}'.encode()
    json_limits.check_integers(text, json_limits.encode(orjson.loads(text)))


@pytest.mark.parametrize(
    "literal", ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890", "-" + "9" * 300]
)
def test_integers_outside_64_bits_are_refused_not_turned_into_floats(literal: str) -> None:
    text = f'{{"n": [1, {literal}]}}'.encode()
    encoded = json_limits.encode(orjson.loads(text))
    with pytest.raises(JsonLimitError, match="does not fit in 64 bits") as refused:
        json_limits.check_integers(text, encoded)
    assert literal[:20] in str(refused.value)
    assert len(str(refused.value)) < 300


def test_long_digit_runs_in_strings_fractions_and_exponents_are_not_integers() -> None:
    text = (
        b'{"id": "123456789012345678901234567890", "f": 0.123456789012345678901234567890,'
        b' "e": 1e-0000000000000000000001, "g": 2E+0000000000000000000002, "q": "\\"99999999999999999999"}'
    )
    assert json_limits.out_of_range_integer(text) is None
    json_limits.check_integers(text, json_limits.encode(orjson.loads(text)))


def test_the_text_is_only_scanned_when_the_output_has_a_large_float() -> None:
    # Without "e+" in what orjson wrote, no integer was lost: the text is not even looked at.
    json_limits.check_integers(b"not json at all 123456789012345678901234567890", b'{"n":1}')


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(alphabet="0123456789e+-.\"\\", max_size=30),
        ),
        max_size=8,
    )
)
def test_out_of_range_integer_agrees_with_the_standard_library(items: list) -> None:
    text = json.dumps(items).encode()
    assert json_limits.out_of_range_integer(text) == reference_out_of_range(text)
