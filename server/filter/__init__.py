"""Consul's ``?filter=`` expression language.

    >>> f = compile_filter('ServiceMeta.env == prod and "primary" in ServiceTags')
    >>> f.matches({"ServiceMeta": {"env": "prod"}, "ServiceTags": ["primary"]})
    True

``compile_filter`` parses an expression once (raising ``FilterError`` with Consul's error text,
ready to be the body of an HTTP 400) and returns a ``Filter`` whose ``matches``/``apply``
evaluate it against JSON-shaped dicts. Given a field spec (see ``server.filter.schema``) it
also rejects selectors the object type does not have, operators the field's type does not
support and values that do not parse as the field's type, as Consul does.

The language (go-bexpr's grammar; full PEG in ``server.filter.parser``)::

    expr     = or
    or       = and { "or" and }
    and      = not { "and" not }
    not      = "not" not | "(" or ")" | match
    match    = selector ( "==" | "!=" ) value
             | selector ( "contains" | "not contains" | "matches" | "not matches" ) value
             | selector ( "is empty" | "is not empty" )
             | value ( "in" | "not in" ) selector
    selector = ident { "." ident | "[" string "]" }
    ident    = letter { letter | digit | "_" }
    value    = selector | number | string        (a selector-shaped value is a bare word)
    number   = [ "-" ] ( "0" | nonzero { digit } ) [ "." digit { digit } ]
    string   = '"' Go-escaped text '"' | "`" raw text "`"

Keywords need whitespace around them (``not(x == y)`` is a syntax error, as in Consul);
``==``/``!=`` do not. There are no ordering comparisons (``<``, ``>``) and no list literals.
"""

from __future__ import annotations

from re import Pattern

from server.filter.ast import And, Expr, Match, Not, Op, Or
from server.filter.errors import EVALUATOR_PREFIX, FilterError
from server.filter.evaluate import Filter, build_predicate
from server.filter.parser import parse
from server.filter.regex import compile_go_regex
from server.filter.schema import (
    BOOL,
    FLOAT,
    INT,
    STRING,
    UINT,
    FieldSpec,
    FieldType,
    as_struct,
    check_match,
    list_of,
    map_of,
    struct,
)
from server.filter.strconv import go_quote

__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "STRING",
    "UINT",
    "FieldSpec",
    "FieldType",
    "Filter",
    "FilterError",
    "compile_filter",
    "list_of",
    "map_of",
    "struct",
]


def _matches_in_order(expr: Expr) -> list[Match]:
    out: list[Match] = []
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Match):
            out.append(node)
        elif isinstance(node, Not):
            stack.append(node.operand)
        else:
            assert isinstance(node, (And, Or))
            stack.extend(reversed(node.operands))
    return out


def _compile(expr: str, root: FieldType | None) -> Filter:
    if expr == "":
        return Filter(expr, None, None)
    try:
        tree = parse(expr)
    except FilterError as exc:
        raise FilterError(EVALUATOR_PREFIX + exc.message, offset=exc.offset) from None
    regexes: dict[int, Pattern[str]] = {}
    for match in _matches_in_order(tree):
        if root is not None:
            problem = check_match(match, root)
            if problem is not None:
                raise FilterError(EVALUATOR_PREFIX + problem)
        if match.op in (Op.MATCHES, Op.NOT_MATCHES):
            assert match.value is not None
            try:
                regexes[id(match)] = compile_go_regex(match.value)
            except ValueError as exc:
                raise FilterError(
                    f"{EVALUATOR_PREFIX}Failed to compile regular expression "
                    f"{go_quote(match.value)}: {exc}"
                ) from None
    return Filter(expr, tree, build_predicate(tree, regexes))


def compile_filter(expr: str, fields: FieldSpec | FieldType | None = None) -> Filter:
    """Compile a filter expression; raise ``FilterError`` (and nothing else) if it is invalid.

    ``fields`` describes the objects the filter will see (a mapping of field name to type, see
    ``server.filter.schema``). Without it any selector is accepted and one that names a missing
    field simply does not match. The empty expression matches everything, as in Consul.
    """
    if not isinstance(expr, str):
        raise TypeError(f"filter expression must be str, not {type(expr).__name__}")
    # A malformed spec is the caller's bug: its ValueError/TypeError is not caught here.
    root = None if fields is None else as_struct(fields)
    try:
        return _compile(expr, root)
    except FilterError:
        raise
    except Exception as exc:  # defensive: the contract is FilterError for any input string
        detail = " ".join(str(exc).split())
        raise FilterError(f"{EVALUATOR_PREFIX}{type(exc).__name__}: {detail}") from exc
