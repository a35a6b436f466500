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
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Literal

import zeep
from lxml import etree
from zeep.transports import AsyncTransport

from adapters.backend_http import BackendHttp, HttpOptions
from adapters.base import ActionResult, BackendError, Page, Plan, Predicate, SourceSpecError
from adapters.keyed import KeyedSource, Record


class SoapOptions(HttpOptions):
    """`{kind: soap, wsdl}` plus the HTTP options."""

    kind: Literal["soap"] = "soap"
    wsdl: str


class SoapAdapter:
    Options: ClassVar[type[SoapOptions]] = SoapOptions

    def __init__(self, name: str, options: SoapOptions) -> None:
        self.name = name
        self.http = BackendHttp(name, options)
        self.wsdl = options.wsdl
        self.client: zeep.AsyncClient | None = None

    async def open(self) -> None:
        wsdl_client = self.http.sync_client()
        # zeep's own timeouts go unused: the clients carry the back end's.
        transport = AsyncTransport(client=self.http.async_client(), wsdl_client=wsdl_client)
        settings = zeep.Settings(raw_response=True)
        try:
            # Loading the WSDL is synchronous in zeep: keep it off the event loop.
            self.client = await asyncio.to_thread(
                zeep.AsyncClient, self.wsdl, transport=transport, settings=settings
            )
        except Exception as exc:  # zeep raises many kinds for an unreachable or bad WSDL
            await transport.aclose()
            raise BackendError(f"back end {self.name!r}: cannot load WSDL: {exc}") from exc
        finally:
            wsdl_client.close()  # the WSDL and its imports are loaded: only operations remain

    async def close(self) -> None:
        if self.client is not None:
            await self.client.transport.aclose()
            self.client = None

    async def bind(self, spec: Mapping[str, Any]) -> SoapSource:
        return SoapSource(self, spec)

    def action(self, spec: Mapping[str, Any]) -> SoapAction:
        return SoapAction(self, spec)

    def _operation(self, name: Any, place: str) -> str:
        assert self.client is not None
        if not isinstance(name, str) or not hasattr(self.client.service, name):
            raise SourceSpecError(place, f"no operation {name!r} in the WSDL of {self.name!r}")
        return name

    async def call(self, operation: str, request: Mapping[str, Any]) -> etree._Element:
        """The reply's SOAP Body; a Fault becomes `SoapFault`, transport trouble BackendError."""
        assert self.client is not None
        try:
            async with self.http.call(operation):
                reply = await getattr(self.client.service, operation)(**request)
        except (zeep.exceptions.Error, TypeError, ValueError) as exc:
            raise BackendError(f"back end {self.name!r}: {operation} request: {exc}") from exc
        try:
            envelope = etree.fromstring(reply.content)
        except etree.XMLSyntaxError as exc:
            raise BackendError(f"back end {self.name!r}: {operation} reply is not XML") from exc
        body = _child(envelope, "Body")
        if body is None:
            raise BackendError(f"back end {self.name!r}: {operation} reply has no SOAP Body")
        fault = _child(body, "Fault")
        if fault is not None:
            raise SoapFault(
                _text(_find(fault, "code")) or _text(_child(fault, "faultcode")) or "",
                _text(_child(fault, "faultstring")) or "",
            )
        if reply.status_code != 200:
            raise BackendError(f"back end {self.name!r}: {operation} answered {reply.status_code}")
        return body


class SoapFault(BackendError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"SOAP fault {code}: {message}")


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


def _fill(template: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A request from a template whose string values may be `{placeholders}`."""
    out: dict[str, Any] = {}
    for key, value in template.items():
        if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
            name = value[1:-1]
            if name in values and values[name] is not None:
                out[key] = values[name]
        else:
            out[key] = value
    return out


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
        return None if element is None else _record(element)

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

    async def _call(self, spec: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str, Any]:
        body = await self.adapter.call(spec["operation"], _fill(spec.get("request") or {}, params))
        outcome = _text(_find(body, spec.get("result", "result"))) or ""
        rejected = (spec.get("reject") or {}).get(outcome)
        if rejected is not None:
            return "rejected", str(rejected)
        if "ok" in spec and outcome != spec["ok"]:
            raise BackendError(f"back end {self.adapter.name!r}: {spec['operation']}: {outcome}")
        return "done", _text(_find(body, spec["value"])) if spec.get("value") else outcome

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
