"""The printed table: every figure, its ratio, and each target met or not."""

from __future__ import annotations

import math
from typing import Any

from bench.streaming import PARTIALS

# A rate "does not fall" and memory "does not grow" within this much run-to-run noise.
NOISE = 0.10


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join(out)


def _ratio_row(label: str, mine: float, theirs: float, wanted: float
               ) -> tuple[str, str, str, bool]:
    ratio = mine / theirs
    return (label, f"{ratio:.2f}x ({mine:,.0f} vs {theirs:,.0f})", f">= {wanted:g}x",
            ratio >= wanted)


def targets(out: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, target, met) for every target, each a ratio of figures
    measured in the same run (absolute rates move with the machine)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    s1 = out.get("s1")
    if s1:
        rows += _openai_targets(s1)
    s2 = out.get("s2")
    if s2 and s1:
        rows.append(_ratio_row("2. native polls/s vs direct path req/s", s2["poll_rps"],
                               s1["direct"]["c32"]["rps"], 0.8))
    s3 = out.get("s3")
    if s3:
        every = s3["callbacks"] == s3["jobs"]
        rows.append((f"3. {s3['jobs']:,} callbacks delivered",
                     f"{s3['callbacks']:,} in {_f(s3['last_callback_s'])} s", "all, <= 60 s",
                     every and s3["last_callback_s"] <= 60))
        rows.append(("3. gateway peak RSS", f"{s3['peak_rss_mb']:.0f} MB", "<= 250 MB",
                     s3["peak_rss_mb"] <= 250))
    s4 = out.get("s4")
    if s4 and len(s4) >= 2:
        sizes = sorted(s4, key=int)
        small, big = s4[sizes[0]], s4[sizes[-1]]
        label = f"{int(sizes[-1]):,} vs {int(sizes[0]):,} jobs"
        for name, key in (("submit rate", "submit_rps"), ("poll rate", "poll_rps")):
            ratio = big[key] / small[key]
            rows.append((f"4. {name}, {label}", f"{ratio:.2f}x", "does not fall",
                         ratio >= 1 - NOISE))
        ratio = big["rss_mb"] / small["rss_mb"]
        rows.append((f"4. RSS, {label}", f"{ratio:.2f}x ({big['rss_mb']:.0f} vs "
                     f"{small['rss_mb']:.0f} MB)", "does not grow", ratio <= 1 + NOISE))
        rows.append((f"4. RSS per process at {int(sizes[-1]):,} jobs", f"{big['rss_mb']:.0f} MB",
                     "<= 100 MB", big["rss_mb"] <= 100))
    s5 = out.get("s5")
    if s5 and "ratios" in s5:
        for backend in ("postgres", "sqlite"):
            for kind, ratio in s5["ratios"].get(f"2 workers / 1 ({backend})", {}).items():
                rows.append((f"5. {backend} {kind}/s, 2 workers vs 1", f"{ratio:.2f}x",
                             ">= 1.5x", ratio >= 1.5))
    s6 = out.get("s6")
    if s6:
        rows.append(("6. jobs lost when a replica is killed", str(s6["jobs_lost"]), "0",
                     s6["jobs_lost"] == 0))
    return rows


def _openai_targets(s1: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Scenario 1's targets, for the gateway in one process and in several."""
    rows: list[tuple[str, str, str, bool | None]] = []
    direct, portkey, litellm = s1["direct"], s1.get("portkey"), s1.get("litellm")
    for name in [n for n in s1 if n == "gateway" or n.startswith("gateway x")]:
        gateway = s1[name]
        rps = gateway["c32"]["rps"]
        if portkey:
            rows.append(_ratio_row(f"1. {name} req/s c=32 vs Portkey", rps,
                                   portkey["c32"]["rps"], 2))
            added = gateway["c1"]["p50_ms"] - direct["c1"]["p50_ms"]
            theirs = portkey["c1"]["p50_ms"] - direct["c1"]["p50_ms"]
            rows.append((f"1. {name} added p50 c=1 vs Portkey's",
                         f"{added:.2f} vs {theirs:.2f} ms", "<= half", added <= theirs / 2))
        else:
            rows.append((f"1. {name} req/s c=32 vs Portkey", "Portkey not run", ">= 2x", None))
        if litellm:
            rows.append(_ratio_row(f"1. {name} req/s c=32 vs LiteLLM", rps,
                                   litellm["c32"]["rps"], 20))
        else:
            rows.append((f"1. {name} req/s c=32 vs LiteLLM", "LiteLLM not run", ">= 20x",
                         None))
    return rows


def storage_ratios(s8: dict[str, Any]) -> dict[str, float]:
    """Each gateway path's c=32 rate with an S3 bucket over its rate on the folder."""
    return {path: s8["s3"][path]["c32"]["rps"] / s8["local"][path]["c32"]["rps"]
            for path in s8["local"] if path in s8["s3"]}


def table(out: dict[str, Any]) -> str:
    m = out["machine"]
    parts = [f"muxproxy benchmark, {out['date']}, {m['cpu']} ({m['cores']} cores), "
             f"Python {m['python']}" + (" [--quick]" if out.get("quick") else "")]
    runtime = out.get("gateway_runtime")
    if runtime:
        parts.append("gateway process runs: " + ", ".join(
            f"{k} {'yes' if v else 'NO'}" for k, v in runtime.items()))
    for name in ("portkey", "litellm"):
        peer = out.get(name) or {}
        label = {"portkey": "Portkey gateway", "litellm": "LiteLLM"}[name]
        if peer.get("version"):
            parts.append(f"{label}: {peer['version']}")
        elif peer.get("error"):
            parts.append(f"{label}: not measured: {peer['error']}")
    s1 = out.get("s1")
    if s1:
        direct = s1["direct"]
        lite_rps = s1["litellm"]["c32"]["rps"] if "litellm" in s1 else None
        portkey_rps = s1["portkey"]["c32"]["rps"] if "portkey" in s1 else None
        rows = []
        for name, r in s1.items():
            c1, c32 = r["c1"], r["c32"]
            rows.append([name, _f(c1["p50_ms"], 2), _f(c1["p99_ms"], 2), _f(c1["rps"], 0),
                         _f(c32["p50_ms"], 2), _f(c32["p99_ms"], 2), _f(c32["rps"], 0),
                         _f(c1["p50_ms"] - direct["c1"]["p50_ms"], 2),
                         _f(c32["p99_ms"] - direct["c32"]["p99_ms"], 2),
                         f"{c32['rps'] / direct['c32']['rps']:.2f}x",
                         f"{c32['rps'] / portkey_rps:.2f}x" if portkey_rps else "-",
                         f"{c32['rps'] / lite_rps:.1f}x" if lite_rps else "-",
                         f"{c32['cpu_busy']:.0%}" if "cpu_busy" in c32 else "-",
                         str(c1["errors"] + c32["errors"])])
        parts += ["", "1. POST /v1/images/generations (b64_json; 'url': gateway stores and "
                  "links the image) - medians of per-round figures, ms",
                  _grid(["path", "c1 p50", "c1 p99", "c1 req/s", "c32 p50", "c32 p99",
                         "c32 req/s", "added p50 c1", "added p99 c32", "rps/direct",
                         "rps/Portkey", "rps/LiteLLM", "CPU busy c32", "errors"], rows)]
    s2 = out.get("s2")
    if s2:
        parts += ["", f"2. Native task API, concurrency 64, {s2.get('workers', 1)} gateway "
                  "processes (jobs run on the fake OpenAI upstream meanwhile)",
                  _grid(["figure", "value"], [
                      ["submits/s", _f(s2["submit_rps"], 0)],
                      ["submit p99 ms", _f(s2["submit_p99_ms"], 2)],
                      ["polls/s", _f(s2["poll_rps"], 0)],
                      ["poll p99 ms", _f(s2["poll_p99_ms"], 2)],
                      ["errors", str(s2["submit_errors"] + s2["poll_errors"])]])]
    s3 = out.get("s3")
    if s3:
        parts += ["", f"3. {s3['jobs']:,} jobs on the fake fal queue ({s3['fal_polls']} status "
                  "polls each) with callbacks",
                  _grid(["figure", "value"], [
                      ["submitted in s", _f(s3["submit_s"])],
                      ["callbacks received", _f(s3["callbacks"])],
                      ["of which completed", _f(s3["completed"])],
                      ["last callback after s", _f(s3["last_callback_s"])],
                      ["gateway CPU s", _f(s3["cpu_s"])],
                      ["gateway CPU ms per job", _f(s3["cpu_ms_per_job"], 2)],
                      ["gateway RSS MB (end / peak)",
                       f"{s3['rss_mb']:.0f} / {s3['peak_rss_mb']:.0f}"]])]
    s4 = out.get("s4")
    if s4:
        sizes = sorted(s4, key=int)
        base = s4[sizes[0]]
        rows = [[f"{int(size):,}", _f(r["submit_rps"], 0), _f(r["poll_rps"], 0),
                 f"{r['submit_rps'] / base['submit_rps']:.2f}x",
                 f"{r['poll_rps'] / base['poll_rps']:.2f}x",
                 f"{r['rss_mb']:.0f} / {r['peak_rss_mb']:.0f}"] for size, r in
                ((s, s4[s]) for s in sizes)]
        parts += ["", "4. Native rates by stored jobs (pre-filled straight into SQLite)",
                  _grid(["stored jobs", "submits/s", "polls/s", "submit vs first",
                         "poll vs first", "RSS MB end / peak"], rows)]
    parts += _pg_workers(out.get("s5"))
    s8 = out.get("s8")
    if s8 and "error" in s8:
        parts += ["", f"8. image storage: not measured: {s8['error']}"]
    if s8 and "local" in s8 and "s3" in s8:
        rows = []
        for path, ratio in storage_ratios(s8).items():
            for name in ("local", "s3"):
                c1, c32 = s8[name][path]["c1"], s8[name][path]["c32"]
                rows.append([path, name, _f(c1["p50_ms"], 2), _f(c32["p50_ms"], 2),
                             _f(c32["p99_ms"], 2), _f(c32["rps"], 0),
                             f"{ratio:.2f}x" if name == "s3" else "1.00x",
                             str(c1["errors"] + c32["errors"])])
        parts += ["", "8. POST /v1/images/generations by image storage: the local folder, "
                  "an S3 bucket (moto's server on loopback) - medians, ms",
                  _grid(["path", "storage", "c1 p50", "c32 p50", "c32 p99", "c32 req/s",
                         "rps/local", "errors"], rows)]
    s6 = out.get("s6")
    if s6:
        back = s6["back_to_steady_s"]
        parts += ["", "6. Three replicas on one PostgreSQL database, OpenAI-surface calls at "
                  "c=24 spread over them; one replica SIGKILLed",
                  _grid(["figure", "value"], [
                      ["steady req/s before the kill", _f(s6["steady_rps"], 0)],
                      ["lowest req/s after (0.5 s buckets)", _f(s6["lowest_rps_after_kill"], 0)],
                      ["dip", f"{s6['dip']:.0%}" if s6["dip"] is not None else "-"],
                      ["back to steady (>= 90%) after s", _f(back) if back is not None
                       else "not within the run"],
                      ["requests failed (on the killed replica)", str(s6["requests_failed"])],
                      ["its jobs taken over within s", _f(s6["settled_s"])],
                      ["jobs lost", str(s6["jobs_lost"])]])]
    s7 = out.get("s7")
    if s7:
        parts += ["", f"7. Image streaming (partial_images {PARTIALS}), medians of c=1 calls, ms; "
                  "bench-slow streams from its upstream, bench-image cannot",
                  _grid(["model", "unstreamed", "first event", "completed", "events",
                         "first / unstreamed"],
                        [[model, _f(r["unstreamed_ms"], 0), _f(r["first_event_ms"], 0),
                          _f(r["completed_ms"], 0), _f(r["events"], 0),
                          f"{r['first_event_ms'] / r['unstreamed_ms']:.2f}x"]
                         for model, r in s7.items()])]
    checks = targets(out)
    if checks:
        parts += ["", "Targets (reported, never enforced)",
                  _grid(["target", "measured", "wanted", "met"],
                        [[a, b, c, "-" if d is None else ("yes" if d else "NO")]
                         for a, b, c, d in checks])]
    parts.append(f"\nwall time {out.get('wall_s', '-')} s; 1-minute load average "
                 f"{_f(out.get('load_before'), 2)} before, {_f(out.get('load_after'), 2)} after")
    return "\n".join(parts)


def _pg_workers(s5: dict[str, Any] | None) -> list[str]:
    if not s5:
        return []
    if "error" in s5:
        return ["", f"5. PostgreSQL workers: not measured: {s5['error']}"]
    rows = [[name, str(r["workers"]), _f(r["submit_rps"], 0), _f(r["poll_rps"], 0),
             _f(r["openai_rps"], 0), _f(r["submit_p99_ms"], 2), _f(r["poll_p99_ms"], 2),
             _f(r["openai_p99_ms"], 2), f"{r['rss_mb']:.0f}",
             f"{r['cpu_busy']:.0%}" if "cpu_busy" in r else "-",
             str(r["submit_errors"] + r["poll_errors"] + r["openai_errors"])]
            for name, r in s5.items() if name != "ratios"]
    rows += [[name, "", f"{r['submit']:.2f}x", f"{r['poll']:.2f}x", f"{r['openai']:.2f}x",
              "", "", "", "", "", ""] for name, r in s5["ratios"].items()]
    return ["", "5. Backends and workers: native submits and polls at c=64, OpenAI surface at "
            "c=32",
            _grid(["gateway", "procs", "submits/s", "polls/s", "openai/s", "submit p99",
                   "poll p99", "openai p99", "RSS MB", "machine CPU busy", "errors"], rows)]
