"""One TMF resource served by several back ends at once.

Each back end (a route) owns an id prefix, so ids stay unique and stable across back
ends (`L-42`, `E-EI-000007`); a read or PATCH by id goes to the route its prefix names.
A list goes to the routes a `billingAccount.id` filter can reach (a route may declare
the accounts it holds as a pattern) and otherwise to all of them; the gateway asks each
route for its first `offset + limit` matches in the requested order, merges them on the
same sort keys (ties keep route order, then each back end's own order), and adds the
routes' totals, so `X-Total-Count`, `offset` and `limit` mean what they mean for one.
References to another federated resource (a rate's `bill`, a bill's `billCycle`) carry
the prefix of the referred resource's route on the same back end, so their `href`s
resolve; filters on their ids are told apart by that prefix as ids are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any

from gateway.errors import ApiError, bad_request, not_found
from gateway.oas import AttributeTypes
from gateway.query import Filter, Query
from gateway.reads import BackendRoute
from gateway.residual import sort_key
from gateway.resources import with_prefixed_id
from gateway.writes import PatchRequest, ResourcePatcher, etag, matches_if_match

Resource = dict[str, Any]


class FederatedReader:
    def __init__(
        self,
        collection: str,
        routes: Sequence[BackendRoute],
        attributes: AttributeTypes,
        references: Mapping[str, Mapping[str, tuple[str, str]]] | None = None,
    ) -> None:
        self.collection = collection
        self._routes = tuple(routes)
        self.attributes = attributes
        #: back end -> referring attribute -> (referred collection, its route's id prefix)
        self._references = {backend: dict(refs) for backend, refs in (references or {}).items()}

    @property
    def routes(self) -> Sequence[BackendRoute]:
        return self._routes

    def route_of(self, ident: str) -> tuple[BackendRoute, str] | None:
        for route in self._routes:
            if ident.startswith(route.prefix):
                return route, ident[len(route.prefix) :]
        return None

    def tag(self, route: BackendRoute, item: Resource, base: str) -> Resource:
        """The back end's resource with the federated id (and the href that goes with it)."""
        tagged = with_prefixed_id(item, route.prefix, base, self.collection)
        for attribute, (collection, prefix) in self._references.get(route.backend, {}).items():
            ref = tagged.get(attribute)
            if isinstance(ref, dict) and "id" in ref and prefix:
                if tagged is item:  # never change the back end's (possibly cached) record
                    tagged = dict(item)
                tagged[attribute] = with_prefixed_id(ref, prefix, base, collection)
        return tagged

    async def get(self, ident: str, base: str) -> Resource | None:
        found = self.route_of(ident)
        if found is None:
            return None
        route, local = found
        item = await route.reader.get(local, base)
        return None if item is None else self.tag(route, item, base)

    async def list(self, query: Query, base: str) -> tuple[list[Resource], int]:
        for term in query.sort:  # a key no back end gives ties everything: meaningless
            if not any(term.path in route.reader.mapping.produced for route in self._routes):
                raise bad_request(
                    "Invalid sort", f"sort: {term.path!r} is not given by any back end's mapping"
                )
        plans = [(route, q) for route in self._routes if (q := self._for_route(route, query))]
        window = query.offset + query.limit
        results = await asyncio.gather(
            *(
                route.reader.list(dataclasses.replace(q, offset=0, limit=window), base)
                for route, q in plans
            )
        )
        total = sum(count for _, count in results)
        lists = [
            [self.tag(route, item, base) for item in items]
            for (route, _), (items, _) in zip(plans, results, strict=True)
        ]
        key = sort_key(query.sort, self.attributes.types) if query.sort else None
        merged = heapq.merge(*lists, key=key) if key else (i for items in lists for i in items)
        return list(islice(merged, query.offset, window)), total

    def _for_route(self, route: BackendRoute, query: Query) -> Query | None:
        """The query as this route must see it, or None when it cannot match there."""
        filters = []
        references = self._references.get(route.backend, {})
        for flt in query.filters:
            prefix = route.prefix if flt.path == "id" else None
            if flt.path.endswith(".id") and flt.path[:-3] in references:
                prefix = references[flt.path[:-3]][1]
            if prefix is not None:
                if flt.op not in ("eq", "ne"):
                    raise bad_request(
                        "Invalid filter", f"{flt.param!r}: ids take eq or ne across back ends"
                    )
                local = tuple(v[len(prefix) :] for v in flt.values if v.startswith(prefix))
                if flt.op == "eq" and not local:
                    return None  # none of the wanted ids lives here
                if local:
                    filters.append(Filter(flt.path, flt.op, local, flt.param))
                continue
            if flt.path == "billingAccount.id" and flt.op == "eq" and route.accounts:
                mine = tuple(v for v in flt.values if route.accounts.search(v))
                if not mine:
                    return None  # these accounts are held elsewhere
                filters.append(Filter(flt.path, flt.op, mine, flt.param))
                continue
            filters.append(flt)
        # A key this back end never gives is missing on all its resources: they tie on it.
        sort = tuple(t for t in query.sort if t.path in route.reader.mapping.produced)
        return dataclasses.replace(query, filters=tuple(filters), sort=sort)


class FederatedPatcher:
    """PATCH by federated id: the route's own patcher, on the back end's id."""

    def __init__(self, reader: FederatedReader, patchers: Mapping[str, ResourcePatcher]) -> None:
        self.reader = reader
        self.patchers = dict(patchers)  # back end -> its patcher (a back end may have none)

    async def patch(self, request: PatchRequest) -> tuple[Resource, str]:
        ident, base = request.ident, request.base
        found = self.reader.route_of(ident)
        patcher = self.patchers.get(found[0].backend) if found is not None else None
        if found is None or patcher is None:
            raise not_found(self.reader.collection, ident)
        route, local = found
        if request.if_match is not None:
            # ETags are over the federated resource; the route's write still compares-and-sets.
            current = await self.reader.get(ident, base)
            if current is None or not request.visible(current):
                raise not_found(self.reader.collection, ident)
            if not matches_if_match(request.if_match, etag(current, base)):
                raise ApiError(412, "Precondition failed", "The resource changed since that ETag")
        item, _ = await patcher.patch(dataclasses.replace(request, ident=local, if_match=None))
        tagged = self.reader.tag(route, item, base)
        return tagged, etag(tagged, base)
