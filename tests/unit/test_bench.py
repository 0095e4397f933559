"""The benchmark suite's own pieces (no load is generated here): its gateway config
still follows the shipped config.toml, its HTTP parser, and its target verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.loadgen import _parse, encode
from bench.services import BENCH_KEY, gateway_config
from muxproxy.settings import load_settings


def test_gateway_config_points_the_shipped_config_at_the_fake(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(gateway_config(4321))
    settings = load_settings(str(path))
    assert settings.providers["modelmax"].base_url == "http://127.0.0.1:4321/v1"
    assert settings.providers["fal"].base_url == "http://127.0.0.1:4321"
    assert {"bench-image", "bench-image-url", "bench-queue"} <= set(settings.models)
    assert settings.models["bench-image"].routes[0].params == {"response_format": "b64_json"}
    assert "127.0.0.0/8" in settings.webhooks.allow_networks
    bench_key = next(k for k in settings.keys if k.name == "bench")
    assert bench_key.key == BENCH_KEY
    assert bench_key.unlimited


def test_parser_reads_content_length_and_chunked_bodies() -> None:
    plain = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 ...")
    assert _parse(plain) == (200, b"hello", plain.index(b"hello") + 5)
    assert _parse(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")) is None
    chunked = bytearray(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert _parse(chunked) == (404, b"abcde", len(chunked))
    request = encode("POST", "127.0.0.1", 80, "/x", {"A": "b"}, {"k": 1})
    assert request.endswith(b'\r\n\r\n{"k":1}')
    assert b"Content-Length: 7\r\n" in request


def _s1(gateway_p50: float, gateway_rps: float) -> dict[str, Any]:
    def path(p50: float, p99: float, rps: float) -> dict[str, Any]:
        figures = {"p50_ms": p50, "p99_ms": p99, "rps": rps, "errors": 0}
        return {"c1": figures, "c32": figures}

    return {"direct": path(0.2, 5.0, 10000), "gateway": path(gateway_p50, 12.0, gateway_rps),
            "portkey": path(2.2, 20.0, 1000), "litellm": path(15.0, 900.0, 100)}


def test_the_storage_scenario_reports_s3_against_the_local_folder() -> None:
    def path(rps: float) -> dict[str, Any]:
        figures = {"p50_ms": 1.0, "p99_ms": 9.0, "rps": rps, "errors": 0}
        return {"c1": figures, "c32": figures}

    s8 = {"local": {"gateway": path(800), "gateway (url)": path(1000)},
          "s3": {"gateway": path(200), "gateway (url)": path(400)}}
    assert report.storage_ratios(s8) == {"gateway": 0.25, "gateway (url)": 0.4}
    out = {"date": "2026-12-01", "machine": {"cpu": "cpu", "cores": 2, "python": "3.11"},
           "litellm": {"version": None, "error": None}, "s8": s8}
    text = report.table(out)
    assert "8. POST /v1/images/generations by image storage" in text
    assert "0.25x" in text and "0.40x" in text


def test_targets_are_ratios_to_the_peers_in_the_same_run() -> None:
    # Portkey adds 2.0 ms at c=1: the gateway may add at most 1.0 ms.
    met = {row[0]: row[3] for row in report.targets({"s1": _s1(1.2, 2001)})}
    assert met == {"1. gateway req/s c=32 vs Portkey": True,
                   "1. gateway added p50 c=1 vs Portkey's": True,
                   "1. gateway req/s c=32 vs LiteLLM": True}
    missed = {row[0]: row[3] for row in report.targets({"s1": _s1(1.3, 1999)})}
    assert set(missed.values()) == {False}
    # With several workers, their row is judged too, beside the one process's.
    s1 = {**_s1(1.3, 1999), "gateway x2": _s1(1.0, 2001)["gateway"]}
    met = {row[0]: row[3] for row in report.targets({"s1": s1})}
    assert met["1. gateway req/s c=32 vs Portkey"] is False
    assert met["1. gateway x2 req/s c=32 vs Portkey"] is True
    assert met["1. gateway x2 added p50 c=1 vs Portkey's"] is True


def test_a_peer_left_out_leaves_its_targets_unjudged() -> None:
    s1 = _s1(1.0, 5000)
    del s1["portkey"]
    met = {row[0]: row[3] for row in report.targets({"s1": s1})}
    assert met["1. gateway req/s c=32 vs Portkey"] is None
    assert met["1. gateway req/s c=32 vs LiteLLM"] is True


def test_polls_are_judged_against_the_direct_path_and_memory_at_the_largest_table() -> None:
    def sized(rss: float) -> dict[str, Any]:
        return {"submit_rps": 1000.0, "poll_rps": 3000.0, "rss_mb": rss}

    out = {"s1": _s1(1.0, 5000), "s2": {"poll_rps": 8000.0},
           "s4": {"1000": sized(80.0), "100000": sized(101.0)}}
    met = {row[0]: row[3] for row in report.targets(out)}
    assert met["2. native polls/s vs direct path req/s"] is True   # 0.8x of 10,000
    assert met["4. RSS per process at 100,000 jobs"] is False
    out["s2"] = {"poll_rps": 7900.0}
    assert {row[0]: row[3] for row in report.targets(out)}[
        "2. native polls/s vs direct path req/s"] is False


def test_scenarios_are_picked_by_number_or_name() -> None:
    from bench.run import chosen

    assert chosen("pg-workers") == {5}
    assert chosen("1, table-size") == {1, 4}
    assert chosen(None) == {1, 2, 3, 4, 5, 6, 7, 8}
    assert chosen("storage") == {8}
    with pytest.raises(SystemExit, match="unknown scenario 'pg'"):
        chosen("pg")


def test_the_workers_scenario_reports_rates_and_their_ratios() -> None:
    from bench.pg_workers import ratios

    def figures(submit: float, poll: float, openai: float, workers: int) -> dict[str, Any]:
        return {"submit_rps": submit, "poll_rps": poll, "openai_rps": openai,
                "submit_p99_ms": 1.0, "poll_p99_ms": 1.0, "openai_p99_ms": 1.0,
                "rss_mb": 60.0, "submit_errors": 0, "poll_errors": 0, "openai_errors": 0,
                "workers": workers}

    s5: dict[str, Any] = {"sqlite, 1 worker": figures(1000, 4000, 300, 1),
                          "sqlite, 2 workers": figures(1500, 7000, 450, 2),
                          "postgres, 1 worker": figures(500, 2000, 200, 1),
                          "postgres, 2 workers": figures(900, 3000, 380, 2)}
    s5["ratios"] = ratios(s5)
    assert s5["ratios"]["2 workers / 1 (postgres)"] == {"submit": 1.8, "poll": 1.5,
                                                        "openai": 1.9}
    assert s5["ratios"]["2 workers / 1 (sqlite)"] == {"submit": 1.5, "poll": 1.75,
                                                      "openai": 1.5}
    assert s5["ratios"]["postgres / sqlite (1 worker)"]["submit"] == 0.5
    out = {"date": "now", "machine": {"cpu": "cpu", "cores": 2, "python": "3.11"},
           "litellm": {"version": None, "error": None}, "s5": s5}
    text = report.table(out)
    assert "postgres, 2 workers" in text and "1.80x" in text and "1.90x" in text
    assert "not measured: no server" in report.table({**out, "s5": {"error": "no server"}})


def test_two_workers_are_judged_against_one_on_each_backend() -> None:
    ratios = {"2 workers / 1 (postgres)": {"submit": 1.6, "poll": 1.2, "openai": 1.5},
              "2 workers / 1 (sqlite)": {"submit": 1.4, "poll": 1.9, "openai": 1.5}}
    met = {row[0]: row[3] for row in report.targets({"s5": {"ratios": ratios}})}
    assert met == {"5. postgres submit/s, 2 workers vs 1": True,
                   "5. postgres poll/s, 2 workers vs 1": False,
                   "5. postgres openai/s, 2 workers vs 1": True,
                   "5. sqlite submit/s, 2 workers vs 1": False,
                   "5. sqlite poll/s, 2 workers vs 1": True,
                   "5. sqlite openai/s, 2 workers vs 1": True}
