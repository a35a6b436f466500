"""What a mapping can produce, checked against what the OAS allows, at start-up.

Each compiled value knows the JSON types it can give (a transform's output, a constant's
own type) and, when they are a known few, every value (a code table, a constant, the
branches of a derived value). That is checked against the OAS attribute it fills: the
type and `format: date-time`, enum membership over the whole value range, and the
properties an object must carry (`@type`, `id`). A mapping that could serve
`"state": "sented"` or `"billNo": 65` does not start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from mappings import nodes
from mappings.transforms import json_type_of

#: JSON types an OAS type accepts ("date-time" is a string with that format).
_ACCEPTS: Final[Mapping[str, frozenset[str]]] = {
    "string": frozenset({"string", "date-time"}),
    "date-time": frozenset({"date-time"}),
    "number": frozenset({"number", "integer"}),
    "integer": frozenset({"integer"}),
    "boolean": frozenset({"boolean"}),
    "object": frozenset({"object"}),
}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_HINTS: Final[Mapping[tuple[str, str], str]] = {
    ("integer", "string"): ": use transform integer_text",
    ("number", "string"): ": use a template, or a text column",
    ("string", "date-time"): ": use transform date",
    ("string", "number"): ": use transform decimal (text) or minor_units (cents)",
}


class OasFacts(Protocol):
    """What gateway/oas.py's `AttributeTypes` says of a resource (read only here)."""

    @property
    def types(self) -> Mapping[str, str]: ...

    @property
    def in_array(self) -> frozenset[str]: ...

    @property
    def enums(self) -> Mapping[str, tuple[str, ...]]: ...

    @property
    def required(self) -> Mapping[str, frozenset[str]]: ...

    @property
    def variants(self) -> Mapping[str, Mapping[str, frozenset[str]]]: ...


@dataclass(frozen=True, slots=True)
class Range:
    """What a value can be: its JSON types ("any": cannot be said), and every value if known."""

    types: frozenset[str]
    values: tuple[Any, ...] | None

    def __or__(self, other: Range) -> Range:
        values = (
            None
            if self.values is None or other.values is None
            else tuple(dict.fromkeys((*self.values, *other.values)))
        )
        return Range(self.types | other.types, values)


NOTHING = Range(frozenset(), ())
ANYTHING = Range(frozenset({"any"}), None)


def const_range(value: Any) -> Range:
    """A constant's range; None gives nothing at all (the attribute is left out)."""
    if value is None:
        return NOTHING
    type_ = json_type_of(value)
    if type_ == "string" and _RFC3339.match(value):
        type_ = "date-time"
    return Range(frozenset({type_}), (value,))


def range_of(node: nodes.Node) -> Range:
    """The values a compiled node can give."""
    if isinstance(node, nodes.ConstNode):
        return const_range(node.value)
    if isinstance(node, nodes.TemplateNode):
        if node.transform is not None:  # the transform's values, as for a column
            return Range(frozenset({node.transform.json_type}), node.transform.values())
        return Range(frozenset({"string"}), None)
    if isinstance(node, nodes.ObjectNode):
        return Range(frozenset({"object"}), None)
    if isinstance(node, nodes.EachNode | nodes.ListNode):
        return Range(frozenset({"array"}), None)
    transform = node.transform
    literals = node.values if isinstance(node, nodes.DerivedNode) else None
    if literals is not None and transform.name == "identity" and transform.values() is None:
        # Literals served as they are (`case` of constants): exactly those values.
        ranges = [const_range(value) for value in literals]
        return Range(frozenset().union(*(r.types for r in ranges)), tuple(literals))
    return Range(frozenset({transform.json_type}), transform.values())


def leaf_problem(value_range: Range, path: str, facts: OasFacts) -> str | None:
    """Why a value with this range cannot fill the OAS attribute at `path` (None: it can)."""
    wanted = facts.types.get(path)
    if wanted is None:
        return None
    if wanted == "object" and value_range.types != {"any"}:  # a JSON document may be one
        return "is an object in the OAS: map its attributes"
    accepted = _ACCEPTS.get(wanted)
    if accepted is not None:
        for type_ in sorted(value_range.types - {"any"}):
            if type_ not in accepted:
                shown = "a date-time" if wanted == "date-time" else f"a {wanted}"
                hint = _HINTS.get((type_, wanted), "")
                return f"gives {type_} values, and the OAS wants {shown}{hint}"
    allowed = facts.enums.get(path)
    if allowed is None or not value_range.types:
        return None
    if value_range.values is None:
        return (
            f"the OAS allows only {', '.join(allowed)}: map it through an enum (or const,"
            " or cases of such values) so that every value it can take is known"
        )
    outside = outside_values(value_range, path, facts)
    if outside:
        return (
            f"gives {', '.join(repr(v) for v in outside)}, which the OAS does not allow"
            f" (allowed: {', '.join(allowed)})"
        )
    return None


def outside_values(value_range: Range, path: str, facts: OasFacts) -> list[Any]:
    """The values of a range the OAS enum at `path` does not allow."""
    allowed = facts.enums.get(path)
    if allowed is None or value_range.values is None:
        return []
    return [v for v in value_range.values if v not in allowed]


def object_problem(keys: Mapping[str, nodes.Node], path: str, facts: OasFacts) -> str | None:
    """Why an object with these attributes cannot stand at `path` (None: it can)."""
    wanted = facts.types.get(path)
    if wanted is not None and wanted != "object":
        return f"is a {wanted} in the OAS, not an object"
    required = facts.required.get(path, frozenset())
    variants = facts.variants.get(path)
    if variants:
        type_node = keys.get("@type")
        named = type_node.value if isinstance(type_node, nodes.ConstNode) else None
        if isinstance(named, str) and named in variants:
            required = variants[named]
        else:
            required = frozenset.intersection(*variants.values())
    produced = {
        k for k, v in keys.items() if not (isinstance(v, nodes.ConstNode) and v.value is None)
    }
    missing = sorted(required - produced)
    if missing:
        return f"the OAS requires {', '.join(missing)} in this object"
    return None


def is_document(node: nodes.Node) -> bool:
    """A value of any JSON shape (a JSON document kept whole), which may fill any attribute."""
    return range_of(node).types == {"any"} and not isinstance(node, nodes.ConstNode)


def is_array(path: str, facts: OasFacts) -> bool:
    """Whether the attribute at `path` is itself an array (not an attribute of its items)."""
    parent = path.rpartition(".")[0]
    return path in facts.in_array and (not parent or parent not in facts.in_array)
