"""The webhook relay's pure parts: retry schedule, status handling, Retry-After,
payload scrubbing, signatures (checked against the ``standardwebhooks`` package)."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook

from muxproxy.settings import SettingsError, WebhookSettings, parse_settings
from muxproxy.webhooks import signing
from muxproxy.webhooks.payload import without_image_data
from muxproxy.webhooks.schedule import (
    Outcome,
    classify,
    honours_retry_after,
    next_attempt_at,
    parse_retry_after,
    retry_delay,
)

EXACT = WebhookSettings(jitter=0.0)


def test_quick_then_background_delays() -> None:
    delays = [retry_delay(n, EXACT) for n in range(1, 11)]
    assert delays == [1, 2, 4, 30, 60, 120, 240, 300, 300, 300]


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_every_delay_is_jittered_within_bounds(draw: float) -> None:
    hooks = WebhookSettings(jitter=0.1)
    for n, exact in enumerate([1, 2, 4, 30, 60], start=1):
        delay = retry_delay(n, hooks, rand=lambda: draw)
        assert exact * 0.9 <= delay <= exact * 1.1
    assert retry_delay(1, hooks, rand=lambda: 0.0) != retry_delay(1, hooks, rand=lambda: 0.99)


def test_retry_window_ends_with_one_last_try() -> None:
    now, end = 1_000_000, 1_000_000 + 100_000
    assert next_attempt_at(1, now, end, EXACT) == now + 1_000
    assert next_attempt_at(8, end - 50_000, end, EXACT) == end  # 300 s would overshoot
    assert next_attempt_at(9, end, end, EXACT) is None


def test_retry_after_is_honoured_within_bounds() -> None:
    now, end = 0, 10**9
    assert next_attempt_at(1, now, end, EXACT, retry_after=20) == 20_000
    assert next_attempt_at(1, now, end, EXACT, retry_after=0) == 1_000  # never sooner
    capped = replace(EXACT, retry_after_max_seconds=300)
    assert next_attempt_at(1, now, end, capped, retry_after=86_400) == 300_000
    jittered = WebhookSettings(jitter=0.1)
    at = next_attempt_at(1, now, end, jittered, retry_after=20, rand=lambda: 0.0)
    assert at is not None and at >= 20_000  # jitter only ever adds to Retry-After


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("20", now) == 20
    later = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert parse_retry_after(later, now) == pytest.approx(90)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert [honours_retry_after(s) for s in (429, 500, 503, 400, 302, 410, None)] == [
        True, True, True, False, False, False, False]


def test_status_classes() -> None:
    assert [classify(s) for s in (200, 201, 204, 299)] == [Outcome.DELIVERED] * 4
    assert classify(410) is Outcome.GONE
    assert [classify(s) for s in (301, 302, 307, 400, 404, 429, 500, 503, None)] == [
        Outcome.RETRY] * 9


def test_payload_params_never_carry_image_data() -> None:
    blob = base64.b64encode(bytes(range(256)) * 4).decode()
    params = {"prompt": "a fox " * 100, "image_url": "https://example.com/a.png",
              "image": f"data:image/png;base64,{blob}", "images": [blob, "short"],
              "nested": {"mask": blob}}
    clean = without_image_data(params)
    assert clean["prompt"] == params["prompt"]
    assert clean["image_url"] == params["image_url"]
    assert clean["image"].startswith("<base64 image, ")
    assert clean["images"][0].startswith("<base64 image, ") and clean["images"][1] == "short"
    assert clean["nested"]["mask"].startswith("<base64 image, ")
    assert blob not in repr(clean)


def test_signature_matches_the_standard_webhooks_reference() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = b'{"code":200,"msg":"success","data":{"taskId":"t"}}'
    ours = signing.signature(secret, "msg_1", 1_700_000_000, body)
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1_700_000_000, UTC),
                                  body.decode())
    assert ours == theirs
    headers = signing.headers("msg_1", 1_700_000_000, body, None)
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"}


def test_webhook_settings_from_config() -> None:
    raw = {"server": {"secret": "0123456789abcdef"},
           "webhooks": {"quick_attempts": 2, "retry_window_seconds": 600,
                        "allow_networks": ["10.20.0.0/16", "fd12::/16"]}}
    hooks = parse_settings(raw, {}).webhooks
    assert (hooks.quick_attempts, hooks.retry_window_seconds) == (2, 600.0)
    assert hooks.allow_networks == ("10.20.0.0/16", "fd12::/16")
    assert hooks.attempt_timeout_seconds == 10.0 and hooks.quick_backoff_seconds == 1.0
    for bad, message in (({"allow_networks": ["nope"]}, "allow_networks"),
                         ({"max_per_host": 0}, "max_per_host"),
                         ({"jitter": 1.5}, "jitter"),
                         ({"retries": 3}, "unknown setting webhooks.retries")):
        with pytest.raises(SettingsError, match=message):
            parse_settings({**raw, "webhooks": bad}, {})
