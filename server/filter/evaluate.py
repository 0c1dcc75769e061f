"""Turning a parsed filter into a fast predicate over JSON-shaped Python objects.

The syntax tree is compiled once into nested closures: each selector becomes a chain of
dictionary lookups, each value is converted up front to every scalar type it may be compared
with, and regular expressions are compiled in advance. Evaluation then does no parsing, no
dispatch on node types, and no allocation beyond the interpreter's own.

Semantics follow go-bexpr as used by Consul:

* A selector that walks into a list continues into every element, and the match holds if it
  holds for any element (``Checks.Status == critical``: some check is critical; likewise
  ``Checks.Status != passing``: some check is not passing). An empty list matches nothing.
* A selector naming a missing key (or crossing a ``null``) makes ``==``, ``in``,
  ``is not empty`` and ``matches`` false, and their negations true.
* ``==``/``!=`` compare a string field with the raw value text, and a bool/int/float field with
  the value parsed by Go's rules (``true``, ``T``, ``1``; ``8080``, ``0x1F90``; ``1.5e3``). A
  value that does not parse as the field's type equals nothing.
* ``in``/``contains`` test a substring of a string, an element of a list (compared as above) or
  a key of a map. ``is empty`` tests a string, list or map for length zero (``null`` is empty).
  ``matches`` searches a string with the regular expression (unanchored, like Go's).
* Operators that make no sense for a value's type (``==`` on a list, ``matches`` on a number...)
  are false and their negations true. With a field spec such filters are rejected up front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from re import Pattern
from typing import Any, Final, TypeVar

from server.filter import strconv
from server.filter.ast import And, Expr, Match, Not, Op, Or
from server.filter.errors import FilterError

__all__ = ["Filter", "Predicate", "build_predicate"]

Predicate = Callable[[Any], bool]
_K = TypeVar("_K")
_V = TypeVar("_V")


class _Missing:
    __slots__ = ()


_MISSING: Final = _Missing()


def _maybe(parse: Callable[[str], _V], raw: str) -> _V | None:
    try:
        return parse(raw)
    except ValueError:
        return None


def _equal_leaf(raw: str) -> Predicate:
    as_bool = _maybe(strconv.parse_bool, raw)
    as_int = _maybe(strconv.parse_int, raw)
    if as_int is None:
        as_int = _maybe(strconv.parse_uint, raw)
    as_float = _maybe(strconv.parse_float, raw)

    def equal(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            text: str = value
            return text == raw
        if kind is int:
            number: int = value
            return number == as_int
        if kind is bool:
            return value is as_bool
        if kind is float:
            real: float = value
            return real == as_float
        if value is None:
            return False
        # Subclasses (str/int enums and the like).
        if isinstance(value, str):
            return str.__eq__(value, raw) is True
        if isinstance(value, bool):
            return bool(value) is as_bool
        if isinstance(value, int):
            return as_int is not None and int(value) == as_int
        if isinstance(value, float):
            return as_float is not None and float(value) == as_float
        return False

    return equal


def _in_leaf(raw: str) -> Predicate:
    element_equal = _equal_leaf(raw)
    # Only when the value also reads as a bool or a number can a non-string element match.
    scalar = (
        _maybe(strconv.parse_bool, raw) is not None
        or _maybe(strconv.parse_int, raw) is not None
        or _maybe(strconv.parse_uint, raw) is not None
        or _maybe(strconv.parse_float, raw) is not None
    )

    def in_sequence(items: list[Any] | tuple[Any, ...]) -> bool:
        if raw in items:
            return True
        if scalar:
            for item in items:
                if type(item) is not str and element_equal(item):
                    return True
        return False

    def contains(value: Any) -> bool:
        kind = type(value)
        if kind is list:
            return in_sequence(value)
        if kind is str:
            return raw in value
        if kind is dict:
            return raw in value
        if value is None:
            return False
        if isinstance(value, str):
            return str.__contains__(value, raw)
        if isinstance(value, (list, tuple)):
            return in_sequence(value)
        if isinstance(value, Mapping):
            return raw in value
        return False

    return contains


def _empty_leaf(value: Any) -> bool:
    if value is None:
        return True
    kind = type(value)
    if kind is list or kind is str or kind is dict or kind is tuple:
        return not value
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value) == 0
    return False


def _matches_leaf(pattern: Pattern[str]) -> Predicate:
    search = pattern.search

    def matches(value: Any) -> bool:
        if type(value) is str or isinstance(value, str):
            return search(value) is not None
        return False

    return matches


def _negate(leaf: Predicate) -> Predicate:
    return lambda value: not leaf(value)


def _step(key: str, nxt: Predicate, missing: bool) -> Predicate:
    """Look ``key`` up in the current object and pass the result on to ``nxt``."""

    def step(obj: Any) -> bool:
        if type(obj) is dict:
            value = obj.get(key, _MISSING)
            if value is _MISSING:
                return missing
            return nxt(value)
        if type(obj) is list or isinstance(obj, (list, tuple)):
            for item in obj:  # noqa: SIM110 -- hot path; a generator costs more
                if step(item):
                    return True
            return False
        if isinstance(obj, Mapping):
            try:
                value = obj[key]
            except KeyError:
                return missing
            return nxt(value)
        return missing  # None, or a scalar that has no fields

    return step


def _match_predicate(match: Match, regexes: Mapping[int, Pattern[str]]) -> Predicate:
    positive = match.op.positive
    leaf: Predicate
    if positive is Op.EQUAL:
        assert match.value is not None
        leaf = _equal_leaf(match.value)
        missing = False
    elif positive is Op.IN:
        assert match.value is not None
        leaf = _in_leaf(match.value)
        missing = False
    elif positive is Op.IS_EMPTY:
        leaf = _empty_leaf
        missing = True
    else:
        leaf = _matches_leaf(regexes[id(match)])
        missing = False
    if match.op.negated:
        leaf = _negate(leaf)
        missing = not missing
    predicate = leaf
    for key in reversed(match.selector):
        predicate = _step(key, predicate, missing)
    return predicate


def _all(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda obj: first(obj) and second(obj)
    if len(predicates) == 3:
        first, second, third = predicates
        return lambda obj: first(obj) and second(obj) and third(obj)
    preds = tuple(predicates)

    def every(obj: Any) -> bool:
        for predicate in preds:  # noqa: SIM110 -- hot path
            if not predicate(obj):
                return False
        return True

    return every


def _any(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda obj: first(obj) or second(obj)
    if len(predicates) == 3:
        first, second, third = predicates
        return lambda obj: first(obj) or second(obj) or third(obj)
    preds = tuple(predicates)

    def some(obj: Any) -> bool:
        for predicate in preds:  # noqa: SIM110 -- hot path
            if predicate(obj):
                return True
        return False

    return some


def build_predicate(expr: Expr, regexes: Mapping[int, Pattern[str]]) -> Predicate:
    """Compile a syntax tree into a predicate. ``regexes`` maps id(Match) to its pattern."""
    if isinstance(expr, Match):
        return _match_predicate(expr, regexes)
    if isinstance(expr, Not):
        inner = build_predicate(expr.operand, regexes)
        return lambda obj: not inner(obj)
    parts = [build_predicate(operand, regexes) for operand in expr.operands]
    if isinstance(expr, And):
        return _all(parts)
    assert isinstance(expr, Or)
    return _any(parts)


def _match_all(obj: Any) -> bool:
    return True


class Filter:
    """A compiled filter expression. Build one with ``compile_filter``."""

    __slots__ = ("_predicate", "ast", "expression")

    def __init__(self, expression: str, ast: Expr | None, predicate: Predicate | None) -> None:
        self.expression = expression
        #: The syntax tree; None for the empty expression, which matches everything.
        self.ast = ast
        self._predicate: Predicate = _match_all if predicate is None else predicate

    def __repr__(self) -> str:
        return f"Filter({self.expression!r})"

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (one API object, as the JSON decodes) satisfies the filter."""
        try:
            return self._predicate(obj)
        except Exception as exc:  # pathological input, e.g. lists nested thousands deep
            raise FilterError(f"Failed to evaluate filter: {type(exc).__name__}") from exc

    def apply(self, items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The items that satisfy the filter, in their original order."""
        predicate = self._predicate
        kept: list[Mapping[str, Any]] = []
        for item in items:
            try:
                keep = predicate(item)
            except Exception as exc:
                raise FilterError(f"Failed to evaluate filter: {type(exc).__name__}") from exc
            if keep:
                kept.append(item)
        return kept

    def apply_values(self, items: Mapping[_K, Mapping[str, Any]]) -> dict[_K, Mapping[str, Any]]:
        """Filter a map of objects (e.g. ``/v1/agent/services``) by value, keeping the keys."""
        predicate = self._predicate
        kept: dict[_K, Mapping[str, Any]] = {}
        for key, value in items.items():
            try:
                keep = predicate(value)
            except Exception as exc:
                raise FilterError(f"Failed to evaluate filter: {type(exc).__name__}") from exc
            if keep:
                kept[key] = value
        return kept
