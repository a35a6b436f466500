"""A home-grown REST billing service for enterprise accounts, for tests and the demo.

Its vocabulary is its own: invoices with snake_case fields, amounts in cents, ISO dates,
upper-case status words, page/size paging, OAuth2 client credentials, and an error body
of `{"error": {"code", "message"}}`. Deterministic data; state lives in memory.

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


@dataclass
class BillingData:
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    unbilled_cents: dict[str, int] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # bill-now reference -> invoice
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    tokens_issued: int = 0


def seed(invoices: int = 80, accounts: int = 12, rng_seed: int = 6780) -> BillingData:
    rng = random.Random(rng_seed)
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
    return data


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
        try:
            page = int(params.get("page", "1"))
            size = int(params.get("size", "20"))
        except ValueError:
            return _error(400, "BAD_PARAMETER", "page and size are numbers")
        if page < 1 or not 1 <= size <= 100:
            return _error(400, "BAD_PARAMETER", "page >= 1, 1 <= size <= 100")
        items = list(data.invoices.values())
        account = request.path_params.get("account_id") or params.get("account_id")
        if account:
            items = [i for i in items if i["account_id"] == account]
        if "status" in params:
            wanted = set(params["status"].split(","))
            items = [i for i in items if i["status"] in wanted]
        for key in reversed((params.get("sort") or "invoice_id").split(",")):
            name = key.lstrip("-")
            if name not in SORTABLE:
                return _error(400, "BAD_PARAMETER", f"cannot sort by {name}")
            items.sort(key=lambda i, n=name: i[n], reverse=key.startswith("-"))
        window = items[(page - 1) * size : page * size]
        return JSONResponse(
            {"items": window, "page": page, "size": size, "total_items": len(items)}
        )

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
