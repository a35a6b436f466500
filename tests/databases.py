"""Fresh, uniquely named databases on the local PostgreSQL and MariaDB servers, for tests.

`fresh_database("postgresql")` creates a database no other test (or earlier run) uses,
yields its async SQLAlchemy URL and drops it afterwards. Where the server is not
reachable the test is skipped with a message that says how to enable it; under
`CI=true` it fails instead, because CI must not pass without the server.

The servers: PostgreSQL at 127.0.0.1:5432 (user postgres, trust authentication) and
MariaDB at 127.0.0.1:3306 (root, empty password); `TEST_POSTGRESQL_SERVER` and
`TEST_MARIADB_SERVER` name others (an async SQLAlchemy URL without a database).

The fixtures `postgresql_database` and `mariadb_database` give one per test; modules
that seed once use `fresh_database` in a module-scoped fixture of their own. The gateway
store's tests keep their own PostgreSQL fixture (tests/test_store.py).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

Server = Literal["postgresql", "mariadb"]
SERVERS: tuple[Server, ...] = ("postgresql", "mariadb")


@dataclass(frozen=True)
class _ServerSpec:
    env: str
    default: str  # async URL without a database
    admin_database: str
    how_to: str

    @property
    def base(self) -> str:
        return os.environ.get(self.env, self.default).rstrip("/")


_SPECS: dict[Server, _ServerSpec] = {
    "postgresql": _ServerSpec(
        "TEST_POSTGRESQL_SERVER",
        "postgresql+asyncpg://postgres@127.0.0.1:5432",
        "postgres",
        "start PostgreSQL at 127.0.0.1:5432 with user postgres and trust authentication"
        " (e.g. `docker run -p 127.0.0.1:5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust"
        " postgres:15`), or set TEST_POSTGRESQL_SERVER=postgresql+asyncpg://user@host:port",
    ),
    "mariadb": _ServerSpec(
        "TEST_MARIADB_SERVER",
        "mysql+asyncmy://root@127.0.0.1:3306",
        "mysql",
        "start MariaDB at 127.0.0.1:3306 with user root and an empty password"
        " (e.g. `docker run -p 127.0.0.1:3306:3306 -e MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1"
        " mariadb:10.11`), or set TEST_MARIADB_SERVER=mysql+asyncmy://user@host:port",
    ),
}


def _quoted(server: Server, name: str) -> str:
    return f"`{name}`" if server == "mariadb" else f'"{name}"'


async def _admin(server: Server, statement: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE need that)."""
    spec = _SPECS[server]
    engine = create_async_engine(
        f"{spec.base}/{spec.admin_database}",
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout" if server == "mariadb" else "timeout": 5},
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _create(server: Server, name: str) -> None:
    if server == "mariadb":
        # utf8mb4 for the demo's names; the collation stays the server's default.
        statement = f"CREATE DATABASE {_quoted(server, name)} CHARACTER SET utf8mb4"
    else:
        statement = f"CREATE DATABASE {_quoted(server, name)}"
    asyncio.run(_admin(server, statement))


def _drop(server: Server, name: str) -> None:
    force = " WITH (FORCE)" if server == "postgresql" else ""
    asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {_quoted(server, name)}{force}"))


def unreachable(server: Server, exc: BaseException) -> None:
    """Skip (or, under CI=true, fail) because `server` cannot be used."""
    spec = _SPECS[server]
    why = f"{server} is not reachable at {spec.base} ({type(exc).__name__}: {exc})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI=true requires it", pytrace=False)
    pytest.skip(f"{why}; to run these tests, {spec.how_to}")


@contextmanager
def fresh_database(server: Server, prefix: str = "tmf678_test") -> Iterator[str]:
    """A new database on `server` with a unique name; its async URL. Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        _create(server, name)
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        unreachable(server, exc)
    try:
        yield f"{_SPECS[server].base}/{name}"
    finally:
        _drop(server, name)


@pytest.fixture
def postgresql_database() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own; its async URL."""
    with fresh_database("postgresql") as url:
        yield url


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """An empty MariaDB database of this test's own; its async URL."""
    with fresh_database("mariadb") as url:
        yield url
