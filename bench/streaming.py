"""Scenario 7: image streaming. The same OpenAI-surface call, streamed
(``stream: true``, ``partial_images: 2``) and not, on an upstream that takes a
generation time of its own and streams partial images as OpenAI does. Reported:
the time to the first event and to the completed event, against the time the
unstreamed call takes, and the same on a provider that cannot stream (one
completed event).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import aiohttp

from bench.services import BENCH_KEY

PARTIALS = 2


async def _call(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                ) -> tuple[float, float, int]:
    """(seconds to the first event, seconds to the end, events) of one call."""
    started = time.perf_counter()
    first = 0.0
    events = 0
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        if not body.get("stream"):
            await response.read()
            elapsed = time.perf_counter() - started
            return elapsed, elapsed, 0
        async for line in response.content:
            if line.startswith(b"data:"):
                events += 1
                first = first or time.perf_counter() - started
                if b'.completed"' in line:
                    break
    return first, time.perf_counter() - started, events


async def streaming(port: int, requests: int = 20) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for model in ("bench-slow", "bench-image"):
            base = {"model": model, "prompt": "a red fox in the snow", "size": "1024x1024"}
            streamed = {**base, "stream": True, "partial_images": PARTIALS}
            await _call(session, url, base)  # warm-up
            plain: list[float] = []
            firsts: list[float] = []
            ends: list[float] = []
            counts: list[int] = []
            for _ in range(requests):  # the two kinds take turns
                plain.append((await _call(session, url, base))[1])
                first, end, events = await _call(session, url, streamed)
                firsts.append(first)
                ends.append(end)
                counts.append(events)
            results[model] = {
                "unstreamed_ms": statistics.median(plain) * 1000,
                "first_event_ms": statistics.median(firsts) * 1000,
                "completed_ms": statistics.median(ends) * 1000,
                "events": statistics.median(counts)}
            r = results[model]
            print(f"  {model:<12} unstreamed {r['unstreamed_ms']:.0f} ms, first event "
                  f"{r['first_event_ms']:.0f} ms, completed {r['completed_ms']:.0f} ms "
                  f"({r['events']:.0f} events)", flush=True)
    return results
