"""JSON whose numbers keep the value they were sent with: what was signed is what is kept.

Python's json module reads every number with a fraction or an exponent as a float, and a float
cannot hold 1250.00's scale, 12345678901234567.89, 1e-400 or 1e400: the stored payload would
differ from the signed one. Here such numbers are read as Decimal (exact, scale kept) and written
back with the digits they came with, so PostgreSQL's jsonb (arbitrary-precision numeric) stores
the value the sender signed. Integers are Python ints already: exact at any size.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .errors import EnvelopeError

# PostgreSQL's numeric holds 131072 digits before the point and 16383 after: beyond them the
# sender hears so, rather than the database failing on insert.
MAX_EXPONENT = 131071
MAX_SCALE = 16383
NUMBER_OUT_OF_RANGE = "payload number out of range: PostgreSQL's numeric holds 1e-16383 to 1e131071"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_number(text: str) -> Decimal:
    return Decimal(text)


def _exact_integer(text: str) -> int | Decimal:
    return int(text) if len(text) <= _INT_DIGITS else Decimal(text)


# Python converts at most sys.get_int_max_str_digits() digits (4300) to an int. A longer integer
# is still a JSON number (the Edge Function stores it), so such a body is read again with longer
# integers kept as Decimal; the usual body pays nothing for it.
_INT_DIGITS = 4000


# Made once: json.loads with hooks builds a decoder per call, which cost a router 2 µs of its
# 4 µs per claimed event's payload.
_DECODER = json.JSONDecoder(parse_float=_exact_number, parse_constant=_reject_constant)
_LONG_INTEGER_DECODER = json.JSONDecoder(
    parse_float=_exact_number, parse_int=_exact_integer, parse_constant=_reject_constant
)


def loads(text: str) -> Any:
    """Parse JSON text; numbers with a fraction or exponent, and integers of more than 4000
    digits, become Decimal (NaN and Infinity are refused with ValueError, as JSON does)."""
    if text.startswith("\ufeff"):  # what json.loads says, which the decoder alone does not
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
    return _LONG_INTEGER_DECODER.decode(text)


# A string, or an unterminated one up to the end: a backslash escapes any byte that follows it.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_OPENERS = frozenset(b"[{")
_ALL_BUT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def nests_deeper_than(text: bytes, limit: int) -> bool:
    """True when the arrays and objects of JSON ``text`` nest more than ``limit`` deep (strings
    skipped), found without parsing it: Python's parser gives up near 1,000 levels, V8's does
    not, so both receivers refuse a body by this one count before they parse it."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", text).translate(None, _ALL_BUT_BRACKETS):
        depth = depth + 1 if byte in _OPENERS else depth - 1
        if depth > limit:
            return True
    return False


def check_numbers(value: Any) -> None:
    """Raise EnvelopeError when a number in ``value`` is beyond what PostgreSQL can store."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        scale = max(0, -exponent) if isinstance(exponent, int) else 0
        if scale > MAX_SCALE or (value and value.adjusted() > MAX_EXPONENT):
            raise EnvelopeError(NUMBER_OUT_OF_RANGE, field="payload")
    elif isinstance(value, dict):
        for item in value.values():
            check_numbers(item)
    elif isinstance(value, list):
        for item in value:
            check_numbers(item)


# A token of this process's own: no text sent to the bus can know it.
_TOKEN = secrets.token_hex(6)
_MARKED_NUMBER = re.compile(rf'"\\u0000{_TOKEN}:([-+.0-9Ee]+)"')


def _marker(default: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    def mark(item: Any) -> Any:
        if isinstance(item, Decimal):
            return f"\x00{_TOKEN}:{item}"
        if default is not None:
            return default(item)
        raise TypeError(f"{type(item).__name__} is not JSON serialisable")

    return mark


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_marker(None))


def dumps(value: Any, *, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """JSON text of ``value`` (compact unless ``indent``); each Decimal written with the digits
    it was read with. ``default`` converts other values json cannot write, as json's does.

    Decimals pass through json's encoder as marked strings (a NUL, this process's token, the
    digits) and the marks are then replaced by the bare digits. Payload strings never hold a NUL
    (storability.is_storable refuses them), and only number characters are ever unquoted.
    """
    if indent is None and default is None:
        text = _COMPACT.encode(value)
    else:
        encoder = json.JSONEncoder(indent=indent, ensure_ascii=False, default=_marker(default))
        text = encoder.encode(value)
    if "\\u0000" not in text:
        return text
    return _MARKED_NUMBER.sub(r"\1", text)
