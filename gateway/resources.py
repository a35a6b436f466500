"""The TMF678 resource types the gateway serves, by collection path and OAS schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

API_PREFIX = "/tmf-api/customerBillManagement/v5"


@dataclass(frozen=True, slots=True)
class ResourceType:
    collection: str
    schema: str
    #: The attribute naming the billing account a resource belongs to: a caller's data
    #: scope applies there. None: shared by every account (bill cycles).
    account_path: str | None = "billingAccount.id"


CUSTOMER_BILL = ResourceType("customerBill", "CustomerBill")
CUSTOMER_BILL_ON_DEMAND = ResourceType("customerBillOnDemand", "CustomerBillOnDemand")
APPLIED_CUSTOMER_BILLING_RATE = ResourceType(
    "appliedCustomerBillingRate", "AppliedCustomerBillingRate"
)
BILL_CYCLE = ResourceType("billCycle", "BillCycle", account_path=None)


def with_prefixed_id(
    resource: dict[str, Any], prefix: str, base: str, collection: str
) -> dict[str, Any]:
    """A back end's resource under its federated id (`L-42`), with the href that goes with it."""
    if not prefix:
        return resource
    ident = prefix + str(resource["id"])
    return {**resource, "id": ident, "href": f"{base}/{collection}/{ident}"}


#: Attributes that refer to a resource this gateway serves: collection -> attribute ->
#: the referred collection. Federated, such a reference carries the referred route's id
#: prefix too, so that its `href` resolves here.
REFERENCES: dict[str, dict[str, str]] = {
    "customerBill": {"billCycle": "billCycle"},
    "appliedCustomerBillingRate": {"bill": "customerBill"},
}

RESOURCE_TYPES: dict[str, ResourceType] = {
    r.collection: r
    for r in (CUSTOMER_BILL, CUSTOMER_BILL_ON_DEMAND, APPLIED_CUSTOMER_BILLING_RATE, BILL_CYCLE)
}
