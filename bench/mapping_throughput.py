"""Records per second through the demo customerBill mapping, mapping only (no I/O).

Seeds a small copy of the demo legacy database in a temporary directory, binds
`mappings/legacy_sql/customer_bill.yaml` to it through the SQL adapter and compiles it as
the gateway does (reflected column kinds, OAS check), reads the bills as the adapter
hands them over (one dict per INV_HDR row, its INV_TAX rows under `taxes`), then maps
them all again and again. Issue #13 wants at least 300,000 records/s.

The machine is shared, so a bare rate says little: side by side in the same rounds it
times a hand-written Python function giving the very same output (checked equal first),
and prints the mapping's best time as a ratio of that one's. "cold" is the first pass of a
freshly compiled mapping, before the date conversions are cached.

    python bench/mapping_throughput.py [--bills 2000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from adapters.base import Plan  # noqa: E402
from adapters.sql import SqlAdapter, SqlOptions  # noqa: E402
from gateway.oas import attribute_types  # noqa: E402
from mappings.compiler import CompiledMapping, compile_mapping, read_mapping  # noqa: E402
from simulators.billing_db import create_and_seed, sqlite_url  # noqa: E402

MAPPING = ROOT / "mappings" / "legacy_sql" / "customer_bill.yaml"
BASE = "https://gateway.example/tmf-api/customerBillManagement/v5"
Record = dict[str, Any]


async def _read(path: Path) -> tuple[list[Record], Callable[[], CompiledMapping]]:
    spec = read_mapping(MAPPING)
    adapter = SqlAdapter("legacy", SqlOptions(url=f"sqlite+aiosqlite:///{path}"))
    await adapter.open()
    try:
        source = await adapter.bind(spec["source"])
        page = await source.page(Plan())
    finally:
        await adapter.close()
    types = attribute_types("CustomerBill").types

    def compiled() -> CompiledMapping:
        return compile_mapping(
            spec, file=str(MAPPING), columns=source.columns, attribute_types=types
        )

    return list(page.records), compiled


def demo_records(bills: int) -> tuple[list[Record], Callable[[], CompiledMapping]]:
    """The demo bills as the SQL adapter's records, and how the gateway compiles the mapping."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        create_and_seed(sqlite_url(path), bills=bills)
        return asyncio.run(_read(path))


_BERLIN = ZoneInfo("Europe/Berlin")
_STATES = {"N": "new", "H": "onHold", "V": "validated", "S": "sent", "C": "settled"}
_STATES["P"] = "partiallyPaid"
_RUNS = {"C": "onCycle", "D": "offCycle"}
_CATEGORIES = {"NRM": "normal", "DUP": "duplicate", "INT": "interim", "CRN": "creditNote"}
_DATES: dict[str, str] = {}


def _date(text: str | None, fmt: str = "%Y%m%d") -> str | None:
    """A cached date conversion, as anyone writing this by hand would do."""
    if text is None:
        return None
    out = _DATES.get(text)
    if out is None:
        moment = datetime.strptime(text, fmt).replace(tzinfo=_BERLIN)
        out = _DATES[text] = moment.isoformat()
    return out


def _money(unit: str, minor: int) -> dict[str, Any]:
    return {"unit": unit, "value": minor / 100}


def by_hand(r: Record, base: str) -> dict[str, Any]:
    """The demo mapping written by hand for this data (no column of it is ever missing)."""
    ident = str(r["INV_ID"])
    cur = r["CURR_CD"]
    out: dict[str, Any] = {
        "id": ident,
        "href": f"{base}/customerBill/{ident}",
        "@type": "CustomerBill",
        "billNo": r["INV_NO"],
        "billDate": _date(r["INV_DT"]),
        "paymentDueDate": _date(r["DUE_DT"]),
        "nextBillDate": _date(r["NXT_INV_DT"]),
        "lastUpdate": _date(r["UPD_TS"], "%Y%m%d%H%M%S"),
        "state": _STATES[r["STAT_CD"]],
        "runType": _RUNS[r["RUN_TYP"]],
        "category": _CATEGORIES[r["CAT_CD"]],
        "amountDue": _money(cur, r["GRS_AMT"]),
        "remainingAmount": _money(cur, r["OPEN_AMT"]),
        "taxExcludedAmount": _money(cur, r["NET_AMT"]),
        "taxIncludedAmount": _money(cur, r["GRS_AMT"]),
        "billingAccount": {
            "@type": "BillingAccountRef",
            "@referredType": "BillingAccount",
            "id": r["ACCT_NO"],
        },
        "billingPeriod": {
            "startDateTime": _date(r["PRD_FROM_DT"]),
            "endDateTime": _date(r["PRD_TO_DT"]),
        },
    }
    if out["nextBillDate"] is None:
        del out["nextBillDate"]
    run = r["RUN_ID"]
    if run is not None:
        out["billCycle"] = {
            "@type": "BillCycleRef",
            "@referredType": "BillCycle",
            "id": str(run),
            "href": f"{base}/billCycle/{run}",
        }
    archived = r["ARCH_KEY"]
    if archived is not None:
        out["billDocument"] = [
            {
                "@type": "AttachmentRef",
                "@referredType": "Attachment",
                "id": archived,
                "name": f"{r['INV_NO']}.pdf",
                "description": "Bill document (PDF) in the document archive",
                "url": f"https://dms.example.com/archive/{archived}",
            }
        ]
    out["taxItem"] = [
        {
            "@type": "TaxItem",
            "taxCategory": t["TAX_CD"],
            "taxRate": float(t["TAX_RT"]),
            "taxAmount": {"unit": "EUR", "value": t["TAX_AMT"] / 100},
        }
        for t in r["taxes"]
    ]
    return out


def _seconds(fn: Callable[[Record, str], Any], records: list[Record]) -> float:
    started = time.perf_counter()
    for record in records:
        fn(record, BASE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bills", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    records, compiled = demo_records(args.bills)
    to_tmf = compiled().to_tmf
    for record in records:  # the same output, key order included
        assert list(to_tmf(record, BASE).items()) == list(by_hand(record, BASE).items()), record
    cold = _seconds(compiled().to_tmf, records)
    mapped, hand = float("inf"), float("inf")
    for _ in range(args.rounds):  # alternating, so both see the same busy moments
        mapped = min(mapped, _seconds(to_tmf, records))
        hand = min(hand, _seconds(by_hand, records))
    n = len(records)
    print(
        f"{n} demo bills ({sum(len(r['taxes']) for r in records)} tax lines), {args.rounds} rounds"
    )
    print(f"mapping, cold caches: {n / cold:>10,.0f} records/s (first pass)")
    print(
        f"mapping:              {n / mapped:>10,.0f} records/s ({mapped / n * 1e6:.2f} us/record)"
    )
    print(f"hand-written Python:  {n / hand:>10,.0f} records/s ({hand / n * 1e6:.2f} us/record)")
    print(f"mapping time / hand-written time: {mapped / hand:.2f} (best round of each)")
    print("target (issue #13): >= 300,000 records/s")


if __name__ == "__main__":
    main()
