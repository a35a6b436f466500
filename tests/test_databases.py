"""tests/databases.py: without a server, tests skip and say how to enable them; CI fails."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.databases import SERVERS, Server, fresh_database

#: Nothing listens on port 1 of loopback: connecting is refused at once.
NOWHERE = {
    "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:1",
    "mariadb": "mysql+asyncmy://root@127.0.0.1:1",
}
ENV = {"postgresql": "TEST_POSTGRESQL_SERVER", "mariadb": "TEST_MARIADB_SERVER"}


@pytest.mark.parametrize("server", SERVERS)
def test_an_unreachable_server_skips_with_how_to_enable_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV[server], NOWHERE[server])
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped, fresh_database(server):
        pass
    message = str(skipped.value)
    assert "not reachable at" in message and "to run these tests, start" in message
    assert ENV[server] in message


@pytest.mark.parametrize("server", SERVERS)
def test_an_unreachable_server_fails_under_ci(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV[server], NOWHERE[server])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"), fresh_database(server):
        pass


async def _connects(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False
    finally:
        await engine.dispose()


@pytest.mark.parametrize("server", SERVERS)
def test_each_database_is_new_and_dropped_afterwards(server: Server) -> None:
    with fresh_database(server) as first, fresh_database(server) as second:
        assert first != second
        assert asyncio.run(_connects(first)) and asyncio.run(_connects(second))
    assert not asyncio.run(_connects(first)) and not asyncio.run(_connects(second))
    with pytest.raises(RuntimeError), fresh_database(server) as url:
        raise RuntimeError("a failing test")
    assert not asyncio.run(_connects(url))
