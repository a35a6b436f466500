"""`GET {API_PREFIX}/openapi.json` and `.yaml`: the TMF678 document this gateway implements.

The vendored TMF678 v5.0.0 OAS (gateway/spec/), unchanged but for `servers`, which names
this deployment's API root: `api.public_base_url` when set, else built from the request's
host like every `href` (so `api.allowed_hosts` bounds which roots can appear). The
document is rendered once at start-up (JSON and YAML); a root's bytes are that rendering
with the root put in, kept for the next call (a few roots at most, bounded).

Public, like `/health`: it is the published TMF standard plus the address the caller
already used, no customer data, and a client needs it before it has a token.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.oas import load_spec
from gateway.resources import API_PREFIX
from gateway.routes import BaseUrl

#: Distinct API roots whose rendering is kept (hosts beyond this are rendered again).
MAX_ROOTS = 16
#: Where the server URL goes in the renderings (a string the document holds nowhere else).
_STAND_IN = "tmf678-gateway-api-root-9f3c1e"
#: libyaml's emitter where PyYAML was built with it (3x faster), else PyYAML's own.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_HEADERS = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}


class ApiDescription:
    """The OAS rendered once, as JSON and YAML, with a stand-in for the server URL.

    A root's document is the rendering with the stand-in replaced by that root (quoted
    as a JSON string, which is a YAML double-quoted scalar too): a string replacement,
    not a new rendering, so no Host header can make the gateway render again.
    """

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        source = document if document is not None else load_spec()
        stand_in = {**source, "servers": [{"url": _STAND_IN}]}
        self._templates = {
            "json": orjson.dumps(stand_in),
            "yaml": yaml.dump(
                stand_in, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
            ).encode("utf-8"),
        }
        for kind, template in self._templates.items():
            assert template.count(_STAND_IN.encode()) == 1, kind
        self._rendered: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def render(self, root: str, kind: str) -> bytes:
        """The document for API root `root`, as `json` or `yaml` bytes."""
        key = (root, kind)
        found = self._rendered.get(key)
        if found is not None:
            self._rendered.move_to_end(key)
            return found
        template = self._templates[kind]
        quoted = orjson.dumps(root)
        if kind == "json":
            body = template.replace(orjson.dumps(_STAND_IN), quoted)
        else:
            body = template.replace(_STAND_IN.encode(), quoted)
        self._rendered[key] = body
        if len(self._rendered) > MAX_ROOTS * 2:
            self._rendered.popitem(last=False)
        return body


def api_description_routes(description: ApiDescription, base: BaseUrl) -> list[Route]:
    async def as_json(request: Request) -> Response:
        body = description.render(base(request), "json")
        return Response(body, media_type="application/json", headers=_HEADERS)

    async def as_yaml(request: Request) -> Response:
        body = description.render(base(request), "yaml")
        return Response(body, media_type="application/yaml", headers=_HEADERS)

    return [
        Route(f"{API_PREFIX}/openapi.json", as_json, methods=["GET"]),
        Route(f"{API_PREFIX}/openapi.yaml", as_yaml, methods=["GET"]),
    ]
