"""A home-grown REST billing service for enterprise accounts, for tests and the demo.

Its vocabulary is its own: invoices, charges and bill runs with snake_case fields,
amounts in cents, ISO dates, upper-case status words, page/size paging, OAuth2 client
credentials, and an error body of `{"error": {"code", "message"}}`. Deterministic data;
state lives in memory. A bill-now reference can be looked up afterwards
(`GET /api/v1/bill-now-references/{reference}`), so a caller whose answer was lost can
find the invoice it made.

    python -m simulators.rest_billing --port 8701
"""

from __future__ import annotations

import argparse
import base64
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CLIENT_ID = "gateway"
CLIENT_SECRET = "s3cret"
STATUSES = ("OPEN", "ON_HOLD", "APPROVED", "ISSUED", "PAID", "PART_PAID")
SORTABLE = ("invoice_id", "invoice_number", "issued_on", "due_on", "total_cents", "updated_at")
CHARGE_TYPES = ("RECURRING", "USAGE", "ONE_TIME", "CREDIT", "PENALTY")
CHARGES_SORTABLE = ("charge_id", "posted_at", "net_cents", "name")
RUNS_SORTABLE = ("run_id", "billing_date", "code")


@dataclass
class BillingData:
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    unbilled_cents: dict[str, int] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # bill-now reference -> invoice
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    tokens_issued: int = 0


def seed(invoices: int = 80, accounts: int = 12, rng_seed: int = 6780) -> BillingData:
    rng = random.Random(rng_seed)
    lines = random.Random(rng_seed + 1)  # charges: the invoices stay what they were
    data = BillingData()
    for n in range(1, accounts + 1):
        ident = f"ENT-{n:04d}"
        data.accounts[ident] = {"account_id": ident, "name": f"Enterprise customer {n}"}
        data.unbilled_cents[ident] = rng.randint(5_000, 90_000) if n % 3 else 0
    for n in range(1, invoices + 1):
        account = f"ENT-{rng.randint(1, accounts):04d}"
        issued = date(2024, 1, 1) + timedelta(days=rng.randint(0, 380))
        net = rng.randint(10_000, 2_000_000)
        tax = round(net * 0.19)
        status = STATUSES[n % len(STATUSES)] if n > 12 else "OPEN"
        total = net + tax
        balance = 0 if status == "PAID" else total // 2 if status == "PART_PAID" else total
        data.invoices[f"EI-{n:06d}"] = _invoice(
            f"EI-{n:06d}",
            f"E-{issued.year}-{n:04d}",
            account,
            issued,
            net,
            tax,
            balance,
            status,
            "CYCLE",
        )
        _charge_invoice(data, data.invoices[f"EI-{n:06d}"], lines)
    for ident, cents in sorted(data.unbilled_cents.items()):
        if cents > 0:  # what bill-now will gather
            _add_charge(
                data, ident, None, "USAGE", date(2025, 1, 20), cents, "Usage since last bill"
            )
    for month in range(1, 14):
        _add_run(data, month)
    return data


def _add_charge(
    data: BillingData,
    account: str,
    invoice: str | None,
    kind: str,
    posted: date,
    net: int,
    name: str,
    product: str | None = None,
) -> dict[str, Any]:
    ident = f"CH-{len(data.charges) + 1:06d}"
    start = posted.replace(day=1)
    charge = {
        "charge_id": ident,
        "account_id": account,
        "invoice_id": invoice,
        "billed": invoice is not None,
        "type": kind,
        "name": name,
        "description": f"{name} ({kind.lower().replace('_', ' ')})",
        "posted_at": f"{posted.isoformat()}T06:30:00Z",
        "period": {"from": start.isoformat(), "to": posted.isoformat()},
        "currency": "EUR",
        "net_cents": net,
        "tax": {"code": "VAT19", "rate": "19.00", "amount_cents": round(net * 0.19)},
        "product_id": product,
    }
    data.charges[ident] = charge
    return charge


def _charge_invoice(data: BillingData, invoice: dict[str, Any], rng: random.Random) -> None:
    """The charge lines an invoice was made of: a recurring fee and usage (net adds up)."""
    issued = date.fromisoformat(invoice["issued_on"])
    net = invoice["net_cents"]
    fee = net * rng.randint(40, 80) // 100
    account, ident = invoice["account_id"], invoice["invoice_id"]
    product = f"PRD-{rng.randint(1, 9):02d}"
    _add_charge(data, account, ident, "RECURRING", issued, fee, "Monthly fee", product)
    _add_charge(data, account, ident, "USAGE", issued, net - fee, "Usage", product)


def _add_run(data: BillingData, month: int) -> None:
    """A monthly bill run of 2024 (month 13: January 2025)."""
    first = date(2024 + (month - 1) // 12, (month - 1) % 12 + 1, 1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    billing = last + timedelta(days=1)
    ident = f"BR-{first:%Y%m}"
    data.runs[ident] = {
        "run_id": ident,
        "code": f"ENT-{first:%Y-%m}",
        "label": first.strftime("%B %Y"),
        "description": f"Enterprise bill run for {first:%B %Y}",
        "period": {"from": first.isoformat(), "to": last.isoformat()},
        "billing_date": billing.isoformat(),
        "mailing_date": (billing + timedelta(days=2)).isoformat(),
        "charge_date": (billing + timedelta(days=10)).isoformat(),
        "credit_date": last.isoformat(),
        "due_date": (billing + timedelta(days=30)).isoformat(),
        "schedule": "MONTHLY-ENT",
    }


def _invoice(
    ident: str,
    number: str,
    account: str,
    issued: date,
    net: int,
    tax: int,
    balance: int,
    status: str,
    kind: str,
) -> dict[str, Any]:
    start = issued.replace(day=1) - timedelta(days=1)
    return {
        "invoice_id": ident,
        "invoice_number": number,
        "account_id": account,
        "issued_on": issued.isoformat(),
        "due_on": (issued + timedelta(days=30)).isoformat(),
        "period": {"from": start.replace(day=1).isoformat(), "to": start.isoformat()},
        "status": status,
        "kind": kind,
        "currency": "EUR",
        "net_cents": net,
        "tax_cents": tax,
        "total_cents": net + tax,
        "balance_cents": balance,
        "taxes": [{"code": "VAT19", "rate": "19.00", "amount_cents": tax}],
        "pdf_ref": f"edoc://{number}",
        "updated_at": f"{issued.isoformat()}T08:00:00Z",
    }


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _paged(
    items: list[dict[str, Any]], params: Any, sortable: tuple[str, ...], default: str
) -> Response:
    """A page of `items` in the requested order (`sort=-a,b`), with the count of all."""
    try:
        page = int(params.get("page", "1"))
        size = int(params.get("size", "20"))
    except ValueError:
        return _error(400, "BAD_PARAMETER", "page and size are numbers")
    if page < 1 or not 1 <= size <= 100:
        return _error(400, "BAD_PARAMETER", "page >= 1, 1 <= size <= 100")
    for key in reversed((params.get("sort") or default).split(",")):
        name = key.lstrip("-")
        if name not in sortable:
            return _error(400, "BAD_PARAMETER", f"cannot sort by {name}")
        items.sort(key=lambda i, n=name: i[n], reverse=key.startswith("-"))
    window = items[(page - 1) * size : page * size]
    return JSONResponse({"items": window, "page": page, "size": size, "total_items": len(items)})


def _equal(items: list[dict[str, Any]], params: Any, name: str) -> list[dict[str, Any]]:
    """Items whose `name` is one of the parameter's comma-separated values (if given)."""
    if name not in params:
        return items
    wanted = set(params[name].split(","))
    return [i for i in items if str(i[name]).lower() in {w.lower() for w in wanted}]


def create_app(data: BillingData | None = None) -> Starlette:
    data = data or seed()

    def authorised(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ")
        return data.tokens.get(token, 0) > time.time()

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if (client_id, client_secret) != (CLIENT_ID, CLIENT_SECRET):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = secrets.token_hex(16)
        data.tokens[issued] = time.time() + 300
        data.tokens_issued += 1
        return JSONResponse({"access_token": issued, "token_type": "Bearer", "expires_in": 300})

    async def guarded(request: Request) -> Response | None:
        if not authorised(request):
            return _error(401, "UNAUTHORIZED", "a valid bearer token is required")
        return None

    async def list_invoices(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        params = request.query_params
        items = list(data.invoices.values())
        account = request.path_params.get("account_id") or params.get("account_id")
        if account:
            items = [i for i in items if i["account_id"] == account]
        if "status" in params:
            wanted = set(params["status"].split(","))
            items = [i for i in items if i["status"] in wanted]
        return _paged(items, params, SORTABLE, "invoice_id")

    async def list_charges(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        params = request.query_params
        items = list(data.charges.values())
        for name in ("account_id", "invoice_id", "type", "billed"):
            items = _equal(items, params, name)
        return _paged(items, params, CHARGES_SORTABLE, "charge_id")

    async def get_charge(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        charge = data.charges.get(request.path_params["charge_id"])
        if charge is None:
            return _error(404, "NOT_FOUND", "no such charge")
        return JSONResponse(charge)

    async def list_runs(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        params = request.query_params
        items = _equal(list(data.runs.values()), params, "code")
        return _paged(items, params, RUNS_SORTABLE, "run_id")

    async def get_run(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        run = data.runs.get(request.path_params["run_id"])
        if run is None:
            return _error(404, "NOT_FOUND", "no such bill run")
        return JSONResponse(run)

    async def find_reference(request: Request) -> Response:
        """The invoice a bill-now call with this reference made (404: none)."""
        if (denied := await guarded(request)) is not None:
            return denied
        invoice = data.references.get(request.path_params["reference"])
        if invoice is None:
            return _error(404, "NOT_FOUND", "no invoice was made for this reference")
        return JSONResponse({"reference": request.path_params["reference"], "invoice_id": invoice})

    async def get_invoice(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        invoice = data.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return _error(404, "NOT_FOUND", "no such invoice")
        return JSONResponse(invoice)

    async def patch_invoice(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        invoice = data.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return _error(404, "NOT_FOUND", "no such invoice")
        body = await request.json()
        if "expected_status" in body and body["expected_status"] != invoice["status"]:
            return _error(409, "CONFLICT", "the invoice changed meanwhile")
        if "status" in body:
            if body["status"] not in STATUSES:
                return _error(400, "BAD_STATUS", "unknown status")
            invoice["status"] = body["status"]
        invoice["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return JSONResponse(invoice)

    async def get_account(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        account = data.accounts.get(request.path_params["account_id"])
        if account is None:
            return _error(404, "NOT_FOUND", "no such account")
        return JSONResponse(account)

    async def bill_now(request: Request) -> Response:
        if (denied := await guarded(request)) is not None:
            return denied
        account = request.path_params["account_id"]
        if account not in data.accounts:
            return _error(404, "NOT_FOUND", "no such account")
        reference = (await request.json()).get("reference")
        if reference in data.references:
            return JSONResponse({"invoice_id": data.references[reference]}, status_code=200)
        net = data.unbilled_cents.get(account, 0)
        if net <= 0:
            return _error(422, "NOTHING_TO_BILL", "the account has no unbilled usage")
        ident = f"EI-{len(data.invoices) + 1:06d}"
        tax = round(net * 0.19)
        invoice = _invoice(
            ident,
            f"E-ADHOC-{len(data.invoices) + 1:04d}",
            account,
            date.today(),
            net,
            tax,
            net + tax,
            "OPEN",
            "ADHOC",
        )
        invoice["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data.invoices[ident] = invoice
        data.unbilled_cents[account] = 0
        for charge in data.charges.values():
            if charge["account_id"] == account and charge["invoice_id"] is None:
                charge["invoice_id"], charge["billed"] = ident, True
        if reference:
            data.references[reference] = ident
        return JSONResponse({"invoice_id": ident}, status_code=201)

    app = Starlette(
        routes=[
            Route("/oauth/token", token, methods=["POST"]),
            Route("/api/v1/invoices", list_invoices),
            Route("/api/v1/invoices/{invoice_id}", get_invoice),
            Route("/api/v1/invoices/{invoice_id}", patch_invoice, methods=["PATCH"]),
            Route("/api/v1/accounts/{account_id}", get_account),
            Route("/api/v1/accounts/{account_id}/invoices", list_invoices),
            Route("/api/v1/accounts/{account_id}/bill-now", bill_now, methods=["POST"]),
            Route("/api/v1/bill-now-references/{reference}", find_reference),
            Route("/api/v1/charges", list_charges),
            Route("/api/v1/charges/{charge_id}", get_charge),
            Route("/api/v1/bill-runs", list_runs),
            Route("/api/v1/bill-runs/{run_id}", get_run),
        ]
    )
    app.state.data = data
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8701)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
