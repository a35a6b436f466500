"""The adapter contract: what the gateway asks of a back end, in the back end's own terms.

Adapters never see TMF attribute names. The mapping's reverse direction turns a TMF
query into the `Predicate`s and sort keys below, on back-end columns and raw values;
an adapter runs them and returns raw records (plain dicts, child rows under the
child's name). One adapter instance per back end, opened at start-up.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Comparison operators a predicate may carry, in back-end terms.
COMPARE_OPS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte"})

# Headers the gateway asks every outgoing back-end HTTP call of the current request to
# carry (W3C `traceparent`, the request id). The gateway sets it per request; HTTP-based
# adapters add it to what they send. Adapters never import the gateway, so it lives here.
OUTGOING_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar(
    "outgoing_headers", default=None
)


@dataclass(frozen=True, slots=True)
class Compare:
    """`column <op> value`, where value is already in the back end's representation."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class IsNull:
    column: str


@dataclass(frozen=True, slots=True)
class AnyOf:
    """OR of the terms; an empty AnyOf matches nothing."""

    terms: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """AND of the terms; an empty AllOf matches everything."""

    terms: tuple[Predicate, ...]


Predicate = Compare | IsNull | AnyOf | AllOf

MATCH_ALL = AllOf(())
MATCH_NONE = AnyOf(())


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """A read in back-end terms: filter, order, and (when fully pushed down) a window."""

    where: Predicate = MATCH_ALL
    order_by: tuple[SortKey, ...] = ()
    offset: int = 0
    limit: int | None = None


def equalities(predicate: Predicate) -> dict[str, list[Any]] | None:
    """An AND of per-column ORs of equalities, as {column: values}; None for anything else.

    This is all that query-parameter APIs (REST, SOAP) can usually take.
    """
    if predicate == MATCH_ALL:
        return {}
    if isinstance(predicate, AllOf):
        out: dict[str, list[Any]] = {}
        for term in predicate.terms:
            found = equalities(term)
            if found is None or out.keys() & found.keys():
                return None
            out.update(found)
        return out
    terms = predicate.terms if isinstance(predicate, AnyOf) else (predicate,)
    if not terms or not all(isinstance(t, Compare) and t.op == "eq" for t in terms):
        return None
    columns = {t.column for t in terms}  # type: ignore[union-attr]
    if len(columns) != 1:
        return None
    return {columns.pop(): [t.value for t in terms]}  # type: ignore[union-attr]


def key_lookup(predicate: Predicate, key_column: str) -> Any | None:
    """The key value when the predicate asks for one record by its key, else None."""
    if isinstance(predicate, Compare) and predicate.column == key_column and predicate.op == "eq":
        return predicate.value
    return None


@dataclass(slots=True)
class Page:
    records: list[dict[str, Any]]
    total: int


class SourceSpecError(Exception):
    """A `source:` block of a mapping names something the back end does not have."""

    def __init__(self, place: str, reason: str) -> None:
        self.place = place
        self.reason = reason
        super().__init__(f"{place}: {reason}")


class BackendError(Exception):
    """The back end failed or could not be reached; the gateway answers 502/503/504."""

    def __init__(self, reason: str, *, status: int = 502, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        #: Seconds the back end asked for before another try (its `Retry-After`).
        self.retry_after = retry_after
        super().__init__(reason)


class BackendReplyError(BackendError):
    """The back end answered, but not as declared (a missing result, a wrong shape).

    Not worth retrying as it is: the same request gets the same answer.
    """


class QueryRefused(Exception):
    """A request the back end cannot serve as asked: a query it could answer only by reading
    more than it may (a list without a count, longer than its walk budget), a state change
    it refuses. The caller's 4xx, not a failure of the back end.

    Not a `BackendError`, so it is neither retried nor held against the back end's breaker.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int = 400,
        title: str = "Query needs a narrowing filter",
    ) -> None:
        self.reason = reason
        #: What the caller is told (no host names, no paths), under `title`.
        self.message = message
        self.status = status
        self.title = title
        super().__init__(reason)


# Statuses by which an HTTP back end says it is overloaded or down for now: worth another
# try, later. Anything else unexpected is its fault (502), not a passing state.
TRANSIENT_HTTP = frozenset({429, 502, 503, 504})


def http_failure(backend: str, what: str, status: int, retry_after: str | None) -> BackendError:
    """An unexpected HTTP status as a classified error: 503 (retry later) or 502."""
    seconds = None
    if retry_after is not None and retry_after.strip().isdigit():
        seconds = float(retry_after.strip())
    return BackendError(
        f"back end {backend!r}: {what} answered {status}",
        status=503 if status in TRANSIENT_HTTP else 502,
        retry_after=seconds,
    )


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What a back-end action did: `done` with its result, or `rejected` with a reason."""

    outcome: str
    value: Any = None
    reason: str | None = None


class BackendAction(Protocol):
    """A declared, parameterised piece of back-end work (e.g. produce a bill now)."""

    async def check(self, params: Mapping[str, Any]) -> str | None:
        """Why a request must be refused now (None when it may go ahead)."""
        ...

    async def run(self, params: Mapping[str, Any]) -> ActionResult:
        """Do the work, all or nothing; safe to run again for the same request."""
        ...


@dataclass(slots=True)
class SourceColumns:
    """The columns a bound source offers, so a mapping can be checked at start-up."""

    record: frozenset[str]
    children: Mapping[str, frozenset[str]] = field(default_factory=dict)


class Source(Protocol):
    """One resource's records in one back end, bound at start-up.

    A source may also define `accepts(predicate) -> bool` when what it can run depends on
    the combination (a REST API that takes several values only for some parameters); the
    planner then asks it instead of `can_push` term by term.
    """

    @property
    def columns(self) -> SourceColumns | None:
        """None when the back end cannot say before records arrive (REST, SOAP)."""
        ...

    @property
    def key_column(self) -> str:
        """The field that identifies a record: the last sort key, so paging is stable."""
        ...

    def can_push(self, column: str, op: str) -> bool:
        """Whether `column <op> value` can be evaluated by the back end."""
        ...

    def can_sort(self, column: str) -> bool: ...

    async def page(self, plan: Plan) -> Page:
        """Records matching `plan.where`, ordered and windowed, plus the count of all matches."""
        ...

    async def one(self, where: Predicate) -> dict[str, Any] | None: ...

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        """Compare-and-set: change rows matching `where` whose columns hold `expected`."""
        ...

    def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        """All records matching `plan.where` in `plan.order_by` order, in bounded batches."""
        ...


class StrictModel(BaseModel):
    """A configuration section: typed, frozen, and an unknown key is an error with a hint.

    The hint ("did you mean 'max_connections'?") is the point of checking keys here
    rather than leaving it to `extra="forbid"`: a misspelt option should not need a
    trip to the documentation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                    raise PydanticCustomError(
                        "unknown_key", "unknown key '{key}' ({hint})", {"key": key, "hint": hint}
                    )
        return data


class BackendOptions(StrictModel):
    """What every back end's config block takes; each adapter kind extends it.

    A kind's model narrows `kind` to its own name (`Literal["rest"]`), so the gateway's
    configuration can validate every back end as one union discriminated by `kind`.
    Unknown keys are errors, checked at start-up with the YAML file and line.
    """

    kind: str
    #: The deadline of one back-end call, and of the block of calls a request makes.
    timeout_seconds: float = Field(10.0, gt=0)


class Adapter(Protocol):
    """A connection to one back end: opened at start-up, closed at shutdown.

    An adapter class names its options model in a class attribute `Options` (a
    `BackendOptions` subclass) and is built as `cls(name, options)` with an instance of it;
    the registry checks both.
    """

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def bind(self, spec: Mapping[str, Any]) -> Source:
        """Check a mapping's `source:` block against the back end and return the source."""
        ...

    def action(self, spec: Mapping[str, Any]) -> BackendAction:
        """Compile a declared action for this back end (raises SourceSpecError)."""
        ...
