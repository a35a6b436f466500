"""One straight-line Python function per mapping, generated at start-up from its closures.

The compiler builds a tree of small closures (one per attribute) that knows how to fail
precisely. Calling that tree costs a Python call per attribute, which is most of the
mapping time of a 50-bill page. Here the tree's column reads, constants and objects are
written out as one function body (`exec` of generated source, as attrs and dataclasses
do); other nodes (templates, sums, arrays) are called as they are. On any exception the
record goes through the closure tree again, which raises the error that names the
attribute and column; so both paths give the same output and the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = Any
ToTmf = Callable[[Record, str], dict[str, Any]]


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}
        self.helpers: list[str] = []
        self.counter = 0

    def name(self, value: Any, prefix: str) -> str:
        """A global of the generated function bound to `value`."""
        self.counter += 1
        key = f"{prefix}{self.counter}"
        self.names[key] = value
        return key

    def temp(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def expression(self, fn: Any, indent: str) -> str:
        """An expression for `fn(r, base)`; statements it needs are emitted first."""
        column = getattr(fn, "column", None)
        if column is not None:
            convert = getattr(fn, "convert", None)
            read = f"r[{column!r}]"
            if convert is None:
                return read
            value = self.temp()
            return f"(None if ({value} := {read}) is None else {self.name(convert, 'c')}({value}))"
        if hasattr(fn, "constant"):
            return self.name(fn.constant, "k")
        items = getattr(fn, "items", None)
        if items is not None:
            out = self.temp()
            when = getattr(fn, "when", None)
            if when is None:
                self.fill(out, items, indent)
                return out
            self.lines.append(f"{indent}{out} = None")
            self.lines.append(f"{indent}if r.get({when!r}) is not None:")
            self.fill(out, items, indent + "    ")
            return out
        each = getattr(fn, "each", None)
        if each is not None:  # rows missing: iterating None fails, and `slow` says so
            return f"[{self.helper(fn.item)}(x, base) for x in r.get({each!r})]"
        elements = getattr(fn, "elements", None)
        if elements is not None:
            out = self.temp()
            self.lines.append(f"{indent}{out} = []")
            for element in elements:
                temp = self.temp()
                self.lines.append(f"{indent}{temp} = {self.expression(element, indent)}")
                self.lines.append(f"{indent}if {temp} is not None:")
                self.lines.append(f"{indent}    {out}.append({temp})")
            return f"({out} or None)"
        return f"{self.name(fn, 'f')}(r, base)"

    def helper(self, fn: Any) -> str:
        """A generated function of its own for `fn` (an array's item), emitted first."""
        outer, self.lines = self.lines, []
        value = self.expression(fn, "    ")
        self.counter += 1
        name = f"h{self.counter}"
        self.helpers += [f"def {name}(r, base):", *self.lines, f"    return {value}", ""]
        self.lines = outer
        return name

    def fill(self, out: str, items: list[tuple[str, Any]], indent: str) -> None:
        self.lines.append(f"{indent}{out} = {{}}")
        for key, fn in items:
            value = self.expression(fn, indent)
            if hasattr(fn, "constant") and fn.constant is not None:
                self.lines.append(f"{indent}{out}[{key!r}] = {value}")
                continue
            temp = self.temp()
            self.lines.append(f"{indent}{temp} = {value}")
            self.lines.append(f"{indent}if {temp} is not None:")
            self.lines.append(f"{indent}    {out}[{key!r}] = {temp}")


def specialise(
    id_fn: Any, items: list[tuple[str, Any]], resource: str, collection: str, slow: ToTmf
) -> ToTmf:
    """`slow`'s twin without per-attribute calls; `slow` still reports every failure."""
    writer = _Writer()
    writer.names.update(slow=slow, RESOURCE=resource, PREFIX=f"/{collection}/")
    body = "    "
    ident = writer.expression(id_fn, body)
    writer.lines.append(f"{body}ident = {ident}")
    writer.lines.append(f"{body}if ident is None:")
    writer.lines.append(f"{body}    return slow(r, base)")
    writer.lines.append(
        f'{body}o = {{"id": ident, "href": f"{{base}}{{PREFIX}}{{ident}}", "@type": RESOURCE}}'
    )
    for key, fn in items:
        value = writer.expression(fn, body)
        temp = writer.temp()
        writer.lines.append(f"{body}{temp} = {value}")
        writer.lines.append(f"{body}if {temp} is not None:")
        writer.lines.append(f"{body}    o[{key!r}] = {temp}")
    writer.lines.append(f"{body}return o")
    source = "\n".join([*writer.helpers, "def fast(r, base):", *writer.lines, ""])
    namespace: dict[str, Any] = dict(writer.names)
    exec(compile(source, f"<mapping {resource}>", "exec"), namespace)  # noqa: S102
    fast = namespace["fast"]

    def to_tmf(record: Record, base: str) -> dict[str, Any]:
        try:
            return fast(record, base)
        except Exception:  # the closure tree says what is wrong, and where
            return slow(record, base)

    to_tmf.source = source  # type: ignore[attr-defined]
    to_tmf.slow = slow  # type: ignore[attr-defined]
    return to_tmf
