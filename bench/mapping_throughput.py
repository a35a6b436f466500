"""Records per second through the demo customerBill mapping, mapping only (no I/O).

Seeds a small copy of the demo legacy database in a temporary directory, reads its bills
as the SQL adapter hands them over (one dict per INV_HDR row, its INV_TAX rows as a list
of dicts under `taxes`), then maps them all with `mappings/legacy_sql/customer_bill.yaml`
again and again. Prints the best of several rounds, so a busy moment does not count.
Issue #13 wants at least 300,000 records/s. One process, this machine.

    python bench/mapping_throughput.py [--bills 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mappings.compiler import load_mapping  # noqa: E402
from simulators.billing_db import create_and_seed, sqlite_url  # noqa: E402

MAPPING = ROOT / "mappings" / "legacy_sql" / "customer_bill.yaml"
BASE = "https://gateway.example/tmf-api/customerBillManagement/v5"


def demo_records(bills: int) -> list[dict[str, Any]]:
    """The demo bills as the SQL adapter's records: header columns plus `taxes` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        create_and_seed(sqlite_url(path), bills=bills)
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        try:
            records = [dict(row) for row in conn.execute('SELECT * FROM "INV_HDR"')]
            taxes: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for row in conn.execute('SELECT * FROM "INV_TAX" ORDER BY "INV_ID", "SEQ_NO"'):
                taxes[row["INV_ID"]].append(dict(row))
        finally:
            conn.close()
    for record in records:
        record["taxes"] = taxes[record["INV_ID"]]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bills", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    records = demo_records(args.bills)
    to_tmf = load_mapping(MAPPING).to_tmf
    for record in records:  # warm the transforms' caches, as a running gateway has them
        to_tmf(record, BASE)
    best = float("inf")
    for _ in range(args.rounds):
        started = time.perf_counter()
        for record in records:
            to_tmf(record, BASE)
        best = min(best, time.perf_counter() - started)
    print(f"{len(records)} demo bills, best of {args.rounds} rounds")
    print(f"{len(records) / best:,.0f} records/s ({best / len(records) * 1e6:.2f} us/record)")


if __name__ == "__main__":
    main()
