"""Go (RE2) regular expressions on Python's ``re`` engine.

Consul's ``matches`` operator uses Go's ``regexp`` package, whose RE2 syntax is mostly a subset
of Python's. This module translates the differences that matter and refuses what RE2 refuses,
so a pattern means the same thing here as in Consul (and cannot use backreferences, which are
what make backtracking engines blow up):

* RE2 rejects lookarounds, backreferences, atomic groups, conditionals, comments and possessive
  quantifiers, and repeat counts above 1000; so does this module.
* Go allows flag groups such as ``(?i)`` anywhere (they apply to the rest of the enclosing
  group); they are rewritten to Python's scoped ``(?i:...)`` form.
* ``\\z`` (end of text) becomes Python's ``\\Z``; ``\\Q...\\E`` quoting, ``\\x{10FFFF}``,
  octal escapes and POSIX classes such as ``[[:alpha:]]`` are translated; a ``{`` that does
  not start a repeat count is a literal, as in Go; ``(?<name>...)`` becomes ``(?P<name>...)``.

Known remaining differences: Unicode classes (``\\pL``, ``\\p{Greek}``) and the ungreedy flag
``U`` are not supported (an error); ``$`` without the ``m`` flag also matches before a final
newline; ``\\d``, ``\\w``, ``\\s`` and ``\\b`` follow Unicode rather than ASCII.
"""

from __future__ import annotations

import re

from server.filter.strconv import go_quote

__all__ = ["compile_go_regex"]

_MAX_REPEAT = 1000
_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}", re.ASCII)
_FLAGS = re.compile(r"([imsU]*)(?:-([imsU]*))?([:)])")
_GO_LETTER_ESCAPES = frozenset("aftnrvAbBdDsSwWzxpPQ")
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")
_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-\\x60{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


class _Unsupported(Exception):
    pass


class _Translator:
    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.n = len(pattern)
        self.i = 0
        self.out: list[str] = []
        # For each open group: the scoped flag groups "(?flags:" opened inside it by a bare
        # "(?flags)", which must be closed with the group (and reopened after each "|").
        self.levels: list[list[str]] = [[]]

    def fail(self, what: str, text: str) -> _Unsupported:
        return _Unsupported(f"{what}: `{text}`")

    def run(self) -> str:
        p = self.p
        while self.i < self.n:
            c = p[self.i]
            if c == "\\":
                self.out.append(self.escape(in_class=False))
            elif c == "[":
                self.char_class()
            elif c == "(":
                self.open_group()
            elif c == ")":
                self.i += 1
                if len(self.levels) > 1:
                    self.out.append(")" * len(self.levels.pop()))
                self.out.append(")")
            elif c == "|":
                self.i += 1
                flags = self.levels[-1]
                self.out.append(")" * len(flags) + "|" + "".join(flags))
            elif c in "*+?":
                self.i += 1
                self.out.append(c)
                self.after_repeat(c)
            elif c == "{":
                m = _REPEAT.match(p, self.i)
                if m is None:
                    self.i += 1
                    self.out.append("\\{")
                    continue
                low = int(m.group(1))
                high = int(m.group(3)) if m.group(3) else low
                if low > _MAX_REPEAT or high > _MAX_REPEAT or (m.group(3) and high < low):
                    raise self.fail("invalid repeat count", m.group(0))
                self.i = m.end()
                self.out.append(m.group(0))
                self.after_repeat(m.group(0))
            else:
                self.i += 1
                self.out.append(c)
        self.out.append(")" * len(self.levels[0]))
        return "".join(self.out)

    def after_repeat(self, op: str) -> None:
        if self.i < self.n and self.p[self.i] == "?":
            self.i += 1
            self.out.append("?")
            op += "?"
        if self.i < self.n and self.p[self.i] in "*+":
            raise self.fail("invalid nested repetition operator", op + self.p[self.i])

    def open_group(self) -> None:
        p = self.p
        rest = p[self.i + 1 : self.i + 4]
        if not rest.startswith("?"):
            self.i += 1
            self.out.append("(")
            self.levels.append([])
            return
        if rest.startswith("?P<"):
            self.i += 4
            self.out.append("(?P<")
            self.levels.append([])
            return
        if rest.startswith("?<") and not rest.startswith(("?<=", "?<!")):
            self.i += 3
            self.out.append("(?P<")
            self.levels.append([])
            return
        m = _FLAGS.match(p, self.i + 2)
        if m is not None and m.group(0) == ":":
            self.i = m.end()
            self.out.append("(?:")
            self.levels.append([])
            return
        if m is None or rest.startswith(("?P", "?<")) or not (m.group(1) or m.group(2)):
            raise self.fail("invalid or unsupported Perl syntax", p[self.i : self.i + 3])
        if "U" in m.group(0):
            raise self.fail("unsupported ungreedy flag", p[self.i : m.end()])
        flags = m.group(1) + (f"-{m.group(2)}" if m.group(2) is not None else "")
        self.i = m.end()
        if m.group(3) == ":":
            self.out.append(f"(?{flags}:")
            self.levels.append([])
        else:
            opener = f"(?{flags}:"
            self.out.append(opener)
            self.levels[-1].append(opener)

    def escape(self, in_class: bool) -> str:
        p = self.p
        start = self.i
        if start + 1 >= self.n:
            raise self.fail("trailing backslash at end of expression", "")
        c = p[start + 1]
        self.i = start + 2
        if c.isdigit():
            if c in _OCTAL and (c == "0" or (self.i < self.n and p[self.i] in _OCTAL)):
                end = self.i
                while end < self.n and end < start + 4 and p[end] in _OCTAL:
                    end += 1
                self.i = end
                return f"\\u{int(p[start + 1 : end], 8):04x}"
            raise self.fail("invalid escape sequence", p[start : self.i])
        if not c.isascii() or not c.isalpha():
            return "\\" + c
        if c not in _GO_LETTER_ESCAPES:
            raise self.fail("invalid escape sequence", p[start : self.i])
        if c == "z":
            if in_class:
                raise self.fail("invalid escape sequence", p[start : self.i])
            return "\\Z"
        if c == "Q":
            if in_class:
                raise self.fail("invalid escape sequence", p[start : self.i])
            end = p.find("\\E", self.i)
            text = p[self.i :] if end < 0 else p[self.i : end]
            self.i = self.n if end < 0 else end + 2
            return re.escape(text)
        if c == "x" and self.i < self.n and p[self.i] == "{":
            end = p.find("}", self.i)
            digits = p[self.i + 1 : end] if end > 0 else ""
            if not digits or not _HEX.issuperset(digits) or int(digits, 16) > 0x10FFFF:
                raise self.fail("invalid escape sequence", p[start : end + 1 if end > 0 else None])
            self.i = end + 1
            return f"\\U{int(digits, 16):08x}"
        return "\\" + c

    def char_class(self) -> None:
        p = self.p
        out = self.out
        out.append("[")
        self.i += 1
        if self.i < self.n and p[self.i] == "^":
            out.append("^")
            self.i += 1
        if self.i < self.n and p[self.i] == "]":
            out.append("\\]")
            self.i += 1
        while self.i < self.n:
            c = p[self.i]
            if c == "]":
                out.append("]")
                self.i += 1
                return
            if c == "\\":
                out.append(self.escape(in_class=True))
                continue
            if c == "[" and p.startswith("[:", self.i):
                end = p.find(":]", self.i + 2)
                if end >= 0:
                    name = p[self.i + 2 : end]
                    ranges = _POSIX.get(name)
                    if ranges is None:
                        raise self.fail("invalid character class range", p[self.i : end + 2])
                    out.append(ranges)
                    self.i = end + 2
                    continue
            nxt = p[self.i + 1] if self.i + 1 < self.n else ""
            if c == "[" or (c in "-&~|" and nxt == c):
                out.append("\\" + c)  # literal in Go; Python would warn about set operations
            else:
                out.append(c)
            self.i += 1
        # Unterminated: let re report it.


def _one_line(text: str) -> str:
    """Escape control characters (the error text quotes parts of the pattern)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else go_quote(ch)[1:-1] for ch in text)


def compile_go_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Go regular expression; ``ValueError`` with a Go-like text when invalid.

    The error text is a single line: control characters from the pattern are escaped.
    """
    try:
        translated = _Translator(pattern).run()
    except _Unsupported as exc:
        raise ValueError(_one_line(f"error parsing regexp: {exc}")) from None
    try:
        return re.compile(translated)
    except re.error as exc:
        raise ValueError(_one_line(f"error parsing regexp: {exc.msg}: `{pattern}`")) from None
    except (RecursionError, OverflowError, MemoryError, ValueError, Warning) as exc:
        raise ValueError(_one_line(f"error parsing regexp: {exc}: `{pattern}`")) from None
