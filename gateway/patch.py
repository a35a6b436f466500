"""The four PATCH formats of TMF630, applied to a resource document.

- `application/json` and `application/merge-patch+json`: RFC 7386 merge patch.
- `application/json-patch+json`: RFC 6902, applied all-or-nothing (python-json-patch).
- `application/json-patch-query+json`: TMF630 part 5, JSON Patch whose paths may carry
  selectors, `/state?state=new` (only when the bill is `new`) or
  `/taxItem?taxCategory=VAT/taxRate` (the elements whose `taxCategory` is `VAT`).

The result is a new document; the caller decides which of its changes may be written.

Every JSON body is bounded before anything walks it (gateway/limits.py): its nesting
depth is checked iteratively right after parsing (merge patch, jsonschema and friends
recurse), a JSON Patch may hold so many operations, and its `copy` operations may
duplicate so many values (each one can double the document).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer
import orjson

from gateway.errors import ApiError, clip
from gateway.limits import Limits, current_limits
from gateway.oas import schema_errors

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
JSON_PATCH_QUERY = "application/json-patch-query+json"
PATCH_TYPES = (JSON, MERGE_PATCH, JSON_PATCH, JSON_PATCH_QUERY)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def invalid(reason: str, message: str) -> ApiError:
    return ApiError(400, reason, message, code="INVALID_BODY")


def parse_body(body: bytes, *, limits: Limits | None = None) -> Any:
    """The JSON document of a request body; 400 when malformed, too deep or too large."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid("Malformed JSON", f"The request body is not JSON: {clip(exc)}") from None
    limits = limits or current_limits()
    depth, nodes = json_shape(document, limits.json_depth, limits.json_nodes)
    if depth > limits.json_depth:
        raise invalid(
            "JSON nested too deep",
            f"The request body nests arrays and objects more than {limits.json_depth} levels",
        )
    if nodes > limits.json_nodes:
        raise invalid(
            "JSON too large",
            f"The request body holds more than {limits.json_nodes} JSON values",
        )
    return document


def json_shape(document: Any, max_depth: int, max_nodes: int) -> tuple[int, int]:
    """(nesting depth, number of values), walked without recursion and given up as soon as
    either passes its maximum (so any input costs at most `max_nodes` steps)."""
    depth, nodes = 0, 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, level = stack.pop()
        nodes += 1
        if isinstance(node, dict | list):
            depth = max(depth, level)
            if depth > max_depth or nodes + len(node) > max_nodes:
                return depth, nodes + len(node)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
        elif nodes > max_nodes:
            break
    return depth, nodes


def _count_nodes(value: Any, stop: int) -> int:
    """JSON values in `value` (itself included), counting no further than just past `stop`."""
    count, stack = 0, [value]
    while stack and count <= stop:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def apply_patch(document: dict[str, Any], body: bytes, content_type: str | None) -> dict[str, Any]:
    """The document after the patch; 400 for a bad patch, 409 when it does not apply."""
    kind = media_type(content_type)
    if kind not in PATCH_TYPES:
        raise ApiError(
            415,
            "Unsupported media type",
            f"PATCH takes {', '.join(PATCH_TYPES)}; got {kind or 'no Content-Type'}",
            code="UNSUPPORTED_MEDIA_TYPE",
        )
    patch = parse_body(body)
    if kind in (JSON, MERGE_PATCH):
        if not isinstance(patch, dict):
            raise invalid("Invalid patch", "A merge patch is a JSON object")
        return merge_object(document, patch)
    _check_operation_count(patch)
    errors = schema_errors("JsonPatchOperations", patch)
    if errors:
        raise invalid("Invalid JSON Patch", "; ".join(errors[:5]))
    if kind == JSON_PATCH_QUERY:
        patch = [op for operation in patch for op in _expand_operation(document, operation)]
        _check_operation_count(patch)
    try:
        result = _apply_json_patch(document, patch)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise ApiError(409, "Patch test failed", clip(exc), code="PATCH_CONFLICT") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise invalid("Patch does not apply", clip(exc)) from None
    if not isinstance(result, dict):  # e.g. `replace` at "" with a list
        raise invalid("Patch does not apply", "The patched resource must stay a JSON object")
    return result


def _check_operation_count(patch: Any) -> None:
    limit = current_limits().patch_operations
    if isinstance(patch, list) and len(patch) > limit:
        raise invalid(
            "Patch too large", f"A JSON Patch takes at most {limit} operations, not {len(patch)}"
        )


def _apply_json_patch(document: dict[str, Any], patch: list[dict[str, Any]]) -> Any:
    """RFC 6902, all or nothing, on a copy; `copy` operations share one budget of values."""
    budget = current_limits().patch_copied_nodes
    copied = 0
    result: Any = copy.deepcopy(document)
    for operation in patch:
        if operation["op"] == "copy":
            source = jsonpointer.resolve_pointer(result, operation["from"])
            copied += _count_nodes(source, budget - copied)
            if copied > budget:
                raise invalid(
                    "Patch too large",
                    f"The patch's copy operations duplicate more than {budget} values",
                )
        result = jsonpatch.apply_patch(result, [operation], in_place=True)
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    return merge_object(target, patch)


def merge_object(target: Any, patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that is an object: the result is always an object."""
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _expand_operation(document: dict[str, Any], operation: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON-Patch-Query operation as plain JSON Patch operations, one per selected node."""
    paths = expand_query_path(document, operation["path"])
    if not paths:
        raise ApiError(
            409,
            "Patch selector matched nothing",
            f"No part of the resource matches {clip(operation['path'])!r}",
            code="PATCH_CONFLICT",
        )
    return [{**operation, "path": path} for path in paths]


def expand_query_path(document: Any, path: str) -> list[str]:
    """JSON Pointers selected by a path with `?attr=value[&attr=value]` selectors.

    A selector after an array's name keeps the elements that match it; after any other
    member it is a condition on the object holding that member.
    """
    if not path.startswith("/"):
        raise invalid("Invalid patch path", f"{clip(path)!r} must start with '/'")
    targets: list[tuple[str, Any]] = [("", document)]
    for segment in path[1:].split("/"):
        name, _, query = segment.partition("?")
        key = name.replace("~1", "/").replace("~0", "~")
        conditions = _conditions(query, path) if query else []
        selected: list[tuple[str, Any]] = []
        for pointer, node in targets:
            here = f"{pointer}/{name}"
            if isinstance(node, list):
                if key == "-":
                    selected.append((here, None))
                elif not (key.isascii() and key.isdigit()):  # int() would take "²" or "٣"
                    raise invalid(
                        "Invalid patch path",
                        f"{clip(path)!r}: {clip(name)!r} is not an index of an array",
                    )
                elif len(key) <= len(str(len(node))) and int(key) < len(node):
                    selected.append((here, node[int(key)]))
                continue
            child = node.get(key) if isinstance(node, dict) else None
            if conditions and isinstance(child, list):
                selected.extend(
                    (f"{here}/{i}", item)
                    for i, item in enumerate(child)
                    if _matches(item, conditions)
                )
            elif not conditions or _matches(node, conditions):
                selected.append((here, child))
        targets = selected
    return [pointer for pointer, _ in targets]


def _conditions(query: str, path: str) -> list[tuple[list[str], str]]:
    conditions = []
    for term in query.split("&"):
        attr, sep, value = term.partition("=")
        if not sep or not attr:
            raise invalid(
                "Invalid patch path",
                f"{clip(path)!r}: selector {clip(term)!r} is not attr=value",
            )
        conditions.append((attr.split("."), value))
    return conditions


def _matches(node: Any, conditions: list[tuple[list[str], str]]) -> bool:
    for parts, wanted in conditions:
        value = node
        for part in parts:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or _as_text(value) != wanted:
            return False
    return True


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
