"""Field schemas: which selectors a filter may use on an object type, and their types.

Consul validates a filter against the Go type of the objects it filters (go-bexpr derives
"field configurations" from the struct by reflection). Here an endpoint describes the JSON
shape of its objects instead::

    CATALOG_SERVICE = struct({
        "Node": "string",
        "NodeMeta": "map",                     # map of string to string
        "ServicePort": "int",
        "ServiceTags": "list",                 # list of strings
        "ServiceEnableTagOverride": "bool",
        "ServiceWeights": {"Passing": "int", "Warning": "int"},   # nested struct
        "ServiceTaggedAddresses": map_of({"Address": "string", "Port": "int"}),
    })

A spec value is a kind name (``string``, ``bool``, ``int``, ``uint``, ``float``, ``list`` =
list of strings, ``map`` = map of string to string), a nested mapping (a struct), or a
``FieldType`` built with ``list_of``/``map_of``/``struct``.

What each field type allows (the rules go-bexpr applies to Go types):

=====================  =====================================================================
string                 ``==`` ``!=`` ``in``/``contains`` (substring) ``matches``
bool, int, uint, float ``==`` ``!=`` -- the value is parsed as that type (Go's strconv rules)
list of scalars        ``in``/``contains`` (element equality) ``is empty``
list of structs/maps   ``is empty``; selectors continue into the elements and match when any
                       element matches
map                    ``in``/``contains`` (key present) ``is empty``; any key can follow as
                       a selector part (``Meta.env``, ``Meta["a key"]``)
struct                 nothing itself; its fields can follow as selector parts
=====================  =====================================================================

Every operator has its negated form alongside (``not in``, ``is not empty``...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from server.filter import strconv
from server.filter.ast import Match, Op
from server.filter.strconv import go_quote

__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "STRING",
    "UINT",
    "FieldSpec",
    "FieldType",
    "Kind",
    "SpecValue",
    "as_struct",
    "check_match",
    "list_of",
    "map_of",
    "struct",
]

Kind = Literal["string", "bool", "int", "uint", "float", "list", "map", "struct"]

_SCALARS = frozenset({"string", "bool", "int", "uint", "float"})


@dataclass(frozen=True, slots=True, eq=True)
class FieldType:
    """The type of one field: a scalar kind, a list or map of ``elem``, or a struct."""

    kind: Kind
    elem: FieldType | None = None
    fields: Mapping[str, FieldType] | None = None

    @property
    def is_scalar(self) -> bool:
        return self.kind in _SCALARS


SpecValue: TypeAlias = "FieldType | str | Mapping[str, SpecValue]"
FieldSpec: TypeAlias = Mapping[str, SpecValue]

STRING = FieldType("string")
BOOL = FieldType("bool")
INT = FieldType("int")
UINT = FieldType("uint")
FLOAT = FieldType("float")

_NAMED: dict[str, FieldType] = {
    "string": STRING,
    "bool": BOOL,
    "int": INT,
    "uint": UINT,
    "float": FLOAT,
    "list": FieldType("list", elem=STRING),
    "map": FieldType("map", elem=STRING),
}


def _field_type(value: SpecValue) -> FieldType:
    if isinstance(value, FieldType):
        return value
    if isinstance(value, str):
        named = _NAMED.get(value)
        if named is None:
            raise ValueError(f"unknown field kind {value!r} (expected one of {sorted(_NAMED)})")
        return named
    if isinstance(value, Mapping):
        return struct(value)
    raise TypeError(f"field spec values are kind names, mappings or FieldType, not {value!r}")


def list_of(elem: SpecValue) -> FieldType:
    """A list whose elements have type ``elem``."""
    return FieldType("list", elem=_field_type(elem))


def map_of(elem: SpecValue) -> FieldType:
    """A map from string keys to values of type ``elem``."""
    return FieldType("map", elem=_field_type(elem))


def struct(spec: FieldSpec) -> FieldType:
    """A struct (JSON object with known keys) with the given fields."""
    fields: dict[str, FieldType] = {}
    for name, value in spec.items():
        if not isinstance(name, str):
            raise TypeError(f"field names must be strings, not {name!r}")
        fields[name] = _field_type(value)
    return FieldType("struct", fields=fields)


def as_struct(spec: FieldSpec | FieldType) -> FieldType:
    """Normalise a top-level spec (a mapping, or a struct FieldType)."""
    if isinstance(spec, FieldType):
        if spec.kind != "struct":
            raise ValueError("a top-level field spec must be a struct")
        return spec
    return struct(spec)


# --- validation --------------------------------------------------------------------------

_STRING_OPS = frozenset({Op.EQUAL, Op.NOT_EQUAL, Op.IN, Op.NOT_IN, Op.MATCHES, Op.NOT_MATCHES})
_SCALAR_OPS = frozenset({Op.EQUAL, Op.NOT_EQUAL})
_CONTAINER_OPS = frozenset({Op.IN, Op.NOT_IN, Op.IS_EMPTY, Op.IS_NOT_EMPTY})
_EMPTY_OPS = frozenset({Op.IS_EMPTY, Op.IS_NOT_EMPTY})
_NO_OPS: frozenset[Op] = frozenset()

_COERCE: dict[str, Callable[[str], object]] = {
    "string": str,
    "bool": strconv.parse_bool,
    "int": strconv.parse_int,
    "uint": strconv.parse_uint,
    "float": strconv.parse_float,
}


def _allowed_ops(ftype: FieldType) -> frozenset[Op]:
    if ftype.kind == "string":
        return _STRING_OPS
    if ftype.is_scalar:
        return _SCALAR_OPS
    if ftype.kind == "map":
        return _CONTAINER_OPS
    if ftype.kind == "list":
        assert ftype.elem is not None
        return _CONTAINER_OPS if ftype.elem.is_scalar else _EMPTY_OPS
    return _NO_OPS


def _value_kind(ftype: FieldType) -> str | None:
    """The scalar kind a match value is parsed as for this field, if any."""
    if ftype.is_scalar:
        return ftype.kind
    if ftype.kind == "map":
        return "string"  # in/contains test for a key
    if ftype.kind == "list" and ftype.elem is not None and ftype.elem.is_scalar:
        return ftype.elem.kind
    return None


def _children(ftype: FieldType) -> tuple[Mapping[str, FieldType] | None, FieldType | None]:
    """Named sub-fields and the any-key sub-field a selector may continue into."""
    if ftype.kind == "struct":
        return ftype.fields, None
    if ftype.kind == "map":
        return None, ftype.elem
    if ftype.kind == "list" and ftype.elem is not None and not ftype.elem.is_scalar:
        # Selectors pass through lists into their elements (any element may match).
        return _children(ftype.elem)
    return None, None


def _selector_text(parts: tuple[str, ...]) -> str:
    return go_quote(".".join(parts))


def check_match(match: Match, root: FieldType) -> str | None:
    """Validate one match expression against a struct type; return an error text or None."""
    named, anykey = _children(root)
    ftype = root
    for idx, part in enumerate(match.selector):
        child = named.get(part) if named is not None else None
        if child is None:
            child = anykey
        if child is None:
            return f"Selector {_selector_text(match.selector[: idx + 1])} is not valid"
        ftype = child
        named, anykey = _children(ftype)
    if match.op not in _allowed_ops(ftype):
        return (
            f"Invalid match operator {go_quote(match.op.value)} "
            f"for selector {_selector_text(match.selector)}"
        )
    if match.value is not None:
        kind = _value_kind(ftype)
        if kind is not None:
            try:
                _COERCE[kind](match.value)
            except ValueError as exc:
                return (
                    f"Failed to coerce value {go_quote(match.value)} "
                    f"for selector {_selector_text(match.selector)}: {exc}"
                )
    return None
