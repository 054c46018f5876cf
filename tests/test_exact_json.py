"""core.exact_json: numbers keep their digits through a read and a write; nothing else changes."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipai_bus_lib.core import exact_json
from ipai_bus_lib.core.errors import EnvelopeError

finite_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None)
json_scalars = st.none() | st.booleans() | st.integers() | st.text() | finite_decimals
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(finite_decimals)
def test_a_number_keeps_its_digits_and_exponent_through_dumps_and_loads(number):
    again = exact_json.loads(exact_json.dumps({"n": number}))["n"]
    expected = number.as_tuple()
    if isinstance(again, int):  # an integral Decimal written without exponent reads back as int
        assert Decimal(again) == number and expected.exponent == 0
    else:
        assert again.as_tuple() == expected


@given(json_values)
def test_dumps_writes_what_json_reads_back_equal(value):
    assert exact_json.loads(exact_json.dumps(value)) == value
    assert json.loads(exact_json.dumps(value), parse_float=Decimal) == value


@given(st.text())
def test_a_string_that_looks_like_a_mark_stays_a_string(text):
    forged = "\x00" + "0" * 12 + ":1" + text
    assert exact_json.loads(exact_json.dumps({"s": forged, "n": Decimal("1.50")})) == {
        "s": forged,
        "n": Decimal("1.50"),
    }


def test_the_texts_a_float_would_change_are_written_as_sent():
    sent = '{"a":1250.00,"b":12345678901234567891,"c":1E-400,"d":12345678901234567.89,"e":-0.0}'
    assert exact_json.dumps(exact_json.loads(sent)) == sent


@pytest.mark.parametrize("text", ["1e131072", "1e-16384", "0.5e-16383", "0e-20000"])
def test_numbers_postgresql_cannot_hold_are_refused(text):
    with pytest.raises(EnvelopeError, match="payload number out of range"):
        exact_json.check_numbers({"n": [exact_json.loads(text)]})


@pytest.mark.parametrize("text", ["1e131071", "1e-16383", "0e999999", "123.456"])
def test_numbers_postgresql_holds_pass(text):
    exact_json.check_numbers({"n": exact_json.loads(text)})


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"n": NaN}'])
def test_json_constants_that_are_not_json_are_refused(text):
    with pytest.raises(ValueError):
        exact_json.loads(text)


def test_an_integer_longer_than_python_converts_is_kept_exactly():
    """Python refuses to convert more than 4300 digits to an int; the number is still JSON."""
    sent = '{"n":' + "7" * 5000 + ',"small":42}'
    read = exact_json.loads(sent)
    assert read["small"] == 42 and isinstance(read["small"], int)
    assert exact_json.dumps(read) == sent


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_TRICKY_TEXT = st.text(alphabet='[]{}"\\\\ax\u00e9\n', max_size=8)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY_TEXT, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES, limit=st.integers(0, 12), indent=st.sampled_from([None, 1]))
def test_the_depth_count_before_parsing_is_the_depth_of_the_value(value, limit, indent):
    """Brackets inside strings (escaped quotes and backslashes too) are not nesting."""
    text = json.dumps(value, indent=indent, ensure_ascii=indent is None).encode()
    assert exact_json.nests_deeper_than(text, limit) == (_depth(value) > limit)


def test_a_byte_order_mark_is_refused_saying_so():
    """As json.loads says it: the decoder, made once, would only say 'Expecting value'."""
    with pytest.raises(ValueError, match="BOM"):
        exact_json.loads('\ufeff{"amount": 1}')
