"""One straight-line Python function per mapping, generated at start-up from its node tree.

The compiler builds a tree of typed nodes (nodes.py), one per value, that knows how to
fail precisely. Calling that tree costs a Python call per value, which is most of the
mapping time of a 50-bill page. Here the whole tree is written out as one function body
(`exec` of generated source, as attrs and dataclasses do), with the transforms that are one
expression (minor units, integer ids, code tables) written in and the conversions worth
keeping (dates, decimal text) looked up in the transform's `Memo`. Each column is read once,
each object is one dict display (sized once) with its null values deleted after. On any
exception the record goes through the node tree instead, which raises the error that names
the attribute and column; so both paths give the same output and the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple, TypeAlias, assert_never

from mappings.nodes import (
    ColumnNode,
    ConstNode,
    DerivedNode,
    EachNode,
    ListNode,
    Node,
    ObjectNode,
    Record,
    ResourceNode,
    SumNode,
    TemplateNode,
    number_of,
)
from mappings.transforms import (
    AwareDateTime,
    DateTime,
    DecimalText,
    Enum,
    IntegerText,
    LooseDate,
    MinorUnits,
    NaiveDateTime,
    NativeDate,
    NativeNumber,
    Rfc3339Text,
    Transform,
    UuidText,
)

ToTmf: TypeAlias = Callable[[Record, str], dict[str, Any]]
#: Constants of these types are written into the source as literals, not looked up.
_LITERAL_TYPES = (str, int, bool, type(None))
#: Transforms (these exact classes) whose `to_tmf` never gives None.
_NEVER_NONE = (
    Transform,
    DateTime,
    DecimalText,
    IntegerText,
    MinorUnits,
    NativeNumber,
    UuidText,
    NativeDate,
    NaiveDateTime,
    AwareDateTime,
    LooseDate,
    Rfc3339Text,
)


class _Value(NamedTuple):
    """How generated code gets a node's value: `expr`, valid when all `guards` hold.

    When a guard fails the value is None. `nullable`: `expr` itself may be None too.
    """

    guards: tuple[str, ...]
    expr: str
    nullable: bool

    @property
    def always(self) -> bool:
        """`expr` is the value, and never None."""
        return not self.guards and not self.nullable

    def expression(self) -> str:
        if not self.guards:
            return self.expr
        return f"({self.expr} if {' and '.join(self.guards)} else None)"


class FastPath(NamedTuple):
    """A mapping's generated function and what it was made from."""

    to_tmf: ToTmf
    #: The generated Python source of `to_tmf`, for reading and for tests.
    source: str
    #: The node tree `to_tmf` falls back on, which reports what is wrong with a record.
    slow: ResourceNode


def specialise(tree: ResourceNode) -> FastPath:
    """`tree`'s twin without per-value calls; the tree still reports every failure."""
    writer = _Writer()
    writer.names.update(slow=tree, RESOURCE=tree.resource, PREFIX=f"/{tree.collection}/")
    writer.names.update(NUMBERS=frozenset({int, Decimal}), SUM=_exact_sum)
    body = " " * 8
    ident = writer.value(tree.ident, body)
    writer.lines.append(f"{body}ident = {ident.expression()}")
    writer.lines.append(f"{body}if ident is not None:")
    head = ('"id": ident', '"href": f"{base}{PREFIX}{ident}"', '"@type": RESOURCE')
    writer.fill("o", tree.items, body + "    ", head)
    writer.lines.append(f"{body}    return o")
    source = "\n".join(
        [
            "def fast(r, base):",
            "    try:",
            *writer.lines,
            "    except Exception:",
            "        pass  # the node tree says what is wrong, and where",
            "    return slow(r, base)",
            "",
        ]
    )
    namespace: dict[str, Any] = dict(writer.names)
    exec(compile(source, f"<mapping {tree.resource}>", "exec"), namespace)  # noqa: S102
    fast: ToTmf = namespace["fast"]
    return FastPath(fast, source, tree)


def _exact_sum(raws: tuple[Any, ...]) -> int | Decimal:
    """The sum of terms of unknown types, exactly, as `SumNode` adds them (it names errors)."""
    total: int | Decimal = 0
    for raw in raws:
        total += number_of(raw)
    return total


class _Writer:
    """Writes the statements of one function body; `rec` names the record being read.

    Each column of a record is read once per block (`scopes`): a read emitted in a block
    serves the blocks nested in it after it, as the value cannot change in between.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}
        self.counter = 0
        self.rec = "r"
        #: Per open block, innermost last: (record name, column) -> the temp holding it.
        self.scopes: list[dict[tuple[str, str], str]] = [{}]
        #: Per open block: temps known not to be None there (tested on entering it).
        self.present: list[set[str]] = [set()]

    def enter(self, present: tuple[str, ...] = ()) -> None:
        self.scopes.append({})
        self.present.append(set(present))

    def leave(self) -> None:
        self.scopes.pop()
        self.present.pop()

    def guard(self, *temps: str) -> tuple[str, ...]:
        """Tests that `temps` are not None, less those known here."""
        known = set().union(*self.present)
        return tuple(dict.fromkeys(f"{t} is not None" for t in temps if t not in known))

    def name(self, value: Any, prefix: str) -> str:
        """A global of the generated function bound to `value`."""
        key = self.temp(prefix)
        self.names[key] = value
        return key

    def temp(self, prefix: str = "t") -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def known(self, column: str) -> str | None:
        """The temp that already holds `column` of the record here, if any."""
        key = (self.rec, column)
        return next((scope[key] for scope in reversed(self.scopes) if key in scope), None)

    def read(self, column: str, indent: str) -> str:
        """A temp holding column `column` of the record (a missing column fails)."""
        temp = self.known(column)
        if temp is None:
            temp = self.temp()
            self.lines.append(f"{indent}{temp} = {self.rec}[{column!r}]")
            self.scopes[-1][(self.rec, column)] = temp
        return temp

    def value(self, node: Node, indent: str) -> _Value:
        """`node(rec, base)` in generated code; statements it needs are emitted first."""
        match node:
            case ColumnNode(column=column, transform=transform):
                temp = self.read(column, indent)
                expr, nullable = self.converted(transform, temp)
                if expr == temp:  # as it is: None is None, with no test
                    return _Value((), temp, nullable=bool(self.guard(temp)))
                return _Value(self.guard(temp), expr, nullable)
            case ConstNode(value=value):
                literal = type(value) in _LITERAL_TYPES
                expr = repr(value) if literal else self.name(value, "k")
                return _Value((), expr, nullable=value is None)
            case TemplateNode(pieces=pieces, transform=transform):
                text = self.template(pieces, indent)
                if transform is None:
                    return text
                return _Value(text.guards, *self.converted(transform, text.expr))
            case SumNode(columns=columns, transform=transform, default=default, typed=typed):
                temps = [self.read(column, indent) for column in columns]
                if default is None:
                    guards, terms = self.guard(*temps), temps
                else:  # a null term counts as the default: no guard
                    fill = self.name(default, "k")
                    guards, terms = (), [f"({t} if {t} is not None else {fill})" for t in temps]
                total = f"{'sum' if typed else 'SUM'}(({', '.join(terms)},))"
                return _Value(guards, *self.converted(transform, total))
            case DerivedNode():
                # The node computes (and fails) itself: expressions are rare and varied.
                return _Value((), f"{self.name(node, 'd')}({self.rec}, base)", nullable=True)
            case ObjectNode(items=items, when=when, condition=condition):
                out = self.temp()
                tests, present = [], None
                if when is not None:
                    present = self.known(when)
                    if present is None:  # a missing column is null here, not an error
                        present = self.temp()
                        self.lines.append(f"{indent}{present} = {self.rec}.get({when!r})")
                    tests.append(f"{present} is not None")
                if condition is not None:
                    tests.append(f"{self.name(condition.holds, 'w')}({self.rec}) is True")
                if not tests:
                    self.fill(out, items, indent)
                    return _Value((), out, nullable=False)
                self.lines.append(f"{indent}{out} = None")
                self.lines.append(f"{indent}if {' and '.join(tests)}:")
                self.enter(() if present is None else (present,))
                if when is not None and present is not None:
                    self.scopes[-1][(self.rec, when)] = present
                self.fill(out, items, indent + "    ")
                self.leave()
                return _Value((), out, nullable=True)
            case EachNode(child=child, item=item, where=where):
                # Rows missing or None: the loop fails, and the node tree says so.
                out, outer = self.temp(), self.rec
                rows = self.known(child) or f"{outer}.get({child!r})"
                self.rec = "x" if outer == "r" else self.temp("x")
                self.lines.append(f"{indent}{out} = []")
                self.lines.append(f"{indent}for {self.rec} in {rows}:")
                self.enter()
                inner = indent + "    "
                if where is not None:
                    test = f"{self.name(where.holds, 'w')}({self.rec}) is True"
                    self.lines.append(f"{inner}if {test}:")
                    inner += "    "
                value = self.value(item, inner).expression()
                self.lines.append(f"{inner}{out}.append({value})")  # None too, as the node
                self.leave()
                self.rec = outer
                return _Value((), out, nullable=False)
            case ListNode(elements=elements):
                values = [self.value(element, indent) for element in elements]
                out = self.temp()
                if len(values) == 1:  # one element: a list of it, or None
                    (only,) = values
                    if only.always:
                        return _Value((), f"[{only.expr}]", nullable=False)
                    held = self.held(only, indent)
                    if held is None:
                        return _Value((), "None", nullable=True)
                    self.lines.append(f"{indent}{out} = None if {held} is None else [{held}]")
                    return _Value((), out, nullable=True)
                self.lines.append(f"{indent}{out} = []")
                always = [self.guarded(f"{out}.append(", v, indent, ")") for v in values]
                if any(always):  # the list is never empty
                    return _Value((), out, nullable=False)
                return _Value((), f"({out} or None)", nullable=True)
            case _:
                assert_never(node)

    def converted(self, transform: Transform, raw: str) -> tuple[str, bool]:
        """`transform.to_tmf(raw)` as an expression, and whether its value may be None.

        One-expression transforms are written out, and conversions a transform keeps
        (dates, decimal text) are looked up in its memo; they fail where `to_tmf` does (if
        with other exceptions), and the node tree then reports it. Exact classes only: a
        subclass may convert otherwise.
        """
        nullable = type(transform) not in _NEVER_NONE
        kind = type(transform)
        if kind is Transform:
            return raw, nullable
        # int() of an int is the int itself: skipped when `raw` is one (a name read once).
        plain_int = f"type({raw}) is int"
        if type(transform) is MinorUnits:
            divisor = transform.divisor
            if raw.isidentifier():
                return f"({raw} if {plain_int} else int({raw})) / {divisor!r}", nullable
            return f"int({raw}) / {divisor!r}", nullable
        if kind is IntegerText:
            if raw.isidentifier():
                return f"str({raw} if {plain_int} else int({raw}))", nullable
            return f"str(int({raw}))", nullable
        if type(transform) is Enum:
            return f"{self.name(transform.table, 'e')}[{raw}]", nullable
        if kind is NativeNumber:  # an int as it is, a Decimal as a float; others: to_tmf
            convert = self.name(transform.to_tmf, "c")
            exact = f"{raw} if type({raw}) is int else float({raw})"
            return f"({exact} if type({raw}) in NUMBERS else {convert}({raw}))", nullable
        memo = transform.memo()
        if memo is not None:
            return f"{self.name(memo, 'm')}[{raw}]", nullable
        return f"{self.name(transform.converter(), 'c')}({raw})", nullable

    def template(self, pieces: tuple[tuple[str, str | None], ...], indent: str) -> _Value:
        """Adjacent literals and f-strings, guarded column by column as the node reads them."""
        parts: list[str] = []
        guards: list[str] = []
        for literal, name in pieces:
            if literal:
                parts.append(repr(literal))  # a plain literal: its braces are text
            if name == "base":
                parts.append("f'{base}'")
            elif name is not None:
                temp = self.read(name, indent)
                guards.extend(self.guard(temp))
                parts.append(f"f'{{{temp}!s}}'")
        guards = list(dict.fromkeys(guards))
        return _Value(tuple(guards), f"({' '.join(parts)})" if parts else "''", nullable=False)

    def held(self, value: _Value, indent: str) -> str | None:
        """A name holding `value` (None when it is null), or None when it is always null."""
        if value.expr == "None":
            return None
        if not value.guards and value.expr.isidentifier():
            return value.expr
        temp = self.temp()
        self.lines.append(f"{indent}{temp} = {value.expression()}")
        return temp

    def fill(
        self,
        out: str,
        items: tuple[tuple[str, Node], ...],
        indent: str,
        head: tuple[str, ...] = (),
    ) -> None:
        """`out = {...}` with the non-null values of `items`, in their order, after `head`.

        One dict display of every value (sized once, no per-key stores), then the null
        ones deleted: the keys left keep their order.
        """
        entries = list(head)
        nullable: list[tuple[str, str]] = []
        for key, node in items:
            value = self.value(node, indent)
            if value.always:
                entries.append(f"{key!r}: {value.expr}")
                continue
            held = self.held(value, indent)
            if held is not None:
                entries.append(f"{key!r}: {held}")
                nullable.append((key, held))
        self.lines.append(f"{indent}{out} = {{{', '.join(entries)}}}")
        for key, held in nullable:
            self.lines.append(f"{indent}if {held} is None:")
            self.lines.append(f"{indent}    del {out}[{key!r}]")

    def guarded(self, before: str, value: _Value, indent: str, after: str = "") -> bool:
        """The statement `before value after`, run unless the value is None.

        Returns whether it always runs (the value is never None).
        """
        guards = list(value.guards)
        expr = value.expr
        if value.nullable:
            if expr == "None":  # a const None: never set
                return False
            if not expr.isidentifier():
                temp = self.temp()
                guards.append(f"({temp} := {expr}) is not None")
                expr = temp
            else:
                guards.append(f"{expr} is not None")
        if not guards:
            self.lines.append(f"{indent}{before}{expr}{after}")
            return True
        self.lines.append(f"{indent}if {' and '.join(guards)}:")
        self.lines.append(f"{indent}    {before}{expr}{after}")
        return False
