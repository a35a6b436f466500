"""Bills on demand: accept a request, keep it in the store, produce the bill in the back end.

POST validates the body against `CustomerBillOnDemand_FVO`, asks the back end's declared
action whether the request can be served (an unknown billing account is refused at
once), and stores it `inProgress`. A worker then runs the action. It is leased, so a
request is never run by two workers at once, and a request whose worker died is
picked up again when the lease runs out; the action itself is idempotent per request
(the bundled one records the request id on the bill), so a crash at any point yields
exactly one bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.base import BackendAction, BackendError
from gateway.backoff import backoff_seconds
from gateway.calls import backend_call
from gateway.config import WorkerSettings
from gateway.errors import ApiError
from gateway.events import EventPublisher, build_event
from gateway.oas import schema_errors
from gateway.patch import invalid, parse_body
from gateway.reads import Reader
from gateway.store import GatewayStore
from mappings.compiler import CompiledMapping
from mappings.transforms import Transform

Resource = dict[str, Any]

log = structlog.get_logger("gateway.on_demand")
audit = structlog.get_logger("gateway.audit")

_SET_BY_GATEWAY = ("id", "href", "customerBill")


@dataclass(frozen=True, slots=True)
class BillMaker:
    """A back end that makes bills on demand, and which billing accounts it holds."""

    backend: str
    action: BackendAction
    timeout: float
    bill_id: Transform  # the back end's bill key -> its TMF id
    prefix: str = ""  # the federated id prefix of its bills
    accounts: re.Pattern[str] | None = None

    def holds(self, account: str) -> bool:
        return self.accounts is None or self.accounts.search(account) is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: its final state, the bill it made, or why it made none."""

    state: str
    customer_bill_id: str | None = None
    description: str | None = None


class OnDemandService:
    def __init__(
        self,
        store: GatewayStore,
        makers: list[BillMaker],
        bills: Reader,
        requests: CompiledMapping,
        settings: WorkerSettings,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.store = store
        self.makers = makers
        self.bills = bills  # where the produced bills are read, for their events
        self.requests = requests  # the on-demand mapping, for events about requests
        self.settings = settings
        self.publisher = publisher
        self.owner = str(uuid.uuid4())
        self._wake = asyncio.Event()

    async def accept(
        self, body: bytes, allows_account: Callable[[str], bool] = lambda account: True
    ) -> str:
        """Validate and store a request; returns its id. 400 for anything wrong.

        An account the caller may not bill is refused alike whether it exists or not.
        """
        request = parse_body(body)
        if not isinstance(request, dict):
            raise invalid("Invalid body", "A CustomerBillOnDemand is a JSON object")
        given = [key for key in _SET_BY_GATEWAY if key in request]
        if given:
            raise invalid("Attribute not allowed", f"{', '.join(given)}: set by the gateway")
        if request.get("state", "inProgress") != "inProgress":
            raise invalid("Attribute not allowed", "a new request's state is inProgress")
        # The OAS requires @type; a missing one is taken as the only possible value.
        request.setdefault("@type", "CustomerBillOnDemand")
        reference = request.get("billingAccount")
        if isinstance(reference, dict):
            reference.setdefault("@type", "BillingAccountRef")
        errors = schema_errors("CustomerBillOnDemand_FVO", request)
        if errors:
            raise invalid("Invalid CustomerBillOnDemand", "; ".join(errors[:5]))
        if request["@type"] != "CustomerBillOnDemand":
            raise invalid("Invalid CustomerBillOnDemand", "@type must be CustomerBillOnDemand")
        account = request["billingAccount"]  # an object with an id: the schema says so
        if not allows_account(account["id"]):
            raise ApiError(
                400,
                "Billing account not usable",
                f"billingAccount {account['id']!r}: not an account this caller may bill",
                code="INVALID_BILLING_ACCOUNT",
            )
        maker = next((m for m in self.makers if m.holds(account["id"])), None)
        if maker is None:
            raise ApiError(
                400,
                "Billing account not usable",
                f"billingAccount {account['id']!r}: no back end holds this account",
                code="INVALID_BILLING_ACCOUNT",
            )
        async with backend_call(maker.backend, maker.timeout):
            refusal = await maker.action.check({"account_id": account["id"], "request_id": ""})
        if refusal is not None:
            raise ApiError(
                400,
                "Billing account not usable",
                f"billingAccount {account['id']!r}: {refusal}",
                code="INVALID_BILLING_ACCOUNT",
            )
        async with self.store.transaction() as conn:
            ident = await self.store.create_on_demand(
                conn,
                backend=maker.backend,
                account_id=account["id"],
                account_name=account.get("name"),
                name=request.get("name"),
                description=request.get("description"),
                related_party=request.get("relatedParty"),
            )
            await self._publish(conn, ident, "CustomerBillOnDemandCreateEvent")
        log.info("on_demand_accepted", request=ident, account=account["id"])
        audit.info("customerBillOnDemand_created", id=ident, account=account["id"])
        self._wake.set()
        return ident

    async def run_worker(self) -> None:
        """Work until cancelled: claim, run, record; sleep when there is nothing to do."""
        while True:
            try:
                worked = await self.work_once()
            except BackendError as exc:
                log.error("on_demand_store_unavailable", detail=exc.reason)
                worked = False
            if not worked:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def work_once(self) -> bool:
        """Run one due request, if any; True when one was run."""
        claimed = await self.store.claim_on_demand(self.owner, self.settings.lease_seconds)
        if claimed is None:
            return False
        maker = next((m for m in self.makers if m.backend == claimed.backend), self.makers[0])
        params = {"request_id": claimed.id, "account_id": claimed.account_id}
        try:
            async with asyncio.timeout(maker.timeout):
                result = await maker.action.run(params)
        except (BackendError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, BackendError) else "the back end timed out"
            await self._failed(claimed.id, claimed.attempts, reason)
            return True
        if self.settings.pause_after_action_seconds:
            await asyncio.sleep(self.settings.pause_after_action_seconds)
        if result.outcome == "rejected":
            await self._finish(claimed.id, Outcome("rejected", description=result.reason))
            log.info("on_demand_rejected", request=claimed.id, reason=result.reason)
            return True
        bill_id = maker.prefix + maker.bill_id.to_tmf(result.value)
        bill = None
        if self.publisher is not None:
            bill = await self.bills.get(bill_id, self.publisher.base_url)
        await self._finish(claimed.id, Outcome("done", customer_bill_id=bill_id), bill)
        log.info("on_demand_done", request=claimed.id, customer_bill=bill_id)
        return True

    async def _finish(self, ident: str, outcome: Outcome, bill: Resource | None = None) -> None:
        """The outcome, its events and (for a new bill) its first sighting: one transaction."""
        async with self.store.transaction() as conn:
            finished = await self.store.finish_on_demand(
                conn,
                ident,
                self.owner,
                outcome.state,
                customer_bill_id=outcome.customer_bill_id,
                description=outcome.description,
            )
            if not finished:
                return  # our lease ran out and another worker owns the request now
            await self._publish(conn, ident, "CustomerBillOnDemandStateChangeEvent")
            if bill is not None and self.publisher is not None:
                seen = await self.publisher.observe(conn, "customerBill", bill["id"], bill["state"])
                if seen == "CreateEvent":
                    await self.publisher.publish(
                        conn, [build_event("CustomerBillCreateEvent", bill)]
                    )

    async def _publish(self, conn: AsyncConnection, ident: str, event_type: str) -> None:
        if self.publisher is None:
            return
        row = await self.store.on_demand_row(conn, ident)
        resource = self.requests.to_tmf(row, self.publisher.base_url)
        await self.publisher.publish(conn, [build_event(event_type, resource)])

    async def _failed(self, ident: str, attempts: int, reason: str) -> None:
        log.warning("on_demand_attempt_failed", request=ident, attempt=attempts, detail=reason)
        if attempts >= self.settings.max_attempts:
            reason = f"The billing back end could not produce the bill ({attempts} tries)"
            await self._finish(
                ident,
                Outcome("terminatedWithError", description=reason),
            )
            return
        delay = backoff_seconds(
            attempts, self.settings.retry_base_seconds, self.settings.retry_max_seconds
        )
        await self.store.retry_on_demand_later(ident, self.owner, delay)
