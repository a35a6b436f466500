"""Federated lists that answer from the healthy back ends (`resilience.federation: partial`).

By default a federated list fails when one of its back ends is down: a 503 naming it,
at once while its breaker is open. With `partial`, a back end that is down
(`BackendDown`: unreachable, timed out, breaker open, busy) is left out of the answer,
its matches and total with it, and the response says so (`X-Partial-Result: left out
<back end>`, added by gateway/request_scope.py). When every back end asked is down the
list still fails, with the first one's error. Reads by id name one back end: no change.
"""

from __future__ import annotations

from typing import Any

from gateway.federation import FederatedReader
from gateway.query import Query
from gateway.request_scope import current_request
from gateway.tolerance import tolerating

Resource = dict[str, Any]


class TolerantFederatedReader(FederatedReader):
    """A `FederatedReader` whose lists leave out back ends that are down."""

    async def list(self, query: Query, base: str) -> tuple[list[Resource], int]:
        with tolerating() as outcomes:
            items, total = await super().list(query, base)
        if outcomes.down and not outcomes.answered:
            raise outcomes.down[0][1]
        request = current_request()
        if request is not None:
            request.left_out.extend(sorted({backend for backend, _ in outcomes.down}))
        return items, total
