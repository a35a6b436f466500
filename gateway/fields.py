"""`fields=` projection: keep the asked attributes, and what makes each object valid.

`id`, `href` and `@type` are kept at every level, so a projected resource still says
what it is and nested references (`billingAccount`) keep their required `id`/`@type`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_ALWAYS = ("id", "href", "@type")

Tree = dict[str, "Tree | None"]


def compile_fields(paths: Iterable[str]) -> Tree:
    """A tree of the requested paths; a leaf (None) keeps the whole value."""
    tree: Tree = {}
    for path in paths:
        node = tree
        parts = path.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = None
            else:
                child = node.get(part, {})
                if child is None:  # the whole value is already kept
                    break
                node[part] = child
                node = child
    return tree


def project(value: Any, tree: Tree) -> Any:
    if isinstance(value, list):
        return [project(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in tree:
            sub = tree[key]
            out[key] = item if sub is None else project(item, sub)
        elif key in _ALWAYS:
            out[key] = item
    return out
