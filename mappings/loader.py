"""YAML loading that remembers where each key was written, for start-up error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mappings.errors import MappingSpecError


class SpecMap(dict[str, Any]):
    """A YAML mapping that also knows the line of each of its keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line: int | None = None
        self.key_lines: dict[str, int] = {}

    def line_of(self, key: str) -> int | None:
        return self.key_lines.get(key, self.line)

    def line_at(self, place: str) -> int | None:
        """The line of a dotted place (`source.children.taxes.table`), or of the deepest
        mapping on the way to it (`[n]` list indexes are skipped)."""
        node: Any = self
        line = self.line
        for part in place.split("."):
            key = part.split("[")[0]
            if not isinstance(node, SpecMap) or key not in node:
                break
            line = node.line_of(key)
            node = node[key]
        return line


class _LocatingLoader(yaml.SafeLoader):
    """Safe YAML whose mappings remember their lines, and whose booleans are only true/false.

    YAML 1.1 reads `NO`, `ON`, `Y`-like words as booleans; legacy column names and code
    values are exactly such words, so only `true`/`false` are booleans here (as in YAML 1.2).
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_spec_map(self, node: yaml.MappingNode) -> SpecMap:
        """Every mapping of the document, as a `SpecMap` (plain dicts forget their lines)."""
        result = SpecMap()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise MappingSpecError(
                    self.name, "", key_node.start_mark.line + 1, f"key {key!r} is not a string"
                )
            if key in result:
                raise MappingSpecError(
                    self.name, key, key_node.start_mark.line + 1, "duplicate key"
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


_LocatingLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_LocatingLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LocatingLoader.construct_spec_map
)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file into plain data whose mappings are `SpecMap`s.

    Syntax errors become `MappingSpecError` with the file and line, so a typo in a
    mapping or config file stops start-up with a message an integrator can act on.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingSpecError(str(path), "", None, f"cannot read file: {exc.strerror}") from exc
    loader = _LocatingLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise MappingSpecError(str(path), "", line, f"invalid YAML: {exc.problem}") from exc
    finally:
        loader.dispose()
