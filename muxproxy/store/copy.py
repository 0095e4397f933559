"""``muxproxy copy-db``: a whole database from one backend to another (SQLite to
PostgreSQL when a team outgrows one process, or back).

Every table of :data:`~muxproxy.store.tables.STATE_TABLES` is read a page at a time
and loaded into the target in one transaction: the target ends with all of it or
with nothing. Keys travel as stored (SHA-256 digests), balances with the ledger rows
that make them, jobs in whatever state they are (leases included: the next gateway
start takes over the lapsed ones, as after any restart).

Then the copy is checked through the store interface, as the gateway reads it:
the rows of every table counted on both sides, every key, job and delivery (with its
attempts) and signing secret compared record by record, and every balance equal to
the sum of its ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from muxproxy.store.base import Store
from muxproxy.store.tables import STATE_TABLES, Row, TableAccess

PAGE = 1000
T = TypeVar("T")


class CopyRefused(Exception):
    """The copy cannot start (the message says why); nothing was written."""


@dataclass
class CopyReport:
    # (table, rows in the source, rows in the target)
    counts: list[tuple[str, int, int]] = field(default_factory=list)
    keys: int = 0
    credits: tuple[int, int] = (0, 0)  # the sum of balances: source, target
    compared: dict[str, int] = field(default_factory=dict)  # records found equal
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        width = max(len(name) for name, _, _ in self.counts)
        out = [f"{'table':<{width}}  {'source':>9}  {'target':>9}"]
        out += [f"{name:<{width}}  {src:>9}  {dst:>9}" + ("" if src == dst else "  MISMATCH")
                for name, src, dst in self.counts]
        out.append(f"balances: {self.keys} keys, {self.credits[0]} credits in the source, "
                   f"{self.credits[1]} in the target")
        out.append("compared record by record: " + ", ".join(
            f"{n} {what}" for what, n in self.compared.items()))
        out += [f"problem: {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            out.append(f"... and {len(self.problems) - 50} more problems")
        out.append("copy verified" if self.ok else "COPY DOES NOT MATCH THE SOURCE")
        return out


def _tables(store: Store, role: str) -> TableAccess:
    if not isinstance(store, TableAccess):
        raise CopyRefused(f"the {role} backend ({type(store).__name__}) cannot be copied")
    return store


async def copy_database(source: Store, target: Store, *, force: bool = False,
                        page: int = PAGE) -> CopyReport:
    """Copy ``source`` into ``target`` (both open, at this version's schema) and check
    the copy. A target holding any row is refused unless ``force``, which replaces
    what it holds."""
    src, dst = _tables(source, "source"), _tables(target, "target")
    layouts: dict[str, list[str]] = {}
    for table in STATE_TABLES:
        columns = await src.columns(table.name)
        if set(columns) != set(await dst.columns(table.name)):
            raise CopyRefused(f"table {table.name} has other columns in the target: are "
                              f"both databases at this muxproxy's schema version?")
        layouts[table.name] = columns
    held = {t.name: n for t in STATE_TABLES if (n := await dst.count_rows(t.name))}
    if held and not force:
        raise CopyRefused("the target is not empty (" + ", ".join(
            f"{name}: {n} rows" for name, n in held.items()) + "); --force replaces it")
    async with dst.loading() as loader:
        for table in reversed(STATE_TABLES):
            if force:
                await loader.clear(table.name)
        for table in STATE_TABLES:
            columns = layouts[table.name]
            key = [columns.index(c) for c in table.order]
            after: Row | None = None
            while rows := await src.read_rows(table, columns, after, page):
                await loader.insert(table.name, columns, rows)
                after = tuple(rows[-1][i] for i in key)
    return await verify_copy(source, target)


async def verify_copy(source: Store, target: Store) -> CopyReport:
    src, dst = _tables(source, "source"), _tables(target, "target")
    report = CopyReport()
    for table in STATE_TABLES:
        counts = (table.name, await src.count_rows(table.name),
                  await dst.count_rows(table.name))
        report.counts.append(counts)
        if counts[1] != counts[2]:
            report.problems.append(f"{table.name}: {counts[1]} rows in the source, "
                                   f"{counts[2]} in the target")
    await _compare_keys(source, target, report)
    report.compared["jobs"] = await _compare(
        report, "job", source.scan_jobs, target.scan_jobs, lambda j: j.id, lambda j: j.id)
    report.compared["deliveries"] = await _compare(
        report, "delivery", source.scan_deliveries, target.scan_deliveries,
        lambda d: d.job_id, lambda d: d.id)
    attempts, after = 0, None
    while deliveries := await source.scan_deliveries(after=after, limit=PAGE):
        for delivery in deliveries:
            mine = await source.list_attempts(delivery.id)
            if mine != await target.list_attempts(delivery.id):
                report.problems.append(f"delivery {delivery.id}: its attempts differ")
            attempts += len(mine)
        after = deliveries[-1].job_id
    report.compared["attempts"] = attempts
    return report


async def _compare_keys(source: Store, target: Store, report: CopyReport) -> None:
    keys, copies = await source.list_keys(), {k.id: k for k in await target.list_keys()}
    report.keys = len(keys)
    report.credits = (sum(k.balance for k in keys), sum(k.balance for k in copies.values()))
    secrets = 0
    for key in keys:
        copy = copies.get(key.id)
        if copy != key:
            report.problems.append(f"key {key.id} ({key.name}): differs in the target")
            continue
        ledger = await target.ledger_sum(key.id)
        if ledger != copy.balance:
            report.problems.append(f"key {key.id} ({key.name}): balance {copy.balance} but "
                                   f"its ledger sums to {ledger}")
        secret = await source.signing_secret(key.id)
        if secret != await target.signing_secret(key.id):
            report.problems.append(f"key {key.id} ({key.name}): signing secret differs")
        secrets += secret is not None
    report.compared["keys"] = len(keys)
    report.compared["signing secrets"] = secrets


async def _compare(report: CopyReport, what: str,
                   source: Callable[..., Awaitable[list[T]]],
                   target: Callable[..., Awaitable[list[T]]],
                   cursor: Callable[[T], str], name: Callable[[T], Any]) -> int:
    """Both sides scanned in step, a page at a time (the scans share an order), each
    source record looked up among the target's page: how many are equal."""
    equal, after = 0, None
    while batch := await source(after=after, limit=PAGE):
        copies = {name(r): r for r in await target(after=after, limit=PAGE)}
        for record in batch:
            if copies.get(name(record)) == record:
                equal += 1
            else:
                report.problems.append(f"{what} {name(record)}: differs in the target")
        after = cursor(batch[-1])
    return equal
