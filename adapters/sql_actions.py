"""Declared back-end actions for SQL back ends: parameterised statements in one transaction.

An action file (see `mappings/legacy_sql/produce_bill.yaml`) lists statements with
bound parameters and what each one decides:

- `finish_if_row: true`: a row means the work was already done; commit and return it;
- `reject_if_empty: reason`: no row means the request cannot be served (nothing written);
- `bind_row: true`: the row's columns become parameters of the following statements;
- `lock: true`: the SELECT locks the rows it reads until the action ends, so two
  actions on the same rows take turns (`FOR UPDATE` is added on PostgreSQL and
  MySQL/MariaDB; SQLite, one writer at a time, has nothing to add).

The SQL is the back end's, written once for every engine: standard SQL with double-quoted
names and `||`. On MySQL/MariaDB the action's session runs with `ANSI_QUOTES` and
`PIPES_AS_CONCAT` for that, and every action runs at READ COMMITTED, so a statement after
a lock sees what the previous holder committed (InnoDB's default, REPEATABLE READ, would
show a snapshot older than the lock).

`check` statements run when a request is accepted, so a bad request is refused at once;
`steps` run later, all in one transaction. The action's `result` names the parameter
returned (for producing a bill: the new bill's key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import TextClause, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.base import ActionResult, BackendError, SourceSpecError

_STEP_KEYS = frozenset({"sql", "finish_if_row", "reject_if_empty", "bind_row", "lock"})
_MYSQL = frozenset({"mysql", "mariadb"})
#: Standard SQL on MySQL/MariaDB: "quoted" names, || concatenates (set on each use; it
#: stays on the pooled connection, where SQLAlchemy's own `backquoted` SQL still works).
_ANSI_MODE = "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',ANSI_QUOTES,PIPES_AS_CONCAT')"


@dataclass(frozen=True, slots=True)
class _Step:
    statement: TextClause
    finish_if_row: bool
    reject_if_empty: str | None
    bind_row: bool


class _NowParam(NamedTuple):
    """A parameter that is the current time, in a legacy text format and zone."""

    fmt: str
    zone: ZoneInfo
    plus_days: int

    def value(self, now: datetime) -> str:
        return (now + timedelta(days=self.plus_days)).astimezone(self.zone).strftime(self.fmt)


class SqlAction:
    """One declared action, compiled at start-up."""

    def __init__(self, backend: str, engine: AsyncEngine, spec: Mapping[str, Any]) -> None:
        self.backend = backend
        self.engine = engine
        unknown = set(spec) - {"action", "params", "check", "steps", "result"}
        if unknown:
            raise SourceSpecError("action", f"unknown key(s) {sorted(unknown)}")
        self.name = str(spec.get("action") or "action")
        self.params = {
            name: _now_param(f"params.{name}", definition)
            for name, definition in (spec.get("params") or {}).items()
        }
        self.dialect = engine.dialect.name
        self.checks = [
            _step(f"check[{i}]", s, self.dialect) for i, s in enumerate(spec.get("check") or [])
        ]
        self.steps = [
            _step(f"steps[{i}]", s, self.dialect) for i, s in enumerate(spec.get("steps") or [])
        ]
        if not self.steps:
            raise SourceSpecError("steps", "an action needs at least one step")
        result = spec.get("result")
        if not isinstance(result, str):
            raise SourceSpecError("result", "name the parameter the action returns")
        self.result: str = result

    def _bindings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {**{n: p.value(now) for n, p in self.params.items()}, **given}

    async def check(self, params: Mapping[str, Any]) -> str | None:
        """The reason a request must be refused now, or None."""
        bindings = self._bindings(params)
        try:
            async with self.engine.connect() as conn:
                await self._standard_sql(conn)
                for step in self.checks:
                    verdict = await self._run_step(conn, step, bindings)
                    if verdict is not None:
                        return verdict.reason
        except SQLAlchemyError as exc:
            raise BackendError(f"{self.backend}: {self.name} check failed: {exc}") from exc
        return None

    async def run(self, params: Mapping[str, Any]) -> ActionResult:
        """Every step in one transaction; a rejection rolls back whatever was written."""
        bindings = self._bindings(params)
        try:
            async with self.engine.connect() as conn:
                if self.dialect != "sqlite":
                    await conn.execution_options(isolation_level="READ COMMITTED")
                await self._standard_sql(conn)
                transaction = await conn.begin()
                for step in self.steps:
                    verdict = await self._run_step(conn, step, bindings)
                    if verdict is not None:
                        if verdict.outcome == "rejected":
                            await transaction.rollback()
                        else:
                            await transaction.commit()
                        return verdict
                await transaction.commit()
        except SQLAlchemyError as exc:
            raise BackendError(f"{self.backend}: {self.name} failed: {exc}") from exc
        if self.result not in bindings:
            raise BackendError(f"{self.backend}: {self.name} produced no {self.result!r}")
        return ActionResult("done", bindings[self.result])

    async def _standard_sql(self, conn: AsyncConnection) -> None:
        if self.dialect in _MYSQL:
            await conn.exec_driver_sql(_ANSI_MODE)
            await conn.commit()

    async def _run_step(
        self, conn: AsyncConnection, step: _Step, bindings: dict[str, Any]
    ) -> ActionResult | None:
        result = await conn.execute(step.statement, bindings)
        row = result.mappings().first() if result.returns_rows else None
        if step.finish_if_row and row is not None:
            return ActionResult("done", row.get(self.result, next(iter(row.values()))))
        if step.reject_if_empty is not None and row is None:
            return ActionResult("rejected", None, step.reject_if_empty)
        if step.bind_row:
            if row is None:
                raise BackendError(f"{self.backend}: {self.name}: a step returned no row")
            bindings.update(row)
        return None


def _step(place: str, spec: Any, dialect: str) -> _Step:
    if not isinstance(spec, Mapping) or "sql" not in spec or set(spec) - _STEP_KEYS:
        raise SourceSpecError(
            place, f"a step is {{sql, and one of {sorted(_STEP_KEYS - {'sql'})}}}"
        )
    sql = str(spec["sql"]).strip()
    if spec.get("lock"):
        if not sql[:6].upper() == "SELECT":
            raise SourceSpecError(f"{place}.lock", "only a SELECT locks the rows it reads")
        if dialect != "sqlite":  # SQLite locks the whole database for its one writer
            sql = f"{sql.rstrip(';')} FOR UPDATE"
    return _Step(
        statement=text(sql),
        finish_if_row=bool(spec.get("finish_if_row")),
        reject_if_empty=spec.get("reject_if_empty"),
        bind_row=bool(spec.get("bind_row")),
    )


def _now_param(place: str, spec: Any) -> _NowParam:
    if (
        not isinstance(spec, Mapping)
        or "now" not in spec
        or set(spec) - {"now", "zone", "plus_days"}
    ):
        raise SourceSpecError(place, "a parameter is {now: strftime format, zone, plus_days}")
    try:
        zone = ZoneInfo(str(spec.get("zone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise SourceSpecError(place, f"unknown time zone {spec.get('zone')!r}") from None
    return _NowParam(str(spec["now"]), zone, int(spec.get("plus_days", 0)))
