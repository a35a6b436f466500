"""The TMF678 resource types the gateway serves, by collection path and OAS schema."""

from __future__ import annotations

from dataclasses import dataclass

API_PREFIX = "/tmf-api/customerBillManagement/v5"


@dataclass(frozen=True, slots=True)
class ResourceType:
    collection: str
    schema: str


CUSTOMER_BILL = ResourceType("customerBill", "CustomerBill")
CUSTOMER_BILL_ON_DEMAND = ResourceType("customerBillOnDemand", "CustomerBillOnDemand")
APPLIED_CUSTOMER_BILLING_RATE = ResourceType(
    "appliedCustomerBillingRate", "AppliedCustomerBillingRate"
)
BILL_CYCLE = ResourceType("billCycle", "BillCycle")

RESOURCE_TYPES: dict[str, ResourceType] = {
    r.collection: r
    for r in (CUSTOMER_BILL, CUSTOMER_BILL_ON_DEMAND, APPLIED_CUSTOMER_BILLING_RATE, BILL_CYCLE)
}
