"""TMF630 regex filters in SQL, exactly: an index range, a LIKE pre-filter, then RE2.

A regex filter's meaning is RE2's (gateway/query.py compiles every pattern with it). A
database cannot run RE2, but it can cheaply narrow the rows that could match:

- a literal prefix of an anchored pattern (`^INV24-0009`) is a range on the column
  (`col >= 'INV24-0009' AND col < 'INV24-000:'`), which an index answers;
- literals every match contains, in order, are a `LIKE '%Roam%data%'` pre-filter;
- PostgreSQL's `~` and MariaDB's `REGEXP` narrow further, for patterns written in the
  syntax whose meaning they share with RE2 (they may match more, never less).

Each is a superset of RE2's matches. On SQLite the last step is RE2 itself, registered
as the SQL function `re2_search` on every connection, so the answer is exact in one
statement. Elsewhere the gateway re-checks the candidates with RE2 (a residual term).

The analysis below is a deliberately small reading of RE2 syntax: anything it does not
fully understand (flags, `\\Q...\\E`, top-level alternation) yields no literals, which
only costs speed, never exactness. RE2's own `PossibleMatchRange` was considered: it
bounds the *matched text*, not the subject, needs to know that the pattern is anchored
(which it does not tell), and says nothing of required literals mid-pattern.
"""

from __future__ import annotations

import functools
import string
import sys
from dataclasses import dataclass
from typing import Any

import re2
from sqlalchemy import ColumnElement, and_, func, true

#: Characters that stand for themselves when escaped (RE2 accepts `\` + any punctuation).
_PUNCTUATION = frozenset(string.punctuation)
#: Characters with a meaning of their own outside a class.
_META = frozenset("\\.[](){}|*+?^$")
#: Escapes that PostgreSQL and MariaDB read as a superset of RE2's ASCII classes.
_SHARED_CLASS_ESCAPES = frozenset("dsw")
#: Bounded repeats above this are refused by PostgreSQL (RE2 allows up to 1000).
_DIALECT_MAX_REPEAT = 255
#: The escape character of the LIKE patterns built here.
LIKE_ESCAPE = "!"


@dataclass(frozen=True, slots=True)
class RegexFacts:
    """What every RE2 match of a pattern is known to contain.

    `prefix`: text every matching subject starts with ('' when none is known);
    `fragments`: literals every match contains, in this order, after the prefix;
    `shared_syntax`: the pattern means at most as much in PostgreSQL/MariaDB as in RE2's
    superset sense: their regex operators may narrow candidates with it;
    `literal_only`: the pattern is nothing but its prefix or its one fragment (`^INV24`,
    `Roaming`), so a range or a substring test is its whole meaning.
    """

    prefix: str = ""
    fragments: tuple[str, ...] = ()
    shared_syntax: bool = False
    literal_only: bool = False


_NOTHING_KNOWN = RegexFacts()


class _GiveUp(Exception):
    """Syntax this reading does not cover: claim no literals."""


@functools.lru_cache(maxsize=512)
def analyse(pattern: str) -> RegexFacts:
    """The literals every match of `pattern` (valid RE2) contains; see `RegexFacts`."""
    try:
        return _Reader(pattern).read()
    except _GiveUp:
        return _NOTHING_KNOWN


class _Reader:
    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0
        self.shared = True

    def read(self) -> RegexFacts:
        text = self.text
        prefix_possible = text.startswith("^")
        if prefix_possible:
            self.pos = 1
        elif text.startswith("\\A"):
            prefix_possible, self.pos = True, 2
            self.shared = False
        runs: list[str] = []
        current: list[str] = []
        literal_only = True
        while self.pos < len(text):
            if text[self.pos] == "|":
                raise _GiveUp  # top-level alternation: no literal is required
            literal = self._atom()
            required, repeats = self._quantifier()
            if literal is None or not required or repeats:
                literal_only = False
            if literal is not None and required:
                current.append(literal)
                if not repeats:
                    continue
                # `a+`: one `a` is certain; what follows is not next to it
            elif not runs and not current:
                prefix_possible = False  # something else comes first
            if current:
                runs.append("".join(current))
                current = []
        if current:
            runs.append("".join(current))
        prefix = runs.pop(0) if prefix_possible and runs else ""
        literal_only = literal_only and len(runs) + bool(prefix) == 1
        return RegexFacts(prefix, tuple(runs), self.shared, literal_only)

    def _atom(self) -> str | None:
        """Consume one atom; its character when it is a plain literal, else None."""
        text, pos = self.text, self.pos
        char = text[pos]
        if char == "\\":
            if pos + 1 >= len(text):
                raise _GiveUp
            escaped = text[pos + 1]
            self.pos = pos + 2
            if escaped in _PUNCTUATION:
                return escaped
            if escaped in _SHARED_CLASS_ESCAPES:
                return None
            if escaped in "pP":
                self.shared = False
                if self.pos < len(text) and text[self.pos] == "{":
                    end = text.find("}", self.pos)
                    if end < 0:
                        raise _GiveUp
                    self.pos = end + 1
                else:
                    self.pos += 1
                return None
            if escaped in "DSWbBz":
                self.shared = False
                return None
            raise _GiveUp  # \Q, \x.., \C, octal, \n ...: not read here
        if char == "[":
            self._class()
            return None
        if char == "(":
            self._group()
            return None
        if char in ".$":
            self.pos += 1
            return None
        if char == "^":
            self.pos += 1
            return None
        if char in "*+?{)]}":
            raise _GiveUp  # a quantifier with nothing before it (`{` literal): not read here
        self.pos += 1
        return char

    def _class(self) -> None:
        """Skip a character class `[...]` (first `]` after an optional `^` is literal)."""
        text = self.text
        pos = self.pos + 1
        if pos < len(text) and text[pos] == "^":
            pos += 1
        if pos < len(text) and text[pos] == "]":
            pos += 1
        while pos < len(text) and text[pos] != "]":
            if text[pos] == "\\":
                self.shared = False
                pos += 2
                continue
            if text.startswith("[:", pos):
                self.shared = False
                end = text.find(":]", pos + 2)
                if end < 0:
                    raise _GiveUp
                pos = end + 2
                continue
            if not (text[pos].isascii() and text[pos].isprintable()):
                self.shared = False
            pos += 1
        if pos >= len(text):
            raise _GiveUp
        self.pos = pos + 1

    def _group(self) -> None:
        """Skip a group to its closing parenthesis; flag groups are not read here."""
        text = self.text
        if text.startswith("(?", self.pos) and not text.startswith(("(?:", "(?P<"), self.pos):
            raise _GiveUp  # (?i) and friends change what literals mean
        if text.startswith("(?P<", self.pos):
            self.shared = False
        depth = 0
        pos = self.pos
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                pos += 2
                continue
            if char == "[":
                saved = self.pos
                self.pos = pos
                self._class()
                pos, self.pos = self.pos, saved
                continue
            if char == "(":
                if text.startswith("(?", pos) and not text.startswith(("(?:", "(?P<"), pos):
                    raise _GiveUp
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    self.pos = pos + 1
                    return
            elif char == "{":
                self._check_bound(pos)
            pos += 1
        raise _GiveUp

    def _check_bound(self, pos: int) -> None:
        """A `{n,m}` repeat: PostgreSQL refuses bounds above 255."""
        end = self.text.find("}", pos)
        if end < 0:
            raise _GiveUp
        numbers = self.text[pos + 1 : end].split(",")
        if not all(n.isdigit() or n == "" for n in numbers) or not numbers[0].isdigit():
            raise _GiveUp  # `{` as a literal: not read here
        if any(n and int(n) > _DIALECT_MAX_REPEAT for n in numbers):
            self.shared = False

    def _quantifier(self) -> tuple[bool, bool]:
        """Consume a quantifier: (the atom is required, it may repeat)."""
        text = self.text
        if self.pos >= len(text):
            return True, False
        char = text[self.pos]
        if char in "*?":
            required, repeats = False, char == "*"
            self.pos += 1
        elif char == "+":
            required, repeats = True, True
            self.pos += 1
        elif char == "{":
            self._check_bound(self.pos)
            end = text.find("}", self.pos)
            low = int(text[self.pos + 1 : end].split(",")[0])
            required, repeats = low > 0, True
            self.pos = end + 1
        else:
            return True, False
        if self.pos < len(text) and text[self.pos] in "?+*{":
            if text[self.pos] != "?":
                raise _GiveUp  # RE2 refuses `a**`; never here
            self.pos += 1  # lazy: which span matches, not whether
        return required, repeats


def anchored_literal(text: str) -> str:
    """The RE2 pattern of "starts with `text`" (ASCII punctuation escaped, as RE2 allows)."""
    return "^" + "".join("\\" + c if c in _META or c in _PUNCTUATION else c for c in text)


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix` (code-point order).

    None when there is none (the prefix is all U+10FFFF): no upper bound then.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < sys.maxunicode:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates are no text: skip past them
                following = 0xE000
            return "".join(chars) + chr(following)
    return None


def like_pattern(prefix: str, fragments: tuple[str, ...]) -> str | None:
    """`prefix%frag1%frag2%` with `%`, `_` and the escape character escaped; None: no use."""
    if not prefix and not fragments:
        return None
    escaped = [_like_escape(prefix), *(_like_escape(f) for f in fragments)]
    return "%".join(escaped) + "%"


def _like_escape(text: str) -> str:
    return (
        text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        # `_` last: the escapes added above contain none
        .replace("_", LIKE_ESCAPE + "_")
    )


_options = re2.Options()
_options.log_errors = False
_options.max_mem = 4 << 20


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _options)


def re2_search(pattern: Any, value: Any) -> int:
    """The SQL function `re2_search(pattern, value)`: 1 when RE2 finds the pattern in it.

    Only text matches (as the gateway compares only text with a regex); a pattern RE2
    refuses matches nothing (the gateway never sends one).
    """
    if not isinstance(value, str) or not isinstance(pattern, str):
        return 0
    return _search(pattern, value)


@functools.lru_cache(maxsize=8192)
def _search(pattern: str, value: str) -> int:
    """Remembered: codes and names repeat (two tax codes over a million rows), and one
    call into RE2 costs some microseconds."""
    try:
        compiled = _compiled(pattern)
    except re2.error:
        return 0
    return 1 if compiled.search(value) else 0


RE2_FUNCTION = "re2_search"
#: Dialects whose regex operator (SQLAlchemy's `regexp_match`) may narrow candidates.
_REGEX_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})


def regex_condition(
    element: ColumnElement[Any], pattern: str, *, dialect: str, ordered_by_code_point: bool
) -> ColumnElement[bool]:
    """Rows whose text may match `pattern`; exactly RE2's matches on SQLite.

    `ordered_by_code_point`: the column compares as code points (SQLite's BINARY, a "C"
    collation), so a prefix is a range; under other collations (case-insensitive ones
    sort `_` between `Z` and `a`) a range could miss matches, and only LIKE is used.
    """
    facts = analyse(pattern)
    terms: list[ColumnElement[bool]] = []
    if facts.prefix and ordered_by_code_point:
        terms.append(element >= facts.prefix)
        upper = prefix_successor(facts.prefix)
        if upper is not None:
            terms.append(element < upper)
    if dialect == "sqlite" and facts.literal_only:
        # The whole meaning, in SQLite's own code: a range (BINARY: code points) for a
        # prefix, a case-sensitive substring test for one literal.
        if facts.fragments:
            return func.instr(element, facts.fragments[0]) > 0
        if ordered_by_code_point:
            return and_(true(), *terms)
    like = like_pattern(facts.prefix, facts.fragments)
    if like is not None:
        terms.append(element.like(like, escape=LIKE_ESCAPE))
    if dialect == "sqlite":
        terms.append(getattr(func, RE2_FUNCTION)(pattern, element) == 1)
    elif facts.shared_syntax and dialect in _REGEX_DIALECTS:
        terms.append(element.regexp_match(pattern))
    return and_(true(), *terms)


def literal(pattern: str) -> bool:
    """Whether the pattern is only a literal prefix or one literal (`^INV24-0009`, `Roaming`).

    Such a pattern means exactly its LIKE (`'INV24-0009%'`, `'%Roaming%'`), which
    `regex_condition` always adds: exact wherever LIKE compares case-sensitively,
    character by character (PostgreSQL, whatever the collation).
    """
    facts = analyse(pattern)
    return facts.literal_only and like_pattern(facts.prefix, facts.fragments) is not None


def runs_re2(dialect: str) -> bool:
    """Whether `regex_condition` is exact on this dialect (RE2 runs in the database)."""
    return dialect == "sqlite"


def register_re2(dbapi_connection: Any, _record: Any = None) -> None:
    """Add `re2_search` to a SQLite connection (a SQLAlchemy `connect` event listener)."""
    dbapi_connection.create_function(RE2_FUNCTION, 2, re2_search, deterministic=True)
