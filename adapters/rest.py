"""REST back ends through one pooled httpx `AsyncClient` per back end.

The back end's config block gives `base_url`, `auth` and limits; a mapping's `source:`
says where its records are:

    source:
      key: invoice_id
      list:
        path: /api/v1/invoices
        records: items                 # where the records are in the reply (dotted)
        total: total_items             # the reply's count of all matches
        paging: {style: page, page: page, size: size, first: 1, max_size: 100}
                # or {style: offset, offset: offset, limit: limit, max_size: 100}
                # or {style: next, next: links.next, size: per_page, max_size: 100}
        filters:                       # columns the API filters on by equality
          status: {param: status, multiple: true}    # several values, comma-separated
          account_id: {param: account_id}
        sort: {param: sort, columns: [issued_on, invoice_id], descending_prefix: "-"}
      get: {path: "/api/v1/invoices/{key}"}
      update: {method: PATCH, path: "/api/v1/invoices/{key}", expected_prefix: expected_}

Records are flattened (`period.from` for `{"period": {"from": ...}}`) so mappings name
nested fields by dotted paths; lists of objects stay lists (child rows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from string import Formatter
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import orjson
from pydantic import Field, field_validator

from adapters.backend_http import BackendHttp, HttpOptions
from adapters.base import (
    ActionResult,
    BackendError,
    BackendReplyError,
    Page,
    Plan,
    Predicate,
    SourceSpecError,
    http_failure,
)
from adapters.keyed import KeyedSource, Record


class RestOptions(HttpOptions):
    """`{kind: rest, base_url, auth, headers}` plus the HTTP options."""

    kind: Literal["rest"] = "rest"
    base_url: str = Field(pattern=r"^https?://")
    auth: dict[str, Any] | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _one_line_each(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} holds a line break")
        return headers


class RestAdapter:
    Options: ClassVar[type[RestOptions]] = RestOptions

    def __init__(self, name: str, options: RestOptions) -> None:
        self.name = name
        self._http = BackendHttp(name, options)
        self.base_url = options.base_url.rstrip("/")
        self._auth_spec = dict(options.auth or {})
        self._headers = dict(options.headers)
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()

    async def open(self) -> None:
        auth = None
        kind = self._auth_spec.get("type")
        if kind == "basic":
            auth = httpx.BasicAuth(self._auth_spec["username"], self._auth_spec["password"])
        elif kind == "header":
            self._headers[self._auth_spec["name"]] = self._auth_spec["value"]
        elif kind not in (None, "oauth2_client_credentials"):
            raise BackendError(f"back end {self.name!r}: unknown auth type {kind!r}")
        self._client = self._http.async_client(
            base_url=self.base_url, auth=auth, headers=self._headers
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def bind(self, spec: Mapping[str, Any]) -> RestSource:
        return RestSource(self, spec)

    def action(self, spec: Mapping[str, Any]) -> RestAction:
        return RestAction(self, spec)

    async def _bearer(self, refresh: bool = False) -> str | None:
        """An OAuth2 client-credentials token, cached until shortly before it expires."""
        if self._auth_spec.get("type") != "oauth2_client_credentials":
            return None
        async with self._token_lock:
            if not refresh and self._token and self._token[1] > time.monotonic():
                return self._token[0]
            spec = self._auth_spec
            reply = await self._send(
                "POST",
                spec["token_url"],
                data={
                    "grant_type": "client_credentials",
                    **({"scope": spec["scope"]} if spec.get("scope") else {}),
                },
                auth=httpx.BasicAuth(spec["client_id"], spec["client_secret"]),
            )
            if reply.status_code != 200:
                raise BackendError(f"back end {self.name!r}: token request got {reply.status_code}")
            body = _json(self.name, reply)
            lifetime = float(body.get("expires_in", 300))
            self._token = (
                body["access_token"],
                time.monotonic() + max(lifetime - 30, lifetime / 2),
            )
            return self._token[0]

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the back end, with auth; a 401 refreshes the token once."""
        token = await self._bearer()
        reply = await self._send(method, path, token=token, **kwargs)
        if reply.status_code == 401 and token is not None:
            reply = await self._send(method, path, token=await self._bearer(refresh=True), **kwargs)
        return reply

    async def _send(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        if self._client is None:
            raise RuntimeError(f"back end {self.name!r} is not open")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with self._http.call(f"{method} {path}"):
            reply = await self._client.request(method, path, headers=headers, **kwargs)
        return reply


def _failure(backend: str, what: str, reply: httpx.Response) -> BackendError:
    return http_failure(backend, what, reply.status_code, reply.headers.get("retry-after"))


def _is_json(reply: httpx.Response) -> bool:
    """Whether the reply is the API speaking (JSON), not a proxy's or server's HTML page."""
    kind = str(reply.headers.get("content-type", "")).split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _json(backend: str, reply: httpx.Response) -> Any:
    try:
        return orjson.loads(reply.content)
    except orjson.JSONDecodeError:
        raise BackendError(
            f"back end {backend!r}: reply to {reply.request.url.path} is not JSON"
        ) from None


def _at(document: Any, path: str | None) -> Any:
    if not path:
        return document
    for part in path.split("."):
        document = document.get(part) if isinstance(document, dict) else None
    return document


def flatten(record: Mapping[str, Any], prefix: str = "") -> Record:
    """`{"a": {"b": 1}}` as `{"a.b": 1}`; lists of objects stay lists of flat records."""
    out: Record = {}
    for key, value in record.items():
        name = prefix + key if prefix else key
        kind = type(value)
        if kind is dict:
            out.update(flatten(value, name + "."))
        elif kind is list:
            out[name] = [flatten(v) if type(v) is dict else v for v in value]
        else:
            out[name] = value
    return out


def path_segment(value: Any) -> str | None:
    """`value` percent-encoded as one URL path segment (`/`, `?`, `#` and `%` included);
    None for "", "." and "..", which no encoding keeps from changing the path."""
    text = str(value)
    return None if text in ("", ".", "..") else quote(text, safe="")


@lru_cache(maxsize=256)
def _placeholders(template: str) -> frozenset[str]:
    return frozenset(field for _, field, _, _ in Formatter().parse(template) if field is not None)


def fill_path(template: str, values: Mapping[str, Any]) -> str | None:
    """A path template (`/invoices/{key}`) with each value as one encoded segment; None
    when a value cannot be one."""
    segments = {name: path_segment(values[name]) for name in _placeholders(template)}
    if None in segments.values():
        return None
    return template.format_map(segments)


class RestSource(KeyedSource):
    def __init__(self, adapter: RestAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        unknown = set(spec) - {"key", "list", "get", "update"}
        if unknown:
            raise SourceSpecError("source", f"unknown key(s) {sorted(unknown)}")
        listing = spec.get("list") or {}
        self.get_path = (spec.get("get") or {}).get("path")
        has_get = self.get_path is not None
        super().__init__(
            adapter.name, spec.get("key"), listing.get("filters"), name="param", has_get=has_get
        )
        if "path" not in listing:
            raise SourceSpecError("source.list", "a list needs {path, records, paging}")
        self.list_path = listing["path"]
        self.records_at = listing.get("records")
        self.total_at = listing.get("total")
        self.paging = dict(listing.get("paging") or {"style": "page"})
        if self.paging.get("style") not in ("page", "offset", "next"):
            raise SourceSpecError("source.list.paging", "style is page, offset or next")
        if self.paging["style"] != "next" and not self.total_at:
            raise SourceSpecError("source.list.total", "page/offset paging needs the total")
        self.max_size = int(self.paging.get("max_size", 100))
        self.sort = dict(listing.get("sort") or {})
        self.update_spec = dict(spec.get("update") or {})

    # What the API can take (filters: KeyedSource).

    def can_sort(self, column: str) -> bool:
        return column in self.sort.get("columns", ())

    def _query(self, predicate: Predicate) -> dict[str, str] | None:
        """Query parameters for a filter: several values comma-separated."""
        params = self._params(predicate)
        if params is None:
            return None
        return {name: ",".join(str(v) for v in values) for name, values in params.items()}

    def _sort_param(self, plan: Plan) -> dict[str, str]:
        if not plan.order_by or not self.sort:
            return {}
        prefix = self.sort.get("descending_prefix", "-")
        keys = [f"{prefix if k.descending else ''}{k.column}" for k in plan.order_by]
        if self.key_column not in [k.column for k in plan.order_by]:
            keys.append(self.key_column)
        return {self.sort["param"]: ",".join(keys)}

    # Reading.

    async def _fetch(self, url: str, params: dict[str, Any]) -> tuple[list[Record], Any]:
        reply = await self.adapter.request("GET", url, params=params)
        if reply.status_code != 200:
            raise _failure(self.adapter.name, f"GET {url}", reply)
        body = _json(self.adapter.name, reply)
        records = _at(body, self.records_at)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise BackendError(
                f"back end {self.adapter.name!r}: no list of records at {self.records_at!r}"
            )
        return [flatten(r) for r in records], body

    def _page_size(self, start: int, limit: int | None) -> int:
        """The smallest page size that serves `limit` records from `start` in one call.

        Page-numbered APIs can only start at a multiple of the size; without such a size
        (or without a limit) the largest pages keep the number of calls down.
        """
        if limit is None or limit <= 0:
            return self.max_size
        style = self.paging["style"]
        if style != "page":  # next links always start at record 0: big pages skip faster
            return min(limit, self.max_size) if style == "offset" or start == 0 else self.max_size
        for size in range(limit, self.max_size + 1):
            if start // size == (start + limit - 1) // size:
                return size
        return self.max_size

    async def _pages(
        self, plan: Plan, start: int, size: int | None = None
    ) -> AsyncIterator[tuple[list[Record], Any]]:
        """Pages of `size` matches from record index `start` (rounded down to a page)."""
        params = self._query(plan.where)
        if params is None:
            raise BackendError(f"back end {self.adapter.name!r}: filter not supported")
        params.update(self._sort_param(plan))
        paging, size = self.paging, size or self.max_size
        if paging["style"] == "page":
            number = start // size
            while True:
                first = int(paging.get("first", 1))
                query = {
                    **params,
                    paging.get("page", "page"): number + first,
                    paging.get("size", "size"): size,
                }
                records, body = await self._fetch(self.list_path, query)
                yield records, body
                if len(records) < size:
                    return
                number += 1
        elif paging["style"] == "offset":
            offset = start
            while True:
                query = {
                    **params,
                    paging.get("offset", "offset"): offset,
                    paging.get("limit", "limit"): size,
                }
                records, body = await self._fetch(self.list_path, query)
                yield records, body
                if len(records) < size:
                    return
                offset += len(records)
        else:
            url: str | None = self.list_path
            query = {**params, **({paging["size"]: size} if paging.get("size") else {})}
            while url:
                records, body = await self._fetch(url, query)
                yield records, body
                url, query = _at(body, paging.get("next", "next")), {}

    def _skip(self, start: int, size: int) -> int:
        """Records of the first page that lie before `start`."""
        style = self.paging["style"]
        if style == "page":
            return start % size
        return 0 if style == "offset" else start

    async def _list_page(self, plan: Plan) -> Page:
        wanted = plan.limit
        size = self._page_size(plan.offset, wanted)
        skip = self._skip(plan.offset, size)
        out: list[Record] = []
        total = None
        seen = 0
        async for records, body in self._pages(plan, plan.offset, size):
            if total is None and self.total_at:
                total = _at(body, self.total_at)
                if not isinstance(total, int):
                    raise BackendError(
                        f"back end {self.adapter.name!r}: no total at {self.total_at!r}"
                    )
            seen += len(records)
            out.extend(records)
            if wanted is not None and len(out) - skip >= wanted and total is not None:
                break
        window = out[skip:]
        if wanted is not None:
            window = window[:wanted]
        if total is None:  # next-link paging: everything was read
            total = seen
        return Page(window, total)

    async def _get(self, key: Any) -> Record | None:
        assert self.get_path is not None
        path = fill_path(self.get_path, {"key": key})
        if path is None:
            return None  # no record can be addressed by such a key
        reply = await self.adapter.request("GET", path)
        if reply.status_code == 404 and _is_json(reply):
            return None  # the API's own "no such record" (an HTML 404 is a wrong route: 502)
        if reply.status_code != 200:
            raise _failure(self.adapter.name, "GET one", reply)
        body = _json(self.adapter.name, reply)
        if not isinstance(body, dict):
            raise BackendError(f"back end {self.adapter.name!r}: a record is not an object")
        return flatten(body)

    async def _list_stream(self, plan: Plan) -> AsyncIterator[list[Record]]:
        async for records, _ in self._pages(plan, 0):
            if records:
                yield records

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        spec = self.update_spec
        key = self._update_key(where, bool(spec))
        prefix = spec.get("expected_prefix", "expected_")
        body = {**values, **{f"{prefix}{k}": v for k, v in expected.items()}}
        path = fill_path(spec["path"], {"key": key})
        if path is None:
            return 0  # no record has such a key
        reply = await self.adapter.request(spec.get("method", "PATCH"), path, json=body)
        if reply.status_code in (404, 409, 412) and _is_json(reply):
            return 0
        if not 200 <= reply.status_code < 300:
            raise _failure(self.adapter.name, "update", reply)
        return 1


class RestAction:
    """A declared REST call: `check` when a request arrives, `run` to do the work.

    check: {method: GET, path: "/api/v1/accounts/{account_id}", reject: {404: unknown account}}
    run: {method: POST, path: "/api/v1/accounts/{account_id}/bill-now",
          body: {reference: "{request_id}"}, result: invoice_id,
          reject: {422: nothing to bill}}
    """

    def __init__(self, adapter: RestAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        unknown = set(spec) - {"action", "check", "run"}
        if unknown:
            raise SourceSpecError("action", f"unknown key(s) {sorted(unknown)}")
        if not isinstance(spec.get("run"), Mapping) or "path" not in spec["run"]:
            raise SourceSpecError("run", "an action needs run: {method, path, result}")
        self.check_spec = spec.get("check")
        self.run_spec = spec["run"]

    async def _call(self, spec: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[int, Any]:
        body = spec.get("body")
        if isinstance(body, Mapping):
            body = {k: str(v).format(**params) for k, v in body.items()}
        path = fill_path(spec["path"], params)
        if path is None:
            raise BackendError(
                f"back end {self.adapter.name!r}: {spec['path']}: a value cannot be a path segment"
            )
        reply = await self.adapter.request(spec.get("method", "GET"), path, json=body)
        rejected = (spec.get("reject") or {}).get(str(reply.status_code))
        if rejected is not None:
            return reply.status_code, str(rejected)
        if not 200 <= reply.status_code < 300:
            raise _failure(self.adapter.name, str(spec["path"]), reply)
        return reply.status_code, _json(self.adapter.name, reply)

    async def check(self, params: Mapping[str, Any]) -> str | None:
        if not self.check_spec:
            return None
        _, outcome = await self._call(self.check_spec, params)
        return outcome if isinstance(outcome, str) else None

    async def run(self, params: Mapping[str, Any]) -> ActionResult:
        _, outcome = await self._call(self.run_spec, params)
        if isinstance(outcome, str):
            return ActionResult("rejected", None, outcome)
        result = _at(outcome, self.run_spec.get("result"))
        if not isinstance(result, str | int) or isinstance(result, bool):
            raise BackendReplyError(
                f"back end {self.adapter.name!r}: no {self.run_spec.get('result')!r} in its reply"
            )
        return ActionResult("done", result)
