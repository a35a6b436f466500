"""SQL back ends through SQLAlchemy 2 Core, async (aiosqlite by default, any async driver).

The database URL is configuration: the same adapter serves the bundled SQLite demo and
a PostgreSQL billing database. Tables are reflected once at start-up; per request the
adapter only builds a statement from the plan, with every value a bound parameter.
Beyond comparisons it runs the terms of adapters/predicates.py: regexes (an index range,
a LIKE, and on SQLite RE2 itself: adapters/sql_regex.py) and matches on child rows (a
semi-join, or an EXISTS probe when an index, the sort's or the key's, should drive the page).

A mapping's `source:` block for this adapter:

    source:
      table: INV_HDR
      key: INV_ID                  # unique; the last sort key, so paging is stable
      children:                    # child rows, fetched for a whole page in one query
        taxes: {table: INV_TAX, key: INV_ID, order_by: [SEQ_NO]}
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    MetaData,
    Select,
    Table,
    Uuid,
    and_,
    column,
    event,
    exists,
    false,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Result
from sqlalchemy.exc import DBAPIError, NoSuchTableError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import KeyedColumnElement
from sqlalchemy.sql.expression import FromClause
from sqlalchemy.sql.sqltypes import NullType

from adapters.base import (
    COMPARE_OPS,
    MATCH_ALL,
    AllOf,
    AnyOf,
    BackendError,
    BackendOptions,
    Compare,
    IsNull,
    Page,
    Plan,
    Predicate,
    SourceColumns,
    SourceSpecError,
)
from adapters.expressions import Expr
from adapters.kinds import Kind, TypedColumns
from adapters.predicates import (
    CHILD_OPS,
    EXISTS,
    NOT_EXISTS,
    NOT_NULL,
    REGEX,
    REGEX_CANDIDATES,
    ChildMatch,
)
from adapters.sql_actions import SqlAction
from adapters.sql_derived import COMPARE, ChildTable, NotInSql, SqlExpressions
from adapters.sql_regex import literal, regex_condition, register_re2, runs_re2


class SqlOptions(BackendOptions):
    """`{kind: sql, url: <async SQLAlchemy URL>}`: the database and its pool."""

    kind: Literal["sql"] = "sql"
    url: str = Field(min_length=1)
    #: Connections kept open (server databases; SQLite files use one per thread).
    pool_size: int = Field(5, gt=0)


class SqlAdapter:
    """One engine (and connection pool) per back end, opened at start-up."""

    Options: ClassVar[type[SqlOptions]] = SqlOptions

    def __init__(self, name: str, options: SqlOptions) -> None:
        self.name = name
        self.url = options.url
        self._pool_size = options.pool_size
        self._engine: AsyncEngine | None = None
        self._metadata = MetaData()
        self._queries = 0  # `select:` sources bound, each a named subquery

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"back end {self.name!r} is not open")
        return self._engine

    async def open(self) -> None:
        options: dict[str, Any] = {"pool_pre_ping": False}
        if not self.url.startswith("sqlite"):
            options["pool_size"] = self._pool_size
        self._engine = create_async_engine(self.url, **options)
        if self._engine.dialect.name == "sqlite":  # regex filters run RE2 in the driver
            event.listen(self._engine.sync_engine, "connect", register_re2)
        threads_before = set(threading.enumerate())
        try:
            async with self._engine.connect() as conn:
                await conn.execute(select(1))
        except (SQLAlchemyError, OSError) as exc:
            await self._engine.dispose()
            await _driver_threads_finished(threads_before)
            raise BackendError(f"cannot connect to back end {self.name!r}: {exc}") from exc

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def bind(self, spec: Mapping[str, Any]) -> SqlSource:
        if not isinstance(spec, Mapping):
            raise SourceSpecError("source", "expected {table: ..., key: ...}")
        unknown = set(spec) - {"table", "select", "types", "key", "children"}
        if unknown:
            raise SourceSpecError("source", f"unknown key(s) {sorted(unknown)}")
        async with self.engine.connect() as conn:
            table = await self._rows(conn, spec, "source")
            key = _column(table, spec.get("key"), "source.key")
            children = {}
            for name, child in (spec.get("children") or {}).items():
                place = f"source.children.{name}"
                known = {"table", "select", "types", "key", "order_by"}
                if not isinstance(child, Mapping) or set(child) - known:
                    raise SourceSpecError(place, "expected {table or select, key, order_by}")
                child_table = await self._rows(conn, child, place)
                child_key = _column(child_table, child.get("key"), f"{place}.key")
                order = [
                    _column(child_table, c, f"{place}.order_by")
                    for c in child.get("order_by") or []
                ]
                children[name] = _Child(child_table, child_key, order)
        return SqlSource(self, table, key, children)

    def action(self, spec: Mapping[str, Any]) -> SqlAction:
        return SqlAction(self.name, self.engine, spec)

    async def _rows(self, conn: AsyncConnection, spec: Mapping[str, Any], place: str) -> FromClause:
        """A table (or view), or the rows of a query the mapping gives (`select:`).

        `types:` says what columns hold where the database cannot (a query's columns,
        SQLite's loosely typed ones): `{INV_DT: date, AMOUNT: decimal}`.
        """
        types = _declared_types(spec.get("types"), f"{place}.types")
        if ("table" in spec) == ("select" in spec):
            raise SourceSpecError(place, "give either a table or a select")
        if "table" in spec:
            return await self._reflect(conn, spec["table"], f"{place}.table", types)
        query = spec["select"]
        if not isinstance(query, str) or not query.strip():
            raise SourceSpecError(f"{place}.select", "a SELECT statement is required")
        statement = text(query)
        try:
            names = list(
                (
                    await conn.execute(
                        select(text("*"))
                        .select_from(statement.columns().subquery("probe"))
                        .where(false())
                    )
                ).keys()
            )
        except SQLAlchemyError as exc:
            detail = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig else str(exc)
            raise SourceSpecError(f"{place}.select", f"the query fails: {detail}") from None
        unknown = set(types) - set(names)
        if unknown:
            raise SourceSpecError(f"{place}.types", f"the query gives no {sorted(unknown)}")
        self._queries += 1
        typed = statement.columns(*(column(n, types.get(n, NullType())) for n in names))
        return typed.subquery(f"query_{self._queries}")

    async def _reflect(
        self,
        conn: AsyncConnection,
        name: Any,
        place: str,
        types: Mapping[str, sqltypes.TypeEngine[Any]],
    ) -> Table:
        if not isinstance(name, str) or not name:
            raise SourceSpecError(place, "a table name is required")
        if name in self._metadata.tables and not types:
            return self._metadata.tables[name]
        # Declared types replace reflected ones, in a table of this source's own.
        metadata = MetaData() if types else self._metadata
        try:
            table = await conn.run_sync(
                lambda sync_conn: Table(
                    name,
                    metadata,
                    *(Column(n, t) for n, t in types.items()),
                    autoload_with=sync_conn,
                )
            )
        except NoSuchTableError:
            raise SourceSpecError(place, f"no table {name!r} in back end {self.name!r}") from None
        if conn.dialect.name in ("mysql", "mariadb"):
            # MySQL/MariaDB keep BOOLEAN as TINYINT(1), and say so when reflected.
            for col in table.c:
                tiny = isinstance(col.type, sqltypes.Integer) and col.name not in types
                if tiny and getattr(col.type, "display_width", None) == 1:
                    col.type = Boolean()
        return table


#: What a `types:` entry may say, and the column type each stands for.
_TYPES: dict[str, Callable[[], sqltypes.TypeEngine[Any]]] = {
    "text": sqltypes.String,
    "integer": sqltypes.Integer,
    "decimal": lambda: sqltypes.Numeric(asdecimal=True),
    "float": sqltypes.Float,
    "boolean": Boolean,
    "date": sqltypes.Date,
    "datetime": sqltypes.DateTime,
    "timestamptz": lambda: sqltypes.DateTime(timezone=True),
    "uuid": Uuid,
}


def _declared_types(spec: Any, place: str) -> dict[str, sqltypes.TypeEngine[Any]]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise SourceSpecError(place, "expected {column: kind}")
    out = {}
    for name, kind in spec.items():
        if kind not in _TYPES:
            raise SourceSpecError(f"{place}.{name}", f"a kind is one of {', '.join(_TYPES)}")
        out[str(name)] = _TYPES[kind]()
    return out


def column_kind(type_: sqltypes.TypeEngine[Any]) -> Kind:
    """What a reflected column type holds, in the mapping's terms."""
    if isinstance(type_, Boolean):
        return "boolean"
    if isinstance(type_, sqltypes.DateTime):
        return "timestamptz" if type_.timezone else "datetime"
    if isinstance(type_, sqltypes.Date):
        return "date"
    if isinstance(type_, Uuid):
        return "uuid"
    if isinstance(type_, sqltypes.Integer):
        return "integer"
    if isinstance(type_, sqltypes.Float):
        return "float"
    if isinstance(type_, sqltypes.Numeric):
        return "decimal"
    if isinstance(type_, sqltypes.String):
        return "text"
    if isinstance(type_, sqltypes._Binary):
        return "binary"
    return "other"


def _column(table: FromClause, name: Any, place: str) -> KeyedColumnElement[Any]:
    if not isinstance(name, str) or name not in table.c:
        where = table.name if isinstance(table, Table) else "the query"
        raise SourceSpecError(place, f"no column {name!r} in {where}")
    return table.c[name]


class _Child:
    def __init__(
        self, table: FromClause, key: KeyedColumnElement[Any], order: list[KeyedColumnElement[Any]]
    ) -> None:
        self.table = table
        self.key = key
        self.statement = select(table).order_by(key, *order)


class SqlSource:
    """One table (and its child tables) of a SQL back end, ready to run plans."""

    def __init__(
        self,
        adapter: SqlAdapter,
        table: FromClause,
        key: KeyedColumnElement[Any],
        children: dict[str, _Child],
    ) -> None:
        self.adapter = adapter
        self.table = table
        self.key = key
        self.key_column = key.name
        self.children = children
        self.columns: SourceColumns = TypedColumns(
            record=frozenset(table.c.keys()),
            children={name: frozenset(c.table.c.keys()) for name, c in children.items()},
            kinds={c.name: column_kind(c.type) for c in table.c},
            child_kinds={
                name: {c.name: column_kind(c.type) for c in child.table.c}
                for name, child in children.items()
            },
            exact_decimals=adapter.engine.dialect.name != "sqlite",
        )
        self._dialect = adapter.engine.dialect.name
        self._rows: int | None = None
        self._select = select(table)
        self._count = select(func.count()).select_from(table)
        columns = self.columns
        assert isinstance(columns, TypedColumns)
        self._expressions = SqlExpressions(
            table,
            key.name,
            columns.kinds,
            {
                name: ChildTable(child.table, child.key.name, columns.child_kinds[name])
                for name, child in children.items()
            },
            columns.exact_decimals,
        )
        #: Text columns MySQL/MariaDB would compare ignoring case: compared exactly instead.
        self._exact_text = _exact_text_columns(table, adapter.engine.dialect)
        #: Derived values the mapping asked for, by the name predicates use for them.
        self._computed: dict[str, ColumnElement[Any]] = {}
        self._computed_names: dict[Expr, str | None] = {}
        #: The key is never null, so "no child row matches" complements "some does".
        self._key_never_null = isinstance(key, Column) and (key.primary_key or not key.nullable)
        #: Child rows that cannot exist without a record of this table (a foreign key
        #: the server enforces), so their distinct keys count the records they match.
        self._owned_children = frozenset(
            name
            for name, child in children.items()
            if self._dialect == "postgresql" and _references(child.key, table, key)
        )

    def computed(self, expr: Expr) -> str | None:
        """A name that predicates and sort keys may use for a derived value, as a column's.

        None when this back end cannot compute it (exactly); the gateway then does.
        """
        if expr not in self._computed_names:
            try:
                element = self._expressions.element(expr)
            except NotInSql:
                self._computed_names[expr] = None
            else:
                name = f"={len(self._computed)}"
                self._computed[name] = element
                self._computed_names[expr] = name
        return self._computed_names[expr]

    def _element(self, column: str) -> ColumnElement[Any]:
        found = self._computed.get(column)
        if found is not None:
            return found
        return self._exact_text.get(column, self.table.c[column])

    def can_push(self, column: str, op: str) -> bool:
        if op in CHILD_OPS:
            return column in self.children
        known = column in self.table.c or column in self._computed
        if op in (REGEX, REGEX_CANDIDATES):
            return column in self.table.c and self._regex_ok(self._column_kind(column), op, None)
        return known and (op in COMPARE_OPS or op == NOT_NULL)

    def _column_kind(self, column: str) -> Kind | None:
        columns = self.columns
        assert isinstance(columns, TypedColumns)
        return columns.kinds.get(column)

    def _regex_ok(self, kind: Kind | None, op: str, pattern: Any) -> bool:
        """Regex on text only; exact (`regex`) where RE2 runs in the database, or where
        the pattern is a literal that a LIKE (and a range) says all of (PostgreSQL)."""
        if kind != "text":
            return False
        if op == REGEX_CANDIDATES or runs_re2(self._dialect):
            return True
        return self._dialect == "postgresql" and isinstance(pattern, str) and literal(pattern)

    def accepts(self, predicate: Predicate) -> bool:
        """Whether every term can run here, child-row matches included."""
        if isinstance(predicate, Compare):
            if predicate.op == REGEX and predicate.column in self.table.c:
                kind = self._column_kind(predicate.column)
                return self._regex_ok(kind, predicate.op, predicate.value)
            if predicate.op not in CHILD_OPS:
                return self.can_push(predicate.column, predicate.op)
            child = self.children.get(predicate.column)
            match = predicate.value
            if child is None or not isinstance(match, ChildMatch):
                return False
            if match.where is not None:
                columns = self.columns
                assert isinstance(columns, TypedColumns)
                kinds = columns.child_kinds[predicate.column]
                try:
                    self._expressions.condition(match.where, child.table, kinds)
                except NotInSql:
                    return False
            return self._child_accepts(predicate.column, match.predicate)
        if isinstance(predicate, IsNull):
            return self.can_push(predicate.column, "eq")
        return all(self.accepts(term) for term in predicate.terms)

    def _child_accepts(self, child: str, predicate: Predicate) -> bool:
        table = self.children[child].table
        columns = self.columns
        assert isinstance(columns, TypedColumns)
        if isinstance(predicate, Compare):
            if predicate.column not in table.c:
                return False
            if predicate.op in (REGEX, REGEX_CANDIDATES):
                kind = columns.child_kinds[child].get(predicate.column)
                return self._regex_ok(kind, predicate.op, predicate.value)
            return predicate.op in COMPARE_OPS or predicate.op == NOT_NULL
        if isinstance(predicate, IsNull):
            return predicate.column in table.c
        return all(self._child_accepts(child, term) for term in predicate.terms)

    def can_sort(self, column: str) -> bool:
        return column in self.table.c or column in self._computed

    def where(self, predicate: Predicate, correlated: bool = False) -> ColumnElement[bool]:
        """The predicate as SQL; values are bound parameters, never spliced into text.

        `correlated`: child-row matches as `EXISTS` probes rather than semi-joins (see
        `page`).
        """
        return self._sql(predicate, self._element, correlated)

    def _sql(
        self,
        predicate: Predicate,
        element: Callable[[str], ColumnElement[Any]],
        correlated: bool = False,
    ) -> ColumnElement[bool]:
        if isinstance(predicate, Compare):
            op = predicate.op
            if op in CHILD_OPS:
                return self._child_rows(predicate.column, predicate.value, op == EXISTS, correlated)
            target = element(predicate.column)
            if op == NOT_NULL:
                return target.is_not(None)
            if op in (REGEX, REGEX_CANDIDATES):
                return regex_condition(
                    target,
                    predicate.value,
                    dialect=self._dialect,
                    ordered_by_code_point=_code_point_order(target, self._dialect),
                )
            compared: ColumnElement[bool] = COMPARE[op](target, predicate.value)
            return compared
        if isinstance(predicate, IsNull):
            return element(predicate.column).is_(None)
        if isinstance(predicate, AnyOf):
            return or_(false(), *(self._sql(t, element, correlated) for t in predicate.terms))
        if isinstance(predicate, AllOf):
            return and_(true(), *(self._sql(t, element, correlated) for t in predicate.terms))
        raise TypeError(f"unknown predicate {predicate!r}")

    def _child_rows(
        self, name: str, match: ChildMatch, wanted: bool, correlated: bool
    ) -> ColumnElement[bool]:
        """`key IN (SELECT c.key FROM child c WHERE ...)` (or NOT IN): some child row meets it.

        A semi-join: counting the matches of a common value (a tax code on 190,000 of a
        million bills) walks an index of the child rows once, instead of probing the child
        rows once per record (5x faster on SQLite). `correlated`: `EXISTS (... WHERE
        c.key = record.key ...)` instead, which lets a sort's index drive the page.
        """
        key, conditions = self._child_conditions(name, match)
        if correlated:
            found = exists().where(key == self.key, *conditions)
            return found if wanted else ~found
        keys = select(key).where(*conditions)
        return self.key.in_(keys) if wanted else self.key.not_in(keys)

    def _child_conditions(
        self, name: str, match: ChildMatch
    ) -> tuple[ColumnElement[Any], list[ColumnElement[bool]]]:
        """The child rows' key column (of a fresh alias) and what a matching row meets."""
        child = self.children[name]
        rows = child.table.alias()
        columns = self.columns
        assert isinstance(columns, TypedColumns)
        key = rows.c[child.key.name]
        conditions = [key.is_not(None)]  # NOT IN over a null would be unknown everywhere
        if match.where is not None:
            conditions.append(
                self._expressions.condition(match.where, rows, columns.child_kinds[name])
            )
        conditions.append(self._sql(match.predicate, lambda c: rows.c[c]))
        return key, conditions

    def _ordered(self, plan: Plan, correlated: bool = False) -> Any:
        order = []
        for key in plan.order_by:
            column = self._element(key.column)
            clause = column.desc() if key.descending else column.asc()
            # Missing values last in both directions, as the gateway's own sorting does.
            plain = None if key.column in self._computed else self.table.c[key.column]
            if not isinstance(plain, Column) or (plain.nullable and not plain.primary_key):
                order.extend(self._nulls_last(column, clause, key.descending))
            else:
                order.append(clause)
        if not any(k.column == self.key_column for k in plan.order_by):
            order.append(self._element(self.key_column).asc())
        return self._filtered(self._select, plan.where, correlated).order_by(*order)

    def _nulls_last(self, column: Any, clause: Any, descending: bool) -> list[Any]:
        """`NULLS LAST`; MySQL/MariaDB lack it, but sort NULLs last when descending anyway."""
        if self.adapter.engine.dialect.name not in ("mysql", "mariadb"):
            return [clause.nulls_last()]
        return [clause] if descending else [column.is_(None), clause]

    def _filtered(
        self, statement: Select[Any], predicate: Predicate, correlated: bool = False
    ) -> Select[Any]:
        # No WHERE at all for "everything": SQLite counts a whole table far faster so.
        if predicate == MATCH_ALL:
            return statement
        return statement.where(self.where(predicate, correlated))

    async def page(self, plan: Plan) -> Page:
        """The window and the total.

        A page filtered on child rows is where semi-join and probe differ most: for a
        common match (every fifth bill) walking the sort's index (or the key's) and
        probing each record finds 20 at once, while the semi-join gathers all 190,000
        matches first; for a rare one it is the other way round. The count, needed
        anyway, tells which: it comes first, and the index walks when it would read
        fewer records than the matches.
        """
        total: int | None = None
        try:
            async with self.adapter.engine.connect() as conn:
                correlated = False
                if plan.limit is not None and _reads_child_rows(plan.where):
                    total = await self._count_matches(conn, plan.where)
                    rows = await self._table_rows(conn)
                    walked = (plan.offset + plan.limit) * rows / max(total, 1)
                    correlated = walked < total
                statement = self._ordered(plan, correlated).offset(plan.offset)
                if plan.limit is not None:
                    statement = statement.limit(plan.limit)
                records = _records(await conn.execute(statement))
                if total is None:
                    total = _total_from_window(plan.offset, plan.limit, len(records))
                if total is None:
                    total = await self._count_matches(conn, plan.where)
                await self._attach_children(conn, records)
        except SQLAlchemyError as exc:
            raise _backend_error(self.adapter.name, exc) from exc
        return Page(records, total)

    async def _count_matches(self, conn: AsyncConnection, where: Predicate) -> int:
        """How many records match, exactly, by the cheaper of equivalent statements.

        "No child row matches" (`ne` on an array) is every record less those with one:
        counting the few matches of a child index and the table beats probing every
        record (the key is never null, so each record is in exactly one of the two).
        "Some child row matches" alone is, where the server enforces the child rows'
        foreign key to this table (PostgreSQL validates it, even for rows loaded before
        it was added), the distinct keys of the matching child rows: an index only.
        """
        if (
            isinstance(where, Compare)
            and where.op == NOT_EXISTS
            and self._key_never_null
            and isinstance(where.value, ChildMatch)
        ):
            found = Compare(where.column, EXISTS, where.value)
            everything = await self._count_matches(conn, MATCH_ALL)
            return everything - await self._count_matches(conn, found)
        statement = self._filtered(self._count, where)
        if (
            isinstance(where, Compare)
            and where.op == EXISTS
            and isinstance(where.value, ChildMatch)
            and where.column in self._owned_children
        ):
            key, conditions = self._child_conditions(where.column, where.value)
            keys = select(key).where(*conditions).distinct().subquery()
            statement = select(func.count()).select_from(keys)
        count: int = (await conn.execute(statement)).scalar_one()
        return count

    async def _table_rows(self, conn: AsyncConnection) -> int:
        """The records of the table, counted once (an estimate is all `page` needs)."""
        if self._rows is None:
            self._rows = (await conn.execute(self._count)).scalar_one()
        return self._rows

    async def count(self, where: Predicate) -> int:
        """How many records match (what a scan of them would read)."""
        try:
            async with self.adapter.engine.connect() as conn:
                total = await self._count_matches(conn, where)
        except SQLAlchemyError as exc:
            raise _backend_error(self.adapter.name, exc) from exc
        return total

    async def one(self, where: Predicate) -> dict[str, Any] | None:
        statement = self._filtered(self._select, where).limit(1)
        try:
            async with self.adapter.engine.connect() as conn:
                records = _records(await conn.execute(statement))
                if not records:
                    return None
                await self._attach_children(conn, records)
        except SQLAlchemyError as exc:
            raise _backend_error(self.adapter.name, exc) from exc
        return records[0]

    async def update(
        self, where: Predicate, values: Mapping[str, Any], expected: Mapping[str, Any]
    ) -> int:
        """Set `values` on the rows matching `where` whose columns still hold `expected`.

        One statement in one transaction: the compare-and-set is what keeps two concurrent
        writers from both acting on the same old value. Returns the number of rows changed.
        """
        guard = AllOf(
            (where, *(IsNull(c) if v is None else Compare(c, "eq", v) for c, v in expected.items()))
        )
        if not isinstance(self.table, Table):
            raise BackendError(f"back end {self.adapter.name!r}: a query source is read only")
        statement = update(self.table).where(self.where(guard)).values(dict(values))
        try:
            async with self.adapter.engine.begin() as conn:
                result = await conn.execute(statement)
        except SQLAlchemyError as exc:
            raise _backend_error(self.adapter.name, exc) from exc
        return result.rowcount

    async def stream(self, plan: Plan, batch_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        statement = self._ordered(plan).execution_options(yield_per=batch_size)
        try:
            async with self.adapter.engine.connect() as conn:
                result = await conn.stream(statement)
                keys = _plain_keys(result.keys())
                async for rows in result.partitions(batch_size):
                    records = [dict(zip(keys, row, strict=True)) for row in rows]
                    await self._attach_children(conn, records)
                    yield records
        except SQLAlchemyError as exc:
            raise _backend_error(self.adapter.name, exc) from exc

    async def _attach_children(self, conn: AsyncConnection, records: list[dict[str, Any]]) -> None:
        if not self.children or not records:
            return
        keys = [r[self.key_column] for r in records]
        for name, child in self.children.items():
            grouped: dict[Any, list[dict[str, Any]]] = {k: [] for k in keys}
            rows = _records(await conn.execute(child.statement.where(child.key.in_(keys))))
            for row in rows:
                grouped[row[child.key.name]].append(row)
            for record in records:
                record[name] = grouped[record[self.key_column]]


def _references(
    child_key: KeyedColumnElement[Any], table: FromClause, key: KeyedColumnElement[Any]
) -> bool:
    """Whether the child's key column has a foreign key to exactly `table`'s `key`."""
    if not isinstance(child_key, Column) or not isinstance(table, Table):
        return False
    for foreign in child_key.foreign_keys:
        if foreign.constraint is not None and len(foreign.constraint.columns) != 1:
            continue
        try:
            target = foreign.column
        except SQLAlchemyError:  # the referenced table was not reflected
            continue
        if target.table is table and target.name == key.name:
            return True
    return False


def _reads_child_rows(predicate: Predicate) -> bool:
    if isinstance(predicate, Compare):
        return predicate.op in CHILD_OPS
    if isinstance(predicate, IsNull):
        return False
    return any(_reads_child_rows(term) for term in predicate.terms)


def _code_point_order(element: ColumnElement[Any], dialect: str) -> bool:
    """Whether text in this column compares by code point (so a prefix is a range)."""
    collation = getattr(element.type, "collation", None)
    if dialect == "sqlite":
        return collation in (None, "BINARY")
    if dialect == "postgresql":
        return collation in ("C", "POSIX")
    return False


def _plain_keys(keys: Iterable[str]) -> list[str]:
    # SQLAlchemy names columns with `quoted_name`, a `str` subclass: every look-up the
    # mapping makes in a record keyed by it is slower than with a plain `str`.
    return [str(key) for key in keys]


def _records(result: Result[Any]) -> list[dict[str, Any]]:
    """The rows as plain dicts keyed by plain `str` column names."""
    keys = _plain_keys(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def _exact_text_columns(table: FromClause, dialect: Any) -> dict[str, ColumnElement[Any]]:
    """MySQL/MariaDB text columns of a case-insensitive collation, with a binary one.

    Their default collations ignore case (and trailing spaces); the gateway compares and
    sorts text by code point, as SQLite and PostgreSQL's "C" collation do. A column that
    is binary already keeps its indexes; these give up theirs for the right answer.
    """
    if dialect.name not in ("mysql", "mariadb") or not isinstance(table, Table):
        return {}
    default = table.dialect_options["mysql"].get("collate") or ""
    exact = {}
    for col in table.c:
        if not isinstance(col.type, sqltypes.String):
            continue
        collation = col.type.collation or default
        if not collation or collation.endswith("_bin") or collation == "binary":
            continue
        charset = collation.split("_", 1)[0]
        binary = (
            f"{charset}_nopad_bin" if getattr(dialect, "is_mariadb", False) else f"{charset}_bin"
        )
        exact[col.name] = col.collate(binary)
    return exact


def _total_from_window(offset: int, limit: int | None, fetched: int) -> int | None:
    """When the window ran past the last match, the total is known without a COUNT."""
    if fetched and (limit is None or fetched < limit):
        return offset + fetched
    if not fetched and offset == 0 and (limit is None or limit > 0):
        return 0
    return None


def _backend_error(name: str, exc: SQLAlchemyError) -> BackendError:
    detail = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig else type(exc).__name__
    if isinstance(exc, OperationalError):
        return BackendError(f"back end {name!r} unavailable: {detail}", status=503)
    return BackendError(f"back end {name!r} failed: {detail}", status=502)


async def _driver_threads_finished(before: set[threading.Thread], seconds: float = 2.0) -> None:
    """Let worker threads a failed connect started finish while the event loop lives.

    After a failed connect, aiosqlite stops its thread without waiting; the thread then
    reports back to the loop, and would fail loudly if the loop had closed meanwhile
    (a start-up error ends the process at once).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(
        thread.is_alive() and thread.name.endswith("(_connection_worker_thread)")
        for thread in set(threading.enumerate()) - before
    ):
        await asyncio.sleep(0.01)
