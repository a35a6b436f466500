"""The vendored TMF678 v5.0.0 OpenAPI document: schemas to validate against, attribute types.

The published file uses OAS 3.0 `discriminator`s that refer back to the schema holding
them; schema validators that follow them loop forever. `json_schema` rewrites the
components once into plain JSON Schema (2020-12): a self-referring discriminator is
dropped (it adds nothing), and a `oneOf` with a discriminator becomes "validate against
the schema that `@type` names", which is what the discriminator means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker

SPEC_PATH = Path(__file__).parent / "spec" / "TMF678-CustomerBill-v5.0.0.oas.yaml"
_REF = "#/components/schemas/"


@cache
def load_spec() -> dict[str, Any]:
    with SPEC_PATH.open(encoding="utf-8") as f:
        spec: dict[str, Any] = yaml.safe_load(f)
    return spec


def _rewrite(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite(v) for k, v in node.items() if k not in ("discriminator", "nullable")}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    discriminator = node.get("discriminator")
    if discriminator and "oneOf" in node:
        prop = discriminator["propertyName"]
        mapping = discriminator["mapping"]
        del out["oneOf"]
        out["required"] = [*out.get("required", []), prop]
        out["properties"] = {**out.get("properties", {}), prop: {"enum": list(mapping)}}
        out["allOf"] = [
            {"if": {"properties": {prop: {"const": name}}}, "then": {"$ref": ref}}
            for name, ref in mapping.items()
        ]
    return out


@cache
def _components() -> dict[str, Any]:
    components: dict[str, Any] = _rewrite(load_spec()["components"])
    return components


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_format_checker = FormatChecker(formats=())


@_format_checker.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("z", "Z"))
    return True


@cache
def validator(schema_name: str) -> Draft202012Validator:
    """A validator for one component schema (`CustomerBill`, `Error`, ...) of the OAS."""
    components = _components()
    if schema_name not in components["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in the TMF678 OAS")
    schema = {"$ref": _REF + schema_name, "components": components}
    return Draft202012Validator(schema, format_checker=_format_checker)


def schema_errors(schema_name: str, instance: Any) -> list[str]:
    """Every way `instance` breaks the schema, as readable one-liners (empty when valid)."""
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator(schema_name).iter_errors(instance)
    ]


@dataclass(frozen=True, slots=True)
class AttributeTypes:
    """What the OAS says of a resource's attributes: each path's type, and which are arrays."""

    types: Mapping[str, str]
    in_array: frozenset[str] = frozenset()
    #: The values an attribute may take: OAS enums, and the `@type`s a discriminator names.
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The properties each object must have, by its path ("" is the resource itself).
    required: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Objects that are one of several schemas: path -> `@type` -> that schema's required.
    variants: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)


@cache
def attribute_types(schema_name: str, max_depth: int = 4) -> AttributeTypes:
    """Dotted attribute paths of a resource and the type of each.

    Types are `string`, `date-time`, `number`, `integer`, `boolean`, `object`; a path
    through an array names the items' attributes (`taxItem.taxAmount.value`). This is
    what types filter values, and what says an attribute exists at all.
    """
    schemas = load_spec()["components"]["schemas"]
    types: dict[str, str] = {}
    in_array: set[str] = set()
    enums: dict[str, tuple[str, ...]] = {}
    required: dict[str, frozenset[str]] = {}
    variants: dict[str, dict[str, frozenset[str]]] = {}

    def resolved(schema: Mapping[str, Any]) -> Mapping[str, Any]:
        name = schema.get("$ref", "").removeprefix(_REF)
        found: Mapping[str, Any] = schemas.get(name, schema)
        return found

    def must_have(schema: Mapping[str, Any], seen: frozenset[str]) -> frozenset[str]:
        """Required properties through `$ref` and `allOf` (a `oneOf` depends on the variant)."""
        if "$ref" in schema:
            name = schema["$ref"].removeprefix(_REF)
            return frozenset() if name in seen else must_have(schemas[name], seen | {name})
        out = frozenset(schema.get("required", ()))
        for part in schema.get("allOf", ()):
            out |= must_have(part, seen)
        return out

    def describe(path: str, schema: Mapping[str, Any]) -> None:
        """What an object at `path` must hold: required keys, allowed `@type`s, variants."""
        target = resolved(schema)
        required[path] = must_have(schema, frozenset())
        mapping = (target.get("discriminator") or {}).get("mapping") or {}
        if mapping:
            enums[f"{path}.@type" if path else "@type"] = tuple(mapping)
        if "oneOf" in target and mapping:
            variants[path] = {
                name: must_have({"$ref": ref}, frozenset()) for name, ref in mapping.items()
            }

    def properties(schema: Mapping[str, Any], seen: frozenset[str]) -> dict[str, Any]:
        if "$ref" in schema:
            name = schema["$ref"].removeprefix(_REF)
            if name in seen:
                return {}
            return properties(schemas[name], seen | {name})
        props = dict(schema.get("properties", {}))
        for part in (*schema.get("allOf", ()), *schema.get("oneOf", ())):
            for key, value in properties(part, seen).items():
                # A subtype's `$ref` refines a base's bare `type: object` (Event.event).
                if key not in props or ("$ref" in value and "$ref" not in props[key]):
                    props[key] = value
        return props

    def kind(schema: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
        if schema.get("type") == "array":
            return kind(schema.get("items", {}))
        if "$ref" in schema or "allOf" in schema or "oneOf" in schema or "properties" in schema:
            target = resolved(schema)
            if "enum" in target:
                return "string", None
            return "object", schema
        if schema.get("format") == "date-time":
            return "date-time", None
        return schema.get("type", "string"), None

    def values(schema: Mapping[str, Any]) -> tuple[str, ...] | None:
        if schema.get("type") == "array":
            return values(schema.get("items", {}))
        listed = resolved(schema).get("enum")
        return tuple(listed) if listed else None

    def walk(
        schema: Mapping[str, Any], prefix: str, depth: int, seen: frozenset[str], array: bool
    ) -> None:
        for key, prop in properties(schema, seen).items():
            path = f"{prefix}{key}"
            type_, nested = kind(prop)
            types[path] = type_
            allowed = values(prop)
            if allowed is not None:
                enums[path] = allowed
            path_in_array = array or prop.get("type") == "array"
            if path_in_array:
                in_array.add(path)
            if nested is not None and depth < max_depth:
                describe(path, nested)
                walk(nested, f"{path}.", depth + 1, seen, path_in_array)

    root = {"$ref": _REF + schema_name}
    describe("", root)
    walk(root, "", 1, frozenset(), False)
    return AttributeTypes(types, frozenset(in_array), enums, required, variants)
