"""The few Go ``strconv`` behaviours that Consul's filter language exposes.

Values in a filter expression are kept as raw text and converted according to the type of the
field they are compared with, using Go's parsing rules (``ParseBool``, ``ParseInt`` with base
0, ``ParseUint``, ``ParseFloat``); string literals are unquoted with Go's rules; error texts
quote values the way Go's ``%q`` does. Each function here reimplements the documented
behaviour; errors are ``ValueError`` whose message is Go's error text.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "go_quote",
    "parse_bool",
    "parse_float",
    "parse_int",
    "parse_uint",
    "unquote",
]

_NAMED_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """``strconv.Quote``: a double-quoted, single-line, escaped rendering of ``text``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    out = ['"']
    for ch in text:
        named = _NAMED_ESCAPES.get(ch)
        if named is not None:
            out.append(named)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _syntax(func: str, text: str) -> ValueError:
    return ValueError(f"strconv.{func}: parsing {go_quote(text)}: invalid syntax")


def _range(func: str, text: str) -> ValueError:
    return ValueError(f"strconv.{func}: parsing {go_quote(text)}: value out of range")


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(text: str) -> bool:
    """``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


# Go integer literal syntax accepted by ParseInt/ParseUint with base 0: an optional base prefix
# (0x, 0o, 0b, or a bare leading 0 for octal) and underscores only between digits, where the
# prefix counts as a digit.
_INT_BODY = re.compile(
    r"0[xX](?:_?[0-9a-fA-F])+"
    r"|0[oO](?:_?[0-7])+"
    r"|0[bB](?:_?[01])+"
    r"|0(?:_?[0-7])*"
    r"|[1-9](?:_?[0-9])*",
    re.ASCII,
)
_BASES = {"x": 16, "X": 16, "o": 8, "O": 8, "b": 2, "B": 2}


def _int_magnitude(body: str) -> int | None:
    """The value of an unsigned Go integer literal, or None when it is not one."""
    if _INT_BODY.fullmatch(body) is None:
        return None
    digits = body.replace("_", "")
    if len(digits) > 1 and digits[0] == "0":
        base = _BASES.get(digits[1])
        if base is not None:
            digits = digits[2:]
        else:
            base = 8
            digits = digits[1:]
    else:
        base = 10
    # Past 70 digits of any base the value cannot fit in 64 bits; callers report a range error
    # (and int() refuses very long decimal strings anyway).
    if len(digits) > 70:
        return 1 << 70
    return int(digits, base)


def parse_int(text: str) -> int:
    """``strconv.ParseInt(text, 0, 64)``."""
    body = text
    negative = False
    if body[:1] in ("+", "-"):
        negative = body[0] == "-"
        body = body[1:]
    magnitude = _int_magnitude(body)
    if magnitude is None:
        raise _syntax("ParseInt", text)
    value = -magnitude if negative else magnitude
    if not -(1 << 63) <= value < (1 << 63):
        raise _range("ParseInt", text)
    return value


def parse_uint(text: str) -> int:
    """``strconv.ParseUint(text, 0, 64)`` (no sign allowed)."""
    magnitude = _int_magnitude(text)
    if magnitude is None:
        raise _syntax("ParseUint", text)
    if magnitude >= (1 << 64):
        raise _range("ParseUint", text)
    return magnitude


_FLOAT_DEC = re.compile(
    r"[+-]?(?:(?:[0-9](?:_?[0-9])*)?\.?[0-9](?:_?[0-9])*|[0-9](?:_?[0-9])*\.)"
    r"(?:[eE][+-]?[0-9](?:_?[0-9])*)?",
    re.ASCII,
)
_FLOAT_HEX = re.compile(
    r"[+-]?0[xX](?:_?[0-9a-fA-F])*\.?(?:_?[0-9a-fA-F])*[pP][+-]?[0-9](?:_?[0-9])*", re.ASCII
)
_FLOAT_SPECIAL = re.compile(r"[+-]?(?:inf|infinity)|nan", re.ASCII | re.IGNORECASE)


def parse_float(text: str) -> float:
    """``strconv.ParseFloat(text, 64)``."""
    if _FLOAT_SPECIAL.fullmatch(text):
        return float(text)
    try:
        if _FLOAT_DEC.fullmatch(text):
            value = float(text.replace("_", ""))
        elif _FLOAT_HEX.fullmatch(text) and any(c in "0123456789abcdefABCDEF" for c in text[2:]):
            value = float.fromhex(text.replace("_", ""))
        else:
            raise _syntax("ParseFloat", text)
    except OverflowError:
        raise _range("ParseFloat", text) from None
    if math.isinf(value):
        raise _range("ParseFloat", text)
    return value


_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}
_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")


def unquote(literal: str) -> str:
    """``strconv.Unquote`` for a double-quoted or backquoted literal (quotes included).

    Raises ``ValueError("invalid syntax")`` like Go's ``strconv.ErrSyntax``.
    """
    if len(literal) < 2 or literal[0] != literal[-1] or literal[0] not in '"`':
        raise ValueError("invalid syntax")
    body = literal[1:-1]
    if literal[0] == "`":
        if "`" in body:
            raise ValueError("invalid syntax")
        # Go drops carriage returns from raw strings.
        return body.replace("\r", "")
    if "\n" in body:
        raise ValueError("invalid syntax")
    if "\\" not in body:
        if '"' in body:
            raise ValueError("invalid syntax")
        return body
    # \x and octal escapes denote bytes, which may combine into UTF-8 sequences: build bytes.
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == '"':
            raise ValueError("invalid syntax")
        if ch != "\\":
            out += ch.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("invalid syntax")
        esc = body[i + 1]
        i += 2
        simple = _SIMPLE_ESCAPES.get(esc)
        if simple is not None:
            out += simple.encode()
        elif esc == "x":
            digits = body[i : i + 2]
            if len(digits) != 2 or not _HEX.issuperset(digits):
                raise ValueError("invalid syntax")
            out.append(int(digits, 16))
            i += 2
        elif esc in ("u", "U"):
            width = 4 if esc == "u" else 8
            digits = body[i : i + width]
            if len(digits) != width or not _HEX.issuperset(digits):
                raise ValueError("invalid syntax")
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError("invalid syntax")
            out += chr(code).encode()
            i += width
        elif esc in _OCT:
            digits = body[i - 1 : i + 2]
            if len(digits) != 3 or not _OCT.issuperset(digits):
                raise ValueError("invalid syntax")
            code = int(digits, 8)
            if code > 0xFF:
                raise ValueError("invalid syntax")
            out.append(code)
            i += 2
        else:
            raise ValueError("invalid syntax")
    return out.decode("utf-8", "replace")
