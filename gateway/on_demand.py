"""Bills on demand: accept a request, keep it in the store, produce the bill in the back end.

POST validates the body against `CustomerBillOnDemand_FVO`, asks the back end's declared
action whether the request can be served (an unknown billing account is refused at
once), and stores it `inProgress`. The worker then runs the action, several requests at
once (a bounded number, and fewer per back end, so one hung back end cannot hold every
slot). Each request is leased, and the lease renewed while it runs, so a request is never
run by two workers at once, and one whose worker died is taken up again when the lease
runs out. The action is idempotent per request (the bundled one records the request id
on the bill), so a crash at any point yields exactly one bill.

A failure (timeout, error) does not say whether the back end made the bill. The bill is
then looked up by the request id: with the action file's `find:` at once, otherwise by
running the idempotent action again at the next attempt. Failures are retried with
backoff until the request is `retry_for_seconds` old; a reply that does not identify the
bill ends the request `terminatedWithError` with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from time import time
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.base import ActionResult, BackendAction, BackendError, BackendReplyError
from gateway.backoff import backoff_seconds
from gateway.calls import backend_call
from gateway.config import WorkerSettings
from gateway.errors import ApiError
from gateway.events import EventPublisher, build_event
from gateway.oas import schema_errors
from gateway.patch import invalid, parse_body
from gateway.reads import Reader
from gateway.store import GatewayStore, OnDemandRequest
from mappings.compiler import CompiledMapping
from mappings.transforms import Transform

Resource = dict[str, Any]

log = structlog.get_logger("gateway.on_demand")
audit = structlog.get_logger("gateway.audit")

_SET_BY_GATEWAY = ("id", "href", "customerBill")
#: What a request that ended on a reply without a usable bill id says (details: the log).
MALFORMED_REPLY = (
    "The billing back end answered without identifying the bill it made (a malformed reply);"
    " whether a bill exists must be checked in the back end"
)
#: Backoff doubles up to this attempt number, beyond which only the cap matters.
_MAX_DOUBLINGS = 32


@dataclass(frozen=True, slots=True)
class BillMaker:
    """A back end that makes bills on demand, and which billing accounts it holds."""

    backend: str
    action: BackendAction
    timeout: float
    bill_id: Transform  # the back end's bill key -> its TMF id
    prefix: str = ""  # the federated id prefix of its bills
    accounts: re.Pattern[str] | None = None
    #: Looks up the bill made for a request (`request_id`): done with its key, or rejected
    #: when there is none. Without it, running the idempotent action again is the lookup.
    find: BackendAction | None = None

    def holds(self, account: str) -> bool:
        return self.accounts is None or self.accounts.search(account) is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: its final state, the bill it made, or why it made none."""

    state: str
    customer_bill_id: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """An attempt that could not tell whether the bill was made, and why (for the log)."""

    reason: str


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
        self._by_backend = {maker.backend: maker for maker in makers}
        self._turn = 0  # which back end claims first, in rotation (fairness)

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
        """Claim due requests and run them concurrently, until cancelled.

        Slots are bounded overall (`concurrency`) and per back end
        (`per_backend_concurrency`); back ends claim in rotation. Cancelling (shutdown)
        stops the requests in flight and hands them back, due at once for another worker;
        a worker killed outright leaves them to be taken up when their leases run out.
        """
        running: dict[str, tuple[str, asyncio.Task[None]]] = {}  # request id -> back end, task
        log.info("on_demand_worker_started", owner=self.owner)  # whose leases are whose
        try:
            while True:
                self._wake.clear()  # before claiming: a wake-up during the claim is kept
                try:
                    claimed = await self._claim(running)
                except BackendError as exc:
                    log.error("on_demand_store_unavailable", detail=exc.reason)
                    claimed = 0
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
        finally:
            idents, tasks = list(running), [task for _, task in running.values()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            await self._hand_back(idents)

    async def _hand_back(self, idents: list[str]) -> None:
        """Release the requests this worker was running, for another worker to take now.

        The back end may have made a bill already: the action is idempotent per request,
        so whoever takes the request up finds that bill rather than making another.
        """
        try:
            released = await self.store.release_on_demand_claims(self.owner, idents)
        except BackendError as exc:  # their leases run out instead
            log.warning("on_demand_claims_not_released", detail=exc.reason)
            return
        if released:
            log.info("on_demand_claims_released", requests=released)

    async def _claim(self, running: dict[str, tuple[str, asyncio.Task[None]]]) -> int:
        """Claim what the free slots allow, back end by back end; how many were started."""
        busy = Counter(backend for backend, _ in running.values())
        free = self.settings.concurrency - len(running)
        count = len(self.makers)
        order = [self.makers[(self._turn + i) % count] for i in range(count)]
        self._turn = (self._turn + 1) % count
        started = 0
        for maker in order:
            room = min(free - started, self.settings.per_backend_concurrency - busy[maker.backend])
            if room <= 0:
                continue
            requests = await self.store.claim_on_demand_requests(
                self.owner,
                self.settings.lease_seconds,
                room,
                backend=maker.backend,
                # The first back end also takes requests recorded for none it knows.
                strays_besides=list(self._by_backend) if maker is self.makers[0] else None,
                skip=list(running),
            )
            for request in requests:
                task = asyncio.create_task(self._serve(request), name=f"on-demand-{request.id}")
                running[request.id] = (maker.backend, task)
                task.add_done_callback(partial(self._ended, running, request.id))
            started += len(requests)
        return started

    def _ended(
        self,
        running: dict[str, tuple[str, asyncio.Task[None]]],
        ident: str,
        task: asyncio.Task[None],
    ) -> None:
        running.pop(ident, None)
        self._wake.set()  # a slot is free
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("on_demand_task_failed", request=ident, error=repr(error))

    async def _serve(self, request: OnDemandRequest) -> None:
        """Work on one request; nothing it raises may reach the dispatcher unlogged."""
        try:
            await self._work(request)
        except BackendError as exc:  # the store: the lease runs out, the request is retried
            log.error("on_demand_store_unavailable", request=request.id, detail=exc.reason)
        except Exception:
            log.exception("on_demand_request_crashed", request=request.id)

    async def _work(self, request: OnDemandRequest) -> None:
        """One attempt at a request: run, look up if that failed, then record or retry."""
        maker = self._by_backend.get(request.backend or "", self.makers[0])
        params = {"request_id": request.id, "account_id": request.account_id}
        started = time()
        bill = None
        async with self._holding_lease(request.id):
            verdict = await self._attempt(maker, maker.action, params)
            if isinstance(verdict, Unknown):
                log.warning(
                    "on_demand_attempt_failed",
                    request=request.id,
                    backend=maker.backend,
                    attempt=request.attempts,
                    detail=verdict.reason,
                )
                if maker.find is not None:
                    verdict = await self._look_up(maker, params) or verdict
            elif self.settings.pause_after_action_seconds:
                await asyncio.sleep(self.settings.pause_after_action_seconds)
            if isinstance(verdict, Outcome) and verdict.customer_bill_id is not None:
                bill = await self._read_bill(verdict.customer_bill_id)
        if isinstance(verdict, Unknown):
            await self._retry_or_give_up(request, started)
            return
        if await self._finish(request.id, verdict, bill):
            log.info(
                f"on_demand_{verdict.state}",
                request=request.id,
                customer_bill=verdict.customer_bill_id,
                reason=verdict.description,
            )

    async def _attempt(
        self, maker: BillMaker, action: BackendAction, params: Mapping[str, Any]
    ) -> Outcome | Unknown:
        """Run an action under the back end's deadline; what its reply says."""
        try:
            async with asyncio.timeout(maker.timeout):
                result = await action.run(params)
        except TimeoutError:
            return Unknown(f"no answer within {maker.timeout:g} s")
        except BackendReplyError as exc:  # it answered, not as declared: again would not help
            log.error("on_demand_reply_malformed", backend=maker.backend, detail=exc.reason)
            return Outcome("terminatedWithError", description=f"{MALFORMED_REPLY} ({exc.reason})")
        except BackendError as exc:
            return Unknown(exc.reason)
        except Exception as exc:  # an adapter's own failure: the outcome is unknown all the same
            log.exception("on_demand_action_crashed", backend=maker.backend)
            return Unknown(f"{type(exc).__name__}: {exc}")
        return self._verdict(maker, result)

    def _verdict(self, maker: BillMaker, result: Any) -> Outcome:
        """The outcome an action's result stands for; a reply naming no bill is malformed."""
        if isinstance(result, ActionResult) and result.outcome == "rejected":
            reason = result.reason if isinstance(result.reason, str) and result.reason else None
            return Outcome("rejected", description=reason or "the billing back end refused")
        if isinstance(result, ActionResult) and result.outcome == "done":
            bill_id = _bill_id(maker, result.value)
            if bill_id is not None:
                return Outcome("done", customer_bill_id=bill_id)
        log.error(
            "on_demand_reply_malformed",
            backend=maker.backend,
            outcome=getattr(result, "outcome", None),
            value=repr(getattr(result, "value", result))[:200],
        )
        return Outcome("terminatedWithError", description=MALFORMED_REPLY)

    async def _look_up(self, maker: BillMaker, params: Mapping[str, Any]) -> Outcome | None:
        """The bill the back end made for the request after all (its `find:`), if any."""
        assert maker.find is not None
        found = await self._attempt(maker, maker.find, params)
        if isinstance(found, Outcome) and found.state == "done":
            log.info("on_demand_bill_found", request=params["request_id"], backend=maker.backend)
            return found
        if isinstance(found, Unknown):
            log.warning("on_demand_lookup_failed", backend=maker.backend, detail=found.reason)
        return None

    async def _read_bill(self, bill_id: str) -> Resource | None:
        """The new bill, for its create event; a bill that cannot be read now goes without."""
        if self.publisher is None:
            return None
        try:
            return await self.bills.get(bill_id, self.publisher.base_url)
        except (ApiError, BackendError) as exc:
            log.warning("on_demand_bill_unread", customer_bill=bill_id, detail=str(exc))
            return None

    @contextlib.asynccontextmanager
    async def _holding_lease(self, ident: str) -> AsyncIterator[None]:
        """Keep the request's lease while the block runs (back-end calls may be slow)."""
        renewer = asyncio.create_task(self._renew(ident))
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.wait([renewer])  # (a cancellation of ours still propagates)

    async def _renew(self, ident: str) -> None:
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await self.store.renew_on_demand_lease(ident, self.owner, lease)
            except BackendError as exc:
                log.warning("on_demand_lease_not_renewed", request=ident, detail=exc.reason)
                continue
            if not held:
                log.warning("on_demand_lease_lost", request=ident)
                return

    async def _finish(self, ident: str, outcome: Outcome, bill: Resource | None = None) -> bool:
        """The outcome, its events and (for a new bill) its first sighting: one transaction.

        False when the lease ran out and another worker owns the request now.
        """
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
                return False
            await self._publish(conn, ident, "CustomerBillOnDemandStateChangeEvent")
            if bill is not None and self.publisher is not None:
                seen = await self.publisher.observe(conn, "customerBill", bill["id"], bill["state"])
                if seen == "CreateEvent":
                    await self.publisher.publish(
                        conn, [build_event("CustomerBillCreateEvent", bill)]
                    )
        return True

    async def _publish(self, conn: AsyncConnection, ident: str, event_type: str) -> None:
        if self.publisher is None:
            return
        row = await self.store.on_demand_row(conn, ident)
        resource = self.requests.to_tmf(row, self.publisher.base_url)
        await self.publisher.publish(conn, [build_event(event_type, resource)])

    async def _retry_or_give_up(self, request: OnDemandRequest, started: float) -> None:
        """Try again after a backoff, unless an attempt begun after the deadline failed.

        The deadline is `retry_for_seconds` after the request's creation; the last retry is
        due at the deadline at the latest, so the request is given up only after it (or
        after `max_attempts`, when set).
        """
        created = request.created_at if request.created_at is not None else started
        deadline = created + self.settings.retry_for_seconds
        limit = self.settings.max_attempts
        if started >= deadline or (limit is not None and request.attempts >= limit):
            tries = f"{request.attempts} {'try' if request.attempts == 1 else 'tries'}"
            reason = (
                "The billing back end could not produce the bill"
                f" ({tries} in {time() - created:.0f} s)"
            )
            if await self._finish(request.id, Outcome("terminatedWithError", description=reason)):
                log.error("on_demand_gave_up", request=request.id, attempts=request.attempts)
            return
        delay = backoff_seconds(
            min(request.attempts, _MAX_DOUBLINGS),
            self.settings.retry_base_seconds,
            self.settings.retry_max_seconds,
        )
        await self.store.retry_on_demand_later(
            request.id, self.owner, min(delay, max(deadline - time(), 0.0))
        )


def _bill_id(maker: BillMaker, value: Any) -> str | None:
    """The TMF id of the bill a back end names in its reply; None when it names none."""
    if value is None or isinstance(value, bool):
        return None
    try:
        ident = maker.bill_id.to_tmf(value)
    except (TypeError, ValueError, ArithmeticError):
        return None
    if not isinstance(ident, str) or not ident:
        return None
    return maker.prefix + ident
