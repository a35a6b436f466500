"""Compile a YAML mapping spec into plain callables, once, at start-up.

A spec says, per TMF attribute, where its value comes from in a back-end record:

    resource: CustomerBill
    source: {table: INV_HDR, key: INV_ID, children: {taxes: {...}}}   # for the adapter
    attributes:
      id: {column: INV_ID, transform: integer_text}
      billNo: INV_NO                                   # shorthand for {column: INV_NO}
      billDate: {column: INV_DT, transform: {date: {format: "%Y%m%d", zone: Europe/Berlin}}}
      billingAccount:                                  # nested object
        "@type": {const: BillingAccountRef}
        id: ACCT_NO
      billCycle:
        when: RUN_ID                                   # omitted when RUN_ID is null
        id: {column: RUN_ID, transform: integer_text}
        href: {template: "{base}/billCycle/{RUN_ID}"}
      taxItem:                                         # array from child rows
        each: taxes
        where: {TAX_CD: {ne: NONE}}                    # (only the rows that meet it)
        item: {"@type": {const: TaxItem}, taxCategory: TAX_CD}
      billDocument:                                    # array built from columns
        list: [{"@type": {const: AttachmentRef}, id: ARCH_KEY}]
      amountDue:                                       # derived from child rows
        value: {sum: {rows: taxes, column: TAX_AMT}, transform: {minor_units: 2}}

Leaves are `column` (+ `transform`), `const`, `template`, `sum` of columns, or a derived
value (mappings/derived.py: aggregates, arithmetic, coalesce, case, `use` of a value
named under `values:`), each with an optional `transform` fitted to the column's kind.
A spec compiles to a tree of typed nodes (nodes.py), which fastpath.py writes out as one
generated function; every value is checked against the OAS as it is compiled
(oas_check.py). The compiled mapping also records, for each attribute read straight
from a column, the column and transform, and for each derived one its expression: what
query push-down reverses. docs/mappings.md is the reference.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.base import SourceColumns
from adapters.expressions import Expr
from adapters.kinds import KIND_NAMES, NUMERIC_KINDS, Kind, kind_of
from mappings import nodes
from mappings.derived import DERIVED_KEYS, ExpressionReader, known_values
from mappings.errors import MappingSpecError
from mappings.fastpath import FastPath, ToTmf, specialise
from mappings.loader import SpecMap, load_yaml
from mappings.oas_check import (
    OasFacts,
    is_array,
    is_document,
    leaf_problem,
    object_problem,
    outside_values,
    range_of,
)
from mappings.transforms import Transform, TransformArgError, build_transform

_LEAF_KEYS = frozenset({"column", "const", "template", "sum"}) | DERIVED_KEYS
#: The kind of a sum of numbers, from the widest of its terms down.
_WIDEST: tuple[Kind, ...] = ("float", "decimal", "integer")
_TOP_KEYS = frozenset({"resource", "source", "values", "attributes", "writes"})


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A TMF attribute read straight from one column: what push-down can reverse."""

    column: str
    transform: Transform


@dataclass(frozen=True, slots=True)
class ComputedRef:
    """A TMF attribute computed from the record: what push-down can ask a back end for."""

    expr: Expr
    transform: Transform


@dataclass(slots=True)
class CompiledMapping:
    resource: str
    collection: str
    file: str
    source_spec: Mapping[str, Any]
    #: Record to TMF resource: the generated function, which falls back on the node tree.
    to_tmf: ToTmf
    #: What `to_tmf` was made from: its source, and the node tree that reports failures.
    fast_path: FastPath
    fields: dict[str, FieldRef] = field(default_factory=dict)
    #: Attributes computed by an expression (outside arrays): pushed down when the back
    #: end can compute it too (`source.computed`).
    computed: dict[str, ComputedRef] = field(default_factory=dict)
    #: Every single-valued attribute (dotted path, outside arrays) the mapping can give.
    produced: frozenset[str] = frozenset()
    #: TMF attributes a write may change, each written to its column through its transform.
    writable: dict[str, FieldRef] = field(default_factory=dict)
    #: An attribute set to the current time on every write (a legacy "last change" column).
    stamp: FieldRef | None = None


def read_mapping(path: str | Path) -> SpecMap:
    """Load a mapping file and check its top-level shape."""
    spec = load_yaml(path)
    file = str(path)
    if not isinstance(spec, SpecMap):
        raise MappingSpecError(file, "", 1, "a mapping file is a YAML mapping")
    for key in spec:
        if key not in _TOP_KEYS:
            raise MappingSpecError(file, key, spec.line_of(key), "unknown top-level key")
    for key in ("resource", "attributes"):
        if key not in spec:
            raise MappingSpecError(file, key, spec.line, "missing")
    if not isinstance(spec["attributes"], SpecMap):
        raise MappingSpecError(file, "attributes", spec.line_of("attributes"), "not a mapping")
    return spec


def compile_mapping(
    spec: SpecMap,
    *,
    file: str,
    columns: SourceColumns | None = None,
    attribute_types: Mapping[str, str] | None = None,
    oas: OasFacts | None = None,
) -> CompiledMapping:
    """Compile a spec; every mistake raises `MappingSpecError` with file, place and line.

    `columns` (from the bound back-end source) lets unknown columns be caught now, not on
    the first request, and their kinds fit each transform; `attribute_types` (from the
    OAS) catches misspelt TMF attributes, and with it every value is checked against the
    OAS (`oas`, looked up by the resource's name when not given): types, enums, required.
    """
    resource = spec["resource"]
    if not isinstance(resource, str) or not resource:
        raise MappingSpecError(file, "resource", spec.line_of("resource"), "not a name")
    if oas is None and attribute_types is not None:
        oas = _oas_facts(resource)
    named = spec.get("values")
    if named is not None and not isinstance(named, SpecMap):
        raise MappingSpecError(file, "values", spec.line_of("values"), "a mapping of name: value")
    compiler = _Compiler(file, columns, attribute_types, oas, named)
    attributes: SpecMap = spec["attributes"]
    if "id" not in attributes:
        raise MappingSpecError(file, "attributes.id", attributes.line, "every resource needs id")
    for key in ("href", "@type"):
        if key in attributes:
            raise MappingSpecError(
                file, f"attributes.{key}", attributes.line_of(key), "set by the gateway itself"
            )
    ident = compiler.value(attributes["id"], "id", attributes.line_of("id"), scope=None)
    items = tuple(
        (key, compiler.value(value, key, attributes.line_of(key), scope=None))
        for key, value in attributes.items()
        if key != "id"
    )
    collection = resource[0].lower() + resource[1:]
    writable, stamp = _writes(spec, file, compiler.fields)
    tree = nodes.ResourceNode(
        resource, collection, ident, items, f"{file}:{attributes.line_of('id')}"
    )
    fast_path = specialise(tree)
    return CompiledMapping(
        resource=resource,
        collection=collection,
        file=file,
        source_spec=spec.get("source") or {},
        to_tmf=fast_path.to_tmf,
        fast_path=fast_path,
        fields=compiler.fields,
        computed=compiler.computed,
        produced=frozenset(compiler.produced),
        writable=writable,
        stamp=stamp,
    )


def _line(node: Any, default: int | None) -> int | None:
    """Where a value is written: its own line when it is a mapping, else `default`."""
    return node.line if isinstance(node, SpecMap) and node.line else default


def _oas_facts(resource: str) -> OasFacts | None:
    """What the OAS says of the resource's attributes (None for a schema it does not have)."""
    from gateway.oas import attribute_types  # the OAS document: a start-up-only import

    try:
        return attribute_types(resource)
    except KeyError:
        return None


def _writes(
    spec: SpecMap, file: str, fields: dict[str, FieldRef]
) -> tuple[dict[str, FieldRef], FieldRef | None]:
    """The `writes:` block: `{attributes: [state, billCycle.id], stamp: lastUpdate}`."""
    writes = spec.get("writes")
    if writes is None:
        return {}, None
    if not isinstance(writes, SpecMap) or set(writes) - {"attributes", "stamp"}:
        raise MappingSpecError(
            file, "writes", spec.line_of("writes"), "expected {attributes: [...], stamp: ...}"
        )
    paths = writes.get("attributes") or []
    if not isinstance(paths, list):
        raise MappingSpecError(file, "writes.attributes", writes.line_of("attributes"), "a list")
    writable = {}
    for path in paths:
        if path not in fields:
            raise MappingSpecError(
                file,
                "writes.attributes",
                writes.line_of("attributes"),
                f"{path!r} is not an attribute read straight from a column",
            )
        writable[path] = fields[path]
    stamp = writes.get("stamp")
    if stamp is not None and stamp not in fields:
        raise MappingSpecError(
            file, "writes.stamp", writes.line_of("stamp"), f"{stamp!r} is not a column attribute"
        )
    return writable, fields[stamp] if stamp is not None else None


def load_mapping(
    path: str | Path,
    *,
    columns: SourceColumns | None = None,
    attribute_types: Mapping[str, str] | None = None,
) -> CompiledMapping:
    return compile_mapping(
        read_mapping(path), file=str(path), columns=columns, attribute_types=attribute_types
    )


class _Compiler:
    def __init__(
        self,
        file: str,
        columns: SourceColumns | None,
        attribute_types: Mapping[str, str] | None,
        oas: OasFacts | None = None,
        named: SpecMap | None = None,
    ) -> None:
        self.file = file
        self.columns = columns
        self.types = attribute_types
        self.oas = oas
        self.fields: dict[str, FieldRef] = {}
        self.computed: dict[str, ComputedRef] = {}
        self.produced: set[str] = set()
        self.expressions = ExpressionReader(
            fail=self.fail,
            check_column=self.check_column,
            kind_of=lambda column, scope: kind_of(columns, column, scope),
            children=None if columns is None else frozenset(columns.children),
            named=named,
        )
        self.arrays = 0  # how deep in arrays the value being compiled is
        # Push-down is sound only for a column read once, outside arrays and outside an
        # object guarded by another column (the guard could hide a matching value).
        self.guards: list[str | None] = []

    def fail(self, place: str, line: int | None, reason: str) -> MappingSpecError:
        where = place if place.startswith("values.") else f"attributes.{place}"
        return MappingSpecError(self.file, where, line, reason)

    def where(self, line: int | None) -> str:
        return f"{self.file}:{line}" if line else self.file

    def bind(
        self, transform: Transform, kind: Kind | None, place: str, line: int | None
    ) -> Transform:
        """The transform fitted to the column's kind; a misfit stops start-up."""
        try:
            return transform.bind(kind)
        except TransformArgError as exc:
            raise self.fail(place, line, str(exc)) from None

    def check_column(self, column: Any, place: str, line: int | None, scope: str | None) -> str:
        if not isinstance(column, str) or not column:
            raise self.fail(place, line, f"column must be a name, not {column!r}")
        if self.columns is None:
            return column
        known = self.columns.record if scope is None else self.columns.children.get(scope)
        if known is not None and column not in known:
            where = "the source" if scope is None else f"child rows {scope!r}"
            raise self.fail(place, line, f"unknown column {column!r} in {where}")
        return column

    def check_attribute(self, path: str, line: int | None) -> None:
        if self.types is not None and path not in self.types:
            raise self.fail(path, line, "not an attribute of this resource in the TMF678 OAS")

    def value(
        self, node: Any, path: str, line: int | None, scope: str | None, item: bool = False
    ) -> nodes.Node:
        """The node for one value; `item`: it is an element of an array at `path`."""
        self.check_attribute(path, line)
        built: nodes.Node
        leaf_line: int | None = None  # where a leaf's value is said, for the OAS check
        if isinstance(node, str):
            shorthand = SpecMap(column=node)
            shorthand.line = line
            built, leaf_line = self.leaf(shorthand, path, line, scope, pushable=True)
        elif not isinstance(node, SpecMap):
            raise self.fail(path, line, f"expected a column name or a mapping, not {node!r}")
        elif node.keys() & _LEAF_KEYS:
            built, leaf_line = self.leaf(node, path, node.line or line, scope, pushable=True)
        elif "each" in node:
            built = self.children(node, path, scope)
        elif "list" in node:
            built = self.column_list(node, path, scope)
        else:
            wanted = self.oas.types.get(path) if self.oas is not None else None
            if wanted not in (None, "object"):
                raise self.fail(path, line, f"is a {wanted} in the OAS, not an object")
            built = self.obj(node, path, scope, line)
        if self.oas is not None and not item:
            array = isinstance(built, nodes.EachNode | nodes.ListNode)
            if is_array(path, self.oas) and not array and not is_document(built):
                raise self.fail(
                    path, line, "is an array in the OAS: use each (child rows) or list (columns)"
                )
            if array and not is_array(path, self.oas):
                raise self.fail(path, line, "is not an array in the OAS")
        nothing = isinstance(built, nodes.ConstNode) and built.value is None
        if leaf_line is not None and not self.arrays and scope is None and not nothing:
            self.produced.add(path)
        if self.oas is not None and leaf_line is not None:
            problem = leaf_problem(range_of(built), path, self.oas)
            if problem is not None:
                outside = outside_values(range_of(built), path, self.oas)
                if outside and isinstance(built, nodes.DerivedNode):  # name the branch
                    leaf_line = self.expressions.lines.get(outside[0], leaf_line)
                raise self.fail(path, leaf_line, problem)
        return built

    def leaf(
        self, node: SpecMap, path: str, line: int | None, scope: str | None, pushable: bool
    ) -> tuple[nodes.Node, int | None]:
        """A value read from the record, and the line its OAS check names when it fails."""
        kinds = node.keys() & _LEAF_KEYS
        if len(kinds) != 1:
            raise self.fail(path, line, f"a value has exactly one of {sorted(_LEAF_KEYS)}")
        allowed = {"transform"} | ({"else"} if "case" in kinds else set())
        allowed |= {"default"} if "sum" in kinds and isinstance(node.get("sum"), list) else set()
        extra = node.keys() - _LEAF_KEYS - allowed
        if extra:
            raise self.fail(path, line, f"unknown key(s) {sorted(extra)}")
        (kind,) = kinds
        if kind == "const":
            if "transform" in node:
                raise self.fail(path, node.line_of("transform"), "const takes no transform")
            return nodes.ConstNode(node["const"]), node.line_of("const")
        try:
            transform = build_transform(node.get("transform"))
        except TransformArgError as exc:
            raise self.fail(f"{path}.transform", node.line_of("transform"), str(exc)) from None
        where_line = node.line_of("transform") if "transform" in node else node.line_of(kind)
        if kind == "template":
            built = self.template(node["template"], path, node.line_of("template"), scope)
            if "transform" not in node:
                return built, node.line_of("template")
            transform = self.bind(transform, "text", path, where_line)
            return dataclasses.replace(built, transform=transform), where_line
        if kind in DERIVED_KEYS or (kind == "sum" and not isinstance(node["sum"], list)):
            return self.derived(node, path, scope, transform, where_line), where_line
        if kind == "sum":
            cols = node["sum"]
            if not isinstance(cols, list) or not cols:
                raise self.fail(path, node.line_of("sum"), "sum takes a list of columns")
            columns = tuple(self.check_column(c, path, node.line_of("sum"), scope) for c in cols)
            column_kinds = [kind_of(self.columns, c, scope) for c in columns]
            for column, column_kind in zip(columns, column_kinds, strict=True):
                if column_kind is not None and column_kind not in NUMERIC_KINDS:
                    raise self.fail(
                        path,
                        node.line_of("sum"),
                        f"sum of a non-number {column} (declared {KIND_NAMES[column_kind]})",
                    )
            widest = next((k for k in _WIDEST if k in column_kinds), None)
            if widest is None and type(transform) is Transform:
                widest = "decimal"  # text or numbers, summed exactly: served as a number
            transform = self.bind(transform, widest, path, where_line)
            default = self.sum_default(node, path)
            summed = nodes.SumNode(
                path,
                columns,
                transform,
                self.where(node.line_of("sum")),
                default,
                typed=None not in column_kinds,
            )
            return summed, where_line
        column = self.check_column(node["column"], path, node.line_of("column"), scope)
        transform = self.bind(transform, kind_of(self.columns, column, scope), path, where_line)
        read = nodes.ColumnNode(path, column, transform, self.where(node.line_of("column")))
        if pushable and scope is None and all(g == column for g in self.guards):
            self.fields[path] = FieldRef(column, transform)
        return read, where_line

    def sum_default(self, node: SpecMap, path: str) -> int | Decimal | None:
        """`default:` of a sum of columns: what a null (or absent) term counts as."""
        if "default" not in node:
            return None
        value = node["default"]
        line = node.line_of("default")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.fail(path, line, f"default of a sum must be a number, not {value!r}")
        try:
            return nodes.number_of(value)
        except ValueError:
            raise self.fail(
                path, line, f"default of a sum must be a number, not {value!r}"
            ) from None

    def derived(
        self,
        node: SpecMap,
        path: str,
        scope: str | None,
        transform: Transform,
        line: int | None,
    ) -> nodes.DerivedNode:
        """A value computed from columns and child rows (mappings/derived.py)."""
        expr, kind = self.expressions.leaf(node, path, scope)
        transform = self.bind(transform, kind, path, line)
        if scope is None and not self.guards:
            self.computed[path] = ComputedRef(expr, transform)
        return nodes.DerivedNode(path, expr, transform, known_values(expr), self.where(line))

    def template(
        self, text: Any, path: str, line: int | None, scope: str | None
    ) -> nodes.TemplateNode:
        if not isinstance(text, str):
            raise self.fail(path, line, "template must be a string")
        pieces: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise self.fail(path, line, f"bad template: {exc}") from None
        for literal, name, spec_, conv in parsed:
            if name is not None and (spec_ or conv):
                raise self.fail(path, line, "template fields take no format spec")
            if name is not None and name != "base":
                self.check_column(name, path, line, scope)
            pieces.append((literal, name))
        return nodes.TemplateNode(path, tuple(pieces), self.where(line))

    def obj(
        self, node: SpecMap, path: str, scope: str | None, line: int | None
    ) -> nodes.ObjectNode:
        when = node.get("when")
        condition = None
        if isinstance(when, SpecMap):  # a condition on values: nothing inside is pushed down
            place = f"{path}.when"
            condition = self.expressions.condition(when, place, node.line_of("when"), scope)
            when = None
            self.guards.append(None)
        elif when is not None:
            when = self.check_column(when, f"{path}.when", node.line_of("when"), scope)
            self.guards.append(when)
        items = tuple(
            (key, self.value(value, f"{path}.{key}", node.line_of(key), scope))
            for key, value in node.items()
            if key != "when"
        )
        if "when" in node:
            self.guards.pop()
        if not items:
            raise self.fail(path, node.line, "empty object")
        if self.oas is not None:
            problem = object_problem(dict(items), path, self.oas)
            if problem is not None:
                raise self.fail(path, line, problem)
        return nodes.ObjectNode(items, when, condition, path, self.where(node.line_of("when")))

    def children(self, node: SpecMap, path: str, scope: str | None) -> nodes.EachNode:
        extra = node.keys() - {"each", "item", "where"}
        if extra or "item" not in node:
            raise self.fail(
                path, node.line, "an array from child rows is {each: child, where: .., item: ..}"
            )
        child = node["each"]
        if scope is not None:
            raise self.fail(path, node.line_of("each"), "child rows cannot nest")
        if self.columns is not None and child not in self.columns.children:
            raise self.fail(path, node.line_of("each"), f"unknown child rows {child!r} in source")
        where = None
        if "where" in node:
            where = self.expressions.condition(
                node["where"], f"{path}.where", node.line_of("where"), child
            )
        self.arrays += 1
        item = self.value(node["item"], path, node.line_of("item"), scope=child, item=True)
        self.arrays -= 1
        return nodes.EachNode(path, child, item, self.where(node.line_of("each")), where)

    def column_list(self, node: SpecMap, path: str, scope: str | None) -> nodes.ListNode:
        elements = node["list"]
        if set(node) != {"list"} or not isinstance(elements, list) or not elements:
            raise self.fail(path, node.line, "an array from columns is {list: [item, ...]}")
        self.guards.append(None)  # nothing inside an array is pushed down
        self.arrays += 1
        values = tuple(
            self.value(element, path, _line(element, node.line_of("list")), scope, item=True)
            for element in elements
        )
        self.arrays -= 1
        self.guards.pop()
        return nodes.ListNode(values)
