"""Reading a gateway's SQLite file from the test process (the gateway may be another
process) and checking what must always hold in it."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

# The ledger rows a job leaves, by its final billing state (price p).
EXPECTED_LEDGER: dict[str, dict[str, int]] = {
    "charged": {"hold": -1, "release": 1, "charge": -1},
    "refunded": {"hold": -1, "release": 1, "charge": -1, "refund": 1},
    "released": {"hold": -1, "release": 1},
    "none": {},
}
ACTIVE = ("pending", "processing")


def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def count(db: Path, sql: str, args: tuple[Any, ...] = ()) -> int:
    rows = query(db, sql, args)
    return int(next(iter(rows[0].values()))) if rows else 0


def unfinished(db: Path) -> int:
    """Jobs not terminal yet, plus callbacks still to be delivered."""
    return (count(db, "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'processing')")
            + count(db, "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'"))


def billing_problems(db: Path) -> list[str]:
    """Everything wrong with the credits: each key's balance must equal the sum of its
    ledger rows; each priced job must be charged if it completed and refunded or
    released if it failed, with exactly the ledger rows that state implies."""
    problems = []
    sums = {r["key_id"]: r["total"] for r in query(
        db, "SELECT key_id, SUM(amount) AS total FROM ledger GROUP BY key_id")}
    for key in query(db, "SELECT id, name, balance FROM api_keys"):
        if sums.get(key["id"], 0) != key["balance"]:
            problems.append(f"key {key['name']}: balance {key['balance']} != ledger sum "
                            f"{sums.get(key['id'], 0)}")
    rows: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for entry in query(db, "SELECT job_id, kind, amount FROM ledger WHERE job_id IS NOT NULL"):
        rows[entry["job_id"]][entry["kind"]] = entry["amount"]
    for job in query(db, "SELECT id, state, billing, credits FROM jobs"):
        if job["state"] in ACTIVE:
            problems.append(f"job {job['id']} is still {job['state']}")
            continue
        allowed = {"completed": {"charged"}, "failed": {"refunded", "released"}}
        billing = job["billing"] if job["credits"] else "none"
        if job["credits"] and billing not in allowed[job["state"]]:
            problems.append(f"job {job['id']} {job['state']} but billing {job['billing']}")
            continue
        expected = {kind: sign * job["credits"]
                    for kind, sign in EXPECTED_LEDGER.get(billing, {}).items()}
        if rows.get(job["id"], {}) != expected:
            problems.append(f"job {job['id']} ({billing}): ledger {rows.get(job['id'])} "
                            f"!= {expected}")
    return problems
