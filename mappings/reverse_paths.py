"""Where the values of an attribute inside arrays or guarded objects come from.

The compiler records, for push-down, the attributes read straight from one column
(`CompiledMapping.fields`). Values inside an array (`taxItem.taxCategory` from child
rows, `billDocument.name` from a template in a list) or under an object shown only when
another column has a value (`billCycle.@type` under `when: RUN_ID`) are not there; this
module finds them in the compiled node tree, each with what must hold for it to exist,
so push-down can ask the back end for them too (gateway/reverse_nested.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.expressions import Condition
from mappings.nodes import (
    ColumnNode,
    ConstNode,
    DerivedNode,
    EachNode,
    ListNode,
    Node,
    ObjectNode,
    ResourceNode,
    SumNode,
    TemplateNode,
)

Leaf = ColumnNode | ConstNode | TemplateNode


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One place a path's values come from.

    `guards`: columns (of the record, or of the child row when `child` is set) that must
    hold a value for this one to be given; `child`/`where`: the child rows it is read
    from, and the array's own condition on them.
    """

    leaf: Leaf
    guards: tuple[str, ...] = ()
    child: str | None = None
    where: Condition | None = None


#: Per path, every place its values come from; None when one of them cannot be reversed
#: (a value computed in Python, an object shown under a condition on values).
Occurrences = Mapping[str, tuple[Occurrence, ...] | None]

_cache: dict[int, tuple[ResourceNode, Occurrences]] = {}


def occurrences(tree: ResourceNode) -> Occurrences:
    """Every attribute path's occurrences in a compiled mapping (computed once per tree)."""
    cached = _cache.get(id(tree))
    if cached is not None and cached[0] is tree:
        return cached[1]
    found: dict[str, list[Occurrence] | None] = {}
    _Walker(found).visit(tree.ident, "id", (), None, None, True)
    for key, node in tree.items:
        _Walker(found).visit(node, key, (), None, None, True)
    result = {path: None if occ is None else tuple(occ) for path, occ in found.items()}
    _cache[id(tree)] = (tree, result)
    return result


class _Walker:
    def __init__(self, found: dict[str, list[Occurrence] | None]) -> None:
        self.found = found

    def visit(
        self,
        node: Node,
        path: str,
        guards: tuple[str, ...],
        child: str | None,
        where: Condition | None,
        reversible: bool,
    ) -> None:
        if isinstance(node, TemplateNode) and node.transform is not None:
            self._add(path, None)  # a transformed template: filtered by the gateway
        elif isinstance(node, ColumnNode | ConstNode | TemplateNode):
            self._add(path, Occurrence(node, guards, child, where) if reversible else None)
        elif isinstance(node, SumNode | DerivedNode):
            self._add(path, None)
        elif isinstance(node, ObjectNode):
            inner = guards if node.when is None else (*guards, node.when)
            ok = reversible and node.condition is None
            for key, item in node.items:
                self.visit(item, f"{path}.{key}", inner, child, where, ok)
        elif isinstance(node, EachNode):
            ok = reversible and child is None and not guards
            self.visit(node.item, path, (), node.child, node.where, ok)
        elif isinstance(node, ListNode):
            for element in node.elements:
                self.visit(element, path, guards, child, where, reversible)

    def _add(self, path: str, occurrence: Occurrence | None) -> None:
        if path in self.found and self.found[path] is None:
            return
        if occurrence is None:
            self.found[path] = None
            return
        self.found.setdefault(path, [])
        listed = self.found[path]
        assert listed is not None
        listed.append(occurrence)
