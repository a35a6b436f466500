"""SOAP back ends through zeep's `AsyncClient` (httpx underneath).

The WSDL is loaded once at start-up; every operation has a timeout. zeep builds and
checks each request from the WSDL, while replies are read with lxml straight into flat
records, without building zeep objects per record (a large list reply would otherwise
spend most of its time there).

    backends:
      consumer: {kind: soap, wsdl: "http://host/billing.wsdl", timeout_seconds: 5}

    source:
      key: invoiceRef
      list:
        operation: ListInvoices
        request: {fromIndex: "{offset}", maxRecords: "{limit}"}
        records: invoice              # the element of each record in the reply
        total: totalCount             # the element with the count of all matches
        max_records: 200
        filters:                      # request elements that filter by equality
          customerRef: {element: customerRef}
          statusWord: {element: statusWord, multiple: true}
      get: {operation: GetInvoice, request: {invoiceRef: "{key}"}, not_found_fault: NotFound}
      update:
        operation: ChangeInvoiceStatus
        request:
          invoiceRef: "{key}"
          newStatus: "{statusWord}"
          expectedStatus: "{expected.statusWord}"     # compare-and-set
        result: result
        ok: OK
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx
import structlog
import zeep
from lxml import etree
from pydantic import Field
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

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
from adapters.session import Session, SessionOptions

if TYPE_CHECKING:
    from adapters.soap_query import SoapQuerySource

log = structlog.get_logger("adapters.soap")


class SoapOptions(HttpOptions):
    """`{kind: soap, wsdl}` plus the HTTP options.

    `wsdl_file` is a local copy of the WSDL, used when `wsdl` cannot be loaded at start-up;
    `address` the service's endpoint, instead of the one the WSDL names (a local copy's
    may not be the live one). Without a usable copy the WSDL is loaded again in the
    background, every `wsdl_retry_max_seconds` at most, while the back end is not ready.
    """

    kind: Literal["soap"] = "soap"
    wsdl: str
    wsdl_file: str | None = None
    address: str | None = Field(None, pattern=r"^https?://")
    wsdl_retry_max_seconds: float = Field(30.0, gt=0)
    #: Session login (adapters/session.py); a SOAP back end carries it in a SOAP header.
    session: SessionOptions | None = None


class SoapAdapter:
    Options: ClassVar[type[SoapOptions]] = SoapOptions

    def __init__(self, name: str, options: SoapOptions) -> None:
        self.name = name
        self.http = BackendHttp(name, options)
        self.wsdl = options.wsdl
        self.wsdl_file = options.wsdl_file
        self.address = options.address
        self.retry_max_seconds = options.wsdl_retry_max_seconds
        self.client: zeep.AsyncClient | None = None
        self._service: Any = None  # the proxy operations are called on, once loaded
        self._http_client: httpx.AsyncClient | None = None
        #: Operations the mappings name, checked when the WSDL arrives: (place, name).
        self._named: set[tuple[str, str]] = set()
        #: Why the back end cannot be used now (None once the WSDL is loaded and fits).
        self._unready: str | None = "WSDL not loaded"
        self._loader: asyncio.Task[None] | None = None
        self.session: Session | None = None
        if options.session is not None:
            if options.session.carry.soap_header is None:
                raise SourceSpecError(
                    "session.carry", "a SOAP back end carries its session in a soap_header"
                )
            self.session = Session(name, options.session, self._login)
            # Checked with the mappings' operations when the WSDL arrives.
            self._named.add(("session.login", options.session.login.operation))

    async def open(self) -> None:
        """Load the WSDL: from `wsdl`, else the local copy, else keep trying in the background.

        An unreachable SOAP service does not stop the gateway: its resources answer 503
        until the WSDL is loaded, and `/ready` tells it (`not_ready`).
        """
        self._http_client = self.http.async_client()
        try:
            self._loaded(await self._load(self.wsdl))
            return
        except BackendError as exc:
            log.warning("soap_wsdl_unavailable", backend=self.name, detail=exc.reason)
        if self.wsdl_file is not None:
            try:
                self._loaded(await self._load(self.wsdl_file))
            except BackendError:  # a bad local copy stops start-up
                await self.close()
                raise
            log.info("soap_wsdl_local_copy", backend=self.name, wsdl_file=self.wsdl_file)
            return
        self._loader = asyncio.create_task(self._keep_loading(), name=f"wsdl-{self.name}")

    async def _load(self, where: str) -> zeep.AsyncClient:
        """A zeep client for the WSDL at `where` (zeep loads synchronously: in a thread)."""
        assert self._http_client is not None
        http = self._http_client

        def load() -> zeep.AsyncClient:
            wsdl_client = self.http.sync_client()
            try:
                # zeep's own timeouts go unused: the clients carry the back end's.
                transport = AsyncTransport(client=http, wsdl_client=wsdl_client)
                return zeep.AsyncClient(
                    where, transport=transport, settings=zeep.Settings(raw_response=True)
                )
            finally:
                wsdl_client.close()  # the WSDL and its imports are loaded: only operations remain

        try:
            return await asyncio.to_thread(load)
        except Exception as exc:  # zeep raises many kinds for an unreachable or bad WSDL
            raise BackendError(f"back end {self.name!r}: cannot load WSDL: {exc}") from exc

    def _loaded(self, client: zeep.AsyncClient) -> None:
        """Use the client if it has every operation the mappings named; else say why not.

        Raises BackendError for a WSDL without a service to call.
        """
        service = _service(self.name, client, self.address)
        missing = sorted((place, op) for place, op in self._named if not _has(client, op))
        if missing:
            place, operation = missing[0]
            self._unready = "WSDL lacks an operation a mapping names"
            log.error("soap_wsdl_mismatch", backend=self.name, operation=operation, place=place)
            return
        self.client = client
        self._service = service
        self._unready = None

    async def _keep_loading(self) -> None:
        delay = 0.5
        while self._service is None and self._unready == "WSDL not loaded":
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_seconds)
            try:
                self._loaded(await self._load(self.wsdl))
            except BackendError as exc:
                log.info("soap_wsdl_retry", backend=self.name, detail=exc.reason, delay=delay)
                continue
            log.info("soap_wsdl_loaded", backend=self.name, ready=self._unready is None)

    def not_ready(self) -> str | None:
        """Why the back end cannot serve now (for `/ready`: no hosts, no paths), or None."""
        return self._unready

    async def close(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
            self._loader = None
        if self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None
        self.client = self._service = None

    async def bind(self, spec: Mapping[str, Any]) -> SoapSource | SoapQuerySource:
        """A source: `query:` for a query-language API (adapters/soap_query.py), else `list:`."""
        if "query" in spec:
            from adapters.soap_query import SoapQuerySource  # it builds on this module

            return SoapQuerySource(self, spec)
        return SoapSource(self, spec)

    def action(self, spec: Mapping[str, Any]) -> SoapAction:
        return SoapAction(self, spec)

    def _operation(self, name: Any, place: str) -> str:
        """An operation a mapping names; checked now, or when the WSDL arrives."""
        if not isinstance(name, str) or (self.client is not None and not _has(self.client, name)):
            raise SourceSpecError(place, f"no operation {name!r} in the WSDL of {self.name!r}")
        if self.client is None:
            self._named.add((place, name))
        return name

    async def call(self, operation: str, request: Mapping[str, Any]) -> etree._Element:
        """The reply's SOAP Body; a Fault becomes `SoapFault`, transport trouble BackendError.

        With a session configured, the call carries it, and a call refused for a stale
        session is repeated once after a new login (shared with concurrent callers).
        """
        session = self.session
        if session is None or operation == session.options.login.operation:
            return await self._call(operation, request, None)
        token = await session.token()
        try:
            return await self._call(operation, request, token)
        except SoapFault as fault:
            if not session.is_invalid(fault.code):
                raise
            log.info("soap_session_refused", backend=self.name, operation=operation)
        return await self._call(operation, request, await session.renewed(token))

    async def _login(self) -> str:
        """Log in (the session's declared call) and return the session id."""
        assert self.session is not None
        login = self.session.options.login
        body = await self._call(login.operation, login.request, None)
        token = _text(_find(body, login.result))
        if not token:
            raise BackendReplyError(
                f"back end {self.name!r}: {login.operation} reply has no {login.result!r}"
            )
        return token

    def _session_header(self, token: str) -> list[Any]:
        assert self.session is not None and self.client is not None
        place = self.session.options.carry.soap_header
        assert place is not None
        element = _schema_element(self.client, place.element)
        if element is None:
            raise SoapRequestRefused(self.name, "session", f"no element {place.element!r}")
        return [element(**{place.field: token})]

    async def _call(
        self, operation: str, request: Mapping[str, Any], token: str | None
    ) -> etree._Element:
        if self._service is None:
            raise SoapNotReady(self.name, operation, self._unready or "WSDL not loaded")
        try:
            built = {k: self._build(v) for k, v in request.items()}
            if token is not None:
                built["_soapheaders"] = self._session_header(token)
        except (zeep.exceptions.Error, TypeError, ValueError) as exc:
            raise SoapRequestRefused(self.name, operation, str(exc)) from exc
        try:
            async with self.http.call(operation):
                reply = await getattr(self._service, operation)(**built)
        except (zeep.exceptions.Error, TypeError, ValueError) as exc:
            # zeep builds the request before sending: a refusal is the mapping's mistake.
            raise SoapRequestRefused(self.name, operation, str(exc)) from exc
        try:
            envelope = etree.fromstring(reply.content)
        except etree.XMLSyntaxError as exc:
            if reply.status_code != 200:  # a proxy's or server's page: its status tells
                raise _status_failure(self.name, operation, reply) from exc
            raise BackendReplyError(
                f"back end {self.name!r}: {operation} reply is not XML"
            ) from exc
        body = _child(envelope, "Body")
        if body is None:
            if reply.status_code != 200:
                raise _status_failure(self.name, operation, reply)
            raise BackendReplyError(f"back end {self.name!r}: {operation} reply has no SOAP Body")
        fault = _child(body, "Fault")
        if fault is not None:
            raise SoapFault(
                self.name,
                _text(_find(fault, "code")) or _text(_child(fault, "faultcode")) or "",
                _text(_child(fault, "faultstring")) or "",
            )
        if reply.status_code != 200:
            raise _status_failure(self.name, operation, reply)
        return body

    def _build(self, value: Any) -> Any:
        """A request value with `{"@type": T, ...}` objects made typed (xsi:type) by zeep."""
        if isinstance(value, list):
            return [self._build(v) for v in value]
        if not isinstance(value, Mapping):
            return value
        fields = {k: self._build(v) for k, v in value.items() if k != "@type"}
        if "@type" not in value:
            return fields
        assert self.client is not None
        kind = _schema_type(self.client, str(value["@type"]))
        if kind is None:
            raise ValueError(f"the WSDL has no type {value['@type']!r}")
        return kind(**fields)

    def type_fields(self, name: str) -> frozenset[str] | None:
        """The element names of the WSDL's complex type `name` (inherited ones too).

        None while the WSDL is not loaded; SourceSpecError when it has no such type.
        """
        if self.client is None:
            return None
        kind = _schema_type(self.client, name)
        if kind is None or not hasattr(kind, "elements"):
            raise SourceSpecError("source", f"the WSDL of {self.name!r} has no type {name!r}")
        return frozenset(field for field, _ in kind.elements)

    def check_request(self, place: str, template: Any) -> None:
        """Start-up check of a request template's typed objects against the WSDL."""
        if isinstance(template, list):
            for item in template:
                self.check_request(place, item)
            return
        if not isinstance(template, Mapping):
            return
        if "@type" in template:
            known = self.type_fields(str(template["@type"]))
            unknown = sorted(set(template) - {"@type"} - (known or set(template)))
            if unknown:
                raise SourceSpecError(
                    place, f"type {template['@type']!r} has no field {unknown[0]!r} in the WSDL"
                )
        for value in template.values():
            self.check_request(place, value)


def _schema_type(client: zeep.AsyncClient, name: str) -> Any:
    """The WSDL's type of that local name (any namespace), or None."""
    for kind in client.wsdl.types.types:
        if kind.qname is not None and kind.qname.localname == name:
            return kind
    return None


def _schema_element(client: zeep.AsyncClient, name: str) -> Any:
    for element in client.wsdl.types.elements:
        if element.qname is not None and element.qname.localname == name:
            return element
    return None


def _has(client: zeep.AsyncClient, operation: str) -> bool:
    return hasattr(client.service, operation)


def _service(backend: str, client: zeep.AsyncClient, address: str | None) -> Any:
    """The client's first service, at `address` when one is configured."""
    services = list(client.wsdl.services.values())
    ports = list(services[0].ports.values()) if services else []
    if not ports:
        raise BackendError(f"back end {backend!r}: the WSDL defines no service port")
    if address is None:
        return client.service
    return AsyncServiceProxy(client, ports[0].binding, address=address)


def _status_failure(backend: str, operation: str, reply: httpx.Response) -> BackendError:
    return http_failure(backend, operation, reply.status_code, reply.headers.get("retry-after"))


class SoapNotReady(BackendError):
    """The WSDL is not loaded (yet): 503, and the caller is told why in a few words."""

    def __init__(self, backend: str, operation: str, why: str) -> None:
        #: What the caller's TMF Error may say of it (no hosts, no paths).
        self.summary = why
        super().__init__(f"back end {backend!r}: {operation}: {why}, not callable yet", status=503)


class SoapRequestRefused(BackendReplyError):
    """zeep refused to build a request (a field or type the WSDL lacks): a configuration
    error, never retried; an on-demand request ends at once with the reason."""

    def __init__(self, backend: str, operation: str, detail: str) -> None:
        text = " ".join(f"{operation} request does not fit the WSDL: {detail}".split())
        self.summary = text if len(text) <= 120 else text[:119] + "…"
        super().__init__(f"back end {backend!r}: {text}")


#: How much of a SOAP Fault's text a caller sees (the log has all of it).
FAULT_SUMMARY_CHARS = 120


class SoapFault(BackendError):
    """The service answered with a SOAP Fault: a 502 whose TMF Error quotes it, shortened."""

    def __init__(self, backend: str, code: str, message: str) -> None:
        self.code = code
        text = " ".join(f"SOAP fault {code}: {message}".split())  # one line
        if len(text) > FAULT_SUMMARY_CHARS:
            text = text[: FAULT_SUMMARY_CHARS - 1] + "…"
        #: What the caller's TMF Error may say of it.
        self.summary = text
        super().__init__(f"back end {backend!r}: SOAP fault {code}: {message}")


def _local(element: etree._Element) -> str:
    return str(element.tag).rpartition("}")[2]  # "{namespace}name" or "name"


def _child(element: etree._Element, name: str) -> etree._Element | None:
    return next((c for c in element if isinstance(c.tag, str) and _local(c) == name), None)


def _find(element: etree._Element, name: str) -> etree._Element | None:
    return next(element.iter(f"{{*}}{name}"), None)  # lxml matches any namespace in C


def _text(element: etree._Element | None) -> str | None:
    return None if element is None else (element.text or "")


def _record(element: etree._Element) -> Record:
    """A record element's children as a flat dict (nested elements as dotted names)."""
    out: Record = {}
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        name = tag.rpartition("}")[2]
        if len(child):
            out.update({f"{name}.{k}": v for k, v in _record(child).items()})
        else:
            out[name] = child.text
    return out


_WHOLE = re.compile(r"\{([\w.]+)\}")
_PLACEHOLDER = re.compile(r"\{([\w.]+)(?::(text|int|number))?\}")


def quoted_literal(text: str) -> str:
    """Text made safe inside a single-quoted query-language literal (`\\` and `'` escaped)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _typed_value(name: str, kind: str | None, value: Any) -> str:
    """A placeholder's value inside a string: text escaped, or a number checked as one."""
    if kind in ("int", "number"):
        text = str(value).strip()
        pattern = r"-?\d+" if kind == "int" else r"-?\d+(\.\d+)?"
        if isinstance(value, bool) or not re.fullmatch(pattern, text):
            raise ValueError(
                f"placeholder {name!r} takes {'an integer' if kind == 'int' else 'a number'}"
            )
        return text
    return quoted_literal(str(value))


def fill_text(template: str, values: Mapping[str, Any]) -> str:
    """A string template with `{name}` (escaped text), `{name:int}`, `{name:number}` filled.

    A placeholder without a value is a ValueError: a query with a hole would mean another.
    """

    def one(found: re.Match[str]) -> str:
        name, kind = found.group(1), found.group(2)
        if values.get(name) is None:
            raise ValueError(f"no value for placeholder {name!r}")
        return _typed_value(name, kind, values[name])

    return _PLACEHOLDER.sub(one, template)


def _fill(template: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A request from a template whose values may be `{placeholders}`.

    A whole-value placeholder passes the value as it is (and is left out when it has
    none); one inside a longer string is filled as text by `fill_text`. Nested objects
    (typed ones: `{"@type": Invoice, ...}`) and lists are filled alike.
    """
    out: dict[str, Any] = {}
    for key, value in template.items():
        filled = _fill_value(value, values)
        if filled is not _ABSENT:
            out[key] = filled
    return out


_ABSENT = object()


def _fill_value(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _WHOLE.fullmatch(value)
        if whole is not None:
            found = values.get(whole.group(1))
            return _ABSENT if found is None else found
        return fill_text(value, values) if "{" in value else value
    if isinstance(value, Mapping):
        return _fill(value, values)
    if isinstance(value, list):
        return [v for v in (_fill_value(item, values) for item in value) if v is not _ABSENT]
    return value


class SoapSource(KeyedSource):
    def __init__(self, adapter: SoapAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        listing = spec.get("list") or {}
        get = spec.get("get") or {}
        super().__init__(
            adapter.name, spec.get("key"), listing.get("filters"), name="element", has_get=bool(get)
        )
        self.list_operation = adapter._operation(listing.get("operation"), "source.list")
        self.list_request = dict(listing.get("request") or {})
        records_at, total_at = listing.get("records"), listing.get("total")
        for named in (records_at, total_at):
            if not isinstance(named, str) or not named:
                raise SourceSpecError("source.list", "name the records and total elements")
        self.records_at: str = str(records_at)
        self.total_at: str = str(total_at)
        self.max_records = int(listing.get("max_records", 200))
        self.get_operation = adapter._operation(get["operation"], "source.get") if get else None
        self.get_request = dict(get.get("request") or {})
        self.not_found = get.get("not_found_fault")
        self.update_spec = dict(spec.get("update") or {})
        if self.update_spec:
            adapter._operation(self.update_spec.get("operation"), "source.update")

    def can_sort(self, column: str) -> bool:
        return False  # the service lists in its own (stable) order

    async def _list(self, where: Predicate, offset: int, limit: int) -> tuple[list[Record], int]:
        params = self._params(where)
        if params is None:
            raise BackendError(f"back end {self.adapter.name!r}: filter not supported")
        # An element that takes several values gets a list, even of one.
        filters = {k: v if k in self.multiple else v[0] for k, v in params.items()}
        request = {**_fill(self.list_request, {"offset": offset, "limit": limit}), **filters}
        body = await self.adapter.call(self.list_operation, request)
        total = _text(_find(body, self.total_at))
        try:
            count = int(total or "")
        except ValueError:
            raise BackendError(
                f"back end {self.adapter.name!r}: no number at {self.total_at!r}"
            ) from None
        records = [_record(e) for e in body.iter(f"{{*}}{self.records_at}")]
        return records, count

    async def _list_page(self, plan: Plan) -> Page:
        wanted = plan.limit
        out: list[Record] = []
        offset = plan.offset
        while True:
            size = self.max_records if wanted is None else min(self.max_records, wanted - len(out))
            records, total = await self._list(plan.where, offset, max(size, 0))
            out.extend(records)
            offset += len(records)
            if not records or offset >= total or (wanted is not None and len(out) >= wanted):
                return Page(out, total)

    async def _get(self, key: Any) -> Record | None:
        assert self.get_operation is not None
        try:
            request = _fill(self.get_request, {"key": key})
            body = await self.adapter.call(self.get_operation, request)
        except SoapFault as fault:
            if fault.code == self.not_found:
                return None
            raise
        element = _find(body, self.records_at)
        if element is None:  # "not found" is the declared Fault; a reply without it is wrong
            raise BackendReplyError(
                f"back end {self.adapter.name!r}: {self.get_operation} reply has no"
                f" {self.records_at!r} element"
            )
        return _record(element)

    async def _list_stream(self, plan: Plan) -> AsyncIterator[list[Record]]:
        offset = 0
        while True:
            records, total = await self._list(plan.where, offset, self.max_records)
            if records:
                yield records
            offset += len(records)
            if not records or offset >= total:
                return

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        spec = self.update_spec
        key = self._update_key(where, bool(spec))
        names = {"key": key, **values, **{f"expected.{k}": v for k, v in expected.items()}}
        body = await self.adapter.call(spec["operation"], _fill(spec.get("request") or {}, names))
        outcome = _text(_find(body, spec.get("result", "result")))
        return 1 if outcome == spec.get("ok", "OK") else 0


class SoapAction:
    """A declared SOAP call: `check` when a request arrives, `run` to do the work.

    check: {operation: CheckCustomer, request: {customerRef: "{account_id}"},
            result: result, reject: {UNKNOWN: unknown billing account}}
    run: {operation: BillNow, request: {...}, result: result, ok: OK, value: invoiceRef,
          reject: {NOTHING_TO_BILL: nothing to bill}}
    """

    def __init__(self, adapter: SoapAdapter, spec: Mapping[str, Any]) -> None:
        self.adapter = adapter
        self.check_spec = spec.get("check")
        self.run_spec = spec.get("run")
        if not isinstance(self.run_spec, Mapping):
            raise SourceSpecError("run", "an action needs run: {operation, request, ...}")
        for place, part in (("check", self.check_spec), ("run", self.run_spec)):
            if part:
                adapter._operation(part.get("operation"), place)
                adapter.check_request(f"{place}.request", part.get("request") or {})

    async def _call(self, spec: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str, Any]:
        operation = spec["operation"]
        try:
            request = _fill(spec.get("request") or {}, params)
        except ValueError as exc:
            raise SoapRequestRefused(self.adapter.name, operation, str(exc)) from exc
        body = await self.adapter.call(operation, request)
        name = self.adapter.name
        # `result` may list several elements: the first present tells the outcome (an error
        # code when there is one, else the success flag).
        result = spec.get("result", "result")
        names = result if isinstance(result, list) else [result]
        outcome = next((t for t in (_text(_find(body, n)) for n in names) if t is not None), None)
        if outcome is None:
            raise BackendReplyError(f"back end {name!r}: {operation} reply has no {result!r}")
        rejected = (spec.get("reject") or {}).get(outcome)
        if rejected is not None:
            return "rejected", str(rejected)
        if "ok" in spec and outcome != spec["ok"]:
            raise BackendError(f"back end {name!r}: {operation}: {outcome}")
        if not spec.get("value"):
            return "done", outcome
        value = _text(_find(body, spec["value"]))
        if not value:  # "OK" without the bill it made: not the reply the mapping declares
            raise BackendReplyError(
                f"back end {name!r}: {operation} answered {outcome!r} without {spec['value']!r}"
            )
        return "done", value

    async def check(self, params: Mapping[str, Any]) -> str | None:
        if not self.check_spec:
            return None
        outcome, value = await self._call(self.check_spec, params)
        return value if outcome == "rejected" else None

    async def run(self, params: Mapping[str, Any]) -> ActionResult:
        assert self.run_spec is not None
        outcome, value = await self._call(self.run_spec, params)
        if outcome == "rejected":
            return ActionResult("rejected", None, value)
        return ActionResult("done", value)
