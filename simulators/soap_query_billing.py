"""A subscription-billing SOAP API shaped like the big platforms', for tests and the demo.

A SOAP 1.1 document/literal service with its own WSDL (`wsdl/query_billing.wsdl`):
- `login(username, password)` returns a session id; every other call carries it in a
  `SessionHeader`, and it expires (`session_seconds`): then an `INVALID_SESSION` fault;
- `query(queryString)` takes a small query language (select fields from Invoice,
  InvoiceItem or Account where ... [order by ...]) and answers `batch_size` records at a
  time with `size` (all matches), `done` and a `queryLocator` for `queryMore`;
- `update(zObjects)` changes invoices (`xsi:type="Invoice"`: Status, Comments),
  `generate(zObjects)` bills an account's unbilled charges now (idempotent per Reference);
- a field without a value is absent from a record; the currency lives on the Account.

    python -m simulators.soap_query_billing --port 8703 --invoices 320   # WSDL at /query.wsdl
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import uvicorn
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

NS = "urn:example:query-billing:v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSDL = Path(__file__).parent / "wsdl" / "query_billing.wsdl"
USERNAME, PASSWORD = "gateway@example.com", "s3cret"
STATUSES = ("Draft", "Posted", "Canceled")
CURRENCIES = ("EUR", "USD", "GBP")
#: Fields each object has (any may be absent from a record), in reply order.
OBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "Account": ("Id", "AccountNumber", "Name", "Currency", "Status"),
    "Invoice": (
        "Id",
        "AccountId",
        "Amount",
        "AmountWithoutTax",
        "Balance",
        "Comments",
        "DueDate",
        "InvoiceDate",
        "InvoiceNumber",
        "Reference",
        "Status",
        "TargetDate",
        "TaxAmount",
        "UpdatedDate",
    ),
    "InvoiceItem": (
        "Id",
        "AccountId",
        "ChargeAmount",
        "ChargeDate",
        "ChargeName",
        "InvoiceId",
        "ProductName",
        "ServiceEndDate",
        "ServiceStartDate",
        "TaxAmount",
    ),
}
NUMERIC = frozenset({"Amount", "AmountWithoutTax", "Balance", "TaxAmount", "ChargeAmount"})

Record = dict[str, str]


@dataclass
class QueryData:
    """The platform's objects by Id (a record holds only the fields that have a value)."""

    objects: dict[str, dict[str, Record]] = field(
        default_factory=lambda: {name: {} for name in OBJECT_FIELDS}
    )
    #: Amounts billed by the next `generate` per account.
    unbilled: dict[str, Decimal] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    #: How many of each operation were called (tests count logins and queryMores).
    calls: Counter[str] = field(default_factory=Counter)
    #: The query strings received, latest last (tests read what a gateway sent).
    queries: list[str] = field(default_factory=list)
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def invoices(self) -> dict[str, Record]:
        return self.objects["Invoice"]

    @property
    def items(self) -> dict[str, Record]:
        return self.objects["InvoiceItem"]

    @property
    def accounts(self) -> dict[str, Record]:
        return self.objects["Account"]

    def new_id(self, prefix: str) -> str:
        """A 32-hex-digit id like the platform's, in creation order."""
        return f"{prefix}{next(self.sequence):024x}"


def seed(invoices: int = 320, accounts: int = 24, rng_seed: int = 17) -> QueryData:
    rng = random.Random(rng_seed)
    data = QueryData()
    for n in range(1, accounts + 1):
        ident = data.new_id("2c92a0f8")
        data.accounts[ident] = {
            "Id": ident,
            "AccountNumber": f"A{n:08d}",
            "Name": f"Customer {n}",
            "Currency": CURRENCIES[n % len(CURRENCIES)],
            "Status": "Active",
        }
        data.unbilled[ident] = Decimal(rng.randint(0, 9000)) / 100 if n % 3 else Decimal(0)
    account_ids = list(data.accounts)
    for n in range(1, invoices + 1):
        issued = date(2024, 1, 1) + timedelta(days=rng.randint(0, 365))
        net = Decimal(rng.randint(500, 90_000)) / 100
        status = rng.choices(STATUSES, weights=(2, 6, 1))[0]
        record = invoice_record(data, rng.choice(account_ids), issued, net, status)
        record["InvoiceNumber"] = f"INV{n:08d}"
        if status == "Posted":
            record["Balance"] = rng.choice(
                (record["Amount"], "0.00", f"{Decimal(record['Amount']) / 2:.2f}")
            )
        if n % 9 == 0:
            record["Comments"] = f"Adjusted on request {n}; customer's note"
        fee = (net * Decimal(rng.randint(40, 80)) / 100).quantize(Decimal("0.01"))
        add_item(data, record, "Monthly plan", issued, fee, "Mobile S")
        add_item(data, record, "Calls and data", issued, net - fee, None)
    return data


def invoice_record(
    data: QueryData, account: str, issued: date, net: Decimal, status: str
) -> Record:
    tax = (net * Decimal("0.2")).quantize(Decimal("0.01"))
    ident = data.new_id("2c93808f")
    record: Record = {
        "Id": ident,
        "AccountId": account,
        "Amount": f"{net + tax:.2f}",
        "AmountWithoutTax": f"{net:.2f}",
        "Balance": f"{net + tax:.2f}",
        "InvoiceDate": issued.isoformat(),
        "InvoiceNumber": f"INV{len(data.invoices) + 1:08d}",
        "Status": status,
        "TargetDate": issued.isoformat(),
        "TaxAmount": f"{tax:.2f}",
        "UpdatedDate": f"{issued.isoformat()}T07:00:00.000+00:00",
    }
    if status != "Draft":  # a draft has no due date yet: the field is absent
        record["DueDate"] = (issued + timedelta(days=30)).isoformat()
    data.invoices[ident] = record
    return record


def add_item(
    data: QueryData, bill: Record, name: str, day: date, net: Decimal, product: str | None
) -> None:
    ident = data.new_id("2c94c0f9")
    record: Record = {
        "Id": ident,
        "AccountId": bill["AccountId"],
        "ChargeAmount": f"{net:.2f}",
        "ChargeDate": f"{day.isoformat()}T05:30:00.000+00:00",
        "ChargeName": name,
        "InvoiceId": bill["Id"],
        "ServiceEndDate": day.isoformat(),
        "ServiceStartDate": day.replace(day=1).isoformat(),
        "TaxAmount": f"{net * Decimal('0.2'):.2f}",
    }
    if product is not None:
        record["ProductName"] = product
    data.items[ident] = record


# The query language: select f, ... from Object [where cond] [order by f [asc|desc], ...]
# cond: comparisons (= != > >= < <=) of a field with 'text' (\' and \\ escaped), a number
# or null, joined by and/or, with parentheses.

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?)(?![\w.])"
    r"|(?P<op>!=|>=|<=|=|>|<)|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)


class QueryError(Exception):
    """A query the language does not allow: a MALFORMED_QUERY fault."""


@dataclass
class Query:
    fields: list[str]
    object: str
    where: Callable[[Record], bool]
    order: list[tuple[str, bool]]


def tokens(text: str) -> list[tuple[str, str]]:
    out, at = [], 0
    text = text.rstrip()
    while at < len(text):
        found = _TOKEN.match(text, at)
        if found is None or found.end() == at:
            raise QueryError(f"unexpected text at {at}: {text[at : at + 20]!r}")
        kind = found.lastgroup or ""
        out.append((kind, found.group(kind)))
        at = found.end()
    return out


def parse_query(text: str) -> Query:
    toks = tokens(text)
    pos = 0

    def peek(word: str | None = None) -> bool:
        if pos >= len(toks):
            return False
        return word is None or toks[pos][1].lower() == word

    def take(kind: str | None = None, word: str | None = None) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise QueryError("unexpected end of query")
        got_kind, got = toks[pos]
        if (kind and got_kind != kind) or (word and got.lower() != word):
            raise QueryError(f"expected {word or kind}, found {got!r}")
        pos += 1
        return got

    take("word", "select")
    fields = [take("word")]
    while peek(","):
        take("punct")
        fields.append(take("word"))
    take("word", "from")
    obj = take("word")
    if obj not in OBJECT_FIELDS:
        raise QueryError(f"no object {obj}")
    known = OBJECT_FIELDS[obj]

    def check(name: str) -> str:
        if name not in known:
            raise QueryError(f"INVALID_FIELD: {obj} has no field {name}")
        return name

    for name in fields:
        check(name)

    def value() -> Any:
        kind, text = toks[pos] if pos < len(toks) else ("", "")
        take()
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "num":
            return Decimal(text)
        if kind == "word" and text.lower() == "null":
            return None
        raise QueryError(f"expected a value, found {text!r}")

    def comparison() -> Callable[[Record], bool]:
        if peek("("):
            take("punct")
            inner = disjunction()
            take("punct", ")")
            return inner
        name = check(take("word"))
        op = take("op")
        wanted = value()
        return _compare(name, op, wanted)

    def conjunction() -> Callable[[Record], bool]:
        terms = [comparison()]
        while peek("and"):
            take("word")
            terms.append(comparison())
        return lambda r: all(t(r) for t in terms)

    def disjunction() -> Callable[[Record], bool]:
        terms = [conjunction()]
        while peek("or"):
            take("word")
            terms.append(conjunction())
        return lambda r: any(t(r) for t in terms)

    where: Callable[[Record], bool] = lambda r: True  # noqa: E731
    if peek("where"):
        take("word")
        where = disjunction()
    order: list[tuple[str, bool]] = []
    if peek("order"):
        take("word")
        take("word", "by")
        while True:
            name = check(take("word"))
            descending = False
            if peek("asc") or peek("desc"):
                descending = take("word").lower() == "desc"
            order.append((name, descending))
            if not peek(","):
                break
            take("punct")
    if pos != len(toks):
        raise QueryError(f"unexpected {toks[pos][1]!r}")
    return Query(fields, obj, where, order)


def _compare(name: str, op: str, wanted: Any) -> Callable[[Record], bool]:
    if wanted is None:
        if op not in ("=", "!="):
            raise QueryError("null compares with = or != only")
        return (lambda r: name not in r) if op == "=" else (lambda r: name in r)
    numeric = name in NUMERIC
    if numeric and not isinstance(wanted, Decimal):
        try:
            wanted = Decimal(wanted)
        except InvalidOperation:
            raise QueryError(f"{name} takes a number") from None
    if not numeric:
        wanted = str(wanted)
    compare = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }[op]

    def test(record: Record) -> bool:
        if name not in record:  # an absent field matches no comparison with a value
            return False
        have: Any = Decimal(record[name]) if numeric else record[name]
        return bool(compare(have, wanted))

    return test


def run_query(data: QueryData, query: Query) -> list[Record]:
    """Every match, projected on the selected fields (absent ones stay absent)."""
    matches = [r for r in data.objects[query.object].values() if query.where(r)]
    for name, descending in reversed(query.order):
        numeric = name in NUMERIC
        present = [r for r in matches if name in r]
        absent = [r for r in matches if name not in r]
        present.sort(key=lambda r: Decimal(r[name]) if numeric else r[name], reverse=descending)
        matches = present + absent  # absent values last either way
    return [{f: r[f] for f in query.fields if f in r} for r in matches]


# SOAP plumbing.


def _envelope(body: str) -> Response:
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"'
        f' xmlns:xsi="{XSI}" xmlns:ns1="{NS}"><soapenv:Body>{body}</soapenv:Body>'
        "</soapenv:Envelope>"
    )
    return Response(xml, media_type="text/xml; charset=utf-8")


def fault(code: str, message: str) -> Response:
    body = (
        f"<soapenv:Fault><faultcode>soapenv:Client</faultcode>"
        f"<faultstring>{escape(message)}</faultstring><detail><code>{code}</code></detail>"
        "</soapenv:Fault>"
    )
    response = _envelope(body)
    response.status_code = 500
    return response


def _record_xml(tag: str, obj: str, record: Record) -> str:
    inner = "".join(f"<ns1:{k}>{escape(v)}</ns1:{k}>" for k, v in record.items())
    return f'<ns1:{tag} xsi:type="ns1:{obj}">{inner}</ns1:{tag}>'


@dataclass
class Cursor:
    object: str
    records: list[Record]
    position: int
    session: str


class QueryBillingService:
    """The operations; `session_seconds` is how long a session id stays valid."""

    def __init__(self, data: QueryData, session_seconds: float, batch_size: int) -> None:
        self.data = data
        self.session_seconds = session_seconds
        self.batch_size = batch_size
        self.sessions: dict[str, float] = {}
        self.cursors: dict[str, Cursor] = {}

    def handle(self, envelope: etree._Element) -> Response:
        body = envelope.find(f"{{{SOAP_ENV}}}Body")
        if body is None or len(body) == 0:
            return fault("MALFORMED_REQUEST", "no SOAP body")
        call = body[0]
        name = etree.QName(call).localname
        self.data.calls[name] += 1
        if name == "login":
            return self.login(call)
        handler = {
            "query": self.query,
            "queryMore": self.query_more,
            "update": self.update,
            "generate": self.generate,
        }.get(name)
        if handler is None:
            return fault("INVALID_OPERATION", f"no operation {name}")
        session = envelope.findtext(f"{{{SOAP_ENV}}}Header/{{{NS}}}SessionHeader/{{{NS}}}session")
        expires = self.sessions.get(session or "")
        if expires is None or expires < time.monotonic():
            self.sessions.pop(session or "", None)
            return fault("INVALID_SESSION", "Invalid session id; please log in again")
        return handler(call, session or "")

    def login(self, call: etree._Element) -> Response:
        user, password = call.findtext(f"{{{NS}}}username"), call.findtext(f"{{{NS}}}password")
        if (user, password) != (USERNAME, PASSWORD):
            return fault("INVALID_LOGIN", "Invalid username or password")
        session = secrets.token_urlsafe(24)
        self.sessions[session] = time.monotonic() + self.session_seconds
        return _envelope(
            f"<ns1:loginResponse><ns1:result><ns1:Session>{session}</ns1:Session>"
            "<ns1:ServerUrl>/soap</ns1:ServerUrl></ns1:result></ns1:loginResponse>"
        )

    def query(self, call: etree._Element, session: str) -> Response:
        text = call.findtext(f"{{{NS}}}queryString") or ""
        self.data.queries.append(text)
        try:
            query = parse_query(text)
        except QueryError as exc:
            code = "INVALID_FIELD" if str(exc).startswith("INVALID_FIELD") else "MALFORMED_QUERY"
            return fault(code, str(exc))
        cursor = Cursor(query.object, run_query(self.data, query), 0, session)
        return self._batch("queryResponse", cursor)

    def query_more(self, call: etree._Element, session: str) -> Response:
        locator = call.findtext(f"{{{NS}}}queryLocator") or ""
        cursor = self.cursors.pop(locator, None)
        if cursor is None:
            return fault("INVALID_QUERY_LOCATOR", "Invalid query locator")
        return self._batch("queryMoreResponse", cursor)

    def _batch(self, tag: str, cursor: Cursor) -> Response:
        start = cursor.position
        window = cursor.records[start : start + self.batch_size]
        cursor.position += len(window)
        done = cursor.position >= len(cursor.records)
        locator = ""
        if not done:
            locator = secrets.token_hex(16)
            self.cursors[locator] = cursor
        records = "".join(_record_xml("records", cursor.object, r) for r in window)
        more = f"<ns1:queryLocator>{locator}</ns1:queryLocator>" if locator else ""
        return _envelope(
            f"<ns1:{tag}><ns1:result><ns1:done>{str(done).lower()}</ns1:done>{more}"
            f"{records}<ns1:size>{len(cursor.records)}</ns1:size></ns1:result></ns1:{tag}>"
        )

    def _objects(self, call: etree._Element) -> list[tuple[str, Record]]:
        """(xsi:type, fields) of each zObject; fieldsToNull as fields set to ""."""
        out = []
        for element in call.iterfind(f"{{{NS}}}zObjects"):
            declared = element.get(f"{{{XSI}}}type") or ""
            fields: Record = {}
            for child in element:
                name = etree.QName(child).localname
                if name == "fieldsToNull":
                    fields[child.text or ""] = ""
                else:
                    fields[name] = child.text or ""
            out.append((declared.rpartition(":")[2], fields))
        return out

    def update(self, call: etree._Element, session: str) -> Response:
        results = []
        for kind, fields in self._objects(call):
            ident = fields.pop("Id", "")
            record = self.data.invoices.get(ident) if kind == "Invoice" else None
            error = None
            if kind != "Invoice":
                error = ("INVALID_TYPE", f"update takes Invoice objects, not {kind or 'zObject'}")
            elif record is None:
                error = ("INVALID_ID", f"no invoice {ident}")
            elif set(fields) - {"Status", "Comments"}:
                error = ("INVALID_FIELD", f"cannot update {sorted(set(fields))}")
            elif fields.get("Status", STATUSES[0]) not in STATUSES:
                error = ("INVALID_VALUE", f"unknown status {fields['Status']}")
            if error is None:
                assert record is not None
                for name, value in fields.items():
                    if value:
                        record[name] = value
                    else:
                        record.pop(name, None)
                record["UpdatedDate"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+00:00")
            results.append(_save_result(ident, error))
        return _envelope(f"<ns1:updateResponse>{''.join(results)}</ns1:updateResponse>")

    def generate(self, call: etree._Element, session: str) -> Response:
        results = []
        for kind, fields in self._objects(call):
            account, reference = fields.get("AccountId", ""), fields.get("Reference", "")
            if kind != "Invoice":
                results.append(_save_result("", ("INVALID_TYPE", "generate takes Invoice")))
            elif account not in self.data.accounts:
                results.append(_save_result("", ("INVALID_ID", f"no account {account}")))
            elif reference and reference in self.data.references:
                results.append(_save_result(self.data.references[reference], None))
            elif self.data.unbilled.get(account, Decimal(0)) <= 0:
                results.append(_save_result("", ("INVALID_VALUE", "nothing to bill")))
            else:
                today = date.today()
                record = invoice_record(
                    self.data, account, today, self.data.unbilled[account], "Draft"
                )
                if reference:
                    record["Reference"] = reference
                    self.data.references[reference] = record["Id"]
                add_item(
                    self.data, record, "Usage to date", today, self.data.unbilled[account], None
                )
                self.data.unbilled[account] = Decimal(0)
                results.append(_save_result(record["Id"], None))
        return _envelope(f"<ns1:generateResponse>{''.join(results)}</ns1:generateResponse>")


def _save_result(ident: str, error: tuple[str, str] | None) -> str:
    if error is None:
        return f"<ns1:result><ns1:Id>{ident}</ns1:Id><ns1:Success>true</ns1:Success></ns1:result>"
    code, message = error
    return (
        f"<ns1:result><ns1:Errors><ns1:Code>{code}</ns1:Code>"
        f"<ns1:Message>{escape(message)}</ns1:Message></ns1:Errors>"
        "<ns1:Success>false</ns1:Success></ns1:result>"
    )


def create_app(
    data: QueryData | None = None, *, session_seconds: float = 600.0, batch_size: int = 50
) -> Starlette:
    service = QueryBillingService(data or seed(), session_seconds, batch_size)
    wsdl_text = WSDL.read_text(encoding="utf-8")

    async def wsdl(request: Request) -> Response:
        here = f"{request.url.scheme}://{request.url.netloc}/soap"
        return Response(
            wsdl_text.replace("http://127.0.0.1:8703/soap", here), media_type="text/xml"
        )

    async def soap(request: Request) -> Response:
        try:
            envelope = etree.fromstring(await request.body())
        except etree.XMLSyntaxError:
            return fault("MALFORMED_REQUEST", "the request is not XML")
        return service.handle(envelope)

    app = Starlette(routes=[Route("/query.wsdl", wsdl), Route("/soap", soap, methods=["POST"])])
    app.state.data = service.data
    app.state.service = service
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8703)
    parser.add_argument("--invoices", type=int, default=320)
    parser.add_argument("--session-seconds", type=float, default=600.0)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    app = create_app(
        seed(args.invoices), session_seconds=args.session_seconds, batch_size=args.batch_size
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
