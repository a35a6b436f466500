"""The legacy billing demo database: shape, internal consistency, determinism, tooling.

The seed also fills PostgreSQL and MariaDB databases (tests/databases.py): the same rows.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from simulators import billing_db
from simulators.billing_db import (
    DEMO_TODAY,
    create_and_seed,
    ensure_demo_database,
    holds_data,
    seed_if_empty,
    sqlite_url,
)
from tests.databases import SERVERS, fresh_database

TABLES = ("ACCT_MASTER", "BILL_RUN", "INV_HDR", "INV_TAX", "CHG_LINE")
DATE_RE = re.compile(r"^\d{8}$")
STAMP_RE = re.compile(r"^\d{14}$")
TODAY = DEMO_TODAY.strftime("%Y%m%d")


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """Read-only connection that is closed afterwards (sqlite3's own `with` only commits)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _dump(path: Path, table: str) -> list[tuple]:
    with _connect(path) as conn:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("billing") / "legacy.sqlite"
    create_and_seed(sqlite_url(path))
    return path


@pytest.fixture
def db(demo_db: Path) -> Iterator[sqlite3.Connection]:
    with _connect(demo_db) as conn:
        yield conn


def _scalar(conn: sqlite3.Connection, sql: str) -> int:
    return conn.execute(sql).fetchone()[0]


def test_counts(db: sqlite3.Connection) -> None:
    assert _scalar(db, "SELECT COUNT(*) FROM ACCT_MASTER") >= 50
    assert _scalar(db, "SELECT COUNT(*) FROM INV_HDR") == 300
    assert _scalar(db, "SELECT COUNT(*) FROM BILL_RUN") == 12
    assert _scalar(db, "SELECT COUNT(*) FROM CHG_LINE") >= 3_000
    assert _scalar(db, "SELECT COUNT(*) FROM CHG_LINE WHERE INV_ID IS NOT NULL") >= 2_700
    assert _scalar(db, "SELECT COUNT(*) FROM CHG_LINE WHERE INV_ID IS NULL") >= 200


def test_states_cover_all_codes(db: sqlite3.Connection) -> None:
    states = dict(db.execute("SELECT STAT_CD, COUNT(*) FROM INV_HDR GROUP BY STAT_CD"))
    assert set(states) == {"N", "H", "V", "S", "C", "P"}
    assert min(states.values()) >= 10
    assert states["N"] >= 36
    # The latest run is mostly new, the oldest ones are no longer new.
    latest = dict(db.execute("SELECT STAT_CD, COUNT(*) FROM INV_HDR WHERE RUN_ID = 12 GROUP BY 1"))
    assert latest["N"] > sum(latest.values()) / 2
    assert _scalar(db, "SELECT COUNT(*) FROM INV_HDR WHERE RUN_ID <= 9 AND STAT_CD = 'N'") == 0


def test_bill_runs_follow_the_calendar(db: sqlite3.Connection) -> None:
    rows = db.execute(
        "SELECT RUN_CD, PRD_LBL, PRD_FROM_DT, PRD_TO_DT, BILL_DT, MAIL_DT, CHRG_DT, CRDT_DT,"
        " DUE_DT, SPEC_CD FROM BILL_RUN WHERE RUN_ID IN (1, 12) ORDER BY RUN_ID"
    ).fetchall()
    assert rows == [
        ("BR202401", "January 2024", "20240101", "20240131", "20240201", "20240203",
         "20240215", "20240131", "20240215", "MONTHLY"),
        ("BR202412", "December 2024", "20241201", "20241231", "20250101", "20250103",
         "20250115", "20241231", "20250115", "MONTHLY"),
    ]  # fmt: skip


def test_bill_kinds(db: sqlite3.Connection) -> None:
    on_demand = _scalar(db, "SELECT COUNT(*) FROM INV_HDR WHERE RUN_TYP = 'D'")
    assert 20 <= on_demand <= 40
    assert (
        _scalar(db, "SELECT COUNT(*) FROM INV_HDR WHERE RUN_TYP = 'D' AND RUN_ID IS NOT NULL") == 0
    )
    assert _scalar(db, "SELECT COUNT(*) FROM INV_HDR WHERE RUN_TYP = 'C' AND RUN_ID IS NULL") == 0
    cycle_runs = _scalar(db, "SELECT COUNT(DISTINCT RUN_ID) FROM INV_HDR WHERE RUN_TYP = 'C'")
    assert cycle_runs == 12
    categories = Counter(dict(db.execute("SELECT CAT_CD, COUNT(*) FROM INV_HDR GROUP BY 1")))
    assert set(categories) == {"NRM", "DUP", "INT", "CRN"}
    assert categories["NRM"] > 250
    # Cycle bills of one run go to distinct accounts.
    assert (
        _scalar(
            db,
            "SELECT COUNT(*) FROM (SELECT RUN_ID, ACCT_NO FROM INV_HDR WHERE RUN_ID IS NOT NULL"
            " GROUP BY 1, 2 HAVING COUNT(*) > 1)",
        )
        == 0
    )


def test_every_bill_has_archive_key_and_charges(db: sqlite3.Connection) -> None:
    assert _scalar(db, "SELECT COUNT(*) FROM INV_HDR WHERE ARCH_KEY IS NULL OR ARCH_KEY = ''") == 0
    for inv_no, inv_dt, key in db.execute("SELECT INV_NO, INV_DT, ARCH_KEY FROM INV_HDR"):
        assert key == f"DMS/{inv_dt[:4]}/{inv_dt[4:6]}/{inv_no}.pdf"
    assert (
        _scalar(
            db,
            "SELECT COUNT(*) FROM INV_HDR h"
            " WHERE NOT EXISTS (SELECT 1 FROM CHG_LINE c WHERE c.INV_ID = h.INV_ID)",
        )
        == 0
    )


def _check_invariants(conn: sqlite3.Connection) -> None:
    """What must hold for any size and seed: totals, taxes, open amounts, flags, links."""
    bills = conn.execute(
        "SELECT INV_ID, ACCT_NO, STAT_CD, CAT_CD, NET_AMT, TAX_AMT, GRS_AMT, OPEN_AMT, INV_DT,"
        " UPD_TS FROM INV_HDR"
    ).fetchall()
    charges: dict[int, list[tuple]] = {}
    for row in conn.execute(
        "SELECT INV_ID, ACCT_NO, NET_AMT, TAX_AMT, TAX_CD, TAX_RT, POST_TS FROM CHG_LINE"
        " WHERE INV_ID IS NOT NULL"
    ):
        charges.setdefault(row[0], []).append(row)
    taxes: dict[int, list[tuple]] = {}
    for row in conn.execute("SELECT INV_ID, SEQ_NO, TAX_CD, TAX_RT, TAX_AMT FROM INV_TAX"):
        taxes.setdefault(row[0], []).append(row)
    assert set(charges) == {b[0] for b in bills}
    assert set(taxes) == {b[0] for b in bills}
    for inv_id, acct, state, cat, net, tax, gross, open_amt, inv_dt, upd_ts in bills:
        lines = charges[inv_id]
        assert gross == net + tax
        assert net == sum(c[2] for c in lines)
        assert tax == sum(c[3] for c in lines)
        assert {c[1] for c in lines} == {acct}
        assert all(c[6][:8] <= inv_dt for c in lines)
        assert inv_dt <= upd_ts[:8] <= TODAY
        tax_lines = sorted(taxes[inv_id], key=lambda t: t[1])
        assert 1 <= len(tax_lines) <= 2
        assert [t[1] for t in tax_lines] == list(range(1, len(tax_lines) + 1))
        assert sum(t[4] for t in tax_lines) == tax
        for _, _, code, rate, amount in tax_lines:
            assert amount == sum(c[3] for c in lines if c[4] == code)
            assert rate == {"VAT19": "19.00", "VAT7": "7.00"}[code]
        if cat == "CRN":
            assert gross < 0 and state != "P"
        else:
            assert gross > 0
        if state in ("N", "H", "V", "S"):
            assert open_amt == gross
        elif state == "C":
            assert open_amt == 0
        else:
            assert state == "P" and 0 < open_amt < gross

    flags = set(
        conn.execute(
            "SELECT BILLED_FLG, INV_ID IS NULL, CHG_TYP = 'CRD', NET_AMT < 0 FROM CHG_LINE"
        )
    )
    assert flags <= {("Y", 0, 0, 0), ("Y", 0, 1, 1), ("N", 1, 0, 0), ("N", 1, 1, 1)}
    for net, tax, rate in conn.execute("SELECT NET_AMT, TAX_AMT, TAX_RT FROM CHG_LINE"):
        assert abs(tax - net * float(rate) / 100) <= 0.5
    assert set(conn.execute("SELECT DISTINCT CHG_TYP FROM CHG_LINE")) <= {
        ("REC",),
        ("OTC",),
        ("USG",),
        ("CRD",),
        ("PEN",),
    }
    assert set(conn.execute("SELECT DISTINCT CURR_CD FROM CHG_LINE")) == {("EUR",)}
    assert set(conn.execute("SELECT DISTINCT CURR_CD FROM INV_HDR")) <= {("EUR",)}
    # No dangling references.
    for sql in (
        "SELECT COUNT(*) FROM INV_HDR WHERE ACCT_NO NOT IN (SELECT ACCT_NO FROM ACCT_MASTER)",
        "SELECT COUNT(*) FROM CHG_LINE WHERE ACCT_NO NOT IN (SELECT ACCT_NO FROM ACCT_MASTER)",
        "SELECT COUNT(*) FROM INV_HDR WHERE RUN_ID NOT IN (SELECT RUN_ID FROM BILL_RUN)",
    ):
        assert _scalar(conn, sql) == 0


def test_amounts_are_consistent(db: sqlite3.Connection) -> None:
    _check_invariants(db)


def test_unbilled_charges_are_recent(db: sqlite3.Connection) -> None:
    rows = db.execute("SELECT POST_TS, BILLED_FLG FROM CHG_LINE WHERE INV_ID IS NULL").fetchall()
    assert {flag for _, flag in rows} == {"N"}
    last_run_bill_dt = _scalar(db, "SELECT MAX(BILL_DT) FROM BILL_RUN")
    assert all(last_run_bill_dt <= ts[:8] <= TODAY for ts, _ in rows)


def test_dates_have_legacy_formats(db: sqlite3.Connection) -> None:
    checked = 0
    for table in TABLES:
        for _, column, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
            if not column.endswith(("_DT", "_TS")):
                continue
            pattern, fmt = (
                (DATE_RE, "%Y%m%d") if column.endswith("_DT") else (STAMP_RE, "%Y%m%d%H%M%S")
            )
            for (value,) in db.execute(f'SELECT DISTINCT "{column}" FROM "{table}"'):
                if value is None:
                    assert column == "NXT_INV_DT"
                    continue
                assert pattern.match(value), (table, column, value)
                datetime.strptime(value, fmt)  # a real calendar date/time
                # Local wall-clock times avoid the 02:00-03:59 DST change window.
                if fmt.endswith("%S"):
                    assert value[8:10] not in ("02", "03"), (table, column, value)
                checked += 1
    assert checked > 1_000


def test_indexes_exist(db: sqlite3.Connection) -> None:
    indexes = {
        name: sql
        for name, sql in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
    }
    expected = {
        "IX_INV_HDR_ACCT_STAT_DT": ("INV_HDR", "ACCT_NO", "STAT_CD", "INV_DT"),
        "IX_INV_HDR_INV_DT": ("INV_HDR", "INV_DT"),
        "IX_INV_HDR_STAT_DT": ("INV_HDR", "STAT_CD", "INV_DT"),
        "IX_INV_HDR_OPEN_AMT": ("INV_HDR", "OPEN_AMT"),
        "IX_INV_HDR_GRS_AMT": ("INV_HDR", "GRS_AMT"),
        "IX_INV_HDR_RUN_ID": ("INV_HDR", "RUN_ID"),
        "IX_CHG_LINE_INV_ID": ("CHG_LINE", "INV_ID"),
        "IX_CHG_LINE_ACCT_POST": ("CHG_LINE", "ACCT_NO", "POST_TS"),
        "IX_CHG_LINE_BILLED_FLG": ("CHG_LINE", "BILLED_FLG"),
    }
    for name, (table, *columns) in expected.items():
        sql = indexes[name]
        assert f'ON "{table}"' in sql
        assert sql.endswith("(" + ", ".join(f'"{c}"' for c in columns) + ")"), sql
    # Newest first with the key as tie-breaker (`sort=-billDate`), one index walk.
    newest = {
        "IX_INV_HDR_STAT_DT_DESC_ID": '("STAT_CD", "INV_DT" DESC, "INV_ID")',
        "IX_INV_HDR_DT_DESC_ID": '("INV_DT" DESC, "INV_ID")',
    }
    for name, columns in newest.items():
        assert indexes[name].endswith(columns), indexes[name]
    # INV_TAX is read by INV_ID: its primary key (INV_ID, SEQ_NO) covers that.
    pk = [r[1] for r in db.execute('PRAGMA table_info("INV_TAX")') if r[5]]
    assert pk == ["INV_ID", "SEQ_NO"]
    assert _scalar(db, "PRAGMA journal_mode") == "wal"


def test_same_seed_same_rows(demo_db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.sqlite"
    create_and_seed(sqlite_url(again))
    for table in TABLES:
        assert _dump(again, table) == _dump(demo_db, table), table


def test_other_seed_other_rows(demo_db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    create_and_seed(sqlite_url(other), seed=1)
    assert _dump(other, "INV_HDR") != _dump(demo_db, "INV_HDR")


@pytest.mark.parametrize(("bills", "seed"), [(1_200, 1), (7, 5), (0, 2)])
def test_invariants_hold_for_other_sizes(tmp_path: Path, bills: int, seed: int) -> None:
    path = tmp_path / "sized.sqlite"
    create_and_seed(sqlite_url(path), bills=bills, seed=seed, unbilled=30)
    with _connect(path) as conn:
        assert _scalar(conn, "SELECT COUNT(*) FROM INV_HDR") == bills
        assert _scalar(conn, "SELECT COUNT(*) FROM CHG_LINE WHERE INV_ID IS NULL") == 30
        assert _scalar(conn, "SELECT COUNT(*) FROM ACCT_MASTER") == max(60, bills // 6)
        _check_invariants(conn)


def test_ensure_demo_database_seeds_once(demo_db: Path, tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "demo.sqlite"
    assert ensure_demo_database(str(path)) == path
    assert [p.name for p in path.parent.iterdir()] == ["demo.sqlite"]  # no temp or WAL left
    assert _dump(path, "INV_HDR") == _dump(demo_db, "INV_HDR")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE INV_HDR SET STAT_CD = 'C', OPEN_AMT = 0 WHERE INV_ID = 300")
    assert ensure_demo_database(path) == path
    with _connect(path) as conn:
        assert _scalar(conn, "SELECT STAT_CD = 'C' FROM INV_HDR WHERE INV_ID = 300") == 1


def test_failed_seed_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash during seed")

    monkeypatch.setattr(billing_db, "_insert_bills", boom)
    path = tmp_path / "demo.sqlite"
    with pytest.raises(RuntimeError):
        ensure_demo_database(path)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.sqlite"
    assert billing_db.main(["--path", str(path), "--bills", "24"]) == 0
    out = capsys.readouterr().out
    assert "INV_HDR" in out and "seeded" in out
    assert billing_db.main(["--path", str(path), "--bills", "36"]) == 1
    with _connect(path) as conn:
        assert _scalar(conn, "SELECT COUNT(*) FROM INV_HDR") == 24
    assert billing_db.main(["--path", str(path), "--bills", "36", "--force"]) == 0
    with _connect(path) as conn:
        assert _scalar(conn, "SELECT COUNT(*) FROM INV_HDR") == 36


# ------------------------------------------------------- PostgreSQL and MariaDB (any URL)


async def _server_rows(url: str, table: str) -> list[tuple]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(table)
            result = await conn.execute(text(f"SELECT * FROM {quoted} ORDER BY 1, 2"))
            return [tuple(row) for row in result]
    finally:
        await engine.dispose()


def _rows_at(url: str, table: str) -> list[tuple]:
    return asyncio.run(_server_rows(url, table))


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database of this test's own on PostgreSQL, then on MariaDB."""
    with fresh_database(request.param, "tmf678_seed") as url:
        yield url


def test_a_server_database_gets_the_same_rows_as_sqlite(server_url: str, demo_db: Path) -> None:
    assert seed_if_empty(server_url)
    for table in TABLES:
        assert _rows_at(server_url, table) == _dump(demo_db, table), table


def test_a_server_database_that_holds_data_is_left_alone(server_url: str) -> None:
    assert not holds_data(server_url)
    assert seed_if_empty(server_url, bills=12)
    assert holds_data(server_url)
    assert not seed_if_empty(server_url, bills=36)
    assert len(_rows_at(server_url, "INV_HDR")) == 12


def test_a_failed_server_seed_leaves_no_rows(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction: a crash leaves the database empty, so the next run seeds it."""

    def crash_after_some_bills(conn: Any, gen: Any, commit: Any) -> None:
        headers = [header for header, _, _ in itertools.islice(gen.bills_with_children(), 3)]
        conn.execute(billing_db.inv_hdr.insert(), headers)
        commit()
        raise RuntimeError("crash during seed")

    monkeypatch.setattr(billing_db, "_insert_bills", crash_after_some_bills)
    with pytest.raises(RuntimeError):
        seed_if_empty(server_url, bills=12)
    assert not holds_data(server_url)
    monkeypatch.undo()
    assert seed_if_empty(server_url, bills=12)
    assert len(_rows_at(server_url, "INV_HDR")) == 12


def test_cli_seeds_a_url_once_and_replaces_with_force(
    server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert billing_db.main(["--url", server_url, "--bills", "24"]) == 0
    assert "seeded" in capsys.readouterr().out
    assert billing_db.main(["--url", server_url, "--bills", "36"]) == 0
    assert "holds data already" in capsys.readouterr().out
    assert len(_rows_at(server_url, "INV_HDR")) == 24
    assert billing_db.main(["--url", server_url, "--bills", "36", "--force"]) == 0
    assert len(_rows_at(server_url, "INV_HDR")) == 36


async def _schema(url: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Index names and foreign keys ("column->table") per table, as the database has them."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync_conn: Any) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
                inspector = inspect(sync_conn)
                indexes = {t: {i["name"] for i in inspector.get_indexes(t)} for t in TABLES}
                keys = {
                    t: {
                        f"{fk['constrained_columns'][0]}->{fk['referred_table']}"
                        for fk in inspector.get_foreign_keys(t)
                    }
                    for t in TABLES
                }
                return indexes, keys

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


def test_a_server_database_gets_the_indexes_and_foreign_keys(server_url: str) -> None:
    """PostgreSQL builds them after the rows; they must be there all the same."""
    assert seed_if_empty(server_url, bills=30)
    indexes, keys = asyncio.run(_schema(server_url))
    for name in ("IX_INV_HDR_ACCT_STAT_DT", "IX_INV_HDR_INV_DT", "IX_INV_HDR_GRS_AMT"):
        assert name in indexes["INV_HDR"]
    assert {"IX_CHG_LINE_INV_ID", "IX_CHG_LINE_ACCT_POST"} <= indexes["CHG_LINE"]
    assert keys["INV_HDR"] == {"ACCT_NO->ACCT_MASTER", "RUN_ID->BILL_RUN"}
    assert keys["CHG_LINE"] == {"ACCT_NO->ACCT_MASTER", "INV_ID->INV_HDR"}
    assert keys["INV_TAX"] == {"INV_ID->INV_HDR"}
