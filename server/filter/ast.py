"""Syntax tree of a filter expression."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from server.filter.strconv import go_quote

__all__ = ["And", "Expr", "Match", "Not", "Op", "Or", "render_selector", "render_value"]


class Op(enum.Enum):
    """Matching operators. The values are go-bexpr's operator names, used in error texts.

    ``contains``/``not contains`` are the same operators as ``in``/``not in`` with the
    operands written the other way round.
    """

    EQUAL = "Equal"
    NOT_EQUAL = "Not Equal"
    IN = "In"
    NOT_IN = "Not In"
    IS_EMPTY = "Is Empty"
    IS_NOT_EMPTY = "Is Not Empty"
    MATCHES = "Matches"
    NOT_MATCHES = "Not Matches"

    @property
    def negated(self) -> bool:
        """Whether this is the negative form of another operator (``!=``, ``not in`` ...)."""
        return self in _NEGATIVE

    @property
    def positive(self) -> Op:
        """The positive form of this operator (itself when it is not negated)."""
        return _POSITIVE_OF.get(self, self)


_POSITIVE_OF = {
    Op.NOT_EQUAL: Op.EQUAL,
    Op.NOT_IN: Op.IN,
    Op.IS_NOT_EMPTY: Op.IS_EMPTY,
    Op.NOT_MATCHES: Op.MATCHES,
}
_NEGATIVE = frozenset(_POSITIVE_OF)


@dataclass(frozen=True, slots=True)
class Match:
    """``selector <op> value`` (or ``value in selector``; ``value`` is None for emptiness).

    ``value`` is the raw text of the value: the unquoted string, the number as written, or a
    bare word (a selector-shaped value is its parts joined with dots).
    """

    selector: tuple[str, ...]
    op: Op
    value: str | None

    def __str__(self) -> str:
        sel = render_selector(self.selector)
        value = "" if self.value is None else render_value(self.value)
        match self.op:
            case Op.EQUAL:
                return f"{sel} == {value}"
            case Op.NOT_EQUAL:
                return f"{sel} != {value}"
            case Op.IN:
                return f"{value} in {sel}"
            case Op.NOT_IN:
                return f"{value} not in {sel}"
            case Op.IS_EMPTY:
                return f"{sel} is empty"
            case Op.IS_NOT_EMPTY:
                return f"{sel} is not empty"
            case Op.MATCHES:
                return f"{sel} matches {value}"
            case Op.NOT_MATCHES:
                return f"{sel} not matches {value}"


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr

    def __str__(self) -> str:
        return f"not ({self.operand})"


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " and ".join(f"({op})" for op in self.operands)


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " or ".join(f"({op})" for op in self.operands)


Expr = Match | Not | And | Or

_IDENT = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")


def render_value(raw: str) -> str:
    """A literal that parses back to ``raw`` (when the grammar can express it at all)."""
    if '"' not in raw:
        return go_quote(raw)
    if "`" not in raw and "\r" not in raw:
        return f"`{raw}`"
    return go_quote(raw)  # not expressible: neither quoting style can hold this text


def render_selector(parts: tuple[str, ...]) -> str:
    """Dotted form of a selector, using ``["key"]`` for parts that are not identifiers."""
    out = [parts[0]]
    for part in parts[1:]:
        if _IDENT.fullmatch(part):
            out.append(f".{part}")
        else:
            out.append(f"[{render_value(part)}]")
    return "".join(out)
