"""Who is calling, and what of the data they may see: the routes' one door.

Every operation names the scope it needs; `Access.caller` authenticates the request for
it (or answers 401/403). A caller limited to some billing accounts sees only their
resources: the limit is added to the query as one more filter, so it goes down to the
back end like any other (SQL `WHERE`, REST/SOAP parameters, federation routing) and the
totals count only the caller's rows. A single resource outside the scope is a 404,
exactly as for an id that does not exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request

from gateway.auth import Authenticator, AuthScopes, Caller
from gateway.query import Filter, Query
from gateway.resources import ResourceType

Resource = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Access:
    authenticator: Authenticator
    scopes: AuthScopes

    async def caller(self, request: Request, scope: str) -> Caller:
        """The authenticated caller of an operation that needs `scope` (401/403 otherwise)."""
        caller = await self.authenticator.authenticate(_authorization(request), scope)
        structlog.contextvars.bind_contextvars(subject=caller.subject, client_id=caller.client_id)
        return caller


def _authorization(request: Request) -> str | None:
    """The `Authorization` header, read from the ASGI scope (no `Headers` built for it)."""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            return text
    return None


def scoped_query(query: Query, resource: ResourceType, caller: Caller) -> Query | None:
    """The query limited to the caller's accounts; None when it can match nothing."""
    if caller.accounts is None or resource.account_path is None:
        return query
    if not caller.accounts:
        return None
    limit = Filter(resource.account_path, "eq", tuple(sorted(caller.accounts)), "data scope")
    return dataclasses.replace(query, filters=(*query.filters, limit))


def visible(item: Resource, resource: ResourceType, caller: Caller) -> bool:
    """Whether one resource lies inside the caller's data scope."""
    if caller.accounts is None or resource.account_path is None:
        return True
    node: Any = item
    for part in resource.account_path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, str) and node in caller.accounts
