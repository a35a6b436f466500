"""REST back ends through one pooled httpx `AsyncClient` per back end.

The back end's config block gives `base_url`, `auth`, limits, where its error bodies
hold their message (`error_message: error.message`), a call that proves the
credentials (`credentials_check: /v1/account`, made at start-up and by `/ready` while
it fails) and how many records a list without a count may be walked through
(`list_walk_budget`). A mapping's `source:` says where its records are:

    source:
      key: invoice_id
      list:
        path: /api/v1/invoices
        records: items                 # where the records are in the reply (dotted)
        total: total_items             # the reply's count of all matches, if it has one
        paging: {style: page, page: page, size: size, first: 1, max_size: 100}
                # or offset, next (a link) or cursor: adapters/rest_paging.py
        filters:                       # per field and operator: adapters/rest_query.py
          status: {param: status, multiple: true}    # several values, comma-separated
          created: {ranges: bracket}                  # created[gte]=...
        sort: {param: sort, columns: [issued_on, invoice_id], descending_prefix: "-"}
      get: {path: "/api/v1/invoices/{key}"}
      update: {method: PATCH, path: "/api/v1/invoices/{key}", expected_prefix: expected_}
      # or one call per target value of a field (adapters/rest_actions.py):
      # update: {transitions: {status: {paid: {method: POST, path: ".../{key}/pay"}}}}
      parent_fields: {tax_amounts: [currency]}   # child rows also get `^currency`

Records are flattened (`period.from` for `{"period": {"from": ...}}`) so mappings name
nested fields by dotted paths; lists of objects stay lists (child rows). A resource
may also be listed from arrays nested in another list's records (`nested:`, see
`NestedRestSource`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import lru_cache
from string import Formatter
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import orjson
import structlog
from pydantic import Field, field_validator

from adapters.backend_http import BackendHttp, HttpOptions
from adapters.base import (
    MATCH_ALL,
    ActionResult,
    AllOf,
    AnyOf,
    BackendError,
    BackendReplyError,
    Compare,
    Page,
    Plan,
    Predicate,
    QueryRefused,
    SourceSpecError,
    key_lookup,
)
from adapters.keyed import KeyedSource, Record
from adapters.rest_actions import Call, backend_message, reply_failure, steps_from_spec
from adapters.rest_paging import Paging, Walk, at_path
from adapters.rest_query import ListFilters
from adapters.rest_session import RestSessionOptions
from adapters.session import Grant, Session

log = structlog.get_logger("adapters.rest")


class RestOptions(HttpOptions):
    """`{kind: rest, base_url, auth, headers}` plus the HTTP options."""

    kind: Literal["rest"] = "rest"
    base_url: str = Field(pattern=r"^https?://")
    auth: dict[str, Any] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    #: Where the back end's error bodies hold their message (dotted), for logs and errors.
    error_message: str | None = None
    #: A GET that succeeds only with good credentials: made at start-up and by /ready.
    credentials_check: str | None = None
    #: Records a list without a count may be read through (to count it, to reach a deep
    #: offset); a longer list is refused with a 400.
    list_walk_budget: int = Field(10_000, gt=0)
    #: A login call whose token every call carries (adapters/rest_session.py).
    session: RestSessionOptions | None = None

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
        self.error_message = options.error_message
        self.walk_budget = options.list_walk_budget
        self._credentials_check = options.credentials_check
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()
        #: Why the back end cannot serve (its credentials were refused); None when it can.
        self._unready: str | None = None
        self._rechecking: asyncio.Task[None] | None = None
        self._last_check = 0.0
        self._session_spec = options.session
        self.session: Session | None = None
        if options.session is not None:
            self.session = Session(name, options.session.shared(), self._login)

    async def open(self) -> None:
        auth = None
        kind = self._auth_spec.get("type")
        if kind == "basic":
            auth = httpx.BasicAuth(self._auth_spec["username"], self._auth_spec["password"])
        elif kind == "header":
            self._headers[self._auth_spec["name"]] = self._auth_spec["value"]
        elif kind == "bearer":  # an API key sent as `Authorization: Bearer <key>`
            self._headers["Authorization"] = f"Bearer {self._auth_spec['token']}"
        elif kind not in (None, "oauth2_client_credentials"):
            raise BackendError(f"back end {self.name!r}: unknown auth type {kind!r}")
        self._client = self._http.async_client(
            base_url=self.base_url, auth=auth, headers=self._headers
        )
        await self.check_credentials()

    async def check_credentials(self) -> None:
        """Log in (with a session) and make the `credentials_check` call: a refusal
        (401/403) is logged and makes the back end not ready; a back end that cannot be
        reached is left to the breaker."""
        if self._credentials_check is None and self.session is None:
            return
        self._last_check = time.monotonic()
        if self.session is not None:
            try:
                await self.session.token()
            except LoginRefused as refused:
                self._unready = f"login refused ({refused.refused_status})"
                log.error(
                    "backend_login_refused",
                    backend=self.name,
                    status=refused.refused_status,
                    detail=refused.reason,
                )
                return
            except BackendError as exc:
                log.warning("backend_login_unchecked", backend=self.name, detail=exc.reason)
                return
        if self._credentials_check is None:
            self._accepted()
            return
        try:
            reply = await self.request("GET", self._credentials_check)
        except BackendError as exc:
            log.warning("backend_credentials_unchecked", backend=self.name, detail=exc.reason)
            return
        if reply.status_code in (401, 403):
            said = backend_message(reply, self.error_message)
            self._unready = f"credentials refused ({reply.status_code})"
            log.error(
                "backend_credentials_refused",
                backend=self.name,
                status=reply.status_code,
                detail=said,
            )
        else:
            self._accepted()

    def _accepted(self) -> None:
        if self._unready is not None:
            log.info("backend_credentials_accepted", backend=self.name)
        self._unready = None

    def not_ready(self) -> str | None:
        """Why `/ready` must say no; while credentials are refused, check again (at most
        every 5 s, in the background: a readiness probe does not wait on the back end)."""
        idle = self._rechecking is None or self._rechecking.done()
        if self._unready is not None and time.monotonic() - self._last_check > 5 and idle:
            self._rechecking = asyncio.create_task(self.check_credentials())
        return self._unready

    async def close(self) -> None:
        if self._rechecking is not None:
            self._rechecking.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def bind(self, spec: Mapping[str, Any]) -> RestSource | NestedRestSource:
        if "nested" in spec:
            return NestedRestSource(self, spec)
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
        if self.session is not None:
            return await self._with_session(method, path, **kwargs)
        token = await self._bearer()
        reply = await self._send(method, path, token=token, **kwargs)
        if reply.status_code == 401 and token is not None:
            reply = await self._send(method, path, token=await self._bearer(refresh=True), **kwargs)
        return reply

    async def _with_session(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The call carrying the session; a reply saying the session is stale logs in again
        (one login for all who saw it) and repeats the call once, never more."""
        assert self.session is not None and self._session_spec is not None
        session = self.session
        token = await session.token()
        reply = await self._send(method, path, carried=session.http_headers(token), **kwargs)
        if not self._session_spec.is_stale(reply):
            return reply
        log.info("rest_session_refused", backend=self.name, status=reply.status_code)
        fresh = await session.renewed(token)
        return await self._send(method, path, carried=session.http_headers(fresh), **kwargs)

    async def _login(self) -> Grant:
        """The declared login call: its token and, where the reply gives it, lifetime."""
        assert self._session_spec is not None
        spec = self._session_spec.login
        reply = await self._send(spec.method, spec.path, **self._session_spec.login_arguments())
        if reply.status_code in (401, 403):
            said = backend_message(reply, self.error_message)
            # Not ready until a login succeeds again (`not_ready` keeps trying).
            self._unready = f"login refused ({reply.status_code})"
            raise LoginRefused(self.name, reply.status_code, said)
        if not 200 <= reply.status_code < 300:
            raise self.failure(f"login: {spec.method} {spec.path}", reply)
        body = _json(self.name, reply)
        token = _at(body, spec.token)
        if not isinstance(token, str | int) or isinstance(token, bool) or token == "":
            raise BackendReplyError(
                f"back end {self.name!r}: no token at {spec.token!r} in the login reply"
            )
        lifetime: float | None = None
        if spec.expires_in is not None:
            given = _at(body, spec.expires_in)
            if not isinstance(given, int | float) or isinstance(given, bool) or given <= 0:
                raise BackendReplyError(
                    f"back end {self.name!r}: no lifetime at {spec.expires_in!r} in the login reply"
                )
            lifetime = float(given)
        return Grant(str(token), lifetime)

    async def _send(
        self,
        method: str,
        path: str,
        token: str | None = None,
        carried: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        if self._client is None:
            raise RuntimeError(f"back end {self.name!r} is not open")
        headers = dict(kwargs.pop("headers", None) or {})
        if carried:
            headers.update(carried)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self._http.call(f"{method} {path}"):
            reply = await self._client.request(method, path, headers=headers or None, **kwargs)
        return reply

    def failure(self, what: str, reply: httpx.Response) -> BackendError:
        """An unexpected reply as an error carrying the back end's own message."""
        return reply_failure(self.name, what, reply, self.error_message)


class LoginRefused(BackendReplyError):
    """The back end refused the session login's credentials (401/403): not worth retrying."""

    def __init__(self, backend: str, refused_status: int, said: str | None) -> None:
        super().__init__(
            f"back end {backend!r}: login refused ({refused_status})"
            + (f": {said}" if said else "")
        )
        self.refused_status = refused_status


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


_at = at_path


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


def with_parent_fields(record: Record, parent_fields: Mapping[str, Sequence[str]]) -> Record:
    """Each row of the child rows named gets the record's fields, as `^field`, so an
    array's items can read the enclosing record (a tax line's currency)."""
    for rows_name, fields in parent_fields.items():
        rows = record.get(rows_name)
        if isinstance(rows, list):
            inherited = {f"^{name}": record.get(name) for name in fields}
            for row in rows:
                if isinstance(row, dict):
                    row.update(inherited)
    return record


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


def _parent_fields(spec: Any) -> dict[str, tuple[str, ...]]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping) or not all(
        isinstance(v, list) and all(isinstance(f, str) for f in v) for v in spec.values()
    ):
        raise SourceSpecError("source.parent_fields", "a table of child rows: [field, ...]")
    return {str(k): tuple(v) for k, v in spec.items()}


_LIST_KEYS = {"path", "records", "total", "paging", "filters", "sort"}


class RestSource(KeyedSource):
    def __init__(self, adapter: RestAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        unknown = set(spec) - {"key", "list", "get", "update", "parent_fields"}
        if unknown:
            raise SourceSpecError("source", f"unknown key(s) {sorted(unknown)}")
        listing = spec.get("list") or {}
        self.get_path = (spec.get("get") or {}).get("path")
        super().__init__(
            adapter.name, spec.get("key"), None, name="param", has_get=self.get_path is not None
        )
        if "path" not in listing:
            raise SourceSpecError("source.list", "a list needs {path, records, paging}")
        unknown = set(listing) - _LIST_KEYS
        if unknown:
            raise SourceSpecError("source.list", f"unknown key(s) {sorted(unknown)}")
        self.list_filters = ListFilters(listing.get("filters"))
        self.list_path = listing["path"]
        self.records_at = listing.get("records")
        self.total_at = listing.get("total")
        # No paging block: `?page=N&size=M` (sizes are always sent, never the API's default).
        self.paging = Paging.from_spec(listing.get("paging") or {"style": "page", "size": "size"})
        self.max_size = self.paging.max_size
        self.sort = dict(listing.get("sort") or {})
        self.parent_fields = _parent_fields(spec.get("parent_fields"))
        self.updates = Updates(spec.get("update"))

    # What the API can take.

    def can_push(self, column: str, op: str) -> bool:
        if op == "eq" and column == self.key_column and self._has_get:
            return True
        return self.list_filters.can_push(column, op)

    def accepts(self, predicate: Predicate) -> bool:
        return self._by_key(predicate) or self.list_filters.query(predicate) is not None

    def can_sort(self, column: str) -> bool:
        return column in self.sort.get("columns", ())

    def check_writes(self, columns: Sequence[str]) -> str | None:
        """Why some writable column has no way to be written (None when all have one)."""
        return self.updates.missing(columns)

    def _sort_param(self, plan: Plan) -> dict[str, str]:
        if not plan.order_by or not self.sort:
            return {}
        prefix = self.sort.get("descending_prefix", "-")
        keys = [f"{prefix if k.descending else ''}{k.column}" for k in plan.order_by]
        if self.key_column not in [k.column for k in plan.order_by]:
            keys.append(self.key_column)
        return {self.sort["param"]: ",".join(keys)}

    def _plan_params(self, plan: Plan) -> dict[str, Any]:
        params = self.list_filters.query(plan.where)
        if params is None:
            raise BackendError(f"back end {self.adapter.name!r}: filter not supported")
        return {**params, **self._sort_param(plan)}

    # Reading.

    def record(self, raw: Mapping[str, Any]) -> Record:
        return with_parent_fields(flatten(raw), self.parent_fields)

    async def _fetch(self, url: str, params: dict[str, Any]) -> tuple[list[Record], Any]:
        reply = await self.adapter.request("GET", url, params=params)
        if reply.status_code != 200:
            raise self.adapter.failure(f"GET {url}", reply)
        body = _json(self.adapter.name, reply)
        records = _at(body, self.records_at)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise BackendError(
                f"back end {self.adapter.name!r}: no list of records at {self.records_at!r}"
            )
        return [self.record(r) for r in records], body

    def walk(self) -> Walk:
        """A walk through the list, within the back end's budget."""
        return Walk(
            self.adapter.name, self.paging, self._fetch, self.key_column, self.adapter.walk_budget
        )

    def _page_size(self, start: int, limit: int | None) -> int:
        """The smallest page size that serves `limit` records from `start` in one call.

        Page-numbered APIs can only start at a multiple of the size; without such a size
        (or without a limit) the largest pages keep the number of calls down.
        """
        if limit is None or limit <= 0:
            return self.max_size
        style = self.paging.style
        if style != "page":  # links and cursors start at record 0: big pages skip faster
            return min(limit, self.max_size) if style == "offset" or start == 0 else self.max_size
        for size in range(limit, self.max_size + 1):
            if start // size == (start + limit - 1) // size:
                return size
        return self.max_size

    def _total(self, body: Any) -> int:
        total = _at(body, self.total_at)
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise BackendReplyError(
                f"back end {self.adapter.name!r}: no total at {self.total_at!r}"
            )
        return total

    async def _list_page(self, plan: Plan) -> Page:
        """The window and the exact count: straight to the window where the API reports a
        total and can start anywhere; otherwise through the list from its first record."""
        params = self._plan_params(plan)
        wanted = plan.limit
        counted = self.total_at is not None
        # Without a count every record must be seen: the largest pages.
        size = self._page_size(plan.offset, wanted) if counted else self.max_size
        start = plan.offset if counted and self.paging.jumps else 0
        if self.paging.style == "page":
            start -= start % size
        skip = plan.offset - start
        out: list[Record] = []
        total: int | None = None
        async for records, body in self.walk().pages(self.list_path, params, start, size):
            if counted and total is None:
                total = self._total(body)
            out.extend(records)
            if total is not None and (
                (wanted is not None and len(out) >= skip + wanted) or start + len(out) >= total
            ):
                break
        if total is None:
            total = start + len(out)
        window = out[skip:]
        if wanted is not None:
            window = window[:wanted]
        due = max(0, total - plan.offset)
        if len(window) < (due if wanted is None else min(wanted, due)):
            raise BackendReplyError(
                f"back end {self.adapter.name!r}: its total says {total} records, its pages"
                f" held {start + len(out)}"
            )
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
            raise self.adapter.failure("GET one", reply)
        body = _json(self.adapter.name, reply)
        if not isinstance(body, dict):
            raise BackendError(f"back end {self.adapter.name!r}: a record is not an object")
        return self.record(body)

    async def _list_stream(self, plan: Plan) -> AsyncIterator[list[Record]]:
        async for records, _ in self.walk().pages(self.list_path, self._plan_params(plan)):
            if records:
                yield records

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        key = self._update_key(where, self.updates.configured)
        return await self.updates.run(self.adapter, key, values, expected)


def _request_id() -> str | None:
    """The id of the request being served (the gateway binds it to the log context)."""
    found = structlog.contextvars.get_contextvars().get("request_id")
    return found if isinstance(found, str) else None


class Updates:
    """How a record is written: one PATCH of the changed fields, and/or one declared call
    (or steps) per target value of a field (a state change as `/pay`, `/void`).

        update: {method: PATCH, path: "/items/{key}", expected_prefix: expected_}
        update:
          transitions:
            status:
              paid: {method: POST, path: "/v1/invoices/{key}/pay", encoding: form,
                     idempotency_key: "{request_id}-pay"}

    Values a call's templates may use: `key`, `value` (the new raw value), `request_id`.
    """

    def __init__(self, spec: Any) -> None:
        spec = dict(spec or {})
        unknown = set(spec) - {"method", "path", "expected_prefix", "transitions"}
        if unknown:
            raise SourceSpecError("source.update", f"unknown key(s) {sorted(unknown)}")
        self.path: str | None = spec.get("path")
        self.method = str(spec.get("method", "PATCH"))
        self.expected_prefix = str(spec.get("expected_prefix", "expected_"))
        self.transitions: dict[str, dict[Any, tuple[Call, ...]]] = {}
        for column, calls in (spec.get("transitions") or {}).items():
            place = f"source.update.transitions.{column}"
            if not isinstance(calls, Mapping) or not calls:
                raise SourceSpecError(place, "a table of value: call (or steps)")
            self.transitions[column] = {
                value: steps_from_spec(call, f"{place}.{value}") for value, call in calls.items()
            }

    @property
    def configured(self) -> bool:
        return self.path is not None or bool(self.transitions)

    def missing(self, columns: Sequence[str]) -> str | None:
        if self.path is not None:
            return None
        lacking = [c for c in columns if c not in self.transitions]
        if not lacking:
            return None
        return (
            f"no way to write {', '.join(sorted(lacking))}: give source.update a path, or"
            " transitions for it"
        )

    async def run(
        self,
        adapter: RestAdapter,
        key: Any,
        values: Mapping[str, Any],
        expected: Mapping[str, Any],
    ) -> int:
        if path_segment(key) is None:
            return 0  # no record has such a key
        rest = {c: v for c, v in values.items() if c not in self.transitions}
        for column, value in values.items():
            if column in self.transitions:
                written = await self._transition(adapter, key, column, value)
                if not written:
                    return 0
        if not rest and (values or self.path is None):
            return 1  # all written by transitions
        if self.path is None:
            raise BackendError(f"back end {adapter.name!r}: no update call for {sorted(rest)}")
        body = {**rest, **{f"{self.expected_prefix}{k}": v for k, v in expected.items()}}
        path = fill_path(self.path, {"key": key})
        if path is None:
            return 0  # no record has such a key
        reply = await adapter.request(self.method, path, json=body)
        if reply.status_code in (404, 409, 412) and _is_json(reply):
            return 0
        if not 200 <= reply.status_code < 300:
            raise adapter.failure("update", reply)
        return 1

    async def _transition(self, adapter: RestAdapter, key: Any, column: str, value: Any) -> int:
        steps = self.transitions[column].get(value)
        if steps is None:
            known = ", ".join(str(v) for v in self.transitions[column])
            raise QueryRefused(
                f"back end {adapter.name!r}: no call sets {column} to {value!r}",
                f"The back end cannot set this value (it can set: {known})",
                status=422,
                title="Change not supported",
            )
        # Outside a request (no id to repeat), a key of its own: never one shared by two.
        values = {"key": key, "value": value, "request_id": _request_id() or uuid.uuid4().hex}
        status, _ = await run_steps(adapter, steps, values, "update", refuse=True)
        if status == 404:
            return 0  # the record is gone: the gateway's re-read says so
        return 1


async def run_steps(
    adapter: RestAdapter,
    steps: Sequence[Call],
    values: Mapping[str, Any],
    what: str,
    *,
    refuse: bool = False,
) -> tuple[int, Any]:
    """Run declared calls in order, each step's `carry` feeding the next; (status, reply)
    of the last, or (status, reason) of a step the back end rejected as declared.

    With `refuse` (writes), a 4xx the back end explains (its error body) and no `reject`
    names is a refusal of the request (409 for the caller, with the back end's words);
    a 404 is returned."""
    carried = dict(values)
    status, body = 0, None
    for step in steps:
        path = fill_path(step.path, carried)
        if path is None:
            raise BackendError(
                f"back end {adapter.name!r}: {step.path}: a value cannot be a path segment"
            )
        method, path, kwargs = step.request(carried, path)
        reply = await adapter.request(method, path, **kwargs)
        status = reply.status_code
        rejected = step.reject.get(str(status))
        if rejected is not None:
            return status, rejected
        if status == 404 and _is_json(reply):
            return status, None
        if refuse and status in (400, 409, 422) and _is_json(reply):
            said = backend_message(reply, adapter.error_message)
            if said is not None:
                log.warning("backend_refused", backend=adapter.name, what=what, detail=said)
                raise QueryRefused(
                    f"back end {adapter.name!r}: {what} refused: {said}",
                    f"The billing back end {adapter.name!r} refused: {said[:160]}",
                    status=409,
                    title="Refused by the back end",
                )
        if not 200 <= status < 300:
            raise adapter.failure(f"{what}: {method} {step.path}", reply)
        body = _json(adapter.name, reply)
        for name, at in step.carry.items():
            found = _at(body, at)
            if found is None:
                raise BackendReplyError(
                    f"back end {adapter.name!r}: no {at!r} in the reply to {step.path}"
                )
            carried[name] = found
    return status, body


class NestedRestSource:
    """Records listed from arrays nested in another list's records (invoice lines as
    rates), each row with fields of its parent record:

        source:
          key: id
          nested:
            rows: lines.data                       # the array in each parent record
            parent_fields: {invoice: id, currency: currency}   # row field: parent field
            parent: {key: id, list: {...}, get: {path: "/v1/invoices/{key}"}}
          parent_fields: {tax_amounts: [currency]}    # a row's own child rows get `^currency`

    A filter on a parent field goes to the parent's list (its own filters); on the
    parent's key, to its `get`. Counting walks the parents, within the back end's
    budget; a look-up by the row's own key too.
    """

    columns = None

    def __init__(self, adapter: RestAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        unknown = set(spec) - {"key", "nested", "parent_fields"}
        if unknown:
            raise SourceSpecError("source", f"unknown key(s) {sorted(unknown)}")
        nested = spec["nested"]
        if not isinstance(nested, Mapping) or set(nested) - {"rows", "parent_fields", "parent"}:
            raise SourceSpecError("source.nested", "expected {rows, parent_fields, parent}")
        if not isinstance(spec.get("key"), str):
            raise SourceSpecError("source.key", "name the field that identifies a record")
        self.key_column: str = spec["key"]
        if not isinstance(nested.get("rows"), str):
            raise SourceSpecError("source.nested.rows", "name the array in the parent records")
        self.rows: str = nested["rows"]
        fields = nested.get("parent_fields") or {}
        if not isinstance(fields, Mapping):
            raise SourceSpecError("source.nested.parent_fields", "a table of field: parent field")
        self.parent_fields = {str(k): str(v) for k, v in fields.items()}
        if not isinstance(nested.get("parent"), Mapping):
            raise SourceSpecError("source.nested.parent", "the parent's {key, list, get}")
        self.parent = RestSource(adapter, nested["parent"])
        self.row_parent_fields = _parent_fields(spec.get("parent_fields"))
        by_parent_key = [c for c, p in self.parent_fields.items() if p == self.parent.key_column]
        self.parent_key_column = by_parent_key[0] if by_parent_key else None

    def _children(self, parent: Record) -> list[Record]:
        rows = parent.get(self.rows)
        if not isinstance(rows, list):
            raise BackendReplyError(
                f"back end {self.adapter.name!r}: no array {self.rows!r} in a parent record"
            )
        inherited = {c: parent.get(p) for c, p in self.parent_fields.items()}
        return [
            with_parent_fields({**row, **inherited}, self.row_parent_fields)
            for row in rows
            if isinstance(row, dict)
        ]

    def _on_parent(self, predicate: Predicate) -> Predicate | None:
        """The predicate on the parent's fields; None when it names a row's own field."""
        if isinstance(predicate, Compare):
            column = self.parent_fields.get(predicate.column)
            return None if column is None else Compare(column, predicate.op, predicate.value)
        if isinstance(predicate, AnyOf | AllOf):
            terms = [self._on_parent(t) for t in predicate.terms]
            if any(t is None for t in terms):
                return None
            kind = type(predicate)
            return kind(tuple(t for t in terms if t is not None))
        return None

    def can_push(self, column: str, op: str) -> bool:
        parent = self.parent_fields.get(column)
        if column == self.key_column and op == "eq":
            return True
        return parent is not None and self.parent.can_push(parent, op)

    def accepts(self, predicate: Predicate) -> bool:
        if key_lookup(predicate, self.key_column) is not None:
            return True
        on_parent = self._on_parent(predicate)
        return on_parent is not None and self.parent.accepts(on_parent)

    def can_sort(self, column: str) -> bool:
        return False

    def check_writes(self, columns: Sequence[str]) -> str | None:
        return "records nested in another list's records are read only"

    async def _matching(self, where: Predicate) -> AsyncIterator[list[Record]]:
        """Rows of the parents `where` selects (a look-up by key: the row itself)."""
        key = key_lookup(where, self.key_column)
        if key is not None:
            async for rows in self._matching(MATCH_ALL):
                found = [r for r in rows if r.get(self.key_column) == key]
                if found:
                    yield found
                    return
            return
        on_parent = self._on_parent(where)
        if on_parent is None:
            raise BackendError(f"back end {self.adapter.name!r}: filter not supported")
        async for parents in self.parent.stream(Plan(where=on_parent), self.parent.max_size):
            yield [row for parent in parents for row in self._children(parent)]

    async def page(self, plan: Plan) -> Page:
        rows: list[Record] = []
        async for batch in self._matching(plan.where):
            rows.extend(batch)
        window = rows[plan.offset :]
        return Page(window if plan.limit is None else window[: plan.limit], len(rows))

    async def one(self, where: Predicate) -> Record | None:
        async for rows in self._matching(where):
            if rows:
                return rows[0]
        return None

    async def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[Record]]:
        async for rows in self._matching(plan.where):
            if rows:
                yield rows

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        raise BackendError(f"back end {self.adapter.name!r}: nested records are read only")


class RestAction:
    """A declared REST call (or steps): `check` when a request arrives, `run` to do the work.

    check: {method: GET, path: "/api/v1/accounts/{account_id}", reject: {404: unknown account}}
    run: {method: POST, path: "/api/v1/accounts/{account_id}/bill-now",
          body: {reference: "{request_id}"}, result: invoice_id,
          reject: {422: nothing to bill}}
    run:                                   # steps: create, then finalize what was created
      - {method: POST, path: /v1/invoices, encoding: form, body: {customer: "{account_id}"},
         idempotency_key: "{request_id}-create", carry: {invoice: id}}
      - {method: POST, path: "/v1/invoices/{invoice}/finalize", encoding: form,
         idempotency_key: "{request_id}-finalize", result: id}
    """

    def __init__(self, adapter: RestAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        unknown = set(spec) - {"action", "check", "run"}
        if unknown:
            raise SourceSpecError("action", f"unknown key(s) {sorted(unknown)}")
        if not isinstance(spec.get("run"), Mapping | list):
            raise SourceSpecError("run", "an action needs run: {method, path, result}")
        self.check_steps = steps_from_spec(spec["check"], "check") if spec.get("check") else ()
        self.run_steps = steps_from_spec(spec["run"], "run")
        self.result_at = self.run_steps[-1].result

    async def check(self, params: Mapping[str, Any]) -> str | None:
        if not self.check_steps:
            return None
        _, outcome = await run_steps(self.adapter, self.check_steps, params, "check")
        return outcome if isinstance(outcome, str) else None

    async def run(self, params: Mapping[str, Any]) -> ActionResult:
        status, outcome = await run_steps(self.adapter, self.run_steps, params, "action")
        if isinstance(outcome, str):
            return ActionResult("rejected", None, outcome)
        if status == 404:
            raise BackendReplyError(f"back end {self.adapter.name!r}: the action answered 404")
        result = _at(outcome, self.result_at)
        if not isinstance(result, str | int) or isinstance(result, bool):
            raise BackendReplyError(
                f"back end {self.adapter.name!r}: no {self.result_at!r} in its reply"
            )
        return ActionResult("done", result)
