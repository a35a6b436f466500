"""A SOAP billing platform for consumer accounts, for tests and the demo.

A real SOAP 1.1 document/literal service with a WSDL (`wsdl/consumer_billing.wsdl`):
invoices with status words (DRAFT, HELD, CHECKED, DISPATCHED, CLEARED, PARTIAL), their
charge lines, and the monthly bill cycles; amounts as decimal strings and dates as
`yyyyMMdd`. Unknown records are SOAP Faults. `FindInvoiceByReference` tells which invoice
a `BillNow` with that reference made, for a caller whose answer was lost.

    python -m simulators.soap_billing --port 8702      # WSDL at /billing.wsdl
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import uvicorn
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

NS = "urn:example:consumer-billing:v2"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSDL = Path(__file__).parent / "wsdl" / "consumer_billing.wsdl"
STATUS_WORDS = ("DRAFT", "HELD", "CHECKED", "DISPATCHED", "CLEARED", "PARTIAL")
FIELDS = (
    "invoiceRef",
    "customerRef",
    "invoiceDate",
    "dueDate",
    "periodStart",
    "periodEnd",
    "statusWord",
    "netAmount",
    "taxAmount",
    "grossAmount",
    "openAmount",
    "currency",
    "runKind",
    "lastChanged",
)
CHARGE_FIELDS = (
    "chargeRef",
    "customerRef",
    "invoiceRef",
    "billedFlag",
    "chargeType",
    "chargeName",
    "chargeText",
    "postedAt",
    "serviceFrom",
    "serviceTo",
    "netAmount",
    "taxCode",
    "taxRate",
    "taxAmount",
    "grossAmount",
    "currency",
    "productRef",
)
CYCLE_FIELDS = (
    "cycleRef",
    "cycleCode",
    "cycleText",
    "periodLabel",
    "periodStart",
    "periodEnd",
    "billDate",
    "mailDate",
    "debitDate",
    "creditCutOff",
    "dueDate",
    "scheduleCode",
)


@dataclass
class ConsumerData:
    customers: set[str] = field(default_factory=set)
    invoices: dict[str, dict[str, str]] = field(default_factory=dict)
    charges: dict[str, dict[str, str]] = field(default_factory=dict)
    cycles: dict[str, dict[str, str]] = field(default_factory=dict)
    unbilled: dict[str, Decimal] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)


def seed(invoices: int = 120, customers: int = 20, rng_seed: int = 6781) -> ConsumerData:
    rng = random.Random(rng_seed)
    lines = random.Random(rng_seed + 1)  # charges: the invoices stay what they were
    data = ConsumerData()
    for n in range(1, customers + 1):
        ref = f"CUST{n:05d}"
        data.customers.add(ref)
        data.unbilled[ref] = Decimal(rng.randint(0, 9000)) / 100 if n % 4 else Decimal(0)
    for n in range(1, invoices + 1):
        issued = date(2024, 1, 1) + timedelta(days=rng.randint(0, 360))
        net = Decimal(rng.randint(500, 25_000)) / 100
        status = STATUS_WORDS[n % len(STATUS_WORDS)]
        record = invoice(
            f"C-{1000 + n}", f"CUST{rng.randint(1, customers):05d}", issued, net, status, "REG"
        )
        data.invoices[record["invoiceRef"]] = record
        fee = (net * Decimal(lines.randint(40, 80)) / 100).quantize(Decimal("0.01"))
        add_charge(data, record["customerRef"], record["invoiceRef"], "REC", issued, fee)
        add_charge(data, record["customerRef"], record["invoiceRef"], "USG", issued, net - fee)
    for ref, amount in sorted(data.unbilled.items()):
        if amount > 0:  # what BillNow will gather
            add_charge(data, ref, "", "USG", date(2025, 1, 18), amount)
    for month in range(1, 13):
        add_cycle(data, date(2024, month, 1))
    return data


CHARGE_NAMES = {"REC": "Monthly plan", "USG": "Calls and data", "OTC": "Set-up fee"}


def add_charge(
    data: ConsumerData, customer: str, invoice_ref: str, kind: str, posted: date, net: Decimal
) -> dict[str, str]:
    """A charge line; `invoice_ref` "" while it is not billed yet."""
    ref = f"CHG{len(data.charges) + 1:06d}"
    tax = (net * Decimal("0.19")).quantize(Decimal("0.01"))
    record = {
        "chargeRef": ref,
        "customerRef": customer,
        "invoiceRef": invoice_ref,
        "billedFlag": "Y" if invoice_ref else "N",
        "chargeType": kind,
        "chargeName": CHARGE_NAMES.get(kind, kind),
        "chargeText": f"{CHARGE_NAMES.get(kind, kind)} {posted:%B %Y}",
        "postedAt": posted.strftime("%Y%m%d") + "053000",
        "serviceFrom": posted.replace(day=1).strftime("%Y%m%d"),
        "serviceTo": posted.strftime("%Y%m%d"),
        "netAmount": f"{net:.2f}",
        "taxCode": "VAT19",
        "taxRate": "19.00",
        "taxAmount": f"{tax:.2f}",
        "grossAmount": f"{net + tax:.2f}",
        "currency": "EUR",
        "productRef": "MOBILE-S" if kind == "REC" else "",
    }
    data.charges[ref] = record
    return record


def add_cycle(data: ConsumerData, first: date) -> None:
    """The monthly bill cycle of the month starting on `first`."""
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    billing = last + timedelta(days=1)
    ref = f"CYC{first:%Y%m}"
    data.cycles[ref] = {
        "cycleRef": ref,
        "cycleCode": f"M{first:%m}-{first:%Y}",
        "cycleText": f"Consumer monthly cycle, {first:%B %Y}",
        "periodLabel": first.strftime("%B"),
        "periodStart": first.strftime("%Y%m%d"),
        "periodEnd": last.strftime("%Y%m%d"),
        "billDate": billing.strftime("%Y%m%d"),
        "mailDate": (billing + timedelta(days=1)).strftime("%Y%m%d"),
        "debitDate": (billing + timedelta(days=14)).strftime("%Y%m%d"),
        "creditCutOff": last.strftime("%Y%m%d"),
        "dueDate": (billing + timedelta(days=21)).strftime("%Y%m%d"),
        "scheduleCode": "CONSUMER-MONTHLY",
    }


def invoice(
    ref: str, customer: str, issued: date, net: Decimal, status: str, kind: str
) -> dict[str, str]:
    tax = (net * Decimal("0.19")).quantize(Decimal("0.01"))
    gross = net + tax
    open_amount = {"CLEARED": Decimal(0), "PARTIAL": (gross / 2).quantize(Decimal("0.01"))}
    period_end = issued.replace(day=1) - timedelta(days=1)
    return {
        "invoiceRef": ref,
        "customerRef": customer,
        "invoiceDate": issued.strftime("%Y%m%d"),
        "dueDate": (issued + timedelta(days=21)).strftime("%Y%m%d"),
        "periodStart": period_end.replace(day=1).strftime("%Y%m%d"),
        "periodEnd": period_end.strftime("%Y%m%d"),
        "statusWord": status,
        "netAmount": f"{net:.2f}",
        "taxAmount": f"{tax:.2f}",
        "grossAmount": f"{gross:.2f}",
        "openAmount": f"{open_amount.get(status, gross):.2f}",
        "currency": "EUR",
        "runKind": kind,
        "lastChanged": issued.strftime("%Y%m%d") + "070000",
    }


def _envelope(body: str) -> Response:
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
        f"<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
    return Response(xml, media_type="text/xml; charset=utf-8")


def _fault(code: str, message: str) -> Response:
    body = (
        f"<soapenv:Fault><faultcode>soapenv:Client</faultcode>"
        f"<faultstring>{escape(message)}</faultstring><detail><code>{code}</code></detail>"
        "</soapenv:Fault>"
    )
    response = _envelope(body)
    response.status_code = 500
    return response


def _invoice_xml(tag: str, record: dict[str, str], fields: tuple[str, ...] = FIELDS) -> str:
    inner = "".join(f"<cb:{f}>{escape(record[f])}</cb:{f}>" for f in fields)
    return f"<cb:{tag}>{inner}</cb:{tag}>"


def create_app(data: ConsumerData | None = None) -> Starlette:
    data = data or seed()
    wsdl_text = WSDL.read_text(encoding="utf-8")

    async def wsdl(request: Request) -> Response:
        here = f"{request.url.scheme}://{request.url.netloc}/soap"
        return Response(
            wsdl_text.replace("http://127.0.0.1:8702/soap", here), media_type="text/xml"
        )

    async def soap(request: Request) -> Response:
        try:
            envelope = etree.fromstring(await request.body())
        except etree.XMLSyntaxError:
            return _fault("BadRequest", "the request is not XML")
        body = envelope.find(f"{{{SOAP_ENV}}}Body")
        if body is None or len(body) == 0:
            return _fault("BadRequest", "no SOAP body")
        call = body[0]
        name = etree.QName(call).localname
        args: dict[str, list[str]] = {}
        for child in call:
            args.setdefault(etree.QName(child).localname, []).append(child.text or "")
        handler = HANDLERS.get(name)
        if handler is None:
            return _fault("UnknownOperation", f"no operation {name}")
        return handler(data, args)

    app = Starlette(routes=[Route("/billing.wsdl", wsdl), Route("/soap", soap, methods=["POST"])])
    app.state.data = data
    return app


def _one(args: dict[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    return values[0] if values else None


def list_invoices(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    items = sorted(data.invoices.values(), key=lambda i: int(i["invoiceRef"][2:]))
    if customer := _one(args, "customerRef"):
        items = [i for i in items if i["customerRef"] == customer]
    if statuses := args.get("statusWord"):
        items = [i for i in items if i["statusWord"] in statuses]
    start, count = int(_one(args, "fromIndex") or 0), int(_one(args, "maxRecords") or 50)
    window = items[start : start + min(count, 500)]
    body = "".join(_invoice_xml("invoice", i) for i in window)
    return _envelope(
        f'<cb:ListInvoicesResponse xmlns:cb="{NS}"><cb:totalCount>{len(items)}</cb:totalCount>'
        f"{body}</cb:ListInvoicesResponse>"
    )


def _listing(
    operation: str,
    tag: str,
    items: list[dict[str, str]],
    args: dict[str, list[str]],
    fields: tuple[str, ...],
) -> Response:
    start, count = int(_one(args, "fromIndex") or 0), int(_one(args, "maxRecords") or 50)
    window = items[start : start + min(count, 500)]
    body = "".join(_invoice_xml(tag, i, fields) for i in window)
    return _envelope(
        f'<cb:{operation}Response xmlns:cb="{NS}"><cb:totalCount>{len(items)}</cb:totalCount>'
        f"{body}</cb:{operation}Response>"
    )


def list_charges(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    items = list(data.charges.values())  # in the order they were posted
    for name in ("customerRef", "invoiceRef", "billedFlag"):
        if (value := _one(args, name)) is not None:
            items = [i for i in items if i[name] == value]
    if kinds := args.get("chargeType"):
        items = [i for i in items if i["chargeType"] in kinds]
    return _listing("ListCharges", "charge", items, args, CHARGE_FIELDS)


def get_charge(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    record = data.charges.get(_one(args, "chargeRef") or "")
    if record is None:
        return _fault("NotFound", "no such charge")
    return _envelope(
        f'<cb:GetChargeResponse xmlns:cb="{NS}">{_invoice_xml("charge", record, CHARGE_FIELDS)}'
        "</cb:GetChargeResponse>"
    )


def list_cycles(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    items = list(data.cycles.values())
    if (code := _one(args, "cycleCode")) is not None:
        items = [i for i in items if i["cycleCode"] == code]
    return _listing("ListBillCycles", "billCycle", items, args, CYCLE_FIELDS)


def get_cycle(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    record = data.cycles.get(_one(args, "cycleRef") or "")
    if record is None:
        return _fault("NotFound", "no such bill cycle")
    xml = _invoice_xml("billCycle", record, CYCLE_FIELDS)
    return _envelope(f'<cb:GetBillCycleResponse xmlns:cb="{NS}">{xml}</cb:GetBillCycleResponse>')


def find_by_reference(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    """FOUND with the invoice a BillNow with this reference made, or NONE."""
    ref = data.references.get(_one(args, "reference") or "")
    tail = (
        f"<cb:result>FOUND</cb:result><cb:invoiceRef>{ref}</cb:invoiceRef>"
        if ref
        else ("<cb:result>NONE</cb:result>")
    )
    return _envelope(
        f'<cb:FindInvoiceByReferenceResponse xmlns:cb="{NS}">{tail}'
        "</cb:FindInvoiceByReferenceResponse>"
    )


def get_invoice(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    record = data.invoices.get(_one(args, "invoiceRef") or "")
    if record is None:
        return _fault("NotFound", "no such invoice")
    return _envelope(
        f'<cb:GetInvoiceResponse xmlns:cb="{NS}">{_invoice_xml("invoice", record)}'
        "</cb:GetInvoiceResponse>"
    )


def change_status(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    record = data.invoices.get(_one(args, "invoiceRef") or "")
    expected, new = _one(args, "expectedStatus"), _one(args, "newStatus")
    if record is None:
        result = "NOTFOUND"
    elif expected and record["statusWord"] != expected:
        result = "CONFLICT"
    elif new not in STATUS_WORDS:
        return _fault("BadStatus", f"unknown status {new}")
    else:
        record["statusWord"] = new or record["statusWord"]
        record["lastChanged"] = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        result = "OK"
    return _envelope(
        f'<cb:ChangeInvoiceStatusResponse xmlns:cb="{NS}"><cb:result>{result}</cb:result>'
        "</cb:ChangeInvoiceStatusResponse>"
    )


def check_customer(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    known = "KNOWN" if _one(args, "customerRef") in data.customers else "UNKNOWN"
    return _envelope(
        f'<cb:CheckCustomerResponse xmlns:cb="{NS}"><cb:result>{known}</cb:result>'
        "</cb:CheckCustomerResponse>"
    )


def bill_now(data: ConsumerData, args: dict[str, list[str]]) -> Response:
    customer, reference = _one(args, "customerRef") or "", _one(args, "reference") or ""

    def reply(result: str, ref: str = "") -> Response:
        tail = f"<cb:invoiceRef>{ref}</cb:invoiceRef>" if ref else ""
        return _envelope(
            f'<cb:BillNowResponse xmlns:cb="{NS}"><cb:result>{result}</cb:result>{tail}'
            "</cb:BillNowResponse>"
        )

    if customer not in data.customers:
        return reply("UNKNOWN_CUSTOMER")
    if reference in data.references:
        return reply("OK", data.references[reference])
    if data.unbilled.get(customer, Decimal(0)) <= 0:
        return reply("NOTHING_TO_BILL")
    ref = f"C-{1000 + len(data.invoices) + 1}"
    record = invoice(ref, customer, date.today(), data.unbilled[customer], "DRAFT", "ADHOC")
    record["lastChanged"] = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    data.invoices[ref] = record
    data.unbilled[customer] = Decimal(0)
    for charge in data.charges.values():
        if charge["customerRef"] == customer and not charge["invoiceRef"]:
            charge["invoiceRef"], charge["billedFlag"] = ref, "Y"
    data.references[reference] = ref
    return reply("OK", ref)


HANDLERS: dict[str, Any] = {
    "ListInvoices": list_invoices,
    "GetInvoice": get_invoice,
    "ChangeInvoiceStatus": change_status,
    "CheckCustomer": check_customer,
    "BillNow": bill_now,
    "FindInvoiceByReference": find_by_reference,
    "ListCharges": list_charges,
    "GetCharge": get_charge,
    "ListBillCycles": list_cycles,
    "GetBillCycle": get_cycle,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8702)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
