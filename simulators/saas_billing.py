"""A SaaS billing API shaped like the common invoice APIs (Stripe-like), for tests and the demo.

What makes it unlike the enterprise simulator, and like the real thing: cursor paging
(`limit`, `starting_after`, `has_more`) and no totals, newest first; unix-second
timestamps, lower-case currency codes and integer minor units; invoice lines nested
in each invoice (`lines.data`); range filters in bracket syntax (`created[gte]=`);
strict parameters (an unknown one is a 400); form-encoded POSTs; one action endpoint
per state change (`/pay`, `/void`, `/mark_uncollectible`); creation as create then
finalize, with `Idempotency-Key` (a retried create returns the same invoice); errors as
`{"error": {"type", "message"}}`; API keys as `Authorization: Bearer`. Deterministic
data; state lives in memory; `calls` counts the requests served (tests read it).

    python -m simulators.saas_billing --port 8702 --invoices 250
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API_KEY = "sk_test_gateway"
STATUSES = ("draft", "open", "paid", "void", "uncollectible")
CURRENCIES = ("eur", "usd", "gbp")
TAX_RATES = {"eur": ("VAT", 19), "usd": ("Sales tax", 8), "gbp": ("VAT", 20)}
#: Filters of the list call: a name and, for ranges, its bracket operators.
EQUALITY_FILTERS = ("customer", "status", "collection_method")
RANGE_FILTERS = ("created", "due_date", "total")
RANGE_OPS = ("gt", "gte", "lt", "lte")
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
_EPOCH_2024 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())


@dataclass
class SaasData:
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Customer -> amounts (minor units) not yet invoiced: what a create gathers.
    pending: dict[str, list[int]] = field(default_factory=dict)
    #: Idempotency-Key -> (the request's path and form, the answer given: status, body).
    idempotent: dict[str, tuple[tuple[str, dict[str, str]], tuple[int, Any]]] = field(
        default_factory=dict
    )
    api_key: str = API_KEY
    #: Requests served, by "METHOD path" (tests count back-end calls with it).
    calls: list[str] = field(default_factory=list)
    next_number: int = 1


def seed(invoices: int = 250, customers: int = 20, rng_seed: int = 6781) -> SaasData:
    """`invoices` invoices of `customers` customers, every status, three currencies."""
    rng = random.Random(rng_seed)
    data = SaasData()
    for n in range(1, customers + 1):
        ident = f"cus_{n:04d}"
        currency = CURRENCIES[n % len(CURRENCIES)]
        data.customers[ident] = {"id": ident, "object": "customer", "currency": currency}
        data.pending[ident] = [rng.randint(1_000, 50_000)] if n % 4 else []
    for _ in range(invoices):
        customer = f"cus_{rng.randint(1, customers):04d}"
        created = _EPOCH_2024 + rng.randint(0, 400 * 86400)
        amounts = [rng.randint(500, 60_000) for _ in range(rng.randint(1, 3))]
        status = STATUSES[rng.randint(0, len(STATUSES) - 1)]
        _add_invoice(data, customer, created, amounts, status, "subscription_cycle")
    return data


def _add_invoice(
    data: SaasData,
    customer: str,
    created: int,
    amounts: list[int],
    status: str,
    reason: str,
) -> dict[str, Any]:
    number = data.next_number
    data.next_number += 1
    ident = f"in_{number:06d}"
    currency = data.customers[customer]["currency"]
    label, percent = TAX_RATES[currency]
    start = created - 30 * 86400
    lines = []
    for n, amount in enumerate(amounts, 1):
        tax = amount * percent // 100
        lines.append(
            {
                "id": f"il_{number:06d}_{n}",
                "object": "line_item",
                "invoice": ident,
                "type": "subscription" if n == 1 else "invoiceitem",
                "description": "Subscription" if n == 1 else f"Usage item {n}",
                "amount": amount,
                "currency": currency,
                "period": {"start": start, "end": created},
                "tax_amounts": [{"amount": tax, "percentage": f"{percent}.00", "label": label}],
            }
        )
    subtotal = sum(amounts)
    tax = sum(line["tax_amounts"][0]["amount"] for line in lines)
    total = subtotal + tax
    paid = total if status == "paid" else 0
    invoice = {
        "id": ident,
        "object": "invoice",
        "number": f"INV-{number:06d}" if status != "draft" else None,
        "customer": customer,
        "currency": currency,
        "status": status,
        "collection_method": "charge_automatically" if number % 3 else "send_invoice",
        "billing_reason": reason,
        "created": created,
        "due_date": created + 14 * 86400 if number % 3 == 0 else None,
        "period_start": start,
        "period_end": created,
        "status_transitions": {"finalized_at": created + 3600 if status != "draft" else None},
        "subtotal": subtotal,
        "tax": tax,
        "total": total,
        "amount_due": total,
        "amount_paid": paid,
        "amount_remaining": total - paid,
        "total_tax_amounts": [{"amount": tax, "percentage": f"{percent}.00", "label": label}],
        "invoice_pdf": f"https://files.saas.example/invoices/{ident}.pdf",
        "lines": {"object": "list", "data": lines, "has_more": False, "total_count": len(lines)},
    }
    data.invoices[ident] = invoice
    return invoice


def newest_first(data: SaasData) -> list[dict[str, Any]]:
    """The list call's order: newest first, ties by id descending."""
    return sorted(data.invoices.values(), key=lambda i: (i["created"], i["id"]), reverse=True)


def _error(status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if param is not None:
        body["param"] = param
    return JSONResponse({"error": body}, status_code=status)


def _invalid(message: str, param: str | None = None) -> JSONResponse:
    return _error(400, "invalid_request_error", message, param)


def _range_param(name: str) -> tuple[str, str] | None:
    """`created[gte]` as (created, gte); None for anything else."""
    if not name.endswith("]") or "[" not in name:
        return None
    base, op = name[:-1].split("[", 1)
    return (base, op) if base in RANGE_FILTERS and op in RANGE_OPS else None


_COMPARE: Mapping[str, Callable[[int, int], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _matches(invoice: dict[str, Any], equal: dict[str, list[str]], ranges: list[Any]) -> bool:
    for name, values in equal.items():
        if invoice.get(name) not in values:
            return False
    for name, op, bound in ranges:
        value = invoice.get(name)
        if value is None or not _COMPARE[op](value, bound):
            return False
    return True


def create_app(data: SaasData | None = None) -> Starlette:
    data = data if data is not None else seed()

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {data.api_key}"

    def denied() -> JSONResponse:
        return _error(401, "authentication_error", "Invalid API Key provided")

    async def list_invoices(request: Request) -> JSONResponse:
        data.calls.append(f"GET {request.url.path}?{request.url.query}")
        if not authorised(request):
            return denied()
        equal: dict[str, list[str]] = {}
        ranges: list[tuple[str, str, int]] = []
        limit, after = DEFAULT_LIMIT, None
        for name, value in request.query_params.multi_items():
            if name == "limit":
                if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
                    return _invalid(f"limit must be between 1 and {MAX_LIMIT}", "limit")
                limit = int(value)
            elif name == "starting_after":
                if value not in data.invoices:
                    return _invalid(f"No such invoice: '{value}'", "starting_after")
                after = value
            elif name in EQUALITY_FILTERS:
                equal[name] = value.split(",") if name == "status" else [value]
            elif (parsed := _range_param(name)) is not None:
                if not value.lstrip("-").isdigit():
                    return _invalid(f"Invalid integer: {value}", name)
                ranges.append((*parsed, int(value)))
            else:
                return _invalid(f"Received unknown parameter: {name}", name)
        ordered = [i for i in newest_first(data) if _matches(i, equal, ranges)]
        if after is not None:
            anchor = data.invoices[after]
            key = (anchor["created"], anchor["id"])
            ordered = [i for i in ordered if (i["created"], i["id"]) < key]
        page = ordered[:limit]
        return JSONResponse(
            {
                "object": "list",
                "url": "/v1/invoices",
                "has_more": len(ordered) > limit,
                "data": page,
            }
        )

    async def get_invoice(request: Request) -> JSONResponse:
        data.calls.append(f"GET {request.url.path}")
        if not authorised(request):
            return denied()
        if request.query_params:
            name = next(iter(request.query_params))
            return _invalid(f"Received unknown parameter: {name}", name)
        invoice = data.invoices.get(request.path_params["ident"])
        if invoice is None:
            return _error(
                404, "invalid_request_error", f"No such invoice: '{request.path_params['ident']}'"
            )
        return JSONResponse(invoice)

    async def get_customer(request: Request) -> JSONResponse:
        data.calls.append(f"GET {request.url.path}")
        if not authorised(request):
            return denied()
        customer = data.customers.get(request.path_params["ident"])
        if customer is None:
            return _error(
                404, "invalid_request_error", f"No such customer: '{request.path_params['ident']}'"
            )
        return JSONResponse(customer)

    async def account(request: Request) -> JSONResponse:
        data.calls.append(f"GET {request.url.path}")
        if not authorised(request):
            return denied()
        return JSONResponse({"id": "acct_simulated", "object": "account"})

    async def form_of(request: Request, allowed: set[str]) -> dict[str, str] | JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind not in ("", "application/x-www-form-urlencoded"):
            return _invalid("Request bodies are form-encoded (application/x-www-form-urlencoded)")
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        for name in form:
            if name not in allowed:
                return _invalid(f"Received unknown parameter: {name}", name)
        return form

    def idempotent(allowed: set[str], work: Any) -> Any:
        """A POST handler answering a retry with its `Idempotency-Key` as the first time."""

        async def handle(request: Request) -> JSONResponse:
            data.calls.append(f"POST {request.url.path}")
            if not authorised(request):
                return denied()
            form = await form_of(request, allowed)
            if isinstance(form, JSONResponse):
                return form
            key = request.headers.get("idempotency-key")
            asked = (request.url.path, form)
            if key is not None and key in data.idempotent:
                earlier, (status, body) = data.idempotent[key]
                if earlier != asked:
                    return _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters",
                    )
                return JSONResponse(body, status_code=status)
            answer: JSONResponse = await work(request, form)
            if key is not None and answer.status_code < 500:
                data.idempotent[key] = (asked, (answer.status_code, orjson.loads(answer.body)))
            return answer

        return handle

    async def create_invoice(request: Request, form: dict[str, str]) -> JSONResponse:
        customer = form.get("customer")
        if customer not in data.customers:
            return _invalid(f"No such customer: '{customer}'", "customer")
        if not data.pending[customer]:
            return _invalid("Nothing to invoice for customer", "customer")
        amounts, data.pending[customer] = data.pending[customer], []
        created = max(i["created"] for i in data.invoices.values()) + 60 if data.invoices else 0
        invoice = _add_invoice(data, customer, created, amounts, "draft", "manual")
        return JSONResponse(invoice)

    def transition(name: str, allowed_from: tuple[str, ...], to: str) -> Any:
        async def act(request: Request, form: dict[str, str]) -> JSONResponse:
            invoice = data.invoices.get(request.path_params["ident"])
            if invoice is None:
                return _error(
                    404,
                    "invalid_request_error",
                    f"No such invoice: '{request.path_params['ident']}'",
                )
            if invoice["status"] not in allowed_from:
                return _invalid(
                    f"You cannot {name.replace('_', ' ')} an invoice that is {invoice['status']}"
                )
            invoice["status"] = to
            if to == "open" and invoice["number"] is None:
                invoice["number"] = f"INV-{int(invoice['id'][3:]):06d}"
                invoice["status_transitions"]["finalized_at"] = invoice["created"] + 60
            if to == "paid":
                invoice["amount_paid"], invoice["amount_remaining"] = invoice["total"], 0
            return JSONResponse(invoice)

        return idempotent(set(), act)

    routes = [
        Route("/v1/account", account, methods=["GET"]),
        Route("/v1/customers/{ident}", get_customer, methods=["GET"]),
        Route("/v1/invoices", list_invoices, methods=["GET"]),
        Route(
            "/v1/invoices",
            idempotent({"customer", "auto_advance", "description"}, create_invoice),
            methods=["POST"],
        ),
        Route("/v1/invoices/{ident}", get_invoice, methods=["GET"]),
        Route(
            "/v1/invoices/{ident}/finalize",
            transition("finalize", ("draft",), "open"),
            methods=["POST"],
        ),
        Route("/v1/invoices/{ident}/pay", transition("pay", ("open",), "paid"), methods=["POST"]),
        Route("/v1/invoices/{ident}/void", transition("void", ("open",), "void"), methods=["POST"]),
        Route(
            "/v1/invoices/{ident}/mark_uncollectible",
            transition("mark_uncollectible", ("open",), "uncollectible"),
            methods=["POST"],
        ),
    ]
    app = Starlette(routes=routes)
    app.state.data = data
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A Stripe-like SaaS billing API simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8702)
    parser.add_argument("--invoices", type=int, default=250)
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args()
    data = seed(args.invoices)
    data.api_key = args.api_key
    uvicorn.run(create_app(data), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
