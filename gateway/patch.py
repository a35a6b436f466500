"""The four PATCH formats of TMF630, applied to a resource document.

- `application/json` and `application/merge-patch+json`: RFC 7386 merge patch.
- `application/json-patch+json`: RFC 6902, applied all-or-nothing (python-json-patch).
- `application/json-patch-query+json`: TMF630 part 5, JSON Patch whose paths may carry
  selectors, `/state?state=new` (only when the bill is `new`) or
  `/taxItem?taxCategory=VAT/taxRate` (the elements whose `taxCategory` is `VAT`).

The result is a new document; the caller decides which of its changes may be written.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer
import orjson

from gateway.errors import ApiError
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


def parse_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid("Malformed JSON", f"The request body is not JSON: {exc}") from None


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
        return merge_patch(document, patch)
    errors = schema_errors("JsonPatchOperations", patch)
    if errors:
        raise invalid("Invalid JSON Patch", "; ".join(errors[:5]))
    if kind == JSON_PATCH_QUERY:
        patch = [op for operation in patch for op in _expand_operation(document, operation)]
    try:
        return jsonpatch.apply_patch(document, patch, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise ApiError(409, "Patch test failed", str(exc), code="PATCH_CONFLICT") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise invalid("Patch does not apply", str(exc)) from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
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
            f"No part of the resource matches {operation['path']!r}",
            code="PATCH_CONFLICT",
        )
    return [{**operation, "path": path} for path in paths]


def expand_query_path(document: Any, path: str) -> list[str]:
    """JSON Pointers selected by a path with `?attr=value[&attr=value]` selectors.

    A selector after an array's name keeps the elements that match it; after any other
    member it is a condition on the object holding that member.
    """
    if not path.startswith("/"):
        raise invalid("Invalid patch path", f"{path!r} must start with '/'")
    targets: list[tuple[str, Any]] = [("", document)]
    for segment in path[1:].split("/"):
        name, _, query = segment.partition("?")
        key = name.replace("~1", "/").replace("~0", "~")
        conditions = _conditions(query, path) if query else []
        selected: list[tuple[str, Any]] = []
        for pointer, node in targets:
            here = f"{pointer}/{name}"
            if isinstance(node, list):
                if key == "-" or (key.isdigit() and int(key) < len(node)):
                    selected.append((here, node[int(key)] if key != "-" else None))
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
            raise invalid("Invalid patch path", f"{path!r}: selector {term!r} is not attr=value")
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
