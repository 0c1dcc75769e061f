"""Consul's filter expression language: parser, validation against field specs, evaluation."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.filter import (
    FieldType,
    Filter,
    FilterError,
    compile_filter,
    list_of,
    map_of,
    struct,
)
from server.filter.ast import And, Expr, Match, Not, Op, Or
from server.filter.parser import MAX_DEPTH, parse
from server.filter.regex import compile_go_regex
from server.filter.strconv import (
    go_quote,
    parse_bool,
    parse_float,
    parse_int,
    parse_uint,
    unquote,
)

PREFIX = "Failed to create boolean expression evaluator: "

CATALOG_SERVICE = struct(
    {
        "ID": "string",
        "Node": "string",
        "Address": "string",
        "Datacenter": "string",
        "TaggedAddresses": "map",
        "NodeMeta": "map",
        "ServiceKind": "string",
        "ServiceID": "string",
        "ServiceName": "string",
        "ServiceTags": "list",
        "ServiceAddress": "string",
        "ServiceWeights": {"Passing": "int", "Warning": "int"},
        "ServiceMeta": "map",
        "ServicePort": "int",
        "ServiceEnableTagOverride": "bool",
        "ServiceTaggedAddresses": map_of({"Address": "string", "Port": "int"}),
        "Checks": list_of({"CheckID": "string", "Status": "string"}),
        "Ports": list_of("int"),
        "CreateIndex": "uint",
        "Score": "float",
    }
)


def service(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ID": "b4f64e8c",
        "Node": "node-1",
        "Address": "198.18.0.1",
        "Datacenter": "dc1",
        "TaggedAddresses": None,
        "NodeMeta": {"os": "linux", "rack": "r1"},
        "ServiceKind": "",
        "ServiceID": "web-1",
        "ServiceName": "web",
        "ServiceTags": ["primary", "v1"],
        "ServiceAddress": "",
        "ServiceWeights": {"Passing": 1, "Warning": 1},
        "ServiceMeta": {"env": "prod", "key with space": "yes"},
        "ServicePort": 8080,
        "ServiceEnableTagOverride": False,
        "ServiceTaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 8080}},
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing"},
            {"CheckID": "svc", "Status": "critical"},
        ],
        "Ports": [80, 443],
        "CreateIndex": 30,
        "Score": 1.5,
    }
    base.update(overrides)
    return base


def evaluate(expr: str, obj: dict[str, Any], fields: FieldType | None = None) -> bool:
    return compile_filter(expr, fields).matches(obj)


def error_of(expr: str, fields: FieldType | None = None) -> str:
    with pytest.raises(FilterError) as info:
        compile_filter(expr, fields)
    return str(info.value)


# --- grammar -------------------------------------------------------------------------------


def m(selector: str, op: Op, value: str | None = None) -> Match:
    return Match(tuple(selector.split(".")), op, value)


def test_precedence_matches_the_documented_example() -> None:
    # "<E1> and not <E2> or <E3>" is "(<E1> and (not <E2>)) or <E3>".
    a, b, c = m("a", Op.EQUAL, "1"), m("b", Op.EQUAL, "2"), m("c", Op.EQUAL, "3")
    expected = Or((And((a, Not(b))), c))
    assert parse("a == 1 and not b == 2 or c == 3") == expected
    assert parse("(a == 1 and (not b == 2)) or c == 3") == expected
    assert parse("a == 1 and (not b == 2 or c == 3)") == And((a, Or((Not(b), c))))


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ('Service.Tags contains "primary"', m("Service.Tags", Op.IN, "primary")),
        ('"primary" in Service.Tags', m("Service.Tags", Op.IN, "primary")),
        ("x not in Tags", m("Tags", Op.NOT_IN, "x")),
        ("Tags not contains x", m("Tags", Op.NOT_IN, "x")),
        ("Tags is empty", m("Tags", Op.IS_EMPTY)),
        ("Tags is not empty", m("Tags", Op.IS_NOT_EMPTY)),
        ("Name matches `^a.*`", m("Name", Op.MATCHES, "^a.*")),
        ('Name not matches "b"', m("Name", Op.NOT_MATCHES, "b")),
        ("Name != web", m("Name", Op.NOT_EQUAL, "web")),
        ("Name==web", m("Name", Op.EQUAL, "web")),
        ("\t Name \r\n==\n web  ", m("Name", Op.EQUAL, "web")),
        ("(Name == web)", m("Name", Op.EQUAL, "web")),
        ("((Name == web))", m("Name", Op.EQUAL, "web")),
        ("not not Name == web", m("Name", Op.EQUAL, "web")),
        ("not (Checks.Status == passing)", Not(m("Checks.Status", Op.EQUAL, "passing"))),
        # Values: bare words (a selector-shaped value is its dotted text), numbers, strings.
        ("a == b.c_1", m("a", Op.EQUAL, "b.c_1")),
        ("a == -1.50", m("a", Op.EQUAL, "-1.50")),
        ("a == 0", m("a", Op.EQUAL, "0")),
        ('a == "tab\\there\\u00e9\\x41\\101"', m("a", Op.EQUAL, "tab\there\u00e9AA")),
        ("a == `raw\\n\r`", m("a", Op.EQUAL, "raw\\n")),
        ('a == ""', m("a", Op.EQUAL, "")),
        # Keywords are not reserved.
        ("not == and", m("not", Op.EQUAL, "and")),
        ("and == or and or == not", And((m("and", Op.EQUAL, "or"), m("or", Op.EQUAL, "not")))),
        ("notx == 1", m("notx", Op.EQUAL, "1")),
        # Index expressions select map keys that are not identifiers.
        ('Meta["key with space"] == x', Match(("Meta", "key with space"), Op.EQUAL, "x")),
        ("Meta[ `a.b` ].c == x", Match(("Meta", "a.b", "c"), Op.EQUAL, "x")),
    ],
)
def test_parses(text: str, tree: Expr) -> None:
    assert parse(text) == tree


def test_long_conjunctions_do_not_recurse() -> None:
    text = " and ".join(f"a{i} == {i}" for i in range(5000))
    tree = parse(text)
    assert isinstance(tree, And)
    assert len(tree.operands) == 5000
    assert compile_filter(text).matches({f"a{i}": i for i in range(5000)})


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    ok = "(" * (MAX_DEPTH - 1) + "a == 1" + ")" * (MAX_DEPTH - 1)
    assert compile_filter(ok).matches({"a": 1})
    for text in ("(" * 5000 + "a == 1" + ")" * 5000, "not " * 5000 + "a == 1", "(" * 5000):
        message = error_of(text)
        assert message.startswith(PREFIX)
        assert "nested too deeply" in message


def test_nested_unclosed_parentheses_are_not_exponential() -> None:
    start = time.perf_counter()
    message = error_of("(" * 60 + "a == 1")
    assert time.perf_counter() - start < 1.0
    assert 'rule "grouping": Unmatched parentheses' in message


# --- syntax errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Verbatim what Consul answers (hashicorp/consul#7338).
        (
            "foo",
            '1:4 (3): no match found, expected: "!=", ".", "==", "[", [ \\t\\r\\n] or [a-zA-Z0-9_]',
        ),
        (
            "foo ",
            '1:5 (4): no match found, expected: "!=", "==", "contains", "in", "is", '
            '"matches", "not" or [ \\t\\r\\n]',
        ),
        (
            "   ",
            '1:4 (3): no match found, expected: "(", "-", "0", "\\"", "`", "not", [ \\t\\r\\n], '
            "[1-9] or [a-zA-Z]",
        ),
        ("(a == b", '1:8 (7): rule "grouping": Unmatched parentheses'),
        ("(a == b) and (c == d", '1:21 (20): rule "grouping": Unmatched parentheses'),
        ('a == "x', '1:8 (7): rule "string": Unterminated string literal'),
        ("a == `x", '1:8 (7): rule "string": Unterminated string literal'),
        ('a == "\\q"', '1:6 (5): rule "string": invalid syntax'),
        ("a == 5x", '1:7 (6): rule "number": Invalid number literal'),
        ("a == 1.", '1:7 (6): rule "number": Invalid number literal'),
        ("a == 08", '1:7 (6): rule "number": Invalid number literal'),
        ("Meta[x] == 1", '1:6 (5): rule "index": Invalid index'),
        ('Meta["x" == 1', '1:10 (9): rule "index": Unclosed index expression'),
        ('"a" in 5', '1:8 (7): rule "match": Invalid selector'),
        ("a == b or", "1:10 (9): no match found, expected: [ \\t\\r\\n]"),
        (
            "\n\nfoo",
            '3:4 (5): no match found, expected: "!=", ".", "==", "[", [ \\t\\r\\n] or [a-zA-Z0-9_]',
        ),
        # Columns count characters, offsets count UTF-8 bytes.
        ('"é" == x', '1:5 (5): no match found, expected: "in", "not" or [ \\t\\r\\n]'),
    ],
)
def test_syntax_error_text(text: str, message: str) -> None:
    assert error_of(text) == PREFIX + message


@pytest.mark.parametrize(
    "text",
    [
        "ServicePort > 8000",  # no ordering comparisons in the language
        "ServicePort >= 8000",
        'Meta.env in ["prod", "stage"]',  # no list literals
        "not(a == b)",  # keywords need whitespace around them
        "a == b and(c == d)",
        "a == b andc == d",
        "a == 'single'",  # only "double" and `backtick` quotes
        "a == 1e5",
        "a == 0x10",
        "a = b",
        "a.== b",
        ".a == b",
        "1a == b",
        "a == b)",
        "()",
        "a is",
        '"x"in a',
        '"a\\"b" == c',  # a double-quoted string cannot contain a double quote
    ],
)
def test_syntax_errors(text: str) -> None:
    message = error_of(text)
    assert message.startswith(PREFIX)
    assert "\n" not in message


def test_empty_expression_matches_everything() -> None:
    f = compile_filter("")
    assert f.ast is None
    assert f.matches({})
    assert f.apply([{"a": 1}, {}]) == [{"a": 1}, {}]


# --- validation against a field spec --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Foo == 1", 'Selector "Foo" is not valid'),
        ("ServiceWeights.Critical == 1", 'Selector "ServiceWeights.Critical" is not valid'),
        ("ServiceMeta.a.b == 1", 'Selector "ServiceMeta.a.b" is not valid'),
        ("ServiceTags.x == 1", 'Selector "ServiceTags.x" is not valid'),
        ("Checks.Nope == 1", 'Selector "Checks.Nope" is not valid'),
        ("x in Foo.Bar", 'Selector "Foo" is not valid'),
        ("ServiceTags == primary", 'Invalid match operator "Equal" for selector "ServiceTags"'),
        ("ServicePort contains 8", 'Invalid match operator "In" for selector "ServicePort"'),
        ("ServiceName is empty", 'Invalid match operator "Is Empty" for selector "ServiceName"'),
        ("ServicePort matches 8", 'Invalid match operator "Matches" for selector "ServicePort"'),
        ("ServiceWeights == 1", 'Invalid match operator "Equal" for selector "ServiceWeights"'),
        ("ServiceMeta == x", 'Invalid match operator "Equal" for selector "ServiceMeta"'),
        ("Checks == x", 'Invalid match operator "Equal" for selector "Checks"'),
        ("x in Checks", 'Invalid match operator "In" for selector "Checks"'),
        (
            "ServicePort == abc",
            'Failed to coerce value "abc" for selector "ServicePort": '
            'strconv.ParseInt: parsing "abc": invalid syntax',
        ),
        (
            "ServicePort == 99999999999999999999",
            'Failed to coerce value "99999999999999999999" for selector "ServicePort": '
            'strconv.ParseInt: parsing "99999999999999999999": value out of range',
        ),
        (
            "ServiceEnableTagOverride != yes",
            'Failed to coerce value "yes" for selector "ServiceEnableTagOverride": '
            'strconv.ParseBool: parsing "yes": invalid syntax',
        ),
        (
            "CreateIndex == -1",
            'Failed to coerce value "-1" for selector "CreateIndex": '
            'strconv.ParseUint: parsing "-1": invalid syntax',
        ),
        (
            "Score == x",
            'Failed to coerce value "x" for selector "Score": '
            'strconv.ParseFloat: parsing "x": invalid syntax',
        ),
        (
            "ServiceTaggedAddresses.lan.Port == 1.5",
            'Failed to coerce value "1.5" for selector "ServiceTaggedAddresses.lan.Port": '
            'strconv.ParseInt: parsing "1.5": invalid syntax',
        ),
        (
            '"eighty" in Ports',
            'Failed to coerce value "eighty" for selector "Ports": '
            'strconv.ParseInt: parsing "eighty": invalid syntax',
        ),
        (
            'ServiceName matches "("',
            'Failed to compile regular expression "(": '
            "error parsing regexp: missing ), unterminated subpattern: `(`",
        ),
        (
            'ServiceName == web and ServiceName == "\\n\\x00" and Nope == 1',
            'Selector "Nope" is not valid',
        ),
    ],
)
def test_validation_errors(text: str, message: str) -> None:
    assert error_of(text, CATALOG_SERVICE) == PREFIX + message


@pytest.mark.parametrize(
    "text",
    [
        "ServiceName == web",
        "ServiceName != 8080",
        'ServiceName contains "we"',
        "ServiceName matches `^w`",
        "ServicePort == 8080",
        'ServicePort == "0x1F90"',
        "ServiceEnableTagOverride == false",
        "ServiceEnableTagOverride == F",
        "ServiceWeights.Passing == 1",
        "ServiceMeta.env == prod",
        'ServiceMeta["key with space"] == yes',
        "env in ServiceMeta",
        "ServiceMeta is not empty",
        "primary in ServiceTags",
        "ServiceTags is not empty",
        "Checks is not empty",
        "Checks.Status == critical",
        'ServiceTaggedAddresses.lan.Address == "10.0.0.1"',
        "ServiceTaggedAddresses.wan.Address != x",
        "ServiceTaggedAddresses.lan.Port == 8080",
        "443 in Ports",
        "CreateIndex == 30",
        "Score == 1.5",
        "TaggedAddresses is empty",
    ],
)
def test_valid_against_spec(text: str) -> None:
    assert compile_filter(text, CATALOG_SERVICE).matches(service())


def test_spec_shorthands() -> None:
    spec = {"Name": "string", "Meta": "map", "Tags": "list", "Weights": {"Passing": "int"}}
    f = compile_filter("Meta.k == v and t in Tags and Weights.Passing == 2", spec)
    assert f.matches({"Meta": {"k": "v"}, "Tags": ["t"], "Weights": {"Passing": 2}})
    with pytest.raises(ValueError):
        compile_filter("a == b", {"a": "strnig"})


# --- evaluation ----------------------------------------------------------------------------


def test_documentation_examples() -> None:
    agent_services = {
        "redis1": {
            "ID": "redis1",
            "Tags": ["primary", "production"],
            "Meta": {"env": "production"},
        },
        "redis2": {
            "ID": "redis2",
            "Tags": ["secondary", "production"],
            "Meta": {"env": "production"},
        },
        "redis3": {"ID": "redis3", "Tags": ["primary", "qa"], "Meta": {"env": "qa"}},
    }
    assert list(compile_filter('Meta.env == "qa"').apply_values(agent_services)) == ["redis3"]
    assert list(compile_filter('"primary" in Tags').apply_values(agent_services)) == [
        "redis1",
        "redis3",
    ]
    nodes = [
        service(Node="node-1", NodeMeta={"os": "darwin"}),
        service(Node="node-2", NodeMeta={"os": "linux"}),
        service(Node="node-4", NodeMeta={"os": "freebsd"}),
    ]
    matched = compile_filter('NodeMeta.os == "linux"', CATALOG_SERVICE).apply(nodes)
    assert [n["Node"] for n in matched] == ["node-2"]
    checks = [{"ServiceName": "", "Status": "critical"}, {"ServiceName": "web"}]
    assert compile_filter('ServiceName != ""').apply(checks) == [{"ServiceName": "web"}]


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("ServiceName == web and ServicePort == 8080", True),
        ("ServiceName == web and ServicePort == 8081", False),
        ("ServiceName == api or ServicePort == 8080", True),
        ("not ServiceName == web", False),
        ('ServiceTags contains "primary"', True),
        ('"v2" in ServiceTags', False),
        ('"v2" not in ServiceTags', True),
        ("ServiceName contains eb", True),  # substring
        ("eb in ServiceName", True),
        ("env in ServiceMeta", True),  # map keys
        ("prod in ServiceMeta", False),
        ("NodeMeta.rack == r1", True),
        ('ServiceMeta["key with space"] == yes', True),
        ("ServiceMeta.missing == x", False),
        ("ServiceMeta.missing != x", True),
        ("x in ServiceMeta.missing", False),
        ("x not in ServiceMeta.missing", True),
        ('ServiceMeta.missing matches "."', False),
        ('ServiceMeta.missing not matches "."', True),
        # Lists of objects: the selector continues into the elements; any element may match.
        ("Checks.Status == critical", True),
        ("Checks.Status == warning", False),
        ("Checks.Status != passing", True),
        ("not (Checks.Status == passing)", False),
        ('Checks.CheckID matches "^serf"', True),
        # Numbers and booleans are compared after parsing the value as the field's type.
        ("ServicePort == 8080", True),
        ('ServicePort == "8080"', True),
        ('ServicePort == "0x1F90"', True),
        ('ServicePort == "0o17620"', True),
        ('ServicePort == "8_080"', True),
        ("ServicePort != 80", True),
        ("ServiceEnableTagOverride == false", True),
        ("ServiceEnableTagOverride == F", True),
        ("ServiceEnableTagOverride == 0", True),
        ("ServiceEnableTagOverride == true", False),
        ("Score == 1.5", True),
        ('Score == "15e-1"', True),
        ("443 in Ports", True),
        ("444 in Ports", False),
        ("ServiceWeights.Passing == 1", True),
        # Strings compare with the value's text as written.
        ("ServiceName == 8080", False),
        ("TaggedAddresses is empty", True),  # null is empty
        ("x in TaggedAddresses", False),
        ("ServiceName matches `^W`", False),
        ("ServiceName matches `(?i)^W`", True),
        ("ServiceName matches e", True),  # unanchored
        ('Address matches "^198\\\\.18\\\\."', True),
    ],
)
def test_evaluation(text: str, result: bool) -> None:
    assert evaluate(text, service()) is result
    assert evaluate(text, service(), CATALOG_SERVICE) is result


@pytest.mark.parametrize(
    ("text", "result"),
    [
        # Without a spec, operators or values that do not fit the value's type are false (and
        # their negations true) instead of errors.
        ("ServiceTags == primary", False),
        ("ServiceTags != primary", True),
        ("ServicePort contains 80", False),
        ("ServicePort is empty", False),
        ("ServicePort matches 80", False),
        ("ServicePort == abc", False),
        ("ServiceWeights == 1", False),
        ("Nope == 1", False),
        ("Nope != 1", True),
        ("ServiceName.x == 1", False),
        ("ServiceName is not empty", True),
        ("ServiceKind is empty", True),
        ("ServiceMeta.missing is empty", True),
        ("ServiceMeta.missing is not empty", False),
        ("ServicePort == 8080.0", False),
        ("ServiceEnableTagOverride == no", False),
    ],
)
def test_lenient_evaluation_without_spec(text: str, result: bool) -> None:
    assert evaluate(text, service()) is result


def test_empty_list_matches_nothing_through_a_selector() -> None:
    obj = service(Checks=[])
    for text in ("Checks.Status == x", "Checks.Status != x", "Checks.Status is empty"):
        assert evaluate(text, obj) is False
    assert evaluate("Checks is empty", obj) is True


def test_mixed_lists_and_non_dict_mappings() -> None:
    from types import MappingProxyType

    obj = MappingProxyType({"L": [1, True, "1", 1.0, None, {"a": 1}], "M": MappingProxyType({})})
    assert compile_filter("1 in L").matches(obj)
    assert compile_filter("true in L").matches(obj)
    assert not compile_filter("2 in L").matches(obj)
    assert compile_filter("L.a == 1").matches(obj)
    assert compile_filter("M is empty").matches(obj)
    assert compile_filter("(true in L) and (L.a == 1)").matches(obj)


def test_filter_api() -> None:
    f = compile_filter("a == 1")
    assert isinstance(f, Filter)
    assert f.expression == "a == 1"
    assert repr(f) == "Filter('a == 1')"
    items = [{"a": 1, "i": 0}, {"a": 2}, {"a": 1, "i": 2}]
    assert f.apply(items) == [items[0], items[2]]
    assert f.apply(iter(items)) == [items[0], items[2]]


def test_evaluation_failure_is_a_filter_error() -> None:
    deep: Any = {"b": 1}
    for _ in range(100_000):
        deep = [deep]
    f = compile_filter("a.b == 1")
    with pytest.raises(FilterError):
        f.matches({"a": deep})
    with pytest.raises(FilterError):
        f.apply([{"a": deep}])


def test_performance() -> None:
    f = compile_filter('ServiceName == web and ServicePort == 8080 and "primary" in ServiceTags')
    obj = service()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(10_000):
            f.matches(obj)
        best = min(best, time.perf_counter() - start)
    assert best < 0.1, f"10,000 evaluations took {best * 1000:.1f} ms"


# --- Go strconv and regexp compatibility -----------------------------------------------------


def test_strconv() -> None:
    assert [parse_bool(s) for s in ("1", "t", "T", "TRUE", "true", "True")] == [True] * 6
    assert [parse_bool(s) for s in ("0", "f", "F", "FALSE", "false", "False")] == [False] * 6
    for bad in ("yes", "tRUE", "", " true"):
        with pytest.raises(ValueError, match=r"strconv\.ParseBool"):
            parse_bool(bad)
    assert parse_int("-0x10") == -16
    assert parse_int("017") == 15
    assert parse_int("0b1_01") == 5
    assert parse_int("+9223372036854775807") == 2**63 - 1
    assert parse_int("-9223372036854775808") == -(2**63)
    for bad in ("", "1_", "_1", "1__0", "08", "0x", " 1", "١", "1.0"):
        with pytest.raises(ValueError, match="invalid syntax"):
            parse_int(bad)
    with pytest.raises(ValueError, match="value out of range"):
        parse_int("9223372036854775808")
    with pytest.raises(ValueError, match="value out of range"):
        parse_int("1" * 5000)
    assert parse_uint("18446744073709551615") == 2**64 - 1
    with pytest.raises(ValueError, match=r"ParseUint.*invalid syntax"):
        parse_uint("+1")
    assert parse_float("1_000.5") == 1000.5
    assert parse_float("0x1p-2") == 0.25
    assert parse_float("-Inf") == float("-inf")
    assert parse_float(".5e1") == 5.0
    with pytest.raises(ValueError, match="value out of range"):
        parse_float("1e400")
    for bad in ("", "1e", "e1", " 1", "0x1", "1..0"):
        with pytest.raises(ValueError, match="invalid syntax"):
            parse_float(bad)


def test_go_quote_and_unquote() -> None:
    assert go_quote("plain") == '"plain"'
    assert go_quote('a"b\\c\n\x00\x7fé\u2028') == '"a\\"b\\\\c\\n\\x00\\x7fé\\u2028"'
    assert unquote('"\\xc3\\xa9"') == "é"
    assert unquote('"\\U0001F600"') == "\U0001f600"
    assert unquote("`a\\n\r`") == "a\\n"
    for bad in ('"\\ud800"', '"\\400"', '"\\\'"', '"a\nb"', '"\\x4"', "'a'"):
        with pytest.raises(ValueError, match="invalid syntax"):
            unquote(bad)


@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        ("a(?i)b|c", "C", True),  # Go flags apply to the rest of the group, across "|"
        ("a(?i)b|c", "aB", True),
        ("(x(?i)y)z", "xYz", True),
        ("(x(?i)y)z", "xYZ", False),
        ("[[:digit:]]+$", "ab12", True),
        ("a\\z", "a\n", False),
        ("a{,2}", "a{,2}", True),  # not a repeat count in Go: literal braces
        ("\\Q.*\\E", "x.*", True),
        ("\\Q.*\\E", "xx", False),
        ("\\x{263a}", "\u263a", True),
        ("\\101", "A", True),
        ("(?P<n>a)(?<m>b)", "ab", True),
        ("[a&&b]", "&", True),
    ],
)
def test_go_regex_translation(pattern: str, text: str, found: bool) -> None:
    assert (compile_go_regex(pattern).search(text) is not None) is found


@pytest.mark.parametrize(
    "pattern",
    [
        "(?=a)",
        "(?!a)",
        "(?<=a)",
        "(?<!a)",
        "(?>a)",
        "(a)\\1",
        "a*+",
        "a{1001}",
        "(?x)a",
        "\\pL",
        "\\",
    ],
)
def test_go_regex_rejects_what_re2_rejects(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"^error parsing regexp: "):
        compile_go_regex(pattern)


def test_regex_errors_are_one_line() -> None:
    message = error_of('a matches "x\\n("')
    assert message == (
        PREFIX + 'Failed to compile regular expression "x\\n(": '
        "error parsing regexp: missing ), unterminated subpattern: `x\\n(`"
    )


REGEX_TOKENS = [
    "(",
    ")",
    "(?",
    "i",
    "s",
    "-",
    ":",
    "[",
    "]",
    "[:alpha:]",
    "[:^x:]",
    "\\",
    "Q",
    "E",
    "z",
    "x{",
    "}",
    "{",
    "1",
    "2",
    ",",
    "*",
    "+",
    "?",
    "|",
    "a",
    "&&",
    "--",
    "^",
    "$",
    ".",
    "P<",
    "<",
    ">",
    "=",
    "!",
    "\n",
    "0",
    "U",
    "p",
    "d",
]


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(max_size=30), st.lists(st.sampled_from(REGEX_TOKENS)).map("".join)))
def test_any_regex_compiles_or_raises_value_error(pattern: str) -> None:
    try:
        compiled = compile_go_regex(pattern)
    except ValueError as err:
        assert str(err).startswith("error parsing regexp: ")
        assert str(err).isprintable()
        return
    compiled.search("aA1 \n{}[]-&")  # a compiled pattern can be used


# --- property tests --------------------------------------------------------------------------

TOKENS = [
    "a",
    "b",
    "Tags",
    "Meta",
    "x",
    "1",
    "-2",
    "0.5",
    "true",
    '"s"',
    "`r`",
    '"',
    "`",
    "(",
    ")",
    "[",
    "]",
    '["k"]',
    ".",
    "==",
    "!=",
    "=",
    "in",
    "not",
    "contains",
    "matches",
    "is",
    "empty",
    "and",
    "or",
    " ",
    "\n",
    "\\",
    "é",
    "0x1",
    "08",
    "'",
    "\x00",
    ",",
    "[]",
    "*",
    "(?i)",
]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=30).map(lambda ts: "".join(ts))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=5),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["a", "b", "Tags", "Meta", "x", "k"]), children, max_size=4
        ),
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.sampled_from(["a", "b", "Tags", "Meta", "x"]), json_values)

ANY_SPEC = struct(
    {
        "a": "string",
        "b": "int",
        "Tags": "list",
        "Meta": map_of({"k": "bool"}),
        "x": list_of({"a": "float"}),
    }
)


def check_error(err: FilterError) -> None:
    message = str(err)
    assert message.startswith(PREFIX)
    assert "\n" not in message and "\r" not in message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), token_soup), json_objects)
def test_any_string_compiles_or_raises_filter_error(text: str, obj: dict[str, Any]) -> None:
    for spec in (None, ANY_SPEC):
        try:
            f = compile_filter(text, spec)
        except FilterError as err:
            check_error(err)
            continue
        assert isinstance(f.matches(obj), bool)
        assert f.apply([obj, {}]) in ([], [obj], [{}], [obj, {}])


identifiers = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,6}", fullmatch=True)
raw_values = st.text(max_size=8).filter(lambda s: '"' not in s or ("`" not in s and "\r" not in s))
matches = st.builds(
    Match,
    st.tuples(identifiers).flatmap(
        lambda first: st.lists(st.one_of(identifiers, raw_values), max_size=3).map(
            lambda rest: first + tuple(rest)
        )
    ),
    st.sampled_from([op for op in Op if op not in (Op.IS_EMPTY, Op.IS_NOT_EMPTY)]),
    raw_values,
) | st.builds(
    lambda sel, op: Match(sel, op, None),
    st.tuples(identifiers),
    st.sampled_from([Op.IS_EMPTY, Op.IS_NOT_EMPTY]),
)
trees: st.SearchStrategy[Expr] = st.recursive(
    matches,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(And, st.lists(children, min_size=2, max_size=3).map(tuple)),
        st.builds(Or, st.lists(children, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=8,
)


def normalise(expr: Expr) -> Expr:
    """The tree the parser builds: nested and/or flattened, double negation removed."""
    if isinstance(expr, Match):
        return expr
    if isinstance(expr, Not):
        inner = normalise(expr.operand)
        return inner.operand if isinstance(inner, Not) else Not(inner)
    flat: list[Expr] = []
    for operand in expr.operands:
        child = normalise(operand)
        if type(child) is type(expr):
            assert isinstance(child, (And, Or))
            flat.extend(child.operands)
        else:
            flat.append(child)
    return type(expr)(tuple(flat))


@settings(max_examples=300, deadline=None)
@given(trees)
def test_render_parse_round_trip(tree: Expr) -> None:
    assert parse(str(tree)) == normalise(tree)


# Differential test: the compiled closures against a direct reading of the semantics.

SELECTORS = ["a", "b", "Tags", "Meta", "Meta.k", "x.a", "x", "Meta.a.b"]
VALUES = ["1", "true", "x", "k", "0", "-1", "1.0", "T", ""]
PATTERNS = ["^a", "x$", "(?i)X", ".", "k|1"]


def reference(expr: Expr, obj: Any) -> bool:
    if isinstance(expr, Not):
        return not reference(expr.operand, obj)
    if isinstance(expr, And):
        return all(reference(e, obj) for e in expr.operands)
    if isinstance(expr, Or):
        return any(reference(e, obj) for e in expr.operands)
    return reference_match(expr, obj, 0)


def reference_match(match: Match, obj: Any, depth: int) -> bool:
    positive = match.op.positive
    if depth == len(match.selector):
        if obj is None:
            result = positive is Op.IS_EMPTY
        else:
            result = reference_leaf(positive, match.value, obj)
        return result != match.op.negated
    if isinstance(obj, list):
        return any(reference_match(match, item, depth) for item in obj)
    if isinstance(obj, dict) and match.selector[depth] in obj:
        return reference_match(match, obj[match.selector[depth]], depth + 1)
    return (positive is Op.IS_EMPTY) != match.op.negated


def reference_equal(raw: str, value: Any) -> bool:
    parsers: dict[type, Any] = {str: str, bool: parse_bool, int: parse_int, float: parse_float}
    try:
        return bool(parsers[type(value)](raw) == value) if type(value) in parsers else False
    except ValueError:
        return type(value) is int and value >= 0 and _uint_equal(raw, value)


def _uint_equal(raw: str, value: int) -> bool:
    try:
        return parse_uint(raw) == value
    except ValueError:
        return False


def reference_leaf(op: Op, raw: str | None, value: Any) -> bool:
    if op is Op.IS_EMPTY:
        return isinstance(value, (str, list, dict)) and len(value) == 0
    assert raw is not None
    if op is Op.EQUAL:
        return reference_equal(raw, value)
    if op is Op.IN:
        if isinstance(value, (str, dict)):
            return raw in value
        if isinstance(value, list):
            return any(reference_equal(raw, item) for item in value)
        return False
    return isinstance(value, str) and re.search(raw, value) is not None


reference_matches = st.one_of(
    st.builds(
        lambda s, op, v: Match(tuple(s.split(".")), op, v),
        st.sampled_from(SELECTORS),
        st.sampled_from([Op.EQUAL, Op.NOT_EQUAL, Op.IN, Op.NOT_IN]),
        st.sampled_from(VALUES),
    ),
    st.builds(
        lambda s, op: Match(tuple(s.split(".")), op, None),
        st.sampled_from(SELECTORS),
        st.sampled_from([Op.IS_EMPTY, Op.IS_NOT_EMPTY]),
    ),
    st.builds(
        lambda s, op, v: Match(tuple(s.split(".")), op, v),
        st.sampled_from(SELECTORS),
        st.sampled_from([Op.MATCHES, Op.NOT_MATCHES]),
        st.sampled_from(PATTERNS),
    ),
)
reference_trees: st.SearchStrategy[Expr] = st.recursive(
    reference_matches,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(And, st.lists(children, min_size=2, max_size=3).map(tuple)),
        st.builds(Or, st.lists(children, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=6,
)


@settings(max_examples=600, deadline=None)
@given(reference_trees, json_objects)
def test_evaluation_agrees_with_reference(tree: Expr, obj: dict[str, Any]) -> None:
    f = compile_filter(str(tree))
    assert f.matches(obj) is reference(tree, obj)
