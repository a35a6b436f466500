"""A legacy billing database for demos and benchmarks: schema plus a deterministic seed.

It imitates an old billing engine on purpose, so the gateway's mapping has real work to do:
cryptic upper-case names, one-letter codes, dates as 'YYYYMMDD' text and timestamps as
'YYYYMMDDHHMMSS' text (both Europe/Berlin local time), money as integer cents.

The seed is a pure function of its arguments (`random.Random(seed)`, fixed generation order),
so two runs with the same arguments give identical rows. Rows are generated and inserted in
batches, so memory stays bounded apart from a few small per-account arrays, which lets the
same code build 300 bills for a demo or a million for a benchmark.

Any SQLAlchemy URL, sync or async: a SQLite file (seeded aside, then moved into place),
PostgreSQL (rows loaded by COPY through asyncpg) or MariaDB/MySQL (one transaction; a
crash leaves the tables empty). `seed_if_empty` is what `make run` does with
`LEGACY_DB_URL`: a database that holds data is left as it is. The same rows land on every
engine; text columns compare by code point everywhere ("C" / binary collations).

Story of the data: twelve monthly bill runs for January to December 2024 (each billed on the
1st of the following month), some on-demand bills between them (interim bills, final bills
of closed accounts, ad-hoc bills, credit notes), and the charges posted since the last run
that are not billed yet. The demo's "today" is `DEMO_TODAY`: the December run was billed
on 2025-01-01, so its bills are still mostly new while older bills are sent, paid or partly
paid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from math import gcd
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    column,
    create_engine,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import AddConstraint, CreateTable
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import await_only as await_

__all__ = [
    "DEFAULT_SEED",
    "DEMO_TODAY",
    "LARGE_SEED_BILLS",
    "acct_master",
    "bill_run",
    "chg_line",
    "create_and_seed",
    "drop_schema",
    "ensure_demo_database",
    "inv_hdr",
    "inv_tax",
    "holds_data",
    "main",
    "metadata",
    "seed_if_empty",
    "sqlite_url",
    "table_counts",
]

DEFAULT_SEED = 678
DEFAULT_BILLS = 300
# Above this many bills each bill gets 2-4 charges instead of 8-12, to keep the seed fast.
LARGE_SEED_BILLS = 100_000
# The demo's "today": no timestamp in the seed lies after it.
DEMO_TODAY = date(2025, 1, 20)
BATCH_ROWS = 5_000

_T = TypeVar("_T")

# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------

metadata = MetaData(
    naming_convention={
        "pk": "PK_%(table_name)s",
        "fk": "FK_%(table_name)s_%(column_0_name)s",
        "uq": "UQ_%(table_name)s_%(column_0_name)s",
        "ck": "CK_%(table_name)s_%(constraint_name)s",
    }
)


def _code_check(name: str, codes: Sequence[str]) -> CheckConstraint:
    """Keep a one-letter/short code column inside its domain, like the old DBA did.

    Built as an expression, not text, so each dialect quotes the column its own way
    (MySQL/MariaDB would read a double-quoted name as a string).
    """
    return CheckConstraint(column(name).in_(codes), name=name)


def _text(length: int) -> TypeEngine[str]:
    """Text compared and sorted by code point, case-sensitively, on every engine.

    SQLite compares bytes already; PostgreSQL gets the "C" collation and MySQL/MariaDB a
    binary one (their defaults ignore case), so the database orders and matches text as
    the gateway does when it filters and sorts itself.
    """
    return (
        String(length)
        .with_variant(String(length, collation="C"), "postgresql")
        .with_variant(String(length, collation="utf8mb4_bin"), "mysql", "mariadb")
    )


def _date() -> TypeEngine[str]:
    """'YYYYMMDD', local calendar date (Europe/Berlin)."""
    return _text(8)


def _stamp() -> TypeEngine[str]:
    """'YYYYMMDDHHMMSS', local wall-clock time (Europe/Berlin)."""
    return _text(14)


#: MySQL/MariaDB table options: InnoDB (transactions, foreign keys) and full Unicode.
_MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


acct_master = Table(
    "ACCT_MASTER",
    metadata,
    Column("ACCT_NO", _text(12), primary_key=True),
    Column("ACCT_NM", _text(80), nullable=False),
    Column("RATE_TYP", _text(1), nullable=False),  # O postpaid, P prepaid
    Column("CURR_CD", _text(3), nullable=False),
    Column("OPEN_DT", _date(), nullable=False),
    Column("STAT_CD", _text(1), nullable=False),  # A active, C closed
    _code_check("RATE_TYP", ("O", "P")),
    _code_check("STAT_CD", ("A", "C")),
    **_MYSQL_TABLE,
)

bill_run = Table(
    "BILL_RUN",
    metadata,
    Column("RUN_ID", Integer, primary_key=True),
    Column("RUN_CD", _text(8), nullable=False, unique=True),
    Column("RUN_DESC", _text(80), nullable=False),
    Column("PRD_LBL", _text(30), nullable=False),
    Column("PRD_FROM_DT", _date(), nullable=False),
    Column("PRD_TO_DT", _date(), nullable=False),
    Column("BILL_DT", _date(), nullable=False),
    Column("MAIL_DT", _date(), nullable=False),
    Column("CHRG_DT", _date(), nullable=False),
    Column("CRDT_DT", _date(), nullable=False),
    Column("DUE_DT", _date(), nullable=False),
    Column("SPEC_CD", _text(10), nullable=False),
    **_MYSQL_TABLE,
)

inv_hdr = Table(
    "INV_HDR",
    metadata,
    Column("INV_ID", Integer, primary_key=True),
    Column("INV_NO", _text(16), nullable=False, unique=True),
    Column("ACCT_NO", _text(12), ForeignKey("ACCT_MASTER.ACCT_NO"), nullable=False),
    Column("RUN_ID", Integer, ForeignKey("BILL_RUN.RUN_ID"), nullable=True),
    Column("INV_DT", _date(), nullable=False),
    Column("PRD_FROM_DT", _date(), nullable=False),
    Column("PRD_TO_DT", _date(), nullable=False),
    Column("DUE_DT", _date(), nullable=False),
    Column("NXT_INV_DT", _date(), nullable=True),
    Column("STAT_CD", _text(1), nullable=False),
    Column("RUN_TYP", _text(1), nullable=False),  # C on cycle, D on demand
    Column("CAT_CD", _text(3), nullable=False),
    Column("NET_AMT", Integer, nullable=False),
    Column("TAX_AMT", Integer, nullable=False),
    Column("GRS_AMT", Integer, nullable=False),
    Column("OPEN_AMT", Integer, nullable=False),
    Column("CURR_CD", _text(3), nullable=False),
    Column("ARCH_KEY", _text(60), nullable=False),
    Column("UPD_TS", _stamp(), nullable=False),
    # External order reference: who asked for an off-cycle bill (the gateway's on-demand
    # request id). Unique, so one request can never produce two bills.
    Column("EXT_REF", _text(40), nullable=True, unique=True),
    _code_check("STAT_CD", ("N", "H", "V", "S", "C", "P")),
    _code_check("RUN_TYP", ("C", "D")),
    _code_check("CAT_CD", ("NRM", "DUP", "INT", "CRN")),
    **_MYSQL_TABLE,
)

inv_tax = Table(
    "INV_TAX",
    metadata,
    Column("INV_ID", Integer, ForeignKey("INV_HDR.INV_ID"), primary_key=True, autoincrement=False),
    Column("SEQ_NO", Integer, primary_key=True, autoincrement=False),
    Column("TAX_CD", _text(8), nullable=False),
    Column("TAX_RT", _text(6), nullable=False),
    Column("TAX_AMT", Integer, nullable=False),
    **_MYSQL_TABLE,
)

chg_line = Table(
    "CHG_LINE",
    metadata,
    Column("CHG_ID", Integer, primary_key=True),
    Column("ACCT_NO", _text(12), ForeignKey("ACCT_MASTER.ACCT_NO"), nullable=False),
    Column("INV_ID", Integer, ForeignKey("INV_HDR.INV_ID"), nullable=True),
    Column("CHG_TYP", _text(3), nullable=False),
    Column("CHG_NM", _text(40), nullable=False),
    Column("CHG_TXT", _text(120), nullable=False),
    Column("POST_TS", _stamp(), nullable=False),
    Column("SVC_FROM_DT", _date(), nullable=False),
    Column("SVC_TO_DT", _date(), nullable=False),
    Column("NET_AMT", Integer, nullable=False),
    Column("TAX_AMT", Integer, nullable=False),
    Column("TAX_RT", _text(6), nullable=False),
    Column("TAX_CD", _text(8), nullable=False),
    Column("PROD_ID", _text(12), nullable=False),
    Column("CURR_CD", _text(3), nullable=False),
    Column("BILLED_FLG", _text(1), nullable=False),
    _code_check("CHG_TYP", ("REC", "OTC", "USG", "CRD", "PEN")),
    CheckConstraint(
        or_(
            and_(column("INV_ID").is_(None), column("BILLED_FLG") == "N"),
            and_(column("INV_ID").is_not(None), column("BILLED_FLG") == "Y"),
        ),
        name="BILLED_FLG",
    ),
    **_MYSQL_TABLE,
)

# The gateway's access paths: bills of an account by state, newest first; bills by date, by
# state, by amount, by run; charges of a bill, of an account by posting time, unbilled ones.
# INV_TAX is only read by INV_ID, which its primary key covers.
Index("IX_INV_HDR_ACCT_STAT_DT", inv_hdr.c.ACCT_NO, inv_hdr.c.STAT_CD, inv_hdr.c.INV_DT)
Index("IX_INV_HDR_ACCT_DT", inv_hdr.c.ACCT_NO, inv_hdr.c.INV_DT)
Index("IX_INV_HDR_INV_DT", inv_hdr.c.INV_DT)
Index("IX_INV_HDR_STAT_DT", inv_hdr.c.STAT_CD, inv_hdr.c.INV_DT)
Index("IX_INV_HDR_OPEN_AMT", inv_hdr.c.OPEN_AMT)
Index("IX_INV_HDR_GRS_AMT", inv_hdr.c.GRS_AMT)
Index("IX_INV_HDR_RUN_ID", inv_hdr.c.RUN_ID)
Index("IX_CHG_LINE_INV_ID", chg_line.c.INV_ID)
Index("IX_CHG_LINE_ACCT_POST", chg_line.c.ACCT_NO, chg_line.c.POST_TS)
Index("IX_CHG_LINE_BILLED_FLG", chg_line.c.BILLED_FLG)

# Filter push-down (issue 15): the documented query shapes a real biller indexes for.
# Bills by tax category (a semi-join on INV_TAX); charges by name (regex prefix), by
# posting time (`sort=-date`) and by net amount (range filters and their counts); bills
# by net amount.
Index("IX_INV_TAX_TAX_CD", inv_tax.c.TAX_CD, inv_tax.c.INV_ID)
Index("IX_CHG_LINE_CHG_NM", chg_line.c.CHG_NM)
Index("IX_CHG_LINE_POST_TS", chg_line.c.POST_TS)
Index("IX_CHG_LINE_NET_AMT", chg_line.c.NET_AMT)
Index("IX_INV_HDR_NET_AMT", inv_hdr.c.NET_AMT)
# The newest bills first, ties by INV_ID: `sort=-billDate` with the gateway's tie-break,
# read off the index with no sort at all (a cycle run gives 75,000 bills one date, which
# a plain INV_DT index leaves to a sort). Tax lines of a bill by code: the probe of
# a page walked by the sort's index reads the index only.
Index("IX_INV_HDR_DT_DESC_ID", inv_hdr.c.INV_DT.desc(), inv_hdr.c.INV_ID)
Index("IX_INV_TAX_INV_CD", inv_tax.c.INV_ID, inv_tax.c.TAX_CD)
# SQLite only: INV_ID is the rowid, so "is this bill there" (each match of a semi-join
# count, 190,000 for `taxItem.taxCategory=VAT7`) otherwise reads the wide table's pages;
# this index of the keys alone answers it from a tenth of the pages (30 % less CPU).
# PostgreSQL and MariaDB have their primary key's index for that.
Index("IX_INV_HDR_INV_ID", inv_hdr.c.INV_ID).ddl_if(dialect="sqlite")

# The same for one state (issue 14, bench/pg_latency.py): over (STAT_CD, INV_DT) the
# PostgreSQL planner sorts a whole bill run's date for a page of 20 (41 ms on the
# million-bill database, 0.1 ms with this index).
Index("IX_INV_HDR_STAT_DT_DESC_ID", inv_hdr.c.STAT_CD, inv_hdr.c.INV_DT.desc(), inv_hdr.c.INV_ID)

_ALL_TABLES = (acct_master, bill_run, inv_hdr, inv_tax, chg_line)

# --------------------------------------------------------------------------------------
# Reference data for the generator
# --------------------------------------------------------------------------------------

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_TAX = {"VAT19": ("19.00", 1900), "VAT7": ("7.00", 700)}  # code -> (rate text, basis points)


@dataclass(frozen=True, slots=True)
class _Product:
    prod_id: str
    typ: str
    name: str
    text: str  # may contain {qty}
    price: int  # net cents, per unit for usage
    tax_cd: str = "VAT19"
    max_qty: int = 1


_MAIN_PLANS = (
    _Product("PRD-00010", "REC", "Mobile S", "Mobile tariff S, monthly base fee", 999),
    _Product("PRD-00011", "REC", "Mobile M", "Mobile tariff M, monthly base fee", 1999),
    _Product("PRD-00012", "REC", "Mobile L", "Mobile tariff L, monthly base fee", 3499),
    _Product("PRD-00020", "REC", "Fiber 250", "Fiber broadband 250 Mbit/s, monthly fee", 3999),
    _Product("PRD-00021", "REC", "Fiber 1000", "Fiber broadband 1 Gbit/s, monthly fee", 6999),
    _Product("PRD-00042", "REC", "Cloud PBX", "Business Cloud PBX, 10 seats, monthly fee", 12900),
)
_ADD_ONS = (
    _Product("PRD-00030", "REC", "TV Basic", "IPTV basic package, monthly fee", 899),
    _Product("PRD-00031", "REC", "Static IP", "Static IPv4 address, monthly fee", 500),
    _Product("PRD-00035", "REC", "E-Paper", "Daily newspaper e-paper bundle, monthly", 799, "VAT7"),
    _Product("PRD-00036", "REC", "Audiobooks", "Audiobook flatrate, monthly fee", 599, "VAT7"),
)
_USAGE = (
    _Product("PRD-00101", "USG", "Voice national", "National calls, {qty} min", 9, max_qty=600),
    _Product("PRD-00102", "USG", "Voice intl", "International calls, {qty} min", 29, max_qty=90),
    _Product("PRD-00103", "USG", "SMS", "Text messages, {qty} SMS", 9, max_qty=80),
    _Product("PRD-00104", "USG", "Roaming data", "Roaming outside EU, {qty} MB", 49, max_qty=250),
    _Product(
        "PRD-00105", "USG", "Data pass 1GB", "Extra data 1 GB, {qty} pass(es)", 499, max_qty=3
    ),
    _Product("PRD-00106", "USG", "Audiobook", "Audiobook download, {qty} title(s)", 999, "VAT7", 2),
    _Product("PRD-00107", "USG", "Premium call", "Premium-rate calls, {qty} min", 99, max_qty=40),
)
_ONE_TIME = (
    _Product("PRD-00201", "OTC", "Activation", "One-time activation fee", 2999),
    _Product("PRD-00202", "OTC", "WLAN router", "WLAN router, purchase", 14999),
    _Product("PRD-00203", "OTC", "SIM swap", "Replacement SIM card", 1499),
    _Product("PRD-00204", "OTC", "Technician", "Technician visit on site", 8900),
    _Product("PRD-00205", "OTC", "Shipping", "Shipping and handling", 595),
)
_GOODWILL = _Product("PRD-00301", "CRD", "Goodwill", "Goodwill credit, customer service", 0)
_OUTAGE = _Product("PRD-00302", "CRD", "Outage credit", "Outage compensation, {qty} day(s)", 0)
_PENALTIES = (
    _Product("PRD-00401", "PEN", "Late fee", "Late payment fee (reminder)", 500),
    _Product("PRD-00402", "PEN", "Return debit", "Returned direct debit fee", 350),
)

_FIRST_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannah", "Jonas", "Jana",
    "Karl", "Lena", "Lukas", "Marie", "Mehmet", "Mia", "Niklas", "Olga", "Paul", "Sophie",
    "Stefan", "Tobias", "Ursula", "Yusuf",
)  # fmt: skip
_LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
    "Schulz", "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
    "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Yilmaz",
    "Kaya", "Nowak",
)  # fmt: skip
_TRADES = (
    "Logistik", "Bau", "Elektro", "Consulting", "Immobilien", "Autohaus", "Bäckerei",
    "Dental", "Software", "Transporte", "Gartenbau", "Medien", "Reisen", "Steuerberatung",
)  # fmt: skip
_LEGAL_FORMS = ("GmbH", "GmbH & Co. KG", "KG", "AG", "e.K.", "UG (haftungsbeschränkt)", "OHG")

# State mix of bills by age (0 = latest run); the last entry applies to all older ones.
# Percentages; each row sums to 100.
_STATE_MIX: tuple[tuple[tuple[str, int], ...], ...] = (
    (("N", 85), ("H", 10), ("V", 5)),
    (("N", 65), ("H", 20), ("V", 15)),
    (("V", 35), ("H", 25), ("S", 40)),
    (("S", 50), ("P", 25), ("C", 25)),
    (("S", 10), ("P", 15), ("C", 75)),
)

# --------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------

_DAY0 = date(2005, 1, 1).toordinal()
_DAYS = [
    f"{d.year:04d}{d.month:02d}{d.day:02d}"
    for d in (date.fromordinal(o) for o in range(_DAY0, date(2026, 12, 31).toordinal() + 1))
]
_TODAY = DEMO_TODAY.toordinal()


def _ds(ordinal: int) -> str:
    """'YYYYMMDD' of a proleptic ordinal, by table lookup (strftime is too slow in bulk)."""
    return _DAYS[ordinal - _DAY0]


def _tax(net: int, tax_cd: str) -> int:
    """Per-line VAT, rounded half away from zero like the old engine."""
    bp = _TAX[tax_cd][1]
    amount = (abs(net) * bp + 5_000) // 10_000
    return amount if net >= 0 else -amount


def _coprime_step(n: int) -> int:
    """A stride that visits every residue mod n once, and scatters neighbours."""
    if n <= 2:
        return 1
    step = max(1, int(n * 0.618))
    while gcd(step, n) != 1:
        step += 1
    return step


def _state_at(pos: int, size: int, age: int) -> str:
    """State quota by position, so each run gets its mix exactly rather than by chance."""
    mix = _STATE_MIX[min(age, len(_STATE_MIX) - 1)]
    point = (pos + 0.5) * 100 / size
    cumulative = 0
    for state, share in mix:
        cumulative += share
        if point < cumulative:
            return state
    return mix[-1][0]


def _spread(total: int, parts: int) -> list[int]:
    """Split `total` evenly into `parts`, remainders to the latest parts (business grows)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


@dataclass(frozen=True, slots=True)
class _Dates:
    """Dates of a bill run, or of one on-demand bill (no run id, no next bill); ordinals."""

    run_id: int | None
    frm: int
    to: int
    bill: int
    mail: int
    due: int
    next_bill: int | None


def _runs() -> list[_Dates]:
    """The twelve monthly cycles of 2024, billed on the 1st of the following month."""
    runs = []
    for month in range(1, 13):
        frm = date(2024, month, 1).toordinal()
        bill = date(2024 + month // 12, month % 12 + 1, 1).toordinal()
        nxt_month = (month + 1) % 12 + 1
        nxt = date(2024 + (month + 1) // 12, nxt_month, 1).toordinal()
        runs.append(_Dates(month, frm, bill - 1, bill, bill + 2, bill + 14, nxt))
    return runs


def _bill_run_rows() -> list[dict[str, Any]]:
    rows = []
    for run in _runs():
        month = date.fromordinal(run.frm).month
        rows.append(
            {
                "RUN_ID": run.run_id,
                "RUN_CD": f"BR2024{month:02d}",
                "RUN_DESC": f"Monthly postpaid bill run {month:02d}/2024",
                "PRD_LBL": f"{_MONTHS[month - 1]} 2024",
                "PRD_FROM_DT": _ds(run.frm),
                "PRD_TO_DT": _ds(run.to),
                "BILL_DT": _ds(run.bill),
                "MAIL_DT": _ds(run.mail),
                "CHRG_DT": _ds(run.due),
                "CRDT_DT": _ds(run.to),
                "DUE_DT": _ds(run.due),
                "SPEC_CD": "MONTHLY",
            }
        )
    return rows


class _Seed:
    """Generates all rows in a fixed order from one `random.Random`."""

    def __init__(self, *, bills: int, accounts: int, seed: int, unbilled: int) -> None:
        self.rng = random.Random(seed)
        self.bills = bills
        self.accounts = accounts
        self.unbilled = unbilled
        self.charges_range = (2, 4) if bills > LARGE_SEED_BILLS else (8, 12)
        self.runs = _runs()
        self.next_chg_id = 1
        self.year_seq: dict[int, int] = {}  # invoice numbers restart every year
        # Small per-account arrays (no row dicts): plan, and pools by role.
        self.plan: list[int] = []  # main plan index * 8 + add-on index (+1, 0 = none)
        self.prepaid: list[bool] = []
        self.cycle_pool: list[int] = []  # active postpaid: billed by the monthly runs
        self.active: list[int] = []
        self.closed: list[int] = []

    # ---- accounts ------------------------------------------------------------------

    def account_rows(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        first_open = date(2008, 1, 1).toordinal()
        last_open = date(2023, 11, 30).toordinal()
        for idx in range(self.accounts):
            closed = idx % 20 == 19
            prepaid = idx != 0 and rng.random() < 0.12
            main_plan = rng.randrange(len(_MAIN_PLANS))
            add_on = rng.randrange(len(_ADD_ONS)) + 1 if rng.random() < 0.35 else 0
            self.plan.append(main_plan * 8 + add_on)
            self.prepaid.append(prepaid)
            if closed:
                self.closed.append(idx)
            else:
                self.active.append(idx)
                if not prepaid:
                    self.cycle_pool.append(idx)
            if rng.random() < 0.4:
                name = f"{rng.choice(_LAST_NAMES)} {rng.choice(_TRADES)} {rng.choice(_LEGAL_FORMS)}"
            else:
                name = f"{rng.choice(_LAST_NAMES)}, {rng.choice(_FIRST_NAMES)}"
            yield {
                "ACCT_NO": self.acct_no(idx),
                "ACCT_NM": name,
                "RATE_TYP": "P" if prepaid else "O",
                "CURR_CD": "EUR",
                "OPEN_DT": _ds(rng.randint(first_open, last_open)),
                "STAT_CD": "C" if closed else "A",
            }

    @staticmethod
    def acct_no(idx: int) -> str:
        return f"BA-{idx + 1:06d}"

    def recurring(self, idx: int) -> list[_Product]:
        code = self.plan[idx]
        products = [_MAIN_PLANS[code // 8]]
        if code % 8:
            products.append(_ADD_ONS[code % 8 - 1])
        return products

    # ---- bills ---------------------------------------------------------------------

    def bills_with_children(
        self,
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
        """(header, tax lines, charges) per bill, in INV_ID (= chronological) order."""
        rng = self.rng
        on_demand = round(self.bills * 0.10) if self.bills >= 10 else min(1, self.bills)
        per_slot = _spread(on_demand, 12)
        per_run = _spread(self.bills - on_demand, 12)
        inv_id = 0
        demand_seen = 0
        pool = self.cycle_pool or self.active or [0]
        pool_step = _coprime_step(len(pool))
        for month, run in enumerate(self.runs, start=1):
            age = 12 - month
            # On-demand bills dated inside this month come before the run that bills it.
            size = per_slot[month - 1]
            perm_a, perm_b = _coprime_step(size), rng.randrange(max(size, 1))
            for k in range(size):
                state = _state_at((k * perm_a + perm_b) % size, size, age)
                inv_id += 1
                acct = self.closed[demand_seen] if demand_seen < len(self.closed) else None
                demand_seen += 1
                yield self.on_demand_bill(inv_id, month, state, acct)
            size = per_run[month - 1]
            perm_a, perm_b = _coprime_step(size), rng.randrange(max(size, 1))
            start = rng.randrange(len(pool))
            for k in range(size):
                state = _state_at((k * perm_a + perm_b) % size, size, age)
                inv_id += 1
                acct = pool[(start + k * pool_step) % len(pool)]
                yield self.cycle_bill(inv_id, run, state, acct)

    def cycle_bill(
        self, inv_id: int, run: _Dates, state: str, acct: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        rng = self.rng
        specs = self.regular_charges(acct, run.frm, run.to)
        category = "DUP" if rng.random() < 0.02 else "NRM"
        created = rng.randrange(4 * 3600, 6 * 3600)  # the batch run starts at 04:00
        return self.assemble(inv_id, acct, "C", category, state, specs, run, created)

    def on_demand_bill(
        self, inv_id: int, month: int, state: str, closed: int | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        rng = self.rng
        frm = date(2024, month, 1).toordinal()
        inv_dt = frm + rng.randint(2, 27)
        to = inv_dt - 1
        if closed is not None:
            acct, category, specs = closed, "NRM", self.final_charges(closed, frm, to)
        else:
            acct = self.active[rng.randrange(len(self.active))] if self.active else 0
            pick = rng.random()
            if pick < 0.12 and state != "P":
                category, specs = "CRN", self.credit_note_charges(frm, to)
            elif pick < 0.40 and not self.prepaid[acct]:
                category, specs = "INT", self.interim_charges(frm, to)
            else:
                category, specs = "NRM", self.ad_hoc_charges(frm, to)
        dates = _Dates(None, frm, to, inv_dt, inv_dt + 2, inv_dt + 14, None)
        created = rng.randrange(8 * 3600, 18 * 3600)
        return self.assemble(inv_id, acct, "D", category, state, specs, dates, created)

    # ---- charge mixes: (product, net, qty, svc_from, svc_to, post_day) -------------

    def n_charges(self) -> int:
        return self.rng.randint(*self.charges_range)

    def day_in(self, frm: int, to: int) -> int:
        return frm + self.rng.randrange(to - frm + 1)

    def usage(self, frm: int, to: int) -> tuple[_Product, int, int, int, int, int]:
        rng = self.rng
        product = _USAGE[min(int(rng.expovariate(0.6)), len(_USAGE) - 1)]
        qty = rng.randint(1, product.max_qty)
        day = self.day_in(frm, to)
        return product, qty * product.price, qty, day, day, day

    def one_time(self, frm: int, to: int) -> tuple[_Product, int, int, int, int, int]:
        product = self.rng.choice(_ONE_TIME)
        day = self.day_in(frm, to)
        return product, product.price, 1, day, day, day

    def regular_charges(self, acct: int, frm: int, to: int) -> list[tuple]:
        """Monthly bill: the plan's recurring fees plus usage, sometimes extras."""
        rng = self.rng
        specs: list[tuple] = [(p, p.price, 1, frm, to, frm) for p in self.recurring(acct)]
        recurring_net = sum(spec[1] for spec in specs)
        credited = False
        for _ in range(max(0, self.n_charges() - len(specs))):
            pick = rng.random()
            if pick < 0.08:
                specs.append(self.one_time(frm, to))
            elif pick < 0.13 and not credited:
                credited = True
                if rng.random() < 0.5:
                    days = rng.randint(1, 5)
                    net = -max(1, recurring_net * days // 30)
                    specs.append((_OUTAGE, net, days, frm, to, self.day_in(frm, to)))
                else:
                    net = -min(rng.randrange(500, 2_001, 100), recurring_net // 2)
                    specs.append((_GOODWILL, net, 1, frm, to, self.day_in(frm, to)))
            elif pick < 0.18:
                product = rng.choice(_PENALTIES)
                day = self.day_in(frm, to)
                specs.append((product, product.price, 1, day, day, day))
            else:
                specs.append(self.usage(frm, to))
        return specs

    def final_charges(self, acct: int, frm: int, to: int) -> list[tuple]:
        """Final bill on closure: pro-rated fees up to the closing day, usage, shipping."""
        days, month_days = to - frm + 1, 30
        specs: list[tuple] = [
            (p, max(1, p.price * days // month_days), days, frm, to, to)
            for p in self.recurring(acct)
        ]
        for _ in range(max(0, self.n_charges() - len(specs) - 1)):
            specs.append(self.usage(frm, to))
        specs.append((_ONE_TIME[4], _ONE_TIME[4].price, 1, to, to, to))
        return specs

    def interim_charges(self, frm: int, to: int) -> list[tuple]:
        """Interim bill: usage so far this month (e.g. on a credit-limit breach)."""
        return [self.usage(frm, to) for _ in range(self.n_charges())]

    def ad_hoc_charges(self, frm: int, to: int) -> list[tuple]:
        """Ad-hoc bill: a purchase plus some usage (the way prepaid customers get bills)."""
        specs = [self.one_time(frm, to)]
        specs.extend(self.usage(frm, to) for _ in range(self.n_charges() - 1))
        return specs

    def credit_note_charges(self, frm: int, to: int) -> list[tuple]:
        """Credit note: one or two credits, so the bill's amounts are negative."""
        rng = self.rng
        specs: list[tuple] = []
        for _ in range(rng.randint(1, 2)):
            net = -rng.randrange(500, 5_001, 50)
            specs.append((_GOODWILL, net, 1, frm, to, self.day_in(frm, to)))
        return specs

    # ---- rows ----------------------------------------------------------------------

    def charge_row(self, spec: tuple, acct_no: str, inv_id: int | None) -> dict[str, Any]:
        product, net, qty, svc_from, svc_to, post_day = spec
        sec = self.rng.randrange(6 * 3600, 22 * 3600)  # business hours, clear of DST shifts
        hh, rest = divmod(sec, 3600)
        mm, ss = divmod(rest, 60)
        chg_id = self.next_chg_id
        self.next_chg_id += 1
        return {
            "CHG_ID": chg_id,
            "ACCT_NO": acct_no,
            "INV_ID": inv_id,
            "CHG_TYP": product.typ,
            "CHG_NM": product.name,
            "CHG_TXT": product.text.format(qty=qty),
            "POST_TS": f"{_ds(post_day)}{hh:02d}{mm:02d}{ss:02d}",
            "SVC_FROM_DT": _ds(svc_from),
            "SVC_TO_DT": _ds(svc_to),
            "NET_AMT": net,
            "TAX_AMT": _tax(net, product.tax_cd),
            "TAX_RT": _TAX[product.tax_cd][0],
            "TAX_CD": product.tax_cd,
            "PROD_ID": product.prod_id,
            "CURR_CD": "EUR",
            "BILLED_FLG": "N" if inv_id is None else "Y",
        }

    def assemble(
        self,
        inv_id: int,
        acct: int,
        run_typ: str,
        category: str,
        state: str,
        specs: list[tuple],
        dates: _Dates,
        created_sec: int,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """Turn charge specs into rows and derive the header's totals and history from them."""
        rng = self.rng
        acct_no = self.acct_no(acct)
        specs.sort(key=lambda spec: spec[5])  # ids follow posting days, as in the old engine
        charges = [self.charge_row(spec, acct_no, inv_id) for spec in specs]
        net = sum(c["NET_AMT"] for c in charges)
        by_code: dict[str, int] = {}
        for c in charges:
            by_code[c["TAX_CD"]] = by_code.get(c["TAX_CD"], 0) + c["TAX_AMT"]
        taxes = [
            {
                "INV_ID": inv_id,
                "SEQ_NO": seq,
                "TAX_CD": code,
                "TAX_RT": _TAX[code][0],
                "TAX_AMT": by_code[code],
            }
            for seq, code in enumerate((c for c in _TAX if c in by_code), start=1)
        ]
        tax = sum(by_code.values())
        gross = net + tax
        if state == "C":
            open_amt = 0
        elif state == "P":
            open_amt = gross - min(gross - 1, max(1, gross * rng.randint(20, 80) // 100))
        else:
            open_amt = gross
        # Last change: when the bill reached its state.
        if state == "N":
            upd_day, upd_sec = dates.bill, created_sec
        elif state in ("H", "V"):
            upd_day, upd_sec = dates.bill + rng.randint(1, 3), rng.randrange(8 * 3600, 18 * 3600)
        elif state == "S":
            upd_day, upd_sec = dates.mail, rng.randrange(6 * 3600, 8 * 3600)
        else:  # paid in full or in part: a payment posting
            upd_day, upd_sec = (
                rng.randint(dates.mail + 1, dates.due + 20),
                rng.randrange(6 * 3600, 22 * 3600),
            )
        upd_day = min(upd_day, _TODAY)
        hh, rest = divmod(upd_sec, 3600)
        mm, ss = divmod(rest, 60)
        inv_date = _ds(dates.bill)
        year = int(inv_date[:4])
        self.year_seq[year] = seq_no = self.year_seq.get(year, 0) + 1
        inv_no = f"INV{year % 100:02d}-{seq_no:06d}"
        header = {
            "INV_ID": inv_id,
            "INV_NO": inv_no,
            "ACCT_NO": acct_no,
            "RUN_ID": dates.run_id,
            "INV_DT": inv_date,
            "PRD_FROM_DT": _ds(dates.frm),
            "PRD_TO_DT": _ds(dates.to),
            "DUE_DT": _ds(dates.due),
            "NXT_INV_DT": None if dates.next_bill is None else _ds(dates.next_bill),
            "STAT_CD": state,
            "RUN_TYP": run_typ,
            "CAT_CD": category,
            "NET_AMT": net,
            "TAX_AMT": tax,
            "GRS_AMT": gross,
            "OPEN_AMT": open_amt,
            "CURR_CD": "EUR",
            "ARCH_KEY": f"DMS/{inv_date[:4]}/{inv_date[4:6]}/{inv_no}.pdf",
            "UPD_TS": f"{_ds(upd_day)}{hh:02d}{mm:02d}{ss:02d}",
        }
        return header, taxes, charges

    # ---- unbilled ------------------------------------------------------------------

    def unbilled_rows(self) -> Iterator[dict[str, Any]]:
        """Charges posted since the last run (January 2025), waiting for the next one."""
        rng = self.rng
        frm = date(2025, 1, 1).toordinal()
        to = date(2025, 1, 31).toordinal()
        last_post = _TODAY - 1
        pool = self.active or [0]
        for _ in range(self.unbilled):
            acct = pool[rng.randrange(len(pool))]
            pick = rng.random()
            if pick < 0.10 and not self.prepaid[acct]:
                product = self.recurring(acct)[0]
                spec = (product, product.price, 1, frm, to, frm)
            elif pick < 0.20:
                spec = self.one_time(frm, last_post)
            elif pick < 0.25:
                net = -rng.randrange(500, 1_501, 100)
                spec = (_GOODWILL, net, 1, frm, to, self.day_in(frm, last_post))
            else:
                spec = self.usage(frm, last_post)
            yield self.charge_row(spec, self.acct_no(acct), None)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Many rows at once: PostgreSQL's COPY through asyncpg, else an executemany INSERT."""
    if conn.dialect.driver == "asyncpg":
        names = [c.name for c in table.c]
        records = [tuple(row.get(name) for name in names) for row in rows]
        driver = conn.connection.driver_connection
        assert driver is not None
        await_(driver.copy_records_to_table(table.name, records=records, columns=names))
    else:
        conn.execute(table.insert(), rows)


def _insert_batches(
    conn: Connection, table: Table, rows: Iterator[dict[str, Any]], commit: Callable[[], None]
) -> None:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            _insert(conn, table, batch)
            commit()
            batch = []
    if batch:
        _insert(conn, table, batch)
        commit()


def _insert_bills(conn: Connection, gen: _Seed, commit: Callable[[], None]) -> None:
    """Headers before their children in every flush, so foreign keys hold on any engine."""
    headers: list[dict[str, Any]] = []
    taxes: list[dict[str, Any]] = []
    charges: list[dict[str, Any]] = []

    def flush() -> None:
        for table, rows in ((inv_hdr, headers), (inv_tax, taxes), (chg_line, charges)):
            if rows:
                _insert(conn, table, rows)
                rows.clear()
        commit()

    for header, tax_rows, charge_rows in gen.bills_with_children():
        headers.append(header)
        taxes.extend(tax_rows)
        charges.extend(charge_rows)
        if len(headers) >= BATCH_ROWS or len(charges) >= BATCH_ROWS:
            flush()
    flush()


def _reset_sequences(conn: Connection) -> None:
    """PostgreSQL: move SERIAL sequences past the seeded ids so later inserts don't collide.

    (MySQL/MariaDB move AUTO_INCREMENT past inserted ids by themselves; SQLite takes max+1.)
    """
    for table, column_name in (
        ("BILL_RUN", "RUN_ID"),
        ("INV_HDR", "INV_ID"),
        ("CHG_LINE", "CHG_ID"),
    ):
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column_name}'), "
                f'COALESCE((SELECT MAX("{column_name}") FROM "{table}"), 0) + 1, false)'
            )
        )


def _on_connection(url: str, work: Callable[[Connection], _T]) -> _T:
    """Run `work` on one connection to `url`, a sync or an async SQLAlchemy URL.

    With an async driver (asyncpg, asyncmy, aiosqlite: the gateway's own URLs) the same
    synchronous code runs through `AsyncConnection.run_sync`, so one URL serves both the
    gateway and its seed, and no second driver is needed.
    """
    parsed = make_url(url)
    if parsed.get_dialect().is_async:

        async def run_async() -> _T:
            engine = create_async_engine(parsed)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(work)
            finally:
                await engine.dispose()

        return asyncio.run(run_async())
    engine = create_engine(parsed)
    try:
        with engine.connect() as conn:
            return work(conn)
    finally:
        engine.dispose()


def _seed(
    conn: Connection,
    *,
    bills: int = DEFAULT_BILLS,
    accounts: int | None = None,
    seed: int = DEFAULT_SEED,
    unbilled: int | None = None,
) -> None:
    if bills < 0:
        raise ValueError("bills must be >= 0")
    accounts = max(60, bills // 6) if accounts is None else accounts
    if accounts < 1:
        raise ValueError("accounts must be >= 1")
    unbilled = max(250, bills // 10) if unbilled is None else unbilled
    if unbilled < 0:
        raise ValueError("unbilled must be >= 0")

    gen = _Seed(bills=bills, accounts=accounts, seed=seed, unbilled=unbilled)
    dialect = conn.dialect.name
    # PostgreSQL, new tables: indexes and foreign keys come after the rows, built and
    # checked once each instead of row by row; all in the seed's one transaction.
    deferred = dialect == "postgresql" and not set(inspect(conn).get_table_names()) & {
        t.name for t in _ALL_TABLES
    }
    if deferred:
        for table in metadata.sorted_tables:
            conn.execute(CreateTable(table, include_foreign_key_constraints=[]))
    else:
        with _quiet_driver_warnings():
            metadata.create_all(conn)
        conn.commit()
    # SQLite commits each batch (a file seeded aside, then moved into place, so nothing
    # half-done is ever seen); a server database gets all rows in one transaction, so a
    # crash leaves it empty and the next `make run` seeds it again.
    commit = conn.commit if dialect == "sqlite" else _no_commit
    if dialect == "sqlite":
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA synchronous=OFF")  # this connection only
    elif dialect in ("mysql", "mariadb"):
        # Fresh tables and rows consistent by construction: InnoDB may skip its per-row
        # foreign key and unique look-ups (this session only), several times faster.
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0, unique_checks = 0")
    conn.execute(select(literal(1)))  # the transaction the rows go in has begun
    _insert_batches(conn, acct_master, gen.account_rows(), commit)
    conn.execute(bill_run.insert(), _bill_run_rows())
    commit()
    _insert_bills(conn, gen, commit)
    _insert_batches(conn, chg_line, gen.unbilled_rows(), commit)
    if deferred:
        for table in metadata.sorted_tables:
            for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
                index.create(conn)  # as create_all would: honours `ddl_if`
            for constraint in table.foreign_key_constraints:
                # Not isolated: the shared `metadata` must create it inline next time.
                conn.execute(AddConstraint(constraint, isolate_from_table=False))
    if dialect == "postgresql":
        _reset_sequences(conn)
    elif dialect in ("mysql", "mariadb"):
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 1, unique_checks = 1")
    conn.commit()
    # Planner statistics ship with the data: without them SQLite takes a broad range's
    # index over the sort's, and PostgreSQL guesses until autovacuum gets round to it.
    if dialect in ("sqlite", "postgresql"):
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    if dialect == "sqlite":
        conn.exec_driver_sql("PRAGMA synchronous=FULL")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


@contextlib.contextmanager
def _quiet_driver_warnings() -> Iterator[None]:
    """MySQL/MariaDB warn that a primary key's name is ignored (they have one name for all
    primary keys); asyncmy logs each warning. Expected here, so not shown."""
    driver_log = logging.getLogger("asyncmy")
    level = driver_log.level
    driver_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        driver_log.setLevel(level)


def _no_commit() -> None:
    """Batches of a server database stay in the seed's one transaction."""


def create_and_seed(
    url: str,
    *,
    bills: int = DEFAULT_BILLS,
    accounts: int | None = None,
    seed: int = DEFAULT_SEED,
    unbilled: int | None = None,
) -> None:
    """Create the schema at a SQLAlchemy URL (sync or async) and fill it; tables must be empty.

    Any engine SQLAlchemy knows: SQLite, PostgreSQL, MySQL/MariaDB. Defaults: `accounts =
    max(60, bills // 6)`, `unbilled = max(250, bills // 10)`. Each bill gets 8-12 charges,
    or 2-4 above `LARGE_SEED_BILLS` bills to keep big seeds fast (about 3 million charges
    for a million bills). Accounts are picked per run with a stride, so a run bills
    distinct accounts as long as it is not bigger than the pool of active postpaid
    accounts (true for the default account count).
    """
    options = {"bills": bills, "accounts": accounts, "seed": seed, "unbilled": unbilled}
    _on_connection(url, lambda conn: _seed(conn, **options))


def _holds_data(conn: Connection) -> bool:
    present = set(inspect(conn).get_table_names())
    return any(
        conn.execute(select(literal(1)).select_from(table).limit(1)).first() is not None
        for table in _ALL_TABLES
        if table.name in present
    )


def holds_data(url: str) -> bool:
    """Whether any of the demo tables exists at `url` with rows in it."""
    return _on_connection(url, _holds_data)


def seed_if_empty(url: str, **options: Any) -> bool:
    """Create and seed the demo schema at `url` unless it holds data already; seeded?

    What `make run` does for `LEGACY_DB_URL`: a database someone filled (or changed) is
    never touched. Options as for `create_and_seed`.
    """

    def work(conn: Connection) -> bool:
        if _holds_data(conn):
            return False
        conn.rollback()
        _seed(conn, **options)
        return True

    return _on_connection(url, work)


def drop_schema(url: str) -> None:
    """Drop the demo tables at `url` (for `--force`); other tables stay."""

    def work(conn: Connection) -> None:
        metadata.drop_all(conn)
        conn.commit()

    _on_connection(url, work)


def sqlite_url(path: str | Path) -> str:
    """Sync SQLAlchemy URL of a SQLite file, safe for any characters in the path."""
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def table_counts(url: str) -> dict[str, int]:
    """Row count per table, for the CLI's summary and quick checks."""

    def work(conn: Connection) -> dict[str, int]:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in _ALL_TABLES
        }

    return _on_connection(url, work)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _seed_file(path: Path, *, overwrite: bool, **options: Any) -> bool:
    """Seed into a temp file beside `path`, then move it into place in one step.

    A crash leaves at most a stray temp file, never a half-seeded database at `path`.
    Without `overwrite`, a file that appeared meanwhile (another process) wins; returns
    whether ours was installed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_sqlite_files(tmp)
    try:
        create_and_seed(sqlite_url(tmp), **options)
        for suffix in ("-wal", "-shm"):  # checkpointed and closed: nothing left to lose
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{tmp}{suffix}")
        if overwrite:
            _remove_sqlite_files(path)
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if the target exists: no clobbering
        except FileExistsError:
            return False
        except OSError:  # filesystem without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        _remove_sqlite_files(tmp)


def ensure_demo_database(path: str | Path) -> Path:
    """Make sure the demo database exists (seeded with defaults); never reseed an existing one."""
    path = Path(path)
    if not path.exists():
        _seed_file(path, overwrite=False)
    return path


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m simulators.billing_db [--path FILE | --url URL] [--bills N] ...`"""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.billing_db",
        description="Create and seed the legacy billing demo database: a SQLite file, or"
        " any database SQLAlchemy reaches (PostgreSQL, MariaDB/MySQL).",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--path", type=Path, default=Path("var/legacy_billing.sqlite"))
    target.add_argument(
        "--url",
        help="a SQLAlchemy URL, sync or async (postgresql+asyncpg://..., mysql+asyncmy://...);"
        " a database that holds the demo's data already is left as it is",
    )
    parser.add_argument("--bills", type=int, default=DEFAULT_BILLS)
    parser.add_argument("--accounts", type=int, default=None)
    parser.add_argument("--unbilled", type=int, default=None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--force", action="store_true", help="replace existing data")
    args = parser.parse_args(argv)
    options = {
        "bills": args.bills,
        "accounts": args.accounts,
        "seed": args.seed,
        "unbilled": args.unbilled,
    }

    started = time.perf_counter()
    if args.url is not None:
        url, shown = args.url, make_url(args.url).render_as_string(hide_password=True)
        if args.force:
            drop_schema(url)
        if not seed_if_empty(url, **options):
            print(f"{shown} holds data already; not seeded (--force replaces it)")
            return 0
    else:
        if args.path.exists() and not args.force:
            print(f"{args.path} exists; use --force to replace it", file=sys.stderr)
            return 1
        _seed_file(args.path, overwrite=True, **options)
        url, shown = sqlite_url(args.path), str(args.path)
    elapsed = time.perf_counter() - started
    for name, count in table_counts(url).items():
        print(f"{name:12} {count:>10,}")
    print(f"seeded {shown} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
