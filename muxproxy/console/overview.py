"""Overview: jobs and credits today and over the last 30 days, the failure rate and
the busiest models; every key's for the operator, the team's own otherwise."""

from __future__ import annotations

import collections
import datetime
from dataclasses import dataclass

from starlette.responses import Response

from muxproxy.clock import now_ms
from muxproxy.console.charts import Chart, columns, rows
from muxproxy.console.pages import Ctx, page
from muxproxy.store.accounts import UsageRow

DAYS = 30
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Totals:
    jobs: int = 0
    completed: int = 0
    failed: int = 0
    credits: int = 0

    def add(self, row: UsageRow) -> Totals:
        return Totals(self.jobs + row.jobs, self.completed + row.completed,
                      self.failed + row.failed, self.credits + row.credits)

    @property
    def failure_rate(self) -> str:
        ended = self.completed + self.failed
        return f"{self.failed / ended:.1%}" if ended else "none ended"


def days_until(today: datetime.date) -> list[str]:
    return [(today - datetime.timedelta(days=n)).isoformat() for n in range(DAYS - 1, -1, -1)]


@page()
async def overview(ctx: Ctx) -> Response:
    assert ctx.viewer is not None
    now = now_ms(ctx.state.clock)
    today = datetime.datetime.fromtimestamp(now / 1000, datetime.UTC).date()
    start = now - now % DAY_MS - (DAYS - 1) * DAY_MS
    usage = await ctx.state.gateway.usage(ctx.viewer.key, since=start)
    by_day: dict[str, Totals] = collections.defaultdict(Totals)
    by_model: dict[str, int] = collections.Counter()
    month = Totals()
    for row in usage:
        by_day[row.day] = by_day[row.day].add(row)
        by_model[row.model] += row.jobs
        month = month.add(row)
    days = days_until(today)
    busiest = sorted(by_model.items(), key=lambda item: (-item[1], item[0]))[:8]
    charts: list[Chart] = [
        columns("Jobs per day", [(day, by_day[day].jobs) for day in days]),
        columns("Credits charged per day", [(day, by_day[day].credits) for day in days]),
        columns("Failed jobs per day", [(day, by_day[day].failed) for day in days]),
        rows("Busiest models (jobs, 30 days)", busiest),
    ]
    return ctx.render("overview.html", today=by_day[today.isoformat()], month=month,
                      charts=charts, first_day=days[0], last_day=days[-1])
